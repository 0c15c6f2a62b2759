"""The contrastive family: losses against hand-computed values, the memory bank, the configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.engine_helpers import (
    ENGINE_TEST_METHOD_OPTIONS,
    TINY_MODEL,
    RecordingContext,
    tiny_config,
    write_tiny_benchmark,
)
from udaseg.config import config_from_dict, from_dict, load_config
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.engine.trainer import train
from udaseg.errors import ConfigError
from udaseg.losses.contrastive import (
    class_balanced_pixel_sample,
    mean_one_weights,
    supervised_pixel_contrastive_loss,
    weighted_cosine_loss,
)
from udaseg.methods.memory_bank_contrastive import (
    ClassMemoryBank,
    MemoryBankContrastive,
    select_bank_entries,
    sigmoid_ramp_up,
)
from udaseg.models import build_segmentor
from udaseg.models.deeplabv2 import DeepLabV2Config
from udaseg.models.projection import ClassSelectors

NUM_CLASSES = CITYSCAPES19.num_classes


def make_memory_bank_method(**config) -> MemoryBankContrastive:
    torch.manual_seed(0)
    segmentor = build_segmentor(from_dict(DeepLabV2Config, TINY_MODEL), NUM_CLASSES)
    method_config = from_dict(MemoryBankContrastive.Config, config)
    method = MemoryBankContrastive(method_config, segmentor, CITYSCAPES19)
    method.train(True)
    return method


# --- the weighted 1 - cosine loss ------------------------------------------------------------


def test_mean_one_weights_keep_ratios_and_average_one() -> None:
    weights = mean_one_weights(torch.tensor([0.5, 0.25, 0.25]))
    # N / sum(S) = 3 / 1 = 3: the slides' w = N / sum S x S.
    assert torch.allclose(weights, torch.tensor([1.5, 0.75, 0.75]))


def test_weighted_cosine_loss_by_hand() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # directions (1, 0) and (0, 1)
    memory = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # directions (1, 0) and (1, 1)/sqrt 2
    # 1 - cos: [[0, 1 - 1/sqrt2], [1, 1 - 1/sqrt2]]
    gap = 1.0 - 1.0 / math.sqrt(2.0)
    assert float(weighted_cosine_loss(features, memory)) == pytest.approx((0 + gap + 1 + gap) / 4)
    feature_weights = torch.tensor([1.5, 0.5])
    memory_weights = torch.tensor([0.4, 1.6])
    expected = (
        1.5 * 0.4 * 0.0 + 1.5 * 1.6 * gap + 0.5 * 0.4 * 1.0 + 0.5 * 1.6 * gap
    ) / 4  # mean of w_p w_z' (1 - cos) over the 2 x 2 pairs
    value = weighted_cosine_loss(features, memory, feature_weights, memory_weights)
    assert float(value) == pytest.approx(expected)


def test_method_loss_averages_classes_over_all_of_them() -> None:
    """Identity heads and constant selectors: L = 1/C sum_c mean(1 - cos), from numpy."""
    method = make_memory_bank_method(memory_weighting="released_code", projection_channels=2)
    method.heads.projection = nn.Identity()
    method.heads.prediction = nn.Identity()
    method.heads.feature_selectors = ConstantScores()
    method.bank = ClassMemoryBank(NUM_CLASSES, 4, 2)
    method.bank.add(0, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    method.bank.add(3, torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    method.bank.add(5, torch.tensor([[0.0, 1.0]]))  # one entry: class 5 is skipped (code)
    features = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]]])  # [1, 2, 2, 2]
    labels = torch.tensor([[[0, 0], [3, 5]]])  # at feature resolution
    loss = method.contrastive_loss(features, labels)

    def mean_distance(vectors: np.ndarray, memory: np.ndarray) -> float:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        memory = memory / np.linalg.norm(memory, axis=1, keepdims=True)
        return float(np.mean(1.0 - vectors @ memory.T))

    class_0 = mean_distance(np.array([[1.0, 0.0], [2.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 1.0]]))
    # class 3 has one pixel: skipped too (the code needs two vectors on both sides)
    assert float(loss) == pytest.approx(class_0 / NUM_CLASSES)


class ConstantScores(nn.Module):
    def forward(self, vectors: torch.Tensor, class_index: int) -> torch.Tensor:
        return vectors[:, 0] * 0.0


class FirstCoordinateScores(nn.Module):
    def forward(self, vectors: torch.Tensor, class_index: int) -> torch.Tensor:
        return vectors[:, 0]


# --- the bank: selection, FIFO, filter, resume -----------------------------------------------


def test_top_k_selection_highest_and_lowest() -> None:
    vectors = torch.arange(10.0).reshape(5, 2)
    scores = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.9])
    highest = select_bank_entries(vectors, scores, 3, "highest")
    assert highest.tolist() == [[2.0, 3.0], [8.0, 9.0], [6.0, 7.0]]  # 0.9, 0.9 (pixel order), 0.5
    lowest = select_bank_entries(vectors, scores, 2, "lowest")
    assert lowest.tolist() == [[4.0, 5.0], [0.0, 1.0]]  # 0.1, 0.3: the released code's pick
    # No more than K candidates: all of them, unranked.
    assert torch.equal(select_bank_entries(vectors[:2], scores[:2], 3), vectors[:2])


def test_bank_is_fifo_with_newest_first() -> None:
    bank = ClassMemoryBank(num_classes=2, size=3, channels=1)
    bank.add(1, torch.tensor([[1.0], [2.0]]))
    bank.add(1, torch.tensor([[3.0], [4.0]]))
    # concatenate((new, memory))[:3]: the oldest entry (2) drops out.
    assert bank.entries(1).flatten().tolist() == [3.0, 4.0, 1.0]
    assert bank.entries(0).shape == (0, 1)
    restored = ClassMemoryBank(num_classes=2, size=3, channels=1)
    restored.load(bank.state())
    assert torch.equal(restored.entries(1), bank.entries(1)) and restored.counts.tolist() == [0, 3]
    with pytest.raises(ConfigError, match="memory_per_class"):
        ClassMemoryBank(num_classes=2, size=4, channels=1).load(bank.state())


class StubTeacher(nn.Module):
    """Fixed logits and features for images of size 2x2 (feature grid = image grid)."""

    def __init__(self, logits: torch.Tensor, features: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.features = logits, features

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.logits, "features": self.features}


def _stubbed_bank_method(**config) -> MemoryBankContrastive:
    method = make_memory_bank_method(projection_channels=2, memory_per_class=8, **config)
    confident, unsure = 10.0, 0.0  # logit of the predicted class; others 0
    logits = torch.zeros(1, NUM_CLASSES, 2, 2)
    # Pixels (row, column): (0,0) predicts 1 surely, (0,1) 1 surely, (1,0) 1 unsure, (1,1) 2 surely.
    logits[0, 1, 0, 0], logits[0, 1, 0, 1], logits[0, 1, 1, 0] = confident, confident, unsure + 0.1
    logits[0, 2, 1, 1] = confident
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]])
    method.teacher = StubTeacher(logits, features)
    method.teacher_heads.projection = nn.Identity()
    method.teacher_heads.feature_selectors = FirstCoordinateScores()
    method.entries_per_image = 1
    return method


def test_bank_update_filters_then_keeps_the_top_k() -> None:
    method = _stubbed_bank_method()
    images = torch.zeros(1, 3, 2, 2)
    # Labels: (0,0) 1 (correct), (0,1) 1 (correct), (1,0) 1 (not confident), (1,1) 3 (wrong).
    labels = torch.tensor([[[1, 1], [1, 3]]])
    method.update_bank(images, labels)
    # Class 1: two confident correct vectors (1, 5) and (2, 6); K = 1 image x 1: the higher
    # first-coordinate score, (2, 6). Class 3: the prediction was 2, so nothing.
    assert method.bank.entries(1).tolist() == [[2.0, 6.0]]
    assert method.bank.counts.sum() == 1

    lowest = _stubbed_bank_method(bank_selection="lowest")
    lowest.update_bank(images, labels)
    assert lowest.bank.entries(1).tolist() == [[1.0, 5.0]]

    confident_only = _stubbed_bank_method(bank_requires_correct=False)
    confident_only.update_bank(images, labels)
    assert confident_only.bank.entries(3).tolist() == [[4.0, 8.0]]  # the wrong but sure pixel


def test_bank_update_inserts_every_ranks_picks_in_rank_order() -> None:
    method = _stubbed_bank_method()
    # Two ranks: rank 1's picks are rank 0's plus 100 (a fake all_gather).
    method.all_gather = lambda tensor: torch.stack(
        [tensor, tensor + 100 if tensor.is_floating_point() else tensor]
    )
    method.update_bank(torch.zeros(1, 3, 2, 2), torch.tensor([[[1, 1], [1, 3]]]))
    assert method.bank.entries(1).tolist() == [[2.0, 6.0], [102.0, 106.0]]


def test_registry_options_fill_the_bank_in_one_step(tmp_path: Path) -> None:
    """The engine tests' options (engine_helpers) do exercise the bank and the heads."""
    method = make_memory_bank_method(**ENGINE_TEST_METHOD_OPTIONS["memory_bank_contrastive"])
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 48, generator=generator) * 255
    labels = torch.randint(0, 3, (2, 32, 48), generator=generator)
    batch = {"source": {"image": images, "label": labels}, "target": {"image": images.flip(0)}}
    scalars = method.training_step(batch, RecordingContext())
    assert method.bank.counts.sum() > 0 and float(scalars["loss_contrastive"]) > 0
    assert all(math.isfinite(float(value)) for value in scalars.values())
    assert method.heads.memory_selectors.hidden_weight.grad.abs().sum() > 0
    state = method.extra_state()
    other = make_memory_bank_method(**ENGINE_TEST_METHOD_OPTIONS["memory_bank_contrastive"])
    other.load_extra_state(state)
    assert torch.equal(other.bank.features, method.bank.features)


