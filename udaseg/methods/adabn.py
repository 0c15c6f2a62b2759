"""AdaBN (Li et al., 2016): re-estimate batch-norm statistics on target images, nothing else.

The control every adaptation method is measured against. A source-only model (given with
`init.segmentor`) forwards target training images in train mode without gradients; each BN layer
forgets its source statistics once, at the first step, and then keeps the cumulative average
(`momentum=None`) of the target batches' means and variances. No weight changes. On the toy
benchmark this alone explained the adversarial family's gain (docs/results.md), so a method is
only shown to work when it beats this.

The statistics are buffers, checkpointed like weights, and `num_batches_tracked` carries the
count of the cumulative average, so a resumed run continues exactly. One epoch of the target
train split (`train.steps` = images / batch size) is enough: the average converges as 1/n.
The segmentor is not a trainable module (no optimizer, no gradient) but is checkpointed under
its usual name. Half-frozen BN (the papers' default) is updated by train-mode forwards;
`model.bn: frozen` layers never update, which `setup` refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from udaseg.errors import ConfigError
from udaseg.methods.base import Method, SetupContext, StepContext
from udaseg.models.resnet import EvalModeBatchNorm2d
from udaseg.registry import METHODS


@dataclass
class AdaBNConfig:
    name: str = "adabn"
    # Forget the source statistics before averaging the target's (AdaBN); false averages the
    # target batches into the source statistics instead (an ablation).
    reset_statistics: bool = True


@METHODS.register("adabn")
class AdaBN(Method):
    Config = AdaBNConfig
    uses_source: ClassVar[bool] = False

    def batch_norms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [
            module
            for module in self.segmentor.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        ]

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {}  # no weight changes: no optimizer is built

    def extra_modules(self) -> dict[str, nn.Module]:
        # Checkpointed under the usual name, so `init: ...#segmentor` and `udaseg eval` work.
        return {"segmentor": self.segmentor}

    def train(self, mode: bool = True) -> AdaBN:
        # Unlike a teacher, the segmentor runs in train mode: that is what updates BN.
        self.segmentor.train(mode)
        return self

    def setup(self, ctx: SetupContext) -> None:
        layers = self.batch_norms()
        if not layers or any(isinstance(layer, EvalModeBatchNorm2d) for layer in layers):
            raise ConfigError(
                "method adabn: the segmentor's BN statistics cannot be re-estimated (model.bn "
                "frozen never updates them); use bn: half_frozen or trainable"
            )
        for layer in layers:
            if not ctx.resumed and self.config.reset_statistics:
                layer.reset_running_stats()
            # A cumulative average over every target batch, not an exponential one.
            layer.momentum = None

    @torch.no_grad()
    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        # The forward in train mode updates every BN layer's running mean and variance.
        logits = self.segmentor(batch["target"]["image"])["logits"]
        confidence = torch.softmax(logits.float(), dim=1).amax(dim=1).mean()
        return {"target_confidence": confidence}
