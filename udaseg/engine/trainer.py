"""The training loop: one function that reads top to bottom.

Every method runs through `train()`. The method computes losses and calls `ctx.backward`; this
file owns the rest: data streams, optimizers and schedules, mixed precision, gradient
all-reduce under torchrun, checkpoints and exact resume, logging and periodic evaluation.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from udaseg.config import Config, OptimizerConfig, config_from_dict, dump_yaml, from_dict, to_dict
from udaseg.data.datasets import build_dataset
from udaseg.data.label_spaces import LabelSpace, get_label_space
from udaseg.data.loaders import TrainStream, eval_loader
from udaseg.engine import checkpoint as checkpoints
from udaseg.engine.distributed import (
    DistributedContext,
    all_reduce_gradients,
    all_reduce_scalars,
    average_buffers,
    barrier,
    broadcast_modules,
    init_distributed,
)
from udaseg.engine.logging import RunLogger
from udaseg.engine.optim import build_optimizer, lr_factor, set_learning_rates
from udaseg.errors import CheckpointError, ConfigError, UdasegError
from udaseg.evaluation.evaluate import evaluate
from udaseg.evaluation.metrics import EvaluationResult
from udaseg.evaluation.report import format_table, write_json
from udaseg.methods.base import Method
from udaseg.models import build_segmentor
from udaseg.registry import METHODS

# Config keys that may change when a run is resumed: they do not alter the trajectory.
RESUMABLE_CHANGES = (
    "train.steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.eval_every",
    "train.eval_at_end",
    "train.progress_bar",
    "train.tensorboard",
    "data.num_workers",
    "eval.",
    "data.val.",
    "run_dir",
)


class TrainingDiverged(UdasegError):
    """A loss became NaN or infinite."""


@dataclass
class TrainContext:
    """The `StepContext` a method sees (methods/base.py)."""

    step: int
    total_steps: int
    device: torch.device
    precision: str
    scaler: torch.amp.GradScaler
    accumulation_steps: int = 1
    wants_visuals: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        return self.step / self.total_steps

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context the engine runs `training_step` in."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        # Backward runs outside autocast (the kernels follow the forward's dtypes anyway), with
        # the fp16 loss scale and the 1/accumulation factor of gradient accumulation.
        loss = loss / self.accumulation_steps
        with torch.autocast(device_type=self.device.type, enabled=False):
            self.scaler.scale(loss).backward()


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    seconds: float
    final_checkpoint: Path | None
    evaluation: EvaluationResult | None


def train(config: Config, resume: bool | str | None = None, device: str = "auto") -> TrainResult:
    """Train `config.method` as the config says.

    Args:
        config: a validated config.
        resume: None/False = a fresh run (refused if the run directory has checkpoints, so
            nothing is overwritten); True = continue from `<run_dir>/checkpoints/last.pt`; a
            path = continue from that checkpoint.
        device: "auto", "cpu" or "cuda".
    """
    context = init_distributed(device)
    run_dir = Path(config.run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    payload = _resume_payload(config, checkpoint_dir, resume)

    _seed_everything(config.seed, context.rank, config.train.deterministic, context.device)
    label_space = get_label_space(config.data.label_space)
    method_class = METHODS.get(config.method.name)

    # --- data: a labelled source stream, an unlabelled target stream, a labelled val set ---
    if config.data.source is None:
        raise ConfigError(
            "config key data.source: missing; every method trains on a labelled source"
        )
    streams = {"source": _stream(config, "source", label_space, context)}
    if method_class.uses_target:
        if config.data.target is None:
            raise ConfigError(
                f"config key data.target: missing; method {config.method.name!r} needs target images"
            )
        streams["target"] = _stream(config, "target", label_space, context)
    val_loader = _val_loader(config, label_space, context)

    # --- model, method, optimizers ---
    # Init weights come from the config (downloaded once, by rank 0 first); a resumed run takes
    # every weight from its checkpoint instead.
    segmentor = _build_segmentor(config, label_space, context, load_weights=payload is None)
    method: Method = method_class(config.method, segmentor, label_space)
    memory_format = torch.channels_last if config.train.channels_last else None
    method.to(context.device, memory_format)
    trainable = method.trainable_modules()
    optimizer_configs = _optimizer_configs(config, method_class, trainable)
    missing = [name for name in trainable if name not in optimizer_configs]
    if missing:
        raise ConfigError(
            f"config key optim.{missing[0]}: missing; method {config.method.name!r} trains {', '.join(trainable)}"
        )
    optimizers = {
        name: build_optimizer(module, optimizer_configs[name], name)
        for name, module in trainable.items()
    }
    scaler = torch.amp.GradScaler(context.device.type, enabled=config.train.precision == "fp16")

    start_step = 0
    if payload is not None:
        start_step = _restore(payload, method, optimizers, scaler)
    else:
        broadcast_modules(method.all_modules(), context)
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")

    logger = RunLogger(run_dir, enabled=context.is_main, tensorboard=config.train.tensorboard)
    steps = config.train.steps
    accumulation = config.train.accumulation_steps
    batches = {name: stream.batches(start_step * accumulation) for name, stream in streams.items()}
    progress = tqdm(
        total=steps,
        initial=start_step,
        desc=f"{config.method.name}",
        disable=not (context.is_main and config.train.progress_bar),
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        file=sys.stderr,
    )
    started = time.time()
    method.train(True)
    last_checkpoint = None
    pending: dict[str, list[torch.Tensor]] = {}

    for step in range(start_step, steps):
        # Learning rates for this step (poly decay keeps the head's 10x ratio).
        factor = lr_factor(step, config.schedule, steps)
        for name, optimizer in optimizers.items():
            set_learning_rates(optimizer, optimizer_configs[name].lr, factor)
        # The RNG state of a step is a function of (seed, rank, step): resume is exact without
        # replaying earlier steps.
        _seed_step(config.seed, context.rank, step)
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)

        ctx = TrainContext(
            step=step,
            # Progress follows the schedule's horizon, which a resume cannot change (train.steps
            # can): methods with ramps (DANN's reversal coefficient) then resume exactly.
            total_steps=config.schedule.total_steps or steps,
            device=context.device,
            precision=config.train.precision,
            scaler=scaler,
            accumulation_steps=accumulation,
        )
        for _ in range(accumulation):
            batch = {
                name: _to_device(next(iterator), context.device, memory_format)
                for name, iterator in batches.items()
            }
            with ctx.autocast():
                outputs = method.training_step(batch, ctx)
            for key, value in outputs.items():
                if key != "visuals":
                    pending.setdefault(key, []).append(torch.as_tensor(value).detach().float())

        # Average gradients (and BN statistics) over ranks, then step every optimizer.
        all_reduce_gradients(trainable, context)
        average_buffers(method.all_modules(), context)
        for name, optimizer in optimizers.items():
            if config.train.grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(
                    trainable[name].parameters(), config.train.grad_clip_norm
                )
            scaler.step(optimizer)
        scaler.update()
        method.after_optimizer_step(ctx)

        completed = step + 1
        progress.update(1)
        if completed % config.train.log_every == 0 or completed == steps:
            # One host sync per log interval, not per step.
            scalars = {key: torch.stack(values).mean().item() for key, values in pending.items()}
            pending.clear()
            scalars = all_reduce_scalars(scalars, context)
            bad = [key for key, value in scalars.items() if not math.isfinite(value)]
            if bad:
                raise TrainingDiverged(
                    f"step {completed}: {bad[0]} is {scalars[bad[0]]}; the last good checkpoint is "
                    f"{last_checkpoint or 'none'} (lower the learning rate or use precision=fp32)"
                )
            scalars["lr"] = (
                config.optim["segmentor"].lr * factor if "segmentor" in config.optim else factor
            )
            logger.scalars(completed, scalars)
            progress.set_postfix(
                {key: f"{value:.4g}" for key, value in scalars.items() if key != "lr"},
                refresh=False,
            )

        if completed % config.train.checkpoint_every == 0 or completed == steps:
            last_checkpoint = _save(
                config, checkpoint_dir, completed, method, optimizers, scaler, context
            )

        if (
            val_loader is not None
            and config.train.eval_every
            and completed % config.train.eval_every == 0
            and completed != steps
        ):
            _evaluate_and_log(
                method, val_loader, label_space, config, context, logger, completed, run_dir
            )
            method.train(True)

    progress.close()
    seconds = time.time() - started
    evaluation = None
    if val_loader is not None and config.train.eval_at_end:
        evaluation = _evaluate_and_log(
            method, val_loader, label_space, config, context, logger, steps, run_dir, final=True
        )
    logger.close()
    return TrainResult(
        run_dir=run_dir,
        steps=steps,
        seconds=seconds,
        final_checkpoint=last_checkpoint,
        evaluation=evaluation,
    )


# --- helpers, in the order the loop uses them ----------------------------------------------------


def _resume_payload(config: Config, checkpoint_dir: Path, resume: bool | str | None) -> dict | None:
    last = checkpoint_dir / checkpoints.LAST
    if not resume:
        if last.exists() or checkpoints.step_checkpoints(checkpoint_dir):
            raise ConfigError(
                f"run_dir {config.run_dir} already holds checkpoints: pass --resume to continue it, "
                "or set run_dir to a new directory"
            )
        return None
    path = last if resume is True else Path(resume)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    payload = checkpoints.read_checkpoint(path)
    changed = _changed_keys(to_dict(config_from_dict(payload["config"])), to_dict(config))
    blocking = [
        key
        for key in changed
        if not any(key == allowed or key.startswith(allowed) for allowed in RESUMABLE_CHANGES)
    ]
    if blocking:
        raise ConfigError(
            f"{path}: cannot resume with a different config; changed: {', '.join(blocking[:5])} "
            f"(only {', '.join(RESUMABLE_CHANGES)} may change)"
        )
    return payload


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [
            k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [prefix.rstrip(".")]


def _seed_everything(seed: int, rank: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)
    torch.use_deterministic_algorithms(deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def _seed_step(seed: int, rank: int, step: int) -> None:
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def _optimizer_configs(
    config: Config, method_class: type, trainable: dict
) -> dict[str, OptimizerConfig]:
    """`optim.<name>` from the config, else the method's paper default for that module."""
    chosen = {}
    for name in trainable:
        if name in config.optim:
            chosen[name] = config.optim[name]
        elif name in method_class.default_optimizers:
            chosen[name] = from_dict(
                OptimizerConfig, dict(method_class.default_optimizers[name]), f"optim.{name}"
            )
    return chosen


