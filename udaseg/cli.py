"""The `udaseg` command line.

Each subcommand lives in `udaseg/commands/<module>.py` with two functions:
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their command
runs, so `udaseg --help` stays fast. Errors caused by the input (`UdasegError`) are printed as
one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from udaseg import __version__
from udaseg.errors import UdasegError

# name -> (module under udaseg.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "toy benchmark: train source-only and target-oracle models, compare them"),
    "train": ("train", "train a method from a config (resumable, DDP under torchrun)"),
    "eval": ("evaluate", "score a checkpoint or released weights on the target val split"),
    "recipe": ("recipe", "run a multi-stage recipe (train, pseudo-label, ...), resumable"),
    "predict": (
        "predict",
        "label images, folders, lists or videos (checkpoint or ONNX): labels, colours, overlays",
    ),
    "pseudo-label": (
        "pseudo_label",
        "write pseudo-labels of the target train split (BDL/FDA/CBST/ProDA policies), resumable",
    ),
    "score": ("score", "score a folder of prediction PNGs against Cityscapes-layout ground truth"),
    "make-toy": (
        "make_toy",
        "write the embedded toy benchmark (GTA5/SYNTHIA + Cityscapes/CamVid layouts)",
    ),
    "print-config": ("print_config", "print a config with its parents and overrides resolved"),
    "report": ("report", "HTML report of runs: per-class IoU over seeds, curves, samples"),
    "sweep": ("sweep", "train a config over seeds (resumable): mean ± std table and report"),
    "export": ("export", "export a checkpoint's network to ONNX (normalisation inside)"),
    "translate": ("translate", "write the source set translated (FDA or a BDL F), resumable"),
    "retrieve": ("retrieve", "nearest gallery images by pooled features; cross-domain rate"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="udaseg",
        description="Unsupervised domain adaptation for semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"udaseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        # Arguments are added lazily (below) so that only the chosen command is imported.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / version / the unknown-command error
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name = argv[0]
    module = importlib.import_module(f"udaseg.commands.{COMMANDS[name][0]}")
    sub = argparse.ArgumentParser(prog=f"udaseg {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    # Intermixed: overrides may follow options (`udaseg train cfg.yaml --resume a.b=1`).
    args = sub.parse_intermixed_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UdasegError as error:
        print(f"udaseg {name}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A folder that is read-only, a disk that is full, a file where a folder should be: the
        # user's environment, not a bug, so one line naming the file instead of a traceback.
        from udaseg.files import WRITE_ERRNOS, is_disk_full

        if error.errno not in WRITE_ERRNOS:
            raise
        reason = "cannot write: the disk is full" if is_disk_full(error) else error.strerror
        where = f"{error.filename}: " if error.filename is not None else ""
        print(f"udaseg {name}: error: {where}{reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"udaseg {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
