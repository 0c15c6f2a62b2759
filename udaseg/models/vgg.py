"""AdaptSegNet's `DeeplabVGG`: a dilated VGG16 with the DeepLabV2 ASPP head (REFERENCE §1.6).

Layout (keys `features.N.*` and `classifier.conv2d_list.{0..3}.*`): torchvision vgg16's
`features` with pool4 (index 23) and pool5 (index 30) removed, which leaves output stride 8 and
shifts conv5_1..5_3 to indices 23/25/27, where they get dilation 2 and padding 2; then fc6 (3x3,
dilation 4, 512->1024) at index 29 and fc7 (3x3, dilation 4, 1024->1024) at index 31, each
followed by a ReLU; then the ASPP head on 1024 channels. No dropout.

A torchvision-keyed vgg16 state_dict (as AdaptSegNet's converted Caffe VGG16 init) is accepted
by `adapt_init_state_dict`, which renumbers conv5 and drops torchvision's fully connected layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from udaseg.models.deeplabv2 import ClassifierModule, check_aspp, check_sha256_field
from udaseg.models.normalization import InputNormalization
from udaseg.registry import MODELS

# (out_channels or "pool") of torchvision's vgg16 configuration "D", pool4/pool5 removed.
_VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, 512, 512, 512,
)  # fmt: skip
_CONV5_INDICES = (23, 25, 27)  # conv5_1..conv5_3 after pool4 is removed: dilation 2
FC6_INDEX = 29
FC7_INDEX = 31

# torchvision vgg16 index -> ours: 0..22 unchanged, conv5_x at 24/26/28 move down by one.
_TORCHVISION_CONV5 = {24: 23, 26: 25, 28: 27}


@dataclass
class DeepLabVGGConfig:
    """`model:` section for `name: deeplabv2_vgg16` (AdaptSegNet's DeeplabVGG)."""

    name: str = "deeplabv2_vgg16"
    # AdaptSegNet's deeplab_vgg.py returns inside the ASPP loop (REFERENCE §1.2): 2 branches.
    aspp_branches: Literal[2, 4] = 2
    aspp_dilations: tuple[int, ...] = (6, 12, 18, 24)
    input_normalization: Literal["caffe_bgr", "imagenet", "unit"] = "caffe_bgr"
    # AdaptSegNet's DeeplabVGG.optim_parameters gives every parameter the same lr; true puts
    # the classifier in the "head" group (head_lr_multiplier) as for the ResNet models.
    separate_head_lr: bool = False
    init: str | None = None  # init weights: path, URL or known file name (models/weights.py)
    init_sha256: str | None = None  # expected sha256 of the init file
    released: str | None = None  # a released adapted checkpoint loaded strictly instead of init
    released_sha256: str | None = None  # expected sha256 of that checkpoint

    def validate(self) -> None:
        check_aspp(self.aspp_dilations, self.aspp_branches)
        check_sha256_field(self.init_sha256, "init_sha256")
        check_sha256_field(self.released_sha256, "released_sha256")


@MODELS.register("deeplabv2_vgg16")
class DeepLabVGG(nn.Module):
    """Dilated VGG16 + ASPP, output stride 8.

    Args:
        num_classes: output classes of the head.
        aspp_dilations, aspp_branches: see `ClassifierModule`.
        input_normalization: preset of `normalization.py` applied in `forward`.
        separate_head_lr: see `DeepLabVGGConfig`.

    Attributes: num_classes, feature_channels (1024), multi_level (False), head_prefixes,
    init_optional_prefixes (keys an init file may lack or carry with other shapes).
    """

    Config = DeepLabVGGConfig

    def __init__(
        self,
        num_classes: int,
        aspp_dilations: tuple[int, ...] = (6, 12, 18, 24),
        aspp_branches: int = 2,
        input_normalization: str = "caffe_bgr",
        separate_head_lr: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.multi_level = False
        self.feature_channels = 1024
        self.separate_head_lr = separate_head_lr
        self.head_prefixes: tuple[str, ...] = ("classifier.",)
        # Layers an init file may lack: AdaptSegNet's VGG16 init covers conv1..conv5 only, fc6
        # and fc7 are new convolutions.
        self.init_optional_prefixes = (
            *self.head_prefixes,
            f"features.{FC6_INDEX}.",
            f"features.{FC7_INDEX}.",
        )
        self.normalize = InputNormalization(input_normalization)
        layers: list[nn.Module] = []
        in_channels = 3
        for item in _VGG16_LAYOUT:
            if item == "pool":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            dilation = 2 if len(layers) in _CONV5_INDICES else 1
            conv = nn.Conv2d(in_channels, item, kernel_size=3, padding=dilation, dilation=dilation)
            # torchvision's VGG init, which the released code inherits when not loading weights.
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_channels = item
        # fc6/fc7 keep PyTorch's default init, as in the released code.
        layers += [nn.Conv2d(512, 1024, kernel_size=3, padding=4, dilation=4), nn.ReLU(True)]
        layers += [nn.Conv2d(1024, 1024, kernel_size=3, padding=4, dilation=4), nn.ReLU(True)]
        self.features = nn.Sequential(*layers)
        self.classifier = ClassifierModule(
            1024, num_classes, tuple(aspp_dilations), branches_used=aspp_branches
        )
        self.config: DeepLabVGGConfig | None = None

    @classmethod
    def from_config(cls, config: DeepLabVGGConfig, num_classes: int) -> DeepLabVGG:
        config.validate()
        model = cls(
            num_classes=num_classes,
            aspp_dilations=tuple(config.aspp_dilations),
            aspp_branches=config.aspp_branches,
            input_normalization=config.input_normalization,
            separate_head_lr=config.separate_head_lr,
        )
        model.config = config
        return model

    @property
    def head(self) -> ClassifierModule:
        return self.classifier

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"backbone": features (+ classifier unless separate_head_lr), "head": ...}."""
        features = [p for p in self.features.parameters() if p.requires_grad]
        head = [p for p in self.classifier.parameters() if p.requires_grad]
        if self.separate_head_lr:
            return {"backbone": features, "head": head}
        return {"backbone": features + head, "head": []}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segment a batch.

        Args:
            images: float [B, 3, H, W], RGB, 0..255.

        Returns:
            "logits": [B, num_classes, H/8, W/8] (floor division at each of the 3 pools);
            "features": [B, 1024, H/8, W/8], the fc7 output.
        """
        features = self.features(self.normalize(images))
        return {"logits": self.classifier(features), "features": features}

    @staticmethod
    def adapt_init_state_dict(
        state_dict: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Map a torchvision-keyed vgg16 state_dict onto this layout, if it is one.

        torchvision numbers conv5_1..5_3 as features.24/26/28 (before pool5 at 30) and has fully
        connected `classifier.{0,3,6}` layers; ours are features.23/25/27 and an ASPP classifier.

        Returns:
            (the state_dict to load, notes on what was changed).
        """
        if "features.24.weight" not in state_dict:
            return state_dict, []
        adapted: dict[str, torch.Tensor] = {}
        dropped = []
        for key, value in state_dict.items():
            parts = key.split(".")
            if parts[0] == "features" and len(parts) == 3 and int(parts[1]) in _TORCHVISION_CONV5:
                adapted[f"features.{_TORCHVISION_CONV5[int(parts[1])]}.{parts[2]}"] = value
            elif parts[0] == "classifier" and parts[1] in ("0", "3", "6"):
                # torchvision's Linear fc6/fc7/fc8; ours are convolutions with other shapes.
                dropped.append(key)
            else:
                adapted[key] = value
        notes = ["renumbered torchvision vgg16 conv5 (features.24/26/28 -> 23/25/27)"]
        if dropped:
            notes.append(f"dropped torchvision's fully connected layers ({', '.join(dropped)})")
        return adapted, notes
