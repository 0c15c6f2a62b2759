"""Joint image/label transforms of udaseg.data.transforms."""

from __future__ import annotations

import numpy as np

from udaseg.data.transforms import (
    EvalTransform,
    TrainTransform,
    random_crop,
    random_horizontal_flip,
    random_scale,
    resize_image,
    resize_label,
)


def _position_image(height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] whose pixels encode their row (channel 0) and column (channel 1)."""
    rows, columns = np.mgrid[0:height, 0:width]
    return np.stack([rows, columns, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


def _flip_seeds() -> tuple[int, int]:
    """A seed whose generator flips (first draw < 0.5) and one that does not."""
    flips = [seed for seed in range(50) if np.random.default_rng(seed).random() < 0.5]
    keeps = [seed for seed in range(50) if np.random.default_rng(seed).random() >= 0.5]
    return flips[0], keeps[0]


def test_resize_image_size_and_bicubic():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    resized = resize_image(image, (8, 3))
    assert resized.shape == (8, 3, 3) and resized.dtype == np.uint8
    # A constant image stays constant under bicubic interpolation.
    constant = np.full((5, 5, 3), 90, dtype=np.uint8)
    np.testing.assert_array_equal(resize_image(constant, (9, 7)), 90)


def test_resize_label_nearest_hand_computed():
    label = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    expected = [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    np.testing.assert_array_equal(resize_label(label, (4, 4)), expected)
    # Downscaling by 2 picks one pixel per 2x2 cell: never an average like 2.5.
    big = np.array(expected, dtype=np.uint8)
    np.testing.assert_array_equal(resize_label(big, (2, 2)), [[1, 2], [3, 4]])


def test_resize_label_never_creates_values():
    generator = np.random.default_rng(0)
    label = generator.choice(np.array([0, 13, 255], dtype=np.uint8), size=(17, 23))
    for size in [(5, 7), (40, 31), (17, 50)]:
        resized = resize_label(label, size)
        assert resized.shape == size and resized.dtype == np.uint8
        assert set(np.unique(resized)) <= {0, 13, 255}


def test_resize_label_wide_integers():
    label = np.array([[300, 70000]], dtype=np.int64)
    resized = resize_label(label, (2, 4))
    assert resized.dtype == np.int64
    np.testing.assert_array_equal(resized, [[300, 300, 70000, 70000]] * 2)


def test_random_scale_range_and_determinism():
    image = _position_image(20, 30)
    label = np.arange(600, dtype=np.int64).reshape(20, 30) % 19
    for seed in range(5):
        scaled_image, scaled_label = random_scale(
            image, label, (0.5, 1.5), np.random.default_rng(seed)
        )
        height, width = scaled_image.shape[:2]
        assert 10 <= height <= 30 and 15 <= width <= 45
        assert scaled_label.shape == (height, width)
        assert set(np.unique(scaled_label)) <= set(range(19))
        again_image, again_label = random_scale(
            image, label, (0.5, 1.5), np.random.default_rng(seed)
        )
        np.testing.assert_array_equal(again_image, scaled_image)
        np.testing.assert_array_equal(again_label, scaled_label)
    # The factor is the generator's first uniform draw.
    factor = np.random.default_rng(11).uniform(0.5, 1.5)
    scaled_image, _ = random_scale(image, None, (0.5, 1.5), np.random.default_rng(11))
    assert scaled_image.shape[:2] == (round(20 * factor), round(30 * factor))


def test_random_crop_window_matches_generator_offsets():
    image = _position_image(10, 12)
    label = np.arange(120, dtype=np.int64).reshape(10, 12)
    cropped_image, cropped_label = random_crop(image, label, (4, 5), np.random.default_rng(3))
    replica = np.random.default_rng(3)
    top = int(replica.integers(0, 10 - 4 + 1))
    left = int(replica.integers(0, 12 - 5 + 1))
    np.testing.assert_array_equal(cropped_image, image[top : top + 4, left : left + 5])
    np.testing.assert_array_equal(cropped_label, label[top : top + 4, left : left + 5])
    # The label window is the image window: channel 0/1 encode the same rows/columns.
    np.testing.assert_array_equal(cropped_label // 12, cropped_image[:, :, 0])
    np.testing.assert_array_equal(cropped_label % 12, cropped_image[:, :, 1])


def test_random_crop_pads_image_with_0_and_label_with_255():
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    label = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    cropped_image, cropped_label = random_crop(image, label, (3, 5), np.random.default_rng(0))
    expected_label = [[1, 2, 3, 255, 255], [4, 5, 6, 255, 255], [255] * 5]
    np.testing.assert_array_equal(cropped_label, expected_label)
    expected_image = np.zeros((3, 5, 3), dtype=np.uint8)
    expected_image[:2, :3] = 200
    np.testing.assert_array_equal(cropped_image, expected_image)


def test_random_crop_pads_one_dimension_and_crops_the_other():
    image = _position_image(2, 10)
    label = np.tile(np.arange(10, dtype=np.uint8), (2, 1))
    cropped_image, cropped_label = random_crop(image, label, (4, 3), np.random.default_rng(5))
    assert cropped_image.shape == (4, 3, 3)
    np.testing.assert_array_equal(cropped_label[2:], 255)
    np.testing.assert_array_equal(cropped_image[2:], 0)
    np.testing.assert_array_equal(cropped_label[0], cropped_image[0, :, 1])


def test_flip_moves_image_and_label_together():
    flip_seed, keep_seed = _flip_seeds()
    image = _position_image(3, 4)
    label = np.array([[0, 1, 2, 3]] * 3, dtype=np.uint8)
    flipped_image, flipped_label = random_horizontal_flip(
        image, label, np.random.default_rng(flip_seed)
    )
    np.testing.assert_array_equal(flipped_label, [[3, 2, 1, 0]] * 3)
    np.testing.assert_array_equal(flipped_image, image[:, ::-1])
    kept_image, kept_label = random_horizontal_flip(image, label, np.random.default_rng(keep_seed))
    np.testing.assert_array_equal(kept_image, image)
    np.testing.assert_array_equal(kept_label, label)


def test_train_transform_same_seed_same_output_and_seeds_vary():
    transform = TrainTransform(resize=(12, 16), random_scale=(0.75, 1.25), crop=(8, 8), flip=True)
    generator = np.random.default_rng(0)
    image = generator.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    label = generator.choice(np.array([0, 5, 255], dtype=np.uint8), size=(24, 32))
    outputs = []
    for seed in range(6):
        first = transform(image, label, np.random.default_rng(seed))
        second = transform(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
        assert first[0].shape == (8, 8, 3) and first[1].shape == (8, 8)
        assert first[0].flags["C_CONTIGUOUS"] and first[1].flags["C_CONTIGUOUS"]
        assert set(np.unique(first[1])) <= {0, 5, 255}
        outputs.append(first[0].tobytes())
    assert len(set(outputs)) > 1


def test_train_transform_without_label_and_resize_only():
    transform = TrainTransform(resize=(6, 10))
    image = np.zeros((3, 5, 3), dtype=np.uint8)
    result_image, result_label = transform(image, None, np.random.default_rng(0))
    assert result_image.shape == (6, 10, 3) and result_label is None


def test_eval_transform_image_resized_label_native_unless_asked():
    image = np.zeros((4, 8, 3), dtype=np.uint8)
    label = np.array([[1, 2, 3, 4, 5, 6, 7, 8]] * 4, dtype=np.uint8)
    result_image, result_label = EvalTransform(image_size=(2, 4))(
        image, label, np.random.default_rng(0)
    )
    assert result_image.shape == (2, 4, 3)
    np.testing.assert_array_equal(result_label, label)
    _, small_label = EvalTransform(image_size=(2, 4), label_size=(2, 4))(
        image, label, np.random.default_rng(0)
    )
    # Nearest samples at pixel centres: output column x reads input column floor((x + 0.5) * 2).
    np.testing.assert_array_equal(small_label, [[2, 4, 6, 8]] * 2)


# --- Extra label maps (pseudo labels) --------------------------------------------------------


def test_train_transform_apply_moves_every_map_with_the_image():
    transform = TrainTransform(random_scale=(0.6, 1.6), crop=(14, 18), flip=True)
    image = _position_image(12, 16)
    # A label that encodes each pixel's position, and a pseudo label of another dtype that
    # encodes the same, so any difference in scale, window, padding or flip shows.
    label = (np.arange(12 * 16, dtype=np.int64).reshape(12, 16) % 250).astype(np.uint8)
    pseudo_label = label.astype(np.int32)
    padded_seeds = 0
    for seed in range(10):
        result_image, maps = transform.apply(
            image, {"label": label, "pseudo_label": pseudo_label}, np.random.default_rng(seed)
        )
        assert set(maps) == {"label", "pseudo_label"}
        assert maps["pseudo_label"].dtype == np.int32
        assert maps["pseudo_label"].shape == result_image.shape[:2] == (14, 18)
        assert maps["pseudo_label"].flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(maps["pseudo_label"], maps["label"])
        # The draws do not depend on the maps: __call__ with the label alone gives the same.
        alone_image, alone_label = transform(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(alone_image, result_image)
        np.testing.assert_array_equal(alone_label, maps["label"])
        # The label holds 0..249, so 255 marks padding only: there the image is 0.
        padding = maps["pseudo_label"] == 255
        assert (result_image[padding] == 0).all()
        padded_seeds += int(padding.any())
    assert padded_seeds > 0  # some scale fell below the crop size


def test_train_transform_apply_pads_maps_with_the_ignore_index():
    transform = TrainTransform(crop=(3, 5), ignore_index=250)
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    pseudo_label = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    _, maps = transform.apply(image, {"pseudo_label": pseudo_label}, np.random.default_rng(0))
    np.testing.assert_array_equal(
        maps["pseudo_label"], [[1, 2, 3, 250, 250], [4, 5, 6, 250, 250], [250] * 5]
    )
    # No maps at all: the image alone.
    result_image, maps = transform.apply(image, {}, np.random.default_rng(0))
    assert result_image.shape == (3, 5, 3) and maps == {}


def test_eval_transform_apply_sizes_every_map_like_the_label():
    image = np.zeros((4, 8, 3), dtype=np.uint8)
    label = np.array([[1, 2, 3, 4, 5, 6, 7, 8]] * 4, dtype=np.uint8)
    maps = {"label": label, "pseudo_label": label + 10}
    result_image, native = EvalTransform(image_size=(2, 4)).apply(
        image, maps, np.random.default_rng(0)
    )
    assert result_image.shape == (2, 4, 3)
    np.testing.assert_array_equal(native["pseudo_label"], label + 10)
    _, small = EvalTransform(image_size=(2, 4), label_size=(2, 4)).apply(
        image, maps, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(small["label"], [[2, 4, 6, 8]] * 2)
    np.testing.assert_array_equal(small["pseudo_label"], [[12, 14, 16, 18]] * 2)
