"""ADVENT (Vu et al., CVPR 2019): MinEnt, AdvEnt and both at once.

Both methods act on the entropy of the target predictions (valeoai/ADVENT, REFERENCE §3.2):
- MinEnt minimises it directly: lambda_ent x the normalised entropy of the target softmax,
  averaged over pixels (losses/entropy.py `entropy_loss`).
- AdvEnt aligns it adversarially: a discriminator tells source from target weighted
  self-information maps -p log2(p) / log2(C) (C channels), and the segmentor is trained to make
  target maps look like source ones (labels source = 0, target = 1, REFERENCE §2).

One class, three registered names whose configs hold only the terms they use:
`minent`, `advent`, and `advent_minent` (both terms in one training run). The paper's
"AdvEnt+MinEnt" row (45.5) is not that: it averages the predictions of two separately trained
models (valeoai/ADVENT:advent/scripts/configs/advent+minent_pretrained.yml); see
docs/methods/advent.md.

Step order, as train_UDA.py: (1) source cross-entropy, backward; (2) target terms (entropy, and
the generator term through the frozen discriminator), backward; (3) each discriminator on the
detached source (0) and target (1) maps, each halved. Predictions are upsampled
(align_corners=True) to their input size before the softmax: source maps at the source size,
target maps at the target size. With a multi-level model the layer3 head adds the aux terms
(lambda_seg_aux 0.1 on source, the aux lambdas on target) and has its own discriminator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from udaseg.data.label_spaces import LabelSpace
from udaseg.losses.entropy import entropy_loss, weighted_self_information
from udaseg.losses.segmentation import source_segmentation_loss, upsampled_softmax
from udaseg.methods.adversarial import (
    DISCRIMINATOR_ADAM,
    fool_discriminator_loss,
    train_discriminator,
)
from udaseg.methods.base import Method, StepContext, check_non_negative
from udaseg.models.discriminators import FCDiscriminator
from udaseg.registry import METHODS

# (output key of the segmentor, suffix of config fields / logged names)
LEVELS = (("logits", "main"), ("aux_logits", "aux"))


@dataclass
class MinEntConfig:
    name: str = "minent"
    lambda_seg_aux: float = 0.1  # λ_seg for the aux (layer3) head, multi-level only
    lambda_ent_main: float = 0.001  # λ_ent on the main head's target entropy
    lambda_ent_aux: float = 0.0002  # λ_ent on the aux head's target entropy

    def validate(self) -> None:
        check_non_negative(self)


@dataclass
class AdvEntConfig:
    name: str = "advent"
    lambda_seg_aux: float = 0.1  # λ_seg for the aux (layer3) head, multi-level only
    lambda_adv_main: float = 0.001  # λ_adv, generator term of the main discriminator
    lambda_adv_aux: float = 0.0002  # λ_adv, generator term of the aux discriminator
    discriminator_channels: int = 64  # ndf of the FC discriminators (64 -> 128 -> 256 -> 512)

    def validate(self) -> None:
        check_non_negative(self)


@dataclass
class AdvEntMinEntConfig(AdvEntConfig):
    name: str = "advent_minent"
    lambda_ent_main: float = 0.001  # λ_ent, as MinEnt's
    lambda_ent_aux: float = 0.0002


class EntropyAdaptation(Method):
    """The shared training step; subclasses choose the terms."""

    minimizes_entropy: ClassVar[bool] = False
    aligns_entropy: ClassVar[bool] = False

    def __init__(self, config: Any, segmentor: nn.Module, label_space: LabelSpace) -> None:
        super().__init__(config, segmentor, label_space)
        # One discriminator per output level ("main", and "aux" on a multi-level model), on
        # C-channel self-information maps, held in one ModuleDict trained by one Adam (Adam is
        # per-parameter: the same as ADVENT's two Adams), as methods/adaptsegnet.py does.
        self.discriminators = nn.ModuleDict()
        if self.aligns_entropy:
            levels = ["main", "aux"] if getattr(segmentor, "multi_level", False) else ["main"]
            for level in levels:
                self.discriminators[level] = FCDiscriminator(
                    segmentor.num_classes, config.discriminator_channels
                )

    def trainable_modules(self) -> dict[str, nn.Module]:
        if not self.aligns_entropy:
            return {"segmentor": self.segmentor}
        return {"segmentor": self.segmentor, "discriminator": self.discriminators}

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        config = self.config
        source, target = batch["source"], batch["target"]

        # (1) Supervised loss on source.
        outputs = self.segmentor(source["image"])
        loss, scalars = source_segmentation_loss(outputs, source["label"], config.lambda_seg_aux)
        ctx.backward(loss)
        source_logits = {level: outputs[key].detach() for key, level in LEVELS if key in outputs}
        del outputs, loss

        # (2) Target terms: entropy minimisation and/or fooling the frozen discriminators.
        target_outputs = self.segmentor(target["image"])
        target_size = tuple(target["image"].shape[-2:])
        loss = torch.zeros((), device=target["image"].device)
        target_maps: dict[str, torch.Tensor] = {}
        for key, level in LEVELS:
            if key not in target_outputs:
                continue
            suffix = "" if level == "main" else "_aux"
            probabilities = upsampled_softmax(target_outputs[key], target_size)
            if self.minimizes_entropy:
                loss_ent = entropy_loss(probabilities)
                loss = loss + getattr(config, f"lambda_ent_{level}") * loss_ent
                scalars[f"loss_ent{suffix}"] = loss_ent.detach()
            if self.aligns_entropy:
                maps = weighted_self_information(probabilities)
                loss_adv = fool_discriminator_loss(self.discriminators[level], maps)
                loss = loss + getattr(config, f"lambda_adv_{level}") * loss_adv
                scalars[f"loss_adv{suffix}"] = loss_adv.detach()
                target_maps[level] = maps.detach()
            if level == "main":
                # Diagnostic for every variant: the normalised entropy MinEnt would minimise.
                scalars["entropy_target"] = entropy_loss(probabilities.detach())
        ctx.backward(loss)
        del target_outputs, loss

        # (3) Discriminators: detached source maps -> 0, target maps -> 1, each halved.
        for level, target_map in target_maps.items():
            suffix = "" if level == "main" else "_aux"
            source_size = tuple(source["image"].shape[-2:])
            source_probabilities = upsampled_softmax(source_logits[level], source_size)
            source_map = weighted_self_information(source_probabilities)
            losses = train_discriminator(self.discriminators[level], source_map, target_map, ctx)
            scalars.update({f"{name}{suffix}": value for name, value in losses.items()})
        return scalars


@METHODS.register("minent")
class MinEnt(EntropyAdaptation):
    """MinEnt: source cross-entropy + lambda_ent x normalised target entropy."""

    Config = MinEntConfig
    minimizes_entropy = True


@METHODS.register("advent")
class AdvEnt(EntropyAdaptation):
    """AdvEnt: source cross-entropy + adversarial alignment of self-information maps."""

    Config = AdvEntConfig
    aligns_entropy = True
    default_optimizers = {"discriminator": DISCRIMINATOR_ADAM}


@METHODS.register("advent_minent")
class AdvEntMinEnt(EntropyAdaptation):
    """Both target terms in one run (this library's combination; not the paper's ensemble)."""

    Config = AdvEntMinEntConfig
    minimizes_entropy = True
    aligns_entropy = True
    default_optimizers = AdvEnt.default_optimizers
