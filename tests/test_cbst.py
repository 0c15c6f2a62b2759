"""CBST: class-balanced thresholds per round, the spatial prior, the pooled source + target loss,
rare-class mining, and the shipped recipes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.engine_helpers import TINY_MODEL, RecordingContext, tiny_config, write_tiny_benchmark
from tests.fake_layouts import write_gta5_to_cityscapes
from udaseg import pseudo_labels
from udaseg.cli import main
from udaseg.config import config_from_dict, from_dict, load_config
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.engine.trainer import train
from udaseg.errors import ConfigError
from udaseg.methods.base import SetupContext
from udaseg.methods.cbst import (
    CBST,
    mine_classes,
    mining_crop_offsets,
    pooled_cross_entropy,
    source_images_per_target_image,
)
from udaseg.models import build_segmentor
from udaseg.models.deeplabv2 import DeepLabV2Config
from udaseg.recipes import load_recipe, run_recipe

NUM_CLASSES = CITYSCAPES19.num_classes


def cross_entropy(logits: np.ndarray, label: int) -> float:
    """-log softmax(logits)[label] for one pixel's logits [C], computed directly."""
    shifted = logits - logits.max()
    return float(np.log(np.exp(shifted).sum()) - shifted[label])


# --- class-balanced thresholds, round by round -----------------------------------------------


def test_class_balanced_thresholds_follow_the_portion_schedule() -> None:
    # Class 0 is predicted on 10 pixels with confidences 0.95, 0.90, ..., 0.50; class 1 on 4
    # pixels with 0.6, 0.59, 0.58, 0.57 (the other class gets the rest of the probability).
    confidences_0 = [0.95 - 0.05 * index for index in range(10)]
    confidences_1 = [0.6, 0.59, 0.58, 0.57]
    probabilities = np.zeros((1, 2, 1, 14), dtype=np.float32)
    for position, value in enumerate(confidences_0):
        probabilities[0, :, 0, position] = [value, 1 - value]
    for position, value in enumerate(confidences_1):
        probabilities[0, :, 0, 10 + position] = [1 - value, value]
    confidence, predicted = pseudo_labels.confidence_and_prediction(torch.from_numpy(probabilities))
    # Threshold = element floor(n p) - 1 of the descending confidences (1 when floor(n p) = 0).
    expected = {
        0.2: (confidences_0[1], 1.0),  # floor(2.0) = 2 -> 0.90; floor(0.8) = 0 -> 1
        0.25: (confidences_0[1], confidences_1[0]),  # floor(2.5) = 2; floor(1.0) = 1 -> 0.6
        0.3: (confidences_0[2], confidences_1[0]),  # floor(3.0) = 3 -> 0.85; floor(1.2) = 1
        0.5: (confidences_0[4], confidences_1[1]),  # 5 -> 0.75; 2 -> 0.59
    }
    for portion, (threshold_0, threshold_1) in expected.items():
        thresholds = pseudo_labels.class_thresholds(
            confidence, predicted, 2, "class_balanced", portion=portion
        )
        assert thresholds.tolist() == pytest.approx([threshold_0, threshold_1], abs=1e-6)
    # Labels at portion 0.3: class 0 keeps its 3 most confident pixels, class 1 its best one.
    labels = pseudo_labels.assign(probabilities, "class_balanced", portion=0.3)[0, 0]
    assert labels.tolist() == [0, 0, 0, *[255] * 7, 1, 255, 255, 255]


def test_recipes_raise_the_portions_round_by_round() -> None:
    for name in ("recipes/toy_cbst.yaml", "recipes/toy_cbst_sp.yaml"):
        recipe = load_recipe(name)
        portions = [
            stage.spec["options"]["portion"]
            for stage in recipe.stages
            if stage.kind == "pseudo_label"
        ]
        assert portions == [0.2, 0.25, 0.3]
        weights = [
            stage.overrides["method.source_weight"]
            for stage in recipe.stages
            if stage.kind == "train" and stage.spec == "toy/cbst.yaml"
        ]
        # CRST's source portions 0.03, 0.0325, 0.035 of GTA5's 24966 images per 2975 targets.
        assert weights == [
            pytest.approx(source_images_per_target_image(24966, 2975, portion), abs=1e-4)
            for portion in (0.03, 0.0325, 0.035)
        ]
    gta = load_recipe("recipes/cbst_gta5_cityscapes.yaml")
    stages = {stage.name: stage for stage in gta.stages}
    assert [stages[f"labels_round{i}"].spec["options"]["portion"] for i in range(3)] == [
        0.2,
        0.25,
        0.3,
    ]
    assert [stages[f"round{i}"].overrides["method.source_portion"] for i in range(3)] == [
        0.03,
        0.0325,
        0.035,
    ]


