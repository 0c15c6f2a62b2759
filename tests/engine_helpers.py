"""Tiny datasets and configs for engine tests: a few 32x64 images in the real layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from tests.fake_layouts import write_cityscapes, write_gta5, write_png
from udaseg.data.label_spaces import CITYSCAPES_LABEL_IDS

TINY_MODEL = {
    "name": "deeplabv2",
    "blocks": [1, 1, 1, 1],
    "width": 4,
    "aspp_dilations": [1, 2, 3, 4],
}


# Options under which a method's every part runs within the engine tests' 4 steps, where its
# paper defaults would leave a part idle (delays of thousands of steps, filters a random model
# never passes). Explicit `method` keys still win.
ENGINE_TEST_METHOD_OPTIONS: dict[str, dict] = {
    # The bank fills from every labelled pixel from step 0, so the one-step test trains the
    # contrastive heads and the resume test compares a non-empty bank.
    "memory_bank_contrastive": {
        "bank_start_step": 0,
        "contrastive_start_step": 0,
        "confidence_threshold": 0.0,
        "bank_requires_correct": False,
    },
    # The robust entropy from step 0 (the paper's switch is at 50000), and the pseudo-label CE
    # of FDA's self-training round (the tiny target set carries pseudo labels).
    "fda": {"entropy_after_step": -1, "self_training": True},
    # CycleGAN at the tiny segmentor's scale: the full 9-block, 64-channel generators make the
    # one-step and resume tests take a minute each without testing anything more.
    "bdl_translation": {
        "generator_blocks": 1,
        "generator_channels": 4,
        "discriminator_channels": 4,
        "discriminator_layers": 2,
    },
}


def write_tiny_benchmark(root: Path) -> Path:
    """GTA5-layout source (8 images) and Cityscapes-layout target (6 train, 4 val), plus
    pseudo labels of the target train images in `cs_pseudo/` (their true train ids, with the
    left half of each image left out as 255, as a pseudo-label policy leaves pixels out)."""
    if not (root / "gta").exists():
        write_gta5(root / "gta", count=8, size=(32, 64), seed=1)
        layouts = write_cityscapes(
            root / "cs", splits={"train": 6, "val": 4}, size=(32, 64), seed=2, tint=(40, 0, 0)
        )
        for name, raw in layouts["train"].labels.items():
            labels = CITYSCAPES_LABEL_IDS.apply(raw).astype(np.uint8)
            labels[:, : labels.shape[1] // 2] = 255
            write_png(root / "cs_pseudo" / f"{name}.png", labels)
    return root


def tiny_config(root: Path, run_dir: Path, **sections) -> dict:
    """A raw config dict training the tiny model on the tiny benchmark."""
    config = {
        "seed": 0,
        "run_dir": str(run_dir),
        "data": {
            "source": {"kind": "gta5", "root": str(root / "gta"), "crop": [32, 48], "flip": True},
            "target": {
                "kind": "cityscapes",
                "root": str(root / "cs"),
                "split": "train",
                # Every method may read them; self-training methods need them.
                "pseudo_labels": str(root / "cs_pseudo"),
            },
            "val": {"kind": "cityscapes", "root": str(root / "cs"), "split": "val"},
            "batch_size": 2,
            "num_workers": 0,
        },
        "model": dict(TINY_MODEL),
        "optim": {"segmentor": {"lr": 0.01}},
        "train": {
            "steps": 4,
            "checkpoint_every": 2,
            "log_every": 1,
            "deterministic": True,
            "progress_bar": False,
            "tensorboard": False,
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    method = config.get("method")
    if isinstance(method, dict) and method.get("name") in ENGINE_TEST_METHOD_OPTIONS:
        config["method"] = {**ENGINE_TEST_METHOD_OPTIONS[method["name"]], **method}
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class RecordingContext:
    """A StepContext whose backward records each loss and, for `modules`, the gradients after it."""

    def __init__(
        self, modules: dict[str, torch.nn.Module] | None = None, progress: float = 0.0
    ) -> None:
        self.modules = modules or {}
        self.step, self.total_steps, self.progress = 0, 10, progress
        self.wants_visuals = False
        self.device = torch.device("cpu")
        self.losses: list[float] = []
        self.gradients: list[dict[str, dict[str, torch.Tensor | None]]] = []

    def backward(self, loss: torch.Tensor) -> None:
        self.losses.append(float(loss.detach()))
        loss.backward()
        self.gradients.append(
            {
                name: {
                    key: None if p.grad is None else p.grad.clone()
                    for key, p in module.named_parameters()
                }
                for name, module in self.modules.items()
            }
        )
