"""ProDA: losses against hand-computed values, prototypes, soft labels, strong view, loaders."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch import nn

from tests.engine_helpers import TINY_MODEL, RecordingContext
from tests.fake_layouts import write_cityscapes, write_gta5_to_cityscapes
from udaseg.augment import _photometric_op, randaugment_photometric
from udaseg.config import from_dict
from udaseg.data.datasets import build_dataset
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.data.loaders import collate
from udaseg.errors import ConfigError, DataError
from udaseg.losses.proda import (
    class_mean_features,
    distillation_kl,
    momentum_update,
    mrkld_regularizer,
    prototype_distances,
    prototype_weights,
    rectified_pseudo_labels,
    reverse_cross_entropy,
    structure_consistency_kl,
    symmetric_cross_entropy,
)
from udaseg.methods.base import SetupContext
from udaseg.models import build_segmentor
from udaseg.models.deeplabv2 import DeepLabV2Config
from udaseg.models.weights import load_init_weights, load_released_checkpoint
from udaseg.recipes import load_recipe
from udaseg.registry import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "udaseg" / "configs"


def two_pixel_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels f = (0, 0) and (3, 4) as [1, 2, 1, 2]; prototypes (0, 0) and (3, 0)."""
    features = torch.tensor([[[[0.0, 3.0]], [[0.0, 4.0]]]])
    prototypes = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    return features, prototypes


# --- losses ----------------------------------------------------------------------------------


def test_prototype_distances_and_weights_by_hand() -> None:
    features, prototypes = two_pixel_features()
    distances = prototype_distances(features, prototypes)
    # Pixel 1: |(0,0)-(0,0)| = 0, |(0,0)-(3,0)| = 3; pixel 2: |(3,4)| = 5, |(0,4)| = 4.
    expected = torch.tensor([[[[0.0, 5.0]], [[3.0, 4.0]]]])
    assert torch.allclose(distances, expected, atol=1e-5)
    weights = prototype_weights(features, prototypes, temperature=1.0)
    first = 1 / (1 + math.exp(-3))  # softmax(0, -3)[0]
    second = 1 / (1 + math.e)  # softmax(-5, -4)[0]
    assert weights[0, 0, 0, 0].item() == pytest.approx(first, abs=1e-6)
    assert weights[0, 0, 0, 1].item() == pytest.approx(second, abs=1e-6)
    assert torch.allclose(weights.sum(dim=1), torch.ones(1, 1, 2))
    # tau = 2 halves the distances in the exponent.
    halved = prototype_weights(features, prototypes, temperature=2.0)
    assert halved[0, 0, 0, 0].item() == pytest.approx(1 / (1 + math.exp(-1.5)), abs=1e-6)


def test_rectified_pseudo_labels_by_hand() -> None:
    # Three pixels, two classes. p_t0 prefers class 0 at pixels 1-2; the weights flip pixel 1.
    weights = torch.tensor([[[[0.1, 0.9, 0.5]], [[0.9, 0.1, 0.5]]]])
    soft = torch.tensor([[[[0.6, 0.6, 0.0]], [[0.4, 0.4, 0.0]]]])
    labels = rectified_pseudo_labels(weights, soft)
    # 0.1 * 0.6 = 0.06 < 0.9 * 0.4 = 0.36 -> 1; 0.54 > 0.04 -> 0; all-zero soft -> ignored.
    assert labels.tolist() == [[[1, 0, 255]]]
    # Normalised confidences: 0.36 / 0.42 = 0.857 and 0.54 / 0.58 = 0.931.
    assert rectified_pseudo_labels(weights, soft, threshold=0.9).tolist() == [[[255, 0, 255]]]


def test_symmetric_cross_entropy_by_hand() -> None:
    # Pixel 1: logits (0, ln 3) -> p = (1/4, 3/4), label 1; pixel 2 ignored.
    logits = torch.tensor([[[[0.0, 5.0]], [[math.log(3.0), -5.0]]]])
    labels = torch.tensor([[[1, 255]]])
    loss, cross_entropy, reverse = symmetric_cross_entropy(logits, labels, alpha=0.1, beta=1.0)
    assert cross_entropy.item() == pytest.approx(-math.log(0.75), rel=1e-5)
    # RCE = -(1/4 ln 1e-4 + 3/4 ln 1) = ln(1e4) / 4.
    assert reverse.item() == pytest.approx(math.log(1e4) / 4, rel=1e-5)
    assert loss.item() == pytest.approx(0.1 * -math.log(0.75) + math.log(1e4) / 4, rel=1e-5)
    empty = torch.full_like(labels, 255)
    assert reverse_cross_entropy(logits, empty).item() == 0.0
    assert symmetric_cross_entropy(logits, empty)[0].item() == 0.0


