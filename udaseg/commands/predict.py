"""`udaseg predict (--checkpoint CKPT | CONFIG --weights FILE | --onnx FILE) INPUT ... --out DIR`

INPUT is an image, a folder (searched recursively for .png/.jpg/.jpeg), a .txt list of image
paths, or a video (.mp4/.avi/.mov/.mkv/.webm). For each image it writes, keeping the image's path
relative to its input folder: `labels/<name>.png` (train ids, or Cityscapes labelIds with
--label-ids, as `udaseg score` and the official evaluator read them), `color/<name>.png` (the
label space's palette) and `overlay/<name>.png` (colours blended over the image). For each video
it writes `overlay/<stem>.mp4` (H.264, or MPEG-4 part 2 where FFmpeg has no H.264 encoder; at the
video's frame rate divided by --every) and, with --frames, `labels/<stem>/<frame>.png` (frame =
the 0-based index in the video, 6 digits).

Images and frames go through a torch DataLoader (--batch-size, --num-workers); images of
different sizes in one batch are predicted in groups of equal size. Predictions are made at the
config's `eval.input_size` (or --size), reached as `eval.resize` says (PIL bicubic on uint8 by
default, as the original loaders), with the config's sliding window and flip, and upsampled to
the image's own size: the code path of `udaseg eval`. With --onnx the network is an exported
model (`udaseg.export.OnnxSegmentor`); eval settings then come from --config if given, else
whole-image at the input's own size (or --size).
See docs/predict.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    parser.add_argument(
        "--onnx", metavar="FILE", help="an exported ONNX model instead of a checkpoint"
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="images or frames per forward (default 4)"
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=2,
        help="DataLoader processes reading images / decoding video (default 2; 0 = in process)",
    )
    parser.add_argument(
        "--every", type=int, default=1, metavar="N", help="videos: predict every N-th frame"
    )
    parser.add_argument(
        "--frames", action="store_true", help="videos: also write per-frame label PNGs"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar with frames/s (default: when stderr is a terminal)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value")


def collect_inputs(inputs: list[str]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image path, output name relative to the output folders) for every image, and the
    videos."""
    from udaseg.errors import DataError
    from udaseg.video import is_video

    found: list[tuple[Path, Path]] = []
    videos: list[Path] = []
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
        elif path.is_file() and is_video(path):
            videos.append(path)
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise DataError(f"{path}: no such image, video, folder or list")
    names = [name.with_suffix("") for _, name in found]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise DataError(
            f"two inputs would write the same output {duplicate}.png; predict them separately"
        )
    stems = [video.stem for video in videos]
    if len(set(stems)) != len(stems):
        duplicate = next(stem for stem in stems if stems.count(stem) > 1)
        raise DataError(
            f"two videos would write the same output {duplicate}.mp4; predict them separately"
        )
    return found, videos


def collect_images(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(image path, output name relative to the output folders) for every image input."""
    return collect_inputs(inputs)[0]


def _parse_size(text: str | None) -> tuple[int, int] | None:
    from udaseg.errors import ConfigError

    if text is None:
        return None
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 512x1024") from None
    return height, width


class ImageFiles(torch.utils.data.Dataset):
    """Images as uint8 [3, H, W] tensors for a DataLoader; a read error becomes {"error": ...}
    (raised as one line by the consumer, not as a worker traceback)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        from udaseg.data.io import read_image
        from udaseg.errors import UdasegError

        try:
            pixels = read_image(self.paths[index])
        except (UdasegError, OSError, ValueError) as error:
            return {"error": f"{self.paths[index]}: cannot read this image ({error})"}
        return {"image": torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), "index": index}


def _as_list(items: list[dict]) -> list[dict]:
    return items


