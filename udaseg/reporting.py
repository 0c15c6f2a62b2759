"""Results over runs and seeds: the papers' mean ± std tables and a static HTML report.

- `load_run(run_dir)`: a finished run (`config.yaml`, `eval/final.json`, `metrics.jsonl`).
- `group_runs(runs)`: runs whose configs are equal except `seed` and `run_dir` are seeds of one
  configuration.
- `seed_table(runs)`: per class and per mIoU subset, each seed's value and mean ± std (sample
  standard deviation, n - 1, as `statistics.stdev`; 0 for a single seed), as JSON-safe data and
  markdown (`format_seed_table`).
- `comparison_table(...)`: the method x seed table of `bench/toy_methods.py` with the paired
  differences to baselines of the same seed (`paired_difference`).
- `run_seeds(...)`: `udaseg train` subprocesses for several seeds, a few at a time, reusing
  finished runs (`udaseg sweep`, `bench/toy_methods.py`).
- `write_report(run_dirs, out)`: `index.html` + PNGs (matplotlib, Agg), relative links only.

Numbers are in percent (IoU x 100) in tables; JSON keeps them in percent too, with NaN as null.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from udaseg.errors import DataError, OutputError, UdasegError
from udaseg.evaluation.metrics import EvaluationResult, to_json_safe


class RunFailedError(UdasegError):
    """A training subprocess of a sweep exited with an error (its log is named)."""


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass
class Run:
    """A finished run directory."""

    run_dir: Path
    config: dict[str, Any]
    result: EvaluationResult
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return int(seed) if seed is not None else None

    @property
    def method(self) -> str:
        method = self.config.get("method")
        if isinstance(method, Mapping) and method.get("name"):
            return str(method["name"])
        return self.run_dir.name

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read a finished run; a DataError naming the file when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    final = run_dir / "eval" / "final.json"
    if not final.is_file():
        raise DataError(
            f"{run_dir}: no eval/final.json (the run has not finished; resume it with "
            f"`udaseg train ... run_dir={run_dir} --resume`)"
        )
    try:
        result = EvaluationResult.from_dict(json.loads(final.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{final}: not an evaluation result ({error})") from None
    config: dict[str, Any] = {}
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        try:
            config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise DataError(f"{config_file}: not YAML ({error})".replace("\n", " ")) from None
    records: list[dict[str, Any]] = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(record, dict):
                records.append(record)
    return Run(run_dir=run_dir, config=config, result=result, records=records)


_SEED_FOLDER = re.compile(r"seed\d+")


def config_key(config: Mapping[str, Any]) -> str:
    """The config without `seed` and `run_dir`, as canonical text: equal keys = one config.

    Paths inside it that differ only by a `seed<N>` folder (a recipe's `init.segmentor` and
    `data.target.pseudo_labels` point into the same seed's earlier stages) count as equal.
    """
    rest = {key: value for key, value in config.items() if key not in ("seed", "run_dir")}
    return _SEED_FOLDER.sub("seed*", json.dumps(to_json_safe(rest), sort_keys=True))


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by configuration (seed and run_dir aside), in order of first appearance.

    Group labels are the method name, made unique with the first run's folder when two
    configurations share a method.
    """
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(config_key(run.config), []).append(run)
    methods = [group[0].method for group in by_key.values()]
    groups: dict[str, list[Run]] = {}
    for group in by_key.values():
        label = group[0].method
        if methods.count(label) > 1:
            folder = group[0].run_dir
            # A recipe stage's folder names it; a sweep's `seed<N>` folder does not.
            name = folder.parent.name if _SEED_FOLDER.fullmatch(folder.name) else folder.name
            label = f"{label} ({name})"
        while label in groups:
            label += "'"
        groups[label] = sorted(group, key=lambda run: (run.seed is None, run.seed or 0))
    return groups


# ---------------------------------------------------------------------------------------------
# Statistics and tables


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the non-NaN values; std 0 for one value."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan")
    spread = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return statistics.fmean(kept), spread


