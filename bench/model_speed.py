"""CPU timing of small DeepLabV2 members, for choosing the toy benchmark's model.

One iteration = forward, bilinear upsampling of the logits to the input size, cross-entropy,
backward and an SGD step (what a source-only training step costs), batch 8 at 128x256 by
default. Prints the median and the spread over a few timed iterations after warm-up.

    python bench/model_speed.py --threads 2 --repeats 5
    python bench/model_speed.py --variant 1,1,1,1:16 --variant 2,2,2,2:16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from udaseg.models.deeplabv2 import DeepLabV2

DEFAULT_VARIANTS = ("1,1,1,1:8", "1,1,1,1:16", "1,1,1,1:24", "1,1,1,1:32", "2,2,2,2:16")


def time_variant(
    blocks: tuple[int, int, int, int],
    width: int,
    batch: int,
    height: int,
    width_pixels: int,
    repeats: int,
    warmup: int,
    num_classes: int = 19,
    dilations: tuple[int, ...] = (1, 2, 3, 4),
    model_only: bool = False,
) -> list[float]:
    """Seconds per training iteration, one entry per timed repeat.

    model_only: time forward + backward of `logits.sum()` alone (no upsampling, loss or step).
    """
    torch.manual_seed(0)
    model = DeepLabV2(num_classes, blocks=blocks, width=width, aspp_dilations=dilations)
    model.train()
    groups = model.param_groups()
    optimizer = torch.optim.SGD(
        [{"params": groups["backbone"]}, {"params": groups["head"], "lr": 2.5e-3}],
        lr=2.5e-4,
        momentum=0.9,
        weight_decay=5e-4,
    )
    images = torch.rand(batch, 3, height, width_pixels) * 255
    labels = torch.randint(0, num_classes, (batch, height, width_pixels))
    times = []
    for step in range(warmup + repeats):
        start = time.perf_counter()
        logits = model(images)["logits"]
        if model_only:
            logits.sum().backward()
            if step >= warmup:
                times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
            continue
        logits = F.interpolate(logits, (height, width_pixels), mode="bilinear", align_corners=True)
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", help="blocks:width, e.g. 1,1,1,1:16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 256), help="height width")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--model-only", action="store_true", help="forward+backward only: no loss, no SGD step"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    what = "forward+backward" if args.model_only else "forward+loss+backward+SGD step"
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.size}, {what}"
    )
    for variant in args.variant or DEFAULT_VARIANTS:
        blocks_text, width_text = variant.split(":")
        blocks = tuple(int(count) for count in blocks_text.split(","))
        width = int(width_text)
        times = time_variant(
            blocks,
            width,
            args.batch,
            *args.size,
            args.repeats,
            args.warmup,
            model_only=args.model_only,
        )
        median = statistics.median(times)
        parameters = sum(p.numel() for p in DeepLabV2(19, blocks=blocks, width=width).parameters())
        print(
            f"blocks={blocks_text} width={width:3d} params={parameters / 1e6:6.2f}M  "
            f"median {median * 1000:7.1f} ms/it ({1 / median:5.1f} it/s), "
            f"min {min(times) * 1000:7.1f}, max {max(times) * 1000:7.1f}"
        )


if __name__ == "__main__":
    main()
