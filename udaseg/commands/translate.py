"""`udaseg translate [CONFIG] (--fda --beta B | --generator CKPT) --out DIR [key=value ...]`

Writes the whole source training set (`data.source` of CONFIG, without its augmentation)
translated toward the target, in the source's own layout, so that any method trains on it by
pointing `data.source.root` at DIR (BDL's recipe does so between its translation model F and
its segmentation model M; docs/translate.md):

- `--fda --beta B [--window corners|centered]`: FDA (Yang & Soatto, CVPR 2020,
  `udaseg.translation.fda_source_to_target`): each source image takes the low-frequency
  amplitude of one target image drawn at random, seeded per image by (`--seed`, its index), so
  the pairing does not depend on the order, the number of processes or a resume. Targets are the
  images of `data.target` (or of `--target-folder DIR`, searched recursively), resized (PIL
  bicubic) to the source image's size; the result is rounded and clipped to 0..255.
- `--generator CKPT`: a `bdl_translation` checkpoint's F (`--direction target_to_source` for
  F^-1), on each image at its own size, or at `--input-size H W` and resized back (PIL bicubic).

Each image goes to DIR under its path relative to the source root (GTA5 `images/00001.png`,
SYNTHIA `RGB/0000000.png`), as a PNG (or its original format); its label file is hard-linked
(`--labels link`, a copy across file systems), copied or symlinked to its relative path; labels
kept outside the root (an absolute SYNTHIA `labels_dir`) are read from where they are. A list file
under the root is copied. Files are written atomically and existing ones are skipped, so a rerun
after any interruption finishes the job; `DIR/.translate/settings.json` keeps the settings (a
rerun with others is refused unless --overwrite) and `DIR/translate.json`, written last, the
summary with images per second. Under torchrun every rank translates its share.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from udaseg.commands import add_config_arguments
from udaseg.commands import config_path as chosen_config
from udaseg.config import Config, apply_overrides, config_from_dict, load_config
from udaseg.data.datasets import build_dataset
from udaseg.data.io import read_image
from udaseg.data.label_spaces import get_label_space
from udaseg.engine import checkpoint as checkpoints_io
from udaseg.engine.distributed import all_reduce_scalars, barrier, init_distributed
from udaseg.engine.faults import maybe_kill
from udaseg.errors import ConfigError, DataError
from udaseg.evaluation.report import write_json
from udaseg.files import (
    atomic_write,
    check_output_folder,
    refuse_foreign_output,
    remove_stale_temporary_files,
)

MODES = ("fda", "generator")
LABEL_MODES = ("link", "copy", "symlink")
WINDOWS = ("corners", "centered")
DIRECTIONS = ("source_to_target", "target_to_source")
STATE_FOLDER = ".translate"
SETTINGS_FILE = "settings.json"
SUMMARY_FILE = "translate.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(
        parser,
        required=False,
        help="config giving data.source (and data.target for --fda); default with --generator: "
        "the checkpoint's config",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides of that config"
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--fda", action="store_true", help="translate with FDA (needs --beta)")
    mode.add_argument("--generator", metavar="CKPT", help="a bdl_translation checkpoint (F)")
    parser.add_argument("--beta", type=float, help="FDA: window size ratio (0.01, 0.05, 0.09)")
    parser.add_argument(
        "--window", choices=WINDOWS, default="corners", help="FDA: spectrum window (corners)"
    )
    parser.add_argument(
        "--target-folder", metavar="DIR", help="FDA: target images here instead of data.target"
    )
    parser.add_argument("--seed", type=int, default=0, help="FDA: seed of the target pairing")
    parser.add_argument(
        "--direction", choices=DIRECTIONS, default="source_to_target", help="generator: F or F^-1"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        help="translate at this size and resize back to each image's own (default: own size)",
    )
    parser.add_argument(
        "--labels", choices=LABEL_MODES, default="link", help="how labels reach DIR (link)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output dataset root")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace another run's outputs in DIR"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def run(args: argparse.Namespace) -> int:
    config_path = chosen_config(args)
    run_translation(
        config_path=config_path,
        overrides=list(args.overrides),
        out=args.out,
        mode="fda" if args.fda else "generator",
        beta=args.beta,
        window=args.window,
        target_folder=args.target_folder,
        seed=args.seed,
        generator=args.generator,
        direction=args.direction,
        input_size=tuple(args.input_size) if args.input_size else None,
        labels=args.labels,
        overwrite=args.overwrite,
        device=args.device,
    )
    return 0


def run_translation(
    config_path: str | Path | None,
    overrides: list[str],
    out: str | Path,
    mode: str,
    beta: float | None = None,
    window: str = "corners",
    target_folder: str | Path | None = None,
    seed: int = 0,
    generator: str | Path | None = None,
    direction: str = "source_to_target",
    input_size: tuple[int, int] | None = None,
    labels: str = "link",
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Translate the source training set into `out`; resumable; see the module docstring.

    Returns:
        the summary, as written to `out/translate.json`.
    Raises:
        ConfigError: bad options, no `data.source`, `out` holds another run's files.
        DataError: unreadable images, an empty target folder.
    """
    settings = _check_options(mode, beta, window, seed, generator, direction, input_size, labels)
    out = check_output_folder(out, "--out")
    config = _translation_config(config_path, overrides, generator)
    context = init_distributed(device)
    label_space = get_label_space(config.data.label_space)
    source_config = _unaugmented(config.data.source)
    dataset = build_dataset(source_config, label_space, "source")
    if Path(out).resolve() == dataset.root.resolve():
        raise ConfigError(f"--out {out}: is the source root itself; choose another folder")
    translator = _build_translator(
        mode, settings, config, target_folder, label_space, context.device, generator
    )
    settings.update(
        {
            "source": {"kind": source_config.kind, "root": str(dataset.root)},
            "list_file": source_config.list_file,
            "num_images": len(dataset),
            "targets": translator.description,
        }
    )
    finished = _prepare_output(out, settings, overwrite, context.is_main, lambda: barrier(context))
    if finished is None and context.is_main:
        if overwrite:
            # Another run's files at this run's paths must not pass for finished ones.
            _remove_outputs(dataset, out)
        # A kill during a write leaves `.<name>.*.tmp` beside it; no rank writes yet.
        folders = {
            (out / _relative(sample.image, dataset.root)).parent for sample in dataset.samples
        }
        for folder in folders:
            remove_stale_temporary_files(folder)
    barrier(context)
    if finished is not None:
        if context.is_main:
            print(f"{out}: translation already done ({SUMMARY_FILE} exists)", file=sys.stderr)
        return finished

    shard = list(range(context.rank, len(dataset), context.world_size))
    written = skipped = 0
    started = time.perf_counter()
    bar = _progress_bar(len(shard), progress and context.is_main)
    with bar:
        for index in shard:
            sample = dataset.samples[index]
            destination = out / _relative(sample.image, dataset.root)
            _place_label(sample.label, dataset.root, out, labels)
            if destination.is_file():
                skipped += 1
            else:
                image = read_image(sample.image)
                translated = translator(image, index)
                _write_image(destination, translated)
                written += 1
                maybe_kill("translate.image")
            bar.update(1)
    seconds = time.perf_counter() - started
    if context.is_main:
        _copy_list_file(dataset, source_config.list_file, out)
    totals = all_reduce_scalars(
        {"written": float(written), "skipped": float(skipped), "seconds": seconds}, context
    )
    summary = {
        **settings,
        "written": int(round(totals["written"])),
        "skipped": int(round(totals["skipped"])),
        # Images translated in this run per second of this run (summed over ranks).
        "images_per_second": written / seconds * context.world_size if seconds > 0 else None,
        "seconds": round(seconds, 2),
    }
    if context.is_main:
        write_json(out / SUMMARY_FILE, summary)
        rate = summary["images_per_second"]
        rate_text = f"{rate:.2f} images/s" if rate is not None else "nothing to translate"
        print(
            f"translated {summary['written']} images into {out} ({summary['skipped']} already "
            f"there): {rate_text}",
            file=sys.stderr,
        )
    barrier(context)
    return summary


