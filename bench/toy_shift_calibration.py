"""How strong should the toy target's shift be? Score a source-only model and its target-BN
control (adabn) on target variants, without retraining anything.

The toy benchmark's versions share their source images, so one source-only checkpoint (trained on
`toy://source` with `toy/source_only.yaml`) serves every variant of the target: for each variant
this script writes the target only (train subset + the full val split, in the Cityscapes layout),
scores the checkpoint on its val split, runs `toy/adabn.yaml` from it on the train subset and
scores that. Designing a benchmark may look at target labels (tuning a method on them may not);
this is how version 2's strength was chosen (docs/toy-benchmark.md). Prints JSON.

    python bench/toy_shift_calibration.py --checkpoint runs/v2a/source_only/seed0/checkpoints/last.pt \
        --out runs/calibration v2=1.0 v2=0.6 v2=0.4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from udaseg.data.toy.generate import generate_toy
from udaseg.data.toy.styles import TargetStyle


def variant_style(spec: str) -> TargetStyle:
    """`v1=A`: version 1's knobs scaled by A; `v2=A`: version 2 at strength A (its knobs at
    full strength scaled by A; the benchmark uses 0.7)."""
    name, _, amount = spec.partition("=")
    if name == "v2":  # the full-strength knobs, scaled (the benchmark itself uses 0.7)
        return TargetStyle.version2(strength=float(amount or 1.0))
    return TargetStyle().scaled(float(amount or 1.0))


def run_variant(spec: str, checkpoint: Path, out: Path, num_target: int, threads: int) -> dict:
    directory = out / spec.replace("=", "_")
    started = time.time()
    if not (directory / "toy.json").is_file():
        generate_toy(
            directory,
            num_source=0,
            num_target=num_target,
            num_val=300,
            target_style=variant_style(spec),
            workers=1,
        )
    generated = time.time() - started
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    target = directory / "target"
    roots = [f"data.target.root={target}", f"data.val.root={target}"]
    source_json = directory / "source_only.json"
    if not source_json.is_file():
        subprocess.run(
            [sys.executable, "-m", "udaseg", "eval", "--checkpoint", str(checkpoint)]
            + ["--json", str(source_json), *roots],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    adabn_dir = directory / "adabn"
    adabn_json = adabn_dir / "eval" / "final.json"
    if not adabn_json.is_file():
        steps = max(1, num_target // 8)
        subprocess.run(
            [sys.executable, "-m", "udaseg", "train", "toy/adabn.yaml", f"run_dir={adabn_dir}"]
            + [f"init.segmentor={checkpoint}", f"train.steps={steps}"]
            + [f"train.checkpoint_every={steps}", "train.progress_bar=false", *roots],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    scores = {}
    for name, path in (("source_only", source_json), ("adabn", adabn_json)):
        scores[name] = round(100 * json.loads(path.read_text())["miou"]["mIoU19"], 2)
    return {"variant": spec, **scores, "generate_seconds": round(generated, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="v1=A or v2=A (knobs scaled by A)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a source-only model")
    parser.add_argument("--out", type=Path, default=Path("runs/calibration"))
    parser.add_argument("--num-target", type=int, default=600, help="target train images")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(
            pool.map(
                lambda spec: run_variant(
                    spec, args.checkpoint, args.out, args.num_target, args.threads
                ),
                args.variants,
            )
        )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
