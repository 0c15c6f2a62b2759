"""Segmentors, backbones, discriminators and weight loading; importing registers MODELS.

Registered models (`model.name`):
- `deeplabv2`: DeepLabV2 on the Caffe-style ResNet-101/50 (AdaptSegNet, ADVENT, BDL, FDA, DACS;
  ProDA with `head: proda`).
- `deeplabv2_vgg16`: AdaptSegNet's DeeplabVGG.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from udaseg.models import deeplabv2, vgg  # noqa: F401  (registration)
from udaseg.models.deeplabv2 import (
    ClassifierModule,
    DeepLabV2,
    DeepLabV2Config,
    ProDAClassifierModule,
)
from udaseg.models.discriminators import FCDiscriminator, load_discriminator_weights
from udaseg.models.normalization import InputNormalization, normalize_images
from udaseg.models.vgg import DeepLabVGG, DeepLabVGGConfig
from udaseg.models.weights import (
    LoadReport,
    load_init_weights,
    load_released_checkpoint,
    load_state_dict_strictly,
)
from udaseg.registry import MODELS

logger = logging.getLogger(__name__)

__all__ = [
    "ClassifierModule",
    "DeepLabV2",
    "DeepLabV2Config",
    "DeepLabVGG",
    "DeepLabVGGConfig",
    "FCDiscriminator",
    "InputNormalization",
    "LoadReport",
    "ProDAClassifierModule",
    "build_segmentor",
    "load_discriminator_weights",
    "load_init_weights",
    "load_released_checkpoint",
    "load_state_dict_strictly",
    "normalize_images",
]


def build_segmentor(model_config: Any, num_classes: int, load_weights: bool = True) -> nn.Module:
    """Build the segmentor a validated `model:` section describes, with its weights.

    Args:
        model_config: the `Config` dataclass instance of a registered model (`config.model`).
        num_classes: classes of the label space (`LabelSpace.num_classes`).
        load_weights: load `model_config.released` (strictly) or else `model_config.init`
            (init weights, heads skipped when they do not fit). False builds the randomly
            initialised network, e.g. before restoring a training checkpoint.

    Returns:
        The segmentor (see docs/architecture.md "Models"); `segmentor.load_report` holds the
        LoadReport of the weights loaded, or None.

    Raises:
        ConfigError: unknown model name or invalid settings.
        CheckpointError: weights that cannot be read or do not fit.
    """
    entry = MODELS.get(model_config.name)
    segmentor = entry.from_config(model_config, num_classes)
    report = None
    if load_weights:
        released = getattr(model_config, "released", None)
        init = getattr(model_config, "init", None)
        if released:
            report = load_released_checkpoint(
                segmentor, released, sha256=getattr(model_config, "released_sha256", None)
            )
        elif init:
            report = load_init_weights(
                segmentor, init, sha256=getattr(model_config, "init_sha256", None)
            )
    segmentor.load_report = report
    return segmentor
