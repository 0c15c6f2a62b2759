"""On a GPU machine: the seeded augmentations give the same result on CUDA as on the CPU.

Not a test (the suite runs on CPUs without skipped checks); run it where a GPU is at hand:

    python bench/augment_devices.py

Draws happen on a CPU generator in every op, so the parameters are identical; the arithmetic may
differ in the last bits (float kernels), hence the tolerance. Prints one line per op and exits
non-zero on a mismatch.
"""

from __future__ import annotations

import sys

import torch

from udaseg import augment


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device here; nothing to compare")
        return 0
    images = torch.rand(8, 3, 24, 20, generator=generator(0)) * 255
    labels = torch.randint(0, 5, (8, 24, 20), generator=generator(6))
    labels[:, :3] = 255
    checks = {
        "color_jitter": lambda x, g: augment.color_jitter(x, 0.4, 0.4, 0.4, 0.1, 0.5, g),
        "gaussian_blur": lambda x, g: augment.gaussian_blur(x, (0.1, 2.0), 0.5, generator=g),
        "grayscale": lambda x, g: augment.grayscale(x, 0.5, g),
        "dacs_strong_transform": lambda x, g: augment.dacs_strong_transform(x, g),
    }
    failures = 0
    for name, operation in checks.items():
        on_cpu = operation(images, generator(10))
        on_cuda = operation(images.cuda(), generator(10)).cpu()
        difference = float((on_cuda - on_cpu).abs().max())
        ok = difference <= 1e-3
        failures += not ok
        print(f"{name}: max |cuda - cpu| = {difference:.2e} {'ok' if ok else 'MISMATCH'}")
    masks_cpu = augment.class_mix_masks(labels, generator(3))
    masks_cuda = augment.class_mix_masks(labels.cuda(), generator(3)).cpu()
    same = torch.equal(masks_cpu, masks_cuda)
    failures += not same
    print(f"class_mix_masks: {'identical' if same else 'MISMATCH'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
