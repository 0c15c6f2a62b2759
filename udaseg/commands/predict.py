"""`udaseg predict (--checkpoint CKPT | CONFIG --weights FILE) INPUT ... --out DIR`

INPUT is an image, a folder (searched recursively for .png/.jpg/.jpeg) or a .txt list of image
paths. For each image it writes, keeping the image's path relative to its input folder:
`labels/<name>.png` (train ids, or Cityscapes labelIds with --label-ids, as `udaseg score` and
the official evaluator read them), `color/<name>.png` (the label space's palette) and
`overlay/<name>.png` (colours blended over the image). Predictions are made at the config's
`eval.input_size` (or --size), reached as `eval.resize` says (PIL bicubic on uint8 by default,
as the original loaders), and upsampled to the image's own size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders or .txt lists")
    parser.add_argument(
        "--out", required=True, help="output folder (created; existing files are not overwritten)"
    )
    parser.add_argument("--checkpoint", help="a udaseg checkpoint")
    parser.add_argument(
        "--config",
        help="config naming the model (with --weights); `udaseg eval` and `udaseg pseudo-label` "
        "take it the same way (or as their first argument)",
    )
    parser.add_argument(
        "--weights", help="released weights in the original repositories' key layout"
    )
    parser.add_argument(
        "--size", help="network input size HxW (default: the config's eval.input_size)"
    )
    parser.add_argument(
        "--label-ids", action="store_true", help="write Cityscapes labelIds instead of train ids"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colours")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value")


def collect_images(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(image path, output name relative to the output folders) for every input."""
    from udaseg.errors import DataError

    found: list[tuple[Path, Path]] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise DataError(f"{path}: no .png/.jpg images in this folder")
            found.extend((image, image.relative_to(path)) for image in images)
        elif path.is_file() and path.suffix.lower() == ".txt":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                line = line.strip()
                if not line:
                    continue
                image = Path(line) if Path(line).is_absolute() else path.parent / line
                if not image.is_file():
                    raise DataError(f"{path}:{number}: {image} does not exist")
                found.append((image, Path(image.name)))
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise DataError(f"{path}: no such image, folder or list")
    names = [name.with_suffix("") for _, name in found]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise DataError(
            f"two inputs would write the same output {duplicate}.png; predict them separately"
        )
    return found


def _parse_size(text: str | None) -> tuple[int, int] | None:
    from udaseg.errors import ConfigError

    if text is None:
        return None
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 512x1024") from None
    return height, width


def run(args: argparse.Namespace) -> int:
    from udaseg.data.io import read_image
    from udaseg.engine.distributed import init_distributed
    from udaseg.engine.loading import load_for_inference
    from udaseg.errors import DataError
    from udaseg.evaluation.inference import predict_logits
    from udaseg.files import check_output_folder

    out = check_output_folder(args.out, "--out")
    images = collect_images(args.inputs)
    targets = {kind: out / kind for kind in ("labels", "color", "overlay")}
    if not args.overwrite:
        for _, name in images:
            existing = targets["labels"] / name.with_suffix(".png")
            if existing.exists():
                raise DataError(
                    f"{existing} exists; pass --overwrite to replace earlier predictions"
                )
    context = init_distributed(args.device)
    loaded = load_for_inference(
        args.checkpoint, args.config, args.weights, args.overrides, context.device
    )
    eval_config = loaded.config.eval
    input_size = _parse_size(args.size) or eval_config.input_size
    label_space = loaded.label_space
    started = time.time()
    for image_path, name in images:
        pixels = read_image(image_path)
        tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().to(context.device)
        with torch.no_grad():
            logits = predict_logits(
                loaded.method.predict,
                tensor,
                output_size=pixels.shape[:2],
                input_size=input_size,
                mode=eval_config.mode,
                window=eval_config.window,
                stride=eval_config.stride,
                flip=eval_config.flip,
                align_corners=eval_config.align_corners,
                resize=eval_config.resize,
            )
        train_ids = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        colors = label_space.colorize(train_ids)
        overlay = (pixels * (1 - args.alpha) + colors * args.alpha).round().astype(np.uint8)
        stored = label_space.to_cityscapes_label_ids(train_ids) if args.label_ids else train_ids
        for kind, array in (("labels", stored), ("color", colors), ("overlay", overlay)):
            path = targets[kind] / name.with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    print(
        f"predicted {len(images)} images in {time.time() - started:.1f} s into {out}",
        file=sys.stderr,
    )
    return 0
