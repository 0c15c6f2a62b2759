"""Turning images into full-resolution logits: whole-image or sliding-window, optional flip.

One function serves evaluation, `udaseg predict` and pseudo-labelling, so the three always
see the same predictions. It knows nothing about models: `forward` is any callable mapping
float images [B, 3, h, w] (RGB 0..255) to logits [B, C, h', w'] at any resolution (DeepLabV2
gives stride-8 logits); a dict with a "logits" entry (a segmentor's output) is accepted too.

The papers' protocol (REFERENCE §5.2): a 1024x512 input, logits bilinearly upsampled with
align_corners=True to the 2048x1024 label, argmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from udaseg.data.transforms import resize_image
from udaseg.errors import ConfigError

Forward = Callable[[torch.Tensor], Any]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = (int(v) for v in value)
    if height < 1 or width < 1:
        raise ConfigError(f"{name} must be positive (height, width), got {list(value)}")
    return height, width


RESIZE_METHODS: tuple[str, ...] = ("pil", "torch")


def resize_images(images: torch.Tensor, size: Sequence[int], resize: str = "pil") -> torch.Tensor:
    """Bicubic resize of a batch of images, as the original loaders or on the device.

    Args:
        images: [B, 3, H, W] RGB 0..255, uint8 or float (for "pil", float values are rounded to
            the nearest integer, which is exact for images read from 8-bit files).
        size: (height, width).
        resize: "pil": PIL bicubic on uint8 images, one image at a time on the CPU, as the
            AdaptSegNet/ADVENT/BDL/FDA loaders resize (and as udaseg's datasets do,
            `data.transforms.resize_image`), so predictions match theirs pixel for pixel;
            "torch": torch bicubic with antialiasing on the images' device, faster on a GPU,
            with slightly different pixels.
    Returns:
        float [B, 3, height, width] in 0..255 on the images' device; the input (as float)
        if it already has that size.
    """
    if resize not in RESIZE_METHODS:
        raise ConfigError(f"eval.resize must be 'pil' or 'torch', got {resize!r}")
    size = tuple(int(s) for s in size)
    if tuple(images.shape[-2:]) == size:
        return images.float()
    if resize == "pil":
        return _resize_with_pil(images, size)
    resized = F.interpolate(
        images.float(), size=size, mode="bicubic", align_corners=False, antialias=True
    )
    # Bicubic overshoots at edges; the model was trained on 0..255 pixels.
    return resized.clamp_(0.0, 255.0)


def _resize_with_pil(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`data.transforms.resize_image` on each image of [B, 3, H, W]; float [B, 3, *size]."""
    pixels = images.detach()
    if pixels.dtype != torch.uint8:
        pixels = pixels.round().clamp_(0, 255).to(torch.uint8)
    arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
    resized = np.stack([resize_image(np.ascontiguousarray(array), size) for array in arrays])
    return torch.from_numpy(resized).to(images.device).permute(0, 3, 1, 2).float()


