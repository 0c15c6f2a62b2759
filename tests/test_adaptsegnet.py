"""AdaptSegNet and its feature-level variant: loss values, signs, weights and the shipped configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.engine_helpers import TINY_MODEL, RecordingContext
from tests.fake_layouts import write_gta5_to_cityscapes
from udaseg.cli import main
from udaseg.config import OptimizerConfig, from_dict, load_config
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.engine.trainer import _optimizer_configs
from udaseg.errors import ConfigError
from udaseg.losses.segmentation import segmentation_loss
from udaseg.methods.adaptsegnet import AdaptSegNet
from udaseg.models import build_segmentor
from udaseg.models.deeplabv2 import DeepLabV2Config
from udaseg.models.discriminators import FCDiscriminator
from udaseg.models.gradient_reversal import PixelDomainClassifier
from udaseg.registry import METHODS

NUM_CLASSES = CITYSCAPES19.num_classes


def softplus(value: float) -> float:
    """BCE-with-logits of logit `value` against label 0 is log(1 + e^value); label 1: -value."""
    return math.log1p(math.exp(value))


class ConstantDiscriminator(nn.Module):
    """Outputs `value` everywhere ([B, 1, 2, 2]), keeping a path to its input for gradients."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))
        self.inputs: list[torch.Tensor] = []

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        self.inputs.append(maps)
        zero = maps.sum() * 0.0
        return self.value + zero + torch.zeros(maps.shape[0], 1, 2, 2)


def make_method(name: str = "adaptsegnet", multi_level: bool = True, **config) -> AdaptSegNet:
    """The method on a tiny DeepLabV2 (single- or multi-level), in train mode."""
    torch.manual_seed(0)
    segmentor = build_segmentor(
        from_dict(DeepLabV2Config, {**TINY_MODEL, "multi_level": multi_level}),
        NUM_CLASSES,
    )
    method_class = METHODS.get(name)
    method = method_class(from_dict(method_class.Config, config), segmentor, CITYSCAPES19)
    method.train(True)
    return method


def make_batch(source_size=(32, 48), target_size=(40, 64), seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (2, *source_size), generator=generator)
    labels[:, :4] = 255
    return {
        "source": {
            "image": torch.rand(2, 3, *source_size, generator=generator) * 255,
            "label": labels,
        },
        "target": {"image": torch.rand(2, 3, *target_size, generator=generator) * 255},
    }


# --- loss values against hand-computed numbers ---------------------------------------------


@pytest.mark.parametrize("gan", ["vanilla", "lsgan"])
def test_adversarial_losses_match_hand_computed_values(gan: str) -> None:
    method = make_method(multi_level=True, gan=gan)
    method.discriminators = nn.ModuleDict(
        {"main": ConstantDiscriminator(2.0), "aux": ConstantDiscriminator(-1.0)}
    )
    context = RecordingContext(method.trainable_modules())
    scalars = method.training_step(make_batch(), context)
    if gan == "vanilla":
        # Generator: target maps toward the SOURCE label 0: BCE(x, 0) = log(1 + e^x).
        generator = {"main": softplus(2.0), "aux": softplus(-1.0)}
        # Discriminator: source -> 0, target -> 1 (BCE(x, 1) = log(1 + e^-x)), each halved.
        d_source = {"main": softplus(2.0) / 2, "aux": softplus(-1.0) / 2}
        d_target = {"main": softplus(-2.0) / 2, "aux": softplus(1.0) / 2}
    else:
        generator = {"main": 2.0**2, "aux": (-1.0) ** 2}
        d_source = {"main": 2.0**2 / 2, "aux": (-1.0) ** 2 / 2}
        d_target = {"main": (2.0 - 1) ** 2 / 2, "aux": (-1.0 - 1) ** 2 / 2}
    assert float(scalars["loss_adv"]) == pytest.approx(generator["main"], rel=1e-6)
    assert float(scalars["loss_adv_aux"]) == pytest.approx(generator["aux"], rel=1e-6)
    assert float(scalars["loss_d_source"]) == pytest.approx(d_source["main"], rel=1e-6)
    assert float(scalars["loss_d_source_aux"]) == pytest.approx(d_source["aux"], rel=1e-6)
    assert float(scalars["loss_d_target"]) == pytest.approx(d_target["main"], rel=1e-6)
    assert float(scalars["loss_d_target_aux"]) == pytest.approx(d_target["aux"], rel=1e-6)
    # The generator term: lambda_adv_main * l_main + lambda_adv_aux * l_aux (0.001, 0.0002).
    assert context.losses[1] == pytest.approx(
        0.001 * generator["main"] + 0.0002 * generator["aux"], rel=1e-6
    )
    # Then four discriminator backwards (source and target per level), each the halved term.
    assert sorted(context.losses[2:]) == pytest.approx(
        sorted([*d_source.values(), *d_target.values()]), rel=1e-6
    )