def test_structure_kl_by_hand_direction_and_reductions() -> None:
    # Teacher distances (0, ln 3) -> z_T = (3/4, 1/4); student (0, 0) -> z_S = (1/2, 1/2).
    teacher = torch.tensor([[[[0.0, 9.0]], [[math.log(3.0), 0.0]]]])
    student = torch.zeros(1, 2, 1, 2, requires_grad=True)
    valid = torch.tensor([[[True, False]]])  # the second pixel is inside the cutout
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    released = structure_consistency_kl(teacher, student, valid, reduction="released")
    per_pixel = structure_consistency_kl(teacher, student, valid, reduction="per_pixel")
    assert released.item() == pytest.approx(kl / 2, rel=1e-5)  # mean over (pixel, class)
    assert per_pixel.item() == pytest.approx(kl, rel=1e-5)
    # The other direction, KL(z_S || z_T), is a different number: the order matters.
    reverse = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    swapped = structure_consistency_kl(student.detach(), teacher, valid, reduction="per_pixel")
    assert swapped.item() == pytest.approx(reverse, rel=1e-5)
    assert abs(reverse - kl) > 0.01
    # The gradient reaches the student's distances only, and only at valid pixels.
    teacher_leaf = teacher.clone().requires_grad_(True)
    structure_consistency_kl(teacher_leaf, student, valid).backward()
    assert teacher_leaf.grad is None
    assert student.grad is not None
    assert student.grad[..., 1].abs().sum() == 0 and student.grad[..., 0].abs().sum() > 0


def test_mrkld_regularizer_by_hand() -> None:
    logits = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])  # p = (1/4, 3/4)
    expected = -(math.log(0.25) + math.log(0.75)) / 2
    assert mrkld_regularizer(logits).item() == pytest.approx(expected, rel=1e-6)
    # Uniform predictions give the smallest value, ln C.
    assert mrkld_regularizer(torch.zeros(1, 2, 1, 1)).item() == pytest.approx(math.log(2))


def test_distillation_kl_forms_by_hand() -> None:
    teacher = torch.tensor([[[[math.log(3.0)]], [[0.0]]]])  # p = (3/4, 1/4)
    student = torch.zeros(1, 2, 1, 1)  # q = (1/2, 1/2)
    paper = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert distillation_kl(student, teacher, "paper").item() == pytest.approx(paper, rel=1e-5)
    assert distillation_kl(student, teacher, "fixed").item() == pytest.approx(paper / 2, rel=1e-5)
    # As released: F.kl_div(softmax(student), p) = mean of p (log p - q).
    released = (0.75 * (math.log(0.75) - 0.5) + 0.25 * (math.log(0.25) - 0.5)) / 2
    assert distillation_kl(student, teacher, "released").item() == pytest.approx(released, rel=1e-5)
    with pytest.raises(ValueError, match="unknown"):
        distillation_kl(student, teacher, "other")  # type: ignore[arg-type]


def test_class_means_and_momentum_update_by_hand() -> None:
    # One image, 1-d features 1..4; classes (0, 0, 1, 1) -> means 1.5 and 3.5.
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    predictions = torch.tensor([[[0, 0], [1, 1]]])
    means, present = class_mean_features(features, predictions, 3, minimum_pixels=2)
    assert means[0, :, 0].tolist() == [1.5, 3.5, 0.0]
    assert present.tolist() == [[True, True, False]]
    means, present = class_mean_features(features, predictions, 3, minimum_pixels=3)
    assert present.tolist() == [[False, False, False]]
    # Two images applied in order: eta <- 0.9 eta + 0.1 v, absent classes untouched.
    prototypes = torch.tensor([[0.0], [10.0], [5.0]])
    image_means = torch.tensor([[[1.0], [0.0], [9.0]], [[2.0], [0.0], [0.0]]])
    image_present = torch.tensor([[True, False, True], [True, False, False]])
    updated = momentum_update(prototypes, image_means, image_present, 0.1)
    first = 0.9 * (0.9 * 0.0 + 0.1 * 1.0) + 0.1 * 2.0
    assert updated[:, 0].tolist() == pytest.approx([first, 10.0, 0.9 * 5.0 + 0.9])