def resize_logits(
    logits: torch.Tensor, size: Sequence[int], align_corners: bool = True
) -> torch.Tensor:
    """Bilinear resize of logits [B, C, h, w] to [B, C, *size] (no-op at that size)."""
    size = tuple(int(s) for s in size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def _call(forward: Forward, images: torch.Tensor) -> torch.Tensor:
    output = forward(images)
    if isinstance(output, Mapping):
        output = output["logits"]
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        raise ValueError("forward must return logits [B, C, h, w] (or a dict with 'logits')")
    return output.float()


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Top/left offsets of windows covering 0..length; the last one is flush with the end."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return [min(index * stride, length - window) for index in range(count)]


def _slide(
    forward: Forward,
    images: torch.Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    align_corners: bool,
) -> torch.Tensor:
    """Sliding-window logits at the image's resolution.

    Args:
        images: float [B, 3, H, W].
    Returns:
        float [B, C, H, W]: per pixel, the mean of the (upsampled) logits of the windows
        covering it.
    """
    batch, _, height, width = images.shape
    window_height, window_width = window
    # Images smaller than the window are padded (bottom/right, zeros as mmseg pads test
    # images) so that every forward sees the window size the model was trained on.
    pad_height = max(window_height - height, 0)
    pad_width = max(window_width - width, 0)
    if pad_height or pad_width:
        images = F.pad(images, (0, pad_width, 0, pad_height))
    padded_height, padded_width = images.shape[-2:]

    total: torch.Tensor | None = None
    count = images.new_zeros(1, 1, padded_height, padded_width)
    for top in _window_starts(padded_height, window_height, stride[0]):
        for left in _window_starts(padded_width, window_width, stride[1]):
            crop = images[..., top : top + window_height, left : left + window_width]
            logits = resize_logits(
                _call(forward, crop), (window_height, window_width), align_corners
            )
            if total is None:
                total = images.new_zeros(batch, logits.shape[1], padded_height, padded_width)
            total[..., top : top + window_height, left : left + window_width] += logits
            count[..., top : top + window_height, left : left + window_width] += 1
    assert total is not None
    return (total / count)[..., :height, :width]


def predict_logits(
    forward: Forward,
    images: torch.Tensor,
    output_size: Sequence[int],
    input_size: Sequence[int] | None = None,
    mode: str = "whole",
    window: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    flip: bool = False,
    align_corners: bool = True,
    resize: str = "pil",
) -> torch.Tensor:
    """Logits of `forward` for a batch, at `output_size`.

    Args:
        forward: callable, float images [B, 3, h, w] -> logits [B, C, h', w'] (or a dict with
            "logits"). Called under whatever grad mode the caller set.
        images: [B, 3, H, W] RGB 0..255, any dtype (converted to float).
        output_size: (height, width) of the returned logits, usually the label's.
        input_size: (height, width) the images are first resized to (bicubic, see `resize`);
            None keeps them as they are.
        mode: "whole" (one forward per image) or "slide" (windows of `window` every `stride`,
            logits averaged where windows overlap).
        window, stride: slide mode, (height, width).
        flip: also predict the horizontally mirrored images and average the logits.
        align_corners: of the bilinear logit upsampling (True: AdaptSegNet/ADVENT/BDL;
            False: mmseg-based repos).
        resize: how `input_size` is reached (`eval.resize`): "pil" (PIL bicubic on uint8, the
            original loaders' way, the default) or "torch" (torch bicubic, antialiased, on
            the device); see `resize_images`.
    Returns:
        float logits [B, C, output_height, output_width].
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
    if mode not in ("whole", "slide"):
        raise ConfigError(f"eval.mode must be 'whole' or 'slide', got {mode!r}")
    images = images.float()
    if input_size is not None:
        images = resize_images(images, _pair(input_size, "eval.input_size"), resize)
    batch = images.shape[0]
    if flip:
        # One forward over both views; BN is in eval mode at test time, so batching is exact.
        images = torch.cat([images, images.flip(-1)])

    if mode == "whole":
        logits = _call(forward, images)
    else:
        window_pair = _pair(window, "eval.window")
        stride_pair = _pair(stride, "eval.stride")
        if stride_pair[0] > window_pair[0] or stride_pair[1] > window_pair[1]:
            raise ConfigError(
                f"eval.stride {list(stride_pair)} is larger than eval.window {list(window_pair)}: "
                "pixels between windows would get no prediction"
            )
        logits = _slide(forward, images, window_pair, stride_pair, align_corners)

    if flip:
        # Averaging before upsampling equals averaging after it: bilinear resizing is linear
        # and commutes with a horizontal flip, and this way costs less memory.
        logits = (logits[:batch] + logits[batch:].flip(-1)) / 2
    return resize_logits(logits, _pair(output_size, "output_size"), align_corners)


def _fast_forward(forward: Forward, precision: str, channels_last: bool) -> Forward:
    """`forward` under autocast and/or on channels_last images; logits back in float32, so that
    upsampling, softmax and argmax stay in float32 (eval.precision, eval.channels_last)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def wrapped(images: torch.Tensor) -> torch.Tensor:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            return _call(forward, images)  # float32 logits

    return wrapped


def predict_with_protocol(
    forward: Forward,
    images: torch.Tensor,
    output_size: Sequence[int],
    eval_config: Any,
    input_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """`predict_logits` with the mode, window, stride, flip, align_corners and resize of an
    `eval:` section (config.EvalConfig): evaluation, predict, pseudo-labels, the demo and the
    report all predict this way, so they see the same numbers.

    Args:
        images: [B, 3, H, W] RGB 0..255.
        output_size: (height, width) of the returned logits.
        eval_config: the `eval:` section.
        input_size: the size images are resized to first (with `eval_config.resize`); None when
            they already are (validation datasets resize with PIL, as the original loaders).
    Returns:
        float logits [B, C, output_height, output_width].
    """
    precision = getattr(eval_config, "precision", "fp32")
    channels_last = getattr(eval_config, "channels_last", False)
    if precision != "fp32" or channels_last:
        forward = _fast_forward(forward, precision, channels_last)
    return predict_logits(
        forward,
        images,
        output_size=output_size,
        input_size=input_size,
        mode=eval_config.mode,
        window=eval_config.window,
        stride=eval_config.stride,
        flip=eval_config.flip,
        align_corners=eval_config.align_corners,
        resize=eval_config.resize,
    )
