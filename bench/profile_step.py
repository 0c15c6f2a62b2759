"""Where a training step's time goes: torch.profiler over real steps, summed into categories.

The step is train_speed.py's (bench/step_setup.py). Every operator's self time is put in one
category: convolutions of the segmentor and of the discriminators (told apart by the 4x4 kernels
only the discriminators have), batch norm, upsampling, softmax and losses, other elementwise
work, the optimizers (their `optimizer step` range), and the rest. Example:

    OMP_NUM_THREADS=1 python bench/profile_step.py --depth 101 --source-size 256x512 \
        --target-size 256x512 --method adaptsegnet --multi-level --steps 2

Prints one JSON line: per category, milliseconds per step and share of the step, plus the ten
operators with the most self time.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from step_setup import add_step_arguments, build_training_step
from torch.profiler import ProfilerActivity, profile

# Operator-name fragments -> category, first match wins (lower-case names).
_CATEGORIES = (
    ("batch_norm", "batch norm"),
    ("upsample", "upsampling"),
    ("softmax", "softmax and losses"),
    ("nll_loss", "softmax and losses"),
    ("cross_entropy", "softmax and losses"),
    ("binary_cross_entropy", "softmax and losses"),
    ("max_pool", "pooling"),
    ("relu", "activations"),
    ("threshold_backward", "activations"),
    ("add", "elementwise and copies"),
    ("mul", "elementwise and copies"),
    ("copy", "elementwise and copies"),
    ("fill", "elementwise and copies"),
    ("zero", "elementwise and copies"),
    ("clone", "elementwise and copies"),
    ("cat", "elementwise and copies"),
    ("sum", "elementwise and copies"),
    ("div", "elementwise and copies"),
)


def _is_discriminator_convolution(shapes: list) -> bool:
    """A convolution whose weight is [out, in, 4, 4]: only the discriminators have those."""
    return any(
        isinstance(shape, list) and len(shape) == 4 and shape[2:] == [4, 4] for shape in shapes
    )


def categorise(name: str, shapes: list) -> str:
    lowered = name.lower()
    if "conv" in lowered:
        owner = "discriminators" if _is_discriminator_convolution(shapes) else "segmentor"
        direction = "backward" if "backward" in lowered else "forward"
        return f"convolution, {owner}, {direction}"
    for fragment, category in _CATEGORIES:
        if fragment in lowered:
            return category
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_step_arguments(parser)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    step, settings = build_training_step(args)
    total = args.warmup + args.steps
    for index in range(args.warmup):
        step(index, total)
    activities = [ProfilerActivity.CPU]
    if torch.device(args.device).type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as profiler:
        for index in range(args.warmup, total):
            step(index, total)
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()

    per_category: dict[str, float] = defaultdict(float)
    optimizer_total = 0.0
    per_operator: dict[str, float] = defaultdict(float)
    events = profiler.events()
    for event in events:
        if event.name == "optimizer step":
            optimizer_total += event.cpu_time_total
    optimizer_ids = set()
    for event in events:
        if event.name == "optimizer step":
            optimizer_ids.update(child.id for child in _descendants(event))
    for event in events:
        # Self time only, so that nothing is counted twice; range markers have none to speak of.
        self_time = event.self_cpu_time_total
        if event.name.startswith(("ProfilerStep", "optimizer step")) or self_time <= 0:
            continue
        if event.id in optimizer_ids:
            per_category["optimizers"] += self_time
            continue
        per_category[categorise(event.name, list(event.input_shapes or []))] += self_time
        per_operator[event.name] += self_time
    step_total = sum(per_category.values())
    result = {
        **settings,
        "profiled_steps": args.steps,
        "milliseconds_per_step": round(step_total / 1e3 / args.steps, 1),
        "categories": {
            name: {
                "milliseconds_per_step": round(value / 1e3 / args.steps, 1),
                "share": round(value / step_total, 3),
            }
            for name, value in sorted(per_category.items(), key=lambda item: -item[1])
        },
        "top_operators": {
            name: round(value / 1e3 / args.steps, 1)
            for name, value in sorted(per_operator.items(), key=lambda item: -item[1])[:10]
        },
    }
    print(json.dumps(result, indent=1))


def _descendants(event):
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


if __name__ == "__main__":
    main()
