"""Image translation without a network: FDA's Fourier amplitude swap (Yang & Soatto, CVPR 2020).

FDA gives a source image the "style" of a target image by replacing the low-frequency part of the
source's Fourier amplitude with the target's and keeping the source's phase (the content):

    x_{s->t} = F^-1([M_b o |F(x_t)| + (1 - M_b) o |F(x_s)|, phase(F(x_s))])

with M_b a window of low frequencies whose half-size is b = floor(min(H, W) x beta)
(REFERENCE §3.5; YanchaoYang/FDA:utils/__init__.py). The released code has two windows:

- `"corners"` (its training path, `FDA_source_to_target` / `low_freq_mutate`): the four b x b
  corner blocks of the unshifted spectrum, i.e. frequencies -b .. b-1 along each axis. The window
  is not symmetric under k -> -k, so the inverse FFT has a small imaginary part; the real part is
  kept (REFERENCE §7.9).
- `"centered"` (its numpy helper, `FDA_source_to_target_np` / `low_freq_mutate_np`): the
  (2b+1) x (2b+1) window around the centre of the fftshift-ed spectrum, i.e. frequencies -b .. b.
  With b = 0 it still holds the zero frequency, so it swaps each channel's mean.

The public surface is `fda_source_to_target` and `fda_window_size`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

FDA_WINDOWS = ("corners", "centered")


def fda_window_size(height: int, width: int, beta: float) -> int:
    """FDA's window half-size b = floor(min(H, W) x beta), as the released code computes it.

    On GTA5 -> Cityscapes' 512x1024 crops the paper's betas 0.01, 0.05, 0.09 give 5, 25, 46.
    """
    return math.floor(min(height, width) * beta)


def _low_frequency_mask(
    height: int, width: int, size: int, window: str, device: torch.device
) -> torch.Tensor:
    """bool [H, W]: True at the frequencies (unshifted FFT indices) whose amplitude is swapped."""
    rows = torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    if window == "corners":
        # Index k stands for frequency k (k < H/2) or k - H: blocks 0:b and H-b:H hold -b .. b-1.
        row_in = (rows < size) | (rows >= height - size)
        column_in = (columns < size) | (columns >= width - size)
    else:
        # fftshift moves frequency 0 to index floor(H/2); the numpy helper's window
        # [c - b, c + b] there is the circular distance |k| <= b from 0 here.
        row_in = (rows <= size) | (rows >= height - size)
        column_in = (columns <= size) | (columns >= width - size)
    return row_in[:, None] & column_in[None, :]


def fda_source_to_target(
    source: torch.Tensor,
    target: torch.Tensor,
    beta: float,
    window: Literal["corners", "centered"] = "corners",
) -> torch.Tensor:
    """Source images with the low-frequency Fourier amplitude of the target images.

    Works on raw pixels: the released code warns that FDA must run before mean subtraction
    (REFERENCE §7.9), which is why udaseg's segmentors normalise their own input. Image i of
    `source` takes the amplitude of image i of `target`; each channel is transformed on its own,
    so RGB or BGR order does not matter as long as both agree.

    Args:
        source: float [B, C, H, W] (C = 3 for images), values in 0..255, any device.
        target: float [B, C, H, W], the same shape and device.
        beta: window size as a fraction of min(H, W), in [0, 0.5]; the paper's 0.01, 0.05, 0.09.
        window: "corners" (the training code's, default) or "centered" (the numpy helper's).
    Returns:
        float32 [B, C, H, W]: the real part of the inverse FFT, not clamped to 0..255 (as the
        original, whose output goes to the network unclamped). With window="corners" and
        b = 0 it equals the source (up to float32 FFT round-off).
    Raises:
        ValueError: shapes differ or are not 4-D, beta is out of range, or the window is unknown.
    """
    if source.dim() != 4 or source.shape != target.shape:
        raise ValueError(
            "fda_source_to_target: source and target must be [B, C, H, W] of one shape, got "
            f"{tuple(source.shape)} and {tuple(target.shape)}"
        )
    if not 0.0 <= beta <= 0.5:
        raise ValueError(f"fda_source_to_target: beta must be in [0, 0.5], got {beta}")
    if window not in FDA_WINDOWS:
        raise ValueError(
            f"fda_source_to_target: window must be one of {FDA_WINDOWS}, not {window!r}"
        )
    height, width = source.shape[-2:]
    # float32 whatever the caller's dtype: FFTs of 0..255 images need the range and precision,
    # and half-precision FFTs only exist for power-of-two sizes on CUDA.
    source_spectrum = torch.fft.fft2(source.float())
    target_amplitude = torch.fft.fft2(target.float()).abs()
    mask = _low_frequency_mask(
        height, width, fda_window_size(height, width, beta), window, source.device
    )
    amplitude = torch.where(mask, target_amplitude, source_spectrum.abs())
    spectrum = torch.polar(amplitude, source_spectrum.angle())
    return torch.fft.ifft2(spectrum).real
