"""Writing the toy benchmark in the real datasets' on-disk layouts, and caching it.

Layout under the output directory (REFERENCE §4):

    toy.json                                   manifest: arguments, counts, class frequencies
    source/images/00001.png                    GTA5 layout (default): RGB
    source/labels/00001.png                    palettised, indices = Cityscapes labelIds
    source/RGB/0000000.png                     SYNTHIA layout (`layout="synthia"`): RGB
    source/GT/LABELS/0000000.png               16-bit RGB: SYNTHIA class id, instance id, 0
    target/leftImg8bit/{train,val}/<city>/<city>_000000_NNNNNN_leftImg8bit.png
    target/gtFine/{train,val}/<city>/<city>_000000_NNNNNN_gtFine_labelIds.png
    target/{train,val}/010NTY_NNNNNN.png       CamVid layout (`target_layout="camvid"`): RGB
    target/{train,val}_labels/010NTY_NNNNNN_L.png   RGB colours of CamVid's 32 classes

Target train labels are written too: the demo trains a target-oracle model on them. UDA methods
never read them, because the target training set is built with `role="target"`.

Every image is a pure function of (seed, domain, index, size, layout, target style): its random
generator is seeded from (seed, domain, index), so the files are byte-identical whatever the
number of worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from udaseg.data.io import write_palettised_png, write_png
from udaseg.data.label_spaces import (
    CAMVID32_COLOURS,
    CAMVID32_NAMES,
    CAMVID32_TO_CITYSCAPES,
    CITYSCAPES19,
    CITYSCAPES_LABELS,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    SYNTHIA_IDS,
)
from udaseg.data.toy.canvas import (
    BICYCLE,
    BUS,
    CAR,
    EGO_VEHICLE,
    LANE_MARKING,
    MOTORCYCLE,
    PERSON,
    RIDER,
    TRAIN,
    TRUCK,
)
from udaseg.data.toy.render import render
from udaseg.data.toy.scene import SYNTHIA_EXCLUDED, LayoutParams, build_scene
from udaseg.data.toy.styles import TargetStyle, source_style
from udaseg.errors import ConfigError, DataError

# Version 1: the first benchmark (per-material looks and a global camera response; batch-norm
# statistics undo half its gap). Version 2 adds a class-dependent, spatially varying shift
# (`TargetStyle.version2()`, docs/toy-benchmark.md); its source images are version 1's.
VERSIONS = (1, 2)
TOY_VERSION = 2  # the version `toy://` roots and make-toy use when none is named


def default_target_style(version: int) -> TargetStyle:
    """The target knobs of a benchmark version."""
    if version not in VERSIONS:
        raise ConfigError(
            f"version: expected one of {', '.join(map(str, VERSIONS))}, got {version}"
        )
    return TargetStyle.version2() if version == 2 else TargetStyle()


GENERATOR = "udaseg.toy"
MANIFEST = "toy.json"

# 128x256: at output stride 8 a DeepLab sees 16x32 logits, where poles, signs, persons and
# bicycles still cover whole cells; at 64x128 (8x16 logits) they vanish. Training cost is set
# by the crop size, not the image size, so a CPU demo trains on crops and evaluates on the full
# images; a smaller image can always be had with the dataset's `resize`.
DEFAULT_SIZE: tuple[int, int] = (128, 256)
DEFAULT_NUM_SOURCE = 1500
DEFAULT_NUM_TARGET = 1500
DEFAULT_NUM_VAL = 300
LAYOUTS = ("gta5", "synthia")
# The target's layout: Cityscapes (default), or CamVid's 32-class RGB labels in split folders,
# for SYNTHIA -> CamVid (docs/benchmarks-camvid.md).
TARGET_LAYOUTS = ("cityscapes", "camvid")

# Invented city names; Cityscapes' own val cities are frankfurt, lindau and munster.
TRAIN_CITIES = ("ashford", "brackley", "corbridge", "dunmore")
VAL_CITIES = ("eastwick", "fenwick")
# Invented CamVid-style sequence names (CamVid's own are 0001TP, 0006R0, 0016E5, Seq05VD).
CAMVID_SEQUENCES = {"train": "0101TY", "val": "0102TY"}

# Domain codes in the per-image seed.
_DOMAIN_CODES = {"source": 1, "target_train": 2, "target_val": 3}
_CHUNK = 25  # images per worker task: small enough to balance two workers


# --- Class id tables ----------------------------------------------------------------------------


def _cityscapes_label_id_table() -> np.ndarray:
    """Toy-internal class -> Cityscapes labelId (uint8 [256]); void -> 0 (unlabeled)."""
    table = np.zeros(256, dtype=np.uint8)
    for train_id, label_id in enumerate(CITYSCAPES19.cityscapes_label_ids):
        table[train_id] = label_id
    table[LANE_MARKING] = 7  # road: Cityscapes and GTA5 label lane marks as road
    table[EGO_VEHICLE] = 1  # "ego vehicle"
    return table


def _synthia_id_table() -> np.ndarray:
    """Toy-internal class -> SYNTHIA class id (uint16 [256]); void -> 0."""
    table = np.zeros(256, dtype=np.uint16)
    for raw, train_id in SYNTHIA_IDS.table.items():
        if train_id != IGNORE_INDEX:
            table[train_id] = raw
    table[LANE_MARKING] = 22  # "lanemarking", void in the SYNTHIA -> Cityscapes mapping
    return table


def _train_id_table(layout: str) -> np.ndarray:
    """Toy-internal class -> the train id the real readers produce (uint8 [256])."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[:19] = np.arange(19)
    table[LANE_MARKING] = IGNORE_INDEX if layout == "synthia" else 0
    return table


