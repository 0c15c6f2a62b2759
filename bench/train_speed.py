"""Training throughput and peak memory of a method on DeepLabV2, at a chosen resolution and precision.

Runs the real training step (method, optimizers, autocast, gradient scaling: bench/step_setup.py)
on random images, so the figure is what `udaseg train` spends per step minus data loading.
Examples:

    python bench/train_speed.py --depth 101 --source-size 720x1280 --target-size 512x1024 \
        --precision bf16 --method adaptsegnet --multi-level          # a GPU
    OMP_NUM_THREADS=1 python bench/train_speed.py --depth 101 --source-size 256x512 \
        --target-size 256x512 --method adaptsegnet --multi-level --steps 5 --warmup 1   # CPU

Prints one JSON line: seconds per step (median, min, max over the timed steps), iterations/s,
peak memory (CUDA max allocated, or the process's max resident set size on CPU), and on CUDA the
achieved TFLOP/s of the step (FLOPs counted by torch.utils.flop_counter on one extra step).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from step_setup import add_step_arguments, build_training_step
from torch.utils.flop_counter import FlopCounterMode


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_step_arguments(parser)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--count-flops", action="store_true", help="count the step's FLOPs (default on CUDA)"
    )
    args = parser.parse_args()

    step, settings = build_training_step(args)
    device = torch.device(args.device)
    total = args.warmup + args.steps
    durations, warmup_durations = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for index in range(total):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step(index, total)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        (durations if index >= args.warmup else warmup_durations).append(elapsed)

    seconds = statistics.median(durations)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        memory_kind = "cuda_max_allocated_gib"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        memory_kind = "max_rss_gib"
    result = {
        **settings,
        "seconds_per_step": round(seconds, 4),
        "iterations_per_second": round(1.0 / seconds, 3),
        memory_kind: round(peak, 3),
        "timed_steps": len(durations),
        # With --compile the first of these holds the compilation: the break-even of compiling
        # is (its excess over a step) / (the uncompiled step - the compiled step).
        "warmup_seconds": [round(value, 2) for value in warmup_durations],
        "min_median_max_seconds": [
            round(min(durations), 4),
            round(seconds, 4),
            round(max(durations), 4),
        ],
    }
    if args.count_flops or device.type == "cuda":
        # Counted on an extra step: the counter's dispatch overhead must not enter the timings.
        counter = FlopCounterMode(display=False)
        with counter:
            step(total, total + 1)
        flops = counter.get_total_flops()
        result["tflop_per_step"] = round(flops / 1e12, 3)
        result["achieved_tflops"] = round(flops / seconds / 1e12, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