@dataclass
class Predictor:
    """Full-resolution train ids for batches, as `udaseg eval` predicts."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    eval_config: Any
    input_size: tuple[int, int] | None
    device: torch.device

    def train_ids(self, images: torch.Tensor) -> np.ndarray:
        """uint8 [B, 3, H, W] -> uint8 train ids [B, H, W]."""
        from udaseg.evaluation.inference import predict_with_protocol

        config = self.eval_config
        with torch.no_grad():
            logits = predict_with_protocol(
                self.forward, images.to(self.device), images.shape[-2:], config, self.input_size
            )
        return logits.argmax(1).to(torch.uint8).cpu().numpy()


def _onnx_forward(model: Any, num_classes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A predict_logits forward around an OnnxSegmentor; "argmax" models give one-hot logits."""

    from udaseg.errors import DataError

    metadata = getattr(model, "metadata", None) or {}
    fixed = metadata.get("dynamic") == "false"  # a fixed graph also fixes the batch size (1)

    def run_model(images: torch.Tensor) -> Any:
        try:
            if fixed and images.shape[0] > 1:
                outputs = [run_model(image[None]) for image in images]
                if torch.is_tensor(outputs[0]):
                    return torch.cat(outputs)
                return np.concatenate(outputs)
            return model(images)
        except ValueError as error:
            hint = " (a fixed-size export takes only its example size)" if fixed else ""
            raise DataError(f"--onnx: {error}{hint}") from None

    def forward(images: torch.Tensor) -> torch.Tensor:
        output = run_model(images.float())
        output = torch.as_tensor(np.asarray(output)) if not torch.is_tensor(output) else output
        output = output.to(images.device)
        if getattr(model, "output", "logits") == "argmax" or not output.is_floating_point():
            labels = output.long()
            if labels.dim() == 4:
                labels = labels[:, 0]
            valid = (labels >= 0) & (labels < num_classes)
            one_hot = torch.nn.functional.one_hot(labels.clamp(0, num_classes - 1), num_classes)
            return (one_hot * valid[..., None]).permute(0, 3, 1, 2).float()
        return output.float()

    return forward


def _load(args: argparse.Namespace, device: torch.device) -> tuple[Predictor, Any]:
    """(predictor, label space) from --checkpoint / --config --weights / --onnx."""
    from udaseg.config import load_config
    from udaseg.data.label_spaces import get_label_space
    from udaseg.engine.loading import load_for_inference
    from udaseg.errors import ConfigError

    size = _parse_size(args.size)
    if args.onnx is not None:
        if args.checkpoint is not None or args.weights is not None:
            raise ConfigError("give --onnx FILE or --checkpoint/--weights, not both")
        try:
            from udaseg.export import OnnxSegmentor
        except ImportError as error:
            raise ConfigError(
                f"--onnx: ONNX inference is not available in this install ({error})"
            ) from None
        model = OnnxSegmentor(args.onnx)
        label_space = get_label_space(model.label_space)
        eval_config = load_config(args.config, args.overrides).eval
        if args.config is None:
            # The export's own facts: a fixed graph takes only its example size; a dynamic one
            # gets the checkpoint's eval.input_size (native size without one).
            metadata = getattr(model, "metadata", None) or {}
            fixed = metadata.get("dynamic") == "false"
            key = "input_size" if fixed else "eval_input_size"
            eval_config.input_size = _metadata_size(metadata.get(key))
            if metadata.get("align_corners") in ("true", "false"):
                eval_config.align_corners = metadata["align_corners"] == "true"
        predictor = Predictor(
            _onnx_forward(model, label_space.num_classes),
            eval_config,
            size or eval_config.input_size,
            device,
        )
        return predictor, label_space
    loaded = load_for_inference(args.checkpoint, args.config, args.weights, args.overrides, device)
    eval_config = loaded.config.eval
    predictor = Predictor(
        loaded.method.predict, eval_config, size or eval_config.input_size, device
    )
    return predictor, loaded.label_space


def _metadata_size(text: str | None) -> tuple[int, int] | None:
    """An ONNX export's size entry ("HxW" or a JSON [H, W]); None if absent or unreadable."""
    if not text:
        return None
    try:
        parts = json.loads(text) if text.startswith("[") else text.lower().split("x")
        height, width = (int(part) for part in parts)
    except (ValueError, TypeError):
        return None
    return height, width


def _check_options(args: argparse.Namespace) -> None:
    from udaseg.errors import ConfigError

    for option, value in (
        ("--batch-size", args.batch_size),
        ("--every", args.every),
        ("--num-workers", args.num_workers + 1),
    ):
        if value < 1:
            raise ConfigError(f"{option} must be at least {1 if option != '--num-workers' else 0}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha must be between 0 and 1, got {args.alpha}")


