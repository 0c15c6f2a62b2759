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
from udaseg.engine import faults
from udaseg.engine.distributed import (
    DistributedContext,
    all_gather_tensor,
    all_reduce_gradients,
    all_reduce_scalars,
    all_reduce_tensor,
    average_buffers,
    barrier,
    broadcast_modules,
    init_distributed,
)
from udaseg.engine.logging import RunLogger, format_progress_line, warn_if_tensorboard_missing
from udaseg.engine.optim import build_optimizer, lr_factor, set_learning_rates
from udaseg.errors import CheckpointError, ConfigError, UdasegError
from udaseg.evaluation.evaluate import evaluate
from udaseg.evaluation.metrics import EvaluationResult
from udaseg.evaluation.report import format_table, result_title, write_json
from udaseg.files import check_output_folder, remove_stale_temporary_files
from udaseg.methods.base import Method, SetupContext
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
    "train.visual_every",
    "init",
    "data.num_workers",
    # A dataset moved to another folder (or disk) holds the same images: the trajectory is the
    # same, so a resume may follow it.
    "data.source.root",
    "data.target.root",
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
    # The resumed checkpoint had already reached train.steps: nothing was trained (and nothing
    # evaluated when eval/final.json existed).
    already_finished: bool = False


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
    warn_if_tensorboard_missing(config.train.tensorboard, enabled=context.is_main)
    run_dir = Path(config.run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    if context.is_main:
        # Before any work: an unwritable run_dir would otherwise fail at the first checkpoint.
        check_output_folder(run_dir, "run_dir")
        # Kills during a save leave `.<name>.*.tmp` files; no other process writes here now.
        removed = remove_stale_temporary_files(checkpoint_dir)
        if removed:
            print(
                f"[udaseg] removed {len(removed)} temporary file(s) of interrupted saves from "
                f"{checkpoint_dir}",
                file=sys.stderr,
            )
    payload = _resume_payload(config, checkpoint_dir, resume)
    if payload is not None and int(payload["step"]) >= config.train.steps:
        final_evaluation = run_dir / "eval" / "final.json"
        if config.data.val is None or not config.train.eval_at_end or final_evaluation.is_file():
            # Nothing to train and nothing to evaluate: building datasets and models would only
            # cost time.
            return TrainResult(
                run_dir=run_dir,
                steps=int(payload["step"]),
                seconds=0.0,
                final_checkpoint=checkpoint_dir / checkpoints.LAST
                if resume is True
                else Path(resume),
                evaluation=None,
                already_finished=True,
            )

    _seed_everything(config.seed, context.rank, config.train.deterministic, context.device)
    label_space = get_label_space(config.data.label_space)
    method_class = METHODS.get(config.method.name)

    # --- data: a labelled source stream, an unlabelled target stream, a labelled val set ---
    streams = {}
    if method_class.uses_source:
        if config.data.source is None:
            raise ConfigError(
                f"config key data.source: missing; method {config.method.name!r} trains on a "
                "labelled source"
            )
        streams["source"] = _stream(config, "source", label_space, context)
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
    segmentor = _build_segmentor(
        config,
        label_space,
        context,
        load_weights=payload is None and "segmentor" not in config.init,
    )
    method: Method = method_class(config.method, segmentor, label_space)
    if payload is None:
        initialise_modules(config.init, method.all_modules())
    memory_format, optimizer_configs, optimizers = prepare_for_training(
        config, method, method_class, context.device
    )
    trainable = method.trainable_modules()
    scaler = torch.amp.GradScaler(context.device.type, enabled=config.train.precision == "fp16")

    start_step = 0
    if payload is not None:
        start_step = _restore(payload, method, optimizers, scaler)
    else:
        broadcast_modules(method.all_modules(), context)
    method.setup(
        SetupContext(
            datasets={name: stream.dataset for name, stream in streams.items()},
            resumed=payload is not None,
            device=context.device,
            rank=context.rank,
            world_size=context.world_size,
            batch_size=config.data.batch_size,
            num_workers=config.data.num_workers,
            seed=config.seed,
            all_reduce=lambda tensor: all_reduce_tensor(tensor, context),
            all_gather=lambda tensor: all_gather_tensor(tensor, context),
        )
    )
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")

    logger = RunLogger(
        run_dir,
        enabled=context.is_main,
        tensorboard=config.train.tensorboard,
        start_step=start_step,
    )
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
    meter = _ThroughputMeter(context.device)
    images_per_step = config.data.batch_size * accumulation * len(streams)
    visual_every = config.train.visual_every

    try:
        for step in range(start_step, steps):
            # Learning rates for this step (poly decay keeps the head's 10x ratio); each optimizer
            # follows its own schedule when it has one.
            learning_rates = {}
            for name, optimizer in optimizers.items():
                schedule = optimizer_configs[name].schedule or config.schedule
                learning_rates[name] = set_learning_rates(
                    optimizer, optimizer_configs[name].lr, lr_factor(step, schedule, steps)
                )
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
                wants_visuals=bool(visual_every) and (step + 1) % visual_every == 0,
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
                if ctx.wants_visuals and outputs.get("visuals"):
                    logger.images(step + 1, _visual_arrays(outputs["visuals"]))

            # Average gradients (and BN statistics) over ranks, then step the optimizers whose
            # module received gradients: alternating GAN updates leave one module without any, and
            # the fp16 scaler refuses to step an optimizer it recorded no inf checks for. After the
            # all-reduce every rank holds the same set of gradients, so every rank decides alike.
            all_reduce_gradients(trainable, context)
            average_buffers(method.all_modules(), context)
            stepped = 0
            for name, optimizer in optimizers.items():
                if not _has_gradients(trainable[name]):
                    continue
                if config.train.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(
                        trainable[name].parameters(), config.train.grad_clip_norm
                    )
                scaler.step(optimizer)
                stepped += 1
            if stepped:
                scaler.update()
            method.after_optimizer_step(ctx)
            faults.maybe_kill("train.step")

            completed = step + 1
            progress.update(1)
            meter.step()
            if completed % config.train.log_every == 0 or completed == steps:
                # One host sync per log interval, not per step.
                scalars = {
                    key: torch.stack(values).mean().item() for key, values in pending.items()
                }
                pending.clear()
                scalars = all_reduce_scalars(scalars, context)
                bad = [key for key, value in scalars.items() if not math.isfinite(value)]
                if bad:
                    raise TrainingDiverged(
                        f"step {completed}: {bad[0]} is {scalars[bad[0]]}; the last good "
                        f"checkpoint is {last_checkpoint or 'none'} (lower the learning rate or "
                        "use precision=fp32)"
                    )
                losses = dict(scalars)
                postfix = {key: f"{value:.4g}" for key, value in losses.items()}
                scalars.update({f"lr/{name}": value for name, value in learning_rates.items()})
                if "segmentor" in learning_rates:
                    scalars["lr"] = learning_rates["segmentor"]
                scalars.update(meter.read(images_per_step))
                logger.scalars(completed, scalars)
                progress.set_postfix(postfix, refresh=False)
                if context.is_main and not config.train.progress_bar:
                    # Without the bar a log file would stay silent until the final table.
                    line = format_progress_line(
                        completed,
                        steps,
                        losses,
                        learning_rates,
                        scalars.get("time/images_per_second"),
                    )
                    print(line, file=sys.stderr, flush=True)

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
    except BaseException:
        # Ctrl-C or an error: end the bar's line and flush the logs, so that the message
        # that follows (which checkpoint to resume from) stands on its own line.
        progress.close()
        logger.close()
        raise

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
        steps=max(steps, start_step),
        seconds=seconds,
        final_checkpoint=last_checkpoint,
        evaluation=evaluation,
        already_finished=start_step >= steps,
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
        existing = checkpoints.step_checkpoints(checkpoint_dir) if resume is True else []
        if existing:
            names = ", ".join(step_path.name for _, step_path in reversed(existing))
            raise CheckpointError(
                f"{path}: no checkpoint to resume from, but {checkpoint_dir} holds {names}; "
                f"continue from one with --resume PATH (e.g. --resume {existing[-1][1]})"
            )
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
    config: Config, method_class: type, modules: dict
) -> dict[str, OptimizerConfig]:
    """`optim.<name>` from the config, else the method's paper default for that module.

    An `optim.<name>` that names no trainable module of the method is an error: a typo there
    would otherwise train that module with the default optimizer without a word. (`segmentor`
    is in every config's defaults, so it is accepted even by a method that does not train one.)
    """
    unknown = [name for name in config.optim if name not in modules and name != "segmentor"]
    if unknown:
        raise ConfigError(
            f"config key optim.{unknown[0]}: method {config.method.name!r} has no module "
            f"{unknown[0]!r} to optimise; valid names: {', '.join(modules)}"
        )
    chosen = {}
    for name in modules:
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
        # Page-locked batches make the non_blocking copies to a GPU asynchronous.
        pin_memory=context.device.type == "cuda",
    )


