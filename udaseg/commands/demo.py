"""`udaseg demo`: the domain gap on the embedded toy benchmark, on a laptop CPU.

Generates the toy benchmark if it is not cached, trains a source-only model (labelled source
images only) and a target-oracle model (labelled target images: the ceiling no UDA method is
expected to pass), evaluates both on the target val split and prints their per-class IoUs side
by side. With several seeds it reports the mean and standard deviation of each mIoU.
It ends with a short guide for a newcomer: what the two models and the gap between them mean,
where the runs, a picture of their predictions (`demo.png`) and the toy data are, and what to
run next.

On a CPU the runs train concurrently, one process per core with one thread each: small models
keep two threads busy poorly, so two single-threaded runs finish sooner than two runs in a row.
A finished run in the output folder is reused and an interrupted one resumed, so running the
demo twice costs the second time only the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when the demo runs, not when the CLI lists commands
    import torch

DEMO_RUNS = {
    # column title -> packaged config
    "source-only": "toy/source_only.yaml",
    "target oracle": "toy/oracle.yaml",
}

# The picture written next to the runs: one row per target val image, these columns. Titles are
# short because a toy image is only 128 px wide in the tests (256 px in the default benchmark).
PICTURE_NAME = "demo.png"
PICTURE_COLUMNS = ("target image", "ground truth", "source-only", "target oracle")
PICTURE_ROWS = 4
PICTURE_TITLE_HEIGHT = 16  # pixels above the first row, for the column titles
PICTURE_GAP = 2  # white pixels between tiles, so that neighbouring label maps stay apart


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)"
    )
    parser.add_argument(
        "--toy-dir",
        help="an existing toy benchmark (udaseg make-toy --out DIR) instead of the cached default",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="runs trained at once on a CPU (default: the number of cores, at most the runs)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="key=value",
        help="override for every run, e.g. train.steps=200",
    )


@dataclass
class Job:
    title: str
    seed: int
    config_name: str
    run_dir: Path
    overrides: list[str]
    steps: int

    @property
    def finished(self) -> bool:
        from udaseg.engine.checkpoint import step_checkpoints

        found = step_checkpoints(self.run_dir / "checkpoints")
        final = self.run_dir / "eval" / "final.json"
        return final.is_file() and bool(found) and found[-1][0] >= self.steps

    @property
    def started(self) -> bool:
        from udaseg.engine.checkpoint import LAST

        return (self.run_dir / "checkpoints" / LAST).exists()


def run(args: argparse.Namespace) -> int:
    import torch

    from udaseg.config import load_config
    from udaseg.evaluation.metrics import EvaluationResult
    from udaseg.evaluation.report import format_table, write_json

    started = time.time()
    out = Path(args.out)
    jobs = []
    for seed in args.seeds:
        for title, config_name in DEMO_RUNS.items():
            run_dir = out / f"seed{seed}" / Path(config_name).stem
            overrides = [*args.overrides, f"seed={seed}", f"run_dir={run_dir}"]
            config = load_config(config_name, overrides)
            overrides += _root_overrides(config, args.toy_dir)
            jobs.append(Job(title, seed, config_name, run_dir, overrides, config.train.steps))

    _prepare_toy(jobs, args.toy_dir)
    pending = [job for job in jobs if not job.finished]
    for job in jobs:
        if job.finished:
            print(f"[demo] {job.title}, seed {job.seed}: reusing {job.run_dir}", file=sys.stderr)
    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    cores = os.cpu_count() or 1
    parallel = max(1, min(args.parallel or cores, len(pending))) if on_cpu else 1
    if pending:
        if parallel > 1:
            _train_concurrently(
                pending, parallel, threads=max(1, cores // parallel), device=args.device
            )
        else:
            _train_in_process(pending, args.device)

    results: dict[str, list[EvaluationResult]] = {title: [] for title in DEMO_RUNS}
    for job in jobs:
        final = job.run_dir / "eval" / "final.json"
        results[job.title].append(
            EvaluationResult.from_dict(json.loads(final.read_text(encoding="utf-8")))
        )

    columns = {title: _mean_result(runs) for title, runs in results.items()}
    print()
    print(format_table(columns))
    print()
    for title, runs in results.items():
        for subset in runs[0].miou:
            values = [100 * result.miou[subset] for result in runs]
            spread = ""
            if len(values) > 1:
                listed = ", ".join(f"{value:.2f}" for value in values)
                spread = (
                    f" ± {statistics.stdev(values):.2f} (std over {len(values)} seeds: {listed})"
                )
            print(f"{title:>14} {subset}: {statistics.fmean(values):.2f}{spread}")
    gap = {
        subset: 100 * (columns["target oracle"].miou[subset] - columns["source-only"].miou[subset])
        for subset in columns["source-only"].miou
    }
    gaps = ", ".join(f"{name} {value:.1f} points" for name, value in gap.items())
    print(f"\ndomain gap (oracle - source-only): {gaps}")
    write_json(
        out / "demo.json", {title: [r.to_dict() for r in runs] for title, runs in results.items()}
    )

    # The picture shows the first seed's two models: one pair is enough to see the gap.
    first_seed = {job.title: job for job in jobs if job.seed == args.seeds[0]}
    picture = out / PICTURE_NAME
    draw_predictions(
        first_seed["source-only"].run_dir,
        first_seed["target oracle"].run_dir,
        picture,
        torch.device("cpu" if on_cpu else "cuda"),
    )
    toy_directory = Path(args.toy_dir) if args.toy_dir is not None else _cached_toy_directory()
    # Suggested training commands take the demo's overrides and data roots, so that they read the
    # same data and build the same model (the AdaBN control loads a demo checkpoint).
    source_only_config = load_config(DEMO_RUNS["source-only"], args.overrides)
    training_overrides = [*args.overrides, *_root_overrides(source_only_config, args.toy_dir)]
    print(f"demo finished in {time.time() - started:.0f} s")
    print()
    print(closing_text(jobs, gap, picture, toy_directory, training_overrides))
    return 0


def closing_text(
    jobs: list[Job],
    gap: dict[str, float],
    picture: Path,
    toy_directory: Path,
    training_overrides: list[str],
) -> str:
    """The demo's last words: what the numbers mean, where everything is, what to try next.

    Args:
        jobs: the demo's runs, every seed; commands name the first seed's.
        gap: mIoU subset -> oracle minus source-only, in points.
        picture: the predictions picture.
        toy_directory: the toy benchmark the runs read.
        training_overrides: `key=value` pairs appended to the suggested training commands.
    """
    first_seed = {job.title: job for job in jobs if job.seed == jobs[0].seed}
    source_only_checkpoint = first_seed["source-only"].run_dir / "checkpoints" / "last.pt"
    oracle_checkpoint = first_seed["target oracle"].run_dir / "checkpoints" / "last.pt"
    subset, points = next(iter(gap.items()))
    extra = "".join(f" {shlex.quote(override)}" for override in training_overrides)
    adabn_init = shlex.quote(f"init.segmentor={source_only_checkpoint}")
    size = _format_size(_disk_usage(toy_directory))

    def run_dirs(title: str) -> str:
        return ", ".join(str(job.run_dir) for job in jobs if job.title == title)

    lines = [
        "What the two models are",
        "  source-only    trained on labelled source-style images only "
        f"({DEMO_RUNS['source-only']})",
        "  target oracle  the same recipe trained on the labelled target train images instead",
        f"                 ({DEMO_RUNS['target oracle']}): a ceiling no adaptation method is "
        "expected to pass",
        f"  The gap between them, {points:.1f} {subset} points here, is what unsupervised domain",
        "  adaptation tries to recover, from source labels and unlabelled target images.",
        "",
        "Where things are",
        f"  source-only run    {run_dirs('source-only')}",
        f"  target oracle run  {run_dirs('target oracle')}",
        f"  picture            {picture}",
        f"                     one row per val image: {', '.join(PICTURE_COLUMNS)}",
        f"  toy data           {toy_directory} ({size} on disk)",
        "",
        "Try next",
        "  an adaptation method (every toy method has a config in udaseg/configs/toy/):",
        f"    udaseg train toy/adaptsegnet_single.yaml{extra}",
        "  the AdaBN control: the source-only model, its BN statistics re-estimated on target:",
        f"    udaseg train toy/adabn.yaml {adabn_init}{extra}",
        "  score a checkpoint on the target val split again (--json FILE keeps the numbers):",
        f"    udaseg eval --checkpoint {shlex.quote(str(oracle_checkpoint))}",
        "  self-training on pseudo labels, every stage in one resumable command:",
        f"    udaseg recipe recipes/toy_self_training.yaml{extra}",
    ]
    return "\n".join(lines)


def draw_predictions(
    source_only_run: Path,
    oracle_run: Path,
    path: Path,
    device: torch.device,
    rows: int = PICTURE_ROWS,
) -> tuple[int, int]:
    """Write a PNG comparing both models on a few target val images; returns (width, height).

    One row per image, the columns of `PICTURE_COLUMNS`, titles in PIL's default font (PIL
    only: matplotlib is an optional extra). Predictions follow each checkpoint's eval protocol
    at the val label's size, as `udaseg eval` scores them.
    """
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    from udaseg.data.datasets.base import build_dataset
    from udaseg.engine.loading import default_run_checkpoint, load_for_inference
    from udaseg.evaluation.inference import predict_with_protocol

    models = [
        load_for_inference(str(default_run_checkpoint(run)), None, None, [], device)
        for run in (source_only_run, oracle_run)
    ]
    label_space = models[0].label_space
    # Images at their stored size: the picture shows what the labels describe, and
    # predict_logits applies eval.input_size itself, as `udaseg predict` does.
    dataset = build_dataset(models[0].config.data.val, label_space, "val")
    count = min(rows, len(dataset))
    # Spread over the split rather than its first images, which often share a city.
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()

    tiles: list[list[np.ndarray]] = []
    for index in indices:
        sample = dataset[index]
        label = sample["label"].numpy()
        height, width = label.shape
        image = sample["image"].permute(1, 2, 0).numpy()
        if image.shape[:2] != (height, width):
            resized = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
            image = np.asarray(resized)
        row = [image, label_space.colorize(label)]
        batch = sample["image"][None].float().to(device)
        for model in models:
            protocol = model.config.eval
            with torch.inference_mode():
                logits = predict_with_protocol(
                    model.method.predict, batch, (height, width), protocol, protocol.input_size
                )
            row.append(label_space.colorize(logits.argmax(1)[0].cpu().numpy()))
        tiles.append(row)

    tile_height, tile_width = tiles[0][0].shape[:2]
    columns = len(PICTURE_COLUMNS)
    size = (
        columns * tile_width + (columns - 1) * PICTURE_GAP,
        PICTURE_TITLE_HEIGHT + count * tile_height + (count - 1) * PICTURE_GAP,
    )
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for column, title in enumerate(PICTURE_COLUMNS):
        left = column * (tile_width + PICTURE_GAP)
        # Centred over its column: textbbox gives the ink's extent, offsets included.
        text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), title, font=font)
        position = (
            left + (tile_width - (text_right - text_left)) // 2 - text_left,
            (PICTURE_TITLE_HEIGHT - (text_bottom - text_top)) // 2 - text_top,
        )
        draw.text(position, title, fill="black", font=font)
        for row_number, row_tiles in enumerate(tiles):
            top = PICTURE_TITLE_HEIGHT + row_number * (tile_height + PICTURE_GAP)
            canvas.paste(Image.fromarray(row_tiles[column]), (left, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return size


def _cached_toy_directory() -> Path:
    """The cached toy benchmark that `toy://` roots name (the runs have generated it)."""
    from udaseg.data.datasets.base import resolve_root

    return resolve_root("toy://")


def _disk_usage(directory: Path) -> int:
    """Bytes the files under `directory` occupy on disk, as `du` counts them."""
    total = 0
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            status = path.stat()
            # Allocated 512-byte blocks on POSIX; elsewhere the length is the best estimate.
            total += getattr(status, "st_blocks", 0) * 512 or status.st_size
    return total


def _format_size(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _root_overrides(config, toy_dir: str | None) -> list[str]:
    """Overrides pointing the config's `toy://` dataset roots into `toy_dir`."""
    from udaseg.data.datasets.base import toy_subfolder

    if toy_dir is None:
        return []
    overrides = []
    for role in ("source", "target", "val"):
        section = getattr(config.data, role)
        sub = toy_subfolder(section.root) if section is not None else None
        if sub is not None:
            overrides.append(f"data.{role}.root={Path(toy_dir) / sub}")
    return overrides