# --- the method ------------------------------------------------------------------------------


class RedSegmentor(nn.Module):
    """Two classes by the red channel: class 1 where red >= 128; the feature is red itself."""

    num_classes = 2
    feature_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        red = images[:, :1] * self.scale
        logits = torch.cat([128.0 - red, red - 128.0], dim=1)
        return {"logits": logits, "features": red}


class ImageList:
    def __init__(self, images: list[torch.Tensor]) -> None:
        self.images = images
        self.config = SimpleNamespace(soft_pseudo_labels="soft", pseudo_labels=None)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "index": index}


def red_images() -> list[torch.Tensor]:
    """Two 1x4 images with red (10, 20, 200, 250) and (30, 40, 50, 130)."""
    images = []
    for values in ((10, 20, 200, 250), (30, 40, 50, 130)):
        image = torch.zeros(3, 1, 4, dtype=torch.uint8)
        image[0, 0] = torch.tensor(values, dtype=torch.uint8)
        images.append(image)
    return images


@pytest.mark.parametrize(
    ("prototype_init", "expected"),
    [
        # Every pixel counts once: class 0 = mean(10, 20, 30, 40, 50), class 1 = (200+250+130)/3.
        ("pixel_mean", [30.0, 580.0 / 3]),
        # Per-image means averaged over images (minimum 1 pixel): (15 + 40) / 2, (225 + 130) / 2.
        ("image_mean", [27.5, 177.5]),
    ],
)
def test_setup_computes_prototypes_then_momentum_moves_them(
    prototype_init: str, expected: list[float]
) -> None:
    method_class = METHODS.get("proda")
    config = from_dict(method_class.Config, {"prototype_init": prototype_init, "minimum_pixels": 1})
    method = method_class(config, RedSegmentor(), CITYSCAPES19)
    reduced: list[torch.Tensor] = []

    def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
        reduced.append(tensor)
        return tensor

    context = SetupContext(
        datasets={"target": ImageList(red_images())},
        resumed=False,
        device=torch.device("cpu"),
        batch_size=2,
        all_reduce=all_reduce,
    )
    method.setup(context)
    assert method.prototypes[:, 0].tolist() == pytest.approx(expected)
    assert len(reduced) == 2, "sums and counts are summed over ranks"
    # A resumed run keeps the restored prototypes instead of recomputing them.
    method.load_extra_state({"prototypes": torch.tensor([[1.0], [2.0]])})
    method.setup(SetupContext(datasets=context.datasets, resumed=True, device=context.device))
    assert method.prototypes[:, 0].tolist() == [1.0, 2.0]
    # One image (red 10, 20, 200, 250), minimum 1 pixel: means 15 and 225, momentum 1e-4.
    method.config.minimum_pixels = 1
    image = torch.stack(red_images()[:1]).float()
    outputs = method.ema(image)
    method.move_prototypes(outputs["features"], outputs["logits"])
    momentum = 1e-4
    assert method.prototypes[:, 0].tolist() == pytest.approx(
        [(1 - momentum) * 1.0 + momentum * 15.0, (1 - momentum) * 2.0 + momentum * 225.0]
    )
    assert torch.equal(method.extra_state()["prototypes"], method.prototypes)


def test_setup_requires_pseudo_labels() -> None:
    method_class = METHODS.get("proda")
    method = method_class(method_class.Config(), RedSegmentor(), CITYSCAPES19)
    dataset = ImageList(red_images())
    dataset.config = SimpleNamespace(soft_pseudo_labels=None, pseudo_labels=None)
    context = SetupContext(datasets={"target": dataset}, resumed=False, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="soft_pseudo_labels"):
        method.setup(context)


def tiny_method(name: str, **options):
    torch.manual_seed(0)
    segmentor = build_segmentor(
        from_dict(DeepLabV2Config, {**TINY_MODEL, "head": "proda"}), CITYSCAPES19.num_classes
    )
    method_class = METHODS.get(name)
    method = method_class(from_dict(method_class.Config, options), segmentor, CITYSCAPES19)
    method.train(True)
    return method


