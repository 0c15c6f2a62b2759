"""Pseudo-labels for self-training: which target pixels get which train id, as the papers do it.

`assign(probabilities, policy, **options)` turns the softmax of a whole split into uint8 train
ids, 255 (`IGNORE_INDEX`) where a pixel is left out. The policies equal the official code:

- `"argmax"`: the argmax everywhere (DACS/DAFormer-style hard labels; nothing left out).
- `"threshold"`, `threshold=t`: ProDA stages 2-3 (t = 0.95). microsoft/ProDA
  data/cityscapes_dataset.py sets `lp[conf <= threshold] = 250`, so a pixel is kept only when
  its confidence is STRICTLY above t. (ProDA stores the confidence as float16 first; here it is
  compared in full precision.)
- `"class_percentile"`, `percentile=q, cap=c`: BDL SSL.py (q = 50, c = 0.9) and FDA
  getSudoLabel_multi.py (q = 66, c = 0.9). Per class, the confidences of the pixels predicted as
  that class are sorted ascending and the threshold is `x[int(np.round(len(x) * q / 100))]`
  (NumPy rounds half to even: a class with 3 pixels and q = 50 takes index 2), then
  `min(threshold, c)`. A class never predicted gets 0. A pixel is left out when its confidence
  is strictly below its class's threshold (`label[(prob < thres[i]) * (label == i)] = 255`).
  Deviation: the official index can equal `len(x)` (FDA with a class of exactly one pixel:
  round(0.66) = 1) and crashes; here it is clamped to the last element.
- `"class_balanced"`, `portion=p`: CBST/CRST "kc" policy (yzou2/CRST crst_seg.py kc_parameters
  and label_selection; yzou2/CBST issegm/solve_ST.py). Per class, confidences sorted in
  descending order; with `k = floor(len * p)` the threshold is element `k - 1`; it stays 1 when
  `k == 0`, which includes a class never predicted. Then every class's probability map is
  divided by its threshold (float32, as the official arrays are), the label is the argmax of
  the ratios and the pixel is kept when the largest ratio is >= 1. Deviation: the official code
  samples every 4th pixel of each class and image (`ds_rate`) before sorting; here all pixels
  count, which is the quantity that subsampling estimates.

Ties in an argmax go to the lowest class index, as in NumPy and PyTorch.

CBST-SP's spatial prior: `spatial_prior(label_maps, C)` is the class frequency at each position
over source label maps, `apply_spatial_prior` multiplies it into the probabilities (as CBST's
solve_ST.py does with its released prior before thresholding), `assign(..., spatial_prior=)`
does both steps' second half in memory.

The two halves are exposed for streaming: `class_thresholds(confidence, predicted, ...)` (exact,
from arrays in memory) or `ConfidenceHistogram.thresholds(...)` (a whole split in a fixed
amount of memory), and `apply_thresholds(probabilities, thresholds, policy)`.

How exact the streaming histogram is: confidences fall into `bins` equal bins of [0, 1]
(65536 by default). The order statistic a threshold needs is located exactly (its bin is found
from exact counts); inside that bin it is estimated by linear interpolation over the bin's
count. So a streamed threshold lies within one bin width (1/65536 = 1.5e-5) of the exact one,
and a label can differ from the in-memory `assign` only for a pixel whose decision depends on
a value inside that gap: for `class_percentile`, a pixel whose confidence lies within 1/bins of
its class's threshold; for `class_balanced`, a pixel whose ratio prob / threshold is within a
relative 1/(bins * threshold) of 1 or of another class's ratio. Measured on 8 smooth random
softmax maps of 19 classes at 256x512 (1M pixels): streamed thresholds within 0.66 bin widths
of the exact ones, 1e-5 of the labels different (about one pixel per class). `argmax` and
`threshold` need no statistics and are exact.

Files: `write_label_png` writes 8-bit grayscale train-id PNGs (read back with
`udaseg.data.io.read_label`), `write_confidence_png` 16-bit grayscale confidences
(round(conf * 65535), read back with `read_confidence_png`), `write_array_npy` NumPy arrays; all
three atomically (temporary file in the same folder, then `os.replace`), creating folders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import png
import torch
import torch.nn.functional as F
from PIL import Image

from udaseg.data.io import read_png16
from udaseg.errors import ConfigError
from udaseg.files import atomic_write

IGNORE_INDEX = 255

# policy -> its options, each with the closed/open range it must lie in.
POLICIES: dict[str, dict[str, tuple[float, float, bool]]] = {
    "argmax": {},
    # (low, high, low_inclusive); every high bound is inclusive.
    "threshold": {"threshold": (0.0, 1.0, True)},
    "class_percentile": {"percentile": (0.0, 100.0, True), "cap": (0.0, 1.0, False)},
    "class_balanced": {"portion": (0.0, 1.0, False)},
}
# Policies whose thresholds come from the statistics of the whole split (two passes).
STATISTICS_POLICIES = ("class_percentile", "class_balanced")

Array = torch.Tensor | np.ndarray


def check_options(policy: str, options: Mapping[str, Any]) -> dict[str, float]:
    """Validate a policy and its options.

    Returns:
        the options as floats, keyed in the policy's order.
    Raises:
        ConfigError: unknown policy, or an option missing, not expected or out of range.
    """
    if policy not in POLICIES:
        raise ConfigError(
            f"pseudo-label policy {policy!r}: unknown; choose one of {', '.join(POLICIES)}"
        )
    expected = POLICIES[policy]
    extra = [name for name in options if name not in expected]
    if extra:
        wanted = ", ".join(expected) if expected else "no options"
        raise ConfigError(f"pseudo-label option {extra[0]!r}: policy {policy!r} takes {wanted}")
    checked: dict[str, float] = {}
    for name, (low, high, low_inclusive) in expected.items():
        if name not in options or options[name] is None:
            raise ConfigError(f"pseudo-label option {name!r}: required by policy {policy!r}")
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise ConfigError(f"pseudo-label option {name!r}: expected a number, got {value!r}")
        value = float(value)
        above_low = value >= low if low_inclusive else value > low
        if not (above_low and value <= high) or math.isnan(value):
            bracket = "[" if low_inclusive else "("
            raise ConfigError(
                f"pseudo-label option {name!r}: {value:g} is outside {bracket}{low:g}, {high:g}]"
            )
        checked[name] = value
    return checked


def _order_rank(policy: str, count: int, options: Mapping[str, float]) -> int | None:
    """0-based ascending rank of the element a class threshold is, or None for the default.

    `count` confidences of one class, sorted ascending. None: the class gets the policy's
    default threshold (0 for class_percentile, 1 for class_balanced).
    """
    if policy == "class_percentile":
        if count == 0:
            return None
        # round() on a float rounds half to even, exactly as np.round does in SSL.py.
        index = int(round(count * (options["percentile"] / 100)))
        return min(index, count - 1)
    selected = int(math.floor(count * options["portion"]))
    if selected == 0:
        return None
    # Element selected - 1 of the descending order is element count - selected ascending.
    return count - selected


def _finish_thresholds(
    policy: str, thresholds: torch.Tensor, options: Mapping[str, float]
) -> torch.Tensor:
    if policy == "class_percentile":
        return thresholds.clamp(max=options["cap"])
    return thresholds


def _default_threshold(policy: str) -> float:
    return 0.0 if policy == "class_percentile" else 1.0


def _as_tensor(array: Array) -> tuple[torch.Tensor, bool]:
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array)), True
    if isinstance(array, torch.Tensor):
        return array, False
    raise TypeError(f"expected a torch tensor or numpy array, got {type(array).__name__}")


def _like(tensor: torch.Tensor, was_numpy: bool) -> Array:
    return tensor.cpu().numpy() if was_numpy else tensor


def confidence_and_prediction(probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max probability and its class (lowest index on ties).

    Args:
        probabilities: float [N, C, H, W] (or [C, H, W]; the class axis is -3).
    Returns:
        (confidence [N, H, W] in the input's dtype, predicted int64 [N, H, W]).
    """
    predicted = probabilities.argmax(dim=-3)
    confidence = probabilities.gather(-3, predicted.unsqueeze(-3)).squeeze(-3)
    return confidence, predicted