def _prepare_toy(jobs: list[Job], toy_dir: str | None) -> None:
    """Generate the cached toy benchmark once, before concurrent runs would each ask for it."""
    from udaseg.data.datasets.base import resolve_root

    if toy_dir is None and any(not job.finished for job in jobs):
        started = time.time()
        resolve_root("toy://")
        elapsed = time.time() - started
        if elapsed > 1:
            print(f"[demo] toy benchmark ready in {elapsed:.0f} s", file=sys.stderr)


def _train_in_process(jobs: list[Job], device: str) -> None:
    from udaseg.config import load_config
    from udaseg.engine.trainer import train

    for job in jobs:
        print(
            f"[demo] {job.title}, seed {job.seed}: training {job.steps} steps -> {job.run_dir}",
            file=sys.stderr,
        )
        train(
            load_config(job.config_name, job.overrides), resume=job.started or None, device=device
        )


def _train_concurrently(jobs: list[Job], parallel: int, threads: int, device: str) -> None:
    """Train jobs as `udaseg train` subprocesses, `parallel` at a time, with one progress bar."""
    from tqdm import tqdm

    from udaseg.errors import UdasegError

    names = ", ".join(f"{job.title} (seed {job.seed})" for job in jobs)
    print(
        f"[demo] training {names}: {parallel} at a time, {threads} thread(s) each", file=sys.stderr
    )
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    waiting = list(jobs)
    running: list[tuple[Job, subprocess.Popen, object]] = []
    progress = tqdm(
        total=sum(job.steps for job in jobs),
        desc="demo",
        unit="step",
        file=sys.stderr,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                job = waiting.pop(0)
                job.run_dir.mkdir(parents=True, exist_ok=True)
                log = open(job.run_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115
                command = [sys.executable, "-m", "udaseg", "train", job.config_name, *job.overrides]
                command += ["train.progress_bar=false", f"--device={device}"]
                if job.started:
                    command.append("--resume")
                process = subprocess.Popen(
                    command, env=environment, stdout=log, stderr=subprocess.STDOUT
                )
                running.append((job, process, log))
            time.sleep(0.5)
            progress.update(sum(_steps_done(job) for job in jobs) - progress.n)
            for entry in list(running):
                job, process, log = entry
                if process.poll() is None:
                    continue
                log.close()
                running.remove(entry)
                if process.returncode != 0:
                    tail = (
                        (job.run_dir / "train.log").read_text(encoding="utf-8").strip().splitlines()
                    )
                    reason = tail[-1] if tail else f"exit status {process.returncode}"
                    raise UdasegError(
                        f"{job.title} (seed {job.seed}) failed: {reason} (log: {job.run_dir / 'train.log'})"
                    )
    finally:
        for _, process, log in running:
            process.terminate()
            log.close()
        progress.close()


def _steps_done(job: Job) -> int:
    """The last training step logged in the run's metrics.jsonl (0 before the first log)."""
    path = job.run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    step = 0
    for line in path.read_text(encoding="utf-8").splitlines()[-5:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "train":
            step = max(step, int(record["step"]))
    return min(step, job.steps)


def _mean_result(runs):
    """One EvaluationResult whose IoUs are the per-class means over seeds."""
    from udaseg.evaluation.metrics import EvaluationResult

    if len(runs) == 1:
        return runs[0]
    per_class = []
    for index in range(len(runs[0].per_class_iou)):
        values = [
            run.per_class_iou[index] for run in runs if not math.isnan(run.per_class_iou[index])
        ]
        per_class.append(statistics.fmean(values) if values else math.nan)
    data = runs[0].to_dict()
    data["per_class_iou"] = [None if math.isnan(value) else value for value in per_class]
    data["miou"] = {name: statistics.fmean(run.miou[name] for run in runs) for name in runs[0].miou}
    return EvaluationResult.from_dict(data)