def target_batch(with_soft: bool) -> dict:
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (2, 3, 32, 48), generator=generator).float()
    labels = torch.randint(0, 19, (2, 32, 48), generator=generator)
    batch = {"image": images, "pseudo_label": labels}
    if with_soft:
        soft = torch.rand(2, 19, 32, 48, generator=generator)
        batch["soft_pseudo_label"] = (soft / soft.sum(dim=1, keepdim=True)).half()
    return batch


def test_stage1_step_rectifies_soft_labels_and_trains_the_student_only() -> None:
    method = tiny_method("proda")
    method.prototypes = torch.randn(19, method.segmentor.feature_channels)
    source = target_batch(False)
    batch = {"source": {"image": source["image"], "label": source["pseudo_label"]}}
    batch["target"] = target_batch(True)
    context = RecordingContext()
    torch.manual_seed(1)
    before = method.prototypes.clone()
    scalars = method.training_step(batch, context)
    assert len(context.losses) == 2
    for key in ("loss_sce", "loss_structure", "loss_regularizer", "loss_rce_target"):
        assert math.isfinite(float(scalars[key])) and float(scalars[key]) > 0, key
    assert all(p.grad is None for p in method.ema.parameters())
    assert any(p.grad is not None for p in method.segmentor.parameters())
    assert not torch.equal(before, method.prototypes), "the prototypes moved"
    # The labels are the rectified ones: recompute them from the EMA and compare.
    with torch.no_grad():
        teacher = method.ema(batch["target"]["image"])
        size = (8, 12)
        features = torch.nn.functional.interpolate(
            teacher["features"], size=size, mode="bilinear", align_corners=True
        )
        labels = method.pseudo_labels(batch["target"], features, before, size)
        soft = torch.nn.functional.interpolate(
            batch["target"]["soft_pseudo_label"].float(),
            size=size,
            mode="bilinear",
            align_corners=True,
        )
        expected = (prototype_weights(features, before) * soft).argmax(dim=1)
    assert torch.equal(labels, expected)
    assert not torch.equal(labels, soft.argmax(dim=1)), "rectification changed some labels"


def test_ema_starts_from_the_initialised_student() -> None:
    method = tiny_method("proda")
    with torch.no_grad():
        for parameter in method.segmentor.parameters():
            parameter.add_(1.0)  # what `init:` does after the EMA copy was built
    dataset = ImageList([torch.zeros(3, 32, 48, dtype=torch.uint8)])
    method.setup(
        SetupContext(datasets={"target": dataset}, resumed=False, device=torch.device("cpu"))
    )
    for (name, ema), student in zip(
        method.ema.state_dict().items(), method.segmentor.state_dict().values(), strict=True
    ):
        assert torch.equal(ema, student), name


@pytest.mark.parametrize("form", ["paper", "fixed", "released"])
def test_distillation_step_uses_the_chosen_kl(form: str) -> None:
    method = tiny_method("proda_distill", distillation_kl=form)
    batch = {
        "source": {
            "image": target_batch(False)["image"],
            "label": target_batch(False)["pseudo_label"],
        }
    }
    batch["target"] = target_batch(False)
    torch.manual_seed(2)
    scalars = method.training_step(batch, RecordingContext())
    # Recompute on the same strong view (same global RNG state).
    torch.manual_seed(2)
    method.segmentor(batch["source"]["image"])  # the source forward draws nothing; keep order
    from udaseg.methods.proda import strong_view

    strong, _ = strong_view(batch["target"]["image"])
    with torch.no_grad():
        size = (8, 12)
        resize = torch.nn.functional.interpolate
        student = resize(
            method.segmentor(strong)["logits"], size=size, mode="bilinear", align_corners=True
        )
        teacher = resize(
            method.teacher(strong)["logits"], size=size, mode="bilinear", align_corners=True
        )
    expected = distillation_kl(student, teacher, form)  # type: ignore[arg-type]
    assert float(scalars["loss_distillation"]) == pytest.approx(float(expected), rel=1e-4)
    assert all(p.grad is None for p in method.teacher.parameters())


