"""DACS: the pseudo-label weight, the weighted mixed loss, ClassMix in the step, the EMA teacher
and the shipped configs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.engine_helpers import TINY_MODEL, RecordingContext
from tests.fake_layouts import write_gta5_to_cityscapes
from udaseg.cli import main
from udaseg.config import from_dict, load_config
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.errors import ConfigError
from udaseg.methods import dacs as dacs_module
from udaseg.methods.dacs import (
    DACS,
    common_crop,
    pixel_weighted_cross_entropy,
    pseudo_label_weights,
)
from udaseg.models import build_segmentor
from udaseg.models.deeplabv2 import DeepLabV2Config

NUM_CLASSES = CITYSCAPES19.num_classes
EXPERIMENTS = Path(__file__).resolve().parents[1] / "udaseg" / "configs" / "experiments"


def make_method(**config) -> DACS:
    torch.manual_seed(0)
    segmentor = build_segmentor(from_dict(DeepLabV2Config, dict(TINY_MODEL)), NUM_CLASSES)
    method = DACS(from_dict(DACS.Config, config), segmentor, CITYSCAPES19)
    method.train(True)
    return method


def cross_entropy(logits: np.ndarray, label: int) -> float:
    """-log softmax(logits)[label] for one pixel's logits [C], computed directly."""
    shifted = logits - logits.max()
    return float(np.log(np.exp(shifted).sum()) - shifted[label])


