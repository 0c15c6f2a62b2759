"""DeepLabV2 on the Caffe-style ResNet, key-compatible with the released UDA checkpoints.

Covers AdaptSegNet `Res_Deeplab` / `DeeplabMulti`, ADVENT `get_deeplab_v2`, BDL, FDA, DACS and
CRST (REFERENCE §1.1). The head is the `Classifier_Module` ASPP: four dilated 3x3 convs whose
outputs are summed. AdaptSegNet, DACS and Alonso return inside the summing loop, so only the
dilation-6 and -12 branches count (REFERENCE §1.2, §7.1): `aspp_branches=2` reproduces that, and
the released checkpoints of those repos need it. The four convs always exist, so the keys match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from udaseg.errors import ConfigError
from udaseg.models.normalization import InputNormalization
from udaseg.models.resnet import DEPTH_BLOCKS, CaffeResNet
from udaseg.registry import MODELS

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def check_sha256_field(value: str | None, key: str) -> None:
    """ConfigError unless `value` is None or 64 hexadecimal digits."""
    if value is not None and not _SHA256.match(value):
        raise ConfigError(f"{key}: expected 64 hexadecimal digits (a sha256), got {value!r}")


def check_aspp(dilations: tuple[int, ...], branches: int) -> None:
    """ConfigError unless the ASPP settings describe the released four-conv head."""
    if len(dilations) != 4:
        raise ConfigError(
            f"aspp_dilations: the released heads have four convs (keys conv2d_list.0..3), "
            f"got {len(dilations)} dilations"
        )
    if any(dilation < 1 for dilation in dilations):
        raise ConfigError(f"aspp_dilations: dilations must be >= 1, got {list(dilations)}")
    if branches not in (2, 4):
        raise ConfigError(f"aspp_branches: expected 2 or 4, got {branches}")


class ClassifierModule(nn.Module):
    """The DeepLabV2 ASPP head (`Classifier_Module`): summed dilated 3x3 convs, no BN/ReLU.

    Args:
        in_channels: channels of the feature map.
        num_classes: output channels.
        dilations: one 3x3 conv per entry, with padding = dilation (spatial size is kept).
        branches_used: how many of the convs (the first ones) are summed: 4 = all (ADVENT, BDL,
            FDA, CRST), 2 = the AdaptSegNet/DACS "return inside the loop" forward (§1.2).

    Shapes: [B, in_channels, h, w] -> [B, num_classes, h, w].
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dilations: tuple[int, ...] = (6, 12, 18, 24),
        branches_used: int = 4,
    ) -> None:
        super().__init__()
        if not 1 <= branches_used <= len(dilations):
            raise ValueError(f"branches_used={branches_used} with {len(dilations)} convs")
        self.branches_used = branches_used
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(
                in_channels,
                num_classes,
                kernel_size=3,
                stride=1,
                padding=dilation,
                dilation=dilation,
                bias=True,
            )
            for dilation in dilations
        )
        # Only the weights are drawn; biases keep PyTorch's default init as in the released code.
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1 : self.branches_used]:
            out = out + conv(x)
        return out

    def extra_repr(self) -> str:
        return f"branches_used={self.branches_used}"


@dataclass
class DeepLabV2Config:
    """`model:` section for `name: deeplabv2`. Defaults are the papers' DeepLabV2-ResNet101."""

    name: str = "deeplabv2"
    depth: Literal[50, 101] = 101  # bottleneck counts (3,4,6,3) or (3,4,23,3)
    blocks: tuple[int, int, int, int] | None = None  # overrides depth's counts (small members)
    width: int = 64  # stem channels; stage outputs are 4 x width x (1,2,4,8); 64 = released
    multi_level: bool = False  # AdaptSegNet/ADVENT: aux head `layer5` on layer3, main `layer6`
    aspp_branches: Literal[2, 4] = 4  # 2 = AdaptSegNet/DACS buggy forward (REFERENCE §1.2)
    aspp_dilations: tuple[int, ...] = (6, 12, 18, 24)  # four convs, as in the released heads
    bn: Literal["half_frozen", "frozen", "trainable"] = "half_frozen"  # REFERENCE §7.2
    input_normalization: Literal["caffe_bgr", "imagenet", "unit"] = "caffe_bgr"
    init: str | None = None  # init weights: path, URL or known file name (models/weights.py)
    init_sha256: str | None = None  # expected sha256 of the init file
    released: str | None = None  # a released adapted checkpoint loaded strictly instead of init
    released_sha256: str | None = None  # expected sha256 of that checkpoint

    def validate(self) -> None:
        if self.blocks is not None and any(count < 1 for count in self.blocks):
            raise ConfigError(f"blocks: counts must be >= 1, got {list(self.blocks)}")
        if self.width < 1:
            raise ConfigError(f"width: must be >= 1, got {self.width}")
        check_aspp(self.aspp_dilations, self.aspp_branches)
        check_sha256_field(self.init_sha256, "init_sha256")
        check_sha256_field(self.released_sha256, "released_sha256")


