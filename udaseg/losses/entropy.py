"""Entropy of pixel-wise predictions, as ADVENT computes it (REFERENCE §3.2).

ADVENT (valeoai/ADVENT:advent/utils/func.py `prob_2_entropy`, advent/utils/loss.py
`entropy_loss`) works in bits and normalises by log2(C), so that a uniform prediction over C
classes has entropy 1 and a one-hot prediction 0. Normalised entropy does not depend on the base
of the logarithm (log2(p) / log2(C) == ln(p) / ln(C)); the unnormalised map is in bits.

- `weighted_self_information(p)`: the per-channel map -p_c * log2(p_c) / log2(C), [B, C, H, W];
  AdvEnt's discriminator input.
- `entropy_map(p)`: its sum over channels, the normalised entropy of each pixel, [B, H, W].
- `entropy_loss(p)`: the mean of that map over batch and pixels; MinEnt's loss, equal to ADVENT's
  -sum(p * log2 p) / (n * h * w * log2 C).
- `charbonnier_entropy_loss(p, eta, epsilon)`: FDA's robust entropy, the pixel mean of
  (normalised entropy^2 + epsilon)^eta (REFERENCE §3.5).

The inputs are probabilities (softmax outputs). The computations run in float32: under
autocast the softmax of a bf16 network may arrive in reduced precision, and p * log2(p) of tiny
probabilities needs the range.
"""

from __future__ import annotations

import math

import torch

# ADVENT adds 1e-30 inside the log so that p = 0 gives 0 * log2(1e-30) = 0 instead of NaN; in
# float32 this is far below any probability a softmax returns except exact zeros.
LOG_EPSILON = 1e-30


def _check_probabilities(probabilities: torch.Tensor) -> int:
    if probabilities.dim() != 4:
        raise ValueError(
            f"expected probabilities [B, C, H, W], got shape {tuple(probabilities.shape)}"
        )
    num_classes = probabilities.shape[1]
    if num_classes < 2:
        raise ValueError(f"entropy needs at least 2 classes, got {num_classes}")
    return num_classes


def weighted_self_information(probabilities: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """ADVENT's weighted self-information maps: -p * log2(p), per class channel.

    Args:
        probabilities: [B, C, H, W], softmax over C.
        normalize: divide by log2(C) as ADVENT's `prob_2_entropy` does, so that the channels of
            a pixel sum to its normalised entropy in [0, 1].
    Returns:
        float32 [B, C, H, W], non-negative.
    """
    num_classes = _check_probabilities(probabilities)
    probabilities = probabilities.float()
    information = -probabilities * torch.log2(probabilities + LOG_EPSILON)
    if normalize:
        information = information / math.log2(num_classes)
    return information


def entropy_map(probabilities: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Entropy of each pixel's prediction.

    Args:
        probabilities: [B, C, H, W], softmax over C.
        normalize: divide by log2(C) (1 = uniform, 0 = one-hot); otherwise bits.
    Returns:
        float32 [B, H, W].
    """
    return weighted_self_information(probabilities, normalize).sum(dim=1)


def entropy_loss(probabilities: torch.Tensor) -> torch.Tensor:
    """MinEnt's loss: normalised entropy averaged over the batch and the pixels.

    ADVENT's `entropy_loss` sums -p * log2(p) over every element and divides by
    n * h * w * log2(C) (REFERENCE §3.2; an earlier revision of the file omitted n, which is
    the same at ADVENT's batch size of 1).

    Args:
        probabilities: [B, C, H, W], softmax over C (ADVENT: of the logits upsampled to the
            target input size).
    Returns:
        float32 scalar in [0, 1].
    """
    return entropy_map(probabilities, normalize=True).mean()


def charbonnier_entropy_loss(
    probabilities: torch.Tensor, eta: float = 2.0, epsilon: float = 1e-8
) -> torch.Tensor:
    """FDA's robust entropy: the Charbonnier penalty of the normalised entropy, pixel mean.

    YanchaoYang/FDA:model/deeplab.py computes, at the network's output resolution (before any
    upsampling), ent = -sum_c p_c ln p_c / ln(19), then (ent^2 + 1e-8)^ita averaged over the
    batch and the pixels, with ita = 2.0 (REFERENCE §3.5). The code divides by the constant
    2.9444 = ln 19; here it is ln C, the same for 19 classes. With eta > 0.5 the penalty flattens
    near zero entropy, so confident pixels pull less than uncertain ones.

    Args:
        probabilities: [B, C, h, w], softmax over C (FDA: of the logits at output resolution).
        eta: the exponent (`--ita`).
        epsilon: added to the squared entropy (the code's 1e-8).
    Returns:
        float32 scalar: mean over B, h, w of (entropy^2 + epsilon)^eta, entropy in [0, 1].
    """
    # entropy_map's log2 / log2(C) normalisation equals FDA's ln / ln(C).
    normalized_entropy = entropy_map(probabilities, normalize=True)
    return ((normalized_entropy**2 + epsilon) ** eta).mean()