def _build_segmentor(
    config: Config, label_space: LabelSpace, context: DistributedContext, load_weights: bool
):
    if not context.is_main:
        barrier(context)
    segmentor = build_segmentor(config.model, label_space.num_classes, load_weights=load_weights)
    if context.is_main:
        report = getattr(segmentor, "load_report", None)
        if report is not None:
            print(f"[udaseg] {report}", file=sys.stderr)
        barrier(context)
    return segmentor


def _stream(
    config: Config, role: str, label_space: LabelSpace, context: DistributedContext
) -> TrainStream:
    dataset = build_dataset(getattr(config.data, role), label_space, role)
    return TrainStream(
        dataset,
        batch_size=config.data.batch_size,
        seed=config.seed,
        name=role,
        rank=context.rank,
        world_size=context.world_size,
        num_workers=config.data.num_workers,
    )


def _val_loader(config: Config, label_space: LabelSpace, context: DistributedContext):
    if config.data.val is None:
        return None
    dataset = build_dataset(config.data.val, label_space, "val", image_size=config.eval.input_size)
    return eval_loader(
        dataset, config.eval.batch_size, context.rank, context.world_size, config.data.num_workers
    )


def _to_device(
    batch: dict[str, Any], device: torch.device, memory_format: torch.memory_format | None
) -> dict[str, Any]:
    """uint8 images become float RGB 0..255 on the device; labels int64."""
    moved = dict(batch)
    images = batch["image"].to(device, non_blocking=True).float()
    if memory_format is not None:
        images = images.contiguous(memory_format=memory_format)
    moved["image"] = images
    if "label" in batch:
        moved["label"] = batch["label"].to(device, non_blocking=True).long()
    return moved


