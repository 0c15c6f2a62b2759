"""Run logs: a JSONL metrics file, TensorBoard when installed, and console lines.

Only rank 0 writes. Scalars are averaged by the caller before they arrive here.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np


class RunLogger:
    """Writes `metrics.jsonl` (one JSON object per line) and TensorBoard events.

    Args:
        run_dir: the run directory.
        enabled: False on ranks other than 0 (everything becomes a no-op).
        tensorboard: also write TensorBoard events if the package is installed.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        self.start = time.time()
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

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


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
