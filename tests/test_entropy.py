"""Entropy losses of ADVENT (losses/entropy.py) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from udaseg.losses.entropy import entropy_loss, entropy_map, weighted_self_information


def _pixel(*probabilities: float) -> torch.Tensor:
    """One pixel's distribution as [1, C, 1, 1]."""
    return torch.tensor(probabilities, dtype=torch.float32).view(1, -1, 1, 1)


def test_three_class_entropy_by_hand() -> None:
    # p = (1/2, 1/4, 1/4): -p log2 p = (1/2, 1/2, 1/2) bits, 3/2 bits in all.
    p = _pixel(0.5, 0.25, 0.25)
    information = weighted_self_information(p, normalize=False)
    assert torch.allclose(information.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    assert entropy_map(p, normalize=False).item() == pytest.approx(1.5)
    # Normalised by log2(3) = 1.5849625: 0.9463946 (ADVENT divides by log2 C).
    assert entropy_map(p).item() == pytest.approx(1.5 / math.log2(3))
    assert entropy_map(p).item() == pytest.approx(0.9463946, abs=1e-6)
    assert torch.allclose(
        weighted_self_information(p).flatten(), torch.full((3,), 0.5 / math.log2(3))
    )
    # In nats the same distribution has 1.0397208 (= 1.5 ln 2): the unnormalised map is in bits,
    # and the normalised entropy does not depend on the base.
    nats = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert nats == pytest.approx(1.0397208, abs=1e-6)
    assert entropy_map(p, normalize=False).item() != pytest.approx(nats)
    assert entropy_map(p).item() == pytest.approx(nats / math.log(3))


def test_two_class_entropy_by_hand() -> None:
    # H(0.9, 0.1) = 0.9 * 0.1520031 + 0.1 * 3.3219281 = 0.4689956 bits; log2(2) = 1.
    p = _pixel(0.9, 0.1)
    assert entropy_map(p, normalize=False).item() == pytest.approx(0.4689956, abs=1e-6)
    assert entropy_map(p).item() == pytest.approx(0.4689956, abs=1e-6)
    information = weighted_self_information(p).flatten()
    assert information[0].item() == pytest.approx(0.1368028, abs=1e-6)
    assert information[1].item() == pytest.approx(0.3321928, abs=1e-6)


def test_uniform_is_one_and_one_hot_is_zero() -> None:
    uniform = torch.full((2, 19, 3, 5), 1 / 19)
    assert entropy_loss(uniform).item() == pytest.approx(1.0, abs=1e-6)
    one_hot = torch.zeros(2, 19, 3, 5)
    one_hot[:, 7] = 1.0
    assert entropy_loss(one_hot).item() == 0.0
    assert torch.equal(weighted_self_information(one_hot), torch.zeros_like(one_hot))


def test_entropy_loss_is_the_pixel_mean_of_advents_formula() -> None:
    # ADVENT: -sum(p * log2(p + 1e-30)) / (n * h * w * log2(C)).
    torch.manual_seed(0)
    probabilities = torch.softmax(3 * torch.randn(2, 5, 4, 6), dim=1)
    n, c, h, w = probabilities.shape
    expected = -(probabilities * torch.log2(probabilities + 1e-30)).sum() / (
        n * h * w * math.log2(c)
    )
    assert entropy_loss(probabilities).item() == pytest.approx(expected.item(), rel=1e-6)
    # Half uniform, half one-hot pixels average to 1/2.
    mixed = torch.zeros(1, 4, 1, 2)
    mixed[0, :, 0, 0] = 0.25
    mixed[0, 2, 0, 1] = 1.0
    assert entropy_loss(mixed).item() == pytest.approx(0.5)
    assert torch.allclose(entropy_map(mixed), torch.tensor([[[1.0, 0.0]]]))


def test_gradient_is_finite_for_saturated_softmax() -> None:
    logits = torch.tensor([[200.0, 0.0, -200.0]]).view(1, 3, 1, 1).requires_grad_()
    loss = entropy_loss(torch.softmax(logits, dim=1))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_entropy_decreases_when_logits_sharpen() -> None:
    """Minimising the loss sharpens predictions: its gradient points away from the argmax."""
    logits = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1).requires_grad_()
    entropy_loss(torch.softmax(logits, dim=1)).backward()
    assert logits.grad[0, 0].item() < 0 < logits.grad[0, 2].item()


def test_reduced_precision_input_is_computed_in_float32() -> None:
    p = torch.full((1, 4, 2, 2), 0.25, dtype=torch.bfloat16)
    assert weighted_self_information(p).dtype == torch.float32
    assert entropy_loss(p).item() == pytest.approx(1.0, abs=1e-6)


def test_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        entropy_loss(torch.ones(3, 4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        entropy_loss(torch.ones(1, 1, 2, 2))