def _val_loader(config: Config, label_space: LabelSpace, context: DistributedContext):
    if config.data.val is None:
        return None
    dataset = build_dataset(config.data.val, label_space, "val", image_size=config.eval.input_size)
    return eval_loader(
        dataset,
        config.eval.batch_size,
        context.rank,
        context.world_size,
        config.data.num_workers,
        pin_memory=context.device.type == "cuda",
    )


def prepare_for_training(
    config: Config, method: Method, method_class: type, device: torch.device
) -> tuple[torch.memory_format | None, dict, dict[str, torch.optim.Optimizer]]:
    """Move the method's modules to the device with the speed settings of `train:`, then build
    one optimizer per trainable module (bench/step_setup.py times steps prepared this way).

    Returns:
        (the images' memory format or None, the optimizer configs, the optimizers by name).
    """
    memory_format = torch.channels_last if config.train.channels_last else None
    method.to(device, memory_format)
    trainable = method.trainable_modules()
    optimizer_configs = _optimizer_configs(config, method_class, trainable)
    missing = [name for name in trainable if name not in optimizer_configs]
    if missing:
        raise ConfigError(
            f"config key optim.{missing[0]}: missing; method {config.method.name!r} trains "
            f"{', '.join(trainable)}"
        )
    optimizers = {
        name: build_optimizer(
            module, optimizer_configs[name], name, config.train.optimizer_implementation
        )
        for name, module in trainable.items()
    }
    if config.train.compile:
        compile_modules(method)
    return memory_format, optimizer_configs, optimizers