def _cell(value: float | None, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def seed_table(runs: Sequence[Run] | Mapping[int, EvaluationResult]) -> dict[str, Any]:
    """Per class and per mIoU subset: each seed's value, mean and std, in percent.

    Args:
        runs: runs of one configuration (seeds), or {seed: result}.
    Returns:
        {"seeds": [...], "classes": [{"name", "values", "mean", "std"}...],
         "miou": {subset: {"values", "mean", "std"}}, "pixel_accuracy": {...}} with NaN as NaN
        (`to_json_safe` turns it into null).
    """
    if isinstance(runs, Mapping):
        pairs = sorted(runs.items())
    else:
        pairs = [(run.seed, run.result) for run in runs]
    if not pairs:
        raise DataError("no runs to tabulate")
    seeds = [seed for seed, _ in pairs]
    results = [result for _, result in pairs]
    names = results[0].class_names
    for (seed, result), _ in zip(pairs, results, strict=True):
        if result.class_names != names:
            raise DataError(f"seed {seed}: its classes differ from seed {seeds[0]}'s")

    def row(values: list[float]) -> dict[str, Any]:
        mean, spread = mean_std(values)
        return {"values": values, "mean": mean, "std": spread}

    classes = [
        {"name": name, **row([100.0 * result.per_class_iou[index] for result in results])}
        for index, name in enumerate(names)
    ]
    subsets: list[str] = []
    for result in results:
        subsets += [name for name in result.miou if name not in subsets]
    miou = {
        subset: row([100.0 * result.miou.get(subset, float("nan")) for result in results])
        for subset in subsets
    }
    accuracy = row([100.0 * result.pixel_accuracy for result in results])
    return {"seeds": seeds, "classes": classes, "miou": miou, "pixel_accuracy": accuracy}


def format_seed_table(table: Mapping[str, Any], title: str | None = None) -> str:
    """The seed table as markdown: one row per class then per mIoU subset."""
    seeds = table["seeds"]
    header = "| class | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |"
    lines = [f"### {title}", ""] if title else []
    lines += [header, "|---|" + "---:|" * (len(seeds) + 1)]

    def line(name: str, entry: Mapping[str, Any], bold: bool = False) -> str:
        cells = " | ".join(_cell(v) for v in entry["values"])
        summary = f"{_cell(entry['mean'])} ± {_cell(entry['std'])}"
        if bold:
            name, summary = f"**{name}**", f"**{summary}**"
        return f"| {name} | {cells} | {summary} |"

    lines += [line(entry["name"], entry) for entry in table["classes"]]
    lines += [line(name, entry, bold=True) for name, entry in table["miou"].items()]
    lines.append(line("pixel accuracy", table["pixel_accuracy"]))
    return "\n".join(lines)


def paired_difference(values: Sequence[float], baseline: Sequence[float] | None) -> str:
    """Mean ± std of value - baseline over seeds ("-" without a baseline of as many seeds)."""
    if baseline is None or len(baseline) != len(values):
        return "-"
    differences = [value - base for value, base in zip(values, baseline, strict=True)]
    spread = statistics.stdev(differences) if len(differences) > 1 else 0.0
    return f"{statistics.fmean(differences):+.2f} ± {spread:.2f}"


def baseline_values(label: str, name: str, values: Mapping[str, list[float]]) -> list[float] | None:
    """The baseline paired with `label`: its recipe's own stage of that name, else the global."""
    if "/" in label:
        own = f"{label.split('/')[0]}/{name}"
        if own in values:
            return values[own]
    return values.get(name)


def comparison_table(
    results: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    metric: str,
    baselines: Sequence[str] = ("source_only", "adabn"),
) -> tuple[str, dict[str, Any]]:
    """Method x seed markdown table with paired differences to the baselines.

    Args:
        results: one dict per (label, seed) with "label", "seed", "miou" ({subset: 0..1}) and
            "seconds" (or None).
        seeds: the seeds, in column order.
        metric: the mIoU subset compared.
        baselines: labels every method is paired with, seed by seed.
    Returns:
        (markdown, {label: {"values", "mean", "std", "versus_<baseline>", "seconds", "runs"}}).
    """
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        by_label.setdefault(result["label"], []).append(result)
    for runs in by_label.values():
        runs.sort(key=lambda run: run["seed"])
    values = {
        label: [100 * run["miou"][metric] for run in runs] for label, runs in by_label.items()
    }
    versus_titles = " | ".join(f"vs {name.replace('_', '-')} (paired)" for name in baselines)
    header = (
        "| method | "
        + " | ".join(f"seed {s}" for s in seeds)
        + f" | mean ± std {metric} | {versus_titles} | mean s/run |"
    )
    lines = [header, "|" + "---|" * (len(seeds) + 3 + len(baselines))]
    summary: dict[str, Any] = {}
    for label, runs in by_label.items():
        scores = values[label]
        seconds = [run["seconds"] for run in runs if run.get("seconds") is not None]
        mean, spread = mean_std(scores)
        mean_seconds = statistics.fmean(seconds) if seconds else float("nan")
        cells = " | ".join(f"{value:.2f}" for value in scores)
        versus = {
            name: paired_difference(scores, baseline_values(label, name, values))
            for name in baselines
        }
        lines.append(
            f"| {label} | {cells} | {mean:.2f} ± {spread:.2f} | "
            + " | ".join(versus.values())
            + f" | {mean_seconds:.0f} |"
        )
        summary[label] = {
            "values": scores,
            "mean": mean,
            "std": spread,
            **{f"versus_{name}": text for name, text in versus.items()},
            "seconds": seconds,
            "runs": list(runs),
        }
    return "\n".join(lines), summary


# ---------------------------------------------------------------------------------------------
# Running seeds


def run_logged(command: Sequence[str], log_path: Path, threads: int, what: str) -> float:
    """Run a command with `threads` intra-op threads, appending its output to `log_path`.

    Returns the wall seconds; a RunFailedError naming the log when it fails.
    """
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    environment["MKL_NUM_THREADS"] = str(threads)
    started = time.time()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        completed = subprocess.run(
            list(command), env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    if completed.returncode != 0:
        raise RunFailedError(f"{what} failed (exit status {completed.returncode}): see {log_path}")
    return time.time() - started


def train_seed(
    config: str,
    seed: int,
    run_dir: Path,
    overrides: Sequence[str],
    threads: int,
    log_path: Path,
    label: str = "",
) -> dict[str, Any]:
    """Train one seed into `run_dir` unless it has finished; resume it if it has a checkpoint.

    Returns {"label", "config", "seed", "run_dir", "miou", "per_class_iou", "seconds"}.
    """
    final = run_dir / "eval" / "final.json"
    timing = run_dir / "wall_seconds.txt"
    if not final.is_file():
        resume = (run_dir / "checkpoints" / "last.pt").is_file()
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # started but without a checkpoint: nothing to keep
        command = [
            *(sys.executable, "-m", "udaseg", "train", config),
            *(f"seed={seed}", f"run_dir={run_dir}", "train.progress_bar=false", *overrides),
            *(["--resume"] if resume else []),
        ]
        seconds = run_logged(command, log_path, threads, f"{label or config} seed {seed}")
        if not final.is_file():
            raise RunFailedError(f"{label or config} seed {seed}: no {final}: see {log_path}")
        timing.write_text(f"{seconds:.1f}\n", encoding="utf-8")
    result = json.loads(final.read_text(encoding="utf-8"))
    return {
        "label": label or Path(config).stem,
        "config": config,
        "seed": seed,
        "run_dir": str(run_dir),
        "miou": result["miou"],
        "per_class_iou": result["per_class_iou"],
        "seconds": float(timing.read_text()) if timing.exists() else None,
    }


def run_seeds(
    config: str,
    seeds: Sequence[int],
    out: Path,
    overrides: Sequence[str] = (),
    parallel: int = 1,
    threads: int = 1,
    label: str = "",
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every seed into `out/seed<N>` (logs in `out/logs/`), `parallel` at a time."""
    results: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [
            pool.submit(
                train_seed,
                config,
                seed,
                out / f"seed{seed}",
                overrides,
                threads,
                out / "logs" / f"seed{seed}.log",
                label,
            )
            for seed in seeds
        ]
        for future in futures:
            result = future.result()
            if on_done is not None:
                on_done(result)
            results.append(result)
    return results


# ---------------------------------------------------------------------------------------------
# HTML report


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UdasegError(
            "the report needs matplotlib: pip install 'udaseg[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _file_name(label: str) -> str:
    kept = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
    return kept.strip("_") or "run"


def _save(figure: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=90)
    os.replace(temporary, path)
    _pyplot().close(figure)
    return path.name


def _bar_chart(groups: Mapping[str, Mapping[str, Any]], path: Path) -> str:
    pyplot = _pyplot()
    names = [entry["name"] for entry in next(iter(groups.values()))["classes"]]
    count = len(groups)
    width = 0.8 / max(count, 1)
    figure, axes = pyplot.subplots(figsize=(max(8, 0.55 * len(names) + 2), 4.2))
    positions = np.arange(len(names))
    for number, (label, table) in enumerate(groups.items()):
        means = [np.nan_to_num(entry["mean"]) for entry in table["classes"]]
        stds = [np.nan_to_num(entry["std"]) for entry in table["classes"]]
        offset = (number - (count - 1) / 2) * width
        axes.bar(positions + offset, means, width, yerr=stds, capsize=2, label=label)
    axes.set_xticks(positions, names, rotation=60, ha="right")
    axes.set_ylabel("IoU (%)")
    axes.set_ylim(0, 100)
    axes.set_title("Per-class IoU (mean ± std over seeds)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


def _confusion_heatmap(
    counts: np.ndarray, class_names: Sequence[str], title: str, path: Path
) -> str:
    pyplot = _pyplot()
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    columns = [*class_names, "void"][: counts.shape[1]]
    size = 0.32 * len(columns) + 3
    figure, axes = pyplot.subplots(figsize=(size, size * 0.9))
    image = axes.imshow(rates, cmap="viridis", vmin=0, vmax=1)
    axes.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axes.set_yticks(range(len(class_names)), class_names, fontsize=7)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(f"{title}: rows normalised", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    return _save(figure, path)


def _curves(runs: Sequence[Run], title: str, path: Path) -> str | None:
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {
        "losses": {},
        "learning rate": {},
        "val mIoU": {},
    }
    for run in runs:
        tag = f"seed {run.seed}" if run.seed is not None else run.run_dir.name
        for record in run.records:
            step = record.get("step")
            if not isinstance(step, (int, float)):
                continue
            for key, value in record.items():
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if record.get("kind") == "val" and key.startswith("mIoU"):
                    panel, value = "val mIoU", 100.0 * value
                elif record.get("kind", "train") == "train" and key.startswith("loss"):
                    panel = "losses"
                elif record.get("kind", "train") == "train" and (
                    key == "lr" or key.startswith("lr/")
                ):
                    if key == "lr" and any(k.startswith("lr/") for k in record):
                        continue  # `lr` repeats the first optimizer's
                    panel = "learning rate"
                else:
                    continue
                steps, values = series[panel].setdefault(f"{key} ({tag})", ([], []))
                steps.append(int(step))
                values.append(float(value))
    if not any(series.values()):
        return None
    pyplot = _pyplot()
    figure, all_axes = pyplot.subplots(1, 3, figsize=(13, 3.6))
    for axes, (panel, lines) in zip(all_axes, series.items(), strict=True):
        for name, (steps, values) in lines.items():
            axes.plot(steps, values, marker="o" if len(steps) < 3 else None, label=name)
        axes.set_title(panel)
        axes.set_xlabel("step")
        if lines:
            axes.legend(fontsize="x-small")
        else:
            axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def predict_samples(run: Run, count: int, device: str = "cpu") -> list[dict[str, np.ndarray]]:
    """The first `count` val images of a run's config with its final checkpoint's predictions.

    Returns one dict per image: "image" uint8 [H, W, 3] (at label size), "label" and
    "prediction" int [H, W] train ids.
    """
    import torch
    from PIL import Image

    from udaseg.data.datasets import build_dataset
    from udaseg.engine.loading import load_for_inference
    from udaseg.evaluation.inference import predict_with_protocol

    loaded = load_for_inference(str(run.checkpoint), None, None, [], torch.device(device))
    config = loaded.config
    dataset = build_dataset(
        config.data.val, loaded.label_space, "val", image_size=config.eval.input_size
    )
    samples = []
    with torch.inference_mode():
        for index in range(min(count, len(dataset))):
            sample = dataset[index]
            label = sample["label"]
            images = sample["image"][None].to(device).float()
            logits = predict_with_protocol(
                loaded.method.predict, images, label.shape[-2:], config.eval
            )
            height, width = label.shape[-2:]
            picture = sample["image"].permute(1, 2, 0).numpy()
            picture = np.asarray(Image.fromarray(picture).resize((width, height)))
            samples.append(
                {
                    "name": str(sample.get("name", index)),
                    "image": picture,
                    "label": label.numpy(),
                    "prediction": logits.argmax(dim=1)[0].cpu().numpy(),
                }
            )
    return samples


def _sample_figure(run: Run, samples: Sequence[Mapping[str, Any]], title: str, path: Path) -> str:
    from udaseg.data.label_spaces import get_label_space

    pyplot = _pyplot()
    space = get_label_space(run.result.label_space)
    figure, all_axes = pyplot.subplots(
        len(samples), 4, figsize=(12, 2.0 * len(samples) + 0.6), squeeze=False
    )
    for row, sample in zip(all_axes, samples, strict=True):
        label, prediction = sample["label"], sample["prediction"]
        valid = label != space.ignore_index
        errors = np.zeros((*label.shape, 3), dtype=np.uint8)  # void: black
        errors[valid & (prediction == label)] = (200, 200, 200)  # right: grey
        errors[valid & (prediction != label)] = (220, 30, 30)  # wrong: red
        panels = [
            (sample["image"], sample["name"]),
            (space.colorize(label), "ground truth"),
            (space.colorize(prediction), "prediction"),
            (errors, "errors (red; void black)"),
        ]
        for axes, (picture, caption) in zip(row, panels, strict=True):
            axes.imshow(picture, interpolation="nearest")
            axes.set_title(caption, fontsize=8)
            axes.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.miou td { font-weight: bold; background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 3px; }
.note { color: #666; font-size: 13px; }
"""


def _html_table(header: Sequence[str], rows: Sequence[tuple[Sequence[str], str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = []
    for cells, css in rows:
        attribute = f' class="{css}"' if css else ""
        body.append(
            f"<tr{attribute}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _mean_std_text(entry: Mapping[str, Any], runs: int) -> str:
    if runs == 1:
        return _cell(entry["mean"], 1)
    return f"{_cell(entry['mean'], 1)} ± {_cell(entry['std'], 1)}"


def write_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    samples: int = 3,
    device: str = "cpu",
    overwrite: bool = False,
    title: str = "udaseg report",
) -> Path:
    """Write `out/index.html` and its PNGs for the runs; returns the page's path.

    Runs are grouped into configurations (`group_runs`): per class IoU table and bar chart with
    mean ± std over each group's seeds, a confusion-matrix heatmap per group (the seeds' counts
    summed; from eval/final.json, else by evaluating checkpoints/last.pt on the val split),
    training curves from metrics.jsonl, and `samples` val images predicted by each group's
    first run (when it has checkpoints/last.pt).
    """
    from udaseg.files import check_output_folder

    out = check_output_folder(out, "--out")
    page = out / "index.html"
    if page.exists() and not overwrite:
        raise OutputError(f"--out {out}: has an index.html; pass --overwrite to replace it")
    if not run_dirs:
        raise DataError("no run directories given")
    runs = [load_run(run_dir) for run_dir in run_dirs]
    _pyplot()  # fail before writing anything when matplotlib is missing
    groups = group_runs(runs)
    tables = {label: seed_table(group) for label, group in groups.items()}
    class_names = runs[0].result.class_names
    for run in runs[1:]:
        if run.result.class_names != class_names:
            raise DataError(
                f"{run.run_dir}: its classes differ from {runs[0].run_dir}'s; report them apart"
            )
    out.mkdir(parents=True, exist_ok=True)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]

    # Runs
    rows = []
    for label, group in groups.items():
        for run in group:
            main_subset = next(iter(run.result.miou), None)
            rows.append(
                (
                    [
                        label,
                        str(run.seed),
                        str(run.run_dir),
                        f"{main_subset} {_cell(100 * run.result.miou[main_subset], 1)}"
                        if main_subset
                        else "-",
                        str(run.result.num_images),
                    ],
                    "",
                )
            )
    parts += [
        "<h2>Runs</h2>",
        '<p class="note">Runs whose config.yaml are equal except <code>seed</code> and '
        "<code>run_dir</code> are seeds of one configuration; std is the sample standard "
        "deviation (n - 1) over them.</p>",
        _html_table(["configuration", "seed", "run directory", "mIoU", "val images"], rows),
    ]

    # Per-class IoU
    header = ["class"]
    for label, group in groups.items():
        header.append(f"{label} (mean ± std, {len(group)} seeds)" if len(group) > 1 else label)
        if len(group) > 1:
            header += [f"seed {run.seed}" for run in group]
    rows = []
    for index, name in enumerate(class_names):
        cells = [name]
        for label, group in groups.items():
            entry = tables[label]["classes"][index]
            cells.append(_mean_std_text(entry, len(group)))
            if len(group) > 1:
                cells += [_cell(value, 1) for value in entry["values"]]
        rows.append((cells, ""))
    subset_names: list[str] = []
    for table in tables.values():
        subset_names += [name for name in table["miou"] if name not in subset_names]
    for subset in [*subset_names, "pixel accuracy"]:
        cells = [subset]
        for label, group in groups.items():
            table = tables[label]
            entry = (
                table["pixel_accuracy"] if subset == "pixel accuracy" else table["miou"].get(subset)
            )
            if entry is None:
                cells += ["-"] * (1 + (len(group) if len(group) > 1 else 0))
                continue
            cells.append(_mean_std_text(entry, len(group)))
            if len(group) > 1:
                cells += [_cell(value, 1) for value in entry["values"]]
        rows.append((cells, "miou"))
    chart = _bar_chart(tables, out / "per_class_iou.png")
    parts += [
        "<h2>Per-class IoU (%)</h2>",
        _html_table(header, rows),
        f'<img src="{chart}" alt="per-class IoU bar chart">',
    ]

    # Confusion matrices, curves, samples
    confusion_parts, curve_parts, sample_parts = [], [], []
    for label, group in groups.items():
        name = _file_name(label)
        counts = None
        for run in group:
            matrix = run.result.confusion_matrix
            if matrix is None:
                matrix = _evaluate_confusion(run, device)
            if matrix is not None:
                array = np.asarray(matrix, dtype=np.int64)
                counts = array if counts is None else counts + array
        if counts is not None:
            picture = _confusion_heatmap(
                counts, class_names, f"{label}, {len(group)} run(s)", out / f"confusion_{name}.png"
            )
            confusion_parts += [
                f"<h3>{html.escape(label)}</h3>",
                f'<img src="{picture}" alt="confusion matrix of {html.escape(label)}">',
            ]
        else:
            confusion_parts.append(
                f'<p class="note">{html.escape(label)}: no confusion matrix in eval/final.json '
                "and no checkpoint to compute it from.</p>"
            )
        picture = _curves(group, label, out / f"curves_{name}.png")
        if picture is not None:
            curve_parts += [
                f"<h3>{html.escape(label)}</h3>",
                f'<img src="{picture}" alt="training curves of {html.escape(label)}">',
            ]
        else:
            curve_parts.append(f'<p class="note">{html.escape(label)}: no metrics.jsonl.</p>')
        first = group[0]
        if samples > 0 and first.checkpoint.is_file():
            predicted = predict_samples(first, samples, device)
            picture = _sample_figure(
                first,
                predicted,
                f"{label}, seed {first.seed} ({first.run_dir})",
                out / f"samples_{name}.png",
            )
            sample_parts += [
                f"<h3>{html.escape(label)} (seed {first.seed})</h3>",
                f'<img src="{picture}" alt="sample predictions of {html.escape(label)}">',
            ]
        elif samples > 0:
            sample_parts.append(
                f'<p class="note">{html.escape(label)}: no {first.checkpoint} to predict with.</p>'
            )
    parts += ["<h2>Confusion matrices</h2>", *confusion_parts]
    parts += ["<h2>Training curves</h2>", *curve_parts]
    if samples > 0:
        parts += [
            "<h2>Sample predictions (val)</h2>",
            '<p class="note">Image, ground truth, prediction, errors (red: wrong, grey: right, '
            "black: void).</p>",
            *sample_parts,
        ]
    parts.append("</body></html>")

    summary = {
        label: {"runs": [str(run.run_dir) for run in groups[label]], **table}
        for label, table in tables.items()
    }
    (out / "summary.json").write_text(
        json.dumps(to_json_safe(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    temporary = out / ".index.html.tmp"
    temporary.write_text("\n".join(parts) + "\n", encoding="utf-8")
    os.replace(temporary, page)
    return page


def _evaluate_confusion(run: Run, device: str) -> list[list[int]] | None:
    """The confusion matrix of a run's final checkpoint on its val split (None without one)."""
    if not run.checkpoint.is_file():
        return None
    import torch

    from udaseg.data.datasets import build_dataset
    from udaseg.data.loaders import eval_loader
    from udaseg.engine.loading import load_for_inference
    from udaseg.evaluation.evaluate import evaluate

    loaded = load_for_inference(str(run.checkpoint), None, None, [], torch.device(device))
    config = loaded.config
    dataset = build_dataset(
        config.data.val, loaded.label_space, "val", image_size=config.eval.input_size
    )
    loader = eval_loader(dataset, config.eval.batch_size, 0, 1, 0)
    result = evaluate(loaded.method.predict, loader, loaded.label_space, config.eval, device)
    return result.confusion_matrix