class FixedSegmentor(nn.Module):
    """Returns fixed logits [B, C, H, W] plus a trainable per-class bias; records its inputs."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.bias = nn.Parameter(torch.zeros(logits.shape[1]))
        self.inputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.inputs.append(images.detach().clone())
        return {"logits": self.logits + self.bias.view(1, -1, 1, 1)}


# --- the pseudo-label weight and the weighted loss -------------------------------------------


def test_pseudo_label_weight_is_the_fraction_of_confident_pixels() -> None:
    # Max probabilities 0.98, 0.8, 0.968 (exactly the threshold: kept, `ge`), 0.5.
    probabilities = torch.tensor(
        [[0.98, 0.01, 0.01], [0.1, 0.8, 0.1], [0.968, 0.016, 0.016], [0.25, 0.5, 0.25]]
    ).T.reshape(1, 3, 2, 2)
    uniform = pseudo_label_weights(probabilities, 0.968, "threshold_uniform")
    assert uniform.shape == (1, 2, 2)
    assert torch.allclose(uniform, torch.full((1, 2, 2), 2 / 4))
    per_pixel = pseudo_label_weights(probabilities, 0.968, "threshold")
    assert per_pixel.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    assert torch.equal(pseudo_label_weights(probabilities, 0.968, "none"), torch.ones(1, 2, 2))


def test_uniform_weight_is_one_number_for_the_whole_batch() -> None:
    # Image 0 all confident, image 1 none: both get 4/8, as the code's batch-wide fraction.
    probabilities = torch.zeros(2, 2, 2, 2)
    probabilities[0, 0] = 0.99
    probabilities[0, 1] = 0.01
    probabilities[1, 0] = 0.6
    probabilities[1, 1] = 0.4
    weights = pseudo_label_weights(probabilities, 0.968)
    assert torch.allclose(weights, torch.full((2, 2, 2), 0.5))


def test_pixel_weighted_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 3.0]]).T.reshape(
        1, 3, 1, 3
    )
    labels = torch.tensor([[[0, 255, 2]]])
    weights = torch.tensor([[[0.25, 1.0, 0.5]]])
    loss = pixel_weighted_cross_entropy(logits, labels, weights)
    # Void pixel: zero loss but counted in the mean over all 3 pixels.
    expected = (
        0.25 * cross_entropy(np.array([2.0, 0.0, -1.0]), 0)
        + 0.5 * cross_entropy(np.array([0.0, 1.0, 3.0]), 2)
    ) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)


# --- one step: ClassMix, the mixed label and weights, the loss --------------------------------


def test_step_mixes_images_labels_and_weights_by_the_mask(monkeypatch) -> None:
    method = make_method(color_jitter=False, blur=False)
    # One 1x4 image pair. Source labels 0, 1, 2, void; ClassMix chooses classes {1, void}.
    source_labels = torch.tensor([[[0, 1, 2, 255]]])
    mask = torch.tensor([[[False, True, False, True]]])
    monkeypatch.setattr(dacs_module, "class_mix_masks", lambda labels: mask)
    # Teacher probabilities per pixel: max 0.98 (class 0), 0.8 (1), 0.7 (2), 0.97 (0).
    teacher_probabilities = torch.tensor(
        [[0.98, 0.01, 0.01], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.97, 0.02, 0.01]]
    ).T.reshape(1, 3, 1, 4)
    teacher_logits = torch.zeros(1, NUM_CLASSES, 1, 4) - 30.0
    teacher_logits[:, :3] = teacher_probabilities.log()
    method.teacher = FixedSegmentor(teacher_logits)
    student_logits = torch.randn(1, NUM_CLASSES, 1, 4, generator=torch.Generator().manual_seed(3))
    method.segmentor = FixedSegmentor(student_logits)

    source_images = torch.full((1, 3, 1, 4), 200.0)
    target_images = torch.arange(12, dtype=torch.float32).reshape(1, 3, 1, 4)
    batch = {
        "source": {"image": source_images, "label": source_labels},
        "target": {"image": target_images},
    }
    context = RecordingContext(method.trainable_modules())
    scalars = method.training_step(batch, context)

    # The student saw the source batch, then the mixed one: source pixels where the mask is set.
    mixed_images = method.segmentor.inputs[1]
    assert torch.equal(mixed_images, torch.where(mask[:, None], source_images, target_images))
    # Pseudo labels 0, 1, 2, 0 (argmax); 2 of 4 pixels are >= 0.968, so the weight is 0.5.
    assert float(scalars["pseudo_weight"]) == pytest.approx(0.5)
    # Mixed label: pseudo 0, source 1, pseudo 2, source void; weights 0.5, 1, 0.5, 1.
    logits = student_logits[0, :, 0, :].T.numpy()
    expected_mixed = (
        0.5 * cross_entropy(logits[0], 0)
        + 1.0 * cross_entropy(logits[1], 1)
        + 0.5 * cross_entropy(logits[2], 2)
    ) / 4
    expected_source = np.mean([cross_entropy(logits[index], index) for index in range(3)])
    assert context.losses[0] == pytest.approx(expected_source, rel=1e-5)
    assert context.losses[1] == pytest.approx(expected_mixed, rel=1e-5)
    assert float(scalars["loss_mixed"]) == pytest.approx(expected_mixed, rel=1e-5)


def test_lambda_mixed_scales_the_mixed_term(monkeypatch) -> None:
    losses = []
    for weight in (1.0, 0.3):
        method = make_method(lambda_mixed=weight)
        batch = _random_batch()
        context = RecordingContext(method.trainable_modules())
        torch.manual_seed(5)
        method.training_step(batch, context)
        losses.append(context.losses[1])
    assert losses[1] == pytest.approx(0.3 * losses[0], rel=1e-5)


def _random_batch(source_size=(32, 48), target_size=(32, 48)) -> dict:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2, *source_size), generator=generator)
    labels[:, :3] = 255
    return {
        "source": {
            "image": torch.rand(2, 3, *source_size, generator=generator) * 255,
            "label": labels,
        },
        "target": {"image": torch.rand(2, 3, *target_size, generator=generator) * 255},
    }


def test_teacher_gets_no_gradient_and_returns_to_eval_mode() -> None:
    method = make_method()
    method.training_step(_random_batch(), RecordingContext(method.trainable_modules()))
    assert all(parameter.grad is None for parameter in method.teacher.parameters())
    assert not method.teacher.training


@pytest.mark.parametrize("teacher_bn", ["batch", "running"])
def test_teacher_batch_norm_mode(teacher_bn: str) -> None:
    """`batch`: the teacher forwards in train mode, its running statistics move; `running`: not."""
    method = make_method(teacher_bn=teacher_bn)
    before = method.teacher.bn1.running_mean.clone()
    method.teacher_probabilities(torch.rand(2, 3, 32, 48) * 255)
    changed = not torch.equal(before, method.teacher.bn1.running_mean)
    assert changed == (teacher_bn == "batch")


def test_common_crop_to_the_smaller_size() -> None:
    source = {"image": torch.rand(2, 3, 32, 48), "label": torch.zeros(2, 32, 48, dtype=torch.long)}
    target = {"image": torch.rand(2, 3, 40, 40), "name": ["a", "b"]}
    torch.manual_seed(0)
    cropped_source, cropped_target = common_crop(source, target)
    assert cropped_source["image"].shape == (2, 3, 32, 40)
    assert cropped_source["label"].shape == (2, 32, 40)
    assert cropped_target["image"].shape == (2, 3, 32, 40)
    # The crops are windows of the inputs.
    windows = source["image"].unfold(3, 40, 1)  # [2, 3, 32, 9, 40]
    assert any(torch.equal(windows[:, :, :, left], cropped_source["image"]) for left in range(9))
    # Equal sizes: the batches come back untouched.
    same_source, same_target = common_crop(source, {"image": torch.rand(2, 3, 32, 48)})
    assert same_source is source


def test_mixing_different_crop_sizes_trains() -> None:
    method = make_method()
    batch = _random_batch(source_size=(32, 48), target_size=(40, 64))
    scalars = method.training_step(batch, RecordingContext(method.trainable_modules()))
    assert all(math.isfinite(float(value)) for value in scalars.values())


# --- the EMA teacher -------------------------------------------------------------------------


class _Context:
    def __init__(self, step: int) -> None:
        self.step = step


@pytest.mark.parametrize("teacher_bn", ["batch", "running"])
def test_ema_update_follows_the_ramp(teacher_bn: str) -> None:
    method = make_method(teacher_bn=teacher_bn)
    with torch.no_grad():
        for parameter in method.teacher.parameters():
            parameter.fill_(1.0)
        for parameter in method.segmentor.parameters():
            parameter.fill_(3.0)
        method.teacher.bn1.running_mean.fill_(1.0)
        method.segmentor.bn1.running_mean.fill_(3.0)
    # Step 4: alpha = min(1 - 1/5, 0.99) = 0.8 -> 0.8 * 1 + 0.2 * 3 = 1.4.
    method.after_optimizer_step(_Context(4))
    teacher_weight = method.teacher.conv1.weight
    assert torch.allclose(teacher_weight, torch.full_like(teacher_weight, 1.4))
    expected_mean = 1.0 if teacher_bn == "batch" else 1.4
    assert torch.allclose(method.teacher.bn1.running_mean, torch.tensor(expected_mean))
    # Step 1000: alpha capped at 0.99 -> 0.99 * 1.4 + 0.01 * 3 = 1.416.
    method.after_optimizer_step(_Context(1000))
    assert torch.allclose(teacher_weight, torch.full_like(teacher_weight, 1.416))
    # Step 0: alpha = 0, the teacher becomes the student.
    method.after_optimizer_step(_Context(0))
    assert torch.equal(teacher_weight, method.segmentor.conv1.weight)


def test_setup_copies_the_initialised_student() -> None:
    method = make_method()
    with torch.no_grad():
        method.segmentor.conv1.weight.add_(1.0)
    from udaseg.methods.base import SetupContext

    method.setup(SetupContext(datasets={}, resumed=True, device=torch.device("cpu")))
    assert not torch.equal(method.teacher.conv1.weight, method.segmentor.conv1.weight)
    method.setup(SetupContext(datasets={}, resumed=False, device=torch.device("cpu")))
    assert torch.equal(method.teacher.conv1.weight, method.segmentor.conv1.weight)


def test_bad_config_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="ema_alpha"):
        from_dict(DACS.Config, {"ema_alpha": 1.5}).validate()
    with pytest.raises(ConfigError, match="lambda_mixed"):
        from_dict(DACS.Config, {"lambda_mixed": -1.0}).validate()


# --- shipped configs -------------------------------------------------------------------------


def test_experiment_config_holds_the_codes_settings() -> None:
    config = load_config(EXPERIMENTS / "dacs_gta5_cityscapes.yaml")
    method = config.method
    assert (method.name, method.ema_alpha, method.confidence_threshold) == ("dacs", 0.99, 0.968)
    assert (method.pseudo_weight, method.teacher_bn, method.lambda_mixed) == (
        "threshold_uniform",
        "batch",
        1.0,
    )
    assert config.model.aspp_branches == 2 and not config.model.multi_level
    assert config.model.init == "resnet101COCO-41f33a49.pth"
    assert config.data.batch_size == 2
    assert config.data.source.crop == config.data.target.crop == (512, 512)
    assert not config.data.source.flip and not config.data.target.flip
    segmentor = config.optim["segmentor"]
    assert (segmentor.lr, segmentor.momentum, segmentor.weight_decay) == (2.5e-4, 0.9, 5e-4)
    assert config.schedule.total_steps == config.train.steps == 250000


def test_toy_config_shares_the_source_only_budget() -> None:
    config = load_config("toy/dacs.yaml")
    baseline = load_config("toy/source_only.yaml")
    assert config.method.name == "dacs"
    assert config.train.steps == baseline.train.steps and config.data == baseline.data
    assert config.optim["segmentor"] == baseline.optim["segmentor"]


def test_experiment_config_trains_on_the_real_layouts(tmp_path: Path) -> None:
    overrides = write_gta5_to_cityscapes(tmp_path)
    # The real 512x512 crops shrunk with the images.
    overrides += ["data.source.crop=[32,48]", "data.target.crop=[32,48]", "train.steps=1"]
    assert main(["train", str(EXPERIMENTS / "dacs_gta5_cityscapes.yaml"), *overrides]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