def _restore(payload: dict, method: Method, optimizers: dict, scaler: torch.amp.GradScaler) -> int:
    path = "checkpoint"
    checkpoints.load_module_states(payload, method.all_modules(), path)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    if payload.get("scaler") is not None and scaler.is_enabled():
        scaler.load_state_dict(payload["scaler"])
    method.load_extra_state(payload.get("method_state") or {})
    checkpoints.set_rng_state(payload["rng"])
    return int(payload["step"])


def _save(config, checkpoint_dir, step, method, optimizers, scaler, context) -> Path | None:
    path = None
    if context.is_main:
        payload = checkpoints.build_payload(
            step=step,
            config=to_dict(config),
            modules=method.all_modules(),
            optimizers=optimizers,
            scaler=scaler,
            method_state=method.extra_state(),
        )
        path = checkpoints.save_training_checkpoint(
            checkpoint_dir, step, payload, config.train.keep_checkpoints
        )
    barrier(context)
    return path


def _evaluate_and_log(
    method, loader, label_space, config, context, logger, step, run_dir, final=False
) -> EvaluationResult:
    method.train(False)
    result = evaluate(method.predict, loader, label_space, config.eval, context.device)
    result.protocol["step"] = step
    if context.is_main:
        logger.scalars(step, {name: value for name, value in result.miou.items()}, prefix="val")
        name = "final.json" if final else f"step_{step:06d}.json"
        write_json(run_dir / "eval" / name, result)
        if final:
            print(format_table({f"{config.method.name} @ {step}": result}), file=sys.stderr)
    return result