# --- Setup -----------------------------------------------------------------------------------


def _check_options(
    mode: str,
    beta: float | None,
    window: str,
    seed: int,
    generator: str | Path | None,
    direction: str,
    input_size: tuple[int, int] | None,
    labels: str,
) -> dict[str, Any]:
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if labels not in LABEL_MODES:
        raise ConfigError(f"--labels {labels}: expected one of {', '.join(LABEL_MODES)}")
    if input_size is not None and min(input_size) < 1:
        raise ConfigError(f"--input-size {list(input_size)}: expected a positive height, width")
    settings: dict[str, Any] = {"mode": mode, "labels": labels, "input_size": input_size}
    if mode == "fda":
        if beta is None:
            raise ConfigError("--beta: FDA needs the window ratio (the paper's 0.01, 0.05, 0.09)")
        if not 0.0 <= beta <= 0.5:
            raise ConfigError(f"--beta {beta}: must be in [0, 0.5]")
        if window not in WINDOWS:
            raise ConfigError(f"--window {window}: expected one of {', '.join(WINDOWS)}")
        settings.update({"beta": beta, "window": window, "seed": seed})
    else:
        if generator is None:
            raise ConfigError("--generator: give a bdl_translation checkpoint")
        if direction not in DIRECTIONS:
            raise ConfigError(f"--direction {direction}: expected one of {', '.join(DIRECTIONS)}")
        path = Path(generator)
        if not path.is_file():
            raise ConfigError(f"--generator {generator}: no such checkpoint file")
        settings.update({"generator": str(path.resolve()), "direction": direction})
    return settings