# --- the spatial prior -----------------------------------------------------------------------


def test_spatial_prior_by_hand() -> None:
    maps = [np.array([[0, 1], [255, 1]]), np.array([[0, 0], [1, 255]])]
    prior = pseudo_labels.spatial_prior(maps, num_classes=3)
    assert prior.dtype == np.float32 and prior.shape == (3, 2, 2)
    # Fraction of the two maps holding the class at each position; void counts for no class.
    assert prior[0].tolist() == [[1.0, 0.5], [0.0, 0.0]]
    assert prior[1].tolist() == [[0.0, 0.5], [0.5, 0.5]]
    assert prior[2].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # Brought to a common size by nearest neighbour first: a 1x1 map of class 2 fills 2x2.
    resized = pseudo_labels.spatial_prior([np.array([[2]]), np.full((2, 2), 2)], 3, size=(2, 2))
    assert resized[2].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="pass size"):
        pseudo_labels.spatial_prior([np.zeros((2, 2)), np.zeros((1, 2))], 3)


def test_spatial_prior_multiplies_the_probabilities_before_labelling() -> None:
    # Two pixels, both predicted class 0 (0.6 vs 0.4). The prior makes class 1 likelier at the
    # second position: 0.6 x 0.2 = 0.12 < 0.4 x 0.8 = 0.32.
    probabilities = torch.tensor([[[[0.6, 0.6]], [[0.4, 0.4]]]])
    prior = np.array([[[1.0, 0.2]], [[1.0, 0.8]]], dtype=np.float32)
    product = pseudo_labels.apply_spatial_prior(probabilities, prior)
    assert product[0, :, 0, 1].tolist() == pytest.approx([0.12, 0.32])
    assert pseudo_labels.assign(probabilities, "argmax")[0, 0].tolist() == [0, 0]
    labels = pseudo_labels.assign(probabilities, "argmax", spatial_prior=prior)
    assert labels[0, 0].tolist() == [0, 1]
    # A prior of another size is resized bilinearly: a constant prior stays constant.
    constant = np.full((2, 3, 5), 0.5, dtype=np.float32)
    assert torch.allclose(
        pseudo_labels.apply_spatial_prior(probabilities, constant), 0.5 * probabilities
    )


def test_read_spatial_prior_refuses_a_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "prior.npy"
    pseudo_labels.write_array_npy(path, np.ones((2, 4, 4), dtype=np.float32))
    with pytest.raises(ConfigError, match=r"\[19, H, W\]"):
        pseudo_labels.read_spatial_prior(path, 19)
    assert pseudo_labels.read_spatial_prior(path, 2).shape == (2, 4, 4)


def test_pseudo_label_command_applies_the_spatial_prior(tmp_path: Path) -> None:
    """The prior reaches the labels: 1 for class 5 and 0 elsewhere makes every argmax label 5."""
    root = write_tiny_benchmark(tmp_path / "tiny")
    raw = tiny_config(root, tmp_path / "run", method={"name": "source_only"})
    raw["train"].update(steps=1, eval_at_end=False)
    train(config_from_dict(raw))
    prior = np.zeros((NUM_CLASSES, 8, 8), dtype=np.float32)
    prior[5] = 1.0
    prior_path = tmp_path / "prior.npy"
    pseudo_labels.write_array_npy(prior_path, prior)
    out = tmp_path / "labels"
    arguments = ["pseudo-label", "--checkpoint", str(tmp_path / "run/checkpoints/last.pt")]
    arguments += ["--policy", "argmax", "--spatial-prior", str(prior_path), "--out", str(out)]
    assert main(arguments) == 0
    summary = json.loads((out / "summary.json").read_text())
    labelled = summary["labelled_pixels"]
    pole = CITYSCAPES19.class_names[5]
    assert labelled[pole] == sum(labelled.values()) == summary["total_pixels"] > 0


# --- the pooled loss and the source weight ---------------------------------------------------


def test_source_weight_is_crsts_share_of_source_images() -> None:
    # floor(24966 x 0.03) = 748 source images next to 2975 target images.
    assert source_images_per_target_image(24966, 2975, 0.03) == pytest.approx(748 / 2975)
    assert source_images_per_target_image(100, 50, 0.0) == 0.0