def test_multi_level_weights_follow_the_config() -> None:
    method = make_method(multi_level=True, lambda_adv_main=0.3, lambda_adv_aux=0.05)
    method.discriminators = nn.ModuleDict(
        {"main": ConstantDiscriminator(0.5), "aux": ConstantDiscriminator(1.5)}
    )
    context = RecordingContext(method.trainable_modules())
    method.training_step(make_batch(), context)
    assert context.losses[1] == pytest.approx(0.3 * softplus(0.5) + 0.05 * softplus(1.5), rel=1e-6)


def test_segmentation_term_is_main_plus_lambda_seg_aux() -> None:
    method = make_method(multi_level=True, lambda_seg_aux=0.1)
    batch = make_batch()
    with torch.no_grad():
        outputs = method.segmentor(batch["source"]["image"])
        expected = segmentation_loss(outputs["logits"], batch["source"]["label"])
        expected += 0.1 * segmentation_loss(outputs["aux_logits"], batch["source"]["label"])
    context = RecordingContext(method.trainable_modules())
    method.training_step(batch, context)
    assert context.losses[0] == pytest.approx(float(expected), rel=1e-5)


def test_discriminators_see_upsampled_softmaxes() -> None:
    method = make_method(multi_level=True)
    spies = {"main": ConstantDiscriminator(0.0), "aux": ConstantDiscriminator(0.0)}
    method.discriminators = nn.ModuleDict(spies)
    batch = make_batch(source_size=(32, 48), target_size=(40, 64))
    method.training_step(batch, RecordingContext(method.trainable_modules()))
    for level, spy in spies.items():
        # Generator (target), then the discriminator's source and target terms.
        target_maps, source_maps, detached_target = spy.inputs
        assert target_maps.shape == (2, NUM_CLASSES, 40, 64)
        assert source_maps.shape == (2, NUM_CLASSES, 32, 48)
        assert target_maps.requires_grad and not detached_target.requires_grad
        assert torch.equal(target_maps.detach(), detached_target)
        for maps in (target_maps, source_maps):
            assert torch.allclose(maps.sum(dim=1), torch.ones(()), atol=1e-5)
            assert maps.min() >= 0
        with torch.no_grad():
            outputs = method.segmentor(batch["target"]["image"])
        logits = outputs["logits" if level == "main" else "aux_logits"]
        expected = torch.softmax(
            F.interpolate(logits, size=(40, 64), mode="bilinear", align_corners=True), dim=1
        )
        assert torch.allclose(target_maps.detach(), expected, atol=1e-6)


# --- the generator term never updates the discriminators --------------------------------


@pytest.mark.parametrize("name", ["adaptsegnet", "adaptsegnet_feature"])
def test_generator_term_does_not_reach_the_discriminator(name: str) -> None:
    method = make_method(name, multi_level=True)
    context = RecordingContext(method.trainable_modules())
    method.training_step(make_batch(), context)
    after_seg, after_generator, *after_discriminator = context.gradients
    # 1. segmentation: the segmentor has gradients, the discriminators none.
    assert all(g is None for g in after_seg["discriminator"].values())
    # 2. generator term: the segmentor's gradients change, the discriminators still have none.
    assert all(g is None for g in after_generator["discriminator"].values())
    changed = [
        key
        for key, g in after_generator["segmentor"].items()
        if g is not None and not torch.equal(g, after_seg["segmentor"][key])
    ]
    assert changed, "the adversarial term sent no gradient to the segmentor"
    # 3. discriminator terms: the discriminators get gradients, the segmentor's do not change.
    final = after_discriminator[-1]
    assert all(g is not None and g.abs().sum() > 0 for g in final["discriminator"].values())
    for key, g in final["segmentor"].items():
        before = after_generator["segmentor"][key]
        assert (g is None and before is None) or torch.equal(g, before), key
    # And the discriminators are trainable again after the frozen forward.
    assert all(p.requires_grad for p in method.discriminators.parameters())


def test_discriminators_per_level() -> None:
    single = make_method(multi_level=False)
    multi = make_method(multi_level=True)
    assert list(single.discriminators) == ["main"]
    assert list(multi.discriminators) == ["main", "aux"]
    for discriminator in multi.discriminators.values():
        assert isinstance(discriminator, FCDiscriminator)
        assert discriminator.conv1.in_channels == NUM_CLASSES
    scalars = single.training_step(make_batch(), RecordingContext(single.trainable_modules()))
    assert "loss_adv_aux" not in scalars and "loss_seg_aux" not in scalars


def test_discriminator_optimizer_is_the_papers_adam() -> None:
    method = make_method()
    chosen = _optimizer_configs(
        load_config(None), type(method), method.trainable_modules()
    )  # no optim.discriminator in the config: the method's default
    assert chosen["discriminator"] == OptimizerConfig(
        name="adam", lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, head_lr_multiplier=1.0
    )


