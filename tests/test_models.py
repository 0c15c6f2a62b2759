"""DeepLabV2 / VGG segmentors, normalisation and the discriminator against REFERENCE §1, §2.

Expected key lists, shapes and the functional reference forward below are written from the
REFERENCE's description, independently of udaseg's module code. Big networks are built on the
meta device (shapes without memory or compute); anything that runs uses a narrow, shallow member.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from udaseg.config import load_config
from udaseg.errors import ConfigError
from udaseg.models import build_segmentor
from udaseg.models.deeplabv2 import ClassifierModule, DeepLabV2
from udaseg.models.discriminators import (
    FCDiscriminator,
    convert_advent_discriminator_state_dict,
    load_discriminator_weights,
)
from udaseg.models.normalization import InputNormalization, normalize_images
from udaseg.models.vgg import DeepLabVGG
from udaseg.models.weights import load_released_checkpoint
from udaseg.registry import MODELS

CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def small(**overrides) -> DeepLabV2:
    """A narrow, shallow member: one bottleneck per stage, stem width 4."""
    settings = dict(num_classes=5, blocks=(1, 1, 1, 1), width=4, aspp_dilations=(1, 2, 3, 4))
    settings.update(overrides)
    return DeepLabV2(**settings)


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine parameters and running statistics, so that BN matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.01)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.01 + 0.001)


def images(batch: int = 2, height: int = 40, width: int = 56, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator) * 255


# --- Key layout ------------------------------------------------------------------------------


def expected_resnet_keys(blocks, heads) -> list[str]:
    """The released DeepLabV2-ResNet key list, from REFERENCE §1.1 "State_dict key layout".

    Within a bottleneck the released code registers conv1, bn1, conv2, bn2, conv3, bn3, then
    the downsample branch (first block of each stage only).
    """
    keys = ["conv1.weight"] + [f"bn1.{name}" for name in BN_KEYS]
    for stage, count in enumerate(blocks, start=1):
        for index in range(count):
            prefix = f"layer{stage}.{index}"
            for n in (1, 2, 3):
                keys.append(f"{prefix}.conv{n}.weight")
                keys += [f"{prefix}.bn{n}.{name}" for name in BN_KEYS]
            if index == 0:
                keys.append(f"{prefix}.downsample.0.weight")
                keys += [f"{prefix}.downsample.1.{name}" for name in BN_KEYS]
    for head in heads:
        for branch in range(4):
            keys += [f"{head}.conv2d_list.{branch}.weight", f"{head}.conv2d_list.{branch}.bias"]
    return keys


def test_resnet101_single_level_keys_and_shapes():
    with torch.device("meta"):
        model = DeepLabV2(num_classes=19)
    state = model.state_dict()
    assert list(state) == expected_resnet_keys((3, 4, 23, 3), ["layer5"])
    # 33 bottlenecks x (3 convs + 3 BNs x 5) + 4 downsamples x 6 + stem 6 + head 8.
    assert len(state) == 33 * 18 + 4 * 6 + 6 + 8 == 632
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.2.conv3.weight": (256, 64, 1, 1),
        "layer2.0.conv1.weight": (128, 256, 1, 1),
        "layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
        "layer3.22.conv2.weight": (256, 256, 3, 3),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.bn3.weight": (2048,),
        "layer5.conv2d_list.3.weight": (19, 2048, 3, 3),
        "layer5.conv2d_list.3.bias": (19,),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert model.feature_channels == 2048 and model.num_classes == 19
    assert not any(key.startswith("normalize") for key in state)


def test_resnet101_multi_level_keys_and_heads():
    with torch.device("meta"):
        model = DeepLabV2(num_classes=19, multi_level=True)
    state = model.state_dict()
    assert list(state) == expected_resnet_keys((3, 4, 23, 3), ["layer5", "layer6"])
    assert len(state) == 640
    # AdaptSegNet/ADVENT: layer5 = aux head on layer3 (1024 in), layer6 = main head on layer4.
    assert tuple(state["layer5.conv2d_list.0.weight"].shape) == (19, 1024, 3, 3)
    assert tuple(state["layer6.conv2d_list.0.weight"].shape) == (19, 2048, 3, 3)


def test_resnet50_block_counts():
    with torch.device("meta"):
        model = DeepLabV2(num_classes=19, blocks=(3, 4, 6, 3))
    assert list(model.state_dict()) == expected_resnet_keys((3, 4, 6, 3), ["layer5"])


def test_strides_dilations_and_padding_of_the_released_layout():
    with torch.device("meta"):
        model = DeepLabV2(num_classes=19)
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == (
        (7, 7),
        (2, 2),
        (3, 3),
    )
    assert model.conv1.bias is None
    assert model.maxpool.ceil_mode and model.maxpool.kernel_size == 3 and model.maxpool.padding == 1
    # Stride on the 1x1 conv1 of layer2's first block, not on the 3x3.
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert model.layer2[0].downsample[0].stride == (2, 2)
    for stage, dilation in (
        (model.layer1, 1),
        (model.layer2, 1),
        (model.layer3, 2),
        (model.layer4, 4),
    ):
        for block in stage:
            assert block.conv2.dilation == (dilation, dilation)
            assert block.conv2.padding == (dilation, dilation)
            assert block.conv2.stride == (1, 1) and block.conv3.stride == (1, 1)
    for index, dilation in enumerate((6, 12, 18, 24)):
        conv = model.layer5.conv2d_list[index]
        assert conv.dilation == (dilation, dilation) and conv.padding == (dilation, dilation)
        assert conv.bias is not None


def test_initialisation_is_normal_001_and_bn_identity():
    torch.manual_seed(0)
    model = DeepLabV2(num_classes=19, blocks=(1, 1, 1, 1), width=16)
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Conv2d)])
    assert abs(weights.std().item() - 0.01) < 5e-4 and abs(weights.mean().item()) < 5e-4
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


# --- Forward ----------------------------------------------------------------------------------


def reference_forward(
    state, images, dilations, branches, multi_level, bn_training=False, heads=True
):
    """DeepLabV2 written with torch.nn.functional from REFERENCE §1.1 alone, for one bottleneck
    per stage: Caffe BGR mean subtraction; stem 7x7/2 pad 3, BN, ReLU, max-pool 3/2 pad 1 ceil;
    bottleneck 1x1 (stride) -> 3x3 (dilation = padding) -> 1x1, projection shortcut, ReLU after
    the sum; stages s1d1, s2d1, s1d2, s1d4; heads summing the first `branches` dilated convs
    (`heads=False`: only the layer4 map, as the third element)."""
    state = {key: value.clone() for key, value in state.items()}
    mean = torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    x = images[:, [2, 1, 0]] - mean

    def bn(x, name):
        return F.batch_norm(
            x,
            state[f"{name}.running_mean"],
            state[f"{name}.running_var"],
            state[f"{name}.weight"],
            state[f"{name}.bias"],
            training=bn_training,
            eps=1e-5,
        )

    x = F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
    layer3 = None
    for stage, (stride, dilation) in enumerate(((1, 1), (2, 1), (1, 2), (1, 4)), start=1):
        p = f"layer{stage}.0"
        out = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"], stride=stride), f"{p}.bn1"))
        out = F.conv2d(out, state[f"{p}.conv2.weight"], padding=dilation, dilation=dilation)
        out = F.relu(bn(out, f"{p}.bn2"))
        out = bn(F.conv2d(out, state[f"{p}.conv3.weight"]), f"{p}.bn3")
        shortcut = bn(
            F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1"
        )
        x = F.relu(out + shortcut)
        if stage == 3:
            layer3 = x

    def head(features, name):
        total = 0
        for index, dilation in enumerate(dilations[:branches]):
            weight = state[f"{name}.conv2d_list.{index}.weight"]
            bias = state[f"{name}.conv2d_list.{index}.bias"]
            total = total + F.conv2d(features, weight, bias, padding=dilation, dilation=dilation)
        return total

    if not heads:
        return None, None, x
    if multi_level:
        return head(x, "layer6"), head(layer3, "layer5"), x
    return head(x, "layer5"), None, x


@pytest.mark.parametrize("multi_level", [False, True])
@pytest.mark.parametrize("branches", [2, 4])
def test_forward_equals_functional_reference(multi_level, branches):
    torch.manual_seed(1)
    dilations = (1, 2, 3, 4)
    model = small(multi_level=multi_level, aspp_branches=branches, aspp_dilations=dilations)
    randomize_batch_norms(model)
    model.eval()
    batch = images()
    with torch.no_grad():
        outputs = model(batch)
    logits, aux, features = reference_forward(
        model.state_dict(), batch, dilations, branches, multi_level
    )
    torch.testing.assert_close(outputs["logits"], logits, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(outputs["features"], features, rtol=1e-4, atol=1e-6)
    if multi_level:
        torch.testing.assert_close(outputs["aux_logits"], aux, rtol=1e-4, atol=1e-6)
    else:
        assert "aux_logits" not in outputs


def test_train_mode_forward_uses_batch_statistics_like_the_reference():
    torch.manual_seed(2)
    model = small()
    randomize_batch_norms(model)
    state = model.state_dict()
    model.train()
    batch = images(batch=3)
    outputs = model(batch)
    logits, _, _ = reference_forward(state, batch, (1, 2, 3, 4), 4, False, bn_training=True)
    torch.testing.assert_close(outputs["logits"], logits, rtol=1e-4, atol=1e-6)


def test_layer4_map_is_129x65_for_1024x512_and_161x91_for_1280x720():
    model = small(width=2, num_classes=2)
    model.eval()
    with torch.no_grad():
        cityscapes = model(torch.zeros(1, 3, 512, 1024))
        gta = model(torch.zeros(1, 3, 720, 1280))
    assert tuple(cityscapes["features"].shape[2:]) == (65, 129)  # (H, W): 129x65 as W x H
    assert tuple(cityscapes["logits"].shape) == (1, 2, 65, 129)
    assert tuple(gta["logits"].shape[2:]) == (91, 161)


def test_two_branch_aspp_is_the_sum_of_the_first_two_convs_exactly():
    torch.manual_seed(3)
    head = ClassifierModule(8, 3, (6, 12, 18, 24), branches_used=2)
    x = torch.randn(2, 8, 13, 17)
    with torch.no_grad():
        expected = head.conv2d_list[0](x) + head.conv2d_list[1](x)
        assert torch.equal(head(x), expected)
        head.branches_used = 4
        four = expected + head.conv2d_list[2](x) + head.conv2d_list[3](x)
        assert torch.equal(head(x), four)
    # The four convs exist either way, so the checkpoints' keys do not change.
    assert list(small(aspp_branches=2).state_dict()) == list(small(aspp_branches=4).state_dict())


# --- BatchNorm modes and parameter groups -----------------------------------------------------


def batch_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_half_frozen_bn_freezes_affine_but_updates_running_stats():
    model = small(bn="half_frozen")
    norms = batch_norms(model)
    assert len(norms) == 1 + 4 * 4  # stem + (3 + downsample) per stage
    assert all(not p.requires_grad for m in norms for p in m.parameters())
    before = [m.running_mean.clone() for m in norms]
    model.train()
    train_out = model(images())["logits"]
    assert all(not torch.equal(old, m.running_mean) for old, m in zip(before, norms, strict=True))
    assert all(m.num_batches_tracked.item() == 1 for m in norms)
    model.eval()
    with torch.no_grad():
        eval_out = model(images())["logits"]
    assert not torch.allclose(train_out, eval_out)


def test_frozen_bn_never_changes_and_train_equals_eval():
    model = small(bn="frozen")
    randomize_batch_norms(model)
    norms = batch_norms(model)
    assert all(not p.requires_grad for m in norms for p in m.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    train_out = model(images())["logits"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
    with torch.no_grad():
        eval_out = model(images())["logits"]
    assert torch.equal(train_out.detach(), eval_out)
    # Same keys as the other modes, so checkpoints move between them.
    assert list(after) == list(small(bn="half_frozen").state_dict())


def test_trainable_bn_and_param_groups():
    model = small(bn="trainable", multi_level=True)
    assert all(p.requires_grad for m in batch_norms(model) for p in m.parameters())
    groups = model.param_groups()
    named = {id(p): name for name, p in model.named_parameters()}
    backbone = [named[id(p)] for p in groups["backbone"]]
    head = [named[id(p)] for p in groups["head"]]
    assert any(".bn1." in name for name in backbone)
    assert sorted(head) == sorted(n for n in named.values() if n.startswith(("layer5.", "layer6.")))
    assert sorted(backbone + head) == sorted(named.values())


def test_param_groups_of_the_papers_exclude_frozen_bn():
    model = small(multi_level=False)
    groups = model.param_groups()
    named = {id(p): name for name, p in model.named_parameters()}
    backbone = [named[id(p)] for p in groups["backbone"]]
    head = [named[id(p)] for p in groups["head"]]
    # The stem conv and, per stage, 3 convs + the downsample conv; no BN parameter at all.
    expected = ["conv1.weight"]
    for stage in range(1, 5):
        expected += [f"layer{stage}.0.conv{n}.weight" for n in (1, 2, 3)]
        expected.append(f"layer{stage}.0.downsample.0.weight")
    assert backbone == expected
    assert head == [f"layer5.conv2d_list.{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    assert len(set(backbone)) == len(backbone)  # each parameter once
    # A parameter frozen later (e.g. by a method) leaves the groups.
    model.layer1[0].conv1.weight.requires_grad = False
    assert len(model.param_groups()["backbone"]) == 16


# --- Normalisation ----------------------------------------------------------------------------


def test_normalisation_presets_on_a_hand_computed_pixel():
    pixel = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)  # R, G, B
    caffe = normalize_images(pixel, "caffe_bgr").flatten().tolist()
    assert caffe == pytest.approx([30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434])
    imagenet = normalize_images(pixel, "imagenet").flatten().tolist()
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    assert imagenet == pytest.approx(expected, rel=1e-6)
    assert normalize_images(pixel, "unit").flatten().tolist() == pytest.approx(
        [10 / 255, 20 / 255, 30 / 255]
    )
    for preset in ("caffe_bgr", "imagenet", "unit"):
        module = InputNormalization(preset)
        assert module.state_dict() == {}
        assert torch.equal(module(pixel), normalize_images(pixel, preset))
        assert module.to(torch.float64)(pixel.double()).dtype == torch.float64
    with pytest.raises(ConfigError):
        normalize_images(pixel, "bgr")


def test_segmentor_normalises_its_own_input():
    model = small(input_normalization="unit")
    model.eval()
    batch = images()
    with torch.no_grad():
        expected = model.head(model.forward_stages(batch / 255)[1])
        assert torch.allclose(model(batch)["logits"], expected)


# --- Registry, config and build ----------------------------------------------------------------


def test_build_segmentor_from_config_and_validation():
    config = load_config(
        None,
        [
            "model.name=deeplabv2",
            "model.blocks=[1,1,1,1]",
            "model.width=4",
            "model.multi_level=true",
            "model.aspp_branches=2",
            "model.aspp_dilations=[1,2,3,4]",
            "model.bn=frozen",
        ],
    )
    model = build_segmentor(config.model, 7)
    assert isinstance(model, DeepLabV2) and model.num_classes == 7 and model.multi_level
    assert model.layer6.branches_used == 2 and model.load_report is None
    assert model.config is config.model
    assert "deeplabv2" in MODELS and "deeplabv2_vgg16" in MODELS
    for override, message in (
        ("model.aspp_dilations=[6,12]", "four convs"),
        ("model.aspp_branches=3", "aspp_branches"),
        ("model.width=0", "width"),
        ("model.blocks=[1,0,1,1]", "blocks"),
        ("model.init_sha256=abc", "sha256"),
        ("model.bn=sync", "bn"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["model.name=deeplabv2", override])


def test_default_config_is_the_papers_resnet101():
    config = load_config(None, ["model.name=deeplabv2"]).model
    assert (config.depth, config.width, config.multi_level, config.aspp_branches) == (
        101,
        64,
        False,
        4,
    )
    assert config.aspp_dilations == (6, 12, 18, 24)
    assert (config.bn, config.input_normalization) == ("half_frozen", "caffe_bgr")


# --- ProDA's head (REFERENCE §1.4) -------------------------------------------------------------

PRODA_DILATIONS = (6, 12, 18, 24)


def expected_proda_head(num_classes, in_channels=2048, channels=256, hidden=80, branches=5):
    """ProDA's `Classifier_Module2` keys and shapes in registration order, as microsoft/ProDA
    models/deeplabv2.py builds it: `conv2d_list.i` = Sequential(conv with bias, GroupNorm,
    ReLU), the first 1x1 and the others 3x3; `bottleneck` = Sequential(SEBlock whose `se` is
    Sequential(Linear, ReLU, Linear, Sigmoid), 3x3 conv with bias, GroupNorm); `head` =
    Sequential(Dropout2d, 1x1 conv without bias)."""
    shapes = {}
    for branch in range(branches):
        kernel = 1 if branch == 0 else 3
        prefix = f"layer5.conv2d_list.{branch}"
        shapes[f"{prefix}.0.weight"] = (channels, in_channels, kernel, kernel)
        shapes[f"{prefix}.0.bias"] = (channels,)
        shapes[f"{prefix}.1.weight"] = (channels,)
        shapes[f"{prefix}.1.bias"] = (channels,)
    concatenated = branches * channels
    shapes["layer5.bottleneck.0.se.0.weight"] = (hidden, concatenated)
    shapes["layer5.bottleneck.0.se.0.bias"] = (hidden,)
    shapes["layer5.bottleneck.0.se.2.weight"] = (concatenated, hidden)
    shapes["layer5.bottleneck.0.se.2.bias"] = (concatenated,)
    shapes["layer5.bottleneck.1.weight"] = (channels, concatenated, 3, 3)
    shapes["layer5.bottleneck.1.bias"] = (channels,)
    shapes["layer5.bottleneck.2.weight"] = (channels,)
    shapes["layer5.bottleneck.2.bias"] = (channels,)
    shapes["layer5.head.1.weight"] = (num_classes, channels, 1, 1)
    return shapes


def reference_proda_head(state, features, dilations, groups):
    """ProDA's head forward in eval mode with torch.nn.functional: (logits, 256-d features)."""

    def branch(index, dilation, kernel):
        prefix = f"layer5.conv2d_list.{index}"
        padding = dilation if kernel == 3 else 0
        out = F.conv2d(
            features,
            state[f"{prefix}.0.weight"],
            state[f"{prefix}.0.bias"],
            padding=padding,
            dilation=dilation,
        )
        out = F.group_norm(out, groups, state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"])
        return F.relu(out)

    outputs = [branch(0, 1, 1)]
    outputs += [branch(index, d, 3) for index, d in enumerate(dilations, start=1)]
    x = torch.cat(outputs, dim=1)
    pooled = x.mean(dim=(2, 3))
    squeezed = F.relu(
        F.linear(
            pooled, state["layer5.bottleneck.0.se.0.weight"], state["layer5.bottleneck.0.se.0.bias"]
        )
    )
    channel_weights = torch.sigmoid(
        F.linear(
            squeezed,
            state["layer5.bottleneck.0.se.2.weight"],
            state["layer5.bottleneck.0.se.2.bias"],
        )
    )
    x = x * channel_weights[:, :, None, None]
    x = F.conv2d(
        x, state["layer5.bottleneck.1.weight"], state["layer5.bottleneck.1.bias"], padding=1
    )
    x = F.group_norm(
        x, groups, state["layer5.bottleneck.2.weight"], state["layer5.bottleneck.2.bias"]
    )
    return F.conv2d(x, state["layer5.head.1.weight"]), x


def proda_layout_state_dict(num_classes, blocks, width=64, seed=0):
    """A state_dict in ProDA's key layout built without the ProDA head module: the backbone of
    an aspp_sum model (keys shared by both layouts, REFERENCE §1.4), then random head tensors
    of `expected_proda_head`'s shapes."""
    generator = torch.Generator().manual_seed(seed)
    backbone = DeepLabV2(num_classes, blocks=blocks, width=width).state_dict()
    state = {k: v for k, v in backbone.items() if not k.startswith("layer5.")}
    channels = 256 * width // 64
    for key, shape in expected_proda_head(
        num_classes, 32 * width, channels, channels * 5 // 16
    ).items():
        state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


def test_proda_head_has_prodas_keys_and_shapes_at_the_released_width():
    with torch.device("meta"):
        model = DeepLabV2(num_classes=19, head="proda")
    state = model.state_dict()
    head = expected_proda_head(19)
    assert list(state) == expected_resnet_keys((3, 4, 23, 3), []) + list(head)
    for key, shape in head.items():
        assert tuple(state[key].shape) == shape, key
    assert model.feature_channels == 256 and model.head_prefixes == ("layer5.",)
    layer5 = model.layer5
    assert layer5.conv2d_list[0][0].kernel_size == (1, 1)
    for index, dilation in enumerate(PRODA_DILATIONS, start=1):
        conv = layer5.conv2d_list[index][0]
        assert conv.dilation == (dilation, dilation) and conv.padding == (dilation, dilation)
    norms = [m for m in layer5.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 6 and all(m.num_groups == 32 for m in norms)
    assert isinstance(layer5.head[0], nn.Dropout2d) and layer5.head[0].p == 0.1
    assert layer5.head[1].bias is None
    # A state_dict of ProDA's full ResNet-101 layout (shapes only, on the meta device) fits
    # strictly; the head's keys come from the independent list above.
    proda = {k: v for k, v in state.items() if not k.startswith("layer5.")}
    proda.update({k: torch.empty(shape, device="meta") for k, shape in head.items()})
    assert not model.load_state_dict(proda, strict=True).missing_keys


def test_proda_checkpoint_in_prodas_layout_loads_strictly_and_predicts_like_the_reference(
    tmp_path,
):
    # The released width (64) gives ProDA's exact head shapes; one bottleneck per stage keeps
    # the file small. ProDA's .pkl stores ['ResNet101']['model_state'] (REFERENCE §1.3).
    state = proda_layout_state_dict(19, blocks=(1, 1, 1, 1))
    torch.save(
        {"ResNet101": {"model_state": state}, "objective_vectors": torch.zeros(19, 256)},
        tmp_path / "from_gta5_to_cityscapes_on_deeplab101_best_model.pkl",
    )
    model = DeepLabV2(19, blocks=(1, 1, 1, 1), head="proda")
    report = load_released_checkpoint(
        model, tmp_path / "from_gta5_to_cityscapes_on_deeplab101_best_model.pkl"
    )
    assert report.loaded == len(state) and report.untracked == 0
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    model.eval()
    batch = images(batch=1, height=33, width=41)
    with torch.no_grad():
        outputs = model(batch)
    _, _, layer4 = reference_forward(state, batch, PRODA_DILATIONS, 4, False, heads=False)
    logits, features = reference_proda_head(state, layer4, PRODA_DILATIONS, groups=32)
    assert tuple(outputs["features"].shape) == (1, 256, 5, 6)
    torch.testing.assert_close(outputs["logits"], logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs["features"], features, rtol=1e-4, atol=1e-4)


def test_proda_features_are_what_the_classifier_reads_after_dropout():
    torch.manual_seed(3)
    model = small(head="proda", width=8)  # decoder 256 * 8 / 64 = 32 channels
    assert model.feature_channels == 32
    model.train()
    outputs = model(images())
    assert tuple(outputs["features"].shape) == (2, 32, 6, 8)
    # Dropout2d zeroes whole channels in train mode, and the logits are the 1x1 conv of exactly
    # these (dropped-out) features, as ProDA's `feat`.
    zeroed = outputs["features"].abs().sum(dim=(2, 3)) == 0
    assert zeroed.any()
    classifier = model.layer5.head[1].weight
    torch.testing.assert_close(outputs["logits"], F.conv2d(outputs["features"], classifier))


def test_proda_head_scales_with_width_for_small_members():
    model = small(head="proda")  # width 4: decoder 16 channels, SE 80 -> 5 -> 80
    state = model.state_dict()
    head = expected_proda_head(5, in_channels=128, channels=16, hidden=5)
    assert {k: tuple(v.shape) for k, v in state.items() if k.startswith("layer5.")} == head
    # GroupNorm keeps ProDA's 32 groups where the channels allow, else gcd(32, channels).
    assert {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)} == {16}
    assert model.param_groups()["head"] == list(model.layer5.parameters())


def test_proda_head_initialisation_follows_prodas_effective_init():
    torch.manual_seed(0)
    model = DeepLabV2(num_classes=19, blocks=(1, 1, 1, 1), width=16, head="proda")
    layer5 = model.layer5
    convs = [m for m in layer5.modules() if isinstance(m, nn.Conv2d)]
    weights = torch.cat([conv.weight.flatten() for conv in convs])
    # ProDA's ResNet redraws every conv weight, the head's included, from N(0, 0.01).
    assert abs(weights.std().item() - 0.01) < 5e-4
    assert torch.all(layer5.bottleneck[1].bias == 0)
    linears = [m for m in layer5.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 and all(torch.all(m.bias == 0) for m in linears)
    norms = [m for m in layer5.modules() if isinstance(m, nn.GroupNorm)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


def test_proda_head_config():
    base = ["model.name=deeplabv2", "model.blocks=[1,1,1,1]", "model.width=8"]
    config = load_config(None, [*base, "model.head=proda", "model.input_normalization=unit"])
    model = build_segmentor(config.model, 19)
    assert model.head_type == "proda" and model.feature_channels == 32
    assert load_config(None, ["model.name=deeplabv2"]).model.head == "aspp_sum"
    for overrides, message in (
        (["model.head=proda", "model.multi_level=true"], "proda is single-level"),
        (["model.head=proda", "model.aspp_branches=2"], "aspp_branches"),
        (["model.head=psp"], "model.head"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [*base, *overrides])
    with pytest.raises(ConfigError, match="single-level"):
        small(head="proda", multi_level=True)


# --- VGG16 --------------------------------------------------------------------------------------

# torchvision vgg16 `features`: conv indices, with pool4 at 23 and pool5 at 30 (REFERENCE §1.6).
TORCHVISION_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def expected_vgg_keys() -> list[str]:
    # Dropping pool4 (23) shifts the later conv5 indices down by one; fc6/fc7 follow at 29/31.
    convs = [i if i < 23 else i - 1 for i in TORCHVISION_VGG16_CONVS] + [29, 31]
    keys = [f"features.{i}.{p}" for i in convs for p in ("weight", "bias")]
    keys += [f"classifier.conv2d_list.{b}.{p}" for b in range(4) for p in ("weight", "bias")]
    return keys


def test_vgg_keys_shapes_and_dilations():
    with torch.device("meta"):
        model = DeepLabVGG(num_classes=19)
    state = model.state_dict()
    assert list(state) == expected_vgg_keys()
    assert len(model.features) == 29 + 4
    assert tuple(state["features.23.weight"].shape) == (512, 512, 3, 3)
    assert tuple(state["features.29.weight"].shape) == (1024, 512, 3, 3)
    assert tuple(state["features.31.weight"].shape) == (1024, 1024, 3, 3)
    assert tuple(state["classifier.conv2d_list.0.weight"].shape) == (19, 1024, 3, 3)
    for index in (23, 25, 27):
        assert model.features[index].dilation == (2, 2) and model.features[index].padding == (2, 2)
    for index in (29, 31):
        assert model.features[index].dilation == (4, 4) and model.features[index].padding == (4, 4)
        assert isinstance(model.features[index + 1], nn.ReLU)
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert pools == [4, 9, 16]
    assert model.classifier.branches_used == 2  # AdaptSegNet's deeplab_vgg.py
    assert model.param_groups()["head"] == []  # AdaptSegNet trains it all at one lr


def test_vgg_forward_stride_8():
    with torch.device("meta"):
        model = DeepLabVGG(num_classes=19)
        outputs = model(torch.zeros(2, 3, 64, 96, device="meta"))
    assert tuple(outputs["logits"].shape) == (2, 19, 8, 12)
    assert tuple(outputs["features"].shape) == (2, 1024, 8, 12)


def test_vgg_adapts_torchvision_keys():
    with torch.device("meta"):
        ours = DeepLabVGG(num_classes=19).state_dict()
    torchvision = {}
    for index in TORCHVISION_VGG16_CONVS:
        ours_index = index if index < 23 else index - 1
        torchvision[f"features.{index}.weight"] = ours[f"features.{ours_index}.weight"]
        torchvision[f"features.{index}.bias"] = ours[f"features.{ours_index}.bias"]
    for index in (0, 3, 6):
        torchvision[f"classifier.{index}.weight"] = torch.zeros(2, 2)
        torchvision[f"classifier.{index}.bias"] = torch.zeros(2)
    adapted, notes = DeepLabVGG.adapt_init_state_dict(torchvision)
    expected = [
        k
        for k in expected_vgg_keys()
        if not k.startswith(("features.29", "features.31", "classifier"))
    ]
    assert sorted(adapted) == sorted(expected)
    assert notes and "24/26/28" in notes[0]


# --- Discriminator ------------------------------------------------------------------------------


def test_discriminator_keys_shapes_and_layers():
    with torch.device("meta"):
        discriminator = FCDiscriminator(19)
    shapes = {k: tuple(v.shape) for k, v in discriminator.state_dict().items()}
    assert shapes == {
        "conv1.weight": (64, 19, 4, 4),
        "conv1.bias": (64,),
        "conv2.weight": (128, 64, 4, 4),
        "conv2.bias": (128,),
        "conv3.weight": (256, 128, 4, 4),
        "conv3.bias": (256,),
        "conv4.weight": (512, 256, 4, 4),
        "conv4.bias": (512,),
        "classifier.weight": (1, 512, 4, 4),
        "classifier.bias": (1,),
    }
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert not any(
        isinstance(m, nn.Sigmoid | nn.BatchNorm2d | nn.InstanceNorm2d)
        for m in discriminator.modules()
    )
    assert discriminator.leaky_relu.negative_slope == 0.2


def test_discriminator_output_is_one_32nd_and_matches_a_functional_reference():
    torch.manual_seed(4)
    discriminator = FCDiscriminator(3, base_channels=4)
    with torch.no_grad():
        assert tuple(discriminator(torch.zeros(1, 3, 512, 1024)).shape) == (1, 1, 16, 32)
        assert tuple(discriminator(torch.zeros(1, 3, 720, 1280)).shape) == (1, 1, 22, 40)
        x = torch.randn(2, 3, 64, 96)
        reference = x
        state = discriminator.state_dict()
        for name in ("conv1", "conv2", "conv3", "conv4"):
            reference = F.leaky_relu(
                F.conv2d(
                    reference, state[f"{name}.weight"], state[f"{name}.bias"], stride=2, padding=1
                ),
                0.2,
            )
        reference = F.conv2d(
            reference, state["classifier.weight"], state["classifier.bias"], stride=2, padding=1
        )
        torch.testing.assert_close(discriminator(x), reference)


def test_advent_discriminator_checkpoint_loads(tmp_path):
    torch.manual_seed(5)
    source = FCDiscriminator(5, base_channels=4)
    names = {"conv1": "0", "conv2": "2", "conv3": "4", "conv4": "6", "classifier": "8"}
    advent = {}
    for key, value in source.state_dict().items():
        module, parameter = key.split(".")
        advent[f"{names[module]}.{parameter}"] = value
    assert sorted(convert_advent_discriminator_state_dict(advent)) == sorted(source.state_dict())
    torch.save(advent, tmp_path / "advent_d.pth")
    target = FCDiscriminator(5, base_channels=4)
    load_discriminator_weights(target, tmp_path / "advent_d.pth")
    x = torch.randn(1, 5, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))
    from udaseg.errors import CheckpointError

    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_discriminator_weights(FCDiscriminator(6, base_channels=4), tmp_path / "advent_d.pth")