def class_thresholds(
    confidence: Array, predicted: Array, num_classes: int, policy: str, **options: float
) -> Array | None:
    """Per-class thresholds of a policy, exact, from the confidences of a whole split.

    Args:
        confidence: float [N, H, W] (any shape), the max probability of each pixel.
        predicted: integer [N, H, W] (same shape), the argmax class of each pixel.
        num_classes: C.
        policy, options: as for `assign`.
    Returns:
        float64 [C] (tensor or array, like `confidence`); None for "argmax". For "threshold"
        every class gets the fixed threshold.
    """
    checked = check_options(policy, options)
    confidence_tensor, was_numpy = _as_tensor(confidence)
    predicted_tensor, _ = _as_tensor(predicted)
    if policy == "argmax":
        return None
    if policy == "threshold":
        thresholds = torch.full((num_classes,), checked["threshold"], dtype=torch.float64)
        return _like(thresholds, was_numpy)
    flat_confidence = confidence_tensor.reshape(-1)
    flat_predicted = predicted_tensor.reshape(-1)
    values = []
    for class_index in range(num_classes):
        class_confidence = flat_confidence[flat_predicted == class_index]
        rank = _order_rank(policy, class_confidence.numel(), checked)
        if rank is None:
            values.append(_default_threshold(policy))
        else:
            # kthvalue is 1-based: the (rank + 1)-th smallest is sorted[rank].
            values.append(float(torch.kthvalue(class_confidence.cpu(), rank + 1).values))
    thresholds = _finish_thresholds(policy, torch.tensor(values, dtype=torch.float64), checked)
    return _like(thresholds, was_numpy)


