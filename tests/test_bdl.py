"""BDL: the translation model F (CycleGAN + perceptual loss through M), the segmentation model M
(AdaptSegNet + pseudo-label CE), their step order, the shipped configs and recipes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from tests.engine_helpers import (
    TINY_MODEL,
    RecordingContext,
    tiny_config,
    write_config,
    write_tiny_benchmark,
)
from tests.fake_layouts import write_gta5_to_cityscapes
from udaseg.config import OptimizerConfig, from_dict, load_config
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.engine.trainer import _optimizer_configs
from udaseg.errors import ConfigError
from udaseg.losses.perceptual import instance_normalized, perceptual_loss
from udaseg.losses.segmentation import segmentation_loss
from udaseg.methods.bdl_translation import ImagePool
from udaseg.models import build_segmentor
from udaseg.models.cyclegan import PatchDiscriminator, ResnetGenerator
from udaseg.models.deeplabv2 import DeepLabV2Config
from udaseg.recipes import load_recipe, run_recipe
from udaseg.registry import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "udaseg" / "configs"
TINY_TRANSLATION = {
    "name": "bdl_translation",
    "generator_blocks": 1,
    "generator_channels": 4,
    "discriminator_channels": 4,
    "pool_size": 2,
}


def make_method(method_name: str, multi_level: bool = False, **config):
    torch.manual_seed(0)
    segmentor = build_segmentor(
        from_dict(DeepLabV2Config, {**TINY_MODEL, "multi_level": multi_level}),
        CITYSCAPES19.num_classes,
    )
    method_class = METHODS.get(method_name)
    config = {"name": method_name, **config}
    method = method_class(from_dict(method_class.Config, config), segmentor, CITYSCAPES19)
    method.train(True)
    return method


def constant_images(value: float, size=(16, 24)) -> torch.Tensor:
    return torch.full((2, 3, *size), value)


# --- the perceptual loss, both forms, by hand --------------------------------------------------


def test_instance_normalisation_by_hand() -> None:
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    # mean 2.5, biased variance 1.25: (x - 2.5) / sqrt(1.25 + 1e-5).
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(1.25 + 1e-5)
    assert torch.allclose(instance_normalized(logits).flatten(), expected, atol=1e-6)


def test_released_form_is_the_mse_of_instance_normalised_logits() -> None:
    generated = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    reference = torch.tensor([4.0, 3.0, 2.0, 1.0]).reshape(1, 1, 2, 2)
    # Normalised: +-1.5, +-0.5 over sqrt(1.25 + eps), opposite signs; squared differences
    # (2 * 1.5)^2, (2 * 0.5)^2 twice each over 4 pixels: (18 + 2) / 4 / (1.25 + eps).
    expected = (18 + 2) / 4 / (1.25 + 1e-5)
    assert float(perceptual_loss(generated, reference, "released")) == pytest.approx(expected)
    # Scale and shift of a channel are normalised away: 2x + 7 matches x exactly.
    assert float(perceptual_loss(2 * generated + 7, generated, "released")) < 1e-8


def test_paper_form_is_the_l1_distance() -> None:
    generated = torch.tensor([[0.0, 0.0], [0.0, 4.0], [1.0, 1.0], [1.0, 1.0]]).reshape(1, 2, 2, 2)
    reference = torch.tensor([[0.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, -1.0]]).reshape(1, 2, 2, 2)
    # |differences|: 2 and 2 over 8 elements.
    assert float(perceptual_loss(generated, reference, "paper")) == pytest.approx(0.5)
    # The same pair under the released form: channel 0 is x and x/2 (equal once normalised),
    # channel 1 differs.
    assert float(perceptual_loss(generated, reference, "released")) > 0.1
    with pytest.raises(ValueError, match="unknown perceptual form"):
        perceptual_loss(generated, reference, "vgg")  # type: ignore[arg-type]


# --- F: every term of the generators' loss, by hand -------------------------------------------


class AffineGenerator(nn.Module):
    """x -> scale * x + shift in [-1, 1] units; parameters keep a path for gradients."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.shift = nn.Parameter(torch.tensor(shift))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scale * images + self.shift


