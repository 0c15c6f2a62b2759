"""`udaseg demo`: the domain gap on the embedded toy benchmark, on a laptop CPU.

Generates the toy benchmark if it is not cached, trains a source-only model (labelled source
images only) and a target-oracle model (labelled target images: the ceiling no UDA method is
expected to pass), evaluates both on the target val split and prints their per-class IoUs side
by side. With several seeds it reports the mean and standard deviation of each mIoU.

A finished run in the output folder is reused, an interrupted one resumed, so running the demo
twice costs the second time only the evaluation table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DEMO_RUNS = {
    # column title -> packaged config
    "source-only": "toy/source_only.yaml",
    "target oracle": "toy/oracle.yaml",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)"
    )
    parser.add_argument(
        "--toy-dir",
        help="an existing toy benchmark (udaseg make-toy --out DIR) instead of the cached default",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="key=value",
        help="override for both runs, e.g. train.steps=200",
    )


def run(args: argparse.Namespace) -> int:
    from udaseg.config import load_config
    from udaseg.data.label_spaces import get_label_space
    from udaseg.engine.checkpoint import LAST
    from udaseg.engine.trainer import train
    from udaseg.evaluation.metrics import EvaluationResult
    from udaseg.evaluation.report import format_table, write_json

    started = time.time()
    out = Path(args.out)
    results: dict[str, list[EvaluationResult]] = {title: [] for title in DEMO_RUNS}
    for seed in args.seeds:
        for title, config_name in DEMO_RUNS.items():
            run_dir = out / f"seed{seed}" / Path(config_name).stem
            overrides = [*args.overrides, f"seed={seed}", f"run_dir={run_dir}"]
            config = load_config(config_name, overrides)
            if args.toy_dir is not None:
                config = _with_toy_dir(config, args.toy_dir)
            final = run_dir / "eval" / "final.json"
            if final.is_file() and _finished(run_dir, config.train.steps):
                print(f"[demo] {title}, seed {seed}: reusing {run_dir}", file=sys.stderr)
                result = EvaluationResult.from_dict(json.loads(final.read_text(encoding="utf-8")))
            else:
                resume = (run_dir / "checkpoints" / LAST).exists() or None
                print(
                    f"[demo] {title}, seed {seed}: training {config.train.steps} steps -> {run_dir}",
                    file=sys.stderr,
                )
                result = train(config, resume=resume, device=args.device).evaluation
            results[title].append(result)

    label_space = get_label_space(load_config(DEMO_RUNS["source-only"]).data.label_space)
    columns = {title: _mean_result(runs, label_space) for title, runs in results.items()}
    print()
    print(format_table(columns))
    print()
    for title, runs in results.items():
        for subset in runs[0].miou:
            values = [100 * run.miou[subset] for run in runs]
            spread = (
                f" ± {statistics.stdev(values):.2f} (std over {len(values)} seeds: {', '.join(f'{v:.2f}' for v in values)})"
                if len(values) > 1
                else ""
            )
            print(f"{title:>14} {subset}: {statistics.fmean(values):.2f}{spread}")
    gap = {
        subset: 100 * (columns["target oracle"].miou[subset] - columns["source-only"].miou[subset])
        for subset in columns["source-only"].miou
    }
    print(
        "\ndomain gap (oracle - source-only): "
        + ", ".join(f"{k} {v:.1f} points" for k, v in gap.items())
    )
    print(f"demo finished in {time.time() - started:.0f} s; runs in {out}")
    write_json(
        out / "demo.json", {title: [r.to_dict() for r in runs] for title, runs in results.items()}
    )
    return 0


def _with_toy_dir(config, toy_dir: str):
    """The config with its `toy://` dataset roots pointing into `toy_dir`."""
    from udaseg.config import config_from_dict, to_dict
    from udaseg.data.datasets.base import TOY_SCHEMES

    data = to_dict(config)
    for role in ("source", "target", "val"):
        section = data["data"].get(role)
        for scheme in TOY_SCHEMES:
            if section and section["root"].startswith(scheme):
                section["root"] = str(Path(toy_dir) / section["root"][len(scheme) :])
    return config_from_dict(data)


def _finished(run_dir: Path, steps: int) -> bool:
    from udaseg.engine.checkpoint import step_checkpoints

    found = step_checkpoints(run_dir / "checkpoints")
    return bool(found) and found[-1][0] >= steps


def _mean_result(runs, label_space):
    """One EvaluationResult whose IoUs are the per-class means over seeds."""
    import math

    from udaseg.evaluation.metrics import EvaluationResult

    if len(runs) == 1:
        return runs[0]
    per_class = []
    for index in range(len(runs[0].per_class_iou)):
        values = [
            run.per_class_iou[index] for run in runs if not math.isnan(run.per_class_iou[index])
        ]
        per_class.append(statistics.fmean(values) if values else math.nan)
    data = runs[0].to_dict()
    data["per_class_iou"] = [None if math.isnan(v) else v for v in per_class]
    data["miou"] = {name: statistics.fmean(run.miou[name] for run in runs) for name in runs[0].miou}
    data["num_images"] = runs[0].num_images
    return EvaluationResult.from_dict(data)
