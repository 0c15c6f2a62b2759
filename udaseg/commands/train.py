"""`udaseg train CONFIG [key=value ...] [--resume [CKPT]]`

Under torchrun (`torchrun --nproc_per_node N -m udaseg train ...`) each process trains on its
shard of every batch stream; rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from udaseg.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (a path, or a name under udaseg/configs)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.steps=100"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CKPT",
        help="continue from CKPT, or from <run_dir>/checkpoints/last.pt when no path is given",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def run(args: argparse.Namespace) -> int:
    from udaseg.engine.trainer import train

    overrides = list(args.overrides)
    resume = args.resume
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        # `--resume key=value`: the optional CKPT swallowed an override.
        overrides.insert(0, resume)
        resume = True
    config = load_config(args.config, overrides)
    result = train(config, resume=resume, device=args.device)
    summary = (
        f"trained {result.steps} steps in {result.seconds:.1f} s; run directory {result.run_dir}"
    )
    if result.evaluation is not None:
        scores = ", ".join(
            f"{name} {100 * value:.2f}" for name, value in result.evaluation.miou.items()
        )
        summary += f"; target val {scores}"
    print(summary, file=sys.stderr)
    return 0