def test_class_selectors_equal_separate_mlps() -> None:
    """Stacked selectors compute each class's own Linear-BN-ReLU-Linear."""
    torch.manual_seed(0)
    selectors = ClassSelectors(num_classes=3, channels=4)
    vectors = torch.randn(5, 4)
    index = 2
    separate = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        separate[0].weight.copy_(selectors.hidden_weight[index])
        separate[0].bias.copy_(selectors.hidden_bias[index])
        separate[3].weight.copy_(selectors.output_weight[index][None])
        separate[3].bias.copy_(selectors.output_bias[index][None])
    assert torch.allclose(selectors(vectors, index), separate(vectors)[:, 0], atol=1e-6)
    assert torch.allclose(selectors.running_mean[index], separate[1].running_mean)
    assert selectors.running_mean[0].abs().sum() == 0  # other classes' statistics untouched


def test_ramp_up_and_teacher_momentum() -> None:
    assert sigmoid_ramp_up(0, 2000) == pytest.approx(math.exp(-5.0))
    assert sigmoid_ramp_up(1000, 2000) == pytest.approx(math.exp(-1.25))
    assert sigmoid_ramp_up(2000, 2000) == 1.0
    method = make_memory_bank_method()
    with torch.no_grad():
        for parameter in method.segmentor.parameters():
            parameter.add_(1.0)
    before = next(method.teacher.parameters()).clone()
    student = next(method.segmentor.parameters()).clone()
    context = RecordingContext(progress=0.5)  # cos(pi/2) = 0: momentum 1 - 0.005 / 2
    method.after_optimizer_step(context)
    alpha = 1 - 0.005 / 2
    expected = alpha * before + (1 - alpha) * student
    assert torch.allclose(next(method.teacher.parameters()), expected)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("confidence_threshold", 1.0),
        ("memory_per_class", 1),
        ("lambda_contrastive_target", -0.1),
        ("bank_start_step", -1),
        ("bank_images", "labelled_target"),
    ],
)
def test_bad_memory_bank_options_are_config_errors(key: str, value) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, ["method.name=memory_bank_contrastive", f"method.{key}={value}"])