def test_distill_config_rejects_an_unknown_kl_form() -> None:
    with pytest.raises(ConfigError):
        from_dict(METHODS.get("proda_distill").Config, {"distillation_kl": "sideways"})


# --- soft pseudo labels in the dataset -------------------------------------------------------


def write_soft_labels(root: Path, names: list[str], soft_size: tuple[int, int]) -> None:
    """soft[0] = x / (w - 1) (a ramp left to right), soft[1] = 1 - soft[0], others 0."""
    height, width = soft_size
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    soft = np.zeros((19, height, width), dtype=np.float16)
    soft[0], soft[1] = ramp, 1.0 - ramp
    for name in names:
        path = root / "soft" / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, soft)


def test_dataset_delivers_soft_labels_aligned_with_flips_and_padding(tmp_path: Path) -> None:
    write_cityscapes(tmp_path / "cs", splits={"train": 2}, size=(32, 64))
    config = {"kind": "cityscapes", "root": str(tmp_path / "cs"), "split": "train"}
    plain = build_dataset(config, CITYSCAPES19, "target")
    write_soft_labels(tmp_path / "labels", plain.names, (5, 9))
    soft_config = {**config, "soft_pseudo_labels": str(tmp_path / "labels"), "flip": True}
    dataset = build_dataset(soft_config, CITYSCAPES19, "target")
    # align_corners: image column X of 64 samples the ramp at X / 63, exactly (it is linear).
    ramp = torch.linspace(0.0, 1.0, 64)
    seen = set()
    for seed in range(8):
        sample = dataset[(0, seed)]
        soft = sample["soft_pseudo_label"]
        assert soft.dtype == torch.float16 and soft.shape == (19, 32, 64)
        flipped = not torch.equal(sample["image"], plain[0]["image"])
        expected = ramp.flip(0) if flipped else ramp
        assert torch.allclose(soft[0].float(), expected.expand(32, 64), atol=2e-3)
        assert torch.allclose(soft[0].float() + soft[1].float(), torch.ones(32, 64), atol=2e-3)
        seen.add(flipped)
    assert seen == {True, False}
    # A crop larger than the image pads: the soft label is 0 there, as the image.
    padded = build_dataset(
        {**config, "soft_pseudo_labels": str(tmp_path / "labels" / "soft"), "crop": [40, 64]},
        CITYSCAPES19,
        "target",
    )
    soft = padded[0]["soft_pseudo_label"].float()
    assert soft[:, 32:].abs().sum() == 0 and soft[:, :32].sum(dim=0).min() > 0.99
    batch = collate([padded[0], padded[1]])
    assert batch["soft_pseudo_label"].shape == (2, 19, 40, 64)


def test_dataset_reports_missing_or_wrong_soft_labels(tmp_path: Path) -> None:
    write_cityscapes(tmp_path / "cs", splits={"train": 2}, size=(32, 64))
    config = {"kind": "cityscapes", "root": str(tmp_path / "cs"), "split": "train"}
    names = build_dataset(config, CITYSCAPES19, "target").names
    write_soft_labels(tmp_path / "labels", names[:1], (5, 9))
    with pytest.raises(DataError, match="1 of 2 samples have none"):
        build_dataset(
            {**config, "soft_pseudo_labels": str(tmp_path / "labels")}, CITYSCAPES19, "target"
        )
    wrong = tmp_path / "labels" / "soft" / f"{names[1]}.npy"
    wrong.parent.mkdir(parents=True, exist_ok=True)
    np.save(wrong, np.zeros((16, 5, 9), np.float16))
    dataset = build_dataset(
        {**config, "soft_pseudo_labels": str(tmp_path / "labels")}, CITYSCAPES19, "target"
    )
    with pytest.raises(DataError, match=r"expected \[19, h, w\]"):
        dataset[1]