def _translation_config(
    config_path: str | Path | None, overrides: list[str], generator: str | Path | None
) -> Config:
    if config_path is not None:
        config = load_config(config_path, overrides)
    elif generator is not None:
        payload = checkpoints_io.read_checkpoint(generator)
        config = config_from_dict(apply_overrides(payload["config"], overrides))
    else:
        raise ConfigError("no config: give CONFIG (its data.source is translated)")
    if config.data.source is None:
        where = config_path if config_path is not None else generator
        raise ConfigError(f"{where}: config key data.source: missing; it names what to translate")
    return config


def _unaugmented(dataset_config: Any) -> Any:
    # The whole images as they are on disk: the translated set is augmented when trained on.
    return dataclasses.replace(
        dataset_config, resize=None, random_scale=None, crop=None, flip=False, pseudo_labels=None
    )


class _Translator:
    """uint8 [H, W, 3] source image (and its index) -> uint8 [H, W, 3] translated image."""

    description: dict[str, Any]

    def __call__(self, image: np.ndarray, index: int) -> np.ndarray:
        raise NotImplementedError


class _FdaTranslator(_Translator):
    def __init__(
        self, targets: list[Path], beta: float, window: str, seed: int, device: torch.device
    ) -> None:
        # Imported here: `udaseg translate --generator` must not need the FDA module.
        from udaseg.translation import fda_source_to_target

        self.transform = fda_source_to_target
        self.targets = targets
        self.beta, self.window, self.seed, self.device = beta, window, seed, device
        self.description = {"count": len(targets), "first": str(targets[0]), "seed": seed}

    def target_for(self, index: int) -> Path:
        """The target image paired with source image `index`: a function of (seed, index)."""
        generator = np.random.default_rng([self.seed, index])
        return self.targets[int(generator.integers(len(self.targets)))]

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, index: int) -> np.ndarray:
        height, width = image.shape[:2]
        target = Image.fromarray(read_image(self.target_for(index)))
        if target.size != (width, height):
            target = target.resize((width, height), Image.BICUBIC)
        source_tensor = _to_tensor(image, self.device)
        target_tensor = _to_tensor(np.asarray(target), self.device)
        translated = self.transform(source_tensor, target_tensor, self.beta, window=self.window)
        return _to_uint8(translated)


class _GeneratorTranslator(_Translator):
    def __init__(
        self,
        checkpoint: str | Path,
        direction: str,
        input_size: tuple[int, int] | None,
        device: torch.device,
    ) -> None:
        from udaseg.engine.loading import load_for_inference

        loaded = load_for_inference(str(checkpoint), None, None, [], device)
        if not hasattr(loaded.method, "translate"):
            raise ConfigError(
                f"--generator {checkpoint}: a checkpoint of method {loaded.config.method.name!r}"
                " has no translation model; give a bdl_translation checkpoint"
            )
        self.method = loaded.method
        self.direction, self.input_size, self.device = direction, input_size, device
        self.description = {"generator": str(checkpoint), "direction": direction}

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, index: int) -> np.ndarray:
        height, width = image.shape[:2]
        if self.input_size is not None:
            image = _resize(image, self.input_size)
        translated = self.method.translate(_to_tensor(image, self.device), self.direction)
        result = _to_uint8(translated)
        if result.shape[:2] != (height, width):
            result = _resize(result, (height, width))
        return result


