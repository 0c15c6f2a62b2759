"""Seeded, on-device batch augmentations for self-training methods (DACS, DAFormer, ProDA, ...).

Written in plain torch, without kornia. kornia 0.9 installs and imports with this torch, but its
augmentations draw their parameters only from torch's global generators (there is no per-call
`torch.Generator`), draw one application order per batch, and its `ColorJitter` changed formulas
in 0.6 (the kornia <= 0.5 formulas that DACS and DAFormer ran with are now `ColorJiggle`). Drawing
the parameters ourselves and replaying them through kornia would leave kornia only the arithmetic,
which is a few lines of torch; so the ops are written here and the library keeps no new dependency.

Conventions, shared by every function:
- Images are float [B, 3, H, W] RGB in 0..255 (see docs/architecture.md); labels int64 [B, H, W]
  with void 255. Outputs keep shape, dtype and device, and are new tensors (inputs are never
  written).
- Every random number comes from `generator`, a CPU `torch.Generator`, or from torch's global CPU
  generator when it is None (the engine reseeds that one at every step from (seed, rank, step), so
  a resumed run draws the same). Parameters are drawn as small CPU tensors and then moved to the
  images' device, so CPU and GPU runs draw identical parameters from the same generator state (the
  pixel arithmetic may still differ by float rounding).
- Each op is applied to each image independently with `probability` (an image is picked when its
  uniform draw is < probability). The number of draws depends only on the batch size and the
  arguments' presence, never on which images were picked or on the drawn values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

ColorFormulas = Literal["torchvision", "kornia_legacy"]

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale and PIL's "L" conversion use.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# DACS (vikolss/DACS utils/transformsgpu.py, trainUDA.py strongTransform) and DAFormer
# (mmseg/models/utils/dacs_transforms.py): colour jitter with strength 0.25 (DAFormer: 0.2) on
# all four components, applied when a uniform draw exceeds 0.2, i.e. with probability 0.8; then a
# Gaussian blur with sigma ~ U(0.15, 1.15), applied when a uniform draw exceeds 0.5.
DACS_JITTER_STRENGTH = 0.25
DAFORMER_JITTER_STRENGTH = 0.2
DACS_JITTER_PROBABILITY = 0.8
DACS_BLUR_SIGMA_RANGE = (0.15, 1.15)
DACS_BLUR_PROBABILITY = 0.5

_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3


# --------------------------------------------------------------------------------------------
# Argument checks and random draws
# --------------------------------------------------------------------------------------------


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W]; got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in 0..255; got dtype {images.dtype}")


def _check_probability(probability: float) -> None:
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1]; got {probability}")


def _check_generator(generator: torch.Generator | None) -> None:
    # Draws happen on the CPU so that CPU and GPU runs see the same numbers.
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator; got one on {generator.device}")


def _uniform(
    size: Sequence[int], low: float, high: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform draws in [low, high) on the CPU, float64 so the range is not rounded twice."""
    draws = torch.rand(tuple(size), generator=generator, dtype=torch.float64)
    return low + (high - low) * draws


def _draw_applied(
    batch_size: int, probability: float, generator: torch.Generator | None
) -> torch.Tensor:
    """bool [B] on the CPU: which images an op with this probability transforms."""
    return torch.rand(batch_size, generator=generator, dtype=torch.float64) < probability