def test_pooled_cross_entropy_by_hand() -> None:
    source_logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)
    source_labels = torch.tensor([[[0, 255]]])
    target_logits = torch.tensor([[0.5, 0.5], [3.0, 1.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 3)
    target_labels = torch.tensor([[[1, 0, 255]]])
    loss = pooled_cross_entropy(source_logits, source_labels, target_logits, target_labels, 0.25)
    source_sum = cross_entropy(np.array([1.0, 0.0]), 0)
    target_sum = cross_entropy(np.array([0.5, 0.5]), 1) + cross_entropy(np.array([3.0, 1.0]), 0)
    # (s x sum CE_source + sum CE_target) / (s x 1 valid source pixel + 2 valid target pixels)
    expected = (0.25 * source_sum + target_sum) / (0.25 * 1 + 2)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    target_only = pooled_cross_entropy(None, None, target_logits, target_labels, 0.25)
    assert float(target_only) == pytest.approx(target_sum / 2, rel=1e-6)


def make_method(**config) -> CBST:
    torch.manual_seed(0)
    segmentor = build_segmentor(from_dict(DeepLabV2Config, dict(TINY_MODEL)), NUM_CLASSES)
    method = CBST(from_dict(CBST.Config, config), segmentor, CITYSCAPES19)
    method.train(True)
    return method


def fake_datasets(source_count: int, target_count: int, pseudo_labels_dir: str = "x") -> dict:
    class Fake(list):
        pass

    source, target = Fake(range(source_count)), Fake(range(target_count))
    source.config = SimpleNamespace(crop=None)
    target.config = SimpleNamespace(pseudo_labels=pseudo_labels_dir, crop=None)
    return {"source": source, "target": target}


def test_step_loss_is_the_pooled_cross_entropy() -> None:
    method = make_method(source_portion=0.5)
    method.setup(
        SetupContext(datasets=fake_datasets(8, 5), resumed=False, device=torch.device("cpu"))
    )
    assert method.source_weight == pytest.approx(4 / 5)
    generator = torch.Generator().manual_seed(1)
    batch = {
        "source": {
            "image": torch.rand(2, 3, 32, 48, generator=generator) * 255,
            "label": torch.randint(0, 4, (2, 32, 48), generator=generator),
        },
        "target": {
            "image": torch.rand(2, 3, 32, 48, generator=generator) * 255,
            "pseudo_label": torch.randint(0, 4, (2, 32, 48), generator=generator),
        },
    }
    batch["target"]["pseudo_label"][:, :10] = 255
    with torch.no_grad():
        expected = pooled_cross_entropy(
            method.segmentor(batch["source"]["image"])["logits"],
            batch["source"]["label"],
            method.segmentor(batch["target"]["image"])["logits"],
            batch["target"]["pseudo_label"],
            4 / 5,
        )
    context = RecordingContext(method.trainable_modules())
    scalars = method.training_step(batch, context)
    assert context.losses == [pytest.approx(float(expected), rel=1e-5)]
    assert float(scalars["source_weight"]) == pytest.approx(0.8)


def test_explicit_source_weight_wins_over_the_portion() -> None:
    method = make_method(source_portion=0.5, source_weight=0.25)
    method.setup(
        SetupContext(datasets=fake_datasets(8, 5), resumed=False, device=torch.device("cpu"))
    )
    assert method.source_weight == 0.25


# --- rare-class mining -----------------------------------------------------------------------


def test_mine_classes_by_predicted_share() -> None:
    predicted = [5000, 3, 0, 996, 1]
    total = sum(predicted)  # 6000: shares 0.83, 0.0005, 0, 0.17, 0.00017
    shares = [count / total for count in predicted]
    assert [index for index, share in enumerate(shares) if share < 1e-3] == [1, 2, 4]
    # CRST: every class below the portion, rarest first.
    assert mine_classes(predicted, 1e-3) == [2, 4, 1]
    # MXNet CBST: the 3 rarest whatever their share.
    assert mine_classes(predicted, 1e-3, rarest=3) == [2, 4, 1]
    assert mine_classes(predicted, 1e-3, rarest=4) == [2, 4, 1, 3]


def test_mining_centres_the_crop_on_a_mined_pixel() -> None:
    labels = torch.zeros(40, 60, dtype=torch.long)
    labels[20, 30] = 7  # one pixel of the mined class, far from the borders
    torch.manual_seed(0)
    assert mining_crop_offsets(labels, (10, 20), [7], chance=1.0) == (15, 20)
    # Near a border the crop is shifted inside the image and still holds the pixel.
    labels = torch.zeros(40, 60, dtype=torch.long)
    labels[1, 58] = 7
    top, left = mining_crop_offsets(labels, (10, 20), [7], chance=1.0)
    assert (top, left) == (0, 40) and labels[top : top + 10, left : left + 20].eq(7).any()
    # Without mining (chance 0) the offsets are uniform: over many draws most miss the pixel.
    hits = 0
    for _ in range(50):
        top, left = mining_crop_offsets(labels, (10, 20), [7], chance=0.0)
        hits += int(labels[top : top + 10, left : left + 20].eq(7).any())
    assert hits < 25


def test_crop_target_pads_small_images_like_crst() -> None:
    method = make_method(crop=[40, 50], mine_chance=0.0)
    target = {"image": torch.ones(2, 3, 32, 48), "pseudo_label": torch.zeros(2, 32, 48).long()}
    cropped = method.crop_target(target)
    assert cropped["image"].shape == (2, 3, 40, 50) and cropped["pseudo_label"].shape == (2, 40, 50)
    assert cropped["image"][:, :, 32:].eq(0).all() and cropped["pseudo_label"][:, 32:].eq(255).all()
    assert cropped["image"][:, :, :32, :48].eq(1).all()


def test_mining_needs_the_summary_and_whole_target_images(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="crop"):
        from_dict(CBST.Config, {"mine_chance": 0.8}).validate()
    method = make_method(crop=[16, 16], mine_chance=0.8)
    context = SetupContext(
        datasets=fake_datasets(8, 5, str(tmp_path)), resumed=False, device=torch.device("cpu")
    )
    with pytest.raises(ConfigError, match="summary.json"):
        method.setup(context)
    counts = {name: 1000 for name in CITYSCAPES19.class_names}
    counts["train"] = 0
    (tmp_path / "summary.json").write_text(json.dumps({"predicted_pixels": counts}))
    method.setup(context)
    assert method.mine_classes == [CITYSCAPES19.class_names.index("train")]


# --- shipped configs and recipes -------------------------------------------------------------


def test_experiment_config_holds_crsts_settings() -> None:
    config = load_config("experiments/cbst_gta5_cityscapes.yaml")
    assert config.method.name == "cbst" and config.method.source_portion == 0.03
    assert (config.method.mine_chance, config.method.mine_portion) == (0.8, 0.001)
    segmentor = config.optim["segmentor"]
    assert (segmentor.lr, segmentor.momentum, segmentor.weight_decay) == (5e-5, 0.9, 5e-4)
    assert config.schedule.name == "constant" and config.model.bn == "frozen"
    assert config.data.source.crop == (512, 1024) and config.method.crop == (512, 1024)
    assert config.data.batch_size == 2 and config.train.steps == 2975


def test_toy_config_keeps_the_source_only_model() -> None:
    config = load_config("toy/cbst.yaml")
    baseline = load_config("toy/source_only.yaml")
    assert config.model == baseline.model and config.data.source == baseline.data.source
    assert config.method.crop == baseline.data.target.crop and config.data.target.crop is None


def test_gta_recipe_runs_on_tiny_files_in_the_real_layouts(tmp_path: Path) -> None:
    overrides = write_gta5_to_cityscapes(tmp_path)
    overrides = [item for item in overrides if not item.startswith("run_dir=")]
    overrides += ["train.steps=1", "train.eval_at_end=false", "data.target.resize=[32,64]"]
    overrides += [
        "eval.input_size=[32,64]",
        "data.source.resize=[36,64]",
        "data.source.crop=[32,48]",
    ]
    recipe = load_recipe("recipes/cbst_gta5_cityscapes.yaml", tmp_path / "recipe")
    for stage in recipe.stages:
        if stage.name.startswith("round"):  # the 512x1024 crop, shrunk with the images
            stage.overrides["method.crop"] = [32, 48]
    results = run_recipe(recipe, overrides, device="cpu")
    assert [result.name for result in results][-1] == "round2"
    summary = json.loads((tmp_path / "recipe" / "labels_round2" / "summary.json").read_text())
    assert summary["options"] == {"portion": 0.3}
    assert (tmp_path / "recipe" / "round2" / "checkpoints" / "last.pt").is_file()
    assert math.isfinite(summary["overall_kept_fraction"])
