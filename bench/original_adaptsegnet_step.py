"""The released AdaptSegNet multi-level step, timed under the current PyTorch: the baseline
udaseg's step is compared with (docs/results.md, "Training speed").

The models are the released files themselves, imported from a checkout of
wasidennis/AdaptSegNet given by --original-repo (model/deeplab_multi.py's DeeplabMulti and
model/discriminator.py's FCDiscriminator); nothing of that repository is copied here. The loop
below is the algorithm of its train_gta2cityscapes_multi.py, rewritten for this measurement:
per step, zero grads and poly lr; source forward, both heads upsampled (bilinear,
align_corners=True, as nn.Upsample did in the PyTorch it was written for), the released loss's
arithmetic (NHWC transpose, ignore-mask gather, cross-entropy) on each head, backward; target
forward, softmaxes through both discriminators with their parameters frozen, BCE toward the
source label, backward; discriminators on detached source (label 0) and target (label 1)
softmaxes, each halved, backward; SGD and both Adams step. Example:

    git clone https://github.com/wasidennis/AdaptSegNet /tmp/AdaptSegNet
    OMP_NUM_THREADS=1 python bench/original_adaptsegnet_step.py --original-repo /tmp/AdaptSegNet \
        --size 256x512 --steps 5 --warmup 1

Its udaseg counterpart (same model, including the released 2-branch classifier):

    OMP_NUM_THREADS=1 python bench/train_speed.py --method adaptsegnet --multi-level \
        --source-size 256x512 --target-size 256x512 --set model.aspp_branches=2 --steps 5 --warmup 1

Prints one JSON line like train_speed.py's.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as functional

NUM_CLASSES = 19
IGNORE_LABEL = 255


def released_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The released CrossEntropy2d's arithmetic: logits [N, C, H, W], labels [N, H, W]."""
    batch, classes, height, width = logits.shape
    valid = (labels >= 0) & (labels != IGNORE_LABEL)
    kept_labels = labels[valid]
    pixels_last = logits.transpose(1, 2).transpose(2, 3).contiguous()
    mask = valid.view(batch, height, width, 1).repeat(1, 1, 1, classes)
    return functional.cross_entropy(pixels_last[mask].view(-1, classes), kept_labels)


def build_original_step(
    original_repo: Path,
    source_size: tuple[int, int],
    target_size: tuple[int, int],
    device: torch.device,
) -> Callable[[int], None]:
    """The released multi-level step on random images: step(index) runs iteration `index`."""
    if not (original_repo / "model" / "deeplab_multi.py").is_file():
        sys.exit(f"--original-repo {original_repo}: no model/deeplab_multi.py there")
    sys.path.insert(0, str(original_repo))
    from model.deeplab_multi import DeeplabMulti  # noqa: PLC0415 (the released file)
    from model.discriminator import FCDiscriminator  # noqa: PLC0415

    model = DeeplabMulti(num_classes=NUM_CLASSES).to(device).train()
    discriminator_aux = FCDiscriminator(num_classes=NUM_CLASSES).to(device).train()
    discriminator_main = FCDiscriminator(num_classes=NUM_CLASSES).to(device).train()
    learning_rate, discriminator_rate, steps_total = 2.5e-4, 1e-4, 250000
    # The released optim_parameters() yields each backbone parameter once per module that contains
    # it (3 or 4 times): its SGD then applies every backbone update 3-4x. The copies are removed
    # here, so that the baseline does no more optimizer work than the algorithm needs.
    groups = model.optim_parameters(argparse.Namespace(learning_rate=learning_rate))
    for group in groups:
        group["params"] = list({id(p): p for p in group["params"]}.values())
    optimizer = torch.optim.SGD(
        groups,
        lr=learning_rate,
        momentum=0.9,
        weight_decay=5e-4,
    )
    adam_aux = torch.optim.Adam(discriminator_aux.parameters(), lr=1e-4, betas=(0.9, 0.99))
    adam_main = torch.optim.Adam(discriminator_main.parameters(), lr=1e-4, betas=(0.9, 0.99))
    lambda_seg, lambda_adv_aux, lambda_adv_main = 0.1, 0.0002, 0.001

    source_images = torch.rand(1, 3, *source_size, device=device) * 255
    source_labels = torch.randint(0, NUM_CLASSES, (1, *source_size), device=device)
    target_images = torch.rand(1, 3, *target_size, device=device) * 255

    def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return functional.interpolate(logits, size=size, mode="bilinear", align_corners=True)

    def set_frozen(frozen: bool) -> None:
        for module in (discriminator_aux, discriminator_main):
            for parameter in module.parameters():
                parameter.requires_grad = not frozen

    def bce(scores: torch.Tensor, label: float) -> torch.Tensor:
        return functional.binary_cross_entropy_with_logits(scores, torch.full_like(scores, label))

    def step(index: int) -> None:
        factor = (1 - index / steps_total) ** 0.9
        optimizer.zero_grad()
        optimizer.param_groups[0]["lr"] = learning_rate * factor
        optimizer.param_groups[1]["lr"] = 10 * learning_rate * factor
        for adam in (adam_aux, adam_main):
            adam.zero_grad()
            adam.param_groups[0]["lr"] = discriminator_rate * factor
        set_frozen(True)
        source_aux, source_main = (upsample(logits, source_size) for logits in model(source_images))
        loss = released_cross_entropy(source_main, source_labels)
        loss = loss + lambda_seg * released_cross_entropy(source_aux, source_labels)
        loss.backward()
        target_aux, target_main = (upsample(logits, target_size) for logits in model(target_images))
        loss = lambda_adv_aux * bce(discriminator_aux(functional.softmax(target_aux, dim=1)), 0)
        loss = loss + lambda_adv_main * bce(
            discriminator_main(functional.softmax(target_main, dim=1)), 0
        )
        loss.backward()
        set_frozen(False)
        for maps, label in (((source_aux, source_main), 0.0), ((target_aux, target_main), 1.0)):
            aux, main = (tensor.detach() for tensor in maps)
            (bce(discriminator_aux(functional.softmax(aux, dim=1)), label) / 2).backward()
            (bce(discriminator_main(functional.softmax(main, dim=1)), label) / 2).backward()
        optimizer.step()
        adam_aux.step()
        adam_main.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--original-repo", required=True, type=Path)
    parser.add_argument("--size", default="256x512", help="HxW of source and target images")
    parser.add_argument("--source-size", help="HxW of source images (default: --size)")
    parser.add_argument("--target-size", help="HxW of target images (default: --size)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    source_size, target_size = (
        tuple(int(part) for part in (size or args.size).lower().split("x"))
        for size in (args.source_size, args.target_size)
    )
    step = build_original_step(args.original_repo, source_size, target_size, device)
    durations = []
    for index in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step(index)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= args.warmup:
            durations.append(time.perf_counter() - started)
    seconds = statistics.median(durations)
    if device.type == "cuda":
        peak = {"cuda_max_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    else:
        peak = {"max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    print(
        json.dumps(
            {
                "code": "wasidennis/AdaptSegNet (released model files)",
                "source_size": list(source_size),
                "target_size": list(target_size),
                "device": str(device)
                if device.type == "cpu"
                else torch.cuda.get_device_name(device),
                "threads": torch.get_num_threads(),
                "seconds_per_step": round(seconds, 4),
                **peak,
                "timed_steps": len(durations),
                "min_median_max_seconds": [
                    round(min(durations), 4),
                    round(seconds, 4),
                    round(max(durations), 4),
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
