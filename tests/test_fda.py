"""FDA and FDA-MBT: the Fourier amplitude swap, the robust entropy, the method, configs, recipes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.engine_helpers import (
    TINY_MODEL,
    RecordingContext,
    tiny_config,
    write_config,
    write_tiny_benchmark,
)
from tests.fake_layouts import write_gta5_to_cityscapes
from udaseg.config import (
    PACKAGED_CONFIGS,
    apply_overrides,
    config_from_dict,
    from_dict,
    load_config,
    load_raw,
)
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.errors import ConfigError
from udaseg.losses.entropy import charbonnier_entropy_loss
from udaseg.losses.segmentation import segmentation_loss
from udaseg.methods.base import SetupContext
from udaseg.methods.fda import FDA
from udaseg.models import build_segmentor
from udaseg.models.deeplabv2 import DeepLabV2Config
from udaseg.recipes import load_recipe, run_recipe
from udaseg.translation import fda_source_to_target, fda_window_size

NUM_CLASSES = CITYSCAPES19.num_classes


# --- the transform against a direct numpy computation --------------------------------------


def numpy_fda(source: np.ndarray, target: np.ndarray, beta: float, window: str) -> np.ndarray:
    """The released code's two transforms, re-derived with numpy in float64.

    corners: the amplitude of the four b x b corner blocks of the unshifted spectrum is the
    target's (utils/__init__.py low_freq_mutate); centered: the (2b+1)^2 block around the centre
    of the fftshift-ed spectrum (low_freq_mutate_np).
    """
    source_spectrum = np.fft.fft2(source, axes=(-2, -1))
    amplitude = np.abs(source_spectrum)
    target_amplitude = np.abs(np.fft.fft2(target, axes=(-2, -1)))
    height, width = source.shape[-2:]
    b = int(np.floor(min(height, width) * beta))
    if window == "corners":
        for rows in (slice(0, b), slice(height - b, height)):
            for columns in (slice(0, b), slice(width - b, width)):
                amplitude[..., rows, columns] = target_amplitude[..., rows, columns]
    else:
        shifted = np.fft.fftshift(amplitude, axes=(-2, -1))
        shifted_target = np.fft.fftshift(target_amplitude, axes=(-2, -1))
        centre_row, centre_column = height // 2, width // 2
        block = (
            Ellipsis,
            slice(centre_row - b, centre_row + b + 1),
            slice(centre_column - b, centre_column + b + 1),
        )
        shifted[block] = shifted_target[block]
        amplitude = np.fft.ifftshift(shifted, axes=(-2, -1))
    spectrum = amplitude * np.exp(1j * np.angle(source_spectrum))
    return np.real(np.fft.ifft2(spectrum, axes=(-2, -1)))


def random_images(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, shape)


@pytest.mark.parametrize("window", ["corners", "centered"])
@pytest.mark.parametrize("beta", [0.01, 0.05, 0.09, 0.2, 0.5])
@pytest.mark.parametrize("size", [(40, 56), (33, 47)], ids=["even", "odd"])
def test_transform_matches_numpy(window: str, beta: float, size: tuple[int, int]) -> None:
    source, target = random_images((2, 3, *size), 0), random_images((2, 3, *size), 1)
    translated = fda_source_to_target(
        torch.tensor(source, dtype=torch.float32),
        torch.tensor(target, dtype=torch.float32),
        beta,
        window,
    )
    assert translated.dtype == torch.float32 and translated.shape == (2, 3, *size)
    expected = numpy_fda(source, target, beta, window)
    # float32 FFTs of 0..255 images: round-off of a few 1e-4 grey levels.
    assert np.abs(translated.numpy() - expected).max() < 2e-3
    if fda_window_size(*size, beta) > 0:
        assert np.abs(translated.numpy() - source).max() > 1.0  # it did change something


def test_window_sizes_of_the_paper() -> None:
    # REFERENCE §3.5: b = 5, 25, 46 on the 512x1024 training crops.
    assert [fda_window_size(512, 1024, beta) for beta in (0.01, 0.05, 0.09)] == [5, 25, 46]
    # The toy benchmark's 64x128 crops: beta 0.01 gives an empty window.
    assert [fda_window_size(64, 128, beta) for beta in (0.01, 0.05, 0.09)] == [0, 3, 5]


@pytest.mark.parametrize("window", ["corners", "centered"])
def test_phase_is_kept(window: str) -> None:
    """The FFT of the output has the source's phase wherever its amplitude is not ~0.

    Even with the asymmetric corner window: taking the real part averages the amplitudes at k
    and -k, but both carry the source's phase (conjugate-symmetric for a real image).
    """
    source, target = random_images((1, 3, 32, 48), 2), random_images((1, 3, 32, 48), 3)
    translated = fda_source_to_target(
        torch.tensor(source, dtype=torch.float32), torch.tensor(target, dtype=torch.float32), 0.2
    ).numpy()
    source_spectrum = np.fft.fft2(source, axes=(-2, -1))
    output_spectrum = np.fft.fft2(translated.astype(np.float64), axes=(-2, -1))
    significant = np.abs(output_spectrum) > 1.0
    assert significant.mean() > 0.99
    difference = np.angle(output_spectrum * np.conj(source_spectrum))[significant]
    assert np.abs(difference).max() < 1e-3
    # ... while the low-frequency amplitude did change: the DC term is the target's.
    assert np.allclose(
        np.abs(output_spectrum[..., 0, 0]),
        np.abs(np.fft.fft2(target, axes=(-2, -1))[..., 0, 0]),
        rtol=1e-5,
    )


def test_beta_zero_is_the_identity() -> None:
    source, target = random_images((2, 3, 24, 40), 4), random_images((2, 3, 24, 40), 5)
    translated = fda_source_to_target(
        torch.tensor(source, dtype=torch.float32), torch.tensor(target, dtype=torch.float32), 0.0
    )
    assert np.abs(translated.numpy() - source).max() < 1e-3
    # So is any beta whose window rounds down to b = 0 (0.04 x 24 = 0.96).
    small = fda_source_to_target(
        torch.tensor(source, dtype=torch.float32), torch.tensor(target, dtype=torch.float32), 0.04
    )
    assert np.abs(small.numpy() - source).max() < 1e-3


def test_centered_window_of_size_zero_swaps_the_channel_means() -> None:
    """The numpy helper's (2b+1)^2 window holds the zero frequency even at b = 0: the output is
    the source with each channel's mean replaced by the target's (phase 0 for >= 0 images)."""
    source, target = random_images((1, 3, 16, 20), 6), random_images((1, 3, 16, 20), 7) * 0.5
    translated = fda_source_to_target(
        torch.tensor(source, dtype=torch.float32),
        torch.tensor(target, dtype=torch.float32),
        0.0,
        "centered",
    ).numpy()
    expected = source - source.mean(axis=(-2, -1), keepdims=True)
    expected += target.mean(axis=(-2, -1), keepdims=True)
    assert np.abs(translated - expected).max() < 1e-3


def test_output_is_not_clamped_and_inputs_are_checked() -> None:
    # A black image given a white image's amplitude goes negative at some pixels: kept as is.
    source = torch.zeros(1, 3, 16, 16)
    source[..., 4:12, 4:12] = 255.0
    target = torch.full((1, 3, 16, 16), 255.0)
    translated = fda_source_to_target(source, target, 0.25)
    assert translated.max() > 255.0 or translated.min() < 0.0
    with pytest.raises(ValueError, match="one shape"):
        fda_source_to_target(source, target[..., :8], 0.01)
    with pytest.raises(ValueError, match="beta"):
        fda_source_to_target(source, target, 0.6)
    with pytest.raises(ValueError, match="window"):
        fda_source_to_target(source, target, 0.1, "square")  # type: ignore[arg-type]
    # uint8 input is computed in float32.
    as_bytes = fda_source_to_target(source.byte(), target.byte(), 0.25)
    assert as_bytes.dtype == torch.float32 and torch.allclose(as_bytes, translated)


# --- the robust entropy --------------------------------------------------------------------


def test_charbonnier_entropy_by_hand() -> None:
    # Three pixels of a 3-class map: (1/2, 1/4, 1/4), one-hot, uniform.
    probabilities = torch.tensor(
        [[0.5, 1.0, 1 / 3], [0.25, 0.0, 1 / 3], [0.25, 0.0, 1 / 3]], dtype=torch.float32
    ).view(1, 3, 1, 3)
    # Normalised entropies: 1.5 bits / log2(3) = 0.9463946, 0, 1. With eta 2, epsilon 1e-8:
    # (0.8956628 + 1e-8)^2 = 0.8022119, (1e-8)^2 = 1e-16, (1 + 1e-8)^2 = 1.00000002.
    expected = (0.8022118627 + 1e-16 + 1.00000002) / 3  # 0.6007373
    assert charbonnier_entropy_loss(probabilities).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.6007373, abs=1e-7)
    # eta 1: the mean of entropy^2 + epsilon.
    assert charbonnier_entropy_loss(probabilities, eta=1.0).item() == pytest.approx(
        (0.8956628 + 0 + 1) / 3 + 1e-8, rel=1e-6
    )
    # Two classes, (0.9, 0.1): 0.4689956 bits / log2(2); eta 1.5, epsilon 0: 0.4689956^3.
    pixel = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1)
    value = charbonnier_entropy_loss(pixel, eta=1.5, epsilon=0.0).item()
    assert value == pytest.approx(0.4689956**3, rel=1e-5)


def test_charbonnier_entropy_equals_fdas_formula_on_logits() -> None:
    """model/deeplab.py: ent = -sum(softmax * log_softmax) / ln(19), (ent^2 + 1e-8)^ita, mean."""
    logits = torch.randn(2, 19, 5, 7, generator=torch.Generator().manual_seed(0)) * 3
    entropy = -(torch.softmax(logits, 1) * torch.log_softmax(logits, 1)).sum(1) / math.log(19)
    expected = ((entropy**2 + 1e-8) ** 2.0).mean()
    value = charbonnier_entropy_loss(torch.softmax(logits, dim=1), eta=2.0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


# --- the method ----------------------------------------------------------------------------


def make_method(multi_level: bool = False, **config) -> FDA:
    torch.manual_seed(0)
    segmentor = build_segmentor(
        from_dict(DeepLabV2Config, {**TINY_MODEL, "multi_level": multi_level}), NUM_CLASSES
    )
    method = FDA(from_dict(FDA.Config, {"beta": 0.1, **config}), segmentor, CITYSCAPES19)
    method.train(True)
    return method


def make_batch(target_size=(32, 48), pseudo_labels: bool = False) -> dict:
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, NUM_CLASSES, (2, 32, 48), generator=generator)
    labels[:, :4] = 255
    batch = {
        "source": {"image": torch.rand(2, 3, 32, 48, generator=generator) * 255, "label": labels},
        "target": {"image": torch.rand(2, 3, *target_size, generator=generator) * 200 + 40},
    }
    if pseudo_labels:
        pseudo = torch.randint(0, NUM_CLASSES, (2, *target_size), generator=generator)
        pseudo[:, :, ::2] = 255
        batch["target"]["pseudo_label"] = pseudo
    return batch


def test_source_loss_is_on_the_translated_images() -> None:
    method = make_method(multi_level=True)
    batch = make_batch()
    with torch.no_grad():
        translated = fda_source_to_target(batch["source"]["image"], batch["target"]["image"], 0.1)
        outputs = method.segmentor(translated)
        labels = batch["source"]["label"]
        expected = segmentation_loss(outputs["logits"], labels)
        expected += 0.1 * segmentation_loss(outputs["aux_logits"], labels)
        untranslated = segmentation_loss(
            method.segmentor(batch["source"]["image"])["logits"], labels
        )
    context = RecordingContext(method.trainable_modules())
    method.training_step(batch, context)
    assert context.losses[0] == pytest.approx(float(expected), rel=1e-5)
    assert float(untranslated) != pytest.approx(context.losses[0], rel=1e-3)


def test_entropy_switches_on_after_the_configured_step() -> None:
    method = make_method(entropy_after_step=3, lambda_ent=0.005)
    calls: list[int] = []
    method.segmentor.register_forward_hook(lambda *_: calls.append(1))
    batch = make_batch()
    context = RecordingContext(method.trainable_modules())
    context.step = 3  # train.py: entropy when i > switch2entropy
    scalars = method.training_step(batch, context)
    # Only the source loss is backpropagated, but the target batch went through the network
    # (the original forwards it every step: target BN statistics from the start).
    assert len(context.losses) == 1 and len(calls) == 2
    assert float(scalars["loss_ent"]) > 0
    context = RecordingContext(method.trainable_modules())
    context.step = 4
    scalars = method.training_step(batch, context)
    assert len(context.losses) == 2
    with torch.no_grad():
        logits = method.segmentor(batch["target"]["image"])["logits"]
    expected = 0.005 * charbonnier_entropy_loss(torch.softmax(logits, dim=1), eta=2.0)
    assert context.losses[1] == pytest.approx(float(expected), rel=1e-5)
    assert float(scalars["loss_ent"]) == pytest.approx(float(expected) / 0.005, rel=1e-5)


def test_self_training_adds_the_pseudo_label_cross_entropy() -> None:
    method = make_method(self_training=True, entropy_after_step=-1, lambda_target=0.5)
    batch = make_batch(pseudo_labels=True)
    with torch.no_grad():
        logits = method.segmentor(batch["target"]["image"])["logits"]
        entropy = charbonnier_entropy_loss(torch.softmax(logits, dim=1))
        pseudo = segmentation_loss(logits, batch["target"]["pseudo_label"])
    context = RecordingContext(method.trainable_modules())
    scalars = method.training_step(batch, context)
    assert context.losses[1] == pytest.approx(float(0.005 * entropy + 0.5 * pseudo), rel=1e-5)
    assert float(scalars["loss_seg_target"]) == pytest.approx(float(pseudo), rel=1e-5)


def test_self_training_needs_pseudo_labels() -> None:
    class Dataset:
        def __init__(self, pseudo_labels: str | None) -> None:
            self.config = type("Config", (), {"pseudo_labels": pseudo_labels})()

    method = make_method(self_training=True)
    with pytest.raises(ConfigError, match="data.target.pseudo_labels"):
        method.setup(SetupContext({"target": Dataset(None)}, False, torch.device("cpu")))
    method.setup(SetupContext({"target": Dataset("labels")}, False, torch.device("cpu")))
    # Plain FDA ignores pseudo labels, as every method does.
    make_method().setup(SetupContext({"target": Dataset(None)}, False, torch.device("cpu")))


def test_target_of_another_size_is_resized_to_the_source() -> None:
    method = make_method()
    batch = make_batch(target_size=(40, 64))
    translated = method.translate(batch["source"]["image"], batch["target"]["image"])
    resized = torch.nn.functional.interpolate(
        batch["target"]["image"], size=(32, 48), mode="bilinear", align_corners=False
    )
    expected = fda_source_to_target(batch["source"]["image"], resized, 0.1)
    assert translated.shape == (2, 3, 32, 48) and torch.allclose(translated, expected)
    # A smaller target batch is reused in turn.
    one = method.translate(batch["source"]["image"], batch["target"]["image"][:1])
    expected = fda_source_to_target(
        batch["source"]["image"], resized[:1].expand(2, -1, -1, -1), 0.1
    )
    assert torch.allclose(one, expected)


@pytest.mark.parametrize(
    ("key", "value"),
    [("beta", 0.7), ("eta", 0.0), ("lambda_ent", -1), ("entropy_after_step", -2)],
)
def test_bad_options_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, ["method.name=fda", f"method.{key}={value}"])


# --- shipped configs and recipes -----------------------------------------------------------


def test_experiment_configs_hold_the_papers_settings() -> None:
    betas = {"fda": 0.01, "fda_beta005": 0.05, "fda_beta009": 0.09}
    for name, beta in betas.items():
        config = load_config(f"experiments/{name}_gta5_cityscapes.yaml")
        method = config.method
        assert (method.name, method.beta, method.window) == ("fda", beta, "corners")
        assert (method.lambda_ent, method.eta, method.charbonnier_epsilon) == (0.005, 2.0, 1e-8)
        assert method.entropy_after_step == 50000 and not method.self_training
        assert config.data.source.resize == (720, 1280) and config.data.source.crop == (512, 1024)
        assert config.data.target.resize == (512, 1024) and config.data.batch_size == 1
        assert not config.model.multi_level and config.model.aspp_branches == 4
        segmentor = config.optim["segmentor"]
        assert (segmentor.lr, segmentor.momentum, segmentor.weight_decay) == (2.5e-4, 0.9, 5e-4)
        assert config.schedule.total_steps == 150000 and config.train.steps == 100000
    mbt = load_config("experiments/fda_mbt_self_training_gta5_cityscapes.yaml")
    assert mbt.method.self_training and mbt.method.entropy_after_step == -1
    assert mbt.method.beta == 0.01 and mbt.method.lambda_target == 1.0


def test_toy_configs_share_the_source_only_budget() -> None:
    baseline = load_config("toy/source_only.yaml")
    for name in ("fda", "fda_beta005", "fda_beta009", "fda_mbt_self_training"):
        config = load_config(f"toy/{name}.yaml")
        assert config.train.steps == baseline.train.steps and config.data == baseline.data
        assert config.optim["segmentor"] == baseline.optim["segmentor"]
        assert config.model == baseline.model, name


def test_gta5_recipe_validates() -> None:
    recipe = load_recipe("recipes/fda_mbt_gta5_cityscapes.yaml")
    stages = {stage.name: stage for stage in recipe.stages}
    assert list(stages) == ["fda_beta001", "fda_beta005", "fda_beta009", "pseudo_labels", "fda_mbt"]
    labels = stages["pseudo_labels"].spec
    assert labels["checkpoints"] == [
        f"${{stages.fda_beta00{digit}.checkpoint}}" for digit in (1, 5, 9)
    ]
    assert labels["policy"] == "class_percentile"
    assert labels["options"] == {"percentile": 66, "cap": 0.9}
    assert labels["set"] == {"eval.input_size": [512, 1024]}
    final = stages["fda_mbt"]
    assert final.overrides == {"data.target.pseudo_labels": "${stages.pseudo_labels.dir}"}
    for name, beta in (("fda_beta001", 0.01), ("fda_beta005", 0.05), ("fda_beta009", 0.09)):
        config = config_from_dict(load_raw(stages[name].spec))
        assert config.method.beta == beta
    raw = apply_overrides(load_raw(final.spec), ["data.target.pseudo_labels=placeholder"])
    assert config_from_dict(raw).method.self_training


def test_gta5_recipe_starts_on_the_real_layouts(tmp_path: Path) -> None:
    """Every stage of recipes/fda_mbt_gta5_cityscapes.yaml on tiny GTA5/Cityscapes files."""
    overrides = write_gta5_to_cityscapes(tmp_path)
    overrides = [item for item in overrides if not item.startswith("run_dir=")]
    overrides += ["data.source.crop=[32,64]", "train.eval_at_end=false", "schedule.total_steps=4"]
    recipe = load_recipe(PACKAGED_CONFIGS / "recipes" / "fda_mbt_gta5_cityscapes.yaml", tmp_path)
    results = run_recipe(recipe, overrides, device="cpu")
    assert [result.name for result in results][-1] == "fda_mbt"
    final = load_config(tmp_path / "fda_mbt" / "config.yaml")
    assert final.method.self_training
    assert final.data.target.pseudo_labels == str(tmp_path / "pseudo_labels")
    summary = yaml.safe_load((tmp_path / "pseudo_labels" / "summary.json").read_text())
    assert len(summary["checkpoints"]) == 3  # the mean softmax of the three beta models
    assert summary["options"] == {"percentile": 66.0, "cap": 0.9}


def test_toy_recipe_runs_on_tiny_data(tmp_path: Path) -> None:
    """The shipped toy recipe's stages and wiring, each config swapped for a tiny one."""
    root = write_tiny_benchmark(tmp_path / "tiny")
    short = {"steps": 2, "checkpoint_every": 2, "eval_at_end": False}
    shipped = yaml.safe_load((PACKAGED_CONFIGS / "recipes" / "toy_fda_mbt.yaml").read_text())
    configs = {}
    for stage in shipped["stages"]:
        if "train" not in stage:
            continue
        source = load_raw(stage["train"])
        raw = tiny_config(root, tmp_path / "unused")
        raw["method"] = source["method"]  # as shipped, without the engine tests' options
        raw["data"]["target"].pop("pseudo_labels")
        raw["data"]["target"]["crop"] = [32, 48]  # the source crop: FDA's same-size pairs
        raw["train"] = {**raw["train"], **short}
        path = write_config(tmp_path / f"{stage['name']}.yaml", raw)
        configs[stage["train"]] = stage["train"] = str(path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(shipped), encoding="utf-8")
    results = run_recipe(load_recipe(path, tmp_path / "out"), device="cpu")
    assert [result.skipped for result in results] == [False] * len(results)
    out = tmp_path / "out"
    for name, beta in (("fda_beta001", 0.01), ("fda_beta005", 0.05), ("fda_beta009", 0.09)):
        assert load_config(out / name / "config.yaml").method.beta == beta
    final = load_config(out / "fda_mbt" / "config.yaml")
    assert final.method.self_training and final.data.target.pseudo_labels == str(
        out / "pseudo_labels"
    )
    labels = sorted((out / "pseudo_labels").rglob("*.png"))
    assert labels, "no pseudo labels were written"