# --- strong view -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "reference"),
    [
        ("brightness", 0.41, lambda image: ImageEnhance.Brightness(image).enhance(0.41)),
        ("color", 0.68, lambda image: ImageEnhance.Color(image).enhance(0.68)),
        ("contrast", 0.23, lambda image: ImageEnhance.Contrast(image).enhance(0.23)),
        ("sharpness", 0.5, lambda image: ImageEnhance.Sharpness(image).enhance(0.5)),
        ("solarize", 128.0, lambda image: ImageOps.solarize(image, 128)),
        ("posterize", 5.0, lambda image: ImageOps.posterize(image, 5)),
        ("autocontrast", 0.0, ImageOps.autocontrast),
        ("equalize", 0.0, ImageOps.equalize),
    ],
)
def test_photometric_ops_match_pil(name: str, value: float, reference) -> None:
    generator = np.random.default_rng(0)
    array = (generator.random((12, 16, 3)) * 200 + 20).astype(np.uint8)
    expected = np.asarray(reference(Image.fromarray(array))).astype(np.float32)
    image = torch.from_numpy(array).permute(2, 0, 1).float()
    result = _photometric_op(image, name, value).permute(1, 2, 0).numpy()
    # PIL rounds to 8 bits, its grey (luma) image too, before blending: within 1.5 levels, and
    # within half a level on average.
    difference = np.abs(result - expected)
    assert difference.max() <= 1.5 and difference.mean() <= 0.6


def test_randaugment_is_seeded_and_per_image() -> None:
    images = torch.rand(4, 3, 8, 8) * 255
    first = randaugment_photometric(images, generator=torch.Generator().manual_seed(5))
    again = randaugment_photometric(images, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    assert not torch.equal(first, images)
    assert first.min() >= 0 and first.max() <= 255


# --- SimCLRv2 init -----------------------------------------------------------------------------


def to_simclr_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse renaming, written out: torchvision names -> SimCLRv2-Pytorch's `net.*`."""
    parts = {
        "conv1": "net.0",
        "bn1": "net.1.0",
        "conv2": "net.2",
        "bn2": "net.3.0",
        "conv3": "net.4",
        "bn3": "net.5.0",
        "downsample.0": "projection.shortcut",
        "downsample.1": "projection.bn.0",
    }
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("layer5."):
            continue
        if key.startswith("conv1."):
            converted["net.0.0." + key[6:]] = value
        elif key.startswith("bn1."):
            converted["net.0.1.0." + key[4:]] = value
        else:
            stage, block, rest = key[len("layer") :].split(".", 2)
            for old, new in parts.items():
                if rest.startswith(old + "."):
                    converted[f"net.{stage}.blocks.{block}.{new}{rest[len(old) :]}"] = value
                    break
            else:
                raise AssertionError(key)
    return converted


@pytest.mark.parametrize("layout", ["simclrv2_pytorch", "proda_state_dict"])
def test_simclr_init_loads_into_the_backbone(layout: str, tmp_path: Path) -> None:
    config = from_dict(DeepLabV2Config, {**TINY_MODEL, "head": "proda"})
    torch.manual_seed(0)
    pretrained = build_segmentor(config, 19).state_dict()
    pretrained = {k: v + 0.5 if v.is_floating_point() else v for k, v in pretrained.items()}
    backbone = {k: v for k, v in pretrained.items() if not k.startswith("layer5.")}
    fc = {"fc.weight": torch.zeros(1000, 128), "fc.bias": torch.zeros(1000)}
    if layout == "simclrv2_pytorch":
        payload = {"resnet": {**to_simclr_layout(backbone), **fc}, "head": {"w": torch.zeros(1)}}
    else:
        payload = {"state_dict": {**backbone, **fc}}
    path = tmp_path / "r101_1x_sk0.pth"
    torch.save(payload, path)
    torch.manual_seed(1)
    student = build_segmentor(config, 19)
    head_before = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("layer5.")}
    report = load_init_weights(student, path)
    state = student.state_dict()
    for key, value in backbone.items():
        assert torch.equal(state[key], value), key
    for key, value in head_before.items():
        assert torch.equal(state[key], value), f"{key}: the head keeps its random init"
    assert "SimCLRv2" in report.renaming if layout == "simclrv2_pytorch" else True


# --- --bn_clr: the extra BatchNorm on layer4's output (REFERENCE §1.4) --------------------------


def bn_clr_model(enabled: bool = True, **overrides) -> torch.nn.Module:
    config = {**TINY_MODEL, "head": "proda", "bn": "trainable", "layer4_output_bn": enabled}
    torch.manual_seed(0)
    return build_segmentor(from_dict(DeepLabV2Config, {**config, **overrides}), 19)


