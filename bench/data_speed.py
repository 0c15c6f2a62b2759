"""Data loading at the papers' sizes: samples/s of one loader worker, per dataset and setting.

Writes small GTA5 (1914x1052) and Cityscapes (2048x1024) layouts with photo-like noise (the file
sizes are printed: real GTA5 PNGs are 2-3 MB), then times the real datasets' __getitem__ (PNG
decode, PIL bicubic resize to 1280x720 / 1024x512, label mapping and nearest resize) as
`udaseg train` runs it in each worker, against:
- decode only: what a worker spends before any resizing;
- `reducing_gap`: Pillow's JPEG-style shrink before the bicubic pass (faster, other pixels);
- a pre-resized copy of the images (what a one-off resize cache would read).

    python bench/data_speed.py --count 6 --repeats 3

Prints one JSON line; samples_per_second is per worker (one process, 1 thread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fake_layouts import write_cityscapes, write_gta5  # noqa: E402
from udaseg.config import load_config  # noqa: E402
from udaseg.data import transforms  # noqa: E402
from udaseg.data.datasets import build_dataset  # noqa: E402
from udaseg.data.label_spaces import get_label_space  # noqa: E402

GTA5_SIZE = (1052, 1914)
CITYSCAPES_SIZE = (1024, 2048)


def per_second(function: Callable[[int], object], count: int, repeats: int) -> float:
    """Samples per second over `repeats` passes of indices 0..count-1 (median pass)."""
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        for index in range(count):
            function(index)
        durations.append(time.perf_counter() - started)
    return round(count / statistics.median(durations), 2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=6, help="images per dataset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reducing-gap", type=float, default=3.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_gta5(root / "GTA5", count=args.count, size=GTA5_SIZE, seed=0)
        write_cityscapes(root / "cityscapes", {"train": args.count}, size=CITYSCAPES_SIZE)
        config = load_config(
            Path(__file__).resolve().parents[1] / "configs/benchmarks/gta5_cityscapes.yaml",
            [f"data.source.root={root / 'GTA5'}", f"data.target.root={root / 'cityscapes'}"],
        )
        label_space = get_label_space(config.data.label_space)
        source = build_dataset(config.data.source, label_space, "source")
        target = build_dataset(config.data.target, label_space, "target")
        result: dict[str, object] = {
            "gta5_image_megabytes": round(
                np.mean([p.stat().st_size for p in (root / "GTA5/images").glob("*.png")]) / 1e6, 2
            ),
        }
        for name, dataset in (("gta5", source), ("cityscapes", target)):
            images = [sample.image for sample in dataset.samples]
            result[f"{name}_decode_only"] = per_second(
                lambda index, images=images: np.asarray(Image.open(images[index]).convert("RGB")),
                args.count,
                args.repeats,
            )
            result[f"{name}_sample"] = per_second(dataset.__getitem__, args.count, args.repeats)

            # Pillow's reducing_gap: an integer box reduction first, then bicubic on the rest.
            original = transforms.resize_image

            def reducing(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
                height, width = size
                resized = Image.fromarray(image).resize(
                    (width, height), Image.Resampling.BICUBIC, reducing_gap=args.reducing_gap
                )
                return np.asarray(resized)

            transforms.resize_image = reducing
            try:
                result[f"{name}_sample_reducing_gap"] = per_second(
                    dataset.__getitem__, args.count, args.repeats
                )
            finally:
                transforms.resize_image = original

            # What a cache of pre-resized images would read: the same pipeline, already small.
            cached = root / f"{name}_cached"
            cached.mkdir()
            size = dataset_resize(config, name)
            cached_images = []
            for index, path in enumerate(images):
                small = Image.open(path).convert("RGB").resize(size[::-1], Image.Resampling.BICUBIC)
                cached_path = cached / f"{index}.png"
                small.save(cached_path)
                cached_images.append(cached_path)
            result[f"{name}_decode_cached"] = per_second(
                lambda index, paths=cached_images: np.asarray(Image.open(paths[index])),
                args.count,
                args.repeats,
            )
        result["unit"] = "samples/s per worker (1 process)"
        print(json.dumps(result))


def dataset_resize(config, name: str) -> tuple[int, int]:
    section = config.data.source if name == "gta5" else config.data.target
    return tuple(section.resize)


if __name__ == "__main__":
    main()