def _raise_if_error(item: dict) -> None:
    from udaseg.errors import DataError

    if "error" in item:
        raise DataError(item["error"])


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from udaseg.engine.distributed import init_distributed
    from udaseg.errors import DataError
    from udaseg.files import check_output_folder
    from udaseg.video import VideoFrames, VideoWriter, available_codec, probe_video

    _check_options(args)
    _parse_size(args.size)
    out = check_output_folder(args.out, "--out")
    images, videos = collect_inputs(args.inputs)
    targets = {kind: out / kind for kind in ("labels", "color", "overlay")}
    if not args.overwrite:
        for _, name in images:
            existing = targets["labels"] / name.with_suffix(".png")
            if existing.exists():
                raise DataError(
                    f"{existing} exists; pass --overwrite to replace earlier predictions"
                )
        for video in videos:
            existing = targets["overlay"] / f"{video.stem}.mp4"
            frames = targets["labels"] / video.stem
            if existing.exists() or (args.frames and frames.is_dir() and any(frames.iterdir())):
                raise DataError(
                    f"{existing if existing.exists() else frames} exists; pass --overwrite to "
                    "replace earlier predictions"
                )
    # Every video must open and have a frame before any work (or any output) starts.
    infos = [probe_video(video) for video in videos]
    codec = available_codec() if videos else None

    context = init_distributed(args.device)
    predictor, label_space = _load(args, context.device)
    progress = {"disable": None if args.progress is None else not args.progress}

    def paint(pixels: np.ndarray, train_ids: np.ndarray) -> tuple[np.ndarray, ...]:
        colors = label_space.colorize(train_ids)
        overlay = (pixels * (1 - args.alpha) + colors * args.alpha).round().astype(np.uint8)
        stored = label_space.to_cityscapes_label_ids(train_ids) if args.label_ids else train_ids
        return stored, colors, overlay

    started = time.time()
    count = 0
    if images:
        dataset = ImageFiles([path for path, _ in images])
        workers = min(args.num_workers, len(images))
        batches = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            num_workers=workers,
            collate_fn=_as_list,
        )
        with tqdm(total=len(images), unit="image", desc="images", **progress) as bar:
            for batch in batches:
                for item in batch:
                    _raise_if_error(item)
                # Equal sizes are predicted together; order inside the batch does not matter.
                groups: dict[tuple[int, ...], list[dict]] = {}
                for item in batch:
                    groups.setdefault(tuple(item["image"].shape), []).append(item)
                for group in groups.values():
                    stacked = torch.stack([item["image"] for item in group])
                    predicted = predictor.train_ids(stacked)
                    for item, train_ids in zip(group, predicted, strict=True):
                        pixels = item["image"].permute(1, 2, 0).numpy()
                        name = images[item["index"]][1]
                        for kind, array in zip(
                            ("labels", "color", "overlay"), paint(pixels, train_ids), strict=True
                        ):
                            path = targets[kind] / name.with_suffix(".png")
                            path.parent.mkdir(parents=True, exist_ok=True)
                            Image.fromarray(array).save(path)
                bar.update(len(batch))
                count += len(batch)

    for video, info in zip(videos, infos, strict=True):
        frames_folder = targets["labels"] / video.stem
        total = -(-info.frames // args.every) if info.frames else None
        rate = info.rate / args.every
        # Each worker decodes the whole stream (keeping its own batches): no more workers
        # than batches.
        batch_count = -(-total // args.batch_size) if total else args.num_workers
        batches = torch.utils.data.DataLoader(
            VideoFrames(video, args.batch_size, args.every),
            batch_size=None,
            num_workers=min(args.num_workers, batch_count),
            pin_memory=context.device.type == "cuda",
        )
        last = -1
        writer = VideoWriter(
            targets["overlay"] / f"{video.stem}.mp4", rate, info.height, info.width, codec
        )
        with writer, tqdm(total=total, unit="frame", desc=video.name, **progress) as bar:
            for batch in batches:
                _raise_if_error(batch)
                indices = batch["indices"].tolist()
                if indices[0] <= last:
                    raise RuntimeError(f"video batches out of order: {indices} after {last}")
                last = indices[-1]
                predicted = predictor.train_ids(batch["images"])
                for index, frame, train_ids in zip(
                    indices, batch["images"], predicted, strict=True
                ):
                    pixels = frame.permute(1, 2, 0).numpy()
                    stored, _, overlay = paint(pixels, train_ids)
                    writer.write(overlay)
                    if args.frames:
                        frames_folder.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(stored).save(frames_folder / f"{index:06d}.png")
                bar.update(len(indices))
                count += len(indices)
            if writer.frames == 0:
                raise DataError(f"{video}: no frame could be decoded")
    elapsed = time.time() - started
    print(
        f"predicted {count} images/frames in {elapsed:.1f} s "
        f"({count / max(elapsed, 1e-9):.2f}/s) into {out}",
        file=sys.stderr,
    )
    return 0
