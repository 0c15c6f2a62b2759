"""The training step the speed benchmarks time and profile: one place for train_speed.py and
profile_step.py.

It is the real step of `udaseg train` (method, optimizers with their groups, autocast, gradient
scaling, the same order of zero_grad / step / after_optimizer_step) on random images, so the
figure is what a run spends per step minus data loading and logging.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from udaseg.config import load_config  # noqa: E402
from udaseg.data.label_spaces import get_label_space  # noqa: E402
from udaseg.engine.trainer import TrainContext, prepare_for_training  # noqa: E402
from udaseg.models import build_segmentor  # noqa: E402
from udaseg.registry import METHODS  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(part) for part in text.lower().split("x"))
    return height, width


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the step: method, model, sizes, precision and speed settings."""
    parser.add_argument("--method", default="source_only")
    parser.add_argument("--depth", type=int, default=101, choices=[50, 101])
    parser.add_argument("--multi-level", action="store_true")
    parser.add_argument("--source-size", default="720x1280", help="HxW of source images")
    parser.add_argument("--target-size", default="512x1024", help="HxW of target images")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the segmentor and discriminators"
    )
    parser.add_argument(
        "--optimizer-implementation",
        choices=["default", "foreach", "fused"],
        default="default",
        help="torch.optim's for-loop (CPU default), foreach or fused kernels",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value")


def build_training_step(args: argparse.Namespace) -> tuple[Callable[[int, int], None], dict]:
    """Returns (step(step_index, total_steps), settings) for the options of add_step_arguments."""
    device = torch.device(args.device)
    overrides = [
        f"method.name={args.method}",
        f"model.depth={args.depth}",
        f"model.multi_level={str(args.multi_level).lower()}",
        f"train.compile={str(args.compile).lower()}",
        f"train.channels_last={str(args.channels_last).lower()}",
        f"train.optimizer_implementation={args.optimizer_implementation}",
        *args.overrides,
    ]
    config = load_config(None, overrides)
    label_space = get_label_space(config.data.label_space)
    segmentor = build_segmentor(config.model, label_space.num_classes, load_weights=False)
    method_class = METHODS.get(config.method.name)
    method = method_class(config.method, segmentor, label_space)
    memory_format, _, optimizers = prepare_for_training(config, method, method_class, device)
    method.train(True)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    def batch(size: tuple[int, int], labelled: bool) -> dict[str, torch.Tensor]:
        images = torch.rand(args.batch_size, 3, *size, device=device) * 255
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        sample = {"image": images}
        if labelled:
            sample["label"] = torch.randint(
                0, label_space.num_classes, (args.batch_size, *size), device=device
            )
        return sample

    source_size, target_size = parse_size(args.source_size), parse_size(args.target_size)
    data = {"source": batch(source_size, True), "target": batch(target_size, False)}

    def step(index: int, total: int) -> None:
        ctx = TrainContext(
            step=index, total_steps=total, device=device, precision=args.precision, scaler=scaler
        )
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            method.training_step(data, ctx)
        with torch.profiler.record_function("optimizer step"):
            for optimizer in optimizers.values():
                scaler.step(optimizer)
            scaler.update()
        method.after_optimizer_step(ctx)

    settings: dict[str, Any] = {
        "method": args.method,
        "model": f"deeplabv2-r{args.depth}" + ("-multi" if args.multi_level else ""),
        "source_size": list(source_size),
        "target_size": list(target_size),
        "batch_size": args.batch_size,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "optimizer_implementation": args.optimizer_implementation,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
    }
    return step, settings