def test_layer4_output_bn_normalises_what_the_head_reads() -> None:
    with_bn, without = bn_clr_model(True), bn_clr_model(False)
    state = with_bn.state_dict()
    assert state["bn_pretrain.weight"].shape == (128,)  # 4 x width 4 x 8 = layer4's channels
    assert "bn_pretrain.running_var" in state and "bn_pretrain.weight" not in without.state_dict()
    without.load_state_dict({k: v for k, v in state.items() if not k.startswith("bn_pretrain.")})
    with torch.no_grad():
        with_bn.bn_pretrain.weight.fill_(2.0)
        with_bn.bn_pretrain.bias.fill_(1.0)
        with_bn.bn_pretrain.running_mean.fill_(0.5)
        with_bn.bn_pretrain.running_var.fill_(4.0)
    with_bn.eval(), without.eval()
    # A ProDA head with dropout before its classifier: compare layer4 through the aspp_sum path
    # of the same body instead, where `features` is what the classifier reads.
    images = torch.rand(1, 3, 32, 48) * 255
    with torch.no_grad():
        layer4 = without.forward_stages(without.normalize(images))[1]
        normalised = with_bn.bn_pretrain(layer4)
        by_hand = (layer4 - 0.5) / math.sqrt(4.0 + 1e-5) * 2.0 + 1.0
        assert torch.allclose(normalised, by_hand, atol=1e-5)
        expected = without.layer5(normalised)
        assert torch.allclose(with_bn(images)["logits"], expected, atol=1e-6)
        assert not torch.allclose(without(images)["logits"], expected, atol=1e-3)


def test_layer4_output_bn_trains_with_the_head_as_in_get_10x_lr_params() -> None:
    groups = bn_clr_model().param_groups()
    head_ids = {id(p) for p in groups["head"]}
    model = bn_clr_model()
    groups = model.param_groups()
    head_ids = {id(p) for p in groups["head"]}
    assert {id(p) for p in model.bn_pretrain.parameters()} <= head_ids
    assert not head_ids & {id(p) for p in groups["backbone"]}
    # In the papers' half-frozen BN mode the extra BN's affine is frozen like every other BN.
    assert not bn_clr_model(bn="half_frozen").bn_pretrain.weight.requires_grad


def test_released_bn_clr_checkpoint_loads_and_hints_both_ways(tmp_path: Path) -> None:
    released = bn_clr_model()
    with torch.no_grad():
        released.bn_pretrain.running_mean.uniform_()
    # ProDA's .pkl wrapper: {'ResNet101': {'model_state': ...}} (REFERENCE §1.3).
    path = tmp_path / "from_gta5_to_cityscapes_on_deeplabv2_best_model.pkl"
    torch.save({"ResNet101": {"model_state": released.state_dict()}}, path)
    model = bn_clr_model()
    load_released_checkpoint(model, path)
    assert torch.equal(model.bn_pretrain.running_mean, released.bn_pretrain.running_mean)
    with pytest.raises(Exception, match=r"set model\.layer4_output_bn=true"):
        load_released_checkpoint(bn_clr_model(False), path)
    torch.save(bn_clr_model(False).state_dict(), tmp_path / "stage1.pkl")
    with pytest.raises(Exception, match=r"set model\.layer4_output_bn=false"):
        load_released_checkpoint(bn_clr_model(), tmp_path / "stage1.pkl")


def test_init_file_without_bn_pretrain_leaves_it_at_identity(tmp_path: Path) -> None:
    backbone = {
        k: v + 0.5 if v.is_floating_point() else v
        for k, v in bn_clr_model(False).state_dict().items()
        if not k.startswith("layer5.")
    }
    torch.save({"state_dict": backbone}, tmp_path / "r101_1x_sk0.pth")
    model = bn_clr_model()
    load_init_weights(model, tmp_path / "r101_1x_sk0.pth")
    assert torch.equal(
        model.state_dict()["layer4.0.conv1.weight"], backbone["layer4.0.conv1.weight"]
    )
    # As ProDA: weight 1, bias 0, running mean 0 and variance 1.
    assert torch.equal(model.bn_pretrain.weight, torch.ones(128))
    assert torch.equal(model.bn_pretrain.running_var, torch.ones(128))