def apply_thresholds(probabilities: Array, thresholds: Array | None, policy: str) -> Array:
    """Labels from probabilities and per-class thresholds, by the rule of `policy`.

    Args:
        probabilities: float [N, C, H, W] (or [C, H, W]).
        thresholds: float [C] from `class_thresholds` or `ConfidenceHistogram.thresholds`;
            ignored (may be None) for "argmax".
        policy: one of POLICIES.
    Returns:
        uint8 [N, H, W] (or [H, W]) train ids, IGNORE_INDEX where left out; a tensor on the
        input's device or an array, like `probabilities`.
    """
    if policy not in POLICIES:
        raise ConfigError(
            f"pseudo-label policy {policy!r}: unknown; choose one of {', '.join(POLICIES)}"
        )
    tensor, was_numpy = _as_tensor(probabilities)
    if tensor.dim() not in (3, 4):
        raise ValueError(f"probabilities must be [N, C, H, W], got {list(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"probabilities must be floating point, got {tensor.dtype}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    if policy == "argmax":
        return _like(tensor.argmax(dim=-3).to(torch.uint8), was_numpy)
    if thresholds is None:
        raise ValueError(f"policy {policy!r} needs thresholds")
    threshold_tensor, _ = _as_tensor(thresholds)
    threshold_tensor = threshold_tensor.to(device=tensor.device, dtype=torch.float64)
    if threshold_tensor.shape != (tensor.shape[-3],):
        raise ValueError(
            f"thresholds must be [C] = [{tensor.shape[-3]}], got {list(threshold_tensor.shape)}"
        )
    if policy == "class_balanced":
        # CRST divides float32 probability maps by float32 thresholds and keeps ratio >= 1.
        ratios = tensor / threshold_tensor.to(tensor.dtype).view(-1, 1, 1)
        labels = ratios.argmax(dim=-3)
        keep = ratios.gather(-3, labels.unsqueeze(-3)).squeeze(-3) >= 1
    else:
        confidence, labels = confidence_and_prediction(tensor)
        # Compared in float64: BDL/FDA compare float64 copies of the confidences with float64
        # thresholds (the 0.9 cap is not a float32 value).
        class_threshold = threshold_tensor[labels]
        if policy == "threshold":
            keep = confidence.double() > class_threshold  # ProDA: conf <= t is dropped
        else:
            keep = confidence.double() >= class_threshold  # BDL/FDA: prob < t is dropped
    labels = torch.where(keep, labels, torch.full_like(labels, IGNORE_INDEX))
    return _like(labels.to(torch.uint8), was_numpy)


def assign(
    probabilities: Array, policy: str, spatial_prior: Array | None = None, **options: float
) -> Array:
    """Pseudo-labels of a whole split, in memory.

    Args:
        probabilities: softmax, float [N, C, H, W], a torch tensor or numpy array.
        policy: "argmax", "threshold" (threshold=), "class_percentile" (percentile=, cap=) or
            "class_balanced" (portion=); see the module docstring.
        spatial_prior: optional float [C, h, w] multiplied into the probabilities first
            (CBST-SP, `apply_spatial_prior`); thresholds and labels come from the product.
    Returns:
        uint8 [N, H, W] train ids with IGNORE_INDEX where a pixel is left out, of the input's
        kind (tensor on the input's device, or array).
    Raises:
        ConfigError: unknown policy, or a missing, extra or out-of-range option.
    """
    check_options(policy, options)
    if spatial_prior is not None:
        probabilities = apply_spatial_prior(probabilities, spatial_prior)
    tensor, was_numpy = _as_tensor(probabilities)
    if tensor.dim() != 4:
        raise ValueError(f"probabilities must be [N, C, H, W], got {list(tensor.shape)}")
    thresholds = None
    if policy != "argmax":
        confidence, predicted = confidence_and_prediction(tensor)
        thresholds = class_thresholds(confidence, predicted, tensor.shape[1], policy, **options)
    return _like(apply_thresholds(tensor, thresholds, policy), was_numpy)


# --- CBST's spatial prior (CBST-SP) ---------------------------------------------------------


def spatial_prior(
    label_maps: Iterable[Array], num_classes: int, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Class frequency at each pixel position over source label maps: CBST-SP's spatial prior.

    yzou2/CBST solve_ST.py multiplies the target probability maps by a class-wise prior
    `prior_array` [C, H, W] (`--with-prior True`, GTA only) before the class-balanced thresholds
    and labels; the released prior is a download (`prior_array.mat`), not computed by the code.
    Here it is computed from the source labels as the fraction of label maps in which the
    position holds the class (void counts for no class), see docs/methods/cbst.md.

    Args:
        label_maps: integer [H, W] train ids (255 void), e.g. the source training labels.
        num_classes: C.
        size: (H, W) the maps are brought to first (nearest neighbour); None = all maps must
            already share one size.
    Returns:
        float32 [C, H, W] in 0..1.
    Raises:
        ValueError: no label maps, or maps of different sizes with size None.
    """
    counts: torch.Tensor | None = None
    number = 0
    for label_map in label_maps:
        labels = _as_tensor(label_map)[0].to(torch.int64)
        if labels.dim() != 2:
            raise ValueError(f"label maps must be [H, W], got {list(labels.shape)}")
        if size is not None and tuple(labels.shape) != tuple(size):
            labels = F.interpolate(labels[None, None].float(), size=tuple(size), mode="nearest")
            labels = labels[0, 0].to(torch.int64)
        if counts is None:
            counts = torch.zeros(num_classes, *labels.shape, dtype=torch.int64)
        elif tuple(labels.shape) != tuple(counts.shape[1:]):
            raise ValueError(
                f"label maps of sizes {list(counts.shape[1:])} and {list(labels.shape)}; pass size"
            )
        valid = (labels >= 0) & (labels < num_classes)
        # One-hot per position (void positions add nothing), summed over maps.
        counts.view(num_classes, -1).scatter_add_(
            0,
            labels.clamp(0, num_classes - 1).view(1, -1),
            valid.view(1, -1).to(torch.int64),
        )
        number += 1
    if counts is None:
        raise ValueError("spatial_prior: no label maps")
    return (counts.double() / number).float().numpy()


def apply_spatial_prior(probabilities: Array, prior: Array) -> Array:
    """probabilities x prior, the prior resized bilinearly to the probabilities' size.

    CBST-SP: `probmap = prior_array * prob`, unnormalised, from which the predicted class, the
    confidences and the class-balanced thresholds are then taken.

    Args:
        probabilities: float [N, C, H, W] or [C, H, W].
        prior: float [C, h, w] from `spatial_prior` (or the released prior_array).
    Returns:
        float32 of the probabilities' shape and kind (tensor on their device, or array).
    """
    tensor, was_numpy = _as_tensor(probabilities)
    prior_tensor = _as_tensor(prior)[0].to(device=tensor.device, dtype=torch.float32)
    if prior_tensor.dim() != 3 or prior_tensor.shape[0] != tensor.shape[-3]:
        raise ValueError(
            f"spatial prior must be [C, h, w] with C = {tensor.shape[-3]}, got "
            f"{list(prior_tensor.shape)}"
        )
    if tuple(prior_tensor.shape[-2:]) != tuple(tensor.shape[-2:]):
        prior_tensor = F.interpolate(
            prior_tensor[None], size=tuple(tensor.shape[-2:]), mode="bilinear", align_corners=False
        )[0]
    return _like(tensor.float() * prior_tensor, was_numpy)


def read_spatial_prior(path: str | Path, num_classes: int) -> np.ndarray:
    """A spatial prior saved with `write_array_npy` (float [C, H, W]); ConfigError if unusable."""
    try:
        prior = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read the spatial prior ({error})") from None
    if prior.ndim != 3 or prior.shape[0] != num_classes or not np.isfinite(prior).all():
        raise ConfigError(
            f"{path}: a spatial prior is a finite float array [{num_classes}, H, W], got "
            f"{prior.dtype} {list(prior.shape)}"
        )
    return prior.astype(np.float32)


def source_spatial_prior(
    config_path: str | Path, overrides: list[str] | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """The spatial prior of a config's `data.source` labels (without crop, scale or flip).

    Args:
        config_path: a training config (its data.source and label space are read).
        overrides: `key=value` overrides of it.
        size: (H, W) of the prior; None = the size of the source labels after data.source.resize
            (they must all share it).
    Returns:
        float32 [C, H, W], see `spatial_prior`.
    """
    num_classes, maps = source_label_maps(config_path, overrides)
    return spatial_prior(maps, num_classes, size)


def source_label_maps(
    config_path: str | Path, overrides: list[str] | None = None
) -> tuple[int, Iterator[torch.Tensor]]:
    """A config's `data.source` label maps, whole (without crop, scale or flip).

    Returns:
        (C, the maps one by one: int64 [H, W] train ids, void = the label space's ignore value).
    """
    import dataclasses

    from udaseg.config import load_config
    from udaseg.data.datasets import build_dataset
    from udaseg.data.label_spaces import get_label_space

    config = load_config(config_path, overrides or [])
    if config.data.source is None:
        raise ConfigError(f"{config_path}: config key data.source: missing; it has no labels")
    source = dataclasses.replace(config.data.source, crop=None, random_scale=None, flip=False)
    label_space = get_label_space(config.data.label_space)
    dataset = build_dataset(source, label_space, "source")
    return label_space.num_classes, (dataset[index]["label"] for index in range(len(dataset)))


class ConfidenceHistogram:
    """Per-class histograms of the confidence of the pixels predicted as each class.

    Gives the thresholds of "class_percentile" and "class_balanced" for a whole split in
    C x bins int64 counts (19 x 65536: 10 MB), within one bin width of the exact ones (see the
    module docstring). Histograms of shards or of partial runs add up (`merge`, or an
    all-reduce of `counts`).

    Attributes:
        counts: int64 [C, bins]; counts[c, b] = pixels predicted as c whose confidence lies in
            [b / bins, (b + 1) / bins) (the last bin also holds 1.0).
    """

    DEFAULT_BINS = 65536

    def __init__(
        self, num_classes: int, bins: int = DEFAULT_BINS, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 1 or bins < 1:
            raise ValueError(f"need num_classes >= 1 and bins >= 1, got {num_classes}, {bins}")
        self.num_classes = num_classes
        self.bins = bins
        self.counts = torch.zeros(num_classes, bins, dtype=torch.int64, device=device)

    def update(self, confidence: Array, predicted: Array) -> None:
        """Count pixels.

        Args:
            confidence: float [H, W] or [N, H, W] in 0..1.
            predicted: integer, the same shape, classes 0..C-1.
        """
        confidence_tensor, _ = _as_tensor(confidence)
        predicted_tensor, _ = _as_tensor(predicted)
        if confidence_tensor.shape != predicted_tensor.shape:
            raise ValueError(
                f"confidence {list(confidence_tensor.shape)} and predicted "
                f"{list(predicted_tensor.shape)} differ in shape"
            )
        device = self.counts.device
        predicted_tensor = predicted_tensor.to(device=device, dtype=torch.int64).reshape(-1)
        if predicted_tensor.numel() == 0:
            return
        if int(predicted_tensor.min()) < 0 or int(predicted_tensor.max()) >= self.num_classes:
            raise ValueError(f"predicted classes must lie in 0..{self.num_classes - 1}")
        # Multiplying by a power of two is exact in floating point, so the bin of a value is
        # floor(value * bins) without rounding error for the default bins.
        scaled = confidence_tensor.to(device).reshape(-1) * self.bins
        bin_index = scaled.floor().to(torch.int64).clamp_(0, self.bins - 1)
        flat = predicted_tensor * self.bins + bin_index
        self.counts += torch.bincount(flat, minlength=self.num_classes * self.bins).view(
            self.num_classes, self.bins
        )

    def merge(self, other: ConfidenceHistogram) -> None:
        """Add another histogram's counts (another rank's shard, or an earlier partial run)."""
        if other.counts.shape != self.counts.shape:
            raise ValueError(
                f"cannot merge histograms of shapes {list(other.counts.shape)} and "
                f"{list(self.counts.shape)}"
            )
        self.counts += other.counts.to(self.counts.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain CPU tensors (loadable with torch.load(weights_only=True))."""
        return {"counts": self.counts.cpu().clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        counts = state["counts"]
        if tuple(counts.shape) != tuple(self.counts.shape) or counts.dtype != torch.int64:
            raise ValueError(
                f"histogram state of shape {list(counts.shape)} ({counts.dtype}) does not fit "
                f"{list(self.counts.shape)} (int64)"
            )
        self.counts.copy_(counts)

    def predicted_pixels(self) -> torch.Tensor:
        """int64 [C]: pixels predicted as each class."""
        return self.counts.sum(dim=1).cpu()

    def thresholds(self, policy: str, **options: float) -> torch.Tensor | None:
        """The policy's per-class thresholds for everything counted.

        Returns:
            float64 [C] on the CPU (None for "argmax"); within 1/bins of `class_thresholds`
            on the same pixels.
        """
        checked = check_options(policy, options)
        if policy == "argmax":
            return None
        if policy == "threshold":
            return torch.full((self.num_classes,), checked["threshold"], dtype=torch.float64)
        counts = self.counts.cpu()
        cumulative = counts.cumsum(dim=1)
        values = []
        for class_index in range(self.num_classes):
            total = int(cumulative[class_index, -1])
            rank = _order_rank(policy, total, checked)
            if rank is None:
                values.append(_default_threshold(policy))
                continue
            # The bin holding the rank-th smallest value: the first whose cumulative count
            # exceeds rank.
            bin_index = int(
                torch.searchsorted(cumulative[class_index], torch.tensor([rank]), right=True)
            )
            in_bin = int(counts[class_index, bin_index])
            before = int(cumulative[class_index, bin_index]) - in_bin
            # Assume the bin's values spread evenly: the j-th of m sits at (j + 0.5) / m.
            fraction = (rank - before + 0.5) / in_bin
            values.append((bin_index + fraction) / self.bins)
        return _finish_thresholds(policy, torch.tensor(values, dtype=torch.float64), checked)


# --- Files -----------------------------------------------------------------------------------


def write_label_png(path: str | Path, labels: Array) -> None:
    """Write train ids as an 8-bit grayscale ("L") PNG, atomically.

    Args:
        path: destination; parent folders are created.
        labels: uint8 [H, W] (values 0..255; 255 = left out).
    """
    array = _as_tensor(labels)[0].cpu().numpy()
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"labels must be uint8 [H, W], got {array.dtype} {list(array.shape)}")
    image = Image.fromarray(np.ascontiguousarray(array))  # uint8 [H, W] is mode "L"
    atomic_write(path, lambda stream: image.save(stream, format="PNG"))


def confidence_to_uint16(confidence: Array) -> np.ndarray:
    """round(confidence * 65535) as uint16 [H, W] (confidences clamped to 0..1)."""
    array = _as_tensor(confidence)[0].detach().cpu().double().clamp(0, 1).numpy()
    return np.round(array * 65535).astype(np.uint16)


def write_confidence_png(path: str | Path, confidence: Array) -> None:
    """Write confidences as a 16-bit grayscale PNG holding round(conf * 65535), atomically.

    Args:
        path: destination; parent folders are created.
        confidence: float [H, W] in 0..1.
    """
    values = confidence_to_uint16(confidence)
    if values.ndim != 2:
        raise ValueError(f"confidence must be [H, W], got {list(values.shape)}")
    height, width = values.shape
    writer = png.Writer(width, height, greyscale=True, bitdepth=16)
    atomic_write(path, lambda stream: writer.write(stream, values))


def read_confidence_png(path: str | Path) -> np.ndarray:
    """float32 [H, W] confidences from `write_confidence_png` (stored value / 65535)."""
    return (read_png16(path)[:, :, 0].astype(np.float32)) / np.float32(65535)


def write_array_npy(path: str | Path, array: Array) -> None:
    """np.save an array atomically (e.g. soft pseudo-labels, float16 [C, h, w])."""
    values = _as_tensor(array)[0].detach().cpu().numpy()
    atomic_write(path, lambda stream: np.save(stream, values, allow_pickle=False))


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON (indented, keys in the given order) atomically."""
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))
