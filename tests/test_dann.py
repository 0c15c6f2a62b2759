"""DANN: gradient reversal sign and scale, the coefficient schedule, domain-loss values, configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.engine_helpers import RecordingContext
from tests.test_adaptsegnet import make_batch, make_method, softplus
from udaseg.config import OptimizerConfig, load_config
from udaseg.engine.trainer import _optimizer_configs
from udaseg.errors import ConfigError
from udaseg.losses.adversarial import domain_loss
from udaseg.losses.segmentation import segmentation_loss
from udaseg.models.gradient_reversal import (
    GradientReversal,
    PixelDomainClassifier,
    dann_coefficient,
    reverse_gradient,
)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "udaseg" / "configs" / "experiments"


# --- the gradient reversal layer ----------------------------------------------------------


@pytest.mark.parametrize("coefficient", [0.0, 0.37, 1.0, 2.5])
def test_gradient_reversal_is_identity_forward_and_negated_scaled_backward(
    coefficient: float,
) -> None:
    inputs = torch.randn(2, 3, 4, 5, requires_grad=True)
    outputs = reverse_gradient(inputs, coefficient)
    assert torch.equal(outputs, inputs) and outputs.shape == inputs.shape
    upstream = torch.randn_like(inputs)
    outputs.backward(upstream)
    assert torch.allclose(inputs.grad, -coefficient * upstream)


def test_gradient_reversal_module_and_composition() -> None:
    """Through the GRL the classifier's gradient is unchanged and the features' is -c times."""
    torch.manual_seed(0)
    classifier = PixelDomainClassifier(6, hidden_channels=8, dropout=0.0)
    features = torch.randn(2, 6, 3, 4, requires_grad=True)
    domain_loss(classifier(features), 1.0).backward()
    plain_features = features.grad.clone()
    plain_classifier = [p.grad.clone() for p in classifier.parameters()]
    features.grad = None
    classifier.zero_grad()
    layer = GradientReversal(0.3)
    domain_loss(classifier(layer(features)), 1.0).backward()
    assert torch.allclose(features.grad, -0.3 * plain_features)
    for reversed_grad, plain in zip(classifier.parameters(), plain_classifier, strict=True):
        assert torch.allclose(reversed_grad.grad, plain)


def test_coefficient_schedule_values() -> None:
    # lambda_p = 2 / (1 + exp(-10 p)) - 1
    assert dann_coefficient(0.0) == 0.0
    assert dann_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_coefficient(0.5) == pytest.approx(0.986614, abs=1e-6)
    assert dann_coefficient(1.0) == pytest.approx(0.999909, abs=1e-6)
    assert dann_coefficient(0.1, gamma=10.0, maximum=0.5) == pytest.approx(
        0.5 * (2 / (1 + math.exp(-1)) - 1)
    )
    values = [dann_coefficient(p / 10) for p in range(11)]
    assert values == sorted(values)


def test_pixel_domain_classifier_shapes() -> None:
    classifier = PixelDomainClassifier(16)
    assert classifier.conv1.out_channels == classifier.conv2.out_channels == 1024
    assert classifier(torch.randn(2, 16, 3, 5)).shape == (2, 1, 3, 5)
    assert classifier(torch.randn(1, 16, 1, 1)).shape == (1, 1, 1, 1)


# --- the method -----------------------------------------------------------------------------


class ConstantClassifier(nn.Module):
    """Outputs `value` at every position, keeping a path to its input."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.value + features[:, :1] * 0.0


