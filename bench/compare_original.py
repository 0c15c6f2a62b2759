"""udaseg's AdaptSegNet multi-level step against the released code's, interleaved in one process.

Each round runs one step of the released algorithm (original_adaptsegnet_step.py) and one of
each udaseg setting, in turn, so that all of them see the same machine load over time; ratios
are taken per round (udaseg / released) and reported as min / median / max. The udaseg model
is the released one (2-branch ASPP, half-frozen BN, multi-level heads). Example:

    OMP_NUM_THREADS=1 python bench/compare_original.py --original-repo /tmp/AdaptSegNet \
        --size 256x512 --rounds 5 --setting default --setting channels_last,fused \
        --setting channels_last,fused,bf16

A setting is a comma list of: channels_last, foreach, fused, bf16, fp16, compile.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from original_adaptsegnet_step import build_original_step
from step_setup import add_step_arguments, build_training_step, parse_size


def settings_namespace(setting: str, size: str, device: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_step_arguments(parser)
    words = set(setting.split(",")) - {"default"}
    arguments = [
        *("--method", "adaptsegnet", "--multi-level", "--depth", "101"),
        *("--source-size", size, "--target-size", size, "--device", device),
        *("--set", "model.aspp_branches=2"),
    ]
    if "channels_last" in words:
        arguments.append("--channels-last")
    if "compile" in words:
        arguments.append("--compile")
    for implementation in ("foreach", "fused"):
        if implementation in words:
            arguments += ["--optimizer-implementation", implementation]
    for precision in ("bf16", "fp16"):
        if precision in words:
            arguments += ["--precision", precision]
    return parser.parse_args(arguments)


def summary(values: list[float]) -> list[float]:
    return [round(min(values), 3), round(statistics.median(values), 3), round(max(values), 3)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--original-repo", required=True, type=Path)
    parser.add_argument("--size", default="256x512")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--setting", action="append", default=[])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    settings = args.setting or ["default"]
    device = torch.device(args.device)
    size = parse_size(args.size)

    contenders = {"released": build_original_step(args.original_repo, size, size, device)}
    for setting in settings:
        step, _ = build_training_step(settings_namespace(setting, args.size, args.device))
        contenders[setting] = step
    total = args.warmup + args.rounds
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for index in range(total):
        for name, step in contenders.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            if name == "released":
                step(index)
            else:
                step(index, total)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= args.warmup:
                seconds[name].append(time.perf_counter() - started)
    result = {
        "size": list(size),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "seconds_min_median_max": {name: summary(values) for name, values in seconds.items()},
        "ratio_to_released_min_median_max": {
            name: summary(
                [mine / base for mine, base in zip(values, seconds["released"], strict=True)]
            )
            for name, values in seconds.items()
            if name != "released"
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
