"""ProDA's losses (Zhang et al., CVPR 2021; microsoft/ProDA models/adaptation_modelv2.py).

- `prototype_distances(features, prototypes)`: ||f^(i) - eta^(k)|| for every pixel and class.
- `prototype_weights(features, prototypes, temperature)`: the rectification weights
  omega^(i,k) = softmax_k(-||f^(i) - eta^(k)|| / tau) (the paper's Eq. for omega; the code
  subtracts each pixel's nearest distance first, which the softmax ignores).
- `rectified_pseudo_labels(weights, soft_labels, ...)`: y^ = argmax_k(omega^(i,k) p_t0^(i,k)).
- `symmetric_cross_entropy(logits, labels, alpha, beta)`: alpha CE + beta reverse CE, the RCE
  with the code's clamps (one-hot clamped to 1e-4, so RCE = -ln(1e-4) (1 - p_y)).
- `structure_consistency_kl(teacher_distances, student_distances, ...)`: KL(z_T || z_T') between
  the prototype assignments of the weak (EMA) and strong (student) views.
- `mrkld_regularizer(logits)`: the code's `regular_loss` "MRKLD", -mean_(i,k) log p^(i,k).
- `distillation_kl(student_logits, teacher_logits, form)`: stages 2-3's KL to the frozen teacher,
  as released (softmax passed where F.kl_div wants log-probabilities, REFERENCE §7.7), fixed, or
  as the paper writes it.

All run in float32 (autocast is left): distances of 256-d features and logs of small
probabilities need the range.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
# microsoft/ProDA `rce`: the prediction is clamped to [1e-7, 1] and the one-hot label to [1e-4, 1]
# before the log, so a wrong class costs -ln(1e-4) = 9.21 per unit of probability.
RCE_PREDICTION_FLOOR = 1e-7
RCE_LABEL_FLOOR = 1e-4

StructureReduction = Literal["released", "per_pixel"]
DistillationForm = Literal["released", "fixed", "paper"]


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float()


def prototype_distances(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every pixel's feature to every class prototype.

    Args:
        features: float [B, F, h, w].
        prototypes: float [C, F].
    Returns:
        float32 [B, C, h, w]: ||features[b, :, y, x] - prototypes[c]||_2.
    """
    if features.dim() != 4 or prototypes.dim() != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"expected features [B, F, h, w] and prototypes [C, F]; got "
            f"{tuple(features.shape)} and {tuple(prototypes.shape)}"
        )
    with torch.autocast(device_type=features.device.type, enabled=False):
        features = _float32(features)
        prototypes = _float32(prototypes).to(features.device)
        # |f|^2 + |eta|^2 - 2 f.eta: the explicit difference would need a [B, C, F, h, w] tensor
        # (GBs at ProDA's 256-d features and 128x224 maps).
        squared = (
            features.pow(2).sum(dim=1, keepdim=True)
            + prototypes.pow(2).sum(dim=1)[None, :, None, None]
            - 2.0 * torch.einsum("bfhw,cf->bchw", features, prototypes)
        )
        # Rounding can make a zero distance slightly negative; the floor also keeps sqrt's
        # gradient finite there.
        return squared.clamp_min(1e-12).sqrt()