def test_labelled_target_images_train_and_fill_the_bank(tmp_path: Path) -> None:
    """The semi-supervised option: labelled target CE and contrastive; bank from them only."""
    root = write_tiny_benchmark(tmp_path / "tiny")
    options = {
        **ENGINE_TEST_METHOD_OPTIONS["memory_bank_contrastive"],
        "name": "memory_bank_contrastive",
        "labelled_target_images": 2,
    }
    raw = tiny_config(root, tmp_path / "run", method=options)
    raw["train"]["steps"] = 2
    raw["eval"] = {"max_images": 1}
    train(config_from_dict(raw))
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    assert "loss_seg_labelled_target" in records[-1]
    assert records[-1]["bank_entries"] > 0
    too_many = tiny_config(root, tmp_path / "run2", method={**options, "labelled_target_images": 7})
    with pytest.raises(ConfigError, match="labelled_target_images"):
        train(config_from_dict(too_many))


def test_memory_bank_configs_start_on_the_real_layouts(tmp_path: Path) -> None:
    from tests.fake_layouts import write_gta5_to_cityscapes
    from udaseg.cli import main

    experiments = Path(__file__).resolve().parents[1] / "udaseg" / "configs" / "experiments"
    config = experiments / "memory_bank_contrastive_gta5_cityscapes.yaml"
    loaded = load_config(config)
    assert loaded.method.memory_per_class == 256 and loaded.method.confidence_threshold == 0.95
    assert loaded.optim["segmentor"].lr == 2e-4 and loaded.train.steps == 150000
    overrides = write_gta5_to_cityscapes(tmp_path)
    crops = ["data.source.crop=[32,32]", "data.target.crop=[32,32]", "data.batch_size=1"]
    assert main(["train", str(config), *overrides, *crops]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    toy = load_config("toy/memory_bank_contrastive.yaml")
    baseline = load_config("toy/source_only.yaml")
    assert toy.train.steps == baseline.train.steps and toy.data == baseline.data
    assert toy.optim["segmentor"] == baseline.optim["segmentor"]


# --- the supervised pixel contrastive loss ---------------------------------------------------


def test_supervised_contrastive_loss_by_hand() -> None:
    embeddings = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 255])  # the last pixel is void: no part at all
    # Anchors 0 and 1 are each other's positive, pixel 2 the negative; 2 has no positive.
    # l = -log(e^{1/t} / (e^{1/t} + e^{0})) for both anchors.
    for temperature in (1.0, 0.5):
        expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + 1.0))
        loss = supervised_pixel_contrastive_loss(embeddings, labels, temperature)
        assert float(loss) == pytest.approx(expected)
    # No positive anywhere: 0, still attached to the graph.
    lonely = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    zero = supervised_pixel_contrastive_loss(lonely, torch.tensor([0, 1]))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_supervised_contrastive_loss_matches_numpy() -> None:
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(7, 3, generator=generator)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 255])
    temperature = 0.2
    loss = supervised_pixel_contrastive_loss(embeddings, labels, temperature)
    z = embeddings[:6].numpy().astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    kept = labels[:6].numpy()
    terms = []
    for anchor in range(6):
        others = [j for j in range(6) if j != anchor]
        positives = [j for j in others if kept[j] == kept[anchor]]
        if not positives:
            continue
        denominator = sum(np.exp(z[anchor] @ z[j] / temperature) for j in others)
        terms.append(
            -np.mean(
                [np.log(np.exp(z[anchor] @ z[p] / temperature) / denominator) for p in positives]
            )
        )
    assert float(loss) == pytest.approx(float(np.mean(terms)), rel=1e-5)


