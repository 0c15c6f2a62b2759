"""`udaseg make-toy [--out DIR] [--seed N] [--size HxW] [--layout gta5|synthia] ...`

Writes the embedded toy benchmark: a synthetic source domain in the GTA5 (or SYNTHIA) layout and
a target domain in the Cityscapes (or, `--target-layout camvid`, CamVid-32) layout,
deterministically from the seed, so that the real
dataset readers load it unchanged. Without `--out` the benchmark goes to the cache that
`udaseg demo` uses (`$UDASEG_CACHE/toy/<hash>`), and an existing one is reused.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH such as 128x256, got {text!r}"
        ) from None
    return height, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from udaseg.data.toy.generate import (
        DEFAULT_NUM_SOURCE,
        DEFAULT_NUM_TARGET,
        DEFAULT_NUM_VAL,
        DEFAULT_SIZE,
        LAYOUTS,
        TARGET_LAYOUTS,
        TOY_VERSION,
        VERSIONS,
    )

    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (new, empty, or a previous make-toy output); "
        "default: the cache used by `udaseg demo`, reused when complete",
    )
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed (default: 0)")
    parser.add_argument(
        "--version",
        type=int,
        choices=VERSIONS,
        default=TOY_VERSION,
        help="benchmark version: 1 (global appearance shift) or 2 (class-dependent, spatially "
        f"varying shift; docs/toy-benchmark.md) (default: {TOY_VERSION})",
    )
    parser.add_argument(
        "--size",
        type=_size,
        default=DEFAULT_SIZE,
        metavar="HxW",
        help=f"image size (default: {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="gta5",
        help="source layout: gta5 (palettised labelIds) or synthia (16-bit GT/LABELS, "
        "no terrain/truck/train) (default: gta5)",
    )
    parser.add_argument(
        "--target-layout",
        choices=TARGET_LAYOUTS,
        default="cityscapes",
        help="target layout: cityscapes (gtFine labelIds) or camvid (split folders, RGB "
        "<name>_L.png labels in CamVid's 32 classes; docs/benchmarks-camvid.md) "
        "(default: cityscapes)",
    )
    parser.add_argument("--num-source", type=int, default=DEFAULT_NUM_SOURCE, metavar="N")
    parser.add_argument(
        "--num-target",
        type=int,
        default=DEFAULT_NUM_TARGET,
        metavar="N",
        help="target train images",
    )
    parser.add_argument(
        "--num-val", type=int, default=DEFAULT_NUM_VAL, metavar="N", help="target val images"
    )
    parser.add_argument(
        "--preview",
        metavar="FILE.png",
        help="also write a grid of source and target images with their labels",
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="processes (default: up to 2)"
    )


def run(args: argparse.Namespace) -> int:
    from udaseg.data.toy.generate import ensure_toy, generate_toy, read_manifest
    from udaseg.data.toy.preview import write_preview
    from udaseg.data.toy.progress import GenerationProgress

    if args.preview and args.target_layout != "cityscapes":
        from udaseg.errors import ConfigError

        # The preview reads Cityscapes-layout targets only; refuse before writing anything.
        raise ConfigError("--preview: not available with --target-layout camvid")
    started = time.perf_counter()
    options = {
        "seed": args.seed,
        "version": args.version,
        "size": args.size,
        "layout": args.layout,
        "target_layout": args.target_layout,
        "num_source": args.num_source,
        "num_target": args.num_target,
        "num_val": args.num_val,
        "workers": args.workers,
        "progress": GenerationProgress("make-toy"),
    }
    if args.out is None:
        directory = ensure_toy(**options)
    else:
        directory = Path(args.out)
        generate_toy(directory, **options)
    manifest = read_manifest(directory)
    print(describe(directory, manifest, time.perf_counter() - started))
    if args.out is not None:
        # The shipped configs' `toy://` roots read the cache, not this folder.
        print(
            f"note: toy/*.yaml configs read the cached copy (toy:// roots), not {directory}; to "
            f"train on this one, set data.source.root={directory / 'source'} "
            f"data.target.root={directory / 'target'} data.val.root={directory / 'target'}"
        )
    if args.preview:
        path = write_preview(directory, args.preview)
        print(f"preview: {path}")
    return 0


def describe(directory: Path, manifest: dict, seconds: float) -> str:
    """A short text description of a toy benchmark: counts, size, class frequencies."""
    counts = manifest["counts"]
    height, width = manifest["size"]
    source_name = "SYNTHIA" if manifest["layout"] == "synthia" else "GTA5"
    target_name = "CamVid-32" if manifest.get("target_layout") == "camvid" else "Cityscapes"
    lines = [
        f"toy benchmark in {directory} (seed {manifest['seed']}, {height}x{width}, "
        f"version {manifest['version']}), {seconds:.1f} s",
        f"  source: {counts['source']} images, {source_name} layout ({directory / 'source'})",
        f"  target: {counts['target_train']} train (labels for the oracle only) + "
        f"{counts['target_val']} val, {target_name} layout ({directory / 'target'})",
        "  pixel frequency per class (%):",
        f"    {'class':<14}{'source':>8}{'target':>8}{'val':>8}",
    ]
    frequencies = manifest["class_frequencies"]
    domains = ("source", "target_train", "target_val")
    present = {domain: 0 for domain in domains}
    for name in frequencies["source"]:
        values = [frequencies[domain][name] for domain in domains]
        for domain, value in zip(domains, values, strict=True):
            present[domain] += value > 0 and name != "void"
        lines.append(f"    {name:<14}" + "".join(f"{100 * value:8.2f}" for value in values))
    lines.append(
        "  classes present: " + ", ".join(f"{domain} {present[domain]}" for domain in domains)
    )
    return "\n".join(lines)