def prototype_weights(
    features: torch.Tensor, prototypes: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """ProDA's rectification weights omega = softmax_k(-||f - eta_k|| / tau).

    The code computes softmax(-(d - min_k d) x proto_temperature) with proto_temperature 1.0:
    equal to the paper's form for tau = 1 (the subtraction does not change a softmax).

    Args:
        features: float [B, F, h, w].
        prototypes: float [C, F].
        temperature: tau > 0.
    Returns:
        float32 [B, C, h, w], summing to 1 over C.
    """
    return assignment_probabilities(prototype_distances(features, prototypes), temperature)


def assignment_probabilities(distances: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax_k(-distances / tau) over dim 1: [B, C, h, w] -> [B, C, h, w] (float32)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(-distances.float() / temperature, dim=1)


def rectified_pseudo_labels(
    weights: torch.Tensor,
    soft_labels: torch.Tensor,
    threshold: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Hard labels from prototype-rectified soft pseudo labels: argmax_k(omega^(k) p_t0^(k)).

    As the code: the product is normalised over classes and a pixel whose largest normalised
    value is below `threshold` (`--train_thred`, 0 by default: none) is left out. Pixels whose
    soft label is all zero (padding outside the image) are left out too.

    Args:
        weights: float [B, C, h, w], `prototype_weights`.
        soft_labels: float [B, C, h, w], the warm-up model's softmax p_t0.
        threshold: minimum normalised rectified probability.
        ignore_index: the value of left-out pixels.
    Returns:
        int64 [B, h, w].
    """
    rectified = weights.float() * soft_labels.float()
    total = rectified.sum(dim=1)
    labels = rectified.argmax(dim=1)
    confidence = rectified.max(dim=1).values / total.clamp_min(1e-12)
    left_out = (total <= 0) | (confidence < threshold)
    return labels.masked_fill(left_out, ignore_index)


def reverse_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """ProDA's RCE: -sum_k p_k log(clamp(onehot_k, 1e-4, 1)), mean over labelled pixels.

    Args:
        logits: float [B, C, h, w].
        labels: int64 [B, h, w], `ignore_index` for void.
    Returns:
        float32 scalar; 0 when no pixel is labelled.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probabilities = torch.softmax(logits.float(), dim=1).clamp(RCE_PREDICTION_FLOOR, 1.0)
        valid = labels != ignore_index
        safe_labels = labels.masked_fill(~valid, 0)
        one_hot = F.one_hot(safe_labels, logits.shape[1]).permute(0, 3, 1, 2).float()
        log_label = one_hot.clamp(RCE_LABEL_FLOOR, 1.0).log()
        per_pixel = -(probabilities * log_label).sum(dim=1)
        count = valid.sum()
        # The code divides by (count + 1e-6); an empty mask gives 0 either way.
        return (per_pixel * valid).sum() / (count + 1e-6)


def symmetric_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.1,
    beta: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha CE(p, y^) + beta RCE(y^, p) (the paper's l_sce; the code's --rce).

    Args:
        logits: float [B, C, h, w].
        labels: int64 [B, h, w], `ignore_index` for void.
        alpha, beta: the weights (ProDA: 0.1 and 1.0).
    Returns:
        (loss, cross entropy, reverse cross entropy), float32 scalars. CE is the mean over
        labelled pixels (0 when there is none).
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        valid = labels != ignore_index
        if bool(valid.any()):
            cross_entropy = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)
        else:
            cross_entropy = logits.float().sum() * 0.0
        reverse = reverse_cross_entropy(logits, labels, ignore_index)
    return alpha * cross_entropy + beta * reverse, cross_entropy, reverse


def structure_consistency_kl(
    teacher_distances: torch.Tensor,
    student_distances: torch.Tensor,
    valid: torch.Tensor | None = None,
    temperature: float = 1.0,
    reduction: StructureReduction = "released",
) -> torch.Tensor:
    """KL(z_T || z_T'): teacher (weak view, EMA) assignments against the student's (strong view).

    z = softmax_k(-d_k / tau); the KL per pixel is sum_k z_T,k (log z_T,k - log z_T',k), the
    gradient flows into the student's distances only.

    Args:
        teacher_distances: float [B, C, h, w] (no gradient needed).
        student_distances: float [B, C, h, w].
        valid: bool [B, h, w], pixels that count (False where the strong view has no
            counterpart: cutout); None = all.
        temperature: tau > 0.
        reduction: "released": the code's (kl * mask).sum() / mask.sum() with the mask repeated
            over classes, i.e. the mean over valid (pixel, class) entries = per-pixel KL / C;
            "per_pixel": the mean over valid pixels of the per-pixel KL.
    Returns:
        float32 scalar (0 when no pixel is valid).
    """
    with torch.autocast(device_type=student_distances.device.type, enabled=False):
        teacher = assignment_probabilities(teacher_distances.detach(), temperature)
        student_log = torch.log_softmax(-student_distances.float() / temperature, dim=1)
        # xlogy: 0 log 0 = 0 for classes the teacher rules out entirely.
        per_entry = torch.xlogy(teacher, teacher) - teacher * student_log
        per_pixel = per_entry.sum(dim=1)
        if valid is None:
            valid = torch.ones_like(per_pixel, dtype=torch.bool)
        count = valid.sum()
        total = (per_pixel * valid).sum()
        if reduction == "released":
            denominator = count * teacher.shape[1]
        elif reduction == "per_pixel":
            denominator = count
        else:
            raise ValueError(f"unknown reduction {reduction!r}")
        return total / denominator.clamp_min(1)


def mrkld_regularizer(logits: torch.Tensor) -> torch.Tensor:
    """ProDA's regulariser (`--regular_w`, type MRKLD): -mean over B, C, h, w of log p.

    The paper's l_reg = -sum_i sum_k log p^(i,k), normalised as the code does (by B C h w); it
    is smallest for uniform predictions and keeps the self-training from collapsing.

    Args:
        logits: float [B, C, h, w].
    Returns:
        float32 scalar.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return -torch.log_softmax(logits.float(), dim=1).mean()


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    form: DistillationForm = "paper",
) -> torch.Tensor:
    """Stages 2-3's KL of the student's prediction to the frozen teacher's (REFERENCE §7.7).

    With p = softmax(teacher), q = softmax(student):
    - "paper": KL(p || q) = sum_k p_k (log p_k - log q_k), mean over pixels;
    - "fixed": the released reduction with log q (what the authors confirm the code meant,
      microsoft/ProDA#20, #43): mean over (pixel, class) entries = "paper" / C;
    - "released": F.kl_div(q, p) exactly as released, i.e. mean over entries of
      p_k (log p_k - q_k): q is used where log q belongs. Its mask `teacher != 250` keeps
      everything (#50), so there is none here.

    Args:
        student_logits: float [B, C, h, w].
        teacher_logits: float [B, C, h, w] (no gradient needed).
        form: see above.
    Returns:
        float32 scalar.
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        teacher = torch.softmax(teacher_logits.detach().float(), dim=1)
        entropy_term = torch.xlogy(teacher, teacher)
        if form == "released":
            student = torch.softmax(student_logits.float(), dim=1)
            return (entropy_term - teacher * student).mean()
        student_log = torch.log_softmax(student_logits.float(), dim=1)
        per_entry = entropy_term - teacher * student_log
        if form == "fixed":
            return per_entry.mean()
        if form == "paper":
            return per_entry.sum(dim=1).mean()
    raise ValueError(f"unknown distillation KL form {form!r}")


def class_mean_features(
    features: torch.Tensor,
    predictions: torch.Tensor,
    num_classes: int,
    minimum_pixels: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class, the mean feature of the pixels predicted as that class.

    ProDA's `calculate_mean_vector`: classes with fewer than `minimum_pixels` pixels in an image
    are skipped (10 in the code).

    Args:
        features: float [B, F, h, w].
        predictions: int64 [B, h, w] class ids (pixels outside 0..C-1 count for no class).
        num_classes: C.
        minimum_pixels: fewest pixels a class needs in an image.
    Returns:
        (means float32 [B, C, F], present bool [B, C]); means are 0 where not present.
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        valid = (predictions >= 0) & (predictions < num_classes)
        one_hot = F.one_hot(predictions.masked_fill(~valid, 0), num_classes).float()
        one_hot = one_hot * valid[..., None]
        counts = one_hot.sum(dim=(1, 2))  # [B, C]
        sums = torch.einsum("bfhw,bhwc->bcf", features.float(), one_hot)
        present = counts >= max(1, minimum_pixels)
        means = sums / counts.clamp_min(1)[..., None]
        return means * present[..., None], present


def momentum_update(
    prototypes: torch.Tensor, means: torch.Tensor, present: torch.Tensor, momentum: float
) -> torch.Tensor:
    """ProDA's moving prototypes: eta_k <- (1 - m) eta_k + m v_k, one image after another.

    Args:
        prototypes: float [C, F].
        means: float [N, C, F], per-image class means in the order they are applied.
        present: bool [N, C], which of them exist.
        momentum: m (ProDA: 1e-4).
    Returns:
        float32 [C, F], the updated prototypes (the input is not modified).
    """
    updated = prototypes.float().clone()
    for image_means, image_present in zip(means.float(), present, strict=True):
        moved = (1.0 - momentum) * updated + momentum * image_means
        updated = torch.where(image_present[:, None], moved, updated)
    return updated
