"""Tests of udaseg.augment: hand-computed colour maths, blur kernels, cutout and ClassMix."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from udaseg import augment


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(batch_size: int = 4, height: int = 12, width: int = 10) -> torch.Tensor:
    """float [B, 3, H, W] in 0..255 with distinct colours (a fixed seed, not the global RNG)."""
    return torch.rand(batch_size, 3, height, width, generator=generator(123)) * 255.0


def two_by_two() -> torch.Tensor:
    """[1, 3, 2, 2]: red, green / blue, mid grey."""
    red = [[200.0, 0.0], [0.0, 100.0]]
    green = [[0.0, 150.0], [0.0, 100.0]]
    blue = [[0.0, 0.0], [50.0, 100.0]]
    return torch.tensor([[red, green, blue]])


# Each random op as a function of (images, probability, generator), at full strength.
RANDOM_OPS = {
    "color_jitter": lambda images, probability, rng: augment.color_jitter(
        images, 0.4, 0.4, 0.4, 0.2, probability, rng
    ),
    "color_jitter_legacy_random_order": lambda images, probability, rng: augment.color_jitter(
        images, 0.4, 0.4, 0.4, 0.2, probability, rng, formulas="kornia_legacy", random_order=True
    ),
    "gaussian_blur": lambda images, probability, rng: augment.gaussian_blur(
        images, (0.5, 2.0), probability, kernel_size=5, generator=rng
    ),
    "grayscale": lambda images, probability, rng: augment.grayscale(images, probability, rng),
    "cutout": lambda images, probability, rng: augment.cutout(
        images, 4, probability, generator=rng
    )[0],
}


# --- properties shared by every random op ------------------------------------------------------


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_probability_zero_is_identity(name: str) -> None:
    images = random_images()
    output = RANDOM_OPS[name](images, 0.0, generator(0))
    assert torch.equal(output, images)
    assert output.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_deterministic_from_generator(name: str) -> None:
    # Probability 0.5 so that grayscale, whose only draw is which images to convert, varies too.
    images = random_images(batch_size=16)
    first = RANDOM_OPS[name](images, 0.5, generator(7))
    again = RANDOM_OPS[name](images, 0.5, generator(7))
    other = RANDOM_OPS[name](images, 0.5, generator(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_global_rng_when_no_generator(name: str) -> None:
    images = random_images()
    torch.manual_seed(5)
    first = RANDOM_OPS[name](images, 0.5, None)
    torch.manual_seed(5)
    again = RANDOM_OPS[name](images, 0.5, None)
    assert torch.equal(first, again)


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_shape_dtype_device_range_and_input_untouched(name: str) -> None:
    images = random_images()
    copy = images.clone()
    output = RANDOM_OPS[name](images, 1.0, generator(1))
    assert output.shape == images.shape
    assert output.dtype == images.dtype
    assert output.device == images.device
    assert output.min() >= 0.0 and output.max() <= 255.0
    assert torch.equal(images, copy)


def test_probability_picks_images_independently() -> None:
    images = random_images(batch_size=64, height=4, width=4)
    output = augment.grayscale(images, 0.5, generator(3))
    changed = (output != images).flatten(1).any(dim=1)
    assert 10 < int(changed.sum()) < 54


@pytest.mark.parametrize(
    "call",
    [
        lambda images: augment.color_jitter(images, 0.1, 0.1, 0.1, 0.1, -0.1),
        lambda images: augment.color_jitter(images, 0.1, 0.1, 0.1, 0.1, 1.5),
        lambda images: augment.color_jitter(images, -0.1, 0.1, 0.1, 0.1, 0.5),
        lambda images: augment.color_jitter(images, 0.1, 0.1, 0.1, 0.6, 0.5),
        lambda images: augment.gaussian_blur(images, (1.0, 0.5), 0.5),
        lambda images: augment.gaussian_blur(images, (0.0, 0.5), 0.5),
        lambda images: augment.gaussian_blur(images, (0.5, 1.0), 0.5, kernel_size=4),
        lambda images: augment.gaussian_blur(images, (0.5, 1.0), 1.0, kernel_size=31),
        lambda images: augment.grayscale(images, -1.0),
        lambda images: augment.cutout(images, 0, 0.5),
        lambda images: augment.grayscale(images[:, :2], 0.5),
        lambda images: augment.grayscale(images.to(torch.uint8), 0.5),
    ],
)
def test_bad_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call(random_images())


def test_non_cpu_generator_is_refused() -> None:
    # A stand-in: this machine may have no accelerator to build a real CUDA generator on.
    cuda_generator = SimpleNamespace(device=torch.device("cuda"))
    with pytest.raises(ValueError, match="CPU"):
        augment.grayscale(random_images(), 0.5, cuda_generator)


# --- colour maths, by hand ---------------------------------------------------------------------


def test_brightness_by_hand() -> None:
    images = two_by_two()
    torchvision = augment.adjust_brightness(images, 1.5)
    assert torch.allclose(torchvision, (images * 1.5).clamp(max=255.0))
    assert torchvision[0, 0, 0, 0] == 255.0  # 200 * 1.5 clamped
    assert torchvision[0, 1, 0, 1] == 225.0  # 150 * 1.5
    legacy = augment.adjust_brightness(images, torch.tensor([0.8]), "kornia_legacy")
    # additive: x - 0.2 * 255 = x - 51, clamped at 0
    assert torch.allclose(legacy[0, :, 1, 1], torch.tensor([49.0, 49.0, 49.0]))
    assert legacy[0, 0, 0, 0].item() == pytest.approx(149.0, abs=1e-4)
    assert legacy[0, 1, 0, 0] == 0.0


def test_contrast_by_hand() -> None:
    images = two_by_two()
    # Mean luma: (0.299*200) + (0.587*150) + (0.114*50) + 100 over 4 pixels.
    mean_luma = (59.8 + 88.05 + 5.7 + 100.0) / 4.0
    output = augment.adjust_contrast(images, 0.5)
    expected = (0.5 * images + 0.5 * mean_luma).clamp(0.0, 255.0)
    assert torch.allclose(output, expected, atol=1e-4)
    assert output[0, 0, 0, 0].item() == pytest.approx(100.0 + 0.5 * mean_luma, abs=1e-4)
    legacy = augment.adjust_contrast(images, 1.2, "kornia_legacy")
    assert legacy[0, 0, 0, 0].item() == pytest.approx(240.0, abs=1e-4)
    assert legacy[0, 1, 0, 1].item() == pytest.approx(180.0, abs=1e-4)


def test_saturation_by_hand() -> None:
    images = two_by_two()
    # torchvision: blend with each pixel's luma; factor 0 gives grey.
    grey = augment.adjust_saturation(images, 0.0)
    assert torch.allclose(grey[0, :, 0, 0], torch.full((3,), 59.8), atol=1e-4)
    double = augment.adjust_saturation(images, 2.0)
    # pure red 200: luma 59.8 -> R = 2*200 - 59.8 = 340.2 -> 255, G = B = -59.8 -> 0
    assert torch.allclose(double[0, :, 0, 0], torch.tensor([255.0, 0.0, 0.0]))
    # legacy (HSV): halving the saturation of (200, 0, 0) gives (200, 100, 100).
    half = augment.adjust_saturation(images, 0.5, "kornia_legacy")
    assert torch.allclose(half[0, :, 0, 0], torch.tensor([200.0, 100.0, 100.0]), atol=1e-3)
    # grey pixels have no saturation to change
    assert torch.allclose(half[0, :, 1, 1], torch.full((3,), 100.0), atol=1e-3)


def test_hue_shift_of_pure_red() -> None:
    red = torch.tensor([255.0, 0.0, 0.0]).view(1, 3, 1, 1)
    green = augment.adjust_hue(red, 1.0 / 3.0)
    assert torch.allclose(green.flatten(), torch.tensor([0.0, 255.0, 0.0]), atol=1e-3)
    blue = augment.adjust_hue(red, -1.0 / 3.0)
    assert torch.allclose(blue.flatten(), torch.tensor([0.0, 0.0, 255.0]), atol=1e-3)
    grey = torch.full((1, 3, 1, 1), 77.0)
    assert torch.allclose(augment.adjust_hue(grey, 0.25), grey)


def test_hsv_round_trip_and_known_values() -> None:
    images = random_images() / 255.0
    assert torch.allclose(augment.hsv_to_rgb(augment.rgb_to_hsv(images)), images, atol=1e-5)
    # yellow (1, 1, 0): hue 1/6, saturation 1, value 1
    yellow = torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(augment.rgb_to_hsv(yellow).flatten(), torch.tensor([1 / 6, 1.0, 1.0]))


def test_grayscale_luma_values() -> None:
    images = two_by_two()
    output = augment.grayscale(images, 1.0, generator(0))
    expected = torch.tensor([[59.8, 88.05], [5.7, 100.0]])
    for channel in range(3):
        assert torch.allclose(output[0, channel], expected, atol=1e-4)


def test_color_jitter_zero_strength_is_identity() -> None:
    images = random_images()
    output = augment.color_jitter(images, 0.0, 0.0, 0.0, 0.0, 1.0, generator(0))
    assert torch.equal(output, images)


def test_color_jitter_matches_its_drawn_factors() -> None:
    images = random_images(batch_size=3)
    output = augment.color_jitter(images, 0.3, 0.0, 0.0, 0.0, 1.0, generator(11))
    # Replay the documented draw order: apply [B], then brightness [B].
    replay = generator(11)
    torch.rand(3, generator=replay, dtype=torch.float64)
    factors = 0.7 + 0.6 * torch.rand(3, generator=replay, dtype=torch.float64)
    assert torch.allclose(output, augment.adjust_brightness(images, factors))


# --- Gaussian blur ------------------------------------------------------------------------------


def test_gaussian_kernel_sums_to_one_and_matches_formula() -> None:
    sigmas = torch.tensor([0.5, 1.15], dtype=torch.float64)
    kernels = augment.gaussian_kernel1d(5, sigmas)
    assert kernels.shape == (2, 5)
    assert torch.allclose(kernels.sum(dim=1), torch.ones(2, dtype=torch.float64))
    for row, sigma in enumerate(sigmas.tolist()):
        raw = [math.exp(-(offset**2) / (2 * sigma**2)) for offset in range(-2, 3)]
        expected = torch.tensor(raw, dtype=torch.float64) / sum(raw)
        assert torch.allclose(kernels[row], expected)


def test_dacs_blur_kernel_sizes() -> None:
    assert augment.dacs_blur_kernel_size(512) == 51  # ceil(51.2) = 52, even -> 51
    assert augment.dacs_blur_kernel_size(1024) == 103  # ceil(102.4) = 103, odd
    assert augment.dacs_blur_kernel_size(720) == 71  # ceil(72) = 72 -> 71
    assert augment.dacs_blur_kernel_size(10) == 1


def test_blur_of_constant_image_and_of_a_point() -> None:
    constant = torch.full((1, 3, 9, 9), 40.0)
    blurred = augment.blur_with_sigmas(constant, torch.tensor([1.0]), (5, 5))
    assert torch.allclose(blurred, constant)
    point = torch.zeros(1, 3, 9, 9)
    point[0, :, 4, 4] = 100.0
    blurred = augment.blur_with_sigmas(point, torch.tensor([0.8]), (5, 5))
    kernel = augment.gaussian_kernel1d(5, torch.tensor([0.8], dtype=torch.float64))[0]
    expected = (100.0 * torch.outer(kernel, kernel)).float()
    assert torch.allclose(blurred[0, 1, 2:7, 2:7], expected, atol=1e-5)
    assert blurred[0, 1, 0, 0] == 0.0


def test_blur_sigmas_are_per_image() -> None:
    images = random_images(batch_size=2)
    output = augment.gaussian_blur(images, (0.3, 2.0), 1.0, kernel_size=5, generator=generator(2))
    replay = generator(2)
    torch.rand(2, generator=replay, dtype=torch.float64)
    sigmas = 0.3 + 1.7 * torch.rand(2, generator=replay, dtype=torch.float64)
    for index in range(2):
        single = augment.blur_with_sigmas(
            images[index : index + 1], sigmas[index : index + 1], (5, 5)
        )
        assert torch.allclose(output[index : index + 1], single.clamp(0.0, 255.0))


# --- cutout ---------------------------------------------------------------------------------------


def test_cutout_zeroes_one_rectangle_and_voids_labels() -> None:
    images = random_images(batch_size=3, height=16, width=16) + 1.0  # no genuine zeros
    images = images.clamp(max=255.0)
    labels = torch.randint(0, 19, (3, 16, 16), generator=generator(4))
    output, output_labels = augment.cutout(images, (4, 6), 1.0, labels, generator(9))
    assert output_labels is not None
    for index in range(3):
        zeroed = (output[index] == 0).all(dim=0)
        rows = zeroed.any(dim=1).nonzero().flatten()
        columns = zeroed.any(dim=0).nonzero().flatten()
        assert rows.numel() > 0
        top, bottom = int(rows.min()), int(rows.max()) + 1
        left, right = int(columns.min()), int(columns.max()) + 1
        # exactly the bounding box is zero: one rectangle, at most 4x6, clipped at borders
        assert int(zeroed.sum()) == (bottom - top) * (right - left)
        assert bottom - top <= 4 and right - left <= 6
        assert torch.equal(output_labels[index] == 255, zeroed)
        untouched = ~zeroed
        assert torch.equal(output[index][:, untouched], images[index][:, untouched])
        assert torch.equal(output_labels[index][untouched], labels[index][untouched])


def test_cutout_away_from_borders_has_full_size() -> None:
    images = torch.full((64, 3, 40, 40), 9.0)
    output, labels = augment.cutout(images, 5, 1.0, generator=generator(0))
    assert labels is None
    areas = (output == 0).all(dim=1).flatten(1).sum(dim=1)
    assert int(areas.max()) == 25 and int(areas.min()) > 0


# --- ClassMix -------------------------------------------------------------------------------------


def hand_made_labels() -> torch.Tensor:
    """[2, 4, 4] with classes {0, 3, 7, 255} in the first image and {3, 7, 255} in the second."""
    first = torch.tensor([[0, 0, 3, 3], [0, 0, 3, 3], [7, 7, 255, 255], [7, 7, 255, 255]])
    second = torch.tensor([[3, 3, 3, 3], [7, 7, 7, 7], [255, 255, 7, 7], [3, 3, 3, 3]])
    return torch.stack((first, second))


def test_class_mix_masks_cover_exactly_the_chosen_half() -> None:
    labels = hand_made_labels()
    masks = augment.class_mix_masks(labels, generator(21))
    assert masks.dtype == torch.bool and masks.shape == labels.shape
    replay = generator(21)
    for index, count in ((0, 4), (1, 3)):
        classes = torch.unique(labels[index])
        assert classes.numel() == count
        chosen = classes[torch.randperm(count, generator=replay)[: (count + count % 2) // 2]]
        # 4 classes -> 2 chosen, 3 classes -> 2 chosen (void 255 counts as a class)
        assert chosen.numel() == 2
        expected = torch.zeros_like(masks[index])
        for value in chosen.tolist():
            expected |= labels[index] == value
        assert torch.equal(masks[index], expected)
        # every class is either fully in or fully out of the mask
        for value in classes.tolist():
            region = masks[index][labels[index] == value]
            assert region.all() or not region.any()


def test_class_mix_masks_choose_different_halves() -> None:
    labels = hand_made_labels()[:1].expand(16, 4, 4)
    masks = augment.class_mix_masks(labels, generator(0))
    assert len({tuple(mask.flatten().tolist()) for mask in masks}) > 1
    assert all(int(mask.sum()) == 8 for mask in masks)  # two classes of four pixels each


def test_class_mix_masks_without_void_and_from_the_batch() -> None:
    labels = hand_made_labels()
    masks = augment.class_mix_masks(labels, generator(1), include_ignore=False)
    assert not masks[labels == 255].any()
    # batch classes {0, 3, 7, 255}: two chosen per image, possibly absent from the second image
    batch_masks = augment.class_mix_masks(labels, generator(1), batch_classes=True)
    assert int(batch_masks[0].sum()) == 8


def test_mix_images_labels_and_weights() -> None:
    masks = torch.tensor([[[True, False], [False, True]]])
    foreground_images = torch.full((1, 3, 2, 2), 10.0)
    background_images = torch.full((1, 3, 2, 2), 20.0)
    mixed = augment.mix(masks, foreground_images, background_images)
    assert torch.equal(mixed[0, 2], torch.tensor([[10.0, 20.0], [20.0, 10.0]]))
    foreground_labels = torch.tensor([[[1, 1], [1, 1]]])
    background_labels = torch.tensor([[[255, 5], [6, 7]]])
    mixed_labels = augment.mix(masks, foreground_labels, background_labels)
    assert mixed_labels.dtype == torch.int64
    assert torch.equal(mixed_labels, torch.tensor([[[1, 5], [6, 1]]]))
    weights = augment.mix(masks, torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.3))
    assert torch.allclose(weights, torch.tensor([[[1.0, 0.3], [0.3, 1.0]]]))
    with pytest.raises(ValueError):
        augment.mix(masks.long(), foreground_labels, background_labels)


# --- DACS preset ----------------------------------------------------------------------------------


def test_dacs_strong_transform_is_seeded_and_in_range() -> None:
    images = random_images(batch_size=8, height=20, width=20)
    first = augment.dacs_strong_transform(images, generator(3))
    again = augment.dacs_strong_transform(images, generator(3))
    assert torch.equal(first, again)
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 255
    changed = (first != images).flatten(1).any(dim=1)
    assert changed.any()


def test_blur_ignores_autocast() -> None:
    images = random_images(batch_size=2)
    sigmas = torch.tensor([0.7, 1.1])
    reference = augment.blur_with_sigmas(images, sigmas, (5, 5))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = augment.blur_with_sigmas(images, sigmas, (5, 5))
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, reference)
