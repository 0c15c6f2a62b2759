"""Training throughput and peak memory of a method on DeepLabV2, at a chosen resolution and precision.

Runs the real training step (method, optimizers, autocast, gradient scaling) on random images,
so the figure is what `udaseg train` spends per step minus data loading. Examples:

    python bench/train_speed.py --depth 101 --source-size 720x1280 --target-size 512x1024 \
        --precision bf16 --method adaptsegnet --multi-level          # a GPU
    python bench/train_speed.py --depth 101 --source-size 256x512 --steps 3   # CPU

Prints one JSON line: iterations/s (median over timed steps), seconds per step, peak memory
(CUDA max allocated, or the process's max resident set size on CPU) and the settings.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from udaseg.config import load_config  # noqa: E402
from udaseg.data.label_spaces import get_label_space  # noqa: E402
from udaseg.engine.optim import build_optimizer  # noqa: E402
from udaseg.engine.trainer import TrainContext, _optimizer_configs  # noqa: E402
from udaseg.models import build_segmentor  # noqa: E402
from udaseg.registry import METHODS  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(part) for part in text.lower().split("x"))
    return height, width


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="source_only")
    parser.add_argument("--depth", type=int, default=101, choices=[50, 101])
    parser.add_argument("--multi-level", action="store_true")
    parser.add_argument("--source-size", default="720x1280", help="HxW of source images")
    parser.add_argument("--target-size", default="512x1024", help="HxW of target images")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value")
    args = parser.parse_args()

    device = torch.device(args.device)
    overrides = [
        f"method.name={args.method}",
        f"model.depth={args.depth}",
        f"model.multi_level={str(args.multi_level).lower()}",
        *args.overrides,
    ]
    config = load_config(None, overrides)
    label_space = get_label_space(config.data.label_space)
    segmentor = build_segmentor(config.model, label_space.num_classes, load_weights=False)
    method_class = METHODS.get(config.method.name)
    method = method_class(config.method, segmentor, label_space)
    memory_format = torch.channels_last if args.channels_last else None
    method.to(device, memory_format)
    method.train(True)
    trainable = method.trainable_modules()
    optimizer_configs = _optimizer_configs(config, method_class, trainable)
    optimizers = {
        name: build_optimizer(module, optimizer_configs[name], name)
        for name, module in trainable.items()
    }
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    def batch(size: tuple[int, int], labelled: bool) -> dict:
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
    total = args.warmup + args.steps
    durations = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(total):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        ctx = TrainContext(
            step=step, total_steps=total, device=device, precision=args.precision, scaler=scaler
        )
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            method.training_step(data, ctx)
        for optimizer in optimizers.values():
            scaler.step(optimizer)
        scaler.update()
        method.after_optimizer_step(ctx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            durations.append(time.perf_counter() - started)

    seconds = statistics.median(durations)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        memory_kind = "cuda_max_allocated_gib"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        memory_kind = "max_rss_gib"
    result = {
        "method": args.method,
        "model": f"deeplabv2-r{args.depth}" + ("-multi" if args.multi_level else ""),
        "source_size": list(source_size),
        "target_size": list(target_size),
        "batch_size": args.batch_size,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "seconds_per_step": round(seconds, 4),
        "iterations_per_second": round(1.0 / seconds, 3),
        memory_kind: round(peak, 3),
        "timed_steps": len(durations),
        "min_max_seconds": [round(min(durations), 4), round(max(durations), 4)],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
