"""Checkpoints: complete, atomic, and safe to load.

A checkpoint holds everything needed to continue a run exactly: every module (trainable and
teachers), every optimizer, the gradient scaler, the RNG states, the step, the method's extra
state and the resolved config. It is written to a temporary file in the same directory, flushed
to disk and renamed over the target, so a crash (even SIGKILL) leaves either the old file or
the new one, never half of one. Loading uses `weights_only=True`: a checkpoint is data, and a
file that would need to run code to unpickle is refused.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udaseg import __version__
from udaseg.errors import CheckpointError
from udaseg.files import atomic_write, is_disk_full
from udaseg.models.weights import load_state_dict_strictly
from udaseg.models.weights import read_checkpoint as read_weights_file

FORMAT = "udaseg-checkpoint"
FORMAT_VERSION = 1
LAST = "last.pt"
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def atomic_save(payload: Any, path: str | Path) -> None:
    """torch.save `payload` to `path` atomically (temp file + fsync + rename)."""
    atomic_write(path, lambda stream: torch.save(payload, stream))


def load_file(path: str | Path) -> Any:
    """The object stored in a checkpoint file, on CPU, read with `weights_only=True` (or
    safetensors); every failure is a one-line CheckpointError.

    udaseg has one reader of weights and checkpoint files, `models.weights.read_checkpoint`,
    so released weights and training checkpoints obey the same safety policy and messages.
    """
    return read_weights_file(path)


def rng_state() -> dict[str, Any]:
    """Every RNG that training may draw from, as tensors and plain values."""
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_payload(
    *,
    step: int,
    config: dict,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler | None,
    method_state: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "udaseg_version": __version__,
        "step": step,
        "config": config,
        # The quirks that change what the weights mean, recorded explicitly (REFERENCE §1.2,
        # §7.2): a reader can check them without rebuilding the config.
        "model_facts": _model_facts(config),
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
        "method_state": method_state,
        "metrics": metrics or {},
    }


def _model_facts(config: dict) -> dict[str, Any]:
    model = config.get("model", {})
    keys = (
        "name",
        "depth",
        "multi_level",
        "head",
        "aspp_branches",
        "aspp_dilations",
        "bn",
        "input_normalization",
    )
    facts = {key: model[key] for key in keys if key in model}
    facts["label_space"] = config.get("data", {}).get("label_space")
    return facts


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a udaseg checkpoint."""
    payload = load_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a udaseg checkpoint (for a released state_dict use --weights with a config)"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer udaseg ({payload.get('udaseg_version')})"
        )
    return payload


def load_module_states(
    payload: dict[str, Any], modules: dict[str, torch.nn.Module], path: str | Path
) -> None:
    """Load each module's state from a checkpoint payload strictly.

    Raises:
        CheckpointError: the payload lacks a module, or a module's state does not fit (the
            one-line report of `models.weights.load_state_dict_strictly`).
    """
    states = payload["modules"]
    for name, module in modules.items():
        if name not in states:
            raise CheckpointError(f"{path}: has no module {name!r} (it holds {', '.join(states)})")
        load_state_dict_strictly(module, states[name], path, target=f"the module {name!r}")


def step_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Periodic checkpoints `step_NNNNNN.pt` in `directory`, oldest first."""
    found = []
    if directory.is_dir():
        for path in directory.iterdir():
            match = _STEP_FILE.search(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def save_training_checkpoint(
    directory: Path, step: int, payload: dict[str, Any], keep: int
) -> Path:
    """Write `step_NNNNNN.pt`, point `last.pt` at it, and prune old periodic checkpoints.

    `last.pt` is a hard link to the newest step file when the filesystem allows (no copy),
    replaced atomically.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:06d}.pt"
    try:
        atomic_save(payload, path)
        _link_last(directory, path, payload)
    except (OSError, RuntimeError) as error:
        # A failed write leaves the earlier files intact (atomic_write): say which one is good.
        if not (isinstance(error, OSError) or is_disk_full(error) or "write" in str(error)):
            raise
        raise CheckpointError(_write_failure(directory, path, error)) from None
    if keep > 0:
        for _, old in step_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def _write_failure(directory: Path, path: Path, error: BaseException) -> str:
    """One line for a checkpoint that could not be written, naming the last good one."""
    if is_disk_full(error):
        try:
            free = shutil.disk_usage(directory).free / 2**20
            reason = f"the disk is full ({free:.0f} MiB free)"
        except OSError:
            reason = "the disk is full"
    else:
        text = str(error).strip()
        reason = getattr(error, "strerror", None) or (text.splitlines()[0] if text else "")
    return (
        f"{path}: cannot write the checkpoint: {reason}; the last good checkpoint is "
        f"{describe_last_checkpoint(directory) or 'none (none was written yet)'}"
    )


def describe_last_checkpoint(directory: Path) -> str | None:
    """`<dir>/last.pt (step N)`, or the newest step file when `last.pt` is absent; None if none.

    `last.pt` is a hard link to the newest step file: the step comes from the file it shares
    an inode with (no checkpoint is loaded for it).
    """
    last = directory / LAST
    steps = step_checkpoints(directory)
    if last.is_file():
        for step, path in reversed(steps):
            try:
                if os.path.samefile(path, last):
                    return f"{last} (step {step})"
            except OSError:
                continue
        return str(last)
    if steps:
        return str(steps[-1][1])
    return None


def _link_last(directory: Path, target: Path, payload: dict[str, Any]) -> None:
    temporary = directory / f".{LAST}.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    try:
        os.link(target, temporary)
        os.replace(temporary, directory / LAST)
    except OSError:
        atomic_save(payload, directory / LAST)
