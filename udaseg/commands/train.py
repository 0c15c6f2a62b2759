"""`udaseg train CONFIG [key=value ...] [--resume [CKPT]]`

Under torchrun (`torchrun --nproc_per_node N -m udaseg train ...`) each process trains on its
shard of every batch stream; rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from udaseg.commands import add_config_arguments, config_path
from udaseg.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
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
    from udaseg.engine.checkpoint import describe_last_checkpoint
    from udaseg.engine.trainer import train

    config_file = config_path(args)  # may give back an override the positional swallowed
    overrides = list(args.overrides)
    resume = args.resume
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        # `--resume key=value`: the optional CKPT swallowed an override.
        overrides.insert(0, resume)
        resume = True
    config = load_config(config_file, overrides)
    try:
        result = train(config, resume=resume, device=args.device)
    except KeyboardInterrupt:
        # Ctrl-C: say where the run stands and how to continue it, then exit as interrupted.
        if os.environ.get("RANK", "0") == "0":
            last = describe_last_checkpoint(Path(config.run_dir) / "checkpoints")
            command = shlex.join(["udaseg", "train", config_file, *overrides, "--resume"])
            where = f"the last checkpoint is {last}" if last else "no checkpoint was written yet"
            advice = f"resume with: {command}" if last else "run the same command to start again"
            print(f"[udaseg] interrupted; {where}; {advice}", file=sys.stderr)
        raise
    if result.already_finished:
        summary = (
            f"run_dir {result.run_dir} already finished its {result.steps} steps; raise "
            "train.steps to continue"
        )
    else:
        summary = (
            f"trained {result.steps} steps in {result.seconds:.1f} s; "
            f"run directory {result.run_dir}"
        )
    if result.evaluation is not None:
        scores = ", ".join(
            f"{name} {100 * value:.2f}" for name, value in result.evaluation.miou.items()
        )
        summary += f"; target val {scores}"
    print(summary, file=sys.stderr)
    return 0
