"""Evaluation throughput: udaseg's `evaluate` (whole-image inference at 512x1024, logits upsampled
to the 1024x2048 labels, confusion matrix) with DeepLabV2, per batch size and speed setting.

Images and labels are made in memory (loader workers decode in parallel with inference; see
data_speed.py for their rate), so the figure is the inference and scoring side. Examples:

    python bench/eval_speed.py --images 500 --batch-size 4 --precision bf16 --channels-last  # GPU
    OMP_NUM_THREADS=1 python bench/eval_speed.py --images 2 --batch-size 1                 # CPU

Prints one JSON line: images/s and the seconds 500 Cityscapes val images would take at that rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from udaseg.config import EvalConfig, load_config  # noqa: E402
from udaseg.data.label_spaces import get_label_space  # noqa: E402
from udaseg.evaluation.evaluate import evaluate  # noqa: E402
from udaseg.models import build_segmentor  # noqa: E402

CITYSCAPES_VAL_IMAGES = 500


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=8, help="images scored (timed)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--input-size", default="512x1024")
    parser.add_argument("--label-size", default="1024x2048")
    parser.add_argument("--depth", type=int, default=101, choices=[50, 101])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    input_size = tuple(int(part) for part in args.input_size.split("x"))
    label_size = tuple(int(part) for part in args.label_size.split("x"))
    config = load_config(None, [f"model.depth={args.depth}"])
    label_space = get_label_space(config.data.label_space)
    segmentor = build_segmentor(config.model, label_space.num_classes, load_weights=False)
    segmentor.to(device).eval()
    if args.channels_last:
        segmentor.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randint(
            0, 256, (args.batch_size, 3, *input_size), dtype=torch.uint8, generator=generator
        ),
        "label": torch.randint(0, 19, (args.batch_size, *label_size), generator=generator),
    }
    if device.type == "cuda":
        batch = {key: value.pin_memory() for key, value in batch.items()}
    batches = -(-args.images // args.batch_size)
    eval_config = EvalConfig(
        batch_size=args.batch_size, precision=args.precision, channels_last=args.channels_last
    )

    def forward(images: torch.Tensor) -> torch.Tensor:
        return segmentor(images)["logits"]

    evaluate(forward, [batch], label_space, eval_config, device)  # warm-up (cuDNN, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = evaluate(forward, [batch] * batches, label_space, eval_config, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    rate = result.num_images / seconds
    print(
        json.dumps(
            {
                "model": f"deeplabv2-r{args.depth}",
                "input_size": list(input_size),
                "label_size": list(label_size),
                "batch_size": args.batch_size,
                "precision": args.precision,
                "channels_last": args.channels_last,
                "device": str(device)
                if device.type == "cpu"
                else torch.cuda.get_device_name(device),
                "threads": torch.get_num_threads(),
                "images": result.num_images,
                "images_per_second": round(rate, 3),
                "seconds_for_500_images": round(CITYSCAPES_VAL_IMAGES / rate, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