def test_class_balanced_sample_draws_equally_per_class() -> None:
    labels = torch.tensor([0] * 10 + [1] * 3 + [255] * 5 + [4] * 6)
    indices = class_balanced_pixel_sample(labels, 4, torch.Generator().manual_seed(0))
    drawn = labels[indices].tolist()
    assert drawn.count(0) == 4 and drawn.count(1) == 3 and drawn.count(4) == 4
    assert 255 not in drawn and len(set(indices.tolist())) == len(indices)


# --- the two-model method --------------------------------------------------------------------


def make_two_model_method(name: str, **config):
    from udaseg.registry import METHODS

    torch.manual_seed(0)
    segmentor = build_segmentor(from_dict(DeepLabV2Config, TINY_MODEL), NUM_CLASSES)
    method_class = METHODS.get(name)
    method = method_class(from_dict(method_class.Config, config), segmentor, CITYSCAPES19)
    method.train(True)
    return method


def test_grayscale_is_the_601_luma_in_every_channel() -> None:
    from udaseg.methods.supervised_contrastive import grayscale_images

    images = torch.tensor([100.0, 50.0, 0.0])[None, :, None, None].expand(1, 3, 2, 2)
    grey = grayscale_images(images)
    assert grey.shape == (1, 3, 2, 2)
    assert torch.allclose(grey, torch.full_like(grey, 0.299 * 100 + 0.587 * 50))