@MODELS.register("deeplabv2")
class DeepLabV2(CaffeResNet):
    """DeepLabV2-ResNet with one (`layer5` on layer4) or two (`layer5` on layer3 as auxiliary,
    `layer6` on layer4 as main) ASPP heads, normalising its own input.

    Args:
        num_classes: output classes of the heads.
        blocks, width, bn: see `CaffeResNet`.
        multi_level: add the auxiliary head on layer3 (AdaptSegNet/ADVENT naming).
        aspp_dilations, aspp_branches: see `ClassifierModule`.
        input_normalization: preset of `normalization.py` applied in `forward`.

    Attributes:
        num_classes, feature_channels (layer4 channels, 2048 at width 64), multi_level,
        head_prefixes (state_dict prefixes of the classifier heads, main head last),
        init_optional_prefixes (keys an init file may lack or carry with other shapes),
        config (the DeepLabV2Config it was built from, when built through `from_config`).
    """

    Config = DeepLabV2Config

    def __init__(
        self,
        num_classes: int,
        blocks: tuple[int, int, int, int] = DEPTH_BLOCKS[101],
        width: int = 64,
        multi_level: bool = False,
        aspp_dilations: tuple[int, ...] = (6, 12, 18, 24),
        aspp_branches: int = 4,
        bn: str = "half_frozen",
        input_normalization: str = "caffe_bgr",
    ) -> None:
        super().__init__(blocks=blocks, width=width, bn=bn)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.multi_level = multi_level
        self.feature_channels = self.stage_channels[3]
        self.normalize = InputNormalization(input_normalization)
        dilations = tuple(aspp_dilations)
        if multi_level:
            self.layer5 = ClassifierModule(
                self.stage_channels[2], num_classes, dilations, aspp_branches
            )
            self.layer6 = ClassifierModule(
                self.stage_channels[3], num_classes, dilations, aspp_branches
            )
            self.head_prefixes: tuple[str, ...] = ("layer5.", "layer6.")
        else:
            self.layer5 = ClassifierModule(
                self.stage_channels[3], num_classes, dilations, aspp_branches
            )
            self.head_prefixes = ("layer5.",)
        # Keys an init file may lack or carry with other shapes: the heads (REFERENCE §1.3).
        self.init_optional_prefixes = self.head_prefixes
        self.initialize_weights()
        self.config: DeepLabV2Config | None = None

    @classmethod
    def from_config(cls, config: DeepLabV2Config, num_classes: int) -> DeepLabV2:
        """Build from a validated `model:` section (weights are loaded by `build_segmentor`)."""
        config.validate()
        model = cls(
            num_classes=num_classes,
            blocks=tuple(config.blocks)
            if config.blocks is not None
            else DEPTH_BLOCKS[config.depth],
            width=config.width,
            multi_level=config.multi_level,
            aspp_dilations=tuple(config.aspp_dilations),
            aspp_branches=config.aspp_branches,
            bn=config.bn,
            input_normalization=config.input_normalization,
        )
        model.config = config
        return model

    @property
    def head(self) -> ClassifierModule:
        """The main head (`layer6` when multi-level, else `layer5`)."""
        return self.layer6 if self.multi_level else self.layer5

    def head_modules(self) -> list[nn.Module]:
        return [self.layer5, self.layer6] if self.multi_level else [self.layer5]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters to optimise, split as the papers do (REFERENCE §1.1 "Parameter groups").

        "backbone" = stem and layer1..4 (trained at lr), "head" = the classifier head(s)
        (trained at head_lr_multiplier x lr). Only parameters with requires_grad, each once.
        """
        return {
            "backbone": _trainable(self.backbone_modules()),
            "head": _trainable(self.head_modules()),
        }

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segment a batch.

        Args:
            images: float [B, 3, H, W], RGB, 0..255.

        Returns:
            "logits": [B, num_classes, h, w] from the main head at stride 8, not upsampled
                (h = 65 for H = 512 because of the ceil-mode max-pool);
            "aux_logits": [B, num_classes, h, w] from the layer3 head (multi-level only);
            "features": [B, feature_channels, h, w], the layer4 output.
        """
        layer3, layer4 = self.forward_stages(self.normalize(images))
        outputs = {"logits": self.head(layer4), "features": layer4}
        if self.multi_level:
            outputs["aux_logits"] = self.layer5(layer3)
        return outputs


def _trainable(modules: list[nn.Module]) -> list[nn.Parameter]:
    """requires_grad parameters of `modules`, in order, each once."""
    seen: set[int] = set()
    parameters = []
    for module in modules:
        for parameter in module.parameters():
            if parameter.requires_grad and id(parameter) not in seen:
                seen.add(id(parameter))
                parameters.append(parameter)
    return parameters