def _per_image(values: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor:
    """A float or [B] tensor as [B, 1, 1, 1] on the images' device and dtype."""
    values = torch.as_tensor(values, dtype=images.dtype, device=images.device)
    if values.dim() == 0:
        values = values.expand(images.shape[0])
    if values.shape != (images.shape[0],):
        raise ValueError(
            f"expected one value per image ({images.shape[0]}); got shape {tuple(values.shape)}"
        )
    return values.view(-1, 1, 1, 1)


def _apply_to_subset(
    images: torch.Tensor,
    applied: torch.Tensor,
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Runs transform(subset [A, 3, H, W], rows [A] CPU indices) on the picked images only.

    Images that are not picked come back bit-identical, which a transform with neutral
    parameters (an HSV round trip, a blur with a delta kernel) would not guarantee.
    """
    output = images.clone()
    rows = applied.nonzero().squeeze(1)
    if rows.numel() > 0:
        rows_on_device = rows.to(images.device)
        output[rows_on_device] = transform(images[rows_on_device], rows)
    return output


# --------------------------------------------------------------------------------------------
# Colour conversions
# --------------------------------------------------------------------------------------------


def luma(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB images.

    Args:
        images: float [B, 3, H, W], any scale.
    Returns:
        float [B, 1, H, W] = 0.299 R + 0.587 G + 0.114 B, on the images' scale.
    """
    red, green, blue = images.unbind(dim=1)
    gray = LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue
    return gray.unsqueeze(1)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """RGB in 0..1 to HSV, the formulas of torchvision's `_rgb2hsv`.

    Args:
        images: float [B, 3, H, W] RGB in 0..1.
    Returns:
        float [B, 3, H, W]: hue in [0, 1) turns (0 red, 1/3 green, 2/3 blue), saturation and
        value in 0..1. Grey pixels get hue 0 and saturation 0.
    """
    red, green, blue = images.unbind(dim=1)
    max_channel = images.amax(dim=1)
    min_channel = images.amin(dim=1)
    chroma = max_channel - min_channel
    is_gray = chroma == 0
    ones = torch.ones_like(max_channel)
    # Division guards: grey pixels (chroma 0, maybe value 0) get saturation and hue 0.
    saturation = chroma / torch.where(is_gray, ones, max_channel)
    chroma_divisor = torch.where(is_gray, ones, chroma)
    red_distance = (max_channel - red) / chroma_divisor
    green_distance = (max_channel - green) / chroma_divisor
    blue_distance = (max_channel - blue) / chroma_divisor
    red_is_max = max_channel == red
    green_is_max = (max_channel == green) & ~red_is_max
    blue_is_max = ~red_is_max & ~green_is_max
    hue = (
        red_is_max * (blue_distance - green_distance)
        + green_is_max * (2.0 + red_distance - blue_distance)
        + blue_is_max * (4.0 + green_distance - red_distance)
    )
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    return torch.stack((hue, saturation, max_channel), dim=1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """HSV (hue in turns, any real value) to RGB in 0..1, the formulas of torchvision's `_hsv2rgb`.

    Args:
        images: float [B, 3, H, W]: hue in turns (wrapped modulo 1), saturation and value in 0..1.
    Returns:
        float [B, 3, H, W] RGB in 0..1.
    """
    hue, saturation, value = images.unbind(dim=1)
    hue = torch.remainder(hue, 1.0)
    sector_float = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector_float
    sector = sector_float.long() % 6
    low = (value * (1.0 - saturation)).clamp(0.0, 1.0)
    falling = (value * (1.0 - saturation * fraction)).clamp(0.0, 1.0)
    rising = (value * (1.0 - saturation * (1.0 - fraction))).clamp(0.0, 1.0)
    # For each of the six hue sectors, which of (value, falling, low, rising) each channel takes.
    candidates = torch.stack((value, falling, low, rising), dim=1)  # [B, 4, H, W]
    table = torch.tensor(
        [[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]],
        device=images.device,
    )
    choice = table[sector].permute(0, 3, 1, 2)  # [B, 3, H, W] indices into candidates
    return torch.gather(candidates, 1, choice)


# --------------------------------------------------------------------------------------------
# Colour adjustments with explicit factors
# --------------------------------------------------------------------------------------------


def adjust_brightness(
    images: torch.Tensor,
    factors: torch.Tensor | float,
    formulas: ColorFormulas = "torchvision",
) -> torch.Tensor:
    """Brightness change by one factor per image.

    Args:
        images: float [B, 3, H, W] RGB 0..255.
        factors: float or [B]; 1 keeps the image.
        formulas: "torchvision": factor * x (a blend with black); "kornia_legacy": x + (factor - 1)
            * 255 (kornia <= 0.5's additive ColorJitter brightness, i.e. DACS's).
    Returns:
        float [B, 3, H, W] clamped to 0..255.
    """
    factors = _per_image(factors, images)
    if formulas == "torchvision":
        adjusted = images * factors
    elif formulas == "kornia_legacy":
        adjusted = images + (factors - 1.0) * 255.0
    else:
        raise ValueError(
            f"unknown formulas {formulas!r}; expected 'torchvision' or 'kornia_legacy'"
        )
    return adjusted.clamp(0.0, 255.0)


def adjust_contrast(
    images: torch.Tensor,
    factors: torch.Tensor | float,
    formulas: ColorFormulas = "torchvision",
) -> torch.Tensor:
    """Contrast change by one factor per image.

    Args:
        images: float [B, 3, H, W] RGB 0..255.
        factors: float or [B]; 1 keeps the image.
        formulas: "torchvision": factor * x + (1 - factor) * m, m the image's mean luma (a blend
            with a grey image); "kornia_legacy": factor * x (kornia <= 0.5, DACS).
    Returns:
        float [B, 3, H, W] clamped to 0..255.
    """
    factors = _per_image(factors, images)
    if formulas == "torchvision":
        mean_luma = luma(images).mean(dim=(1, 2, 3), keepdim=True)
        adjusted = factors * images + (1.0 - factors) * mean_luma
    elif formulas == "kornia_legacy":
        adjusted = images * factors
    else:
        raise ValueError(
            f"unknown formulas {formulas!r}; expected 'torchvision' or 'kornia_legacy'"
        )
    return adjusted.clamp(0.0, 255.0)


def adjust_saturation(
    images: torch.Tensor,
    factors: torch.Tensor | float,
    formulas: ColorFormulas = "torchvision",
) -> torch.Tensor:
    """Saturation change by one factor per image.

    Args:
        images: float [B, 3, H, W] RGB 0..255.
        factors: float or [B]; 1 keeps the image, 0 gives grey.
        formulas: "torchvision": factor * x + (1 - factor) * luma(x) per pixel (a blend with the
            grey image); "kornia_legacy": HSV saturation times factor, clamped to 0..1 (kornia
            <= 0.5, DACS).
    Returns:
        float [B, 3, H, W] clamped to 0..255.
    """
    factors = _per_image(factors, images)
    if formulas == "torchvision":
        adjusted = factors * images + (1.0 - factors) * luma(images)
        return adjusted.clamp(0.0, 255.0)
    if formulas == "kornia_legacy":
        hue, saturation, value = rgb_to_hsv(images / 255.0).unbind(dim=1)
        saturation = (saturation * factors.squeeze(1)).clamp(0.0, 1.0)
        rgb = hsv_to_rgb(torch.stack((hue, saturation, value), dim=1))
        return (rgb * 255.0).clamp(0.0, 255.0)
    raise ValueError(f"unknown formulas {formulas!r}; expected 'torchvision' or 'kornia_legacy'")


def adjust_hue(images: torch.Tensor, shifts: torch.Tensor | float) -> torch.Tensor:
    """Hue rotation by one shift per image (torchvision and kornia agree on this one).

    Args:
        images: float [B, 3, H, W] RGB 0..255.
        shifts: float or [B], in turns of the hue circle: 1/3 takes red to green, -1/3 red to
            blue; 0 keeps the hue (up to the float error of the HSV round trip).
    Returns:
        float [B, 3, H, W] clamped to 0..255.
    """
    shifts = _per_image(shifts, images).squeeze(1)
    hue, saturation, value = rgb_to_hsv(images / 255.0).unbind(dim=1)
    rgb = hsv_to_rgb(torch.stack((hue + shifts, saturation, value), dim=1))
    return (rgb * 255.0).clamp(0.0, 255.0)


# --------------------------------------------------------------------------------------------
# Random ops
# --------------------------------------------------------------------------------------------


def color_jitter(
    images: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    probability: float,
    generator: torch.Generator | None = None,
    *,
    formulas: ColorFormulas = "torchvision",
    random_order: bool = False,
) -> torch.Tensor:
    """Random colour jitter, ColorJitter semantics, with per-image parameters.

    Each picked image gets brightness, contrast and saturation factors uniform in
    [max(0, 1 - s), 1 + s] and a hue shift uniform in [-hue, hue] turns, applied in the fixed
    order brightness, contrast, saturation, hue (or, with `random_order`, in a random order drawn
    per image, as torchvision and kornia draw one per call and DACS calls kornia once per image).
    A component of strength 0 is skipped, so all-zero strengths return the images unchanged.

    Args:
        images: float [B, 3, H, W] RGB 0..255.
        brightness, contrast, saturation: strengths >= 0.
        hue: strength in [0, 0.5] turns.
        probability: chance that an image is jittered.
        generator: CPU generator; None = torch's global one.
        formulas: "torchvision" (blend formulas, the default) or "kornia_legacy" (kornia <= 0.5's
            ColorJitter = today's ColorJiggle, which DACS and DAFormer ran); see adjust_*.
        random_order: draw a random permutation of the four steps per image.
    Returns:
        float [B, 3, H, W]; jittered images are in 0..255, the others unchanged.

    Draws, in this order: apply [B], brightness [B], contrast [B], saturation [B], hue [B],
    then, with random_order only, order keys [B, 4].
    """
    _check_images(images)
    _check_probability(probability)
    _check_generator(generator)
    for name, strength in (
        ("brightness", brightness),
        ("contrast", contrast),
        ("saturation", saturation),
    ):
        if strength < 0:
            raise ValueError(f"{name} strength must be >= 0; got {strength}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue strength must be in [0, 0.5] turns; got {hue}")
    if formulas not in ("torchvision", "kornia_legacy"):
        raise ValueError(
            f"unknown formulas {formulas!r}; expected 'torchvision' or 'kornia_legacy'"
        )

    batch_size = images.shape[0]
    applied = _draw_applied(batch_size, probability, generator)
    factors = [
        _uniform((batch_size,), max(0.0, 1.0 - brightness), 1.0 + brightness, generator),
        _uniform((batch_size,), max(0.0, 1.0 - contrast), 1.0 + contrast, generator),
        _uniform((batch_size,), max(0.0, 1.0 - saturation), 1.0 + saturation, generator),
        _uniform((batch_size,), -hue, hue, generator),
    ]
    if random_order:
        # argsort of i.i.d. uniforms is a uniformly random permutation per image.
        order = torch.rand((batch_size, 4), generator=generator).argsort(dim=1)
    else:
        order = torch.arange(4).expand(batch_size, 4)
    strengths = (brightness, contrast, saturation, hue)
    steps: list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = [
        lambda subset, values: adjust_brightness(subset, values, formulas),
        lambda subset, values: adjust_contrast(subset, values, formulas),
        lambda subset, values: adjust_saturation(subset, values, formulas),
        adjust_hue,
    ]

    def jitter(subset: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        subset_order = order[rows]
        for position in range(4):
            for step in range(4):
                if strengths[step] == 0:
                    continue
                members = (subset_order[:, position] == step).nonzero().squeeze(1)
                if members.numel() == 0:
                    continue
                members_on_device = members.to(subset.device)
                values = factors[step][rows[members]].to(subset.device, subset.dtype)
                subset[members_on_device] = steps[step](subset[members_on_device], values)
        return subset

    return _apply_to_subset(images, applied, jitter)


def grayscale(
    images: torch.Tensor, probability: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random conversion to grey (ITU-R 601 luma replicated to the three channels).

    Args:
        images: float [B, 3, H, W] RGB 0..255.
        probability: chance that an image is converted.
        generator: CPU generator; None = torch's global one. Draws: apply [B].
    Returns:
        float [B, 3, H, W].
    """
    _check_images(images)
    _check_probability(probability)
    _check_generator(generator)
    applied = _draw_applied(images.shape[0], probability, generator)
    return _apply_to_subset(
        images, applied, lambda subset, rows: luma(subset).expand(-1, 3, -1, -1)
    )


def dacs_blur_kernel_size(length: int) -> int:
    """DACS's Gaussian kernel size for an image side: the largest odd number <= ceil(0.1 * length).

    DACS computes floor(ceil(0.1 L) - 0.5 + ceil(0.1 L) % 2): 51 for 512, 103 for 1024.
    """
    rounded_up = math.ceil(0.1 * length)
    return rounded_up if rounded_up % 2 == 1 else rounded_up - 1


def gaussian_kernel1d(kernel_size: int, sigmas: torch.Tensor) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels, one per sigma (kornia's `gaussian` for odd sizes).

    Args:
        kernel_size: odd number of taps K.
        sigmas: float [N] > 0.
    Returns:
        float [N, K]: exp(-x^2 / (2 sigma^2)) for x = -(K // 2) .. K // 2, each row summing to 1.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd number; got {kernel_size}")
    offsets = torch.arange(kernel_size, dtype=sigmas.dtype) - kernel_size // 2
    weights = torch.exp(-(offsets[None, :] ** 2) / (2.0 * sigmas[:, None] ** 2))
    return weights / weights.sum(dim=1, keepdim=True)


def blur_with_sigmas(
    images: torch.Tensor, sigmas: torch.Tensor, kernel_size: tuple[int, int]
) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image and reflect padding (kornia's default).

    Args:
        images: float [B, 3, H, W].
        sigmas: float [B] > 0, on the CPU (kernels are built there, then moved).
        kernel_size: odd (height, width) of the kernel; each half-size must be < that image side.
    Returns:
        float [B, 3, H, W].
    """
    kernel_height, kernel_width = kernel_size
    batch_size, channels, height, width = images.shape
    if kernel_height // 2 >= height or kernel_width // 2 >= width:
        raise ValueError(
            f"blur kernel {kernel_size} is too large for {height}x{width} images (reflect padding)"
        )
    kernels_vertical = gaussian_kernel1d(kernel_height, sigmas.double())
    kernels_horizontal = gaussian_kernel1d(kernel_width, sigmas.double())
    groups = batch_size * channels
    # One group per (image, channel) so that each image gets its own sigma in a single conv.
    weight_vertical = kernels_vertical.repeat_interleave(channels, dim=0).view(
        groups, 1, kernel_height, 1
    )
    weight_horizontal = kernels_horizontal.repeat_interleave(channels, dim=0).view(
        groups, 1, 1, kernel_width
    )
    weight_vertical = weight_vertical.to(images.device, images.dtype)
    weight_horizontal = weight_horizontal.to(images.device, images.dtype)
    flat = images.reshape(1, groups, height, width)
    padded = F.pad(
        flat,
        (kernel_width // 2, kernel_width // 2, kernel_height // 2, kernel_height // 2),
        mode="reflect",
    )
    # The engine runs methods under autocast; a bf16 convolution would round pixels by ~1 level.
    with torch.autocast(device_type=images.device.type, enabled=False):
        blurred = F.conv2d(padded, weight_vertical, groups=groups)
        blurred = F.conv2d(blurred, weight_horizontal, groups=groups)
    return blurred.view(batch_size, channels, height, width)


def gaussian_blur(
    images: torch.Tensor,
    sigma_range: tuple[float, float],
    probability: float,
    kernel_size: int | tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random Gaussian blur, sigma uniform in sigma_range per image.

    Args:
        images: float [B, 3, H, W] RGB 0..255.
        sigma_range: (low, high) with 0 < low <= high; DACS_BLUR_SIGMA_RANGE = (0.15, 1.15) is
            DACS's (and DAFormer's) `np.random.uniform(0.15, 1.15)`.
        probability: chance that an image is blurred (DACS: 0.5).
        kernel_size: odd int or odd (height, width); None = DACS's rule, dacs_blur_kernel_size of
            each side (51x51 for 512x512 crops).
        generator: CPU generator; None = torch's global one. Draws: apply [B], sigma [B].
    Returns:
        float [B, 3, H, W]; blurred images are clamped to 0..255 (a normalised positive kernel
        keeps them there up to float rounding).
    """
    _check_images(images)
    _check_probability(probability)
    _check_generator(generator)
    sigma_low, sigma_high = sigma_range
    if not 0.0 < sigma_low <= sigma_high:
        raise ValueError(f"sigma_range must satisfy 0 < low <= high; got {tuple(sigma_range)}")
    height, width = images.shape[-2:]
    if kernel_size is None:
        kernel_size = (dacs_blur_kernel_size(height), dacs_blur_kernel_size(width))
    elif isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    for side in kernel_size:
        if side < 1 or side % 2 == 0:
            raise ValueError(f"kernel_size must be positive and odd; got {kernel_size}")

    batch_size = images.shape[0]
    applied = _draw_applied(batch_size, probability, generator)
    sigmas = _uniform((batch_size,), sigma_low, sigma_high, generator)
    return _apply_to_subset(
        images,
        applied,
        lambda subset, rows: blur_with_sigmas(subset, sigmas[rows], kernel_size).clamp(0.0, 255.0),
    )


def cutout(
    images: torch.Tensor,
    size: int | tuple[int, int],
    probability: float,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    fill_value: float = 0.0,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random cutout: one rectangle per picked image set to fill_value, its labels to void.

    The rectangle's centre is uniform over the pixels and the rectangle is clipped at the border
    (DeVries & Taylor; the CutoutAbs of the RandAugment code ProDA uses), so near a border it is
    smaller than `size`.

    Args:
        images: float [B, 3, H, W] RGB 0..255.
        size: rectangle side, or (height, width), in pixels, >= 1.
        probability: chance that an image gets a rectangle.
        labels: optional int64 [B, H, W]; the rectangle's pixels become ignore_index.
        generator: CPU generator; None = torch's global one. Draws: apply [B], centre row [B],
            centre column [B].
        fill_value: image value inside the rectangle (0 = black).
        ignore_index: label value inside the rectangle.
    Returns:
        (images float [B, 3, H, W], labels int64 [B, H, W] or None).
    """
    _check_images(images)
    _check_probability(probability)
    _check_generator(generator)
    rectangle_height, rectangle_width = (size, size) if isinstance(size, int) else size
    if rectangle_height < 1 or rectangle_width < 1:
        raise ValueError(f"cutout size must be >= 1; got {size}")
    batch_size, _, height, width = images.shape
    if labels is not None and labels.shape != (batch_size, height, width):
        raise ValueError(
            f"labels must be [B, H, W] = {(batch_size, height, width)}; got {tuple(labels.shape)}"
        )

    applied = _draw_applied(batch_size, probability, generator)
    center_rows = torch.randint(0, height, (batch_size,), generator=generator)
    center_columns = torch.randint(0, width, (batch_size,), generator=generator)
    top = (center_rows - rectangle_height // 2).clamp(0, height)
    bottom = (center_rows - rectangle_height // 2 + rectangle_height).clamp(0, height)
    left = (center_columns - rectangle_width // 2).clamp(0, width)
    right = (center_columns - rectangle_width // 2 + rectangle_width).clamp(0, width)

    device = images.device
    row_indices = torch.arange(height, device=device)
    column_indices = torch.arange(width, device=device)
    in_rows = (row_indices[None, :] >= top.to(device)[:, None]) & (
        row_indices[None, :] < bottom.to(device)[:, None]
    )
    in_columns = (column_indices[None, :] >= left.to(device)[:, None]) & (
        column_indices[None, :] < right.to(device)[:, None]
    )
    rectangle = in_rows[:, :, None] & in_columns[:, None, :] & applied.to(device)[:, None, None]

    output_images = images.masked_fill(rectangle[:, None], fill_value)
    output_labels = None if labels is None else labels.masked_fill(rectangle, ignore_index)
    return output_images, output_labels


# --------------------------------------------------------------------------------------------
# ClassMix
# --------------------------------------------------------------------------------------------


def class_mix_masks(
    source_labels: torch.Tensor,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
    *,
    include_ignore: bool = True,
    batch_classes: bool = False,
) -> torch.Tensor:
    """ClassMix masks (DACS): for each source image, the pixels of half of its classes.

    DACS (trainUDA.py) takes classes = torch.unique(labels[i]), void 255 included when present,
    n of them, and picks np.random.choice(n, (n + n % 2) // 2, replace=False): a random
    permutation's first ceil(n / 2). Here the permutation is torch.randperm on the generator.

    Args:
        source_labels: int64 [B, H, W] train ids, void = ignore_index.
        generator: CPU generator; None = torch's global one. Draws: one randperm(n_i) per image.
        ignore_index: the void value.
        include_ignore: count void as a class (DACS does; its exclusion line is commented out).
        batch_classes: take the candidate classes from the whole batch rather than from each
            image, as DAFormer's get_class_masks does (REFERENCE §7.8); the half is still drawn
            per image.
    Returns:
        bool [B, H, W]: True where the source pixel belongs to a chosen class (paste source).
    """
    _check_generator(generator)
    if source_labels.dim() != 3:
        raise ValueError(f"source_labels must be [B, H, W]; got shape {tuple(source_labels.shape)}")
    masks = []
    batch_unique = torch.unique(source_labels) if batch_classes else None
    for labels in source_labels:
        classes = batch_unique if batch_unique is not None else torch.unique(labels)
        if not include_ignore:
            classes = classes[classes != ignore_index]
        count = classes.numel()
        chosen_positions = torch.randperm(count, generator=generator)[: (count + count % 2) // 2]
        chosen = classes[chosen_positions.to(classes.device)]
        masks.append(torch.isin(labels, chosen))
    return torch.stack(masks)


def mix(masks: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Pixel-wise choice: foreground where the mask is True, background elsewhere.

    DACS pastes source (foreground) onto target (background) with the ClassMix mask, for the
    images, the labels (source labels over pseudo-labels) and the weights (ones over the
    pseudo-label weights) alike.

    Args:
        masks: bool [B, H, W].
        foreground, background: same shape [B, ..., H, W], e.g. images [B, 3, H, W], labels or
            weights [B, H, W]; same dtype.
    Returns:
        [B, ..., H, W] with the inputs' dtype.
    """
    if masks.dtype != torch.bool or masks.dim() != 3:
        raise ValueError(
            f"masks must be bool [B, H, W]; got {masks.dtype} of shape {tuple(masks.shape)}"
        )
    if foreground.shape != background.shape:
        raise ValueError(
            f"foreground {tuple(foreground.shape)} and background {tuple(background.shape)} differ"
        )
    if foreground.shape[0] != masks.shape[0] or foreground.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"masks {tuple(masks.shape)} do not match tensors of shape {tuple(foreground.shape)}"
        )
    expanded = masks.view(masks.shape[0], *([1] * (foreground.dim() - 3)), *masks.shape[1:])
    return torch.where(expanded, foreground, background)


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def dacs_strong_transform(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    jitter_strength: float = DACS_JITTER_STRENGTH,
) -> torch.Tensor:
    """DACS's strongTransform without mixing or flip: colour jitter, then Gaussian blur.

    DACS (trainUDA.py strongTransform, utils/transformsgpu.py): after ClassMix, kornia's
    ColorJitter(0.25, 0.25, 0.25, 0.25) (kornia <= 0.5 formulas, a random step order per call,
    one call per image) with probability 0.8, then a GaussianBlur2d with sigma ~ U(0.15, 1.15),
    reflect padding and a kernel of ~10 % of each side, with probability 0.5. DAFormer is the same
    with jitter_strength = DAFORMER_JITTER_STRENGTH (0.2). Two documented deviations, neither
    changing the distribution of a single image: DACS draws the two apply decisions once per step
    for the whole batch (here per image), and it jitters BGR images (its data are BGR), which
    only mirrors the hue shift, whose range is symmetric.

    Args:
        images: float [B, 3, H, W] RGB 0..255 (the mixed images).
        generator: CPU generator; None = torch's global one.
        jitter_strength: brightness = contrast = saturation = hue strength.
    Returns:
        float [B, 3, H, W] in 0..255.
    """
    jittered = color_jitter(
        images,
        brightness=jitter_strength,
        contrast=jitter_strength,
        saturation=jitter_strength,
        hue=jitter_strength,
        probability=DACS_JITTER_PROBABILITY,
        generator=generator,
        formulas="kornia_legacy",
        random_order=True,
    )
    return gaussian_blur(
        jittered,
        DACS_BLUR_SIGMA_RANGE,
        DACS_BLUR_PROBABILITY,
        kernel_size=None,
        generator=generator,
    )


# --------------------------------------------------------------------------------------------
# RandAugment, photometric ops (ProDA's strong view)
# --------------------------------------------------------------------------------------------

# The photometric ops of the FixMatch pool that ProDA's RandAugmentMC(2, 10) draws from
# (microsoft/ProDA data/randaugment.py `fixmatch_augment_pool`), with (max_v, bias): a magnitude
# v in 1..9 gives the float parameter v * max_v / 10 + bias, the int one int(v * max_v / 10) +
# bias. Its geometric ops (Rotate, ShearX/Y, TranslateX/Y) are left out: the views then stay
# pixel-aligned, so no label or teacher map has to be warped.
RANDAUGMENT_PHOTOMETRIC_OPS: tuple[tuple[str, float, float], ...] = (
    ("autocontrast", 0.0, 0.0),
    ("brightness", 0.9, 0.05),
    ("color", 0.9, 0.05),
    ("contrast", 0.9, 0.05),
    ("equalize", 0.0, 0.0),
    ("identity", 0.0, 0.0),
    ("posterize", 4.0, 4.0),
    ("sharpness", 0.9, 0.05),
    ("solarize", 256.0, 0.0),
)


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float) -> torch.Tensor:
    # PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped to 0..255.
    return (degenerate + factor * (image - degenerate)).clamp(0.0, 255.0)


def _autocontrast(image: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0) of one image [3, H, W]: each channel stretched."""
    low = image.amin(dim=(1, 2), keepdim=True)
    high = image.amax(dim=(1, 2), keepdim=True)
    span = high - low
    stretched = (image - low) * (255.0 / span.clamp_min(1e-6))
    return torch.where(span > 0, stretched, image).clamp(0.0, 255.0)


def _equalize(image: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.equalize of one image [3, H, W] (0..255), channel by channel."""
    levels = image.round().clamp(0, 255).long()
    output = []
    for channel in levels:
        histogram = torch.bincount(channel.flatten(), minlength=256)
        nonzero = histogram.nonzero()
        step = (int(histogram.sum()) - int(histogram[nonzero[-1]])) // 255
        if step == 0:
            output.append(channel.float())
            continue
        # PIL: lut[i] = (n + step // 2) // step with n the count of pixels below level i.
        below = torch.cumsum(histogram, 0) - histogram
        lut = ((below + step // 2) // step).clamp(0, 255)
        output.append(lut[channel].float())
    return torch.stack(output).to(image.dtype)


def _sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL ImageEnhance.Sharpness of one image [3, H, W]: blend with PIL's SMOOTH filter."""
    kernel = torch.tensor(
        [[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=image.dtype, device=image.device
    )
    kernel = (kernel / 13.0).expand(3, 1, 3, 3)
    smoothed = F.conv2d(image[None], kernel, groups=3)[0]
    # PIL leaves the one-pixel border unfiltered.
    degenerate = image.clone()
    degenerate[:, 1:-1, 1:-1] = smoothed
    return _blend(degenerate, image, factor)


def _photometric_op(image: torch.Tensor, name: str, value: float) -> torch.Tensor:
    """One RandAugment op on one image [3, H, W] float 0..255 with its drawn parameter."""
    if name == "identity":
        return image
    if name == "autocontrast":
        return _autocontrast(image)
    if name == "equalize":
        return _equalize(image)
    if name == "brightness":
        return _blend(torch.zeros_like(image), image, value)
    if name == "color":
        return _blend(luma(image[None])[0].expand(3, -1, -1), image, value)
    if name == "contrast":
        mean = luma(image[None]).mean()
        return _blend(torch.full_like(image, float(torch.floor(mean + 0.5))), image, value)
    if name == "sharpness":
        return _sharpness(image, value)
    if name == "posterize":
        shift = 2 ** (8 - int(value))
        return torch.floor(image.round() / shift) * shift
    if name == "solarize":
        return torch.where(image >= value, 255.0 - image, image)
    raise ValueError(f"unknown RandAugment op {name!r}")


def randaugment_photometric(
    images: torch.Tensor,
    num_ops: int = 2,
    magnitude: int = 10,
    probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RandAugment with the photometric ops of ProDA's RandAugmentMC(2, 10), per image.

    For each of `num_ops` slots, each image draws an op uniformly from
    RANDAUGMENT_PHOTOMETRIC_OPS, a magnitude v uniform in 1..magnitude-1 (np.random.randint(1, m))
    and applies the op with `probability`, as RandAugmentMC does; its parameter is
    v * max_v / 10 + bias (float ops) or int(v * max_v / 10) + bias (posterize bits); solarize's
    threshold is 256 - int(v * 256 / 10). PIL's formulas, in float without 8-bit rounding between
    ops.

    Args:
        images: float [B, 3, H, W] RGB 0..255.
        num_ops: ops per image (ProDA: 2).
        magnitude: m (ProDA: 10), >= 2.
        probability: chance that a drawn op is applied (RandAugmentMC: 0.5).
        generator: CPU generator; None = torch's global one. Draws per slot: op [B],
            magnitude [B], apply [B].
    Returns:
        float [B, 3, H, W] in 0..255.
    """
    _check_images(images)
    _check_probability(probability)
    _check_generator(generator)
    if num_ops < 0 or magnitude < 2:
        raise ValueError(f"need num_ops >= 0 and magnitude >= 2; got {num_ops}, {magnitude}")
    batch_size = images.shape[0]
    output = images.clone()
    pool = RANDAUGMENT_PHOTOMETRIC_OPS
    for _ in range(num_ops):
        ops = torch.randint(0, len(pool), (batch_size,), generator=generator)
        magnitudes = torch.randint(1, magnitude, (batch_size,), generator=generator)
        applied = _draw_applied(batch_size, probability, generator)
        for index in range(batch_size):
            if not bool(applied[index]):
                continue
            name, max_value, bias = pool[int(ops[index])]
            level = int(magnitudes[index])
            if name == "posterize":
                value = float(int(level * max_value / 10) + bias)
            elif name == "solarize":
                value = float(256 - int(level * max_value / 10))
            else:
                value = level * max_value / 10 + bias
            output[index] = _photometric_op(output[index], name, value)
    return output