def _camvid32_index_table() -> np.ndarray:
    """Toy-internal class -> CamVid-32 class index (uint8 [256]); void -> Void.

    Each toy class gets the CamVid class a CamVid annotator would give it: CamVid has no truck
    (Truck_Bus, read back as bus) and no bicycle apart from its rider (Bicyclist, read back as
    rider); lane marks are LaneMkgsDriv (road).
    """
    names = {
        "road": "Road",
        "sidewalk": "Sidewalk",
        "building": "Building",
        "wall": "Wall",
        "fence": "Fence",
        "pole": "Column_Pole",
        "traffic light": "TrafficLight",
        "traffic sign": "SignSymbol",
        "vegetation": "Tree",
        "terrain": "VegetationMisc",
        "sky": "Sky",
        "person": "Pedestrian",
        "rider": "Bicyclist",
        "car": "Car",
        "truck": "Truck_Bus",
        "bus": "Truck_Bus",
        "train": "Train",
        "motorcycle": "MotorcycleScooter",
        "bicycle": "Bicyclist",
    }
    table = np.full(256, CAMVID32_NAMES.index("Void"), dtype=np.uint8)
    for train_id, name in enumerate(CITYSCAPES19.class_names):
        table[train_id] = CAMVID32_NAMES.index(names[name])
    table[LANE_MARKING] = CAMVID32_NAMES.index("LaneMkgsDriv")
    return table


CITYSCAPES_LABEL_ID_OF = _cityscapes_label_id_table()
CAMVID32_INDEX_OF = _camvid32_index_table()
CAMVID32_COLOUR_TABLE = np.array([colour for _, colour in CAMVID32_COLOURS], dtype=np.uint8)
SYNTHIA_ID_OF = _synthia_id_table()
THING_CLASSES = (PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE)


def _label_id_palette() -> list[tuple[int, int, int]]:
    """GTA5's label palette: the Cityscapes colour of each labelId (void ids black)."""
    palette = [(0, 0, 0)] * 256
    for label_id, _, train_id in CITYSCAPES_LABELS:
        if train_id != IGNORE_INDEX:
            palette[label_id] = CITYSCAPES_PALETTE[train_id]
    return palette


