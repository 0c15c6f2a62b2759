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
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from udaseg.errors import UdasegError
from udaseg.reporting import comparison_table, run_logged, train_seed

BASELINES = {"source_only": "toy/source_only.yaml", "adabn": "toy/adabn.yaml"}


def run_config(
    config: str, seed: int, out: Path, threads: int, overrides: list[str], label: str
) -> list[dict]:
    """Train (or reuse) `out/<label>/seed<N>`: the same runner as `udaseg sweep`."""
    log = out / "logs" / f"{label}-seed{seed}.log"
    result = train_seed(config, seed, out / label / f"seed{seed}", overrides, threads, log, label)
    return [result]


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
    log = out / "logs" / f"{label}-seed{seed}.log"
    run_logged(command, log, threads, f"{label} seed {seed}")
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
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: tabulate the runs already finished in --out (every label, all of "
        "--seeds finished), e.g. while the rest is still training",
    )
    args = parser.parse_args()

    out = Path(args.out)
    if args.table_only:
        print_table(finished_results(out, args.seeds), args.seeds, args.metric, out)
        return
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

    print_table(results, args.seeds, args.metric, out)


def finished_results(out: Path, seeds: list[int]) -> list[dict]:
    """The results of the labels under `out` whose every seed in `seeds` has finished."""
    results = []
    for directory in sorted(path for path in out.iterdir() if path.is_dir()):
        finals = [directory / f"seed{seed}" / "eval" / "final.json" for seed in seeds]
        if not all(final.is_file() for final in finals):
            continue
        for seed, final in zip(seeds, finals, strict=True):
            evaluation = json.loads(final.read_text(encoding="utf-8"))
            timing = final.parent.parent / "wall_seconds.txt"
            results.append(
                {
                    "label": directory.name,
                    "seed": seed,
                    "miou": evaluation["miou"],
                    "per_class_iou": evaluation["per_class_iou"],
                    "seconds": float(timing.read_text()) if timing.is_file() else None,
                }
            )
    return results


def print_table(results: list[dict], seeds: list[int], metric: str, out: Path) -> None:
    """Print the comparison table and write it with the raw numbers to <out>/summary.json."""
    table, summary = comparison_table(results, seeds, metric)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(
        json.dumps({"table": table, "results": summary}, indent=2), encoding="utf-8"
    )


if __name__ == "__main__":
    try:
        main()
    except UdasegError as error:  # a failed run: one line naming its log
        raise SystemExit(f"toy_methods: {error}") from None