# torch.compile's backend for train.compile. The tests swap in "aot_eager" (the same graph
# capture and autograd decomposition without inductor's code generation, which takes minutes).
COMPILE_BACKEND = "inductor"


def compile_modules(method: Method) -> None:
    """torch.compile every module of the method in place (train.compile).

    In place (`nn.Module.compile`), so state_dict keys, checkpoints and the optimizers' parameters
    are those of the uncompiled modules. Each new input shape (evaluation's, the last partial
    batch) compiles once more; the first steps of a run pay the compilation.
    """
    for module in method.all_modules().values():
        module.compile(backend=COMPILE_BACKEND)


def _to_device(
    batch: dict[str, Any], device: torch.device, memory_format: torch.memory_format | None
) -> dict[str, Any]:
    """uint8 images become float RGB 0..255 on the device; labels int64."""
    moved = dict(batch)
    images = batch["image"].to(device, non_blocking=True).float()
    if memory_format is not None:
        images = images.contiguous(memory_format=memory_format)
    moved["image"] = images
    for key in ("label", "pseudo_label"):
        if key in batch:
            moved[key] = batch[key].to(device, non_blocking=True).long()
    return moved


def _has_gradients(module: torch.nn.Module) -> bool:
    return any(parameter.grad is not None for parameter in module.parameters())


def _visual_arrays(visuals: dict[str, Any]) -> dict[str, np.ndarray]:
    """uint8 [H, W, 3] arrays from what a method returns (arrays, or [3, H, W] tensors)."""
    arrays = {}
    for key, value in visuals.items():
        if torch.is_tensor(value):
            value = value.detach().cpu()
            if value.dim() == 3 and value.shape[0] == 3:
                value = value.permute(1, 2, 0)
            value = value.clamp(0, 255).to(torch.uint8).numpy()
        arrays[key] = np.asarray(value, dtype=np.uint8)
    return arrays


class _ThroughputMeter:
    """Step time, images/s and peak memory over each logging interval."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = time.perf_counter()
        self.steps = 0

    def step(self) -> None:
        self.steps += 1

    def read(self, images_per_step: int) -> dict[str, float]:
        now = time.perf_counter()
        seconds = max(now - self.started, 1e-9)
        values = {
            "time/step_seconds": seconds / max(self.steps, 1),
            "time/images_per_second": images_per_step * self.steps / seconds,
            "memory/peak_mb": _peak_memory_mb(self.device),
        }
        self.started, self.steps = now, 0
        return values


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    # ru_maxrss is in kilobytes on Linux: the process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def initialise_modules(init: dict[str, str], modules: dict[str, torch.nn.Module]) -> None:
    """Load `init` weights into the named modules (a fresh start's `init:` section).

    Args:
        init: module name -> `path` or `path#module`. A udaseg checkpoint gives the module of
            the same name (or the one after `#`); any other file is read as a state_dict, a
            segmentor's in the released key layout.
        modules: the method's modules (trainable and teachers).
    Raises:
        ConfigError: a name that is not a module of the method.
        CheckpointError: an unreadable file, a missing module, weights that do not fit.
    """
    from udaseg.models.weights import (
        load_released_checkpoint,
        load_state_dict_strictly,
        read_state_dict,
    )

    for name, source in init.items():
        if name not in modules:
            raise ConfigError(
                f"config key init.{name}: the method has no module {name!r}; valid names: "
                f"{', '.join(modules)}"
            )
        path, _, module_name = source.partition("#")
        payload = checkpoints.load_file(path)
        if isinstance(payload, dict) and payload.get("format") == checkpoints.FORMAT:
            state = payload["modules"]
            wanted = module_name or name
            if wanted not in state:
                raise CheckpointError(
                    f"{path}: has no module {wanted!r} for init.{name} (it holds "
                    f"{', '.join(state)}; pick one with {path}#<module>)"
                )
            checkpoints.load_module_states(
                {"modules": {name: state[wanted]}}, {name: modules[name]}, path
            )
        elif module_name:
            raise CheckpointError(
                f"{path}: not a udaseg checkpoint, so `#{module_name}` selects nothing"
            )
        elif hasattr(modules[name], "head_prefixes"):
            load_released_checkpoint(modules[name], path)
        else:
            load_state_dict_strictly(
                modules[name], read_state_dict(path), path, target=f"the module {name!r}"
            )


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
            title = result_title(config.method.name, run_dir, step)
            print(format_table({title: result}), file=sys.stderr)
    return result
