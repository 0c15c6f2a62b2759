"""Compare methods on the toy benchmark over seeds, each paired with source-only and adabn.

Every (entry, seed) is one `udaseg train` or `udaseg recipe` process; runs already finished in
the output folder are reused, so the script can be interrupted and restarted. `--parallel N`
runs N processes at a time, each with `--threads` intra-op threads (on 2 cores, 2 runs x 1 thread
is faster in total than 1 run x 2 threads).

The two baselines every method is compared with, paired by seed, are run first unless
`--no-baselines`: `source_only` (toy/source_only.yaml) and `adabn` (toy/adabn.yaml from that
seed's source-only model: the target-BN control). An entry `recipe:PATH` runs a whole recipe
and reports each of its train stages; a recipe with its own `source_only` / `adabn` stages is
paired with those. Examples:

    python bench/toy_methods.py --seeds 0 1 2 --out runs/compare \
        toy/adaptsegnet_single.yaml toy/minent.yaml
    python bench/toy_methods.py --no-baselines --out runs/st recipe:recipes/toy_self_training.yaml

Prints a markdown table (per seed, mean ± std, paired differences with source-only and adabn,
wall seconds) and writes it with the raw numbers to <out>/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASELINES = {"source_only": "toy/source_only.yaml", "adabn": "toy/adabn.yaml"}


def _run(command: list[str], log_path: Path, threads: int, label: str, seed: int) -> float:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    started = time.time()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        completed = subprocess.run(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise SystemExit(f"{label} seed {seed} failed: see {log_path}")
    return time.time() - started


def run_config(
    config: str, seed: int, out: Path, threads: int, overrides: list[str], label: str
) -> list[dict]:
    run_dir = out / label / f"seed{seed}"
    final = run_dir / "eval" / "final.json"
    timing = run_dir / "wall_seconds.txt"
    if not final.is_file():
        if run_dir.exists():
            shutil.rmtree(run_dir)
        command = [
            *(sys.executable, "-m", "udaseg", "train", config),
            *(f"seed={seed}", f"run_dir={run_dir}", "train.progress_bar=false", *overrides),
        ]
        seconds = _run(command, out / "logs" / f"{label}-seed{seed}.log", threads, label, seed)
        timing.write_text(f"{seconds:.1f}\n", encoding="utf-8")
    result = json.loads(final.read_text(encoding="utf-8"))
    return [
        {
            "label": label,
            "config": config,
            "seed": seed,
            "miou": result["miou"],
            "per_class_iou": result["per_class_iou"],
            "seconds": float(timing.read_text()) if timing.exists() else None,
        }
    ]


def run_recipe(
    recipe: str, seed: int, out: Path, threads: int, overrides: list[str], label: str
) -> list[dict]:
    """Run (or finish) the recipe for this seed; one result per train stage."""
    directory = out / label / f"seed{seed}"
    command = [
        *(sys.executable, "-m", "udaseg", "recipe", recipe, f"seed={seed}"),
        *("train.progress_bar=false", *overrides, "--dir", str(directory)),
    ]
    # A finished recipe skips every stage, so this is cheap when all is done.
    _run(command, out / "logs" / f"{label}-seed{seed}.log", threads, label, seed)
    results = []
    for marker in sorted((directory / "stages").glob("*.json"), key=os.path.getmtime):
        record = json.loads(marker.read_text(encoding="utf-8"))
        if record["kind"] != "train":
            continue
        final = Path(record["outputs"]["run_dir"]) / "eval" / "final.json"
        evaluation = json.loads(final.read_text(encoding="utf-8"))
        results.append(
            {
                "label": f"{label}/{record['stage']}",
                "config": recipe,
                "seed": seed,
                "miou": evaluation["miou"],
                "per_class_iou": evaluation["per_class_iou"],
                "seconds": record.get("seconds"),
            }
        )
    return results


def _paired(values: list[float], baseline: list[float] | None) -> str:
    if baseline is None or len(baseline) != len(values):
        return "-"
    differences = [value - base for value, base in zip(values, baseline, strict=True)]
    spread = statistics.stdev(differences) if len(differences) > 1 else 0.0
    return f"{statistics.fmean(differences):+.2f} ± {spread:.2f}"


def _baseline_values(label: str, name: str, values: dict[str, list[float]]):
    """The baseline paired with `label`: its recipe's own stage of that name, else the global."""
    if "/" in label:
        own = f"{label.split('/')[0]}/{name}"
        if own in values:
            return values[own]
    return values.get(name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("entries", nargs="*", help="configs (LABEL=CONFIG@k=v,...) or recipe:PATH")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value")
    parser.add_argument("--metric", default="mIoU19")
    parser.add_argument(
        "--no-baselines", action="store_true", help="do not run source_only and adabn first"
    )
    args = parser.parse_args()

    out = Path(args.out)
    jobs = []
    for entry in args.entries:
        if entry.startswith("recipe:"):
            recipe = entry.removeprefix("recipe:")
            jobs.extend((run_recipe, recipe, seed, Path(recipe).stem, []) for seed in args.seeds)
            continue
        # LABEL=CONFIG@key=value,key=value (label and per-config overrides optional)
        label, separator, config = entry.partition("=")
        if not separator or "/" in label or "@" in label:
            label, config = "", entry
        config, _, text = config.partition("@")
        extra = text.split(",") if text else []
        label = label or Path(config).stem
        jobs.extend((run_config, config, seed, label, extra) for seed in args.seeds)

    results: list[dict] = []
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        if not args.no_baselines:
            # Source-only first: each seed's adabn starts from that seed's source-only model.
            source = [
                pool.submit(
                    run_config,
                    BASELINES["source_only"],
                    seed,
                    out,
                    args.threads,
                    args.overrides,
                    "source_only",
                )
                for seed in args.seeds
            ]
            for future in source:
                results.extend(future.result())
            control = [
                pool.submit(
                    run_config,
                    BASELINES["adabn"],
                    seed,
                    out,
                    args.threads,
                    [
                        *args.overrides,
                        f"init.segmentor={out / 'source_only' / f'seed{seed}' / 'checkpoints' / 'last.pt'}",
                    ],
                    "adabn",
                )
                for seed in args.seeds
            ]
            for future in control:
                results.extend(future.result())
        futures = [
            pool.submit(runner, target, seed, out, args.threads, [*args.overrides, *extra], label)
            for runner, target, seed, label, extra in jobs
        ]
        for future in futures:
            results.extend(future.result())

    by_label: dict[str, list[dict]] = {}
    for result in results:
        by_label.setdefault(result["label"], []).append(result)
    values = {
        label: [100 * run["miou"][args.metric] for run in sorted(runs, key=lambda r: r["seed"])]
        for label, runs in by_label.items()
    }
    seeds = args.seeds
    header = (
        "| method | "
        + " | ".join(f"seed {s}" for s in seeds)
        + f" | mean ± std {args.metric} | vs source-only (paired) | vs adabn (paired) | mean s/run |"
    )
    lines = [header, "|" + "---|" * (len(seeds) + 5)]
    summary = {}
    for label, runs in by_label.items():
        runs.sort(key=lambda run: run["seed"])
        scores = values[label]
        seconds = [run["seconds"] for run in runs if run["seconds"] is not None]
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        mean_seconds = statistics.fmean(seconds) if seconds else float("nan")
        cells = " | ".join(f"{value:.2f}" for value in scores)
        versus_source = _paired(scores, _baseline_values(label, "source_only", values))
        versus_adabn = _paired(scores, _baseline_values(label, "adabn", values))
        lines.append(
            f"| {label} | {cells} | {statistics.fmean(scores):.2f} ± {spread:.2f} | "
            f"{versus_source} | {versus_adabn} | {mean_seconds:.0f} |"
        )
        summary[label] = {
            "values": scores,
            "mean": statistics.fmean(scores),
            "std": spread,
            "versus_source_only": versus_source,
            "versus_adabn": versus_adabn,
            "seconds": seconds,
            "runs": runs,
        }
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(
        json.dumps({"table": table, "results": summary}, indent=2), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