def test_domain_losses_match_hand_computed_values() -> None:
    method = make_method("dann", multi_level=False, lambda_domain=0.5)
    method.domain_classifier = ConstantClassifier(1.5)
    context = RecordingContext(method.trainable_modules(), progress=0.5)
    scalars = method.training_step(make_batch(), context)
    # Source -> 0: log(1 + e^1.5); target -> 1: log(1 + e^-1.5).
    assert float(scalars["loss_domain_source"]) == pytest.approx(softplus(1.5), rel=1e-6)
    assert float(scalars["loss_domain_target"]) == pytest.approx(softplus(-1.5), rel=1e-6)
    assert scalars["grl_coefficient"] == pytest.approx(dann_coefficient(0.5))
    # Two backwards: seg + lambda/2 * L_d(source), then lambda/2 * L_d(target).
    assert context.losses[1] == pytest.approx(0.25 * softplus(-1.5), rel=1e-6)
    # The classifier descends the domain loss: d/dx [0.25 (softplus(x) + softplus(-x))].
    sigmoid = 1 / (1 + math.exp(-1.5))
    expected = 0.25 * (sigmoid - (1 - sigmoid))
    assert float(method.domain_classifier.value.grad) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("progress", [0.0, 0.3])
def test_segmentor_receives_the_reversed_scaled_domain_gradient(progress: float) -> None:
    """Segmentor grad = grad(seg) - lambda_p * grad(lambda_domain * mean of the domain losses)."""
    method = make_method("dann", multi_level=True, lambda_domain=0.8, dropout=0.0)
    segmentor, classifier = method.segmentor, method.domain_classifier
    batch = make_batch()

    def gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        parameters = [p for p in segmentor.parameters() if p.requires_grad]
        return list(torch.autograd.grad(loss, parameters, allow_unused=True, retain_graph=True))

    # The two terms computed without any reversal.
    source_outputs = segmentor(batch["source"]["image"])
    seg = segmentation_loss(source_outputs["logits"], batch["source"]["label"])
    seg = seg + 0.1 * segmentation_loss(source_outputs["aux_logits"], batch["source"]["label"])
    target_features = segmentor(batch["target"]["image"])["features"]
    domain = 0.4 * (
        domain_loss(classifier(source_outputs["features"]), 0.0)
        + domain_loss(classifier(target_features), 1.0)
    )
    seg_gradients = gradients(seg)
    domain_gradients = gradients(domain)

    context = RecordingContext(method.trainable_modules(), progress=progress)
    method.training_step(batch, context)
    coefficient = dann_coefficient(progress)
    parameters = [p for p in segmentor.parameters() if p.requires_grad]
    for parameter, seg_grad, domain_grad in zip(
        parameters, seg_gradients, domain_gradients, strict=True
    ):
        expected = (0 if seg_grad is None else seg_grad) - coefficient * (
            0 if domain_grad is None else domain_grad
        )
        assert torch.allclose(parameter.grad, torch.as_tensor(expected), atol=1e-6, rtol=1e-4)
    # The classifier itself is trained on the domain loss unscaled by the coefficient.
    classifier_gradients = torch.autograd.grad(domain, list(classifier.parameters()))
    for parameter, expected in zip(classifier.parameters(), classifier_gradients, strict=True):
        assert torch.allclose(parameter.grad, expected, atol=1e-7, rtol=1e-4)


def test_domain_classifier_optimizer_default() -> None:
    method = make_method("dann", multi_level=False)
    chosen = _optimizer_configs(load_config(None), type(method), method.trainable_modules())
    assert chosen["domain_classifier"] == OptimizerConfig(
        name="sgd", lr=2.5e-3, momentum=0.9, weight_decay=5e-4, head_lr_multiplier=1.0
    )


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="coefficient_max"):
        load_config(None, ["method.name=dann", "method.coefficient_max=-1"])
    with pytest.raises(ConfigError, match="dropout"):
        load_config(None, ["method.name=dann", "method.dropout=1.0"])


def test_experiment_config_holds_the_settings() -> None:
    config = load_config(EXPERIMENTS / "dann_gta5_cityscapes.yaml")
    assert config.method.name == "dann"
    assert (config.method.gamma, config.method.hidden_channels, config.method.dropout) == (
        10.0,
        1024,
        0.5,
    )
    assert config.optim["domain_classifier"].lr == 10 * config.optim["segmentor"].lr
    assert config.schedule.total_steps == 250000 and config.train.steps == 150000