@pytest.mark.parametrize(("option", "teacher_has_bn"), [(None, True), (False, False), (True, True)])
def test_distill_teacher_follows_ema_bn(option: bool | None, teacher_has_bn: bool) -> None:
    student = bn_clr_model()
    method_class = METHODS.get("proda_distill")
    config = from_dict(method_class.Config, {"teacher_layer4_output_bn": option})
    method = method_class(config, student, CITYSCAPES19)
    assert (method.teacher.bn_pretrain is not None) == teacher_has_bn
    assert student.bn_pretrain is not None  # the student keeps its own
    assert not any(p.requires_grad for p in method.teacher.parameters())
    # Stage 2 (no --ema_bn): the stage-1 model's state_dict fits the teacher exactly.
    stage1 = bn_clr_model(False).state_dict()
    if not teacher_has_bn:
        method.teacher.load_state_dict(stage1)
    # A student without the BN and a teacher that wants one (a --bn_clr stage as teacher).
    plain = method_class(
        from_dict(method_class.Config, {"teacher_layer4_output_bn": True}),
        bn_clr_model(False),
        CITYSCAPES19,
    )
    assert plain.teacher.bn_pretrain is not None and plain.segmentor.bn_pretrain is None
    assert not any(p.requires_grad for p in plain.teacher.parameters())


def test_gta_recipe_runs_on_tiny_files_in_the_real_layouts(tmp_path: Path) -> None:
    """Every stage of recipes/proda_gta5_cityscapes.yaml, on tiny GTA5/Cityscapes files: stage 2
    trains a --bn_clr student against the stage-1 teacher, stage 3 one with --ema_bn."""
    from udaseg.recipes import run_recipe

    overrides = write_gta5_to_cityscapes(tmp_path)
    overrides = [item for item in overrides if not item.startswith(("run_dir=", "train.steps"))]
    overrides += [
        "train.steps=1",
        "train.eval_at_end=false",
        "data.batch_size=1",  # ProDA's 4, over 3 tiny GTA5 files
        "data.source.crop=[32,48]",
        "data.target.crop=[32,48]",
        "eval.input_size=[32,64]",
    ]
    recipe = load_recipe(CONFIGS / "recipes" / "proda_gta5_cityscapes.yaml", tmp_path / "recipe")
    for stage in recipe.stages:
        stage.overrides.pop("eval.input_size", None)  # full resolution, shrunk with the images
    results = run_recipe(recipe, overrides, device="cpu")
    assert [result.name for result in results][-1] == "stage1_no_structure"
    stage2 = torch.load(tmp_path / "recipe" / "stage2" / "checkpoints" / "last.pt")
    stage3 = torch.load(tmp_path / "recipe" / "stage3" / "checkpoints" / "last.pt")
    assert "bn_pretrain.weight" in stage2["modules"]["segmentor"]
    assert "bn_pretrain.weight" not in stage2["modules"]["teacher"]
    assert "bn_pretrain.weight" in stage3["modules"]["teacher"]
    assert stage3["config"]["method"]["teacher_layer4_output_bn"] is True


# --- shipped configs -------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["toy_proda.yaml", "proda_gta5_cityscapes.yaml"])
def test_recipes_validate(recipe: str) -> None:
    loaded = load_recipe(CONFIGS / "recipes" / recipe)
    names = [stage.name for stage in loaded.stages]
    assert names[:7] == [
        "warmup",
        "soft_labels",
        "stage1",
        "labels_stage1",
        "stage2",
        "labels_stage2",
        "stage3",
    ]


@pytest.mark.parametrize(
    "config",
    [
        "toy/proda_warmup.yaml",
        "toy/proda.yaml",
        "toy/proda_no_rectify.yaml",
        "toy/proda_no_structure.yaml",
        "toy/proda_distill.yaml",
        "experiments/proda_warmup_gta5_cityscapes.yaml",
        "experiments/proda_gta5_cityscapes.yaml",
        "experiments/proda_distill_gta5_cityscapes.yaml",
    ],
)
def test_shipped_configs_load(config: str) -> None:
    from udaseg.config import load_config

    loaded = load_config(CONFIGS / config)
    assert loaded.model.head == "proda"
    assert loaded.method.name in {"adaptsegnet", "proda", "proda_distill"}
    if loaded.method.name == "adaptsegnet":
        assert loaded.method.gan == "lsgan" and loaded.method.lambda_adv_main == 0.01
