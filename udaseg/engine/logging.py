"""Run logs: a JSONL metrics file, TensorBoard when installed, and console lines.

Only rank 0 writes. Scalars are averaged by the caller before they arrive here.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from udaseg.files import atomic_write


class RunLogger:
    """Writes `metrics.jsonl` (one JSON object per line) and TensorBoard events.

    Args:
        run_dir: the run directory.
        enabled: False on ranks other than 0 (everything becomes a no-op).
        tensorboard: also write TensorBoard events if the package is installed.
        start_step: the step training continues from (a resumed checkpoint's, 0 when fresh):
            records of later steps, written before a kill and about to be written again, are
            dropped from `metrics.jsonl` and purged from TensorBoard.
    """

    def __init__(
        self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, start_step: int = 0
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        self.start = time.time()
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                SummaryWriter = None
            if SummaryWriter is not None:
                # TensorBoard hides events of steps >= purge_step written before this session.
                self.writer = SummaryWriter(
                    log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1
                )

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time() - self.start, 3), "kind": prefix}
        record.update({key: _finite(value) for key, value in values.items()})
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """Log uint8 [H, W, 3] images (TensorBoard only)."""
        if not self.enabled or self.writer is None:
            return
        for key, image in images.items():
            self.writer.add_image(f"visuals/{key}", image, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop the records of `path` (metrics.jsonl) whose step is after `last_step`; return how many.

    A run killed after its last checkpoint logged steps that the resumed run replays: without
    this they would appear twice. A line cut short by the kill is dropped too. The file is
    rewritten atomically, so another kill here loses nothing.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            dropped += int(bool(line.strip()))
            continue
        if isinstance(step, int | float) and step <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        text = "".join(line + "\n" for line in kept)
        atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))
    return dropped


TENSORBOARD_MISSING = (
    "[udaseg] TensorBoard logs are off: the tensorboard package is not installed "
    '(pip install "udaseg[tensorboard]" turns them on; train.tensorboard=false silences this)'
)


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def warn_if_tensorboard_missing(wanted: bool, enabled: bool = True) -> bool:
    """Say on stderr, once per run and on rank 0 (`enabled`), that TensorBoard logs are off.

    `train.tensorboard: true` is the default while tensorboard is an optional extra: without
    this line a user looks for event files that were never written. Returns whether it spoke.
    """
    if not (wanted and enabled) or tensorboard_available():
        return False
    print(TENSORBOARD_MISSING, file=sys.stderr)
    return True


def format_progress_line(
    step: int,
    total_steps: int,
    losses: dict[str, float],
    learning_rates: dict[str, float],
    images_per_second: float | None,
) -> str:
    """One compact log line, for when the progress bar is off (log files, batch jobs).

    `[udaseg] step 20/2000  loss/seg 0.4123  lr 0.00025  12.34 img/s`; values with 4
    significant digits; the segmentor's learning rate is `lr`, another module's `lr/<name>`.
    """
    parts = [f"[udaseg] step {step}/{total_steps}"]
    parts += [f"{key} {value:.4g}" for key, value in losses.items()]
    for name, value in learning_rates.items():
        label = "lr" if name == "segmentor" or len(learning_rates) == 1 else f"lr/{name}"
        parts.append(f"{label} {value:.4g}")
    if images_per_second is not None:
        parts.append(f"{images_per_second:.4g} img/s")
    return "  ".join(parts)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