def test_negative_weights_are_refused() -> None:
    with pytest.raises(ConfigError, match="lambda_adv_main"):
        load_config(None, ["method.name=adaptsegnet", "method.lambda_adv_main=-1"])


# --- the feature-level variant -------------------------------------------------------------


def test_feature_variant_discriminates_layer4_features() -> None:
    method = make_method("adaptsegnet_feature", multi_level=True, lambda_adv=0.25)
    assert list(method.discriminators) == ["main"]
    assert isinstance(method.discriminators["main"], PixelDomainClassifier)
    spy = ConstantDiscriminator(1.0)
    method.discriminators = nn.ModuleDict({"main": spy})
    context = RecordingContext(method.trainable_modules())
    batch = make_batch()
    scalars = method.training_step(batch, context)
    target_features = spy.inputs[0]
    channels = method.segmentor.feature_channels
    assert target_features.shape[:2] == (2, channels)
    with torch.no_grad():
        expected = method.segmentor(batch["target"]["image"])["features"]
    assert torch.allclose(target_features.detach(), expected)
    assert context.losses[1] == pytest.approx(0.25 * softplus(1.0), rel=1e-6)
    assert float(scalars["loss_d_target"]) == pytest.approx(softplus(-1.0) / 2, rel=1e-6)


def test_feature_variant_patch_discriminator_on_large_maps() -> None:
    method = make_method("adaptsegnet_feature", multi_level=False, discriminator="patch")
    assert isinstance(method.discriminators["main"], FCDiscriminator)
    # Five stride-2 convs need >= 32 feature cells a side: 256x256 images at stride 8.
    batch = make_batch(source_size=(256, 256), target_size=(256, 264))
    scalars = method.training_step(batch, RecordingContext(method.trainable_modules()))
    assert all(math.isfinite(float(value)) for value in scalars.values())


# --- shipped configs -------------------------------------------------------------------------


EXPERIMENTS = Path(__file__).resolve().parents[1] / "udaseg" / "configs" / "experiments"


def test_experiment_configs_hold_the_papers_settings() -> None:
    multi = load_config(EXPERIMENTS / "adaptsegnet_multi_gta5_cityscapes.yaml")
    assert multi.method.name == "adaptsegnet"
    assert multi.model.multi_level and multi.model.aspp_branches == 2
    assert "DeepLab_resnet_pretrained_init-f81d91e8" in multi.model.init
    assert (multi.method.lambda_seg_aux, multi.method.lambda_adv_main) == (0.1, 0.001)
    assert multi.method.lambda_adv_aux == 0.0002 and multi.method.gan == "vanilla"
    segmentor = multi.optim["segmentor"]
    assert (segmentor.name, segmentor.lr, segmentor.momentum) == ("sgd", 2.5e-4, 0.9)
    assert (segmentor.weight_decay, segmentor.head_lr_multiplier) == (5e-4, 10.0)
    discriminator = multi.optim["discriminator"]
    assert (discriminator.name, discriminator.lr, discriminator.betas) == (
        "adam",
        1e-4,
        (0.9, 0.99),
    )
    assert (multi.schedule.name, multi.schedule.total_steps, multi.schedule.power) == (
        "poly",
        250000,
        0.9,
    )
    assert multi.train.steps == 150000 and multi.data.batch_size == 1
    assert multi.data.source.resize == (720, 1280) and multi.data.target.resize == (512, 1024)

    single = load_config(EXPERIMENTS / "adaptsegnet_single_gta5_cityscapes.yaml")
    assert not single.model.multi_level and single.model.aspp_branches == 2
    assert single.method.lambda_adv_main == 0.001
    assert single.optim["discriminator"] == discriminator

    feature = load_config(EXPERIMENTS / "adaptsegnet_feature_gta5_cityscapes.yaml")
    assert feature.method.name == "adaptsegnet_feature" and feature.method.lambda_adv == 0.001
    assert feature.optim["discriminator"] == discriminator


def test_multi_level_config_trains_on_the_real_layouts(tmp_path: Path) -> None:
    """`udaseg train .../adaptsegnet_multi_gta5_cityscapes.yaml` starts and finishes."""
    overrides = write_gta5_to_cityscapes(tmp_path)
    config = EXPERIMENTS / "adaptsegnet_multi_gta5_cityscapes.yaml"
    assert main(["train", str(config), *overrides]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.method.lambda_adv_aux == 0.0002 and saved.schedule.total_steps == 250000


@pytest.mark.parametrize(
    "name", ["adaptsegnet_single", "adaptsegnet_multi", "adaptsegnet_feature", "dann"]
)
def test_toy_configs_share_the_source_only_budget(name: str) -> None:
    config = load_config(f"toy/{name}.yaml")
    baseline = load_config("toy/source_only.yaml")
    assert config.train.steps == baseline.train.steps and config.data == baseline.data
    assert config.optim["segmentor"] == baseline.optim["segmentor"]
    assert config.model.multi_level == (name == "adaptsegnet_multi")
