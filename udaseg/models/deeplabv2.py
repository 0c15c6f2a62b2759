"""DeepLabV2 on the Caffe-style ResNet, key-compatible with the released UDA checkpoints.

Covers AdaptSegNet `Res_Deeplab` / `DeeplabMulti`, ADVENT `get_deeplab_v2`, BDL, FDA, DACS and
CRST (REFERENCE §1.1). The default head (`head="aspp_sum"`) is the `Classifier_Module` ASPP:
four dilated 3x3 convs whose outputs are summed. AdaptSegNet, DACS and Alonso return inside the
summing loop, so only the dilation-6 and -12 branches count (REFERENCE §1.2, §7.1):
`aspp_branches=2` reproduces that, and the released checkpoints of those repos need it. The four
convs always exist, so the keys match.

`head="proda"` is ProDA's `Classifier_Module2` (REFERENCE §1.4, microsoft/ProDA
models/deeplabv2.py): five 256-channel branches with GroupNorm and ReLU, concatenated, a
squeeze-and-excitation block, a 3x3 bottleneck conv and a dropout + 1x1 classifier, under the
same `layer5.` prefix and with ProDA's own key names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from udaseg.errors import ConfigError
from udaseg.models.normalization import InputNormalization
from udaseg.models.resnet import DEPTH_BLOCKS, CaffeResNet, make_batch_norm
from udaseg.registry import MODELS

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")

HEAD_TYPES: tuple[str, ...] = ("aspp_sum", "proda")


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


def check_head(head: str, multi_level: bool, branches: int) -> None:
    """ConfigError unless the head type exists and fits the other settings."""
    if head not in HEAD_TYPES:
        raise ConfigError(f"head: expected one of {', '.join(HEAD_TYPES)}, got {head!r}")
    if head == "proda" and multi_level:
        raise ConfigError(
            "head: proda is single-level (ProDA has one head, on layer4); set "
            "model.multi_level=false"
        )
    if head == "proda" and branches != 4:
        raise ConfigError(
            "aspp_branches: ProDA's head concatenates all of its branches; aspp_branches=2 "
            "(AdaptSegNet's summing bug) applies only to head=aspp_sum"
        )


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


# ProDA's decoder at the released width (stem 64): 256 channels per branch, GroupNorm(32), an SE
# block reducing its 1280 inputs by 16 (to 80).
PRODA_CHANNELS_AT_WIDTH_64 = 256
PRODA_GROUP_NORM_GROUPS = 32
PRODA_SQUEEZE_REDUCTION = 16
PRODA_DROPOUT = 0.1


class SqueezeExcitation(nn.Module):
    """ProDA's `SEBlock`: channel weights from the global average, applied multiplicatively.

    `se.0` is Linear(channels -> channels // reduction), `se.2` Linear(back to channels); the
    ReLU (`se.1`) and Sigmoid (`se.3`) have no parameters, so the keys are ProDA's.

    Shapes: [B, channels, h, w] -> [B, channels, h, w].
    """

    def __init__(self, channels: int, reduction: int = PRODA_SQUEEZE_REDUCTION) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.se = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_weights = self.se(x.mean(dim=(2, 3)))
        return x * channel_weights[:, :, None, None]


def proda_decoder_channels(width: int) -> int:
    """Channels of ProDA's decoder for a backbone of stem width `width`: 256 at the released 64,
    scaled proportionally (at least 1) so that narrow test members stay small."""
    return max(PRODA_CHANNELS_AT_WIDTH_64 * width // 64, 1)


class ProDAClassifierModule(nn.Module):
    """ProDA's head `Classifier_Module2` (REFERENCE §1.4), in ProDA's key layout.

    - `conv2d_list.0` = Sequential(1x1 conv in->D with bias, GroupNorm, ReLU);
      `conv2d_list.1..4` = Sequential(3x3 conv in->D with bias at dilation = padding = d,
      GroupNorm, ReLU), one per entry of `dilations`;
    - the five outputs are concatenated (5D channels);
    - `bottleneck` = Sequential(SqueezeExcitation(5D), 3x3 conv 5D->D with bias, GroupNorm);
    - `head` = Sequential(Dropout2d(0.1), 1x1 conv D->num_classes without bias).

    D is `channels` (256 for the released ResNet-101); GroupNorm uses gcd(32, D) groups, which
    is ProDA's 32 whenever D is a multiple of 32.

    Init is ProDA's effective one: its ResNet draws every conv weight (the head's included,
    overriding the head's own N(0, 0.001)) from N(0, 0.01) after the head is built, which
    `CaffeResNet.initialize_weights` repeats; here the SE Linears get Kaiming normal (fan out)
    weights and zero biases and the bottleneck conv a zero bias, while the branch convs keep
    PyTorch's default biases (ProDA's own init loop over `conv2d_list` never matches, because
    its entries are Sequentials, not convs).

    Shapes: [B, in_channels, h, w] -> logits [B, num_classes, h, w], and from
    `forward_with_features` also the features [B, D, h, w] the 1x1 classifier reads.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dilations: tuple[int, ...] = (6, 12, 18, 24),
        channels: int = PRODA_CHANNELS_AT_WIDTH_64,
        dropout: float = PRODA_DROPOUT,
    ) -> None:
        super().__init__()
        self.channels = channels
        groups = math.gcd(PRODA_GROUP_NORM_GROUPS, channels)

        def branch(kernel_size: int, dilation: int) -> nn.Sequential:
            padding = dilation if kernel_size == 3 else 0
            return nn.Sequential(
                nn.Conv2d(
                    in_channels,
                    channels,
                    kernel_size=kernel_size,
                    padding=padding,
                    dilation=dilation,
                    bias=True,
                ),
                nn.GroupNorm(groups, channels),
                nn.ReLU(inplace=True),
            )

        self.conv2d_list = nn.ModuleList(
            [branch(1, 1)] + [branch(3, dilation) for dilation in dilations]
        )
        concatenated = channels * (len(dilations) + 1)
        self.bottleneck = nn.Sequential(
            SqueezeExcitation(concatenated),
            nn.Conv2d(concatenated, channels, kernel_size=3, padding=1, bias=True),
            nn.GroupNorm(groups, channels),
        )
        self.head = nn.Sequential(
            nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, kernel_size=1, bias=False)
        )
        for module in self.bottleneck.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_out")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.zeros_(module.bias)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, num_classes, h, w], features [B, channels, h, w]) of x [B, in, h, w].

        The features are taken after the dropout, as ProDA's `feat` (identical to the
        bottleneck's output in eval mode).
        """
        concatenated = torch.cat([branch(x) for branch in self.conv2d_list], dim=1)
        features = self.head[0](self.bottleneck(concatenated))
        return self.head[1](features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


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
    # "aspp_sum": Classifier_Module (summed ASPP); "proda": ProDA's Classifier_Module2 (§1.4)
    head: Literal["aspp_sum", "proda"] = "aspp_sum"
    bn: Literal["half_frozen", "frozen", "trainable"] = "half_frozen"  # REFERENCE §7.2
    # ProDA's --bn_clr (REFERENCE §1.4): an extra BatchNorm `bn_pretrain` on layer4's output, which
    # its SimCLR-initialised stage-2/3 students (and the released stage-2/3 files) carry.
    layer4_output_bn: bool = False
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
        check_head(self.head, self.multi_level, self.aspp_branches)
        check_sha256_field(self.init_sha256, "init_sha256")
        check_sha256_field(self.released_sha256, "released_sha256")


@MODELS.register("deeplabv2")
class DeepLabV2(CaffeResNet):
    """DeepLabV2-ResNet with one (`layer5` on layer4) or two (`layer5` on layer3 as auxiliary,
    `layer6` on layer4 as main) classifier heads, normalising its own input.

    Args:
        num_classes: output classes of the heads.
        blocks, width, bn: see `CaffeResNet`.
        multi_level: add the auxiliary head on layer3 (AdaptSegNet/ADVENT naming).
        aspp_dilations, aspp_branches: see `ClassifierModule` (ProDA's head uses the dilations
            for its four 3x3 branches and always concatenates all of them).
        input_normalization: preset of `normalization.py` applied in `forward`.
        head: "aspp_sum" (`ClassifierModule`, the classifier reads layer4 directly) or "proda"
            (`ProDAClassifierModule`, single-level only, with a decoder of
            `proda_decoder_channels(width)` channels: 256 at the released width 64).
        layer4_output_bn: normalise layer4's output with an extra BatchNorm `bn_pretrain` (in
            the `bn` mode) before the main head, as ProDA's `--bn_clr` students do.

    Attributes:
        num_classes, multi_level, head_type,
        feature_channels (channels of the features the main classifier reads: layer4's, 2048
            at width 64, for "aspp_sum"; the decoder's, 256 at width 64, for "proda"),
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
        head: str = "aspp_sum",
        layer4_output_bn: bool = False,
    ) -> None:
        super().__init__(blocks=blocks, width=width, bn=bn)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        check_head(head, multi_level, aspp_branches)
        self.num_classes = num_classes
        self.multi_level = multi_level
        self.head_type = head
        self.normalize = InputNormalization(input_normalization)
        dilations = tuple(aspp_dilations)
        if head == "proda":
            self.layer5: nn.Module = ProDAClassifierModule(
                self.stage_channels[3],
                num_classes,
                dilations,
                channels=proda_decoder_channels(width),
            )
            self.feature_channels = self.layer5.channels
            self.head_prefixes: tuple[str, ...] = ("layer5.",)
        elif multi_level:
            self.layer5 = ClassifierModule(
                self.stage_channels[2], num_classes, dilations, aspp_branches
            )
            self.layer6 = ClassifierModule(
                self.stage_channels[3], num_classes, dilations, aspp_branches
            )
            self.feature_channels = self.stage_channels[3]
            self.head_prefixes = ("layer5.", "layer6.")
        else:
            self.layer5 = ClassifierModule(
                self.stage_channels[3], num_classes, dilations, aspp_branches
            )
            self.feature_channels = self.stage_channels[3]
            self.head_prefixes = ("layer5.",)
        self.bn_pretrain: nn.Module | None = None
        self.set_layer4_output_bn(layer4_output_bn)
        # Keys an init file may lack or carry with other shapes: the heads (REFERENCE §1.3) and
        # the extra BN, which ImageNet and SimCLR files do not have (ProDA leaves it at 1 / 0).
        self.init_optional_prefixes = (*self.head_prefixes, "bn_pretrain.")
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
            head=config.head,
            layer4_output_bn=config.layer4_output_bn,
        )
        model.config = config
        return model

    def set_layer4_output_bn(self, enabled: bool) -> None:
        """Add (freshly initialised: weight 1, bias 0, running mean 0, var 1) or remove the
        extra BatchNorm `bn_pretrain` on layer4's output. ProDA's stage-2 teacher is the
        stage-1 model, which has none while its student has one (`--bn_clr` without
        `--ema_bn`), so a teacher copied from the student may need it removed."""
        if enabled and self.bn_pretrain is None:
            self.bn_pretrain = make_batch_norm(self.stage_channels[3], self.bn_mode)
        elif not enabled:
            self.bn_pretrain = None

    @property
    def head(self) -> nn.Module:
        """The main head (`layer6` when multi-level, else `layer5`)."""
        return self.layer6 if self.multi_level else self.layer5

    def head_modules(self) -> list[nn.Module]:
        """The classifier head(s), plus the extra layer4 BN, which ProDA trains with its head
        (`get_10x_lr_params` lists `bn_pretrain` first)."""
        heads = [self.layer5, self.layer6] if self.multi_level else [self.layer5]
        return heads if self.bn_pretrain is None else [self.bn_pretrain, *heads]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters to optimise, split as the papers do (REFERENCE §1.1 "Parameter groups").

        "backbone" = stem and layer1..4 (trained at lr), "head" = the classifier head(s)
        (trained at head_lr_multiplier x lr; ProDA's whole `layer5` decoder is in this group,
        as in its `get_10x_lr_params`). Only parameters with requires_grad, each once.
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
            "features": [B, feature_channels, h, w], what the main classifier reads: the
                layer4 output (after `bn_pretrain` when present) for "aspp_sum" (its ASPP convs read layer4 directly), the
                decoder output after dropout for "proda" (ProDA's `feat`).
        """
        layer3, layer4 = self.forward_stages(self.normalize(images))
        if self.bn_pretrain is not None:
            layer4 = self.bn_pretrain(layer4)
        if self.head_type == "proda":
            logits, features = self.layer5.forward_with_features(layer4)
        else:
            logits, features = self.head(layer4), layer4
        outputs = {"logits": logits, "features": features}
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
