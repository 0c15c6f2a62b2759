"""Domain-adversarial training (DANN; Ganin & Lempitsky, ICML 2015) on segmentation features.

A domain classifier looks at every position of the layer4 features of source (label 0) and
target (label 1) images through a gradient reversal layer (models/gradient_reversal.py). One
backward pass per domain then trains the classifier to tell the domains apart and, with the sign
flipped and scaled by DANN's coefficient lambda_p = 2 / (1 + exp(-gamma * p)) - 1, the segmentor
to make its features indistinguishable: no separate generator/discriminator steps.

DANN trains the domain classifier with the network's SGD, at 10x lr for the new layers
(`default_optimizers`); its loss is the mean over the two domains of the per-position binary
cross-entropy, the loss of a batch holding one source and one target image as in DANN.
No repository here implements DANN for segmentation (REFERENCE §2); the choices where the paper
is silent are listed in docs/methods/dann.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from udaseg.errors import ConfigError
from udaseg.losses.adversarial import SOURCE_DOMAIN, TARGET_DOMAIN, domain_loss
from udaseg.losses.segmentation import source_segmentation_loss
from udaseg.methods.base import (
    Method,
    StepContext,
    check_non_negative,
    new_layer_sgd,
)
from udaseg.models.gradient_reversal import (
    PixelDomainClassifier,
    dann_coefficient,
    reverse_gradient,
)
from udaseg.registry import METHODS


@dataclass
class DANNConfig:
    name: str = "dann"
    lambda_seg_aux: float = 0.1  # λ_seg: aux-head (layer3) CE weight, multi-level models only
    lambda_domain: float = 1.0  # weight of the domain loss L_d (DANN: 1)
    coefficient_max: float = 1.0  # λ's asymptote: λ_p = max x (2 / (1 + exp(-γ p)) - 1); DANN 1
    gamma: float = 10.0  # γ of the λ_p schedule (DANN: 10)
    hidden_channels: int = 1024  # domain classifier hidden width (DANN: 1024-1024-1)
    dropout: float = 0.5  # dropout after each hidden layer (DANN: 0.5)

    def validate(self) -> None:
        check_non_negative(self, "lambda_seg_aux", "lambda_domain", "coefficient_max", "gamma")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")


@METHODS.register("dann")
class DANN(Method):
    Config = DANNConfig
    # DANN: the domain classifier trains with the network's SGD at 10x lr (new layers); here
    # 10 x the DeepLabV2 papers' 2.5e-4, poly-decayed with the segmentor by the engine.
    default_optimizers = {"domain_classifier": new_layer_sgd(2.5e-3)}

    def __init__(self, config: Any, segmentor: nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        self.domain_classifier = PixelDomainClassifier(
            segmentor.feature_channels, config.hidden_channels, config.dropout
        )

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"segmentor": self.segmentor, "domain_classifier": self.domain_classifier}

    def coefficient(self, progress: float) -> float:
        """The gradient-reversal coefficient λ_p at training progress p in [0, 1]."""
        return dann_coefficient(progress, self.config.gamma, self.config.coefficient_max)

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        source, target = batch["source"], batch["target"]
        coefficient = self.coefficient(ctx.progress)
        weight = self.config.lambda_domain / 2  # the mean of the two domains' losses

        # Source: segmentation + domain loss (label 0); one backward, then the graph is freed.
        # Backpropagating per domain gives the gradient of the summed loss at half the memory.
        outputs = self.segmentor(source["image"])
        loss, scalars = source_segmentation_loss(
            outputs, source["label"], self.config.lambda_seg_aux
        )
        domain_logits = self.domain_classifier(reverse_gradient(outputs["features"], coefficient))
        loss_domain_source = domain_loss(domain_logits, SOURCE_DOMAIN)
        ctx.backward(loss + weight * loss_domain_source)
        del outputs, loss

        # Target: domain loss only (label 1); the target has no labels.
        features = self.segmentor(target["image"])["features"]
        domain_logits = self.domain_classifier(reverse_gradient(features, coefficient))
        loss_domain_target = domain_loss(domain_logits, TARGET_DOMAIN)
        ctx.backward(weight * loss_domain_target)

        scalars["loss_domain_source"] = loss_domain_source.detach()
        scalars["loss_domain_target"] = loss_domain_target.detach()
        scalars["grl_coefficient"] = coefficient
        return scalars