class ConstantDiscriminator(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.value + images.sum() * 0.0 + torch.zeros(images.shape[0], 1, 2, 2)


class ColourSegmentor(nn.Module):
    """M's stand-in: 'logits' = the red and green channels / 255 (0..255 RGB input)."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": images[:, :2] / 255}


def stubbed_translation(**config):
    method = make_method("bdl_translation", **{**TINY_TRANSLATION, **config})
    method.generators = nn.ModuleDict(
        {
            "source_to_target": AffineGenerator(0.5, 0.0),
            "target_to_source": AffineGenerator(1.0, 0.2),
        }
    )
    method.discriminators = nn.ModuleDict(
        {"target": ConstantDiscriminator(0.25), "source": ConstantDiscriminator(-0.5)}
    )
    method.segmentor = ColourSegmentor()
    return method


def test_translation_losses_match_hand_computed_values() -> None:
    method = stubbed_translation(perceptual="paper")
    # Source all white (x = 1 in [-1, 1]), target all black (x = -1).
    batch = {"source": {"image": constant_images(255.0)}, "target": {"image": constant_images(0.0)}}
    context = RecordingContext(method.trainable_modules())
    scalars = {key: float(value) for key, value in method.training_step(batch, context).items()}
    # F(S) = 0.5, F^-1(F(S)) = 0.7; F^-1(T) = -0.8, F(F^-1(T)) = -0.4.
    assert scalars["loss_cycle_source"] == pytest.approx(0.3)
    assert scalars["loss_cycle_target"] == pytest.approx(0.6)
    # Identity: F(T) = -0.5 vs -1; F^-1(S) = 1.2 vs 1.
    assert scalars["loss_identity_target"] == pytest.approx(0.5)
    assert scalars["loss_identity_source"] == pytest.approx(0.2)
    # LS-GAN toward "real" 1 for the constant discriminators' outputs.
    assert scalars["loss_gan_target"] == pytest.approx((0.25 - 1) ** 2)
    assert scalars["loss_gan_source"] == pytest.approx((-0.5 - 1) ** 2)
    # Perceptual (paper's L1) on M = channels / 255, in 0..255 units: (x + 1) * 127.5 / 255.
    # S = 1.0 -> 1; F(S) = 0.5 -> 0.75; rec 0.7 -> 0.85; T = 0; F^-1(T) -0.8 -> 0.1; rec 0.3.
    assert scalars["loss_per_source"] == pytest.approx(0.25)
    assert scalars["loss_per_recon_source"] == pytest.approx(0.15)
    assert scalars["loss_per_target"] == pytest.approx(0.1)
    assert scalars["loss_per_recon_target"] == pytest.approx(0.3)
    # One generator backward with the paper's weights: 1 GAN, 10 cycle, 10 * 0.5 identity,
    # 0.1 perceptual, 10 perceptual reconstruction.
    expected = (
        (0.75**2 + 1.5**2)
        + 10 * (0.3 + 0.6)
        + 5 * (0.5 + 0.2)
        + 0.1 * (0.25 + 0.1)
        + 10 * (0.15 + 0.3)
    )
    assert context.losses[0] == pytest.approx(expected, rel=1e-5)
    # Then each discriminator: (real -> 1, generated -> 0) / 2.
    assert context.losses[1:] == pytest.approx(
        [((0.25 - 1) ** 2 + 0.25**2) / 2, ((-0.5 - 1) ** 2 + 0.5**2) / 2]
    )


def test_identity_and_perceptual_weights_follow_the_config() -> None:
    method = stubbed_translation(
        perceptual="paper", lambda_identity=0.0, lambda_per=0.0, lambda_per_recon=2.0
    )
    batch = {"source": {"image": constant_images(255.0)}, "target": {"image": constant_images(0.0)}}
    context = RecordingContext(method.trainable_modules())
    scalars = method.training_step(batch, context)
    assert "loss_identity_target" not in scalars
    expected = (0.75**2 + 1.5**2) + 10 * (0.3 + 0.6) + 2.0 * (0.15 + 0.3)
    assert context.losses[0] == pytest.approx(expected, rel=1e-5)


# --- F: optimizer order and modules -----------------------------------------------------------


def translation_batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "source": {"image": torch.rand(2, 3, 32, 48, generator=generator) * 255},
        "target": {"image": torch.rand(2, 3, 32, 64, generator=generator) * 255},
    }


def test_generators_step_with_the_discriminators_frozen() -> None:
    method = make_method("bdl_translation", **TINY_TRANSLATION)
    before = {k: v.clone() for k, v in method.discriminators.state_dict().items()}
    context = RecordingContext(method.trainable_modules())
    method.training_step(translation_batch(), context)
    after_generators, *after_discriminators = context.gradients
    # The generators' backward reaches every generator parameter and no discriminator one.
    assert all(g is None for g in after_generators["discriminators"].values())
    assert all(g is not None and g.abs().sum() > 0 for g in after_generators["generators"].values())
    # The discriminators' backwards change only the discriminators' gradients.
    final = after_discriminators[-1]
    assert all(g is not None for g in final["discriminators"].values())
    for key, gradient in final["generators"].items():
        assert torch.equal(gradient, after_generators["generators"][key]), key
    # No parameter moved (the engine steps the optimizers), the discriminators are trainable
    # again, M got no gradient at all.
    for key, value in method.discriminators.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(p.requires_grad for p in method.discriminators.parameters())
    assert all(p.grad is None for p in method.segmentor.parameters())
    assert not method.segmentor.training, "M stays in eval mode"


def test_translation_modules_and_optimizers_are_cyclegans() -> None:
    method = make_method("bdl_translation")
    assert set(method.trainable_modules()) == {"generators", "discriminators"}
    assert list(method.extra_modules()) == ["segmentor"]
    generator = method.generators["source_to_target"]
    assert isinstance(generator, ResnetGenerator)
    # 9 residual blocks at 4 x 64 channels; the released key layout.
    blocks = [name for name, _ in generator.model.named_children() if name.isdigit()]
    assert sum(type(generator.model[int(n)]).__name__ == "ResnetBlock" for n in blocks) == 9
    assert generator.model[10].conv_block[1].weight.shape == (256, 256, 3, 3)
    assert "model.1.weight" in generator.state_dict()
    discriminator = method.discriminators["target"]
    assert isinstance(discriminator, PatchDiscriminator)
    # 70x70 PatchGAN: 256x256 -> 30x30 scores.
    assert discriminator(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    chosen = _optimizer_configs(load_config(None), type(method), method.trainable_modules())
    adam = {"name": "adam", "lr": 2e-4, "betas": (0.5, 0.999), "weight_decay": 0.0}
    for name in ("generators", "discriminators"):
        settings = chosen[name]
        assert isinstance(settings, OptimizerConfig)
        assert {key: getattr(settings, key) for key in adam} == adam
        assert settings.schedule is not None and settings.schedule.name == "constant"


def test_generator_keeps_any_image_size() -> None:
    generator = ResnetGenerator(blocks=1, width=4)
    for size in ((28, 40), (29, 43), (32, 64)):
        assert generator(torch.zeros(1, 3, *size)).shape == (1, 3, *size)


def test_image_pool_stores_then_swaps_half_the_time() -> None:
    pool = ImagePool(2)
    first = torch.zeros(2, 3, 4, 4)
    assert torch.equal(pool.query(first), first)  # filling: returned as given
    torch.manual_seed(0)
    returned_stored = 0
    for index in range(1, 201):
        image = torch.full((1, 3, 4, 4), float(index))
        stored_values = {float(stored[0, 0, 0]) for stored in pool.images}
        value = float(pool.query(image)[0, 0, 0, 0])
        assert value == index or value in stored_values
        returned_stored += value != index
    assert 70 < returned_stored < 130  # probability 1/2 each
    # The state round-trips (checkpointed for exact resume).
    clone = ImagePool(2)
    clone.load_state(pool.state())
    assert all(torch.equal(a, b) for a, b in zip(clone.images, pool.images, strict=True))
    assert torch.equal(ImagePool(0).query(first), first)


def test_negative_or_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="lambda_cycle"):
        load_config(None, ["method.name=bdl_translation", "method.lambda_cycle=-1"])
    with pytest.raises(ConfigError, match="perceptual"):
        load_config(None, ["method.name=bdl_translation", "method.perceptual=vgg"])
    with pytest.raises(ConfigError, match="lambda_target"):
        load_config(None, ["method.name=bdl", "method.lambda_target=-1"])


# --- M: AdaptSegNet plus pseudo-label CE in the generator's backward --------------------------


def segmentation_batch(with_pseudo_labels: bool) -> dict:
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 19, (2, 32, 48), generator=generator)
    pseudo = torch.randint(0, 19, (2, 32, 64), generator=generator)
    pseudo[:, :, :20] = 255
    target = {"image": torch.rand(2, 3, 32, 64, generator=generator) * 255}
    if with_pseudo_labels:
        target["pseudo_label"] = pseudo
    return {
        "source": {"image": torch.rand(2, 3, 32, 48, generator=generator) * 255, "label": labels},
        "target": target,
    }


@pytest.mark.parametrize("with_pseudo_labels", [False, True])
def test_segmentation_model_adds_pseudo_label_ce_to_the_target_term(
    with_pseudo_labels: bool,
) -> None:
    method = make_method("bdl", lambda_target=0.5, discriminator_channels=4)
    method.discriminators = nn.ModuleDict({"main": ConstantDiscriminator(2.0)})
    batch = segmentation_batch(with_pseudo_labels)
    context = RecordingContext(method.trainable_modules())
    scalars = method.training_step(batch, context)
    adversarial = math.log1p(math.exp(2.0))  # BCE toward the source label 0
    expected = 0.001 * adversarial
    if with_pseudo_labels:
        with torch.no_grad():
            logits = method.segmentor(batch["target"]["image"])["logits"]
            expected += 0.5 * float(segmentation_loss(logits, batch["target"]["pseudo_label"]))
        assert "loss_seg_target" in scalars
    else:
        assert "loss_seg_target" not in scalars
    # Source CE, then ONE target backward (adversarial + pseudo CE), then the two D halves.
    assert len(context.losses) == 4
    assert context.losses[1] == pytest.approx(expected, rel=1e-5)


def test_segmentation_model_keeps_the_discriminator_out_of_the_target_step() -> None:
    method = make_method("bdl", discriminator_channels=4)
    context = RecordingContext(method.trainable_modules())
    # 256-wide maps so that the five stride-2 convs of the real discriminator have input left.
    generator = torch.Generator().manual_seed(2)
    batch = {
        "source": {
            "image": torch.rand(1, 3, 64, 64, generator=generator) * 255,
            "label": torch.randint(0, 19, (1, 64, 64), generator=generator),
        },
        "target": {
            "image": torch.rand(1, 3, 64, 64, generator=generator) * 255,
            "pseudo_label": torch.randint(0, 19, (1, 64, 64), generator=generator),
        },
    }
    method.training_step(batch, context)
    after_source, after_target, *after_discriminator = context.gradients
    assert all(g is None for g in after_target["discriminator"].values())
    changed = [
        key
        for key, g in after_target["segmentor"].items()
        if g is not None and not torch.equal(g, after_source["segmentor"][key])
    ]
    assert changed
    final = after_discriminator[-1]
    assert all(g is not None for g in final["discriminator"].values())
    for key, g in final["segmentor"].items():
        before = after_target["segmentor"][key]
        assert (g is None and before is None) or torch.equal(g, before), key


# --- shipped configs and recipes -------------------------------------------------------------


def test_experiment_configs_hold_the_papers_settings() -> None:
    translation = load_config(CONFIGS / "experiments" / "bdl_translation_gta5_cityscapes.yaml")
    assert translation.method.name == "bdl_translation"
    assert (translation.method.generator_blocks, translation.method.generator_channels) == (9, 64)
    assert translation.method.perceptual == "released" and translation.method.pool_size == 50
    assert translation.data.source.crop == (452, 452) and translation.data.target.crop == (452, 452)
    segmentation = load_config(CONFIGS / "experiments" / "bdl_gta5_cityscapes.yaml")
    assert segmentation.method.name == "bdl" and segmentation.method.lambda_adv_main == 0.001
    assert not segmentation.model.multi_level and segmentation.model.aspp_branches == 4
    assert segmentation.train.steps == 120000 and segmentation.schedule.total_steps == 250000


def test_toy_configs_share_the_source_only_budget() -> None:
    baseline = load_config("toy/source_only.yaml")
    for name in ("bdl", "bdl_translation"):
        config = load_config(f"toy/{name}.yaml")
        assert config.train.steps == baseline.train.steps, name
    assert load_config("toy/bdl.yaml").data == baseline.data


def test_gta5_recipe_validates() -> None:
    recipe = load_recipe("recipes/bdl_gta5_cityscapes.yaml")
    names = [stage.name for stage in recipe.stages]
    # Algorithm 1 with K = 2, N = 2: Table 2's rows M_0^(1) ... M_2^(2).
    for row in ("m0_1", "m1_1", "m2_1", "m0_2", "m1_2", "m2_2"):
        assert row in names
    kinds = {stage.name: stage.kind for stage in recipe.stages}
    assert kinds["translate_1"] == kinds["translate_2"] == "translate"
    assert recipe.stages[names.index("m1_2")].overrides["data.source.root"] == (
        "${stages.translate_2.dir}"
    )


def test_toy_recipe_runs_on_tiny_data(tmp_path: Path) -> None:
    """The shipped toy recipe's stages and wiring, each config swapped for a tiny one."""
    root = write_tiny_benchmark(tmp_path / "tiny")
    short = {"steps": 2, "checkpoint_every": 2, "eval_at_end": False}
    configs = {}
    for name, method in (
        ("source_only", {"name": "source_only"}),
        ("adabn", {"name": "adabn"}),
        ("bdl_translation", TINY_TRANSLATION),
        ("bdl", {"name": "bdl", "discriminator_channels": 4}),
    ):
        raw = tiny_config(root, tmp_path / "unused", method=method)
        raw["data"]["target"].pop("pseudo_labels")
        raw["train"] = {**raw["train"], **short}
        configs[f"toy/{name}.yaml"] = str(write_config(tmp_path / f"{name}.yaml", raw))
    shipped = yaml.safe_load((CONFIGS / "recipes" / "toy_bdl.yaml").read_text())
    for stage in shipped["stages"]:
        if "train" in stage:
            stage["train"] = configs[stage["train"]]
        if "translate" in stage and "config" in stage["translate"]:
            stage["translate"]["config"] = configs[stage["translate"]["config"]]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(shipped), encoding="utf-8")
    results = run_recipe(load_recipe(path, tmp_path / "out"), device="cpu")
    assert [result.skipped for result in results] == [False] * len(results)
    out = tmp_path / "out"
    # M trained on F's translation, with pseudo labels from the second pass on.
    m1 = load_config(out / "m1_1" / "config.yaml")
    assert m1.data.source.root == str(out / "translate_1")
    assert m1.data.target.pseudo_labels == str(out / "labels_1_1")
    assert load_config(out / "m0_2" / "config.yaml").data.target.pseudo_labels is None
    f2 = load_config(out / "translation_2" / "config.yaml")
    assert f2.init["segmentor"] == str(out / "m2_1" / "checkpoints" / "last.pt")
    translated = sorted((out / "translate_2" / "images").iterdir())
    assert len(translated) == 8
    originals = root / "gta" / "images"
    assert any(
        not np.array_equal(np.asarray(_read(p)), np.asarray(_read(originals / p.name)))
        for p in translated
    )
    # Run again: every stage is done.
    assert all(result.skipped for result in run_recipe(load_recipe(path, out), device="cpu"))