def _build_translator(
    mode: str,
    settings: dict[str, Any],
    config: Config,
    target_folder: str | Path | None,
    label_space: Any,
    device: torch.device,
    generator: str | Path | None,
) -> _Translator:
    if mode == "generator":
        assert generator is not None
        return _GeneratorTranslator(
            generator, settings["direction"], settings["input_size"], device
        )
    if target_folder is not None:
        targets = _folder_images(Path(target_folder))
    else:
        if config.data.target is None:
            raise ConfigError(
                "config key data.target: missing; FDA needs target images (or --target-folder)"
            )
        target_dataset = build_dataset(_unaugmented(config.data.target), label_space, "target")
        targets = [sample.image for sample in target_dataset.samples]
    return _FdaTranslator(targets, settings["beta"], settings["window"], settings["seed"], device)


def _folder_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"--target-folder {folder}: not a folder")
    images = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not images:
        raise DataError(f"--target-folder {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def _prepare_output(
    out: Path,
    settings: dict[str, Any],
    overwrite: bool,
    is_main: bool,
    wait_for_all: Callable[[], None],
) -> dict[str, Any] | None:
    """The summary of a finished run with these settings, else None after recording them.

    `wait_for_all` is a barrier: every rank has read the old settings before rank 0 replaces
    them.
    """
    settings_path = out / STATE_FOLDER / SETTINGS_FILE
    summary_path = out / SUMMARY_FILE
    settings.update(json.loads(json.dumps(settings)))  # tuples -> lists, as read back
    recorded = _read_json(settings_path)
    same = recorded == settings
    if same and not overwrite and summary_path.is_file():
        return _read_json(summary_path)
    if not overwrite:
        refuse_foreign_output(
            out, recorded, settings, "translate", "a translation made with another", f"--out {out}"
        )
    wait_for_all()
    if is_main:
        summary_path.unlink(missing_ok=True)
        write_json(settings_path, settings)
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# --- Files -----------------------------------------------------------------------------------


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        raise ConfigError(
            f"{path}: not under the source root {root}; only images under it can be translated"
        ) from None


def _label_destination(label: Path | None, root: Path, out: Path) -> Path | None:
    """Where the sample's label goes under `out`; None for labels kept outside the root (an
    absolute SYNTHIA labels_dir: the translated set's config reads them where they are)."""
    if label is None:
        return None
    try:
        return out / label.relative_to(root)
    except ValueError:
        return None


def _place_label(label: Path | None, root: Path, out: Path, mode: str) -> None:
    """Link, copy or symlink the sample's label to its place under `out`, unless it is there."""
    destination = _label_destination(label, root, out)
    if label is None or destination is None or os.path.lexists(destination):
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        os.symlink(label.resolve(), destination)
        return
    if mode == "link":
        try:
            os.link(label, destination)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy instead
    atomic_write(destination, lambda stream: stream.write(label.read_bytes()))


def _remove_outputs(dataset: Any, out: Path) -> None:
    """Delete the files this run writes (images and labels), and nothing else, under `out`."""
    for sample in dataset.samples:
        paths = [out / _relative(sample.image, dataset.root)]
        paths.append(_label_destination(sample.label, dataset.root, out))
        for path in paths:
            if path is not None and os.path.lexists(path):
                path.unlink()


def _write_image(destination: Path, image: np.ndarray) -> None:
    suffix = destination.suffix.lower()
    image_format = Image.registered_extensions().get(suffix, "PNG")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    atomic_write(destination, lambda stream: stream.write(buffer.getvalue()))


def _copy_list_file(dataset: Any, list_file: str | None, out: Path) -> None:
    if list_file is None:
        return
    path = dataset.resolve(list_file)
    try:
        relative = path.resolve().relative_to(dataset.root.resolve())
    except ValueError:
        return  # outside the root: the translated set's config can name it as it is
    atomic_write(out / relative, lambda stream: stream.write(path.read_bytes()))


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="translate",
        unit="img",
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        disable=not enabled,
    )


# --- Pixels ----------------------------------------------------------------------------------


def _to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in 0..255 on `device`."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().to(device)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [1, 3, H, W] in 0..255 (FDA's may overshoot) -> uint8 [H, W, 3], rounded, clipped."""
    return images[0].float().round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [height, width, 3], PIL bicubic."""
    height, width = size
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
