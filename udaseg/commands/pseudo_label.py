"""`udaseg pseudo-label [CONFIG] --checkpoint CKPT [...] --policy NAME [options] --out DIR`

Labels the target training split (`data.target` of CONFIG, or of the first checkpoint's saved
config) with one model or the mean softmax of several (FDA's MBT: equal weights), following
the evaluation protocol of `eval` (input size reached as `eval.resize` says, flip, whole/slide,
align_corners); the logits are upsampled to each image's native size and softmaxed. Policies and
their options are those of `udaseg.pseudo_labels` (BDL/FDA class percentiles with a cap, CBST's
class-balanced portion, ProDA's fixed threshold, plain argmax).

Writes into DIR:
- `<sample name>.png`: 8-bit train ids, 255 where left out, at the image's native size on
  disk, under the dataset's sample name (e.g. `aachen/aachen_000000_000019_leftImg8bit.png`),
  where `data.target.pseudo_labels: DIR` finds them;
- `confidence/<name>.png`: 16-bit confidence of the mean softmax, round(conf * 65535);
- with --save-soft, `soft/<name>.npy`: the mean softmax at the network's output resolution
  (before upsampling), float16 [C, h, w], as ProDA's prototype stage reads it;
- `summary.json`, written last (its presence means the run finished): settings, per-class
  thresholds, predicted and labelled pixels, kept fractions, the protocol.

Policies with per-class statistics take two passes over the split: pass 1 counts the
confidences of each class into a streaming histogram (udaseg.pseudo_labels.ConfidenceHistogram;
how exact that is, is in `summary.json` "exactness"), pass 2 labels. Both resume after any
interruption, even SIGKILL: pass 1 saves its partial histogram in `DIR/.state/`, pass 2 skips the
images it has written. Rerunning the command finishes the job with byte-identical files. Under
torchrun every rank labels its shard of the split; histograms and counts are summed over ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from udaseg import pseudo_labels
from udaseg.commands import add_config_arguments
from udaseg.commands import config_path as chosen_config
from udaseg.config import Config, apply_overrides, config_from_dict, load_config, to_dict
from udaseg.data.datasets import build_dataset
from udaseg.data.datasets.base import _header_size
from udaseg.data.label_spaces import LabelSpace
from udaseg.data.loaders import eval_loader
from udaseg.engine import checkpoint as checkpoints_io
from udaseg.engine.distributed import DistributedContext, barrier, init_distributed
from udaseg.engine.faults import maybe_kill
from udaseg.engine.loading import LoadedModel, load_for_inference
from udaseg.errors import ConfigError
from udaseg.evaluation.inference import predict_with_protocol
from udaseg.files import check_output_folder, refuse_foreign_output
from udaseg.models.weights import sha256_of_file

STATE_FOLDER = ".state"
SETTINGS_FILE = "settings.json"
SUMMARY_FILE = "summary.json"
# The `data.target` fields that make a training set differ from the images as they are.
_AUGMENTATION_FIELDS = {"resize": None, "random_scale": None, "crop": None, "flip": False}

EXACTNESS = {
    "argmax": "exact: no statistics are needed",
    "threshold": "exact: a fixed threshold needs no statistics",
    "class_percentile": (
        "thresholds come from a streaming histogram of {bins} bins per class: each is within "
        "1/{bins} of the exact order statistic (interpolated inside its bin), so a label can "
        "differ from the exact in-memory policy only for a pixel whose confidence lies within "
        "1/{bins} of its class threshold"
    ),
    "class_balanced": (
        "thresholds come from a streaming histogram of {bins} bins per class: each is within "
        "1/{bins} of the exact order statistic (interpolated inside its bin), so a label can "
        "differ from the exact in-memory policy only for a pixel whose ratio prob / threshold "
        "lies within a relative 1/({bins} * threshold) of 1 or of another class's ratio"
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(
        parser,
        required=False,
        help="config giving data.target and eval (default: the first checkpoint's config)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides of that config"
    )
    parser.add_argument(
        "--checkpoint",
        dest="checkpoints",
        action="append",
        required=True,
        metavar="CKPT",
        help="a udaseg checkpoint; repeat to average the softmaxes of several models",
    )
    parser.add_argument(
        "--policy", required=True, choices=list(pseudo_labels.POLICIES), help="selection rule"
    )
    parser.add_argument("--percentile", type=float, help="class_percentile: 0..100 (BDL 50)")
    parser.add_argument("--cap", type=float, help="class_percentile: threshold cap (BDL 0.9)")
    parser.add_argument("--threshold", type=float, help="threshold: fixed (ProDA 0.95)")
    parser.add_argument("--portion", type=float, help="class_balanced: portion (CBST 0.2)")
    parser.add_argument(
        "--spatial-prior",
        metavar="FILE.npy",
        help="CBST-SP: multiply the probabilities by this class-wise prior [C, H, W] before the "
        "policy (udaseg.pseudo_labels.source_spatial_prior computes one)",
    )
    parser.add_argument(
        "--save-soft",
        action="store_true",
        help="also save the mean softmax at output resolution, soft/<name>.npy (ProDA)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of another run in DIR (settings, progress, summary)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--state-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often progress is saved for resuming (default 30; 0 = after every batch)",
    )


def run(args: argparse.Namespace) -> int:
    config_path = chosen_config(args)  # may give back an override the positional swallowed
    overrides = list(args.overrides)
    options = {
        name: getattr(args, name)
        for name in ("percentile", "cap", "threshold", "portion")
        if getattr(args, name) is not None
    }
    run_pseudo_labelling(
        config_path=config_path,
        overrides=overrides,
        checkpoints=args.checkpoints,
        policy=args.policy,
        options=options,
        out=args.out,
        save_soft=args.save_soft,
        overwrite=args.overwrite,
        spatial_prior=args.spatial_prior,
        device=args.device,
        state_every=args.state_every,
    )
    return 0


def run_pseudo_labelling(
    config_path: str | Path | None,
    overrides: list[str],
    checkpoints: list[str | Path],
    policy: str,
    options: dict[str, float],
    out: str | Path,
    save_soft: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    state_every: float = 30.0,
    progress: bool = True,
    spatial_prior: str | Path | None = None,
) -> dict[str, Any]:
    """Pseudo-label the target training split; resumable; see the module docstring.

    Args:
        config_path: config giving `data.target` and `eval`; None takes the first
            checkpoint's saved config.
        overrides: `key=value` overrides of that config.
        checkpoints: one or more udaseg checkpoints (several: mean of their softmaxes).
        policy, options: a policy of `udaseg.pseudo_labels` and its options.
        out: the output folder.
        save_soft: also write `soft/<name>.npy` (float16 [C, h, w] at output resolution).
        overwrite: replace another run's settings, progress and summary in `out`.
        device: "auto", "cpu" or "cuda".
        state_every: seconds between saves of the progress (0: after every batch).
        progress: show a progress bar on stderr (rank 0).
        spatial_prior: a float [C, H, W] .npy multiplied into the probabilities before the
            policy (CBST-SP; `udaseg.pseudo_labels.apply_spatial_prior`).
    Returns:
        the summary (as written to `out/summary.json`).
    Raises:
        ConfigError: bad policy/options, no `data.target`, `out` holds another run's files.
    """
    checked = pseudo_labels.check_options(policy, options)
    if not checkpoints:
        raise ConfigError("--checkpoint: give at least one checkpoint")
    out = check_output_folder(out, "--out")  # before the models load and the split is read
    config = _labelling_config(config_path, overrides, checkpoints[0])
    context = init_distributed(device)
    models = [load_for_inference(str(path), None, None, [], context.device) for path in checkpoints]
    label_space = _common_label_space(models, checkpoints)
    if save_soft and config.eval.mode != "whole":
        raise ConfigError(
            "--save-soft: needs eval.mode=whole (a sliding window has no single output grid)"
        )
    target = _unaugmented(config.data.target)
    # eval.resize "pil" (the original loaders' way): the dataset resizes; "torch": the device.
    image_size = config.eval.input_size if _resize_method(config) == "pil" else None
    dataset = build_dataset(target, label_space, "target", image_size=image_size)

    settings = _settings(policy, checked, checkpoints, target, label_space, config, save_soft)
    settings["num_images"] = len(dataset)
    prior = None
    if spatial_prior is not None:
        prior = pseudo_labels.read_spatial_prior(spatial_prior, label_space.num_classes)
        # Only when used, so that the settings of runs without a prior stay as they were.
        settings["spatial_prior"] = {
            "path": str(Path(spatial_prior).resolve()),
            "sha256": sha256_of_file(spatial_prior),
        }
    finished = _prepare_output(out, settings, overwrite, context)
    if finished is not None:
        if context.is_main:
            print(f"{out}: pseudo-labels already done ({SUMMARY_FILE} exists)", file=sys.stderr)
        return finished

    labeller = _Labeller(models, config, dataset, context, save_soft, prior)
    state_folder = out / STATE_FOLDER
    histogram = None
    thresholds = None
    if policy in pseudo_labels.STATISTICS_POLICIES:
        histogram = _statistics_pass(labeller, state_folder, state_every, progress)
        thresholds = histogram.thresholds(policy, **checked)
    elif policy == "threshold":
        thresholds = torch.full(
            (label_space.num_classes,), checked["threshold"], dtype=torch.float64
        )
    counts = _labelling_pass(labeller, policy, thresholds, out, state_every, progress)

    summary = _summary(
        settings, config_path, checkpoints, len(dataset), label_space, thresholds, counts, config
    )
    if context.is_main:
        pseudo_labels.write_json(out / SUMMARY_FILE, summary)
        print(
            f"pseudo-labelled {len(dataset)} images into {out}: "
            f"{100 * summary['overall_kept_fraction']:.1f}% of pixels kept",
            file=sys.stderr,
        )
    barrier(context)
    return summary


# --- Setup -----------------------------------------------------------------------------------


def _labelling_config(
    config_path: str | Path | None, overrides: list[str], first_checkpoint: str | Path
) -> Config:
    if config_path is not None:
        config = load_config(config_path, overrides)
    else:
        payload = checkpoints_io.read_checkpoint(first_checkpoint)
        config = config_from_dict(apply_overrides(payload["config"], overrides))
    if config.data.target is None:
        where = config_path if config_path is not None else first_checkpoint
        raise ConfigError(f"{where}: config key data.target: missing; set the target train split")
    return config


def _common_label_space(models: list[LoadedModel], checkpoints: list[str | Path]) -> LabelSpace:
    label_space = models[0].label_space
    for model, path in zip(models[1:], checkpoints[1:], strict=True):
        if model.label_space.name != label_space.name:
            raise ConfigError(
                f"{path}: predicts label space {model.label_space.name!r}, but {checkpoints[0]} "
                f"predicts {label_space.name!r}; an ensemble needs one label space"
            )
    return label_space


def _unaugmented(target: Any) -> Any:
    """data.target without training augmentation or pseudo labels: the images as they are."""
    names = {field.name for field in dataclasses.fields(target)}
    changes = {name: value for name, value in _AUGMENTATION_FIELDS.items() if name in names}
    if "pseudo_labels" in names:
        changes["pseudo_labels"] = None
    return dataclasses.replace(target, **changes)


def _resize_method(config: Config) -> str:
    """How images reach eval.input_size: "pil" (bicubic on uint8) or "torch" (on the device)."""
    return getattr(config.eval, "resize", "pil")


def _protocol(config: Config) -> dict[str, Any]:
    eval_config = config.eval
    protocol: dict[str, Any] = {
        "input_size": list(eval_config.input_size) if eval_config.input_size else None,
        "mode": eval_config.mode,
        "flip": bool(eval_config.flip),
        "align_corners": bool(eval_config.align_corners),
        "batch_size": eval_config.batch_size,
        "resize": _resize_method(config),
        "probabilities": (
            "softmax (float32) of the logits bilinearly upsampled to the image's native size; "
            "several checkpoints: mean of their softmaxes, equal weights"
        ),
    }
    if eval_config.mode == "slide":
        protocol["window"] = list(eval_config.window)
        protocol["stride"] = list(eval_config.stride)
    return protocol


def _settings(
    policy: str,
    options: dict[str, float],
    checkpoints: list[str | Path],
    target: Any,
    label_space: LabelSpace,
    config: Config,
    save_soft: bool,
) -> dict[str, Any]:
    """What determines the outputs; a rerun with other settings must not mix with them."""
    return {
        "policy": policy,
        "options": options,
        "checkpoints": [
            {"path": str(Path(path).resolve()), "sha256": sha256_of_file(path)}
            for path in checkpoints
        ],
        "target": to_dict(target),
        "label_space": label_space.name,
        "protocol": _protocol(config),
        "save_soft": save_soft,
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _prepare_output(
    out: Path, settings: dict[str, Any], overwrite: bool, context: DistributedContext
) -> dict[str, Any] | None:
    """Check `out` against this run's settings; the finished summary if nothing is left to do.

    Raises:
        ConfigError: `out` holds another run's outputs (or other files) and not `overwrite`.
    """
    settings_path = out / STATE_FOLDER / SETTINGS_FILE
    summary_path = out / SUMMARY_FILE
    # JSON round trip so that tuples and lists compare equal.
    settings = json.loads(json.dumps(settings))
    recorded = _read_json(settings_path) if settings_path.is_file() else None
    same = recorded == settings
    if same and not overwrite and summary_path.is_file():
        summary = _read_json(summary_path)
        if summary is not None:
            return summary
    if not overwrite:
        refuse_foreign_output(
            out, recorded, settings, "pseudo-label", "pseudo-labels made with other"
        )
    # Every rank has read the old settings before rank 0 replaces them.
    barrier(context)
    if context.is_main and (overwrite or not same):
        shutil.rmtree(out / STATE_FOLDER, ignore_errors=True)
        summary_path.unlink(missing_ok=True)
    if context.is_main:
        pseudo_labels.write_json(settings_path, settings)
    barrier(context)
    return None


# --- Prediction ------------------------------------------------------------------------------


class _Labeller:
    """Mean softmax of the checkpoints for this rank's shard of the target split."""

    def __init__(
        self,
        models: list[LoadedModel],
        config: Config,
        dataset: Any,
        context: DistributedContext,
        save_soft: bool,
        spatial_prior: Any = None,
    ) -> None:
        self.models = models
        self.spatial_prior = spatial_prior
        self.eval = config.eval
        self.num_workers = config.data.num_workers
        self.dataset = dataset
        self.context = context
        self.save_soft = save_soft
        resize = _resize_method(config)
        self.resize_arguments: dict[str, Any] = (
            {"input_size": None}
            if resize == "pil"
            else {"input_size": self.eval.input_size, "resize": resize}
        )
        self.num_classes = models[0].label_space.num_classes
        # Eval loaders shard as rank, rank + world_size, ...; kept here so a resume can start
        # at any position of the shard.
        self.shard = list(range(context.rank, len(dataset), context.world_size))

    def batches(self, start: int) -> Iterator[list[dict[str, Any]]]:
        """Per batch, one record per image from shard position `start` on.

        Yields:
            lists of {"name": str, "probabilities": float32 [C, H, W] at the native size,
            "soft": float32 [C, h, w] or None}. Batches fall where an uninterrupted run's do
            when `start` is a multiple of the batch size, so resuming changes no arithmetic.
        """
        subset = Subset(self.dataset, self.shard[start:])
        loader = eval_loader(subset, self.eval.batch_size, 0, 1, self.num_workers)
        for batch in loader:
            yield self._predict(batch)

    def _predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        sizes = [_header_size(self.dataset.samples[int(i)].image) for i in batch["index"]]
        records: list[dict[str, Any] | None] = [None] * len(sizes)
        # Images of one batch share the input size but not always the native size.
        for size in dict.fromkeys(sizes):
            members = [position for position, other in enumerate(sizes) if other == size]
            images = batch["image"][members].to(self.context.device)
            probabilities, soft = self._mean_softmax(images, size)
            if self.spatial_prior is not None:
                probabilities = pseudo_labels.apply_spatial_prior(probabilities, self.spatial_prior)
            for offset, position in enumerate(members):
                records[position] = {
                    "name": batch["name"][position],
                    "probabilities": probabilities[offset],
                    "soft": None if soft is None else soft[offset],
                }
        return [record for record in records if record is not None]

    @torch.inference_mode()
    def _mean_softmax(
        self, images: torch.Tensor, native_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """float32 [B, C, H, W] at native size; with save_soft also [B, C, h, w]."""
        total = None
        soft_total = None
        for model in self.models:
            captured: list[torch.Tensor] = []

            def forward(
                inputs: torch.Tensor,
                model: LoadedModel = model,
                captured: list[torch.Tensor] = captured,
            ) -> torch.Tensor:
                # Keeps the output-resolution logits for --save-soft.
                logits = model.method.predict(inputs)
                captured.append(logits)
                return logits

            # With "pil" the dataset has already resized the images to eval.input_size.
            logits = predict_with_protocol(
                forward, images, native_size, self.eval, self.resize_arguments["input_size"]
            )
            probabilities = logits.float().softmax(dim=1)
            total = probabilities if total is None else total + probabilities
            if self.save_soft:
                raw = captured[0].float()
                if self.eval.flip:  # as predict_logits averages the two views
                    half = images.shape[0]
                    raw = (raw[:half] + raw[half:].flip(-1)) / 2
                soft = raw.softmax(dim=1)
                if soft_total is not None and soft_total.shape != soft.shape:
                    raise ConfigError(
                        "--save-soft: the checkpoints predict at different output resolutions "
                        f"({list(soft_total.shape[-2:])} and {list(soft.shape[-2:])})"
                    )
                soft_total = soft if soft_total is None else soft_total + soft
        assert total is not None
        count = len(self.models)
        return total / count, None if soft_total is None else soft_total / count


def _progress_bar(labeller: _Labeller, start: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=len(labeller.shard),
        initial=start,
        desc=description,
        unit="img",
        file=sys.stderr,
        dynamic_ncols=True,
        # In a log file (recipes, batch jobs) one line every 30 s, not one per image.
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        disable=not (enabled and labeller.context.is_main),
    )


def _state_path(state_folder: Path, name: str, context: DistributedContext) -> Path:
    return state_folder / f"{name}_rank{context.rank}of{context.world_size}.pt"


def _load_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _all_reduce(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        import torch.distributed as dist

        # gloo reduces CPU tensors, NCCL device tensors.
        moved = tensor.to(context.device)
        dist.all_reduce(moved)
        return moved.cpu()
    return tensor


# --- Pass 1: statistics ----------------------------------------------------------------------


def _statistics_pass(
    labeller: _Labeller, state_folder: Path, state_every: float, progress: bool
) -> pseudo_labels.ConfidenceHistogram:
    """Histogram of the whole split (all ranks), resuming from this rank's saved part."""
    context = labeller.context
    histogram = pseudo_labels.ConfidenceHistogram(
        labeller.num_classes, pseudo_labels.ConfidenceHistogram.DEFAULT_BINS, context.device
    )
    path = _state_path(state_folder, "pass1", context)
    state = _load_state(path)
    done = 0
    if state is not None:
        histogram.load_state_dict({"counts": state["counts"]})
        done = int(state["images_done"])
    if done < len(labeller.shard):
        last_save = time.monotonic()
        with _progress_bar(labeller, done, "pass 1/2 statistics", progress) as bar:
            for records in labeller.batches(done):
                for record in records:
                    confidence, predicted = pseudo_labels.confidence_and_prediction(
                        record["probabilities"]
                    )
                    histogram.update(confidence, predicted)
                    maybe_kill("pseudo_label.statistics")
                # Saved at batch ends only, so a resume starts on an uninterrupted run's batch
                # boundary.
                done += len(records)
                bar.update(len(records))
                if done == len(labeller.shard) or time.monotonic() - last_save >= state_every:
                    state = {**histogram.state_dict(), "images_done": done}
                    checkpoints_io.atomic_save(state, path)
                    last_save = time.monotonic()
    histogram.counts = _all_reduce(histogram.counts.cpu(), context)
    return histogram


# --- Pass 2: labels --------------------------------------------------------------------------


def _output_paths(out: Path, name: str, save_soft: bool) -> dict[str, Path]:
    paths = {"label": out / f"{name}.png", "confidence": out / "confidence" / f"{name}.png"}
    if save_soft:
        paths["soft"] = out / "soft" / f"{name}.npy"
    return paths


def _labelling_pass(
    labeller: _Labeller,
    policy: str,
    thresholds: torch.Tensor | None,
    out: Path,
    state_every: float,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """Write every image's outputs; per-class pixel counts of the whole split (all ranks).

    Images counted in this rank's saved progress are skipped (their files exist: they are
    written before being counted); the rest are predicted and written again, atomically,
    which gives the same bytes when an earlier attempt of this run had written them.
    """
    context = labeller.context
    num_classes = labeller.num_classes
    path = _state_path(out / STATE_FOLDER, "pass2", context)
    counts = {
        "predicted": torch.zeros(num_classes, dtype=torch.int64),
        "labelled": torch.zeros(num_classes, dtype=torch.int64),
        "pixels": torch.zeros(1, dtype=torch.int64),
    }
    done = 0
    state = _load_state(path)
    if state is not None and _outputs_exist(labeller, out, int(state["images_done"])):
        done = int(state["images_done"])
        counts = {key: state[key] for key in counts}
    if done < len(labeller.shard):
        last_save = time.monotonic()
        with _progress_bar(labeller, done, "pass 2/2 labels", progress) as bar:
            for records in labeller.batches(done):
                for record in records:
                    _write_outputs(record, policy, thresholds, out, labeller.save_soft, counts)
                    maybe_kill("pseudo_label.image")
                done += len(records)
                bar.update(len(records))
                if done == len(labeller.shard) or time.monotonic() - last_save >= state_every:
                    checkpoints_io.atomic_save({**counts, "images_done": done}, path)
                    last_save = time.monotonic()
    return {key: _all_reduce(value, context) for key, value in counts.items()}


def _outputs_exist(labeller: _Labeller, out: Path, done: int) -> bool:
    """Whether the images counted as done still have their files (else pass 2 starts over)."""
    for index in labeller.shard[:done]:
        name = labeller.dataset.samples[index].name
        if not all(p.is_file() for p in _output_paths(out, name, labeller.save_soft).values()):
            return False
    return True


def _write_outputs(
    record: dict[str, Any],
    policy: str,
    thresholds: torch.Tensor | None,
    out: Path,
    save_soft: bool,
    counts: dict[str, torch.Tensor],
) -> None:
    probabilities = record["probabilities"]
    num_classes = probabilities.shape[0]
    confidence, predicted = pseudo_labels.confidence_and_prediction(probabilities)
    labels = pseudo_labels.apply_thresholds(probabilities, thresholds, policy).cpu()
    paths = _output_paths(out, record["name"], save_soft)
    pseudo_labels.write_label_png(paths["label"], labels)
    pseudo_labels.write_confidence_png(paths["confidence"], confidence)
    if save_soft:
        soft = record["soft"].to(torch.float16).cpu().numpy()
        pseudo_labels.write_array_npy(paths["soft"], soft)
    counts["predicted"] += torch.bincount(predicted.reshape(-1).cpu(), minlength=num_classes)
    kept = labels[labels != pseudo_labels.IGNORE_INDEX].to(torch.int64)
    counts["labelled"] += torch.bincount(kept, minlength=num_classes)
    counts["pixels"] += labels.numel()


# --- Summary ---------------------------------------------------------------------------------


def _summary(
    settings: dict[str, Any],
    config_path: str | Path | None,
    checkpoints: list[str | Path],
    num_images: int,
    label_space: LabelSpace,
    thresholds: torch.Tensor | None,
    counts: dict[str, torch.Tensor],
    config: Config,
) -> dict[str, Any]:
    names = list(label_space.class_names)
    predicted = [int(value) for value in counts["predicted"]]
    labelled = [int(value) for value in counts["labelled"]]
    pixels = int(counts["pixels"][0])
    return {
        "policy": settings["policy"],
        "options": settings["options"],
        "checkpoints": [str(path) for path in checkpoints],
        "config": None if config_path is None else str(config_path),
        "target": {
            "kind": config.data.target.kind,
            "root": config.data.target.root,
            "split": config.data.target.split,
        },
        "num_images": num_images,
        "label_space": label_space.name,
        "ignore_index": pseudo_labels.IGNORE_INDEX,
        "thresholds": None
        if thresholds is None
        else {name: float(value) for name, value in zip(names, thresholds.tolist(), strict=True)},
        "predicted_pixels": dict(zip(names, predicted, strict=True)),
        "labelled_pixels": dict(zip(names, labelled, strict=True)),
        # Pixels labelled as the class over pixels predicted as it (class_balanced may label a
        # pixel with another class than its argmax).
        "kept_fraction": {
            name: (kept / total if total else None)
            for name, kept, total in zip(names, labelled, predicted, strict=True)
        },
        "total_pixels": pixels,
        "overall_kept_fraction": sum(labelled) / pixels if pixels else 0.0,
        "protocol": settings["protocol"],
        "save_soft": settings["save_soft"],
        "exactness": EXACTNESS[settings["policy"]].format(
            bins=pseudo_labels.ConfidenceHistogram.DEFAULT_BINS
        ),
    }