def _read(path: Path):
    from udaseg.data.io import read_image

    return read_image(path)


def test_gta5_recipe_starts_on_tiny_files_in_the_real_layouts(tmp_path: Path) -> None:
    """Round 1's first stages of the shipped GTA5 recipe (full-size F), on tiny GTA5/Cityscapes."""
    overrides = write_gta5_to_cityscapes(tmp_path)
    overrides = [item for item in overrides if not item.startswith("run_dir=")]
    # Small crops and batches keep the full-size CycleGAN quick; the M stages get them too.
    overrides += ["data.source.crop=[32,32]", "data.target.crop=[32,32]", "data.batch_size=1"]
    shipped = yaml.safe_load((CONFIGS / "recipes" / "bdl_gta5_cityscapes.yaml").read_text())
    stages = shipped["stages"][:4]
    assert [stage["name"] for stage in stages] == [
        "source_only",
        "translation_1",
        "translate_1",
        "m0_1",
    ]
    stages[2]["translate"]["input_size"] = [36, 64]  # the tiny images' own scale
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"dir": "out", "stages": stages}), encoding="utf-8")
    out = tmp_path / "out"
    run_recipe(load_recipe(path, out), overrides, device="cpu")
    assert sorted(p.name for p in (out / "translate_1" / "images").iterdir()) == [
        "00001.png",
        "00002.png",
        "00003.png",
    ]
    m0 = load_config(out / "m0_1" / "config.yaml")
    # The command's data.source.root reached F and the translation, not M.
    assert m0.data.source.root == str(out / "translate_1") and m0.train.steps == 2
    assert load_config(out / "translation_1" / "config.yaml").data.source.root == str(
        tmp_path / "GTA5"
    )
