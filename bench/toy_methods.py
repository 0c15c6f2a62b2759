"""Compare methods on the toy benchmark over seeds: target mIoU and wall time per run.

Each (config, seed) is one `udaseg train` process; runs already finished in the output folder
are reused, so the script can be interrupted and restarted. `--parallel N` runs N processes at a
time, each with `--threads` intra-op threads (on 2 cores, 2 runs x 1 thread is faster in total
than 1 run x 2 threads). Example:

    python bench/toy_methods.py --seeds 0 1 2 --out runs/compare \
        toy/source_only.yaml toy/adaptsegnet_single.yaml toy/minent.yaml

Prints a markdown table (method x seed, mIoU19 and seconds) with mean and standard deviation,
and writes it with the raw numbers to <out>/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_one(
    config: str, seed: int, out: Path, threads: int, overrides: list[str], label: str
) -> dict:
    run_dir = out / label / f"seed{seed}"
    final = run_dir / "eval" / "final.json"
    timing = run_dir / "wall_seconds.txt"
    if not final.is_file():
        if run_dir.exists():
            subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable,
            "-m",
            "udaseg",
            "train",
            config,
            f"seed={seed}",
            f"run_dir={run_dir}",
            "train.progress_bar=false",
            *overrides,
        ]
        started = time.time()
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "train.log", "w", encoding="utf-8") as log:
            completed = subprocess.run(
                command, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        if completed.returncode != 0:
            raise SystemExit(f"{label} seed {seed} failed: see {run_dir / 'train.log'}")
        timing.write_text(f"{time.time() - started:.1f}\n", encoding="utf-8")
    result = json.loads(final.read_text(encoding="utf-8"))
    return {
        "label": label,
        "config": config,
        "seed": seed,
        "miou": result["miou"],
        "per_class_iou": result["per_class_iou"],
        "seconds": float(timing.read_text()) if timing.exists() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="+", help="configs, optionally LABEL=CONFIG")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value")
    parser.add_argument("--metric", default="mIoU19")
    args = parser.parse_args()

    out = Path(args.out)
    jobs = []
    for entry in args.configs:
        # LABEL=CONFIG@key=value,key=value (label and per-config overrides optional)
        label, separator, config = entry.partition("=")
        if not separator or "/" in label or "@" in label:
            label, config = "", entry
        config, _, text = config.partition("@")
        extra = text.split(",") if text else []
        label = label or Path(config).stem
        jobs.extend((config, seed, label, extra) for seed in args.seeds)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [
            pool.submit(run_one, config, seed, out, args.threads, [*args.overrides, *extra], label)
            for config, seed, label, extra in jobs
        ]
        results = [future.result() for future in futures]

    by_label: dict[str, list[dict]] = {}
    for result in results:
        by_label.setdefault(result["label"], []).append(result)
    seeds = args.seeds
    header = (
        "| method | "
        + " | ".join(f"seed {s}" for s in seeds)
        + f" | mean ± std {args.metric} | mean s/run |"
    )
    lines = [header, "|" + "---|" * (len(seeds) + 3)]
    summary = {}
    for label, runs in by_label.items():
        runs.sort(key=lambda run: run["seed"])
        values = [100 * run["miou"][args.metric] for run in runs]
        seconds = [run["seconds"] for run in runs if run["seconds"] is not None]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        mean_seconds = statistics.fmean(seconds) if seconds else float("nan")
        cells = " | ".join(f"{value:.2f}" for value in values)
        lines.append(
            f"| {label} | {cells} | {statistics.fmean(values):.2f} ± {spread:.2f} | {mean_seconds:.0f} |"
        )
        summary[label] = {
            "values": values,
            "mean": statistics.fmean(values),
            "std": spread,
            "seconds": seconds,
            "runs": runs,
        }
    table = "\n".join(lines)
    print(table)
    (out / "summary.json").write_text(
        json.dumps({"table": table, "results": summary}, indent=2), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