def test_model_1_trains_on_grey_images_and_predicts_through_the_source_style() -> None:
    from udaseg.methods.supervised_contrastive import grayscale_images
    from udaseg.translation import fda_source_to_target

    method = make_two_model_method(
        "supervised_contrastive_grayscale", entropy_after_step=-1, beta=0.1
    )
    seen: list[torch.Tensor] = []
    method.segmentor.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 48, generator=generator) * 255
    batch = {
        "source": {"image": images, "label": torch.randint(0, 19, (2, 32, 48))},
        "target": {"image": images.flip(0)},
    }
    scalars = method.training_step(batch, RecordingContext())
    assert {"loss_seg", "loss_ent"} <= scalars.keys() and len(seen) == 2
    for inputs in seen:  # source and target, both grey, the source untranslated
        assert torch.equal(inputs[:, 0], inputs[:, 1]) and torch.equal(inputs[:, 1], inputs[:, 2])
    assert torch.allclose(seen[0], grayscale_images(images))
    # The stored source style: a real image whose amplitude is the stored images' mean one.
    method.source_style.images.copy_((torch.rand(8, 3, 256, 512, generator=generator) * 255).byte())
    style = method.source_style.style_image((32, 48))
    resized = torch.nn.functional.interpolate(
        method.source_style.images.float(), size=(32, 48), mode="bilinear", antialias=True
    )
    expected = torch.fft.fft2(resized).abs().mean(0)
    assert torch.allclose(torch.fft.fft2(style).abs(), expected, rtol=1e-4, atol=1e-2)
    method.train(False)
    seen.clear()
    method.predict(images)
    stylised = fda_source_to_target(images, style.expand(2, -1, -1, -1), 0.1)
    assert torch.allclose(seen[0], grayscale_images(stylised), atol=1e-3)
    method.config.predict_input = "target"
    seen.clear()
    method.predict(images)
    assert torch.allclose(seen[0], grayscale_images(images))


class FeatureStub(nn.Module):
    """A segmentor whose features are the first two image channels (grid = image grid)."""

    num_classes, feature_channels = NUM_CLASSES, 2

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": images[:, :2], "logits": images[:, :1].expand(-1, NUM_CLASSES, -1, -1)}


def test_model_2_contrasts_the_same_pixels_of_both_views() -> None:
    method = make_two_model_method("supervised_contrastive", temperature=0.5)
    method.segmentor, method.projection = FeatureStub(), nn.Identity()
    # One image of 1 x 3 pixels with pseudo labels [0, 0, 255] and its stylised version.
    target = torch.tensor([[[[1.0, 0.0, 3.0]], [[0.0, 1.0, 3.0]], [[0.0, 0.0, 0.0]]]])
    stylised = torch.tensor([[[[1.0, 1.0, -3.0]], [[1.0, 0.0, 3.0]], [[0.0, 0.0, 0.0]]]])
    labels = torch.tensor([[[0, 0, 255]]])
    loss = method.contrastive_loss(target, stylised, labels)
    # Embeddings: target pixels (1,0), (0,1); stylised pixels (1,1), (1,0); all class 0, so every
    # other embedding is a positive: l_i = -mean_p log softmax_i(p) over the 3 others.
    z = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    terms = []
    for anchor in range(4):
        others = [j for j in range(4) if j != anchor]
        logits = np.array([z[anchor] @ z[j] / 0.5 for j in others])
        terms.append(-np.mean(logits - np.log(np.exp(logits).sum())))
    assert float(loss) == pytest.approx(float(np.mean(terms)), rel=1e-5)


def test_model_2_needs_pseudo_labels_and_good_options(tmp_path: Path) -> None:
    root = write_tiny_benchmark(tmp_path / "tiny")
    raw = tiny_config(root, tmp_path / "run", method={"name": "supervised_contrastive"})
    del raw["data"]["target"]["pseudo_labels"]
    with pytest.raises(ConfigError, match="data.target.pseudo_labels"):
        train(config_from_dict(raw))
    for key, value in (("temperature", 0), ("pixels_per_class", 0), ("beta", 0.7)):
        with pytest.raises(ConfigError, match=key):
            load_config(None, ["method.name=supervised_contrastive", f"method.{key}={value}"])


def test_two_model_recipe_runs_on_the_real_layouts(tmp_path: Path) -> None:
    """recipes/supervised_contrastive_gta5_cityscapes.yaml: model 1, pseudo labels, model 2."""
    from tests.fake_layouts import write_gta5_to_cityscapes
    from udaseg.cli import main

    overrides = [
        item for item in write_gta5_to_cityscapes(tmp_path) if not item.startswith("run_dir=")
    ]
    crops = ["data.source.crop=[32,64]", "eval.input_size=[32,64]", "train.steps=1"]
    recipe = "recipes/supervised_contrastive_gta5_cityscapes.yaml"
    assert main(["recipe", recipe, *overrides, *crops, "--dir", str(tmp_path / "recipe")]) == 0
    model2 = load_config(tmp_path / "recipe" / "model2" / "config.yaml")
    assert model2.method.name == "supervised_contrastive"
    records = (tmp_path / "recipe" / "model2" / "metrics.jsonl").read_text()
    assert "loss_contrastive" in records
    assert Path(model2.data.target.pseudo_labels).is_dir()
    assert any(Path(model2.data.target.pseudo_labels).rglob("*.png"))