LABEL_ID_PALETTE = _label_id_palette()


# --- One image -----------------------------------------------------------------------------------


def layout_params(domain: str, layout: str, target_style: TargetStyle) -> LayoutParams:
    """Scene layout parameters of a domain ("source", "target_train" or "target_val")."""
    params = LayoutParams()
    if domain == "source":
        if layout == "synthia":
            return LayoutParams(excluded=SYNTHIA_EXCLUDED)
        return params
    return params.with_changes(
        horizon_shift=target_style.horizon_shift,
        camera_height_shift=target_style.camera_height_shift,
        frequency=target_style.object_frequency,
        ego_vehicle=target_style.ego_vehicle,
        shape=target_style.object_shape,
    )


def render_sample(
    seed: int,
    domain: str,
    index: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    layout: str = "gta5",
    target_style: TargetStyle | None = None,
    version: int = TOY_VERSION,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one toy image and its labels, without writing anything.

    Args:
        seed: the benchmark seed.
        domain: "source", "target_train" or "target_val".
        index: the image's index within its domain (0-based).
        size: (height, width) of the output.
        layout: "gta5" or "synthia" (the source domain then has no terrain, truck or train).
        target_style: the target's knobs (default: those of `version`).
        version: the benchmark version (1 or 2), used when `target_style` is not given.
    Returns:
        image uint8 [H, W, 3]; classes uint8 [H, W] (toy-internal ids: train ids 0..18, 19 lane
        marking, 20 ego vehicle); instances int32 [H, W].
    """
    target_style = target_style or default_target_style(version)
    rng = np.random.default_rng([seed, _DOMAIN_CODES[domain], index])
    height, width = size
    canvas = build_scene(rng, layout_params(domain, layout, target_style), 2 * height, 2 * width)
    style = source_style() if domain == "source" else target_style.domain()
    return render(canvas, style, rng)


# --- Paths -----------------------------------------------------------------------------------------


def source_paths(out_dir: Path, layout: str, index: int) -> tuple[Path, Path]:
    """(image, label) paths of source image `index` (0-based)."""
    if layout == "synthia":
        name = f"{index:07d}.png"  # SYNTHIA counts from 0000000
        return out_dir / "source" / "RGB" / name, out_dir / "source" / "GT" / "LABELS" / name
    name = f"{index + 1:05d}.png"  # GTA5 counts from 00001
    return out_dir / "source" / "images" / name, out_dir / "source" / "labels" / name


def target_paths(
    out_dir: Path, split: str, index: int, count: int, target_layout: str = "cityscapes"
) -> tuple[Path, Path]:
    """(image, label) paths of target image `index` of `count` in `split` ("train"/"val").

    Cityscapes layout: images are shared out in blocks over the split's cities; frames are
    numbered per city. CamVid layout: one sequence per split, frames numbered from 1.
    """
    if target_layout == "camvid":
        stem = f"{CAMVID_SEQUENCES[split]}_{index + 1:06d}"
        target = out_dir / "target"
        return target / split / f"{stem}.png", target / f"{split}_labels" / f"{stem}_L.png"
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    per_city = -(-count // len(cities))
    city = cities[index // per_city]
    stem = f"{city}_000000_{index % per_city + 1:06d}"
    image = out_dir / "target" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
    label = out_dir / "target" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
    return image, label


# --- Writing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    out_dir: str
    domain: str
    indices: tuple[int, ...]
    count: int
    seed: int
    size: tuple[int, int]
    layout: str
    target_style: dict
    target_layout: str = "cityscapes"


def _run_job(job: _Job) -> np.ndarray:
    """Render and write a chunk of images; returns pixel counts per train id [20] (19 = void)."""
    out_dir = Path(job.out_dir)
    target_style = TargetStyle.from_dict(job.target_style)
    train_ids = _train_id_table(job.layout)
    counts = np.zeros(20, dtype=np.int64)
    for index in job.indices:
        image, classes, instances = render_sample(
            job.seed, job.domain, index, job.size, job.layout, target_style
        )
        if job.domain == "source":
            image_path, label_path = source_paths(out_dir, job.layout, index)
        else:
            split = "train" if job.domain == "target_train" else "val"
            image_path, label_path = target_paths(
                out_dir, split, index, job.count, job.target_layout
            )
        write_png(image_path, image)
        if job.domain == "source" and job.layout == "synthia":
            things = np.isin(classes, THING_CLASSES)
            label = np.zeros(classes.shape + (3,), dtype=np.uint16)
            label[:, :, 0] = SYNTHIA_ID_OF[classes]
            label[:, :, 1] = np.where(things, instances, 0).astype(np.uint16)
            write_png(label_path, label)
        elif job.domain == "source":
            write_palettised_png(label_path, CITYSCAPES_LABEL_ID_OF[classes], LABEL_ID_PALETTE)
        elif job.target_layout == "camvid":
            write_png(label_path, CAMVID32_COLOUR_TABLE[CAMVID32_INDEX_OF[classes]])
        else:
            write_png(label_path, CITYSCAPES_LABEL_ID_OF[classes])
        if job.domain != "source" and job.target_layout == "camvid":
            # Count what the CamVid reader gives back (truck as bus, bicycle as rider).
            mapped = CAMVID32_TO_CITYSCAPES.apply(CAMVID32_INDEX_OF[classes])
        else:
            mapped = train_ids[classes]
        counts += np.bincount(np.minimum(mapped, 19).ravel(), minlength=20)
    return counts


def _check_arguments(
    size: tuple[int, int], layout: str, counts: dict[str, int], target_layout: str = "cityscapes"
) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if target_layout not in TARGET_LAYOUTS:
        raise ConfigError(
            f"target_layout: expected one of {', '.join(TARGET_LAYOUTS)}, got {target_layout!r}"
        )
    height, width = size
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise ConfigError(
            f"size: expected an even height and width of at least 16, got {height}x{width}"
        )
    options = {"source": "num_source", "target_train": "num_target", "target_val": "num_val"}
    for name, count in counts.items():
        if count < 0:
            raise ConfigError(f"{options[name]}: expected a count >= 0, got {count}")
    if counts["target_train"] > 999_999 or counts["source"] > 99_999:
        raise ConfigError("counts: at most 99999 source and 999999 target images per split")


def _is_toy_directory(directory: Path) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == GENERATOR


def _staging_name() -> str:
    return f".toy-partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _frequencies(counts: np.ndarray) -> dict[str, float]:
    total = max(int(counts.sum()), 1)
    names = list(CITYSCAPES19.class_names) + ["void"]
    return {name: round(int(count) / total, 6) for name, count in zip(names, counts, strict=True)}


def generate_toy(
    out_dir: str | Path,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    layout: str = "gta5",
    num_source: int = DEFAULT_NUM_SOURCE,
    num_target: int = DEFAULT_NUM_TARGET,
    num_val: int = DEFAULT_NUM_VAL,
    workers: int | None = None,
    target_style: TargetStyle | None = None,
    progress: Callable[[int, int], None] | None = None,
    version: int = TOY_VERSION,
    target_layout: str = "cityscapes",
) -> dict:
    """Write the toy benchmark into `out_dir` and return its manifest.

    `out_dir` must be missing, empty, or a previous toy output (whose `source/`, `target/` and
    `toy.json` are replaced; other files in it are left alone). Everything is written into a
    hidden staging folder inside `out_dir` first and moved into place when complete, so an
    interrupted run never leaves a half-written benchmark under the final names.

    Args:
        out_dir: destination directory.
        seed: benchmark seed; the same arguments give byte-identical files.
        size: (height, width) of every image.
        layout: "gta5" (source in the GTA5 layout) or "synthia" (SYNTHIA layout, 16-bit labels).
        num_source, num_target, num_val: images in source, target train and target val.
        workers: processes (default: up to 2, fewer for small benchmarks); 1 = in-process.
        target_style: the target domain's knobs (default: those of `version`).
        progress: called with (images done, images total) after each chunk.
        version: the benchmark version, 1 or 2 (`VERSIONS`).
        target_layout: "cityscapes" or "camvid" (CamVid split folders, 32-class RGB labels);
            the images are the same either way.
    Returns:
        the manifest written to `out_dir/toy.json`.
    Raises:
        DataError: `out_dir` is a file, or a non-empty directory that is not a toy output.
        ConfigError: an argument is out of range.
    """
    out_dir = Path(out_dir).expanduser()
    target_style = target_style or default_target_style(version)
    size = (int(size[0]), int(size[1]))
    counts = {"source": num_source, "target_train": num_target, "target_val": num_val}
    _check_arguments(size, layout, counts, target_layout)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    if (
        out_dir.is_dir()
        and any(not entry.name.startswith(".toy-partial-") for entry in out_dir.iterdir())
        and not _is_toy_directory(out_dir)
    ):
        raise DataError(
            f"{out_dir}: directory is not empty and holds no toy benchmark (no {MANIFEST} "
            "written by udaseg); choose a new or empty directory"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / _staging_name()
    staging.mkdir()
    try:
        jobs = [
            _Job(
                str(staging),
                domain,
                tuple(range(start, min(start + _CHUNK, count))),
                count,
                seed,
                size,
                layout,
                target_style.to_dict(),
                target_layout,
            )
            for domain, count in counts.items()
            for start in range(0, count, _CHUNK)
        ]
        total = sum(counts.values())
        if workers is None:
            workers = min(2, os.cpu_count() or 1) if total >= 200 else 1
        pixel_counts = {domain: np.zeros(20, dtype=np.int64) for domain in counts}
        done = 0
        if workers <= 1:
            results = map(_run_job, jobs)
            for job, result in zip(jobs, results, strict=True):
                pixel_counts[job.domain] += result
                done += len(job.indices)
                if progress is not None:
                    progress(done, total)
        else:
            # "spawn": safe after torch has started threads in the parent (the demo imports it).
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                for job, result in zip(jobs, pool.map(_run_job, jobs), strict=True):
                    pixel_counts[job.domain] += result
                    done += len(job.indices)
                    if progress is not None:
                        progress(done, total)
        for domain, directory in (
            ("source", "source"),
            ("target_train", "target"),
            ("target_val", "target"),
        ):
            if counts[domain] == 0:
                (staging / directory).mkdir(exist_ok=True)
        manifest = {
            "generator": GENERATOR,
            "version": version,
            "seed": seed,
            "size": list(size),
            "layout": layout,
            "counts": counts,
            "cities": {"train": list(TRAIN_CITIES), "val": list(VAL_CITIES)},
            "datasets": dataset_configs(out_dir, layout, target_layout),
            "target_style": target_style.to_dict(),
            "class_frequencies": {
                domain: _frequencies(pixels) for domain, pixels in pixel_counts.items()
            },
        }
        if target_layout != "cityscapes":  # the default's manifest stays as it was
            manifest["target_layout"] = target_layout
            del manifest["cities"]
            manifest["sequences"] = dict(CAMVID_SEQUENCES)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        # Swap the finished benchmark in: old entries out of the way first, the manifest last,
        # so a toy.json always describes complete data.
        (out_dir / MANIFEST).unlink(missing_ok=True)
        for name in ("source", "target"):
            if (out_dir / name).exists():
                (out_dir / name).rename(staging / f"old-{name}")
            (staging / name).rename(out_dir / name)
        (staging / MANIFEST).rename(out_dir / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for stale in out_dir.glob(".toy-partial-*"):  # left by interrupted runs
        shutil.rmtree(stale, ignore_errors=True)
    return manifest


def dataset_configs(
    root: str | Path, layout: str = "gta5", target_layout: str = "cityscapes"
) -> dict[str, dict]:
    """The `data.source`, `data.target` and `data.val` sections that read a toy benchmark."""
    root = Path(root)
    source_kind = "synthia" if layout == "synthia" else "gta5"
    if target_layout == "camvid":
        target = {"kind": "camvid", "labels": "camvid32", "root": str(root / "target")}
        return {
            "source": {"kind": source_kind, "root": str(root / "source")},
            "target": {**target, "split": "train"},
            "val": {**target, "split": "val"},
        }
    return {
        "source": {"kind": source_kind, "root": str(root / "source")},
        "target": {"kind": "cityscapes", "root": str(root / "target"), "split": "train"},
        "val": {"kind": "cityscapes", "root": str(root / "target"), "split": "val"},
    }


# --- Cache -------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """`$UDASEG_CACHE`, else `~/.cache/udaseg`."""
    return Path(os.environ.get("UDASEG_CACHE") or Path.home() / ".cache" / "udaseg").expanduser()


def cache_key(
    seed: int,
    size: tuple[int, int],
    layout: str,
    num_source: int,
    num_target: int,
    num_val: int,
    target_style: TargetStyle,
    version: int = TOY_VERSION,
    target_layout: str = "cityscapes",
) -> str:
    """A short hash of everything that determines the benchmark's files."""
    arguments = {
        "version": version,
        "seed": seed,
        "size": [int(size[0]), int(size[1])],
        "layout": layout,
        "counts": [num_source, num_target, num_val],
        "target_style": target_style.to_dict(),
    }
    if target_layout != "cityscapes":  # so that the default's key (and cache) is unchanged
        arguments["target_layout"] = target_layout
    text = json.dumps(arguments, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def ensure_toy(
    root: str | Path | None = None,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    layout: str = "gta5",
    num_source: int = DEFAULT_NUM_SOURCE,
    num_target: int = DEFAULT_NUM_TARGET,
    num_val: int = DEFAULT_NUM_VAL,
    workers: int | None = None,
    target_style: TargetStyle | None = None,
    progress: Callable[[int, int], None] | None = None,
    version: int = TOY_VERSION,
    target_layout: str = "cityscapes",
) -> Path:
    """The directory of a complete toy benchmark with these arguments, generated if missing.

    The benchmark lives in `<root>/toy/<hash of the arguments>`, where `root` defaults to
    `cache_root()` (`$UDASEG_CACHE` or `~/.cache/udaseg`). It is generated into a temporary
    sibling and renamed into place when complete, so concurrent callers (pytest workers) and
    interrupted runs never see a partial benchmark.

    Returns:
        the benchmark directory (with `toy.json`, `source/`, `target/`); pass it to
        `dataset_configs` for the dataset sections.
    """
    target_style = target_style or default_target_style(version)
    base = (Path(root).expanduser() if root is not None else cache_root()) / "toy"
    key = cache_key(
        seed, size, layout, num_source, num_target, num_val, target_style, version, target_layout
    )
    final = base / key
    if _is_toy_directory(final):
        return final
    base.mkdir(parents=True, exist_ok=True)
    partial = base / f".partial-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate_toy(
            partial,
            seed=seed,
            size=size,
            layout=layout,
            num_source=num_source,
            num_target=num_target,
            num_val=num_val,
            workers=workers,
            target_style=target_style,
            progress=progress,
            version=version,
            target_layout=target_layout,
        )
        manifest_path = partial / MANIFEST
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["datasets"] = dataset_configs(final, layout, target_layout)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        try:
            partial.rename(final)
        except OSError:
            if not _is_toy_directory(final):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a toy benchmark directory."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; is {directory} a toy benchmark?") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read toy manifest ({error})") from None
