"""Run under torchrun by tests/test_engine.py: train, then save this rank's weights.

Usage: torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py CONFIG OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from udaseg.config import load_config  # noqa: E402
from udaseg.engine import trainer  # noqa: E402


def main() -> None:
    config = load_config(sys.argv[1])
    out = Path(sys.argv[2])
    captured = {}
    original = trainer.build_segmentor

    def keep(*args, **kwargs):
        captured["segmentor"] = original(*args, **kwargs)
        return captured["segmentor"]

    trainer.build_segmentor = keep
    trainer.train(config, device="cpu")
    rank = int(os.environ["RANK"])
    torch.save(captured["segmentor"].state_dict(), out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
