"""predict_logits (whole, slide, flip, align_corners, padding, resize) and evaluate()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from udaseg.config import EvalConfig, load_config
from udaseg.data.label_spaces import EvalSubset, LabelSpace
from udaseg.data.transforms import resize_image
from udaseg.errors import ConfigError
from udaseg.evaluation.evaluate import evaluate, protocol_of
from udaseg.evaluation.inference import RESIZE_METHODS, predict_logits, resize_images

REPO = Path(__file__).resolve().parents[1]


def pointwise_forward(seed: int = 0, classes: int = 5) -> torch.nn.Conv2d:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, classes, kernel_size=1)


def images_of(batch: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), generator=generator, dtype=torch.uint8)


@torch.no_grad()
def test_whole_shapes_and_stride8_upsampling():
    def stride8(images: torch.Tensor) -> dict[str, torch.Tensor]:  # a segmentor's dict output
        return {"logits": F.avg_pool2d(images, 8)[:, :2]}

    images = images_of(2, 32, 64)
    logits = predict_logits(stride8, images, output_size=(64, 128))
    assert logits.shape == (2, 2, 64, 128) and logits.dtype == torch.float32
    # input_size resizes first: the forward sees 16x32, gives 2x4 logits, upsampled to 8x8.
    seen = []
    logits = predict_logits(
        lambda x: seen.append(x.shape) or stride8(x)["logits"],
        images,
        output_size=(8, 8),
        input_size=(16, 32),
    )
    assert seen == [(2, 3, 16, 32)] and logits.shape == (2, 2, 8, 8)


@torch.no_grad()
def test_align_corners_values():
    # One logit row [0, 3] upsampled to width 4.
    def two_pixels(images: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[[[0.0, 3.0]]]]).expand(images.shape[0], 1, 1, 2)

    images = images_of(1, 1, 4)
    corners = predict_logits(two_pixels, images, output_size=(1, 4), align_corners=True)
    assert corners[0, 0, 0].tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0])
    # align_corners=False samples at (x + 0.5) / 2 - 0.5: -0.25 (clamped), 0.25, 0.75, 1.25.
    centres = predict_logits(two_pixels, images, output_size=(1, 4), align_corners=False)
    assert centres[0, 0, 0].tolist() == pytest.approx([0.0, 0.75, 2.25, 3.0])


@torch.no_grad()
def test_slide_equals_whole_for_pointwise_forward():
    forward = pointwise_forward()
    images = images_of(2, 37, 53)
    whole = predict_logits(forward, images, output_size=(37, 53))
    slide = predict_logits(
        forward, images, output_size=(37, 53), mode="slide", window=(16, 24), stride=(10, 15)
    )
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-4)


@torch.no_grad()
def test_slide_windows_are_averaged_where_they_overlap():
    calls = []

    def ones(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape[-2:])
        return torch.full((images.shape[0], 1, *images.shape[-2:]), float(len(calls)))

    images = images_of(1, 4, 10)
    logits = predict_logits(
        ones, images, output_size=(4, 10), mode="slide", window=(4, 6), stride=(4, 4)
    )
    # Windows at left 0 and 4 (= 10 - 6, flush with the end): 1 on columns 0..5, 2 on 4..9.
    assert calls == [(4, 6), (4, 6)]
    assert logits[0, 0, 0].tolist() == [1, 1, 1, 1, 1.5, 1.5, 2, 2, 2, 2]
    # Stride 3 needs a third window, pushed back to stay inside: lefts 0, 3, 4.
    calls.clear()
    logits = predict_logits(
        ones, images, output_size=(4, 10), mode="slide", window=(4, 6), stride=(4, 3)
    )
    assert len(calls) == 3
    assert logits[0, 0, 0].tolist() == pytest.approx(
        [1, 1, 1, 1.5, 2, 2, 2.5, 2.5, 2.5, 3]  # (1+2)/2, (1+2+3)/3, (2+3)/2
    )


@torch.no_grad()
def test_slide_pads_images_smaller_than_the_window():
    seen = []
    forward = pointwise_forward()

    def recording(images: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(images.shape[-2:]))
        # Stride-2 logits exercise the window upsampling too.
        return forward(images)[..., ::2, ::2]

    images = images_of(1, 10, 12)
    logits = predict_logits(
        recording, images, output_size=(10, 12), mode="slide", window=(16, 16), stride=(8, 8)
    )
    assert seen == [(16, 16)] and logits.shape == (1, 5, 10, 12)
    # The pad is cropped away: the result equals the padded image's logits, top-left part.
    padded = F.pad(images.float(), (0, 4, 0, 6))
    expected = F.interpolate(
        forward(padded)[..., ::2, ::2], size=(16, 16), mode="bilinear", align_corners=True
    )[..., :10, :12]
    torch.testing.assert_close(logits, expected)
    # A pointwise forward at full resolution is not changed by the padding at all.
    direct = predict_logits(forward, images, (10, 12), mode="slide", window=(16, 16), stride=(8, 8))
    torch.testing.assert_close(direct, forward(images.float()), rtol=1e-5, atol=1e-4)


@torch.no_grad()
def test_flip():
    images = images_of(2, 6, 8)
    # A flip-equivariant forward gives the same logits with and without flip.
    forward = pointwise_forward()
    plain = predict_logits(forward, images, output_size=(12, 16))
    flipped = predict_logits(forward, images, output_size=(12, 16), flip=True)
    torch.testing.assert_close(flipped, plain, rtol=1e-5, atol=1e-4)

    # A forward that returns the column index 0..7 whatever the image: the flipped view's
    # logits, flipped back, are 7..0, so the average is 3.5 everywhere.
    def column(images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        return torch.arange(width, dtype=torch.float32).expand(batch, 1, height, width).clone()

    averaged = predict_logits(column, images, output_size=(6, 8), flip=True)
    assert torch.all(averaged == 3.5)
    # Averaging before or after upsampling is the same (bilinear commutes with the flip).
    for align in (True, False):
        low = predict_logits(
            lambda x: column(x)[..., ::2, ::2] ** 2, images, (6, 8), flip=True, align_corners=align
        )
        upsampled = F.interpolate(
            torch.arange(0, 8, 2.0).view(1, 1, 1, 4) ** 2,
            size=(6, 8),
            mode="bilinear",
            align_corners=align,
        )
        expected = (upsampled + upsampled.flip(-1)) / 2
        torch.testing.assert_close(low, expected.expand_as(low))


def test_bad_slide_settings():
    with pytest.raises(ConfigError, match="eval.stride"):
        predict_logits(
            pointwise_forward(),
            images_of(1, 8, 8),
            (8, 8),
            mode="slide",
            window=(4, 4),
            stride=(5, 4),
        )
    with pytest.raises(ConfigError, match="eval.mode"):
        predict_logits(pointwise_forward(), images_of(1, 8, 8), (8, 8), mode="tiles")


SPACE = LabelSpace(
    name="three",
    class_names=("a", "b", "c"),
    palette=((0, 0, 0),) * 3,
    subsets=(EvalSubset("mIoU3", (0, 1, 2), "count", "all three"),),
)


def test_evaluate_with_an_oracle_forward():
    # The image's red channel holds the class; the forward one-hot encodes it at half
    # resolution, and evaluate upsamples it back to the label size.
    generator = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(3):
        classes = torch.randint(0, 3, (2, 4, 6), generator=generator)
        classes = classes.repeat_interleave(2, 1).repeat_interleave(2, 2)  # 2x2 blocks
        labels = classes.clone()
        labels[:, 0, 0] = 255
        image = torch.zeros(2, 3, 8, 12, dtype=torch.uint8)
        image[:, 0] = classes.to(torch.uint8)
        batches.append({"image": image, "label": labels})

    def oracle(images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.float32
        half = images[:, 0, ::2, ::2].long()
        return F.one_hot(half, 3).permute(0, 3, 1, 2).float()

    config = EvalConfig(align_corners=False)
    result = evaluate(oracle, batches, SPACE, config, device="cpu", progress=False)
    assert result.miou["mIoU3"] == 1.0 and result.num_images == 6
    assert result.protocol["align_corners"] is False and result.protocol["label_size"] == [8, 12]

    limited = evaluate(oracle, batches, SPACE, EvalConfig(max_images=3, flip=True), "cpu")
    assert limited.num_images == 3 and limited.protocol["flip"] is True


# --- Resizing to eval.input_size (eval.resize) --------------------------------------------------


def seen_inputs(images: torch.Tensor, **settings) -> torch.Tensor:
    """The batch `predict_logits` hands to the network, for a 1-channel identity forward."""
    seen = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.clone())
        return batch[:, :1]

    predict_logits(forward, images, output_size=(4, 4), **settings)
    return seen[0]


@torch.no_grad()
def test_pil_resize_is_the_datasets_resize_image_exactly():
    images = images_of(2, 37, 53, seed=4)
    expected = torch.stack(
        [
            torch.from_numpy(resize_image(image.permute(1, 2, 0).numpy(), (24, 32)).copy()).permute(
                2, 0, 1
            )
            for image in images
        ]
    ).float()
    for batch in (images, images.float()):  # uint8, or float holding uint8 values
        assert torch.equal(resize_images(batch, (24, 32), resize="pil"), expected)
        assert torch.equal(seen_inputs(batch, input_size=(24, 32), resize="pil"), expected)
    # "pil" is the default, as in EvalConfig and the original loaders.
    assert torch.equal(seen_inputs(images, input_size=(24, 32)), expected)
    # Upsampling too (FDA's 1344x576 from a smaller image, say).
    upsampled = resize_image(images[0].permute(1, 2, 0).numpy(), (50, 70))
    assert torch.equal(
        resize_images(images[:1], (50, 70))[0],
        torch.from_numpy(upsampled.copy()).permute(2, 0, 1).float(),
    )


@torch.no_grad()
def test_torch_resize_is_the_antialiased_bicubic_of_before():
    images = images_of(2, 37, 53, seed=5)
    # udaseg's resize before eval.resize existed, written out.
    before = F.interpolate(
        images.float(), size=(24, 32), mode="bicubic", align_corners=False, antialias=True
    ).clamp(0, 255)
    assert torch.equal(seen_inputs(images, input_size=(24, 32), resize="torch"), before)
    assert torch.equal(resize_images(images, (24, 32), resize="torch"), before)
    # The two methods are different pixels, which is why the protocol records the choice.
    assert not torch.equal(resize_images(images, (24, 32), resize="pil"), before)
    # At the input size already, both leave the pixels alone.
    for method in RESIZE_METHODS:
        assert torch.equal(resize_images(images, (37, 53), resize=method), images.float())
    with pytest.raises(ConfigError, match="eval.resize"):
        resize_images(images, (24, 32), resize="bilinear")


# The experiment configs that reproduce the papers' released numbers.
PAPER_EXPERIMENTS = (
    "adaptsegnet_feature_gta5_cityscapes",
    "adaptsegnet_multi_gta5_cityscapes",
    "adaptsegnet_single_gta5_cityscapes",
    "advent_gta5_cityscapes",
    "advent_minent_gta5_cityscapes",
    "dann_gta5_cityscapes",
    "minent_gta5_cityscapes",
    "source_only_gta5_cityscapes",
    "source_only_synthia_cityscapes",
    "structure_enhancement_gta5_cityscapes",
)


def test_eval_resize_setting_is_recorded_and_explicit_in_the_experiment_configs():
    assert EvalConfig().resize == "pil"
    assert protocol_of(EvalConfig())["resize"] == "pil"
    assert protocol_of(EvalConfig(resize="torch"))["resize"] == "torch"
    with pytest.raises(ConfigError, match="eval.resize"):
        load_config(None, ["eval.resize=bilinear"])
    for name in PAPER_EXPERIMENTS:
        path = REPO / "udaseg" / "configs" / "experiments" / f"{name}.yaml"
        # Stated in the file itself, not inherited from a default that could change.
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert raw["eval"]["resize"] == "pil", path.name
        assert load_config(path, []).eval.resize == "pil"
