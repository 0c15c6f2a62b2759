"""Pixel contrastive losses.

- `weighted_cosine_loss`: the class-wise memory-bank loss of Alonso et al. (ICCV 2021), as the
  slides (../shared/papers/001) write it for one class c:

      w_p = N_P / sum_i S(p_i) * S(p)          (attention scores normalised to mean 1)
      D(p, z') = w_p w_z' (1 - cos(p, z'))
      L_c = 1 / (N_P N_Z') sum_p sum_z' D(p, z')

  and the method averages L_c over the C classes (absent classes count as 0, as in
  `contrastive_class_to_class_learned_memory`).
- `supervised_pixel_contrastive_loss`: the supervised contrastive loss (Khosla et al., 2020) on
  pixel embeddings, positives being pixels of the same (pseudo) class; used between a target
  image and its source-stylised version by the two-model method (../shared/papers/002).
- `class_balanced_pixel_sample`: the same number of pixels of each class, the remedy the talk
  motivates for Cityscapes' class imbalance (road and building dominate the pixels, so a uniform
  sample has few positives, and many false negatives, for small classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from udaseg.data.label_spaces import IGNORE_INDEX


def mean_one_weights(scores: torch.Tensor) -> torch.Tensor:
    """Scores rescaled to mean 1: w_i = N / sum_j S_j * S_i (the slides' w_pc).

    Args:
        scores: [N] positive attention scores (sigmoid outputs).
    Returns:
        [N] weights with the same ratios and mean 1.
    """
    return scores * (scores.shape[0] / scores.sum())


def weighted_cosine_loss(
    features: torch.Tensor,
    memory: torch.Tensor,
    feature_weights: torch.Tensor | None = None,
    memory_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean of 1 - cosine similarity over every (feature, memory entry) pair of a class.

    Args:
        features: [M, D] the student's predicted vectors of one class (any scale: normalised here).
        memory: [N, D] the memory bank entries of that class.
        feature_weights: [M] w_p (None: all 1).
        memory_weights: [N] w_z' (None: all 1).
    Returns:
        scalar float32: 1 / (M N) sum_{p, z'} w_p w_z' (1 - cos(p, z')).
    """
    features = F.normalize(features.float(), dim=1)
    memory = F.normalize(memory.float(), dim=1)
    distances = 1.0 - features @ memory.t()  # [M, N], in [0, 2]; 0 for equal directions
    if feature_weights is not None:
        distances = distances * feature_weights.float()[:, None]
    if memory_weights is not None:
        distances = distances * memory_weights.float()[None, :]
    return distances.mean()


def supervised_pixel_contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Supervised contrastive loss (SupCon, "L_out") over a set of pixel embeddings.

    For each anchor i with at least one positive:
        l_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )
    where z are the L2-normalised embeddings, P(i) the other pixels with i's label and a runs
    over every other pixel. Pixels labelled `ignore_index` take no part at all (neither anchor
    nor contrast); anchors without any positive are left out of the mean.

    Args:
        embeddings: [N, D] pixel embeddings, e.g. a target image's sampled pixels followed by the
            same pixels of its source-stylised version.
        labels: int64 [N] (pseudo) class of each pixel.
        temperature: t.
    Returns:
        scalar float32, the mean of l_i over the anchors that have a positive (0, attached to
        the graph, when none has).
    """
    keep = labels != ignore_index
    embeddings, labels = embeddings[keep].float(), labels[keep]
    if embeddings.shape[0] < 2:
        return embeddings.sum() * 0.0
    embeddings = F.normalize(embeddings, dim=1)
    logits = embeddings @ embeddings.t() / temperature  # [N, N]
    self_pairs = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    # -inf on the diagonal: an anchor is never its own contrast.
    logits = logits.masked_fill(self_pairs, float("-inf"))
    log_probabilities = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_pairs
    positive_counts = positives.sum(1)
    anchors = positive_counts > 0
    if not bool(anchors.any()):
        return embeddings.sum() * 0.0
    # where(), not multiplication: the diagonal's -inf times 0 would be NaN.
    positive_log_probabilities = torch.where(positives, log_probabilities, 0.0).sum(1)
    return -(positive_log_probabilities[anchors] / positive_counts[anchors]).mean()


def class_balanced_pixel_sample(
    labels: torch.Tensor,
    pixels_per_class: int,
    generator: torch.Generator | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Indices of up to `pixels_per_class` random pixels of each class present in `labels`.

    Args:
        labels: int64 [N] classes (flattened label map).
        pixels_per_class: how many pixels to draw per class (all of a class that has fewer).
        generator: the random source (the engine seeds the global one at every step).
    Returns:
        int64 [K] indices into `labels`, class by class in increasing class order.
    """
    chosen = []
    for class_index in torch.unique(labels).tolist():
        if class_index == ignore_index:
            continue
        members = torch.nonzero(labels == class_index).flatten()
        if members.numel() > pixels_per_class:
            order = torch.randperm(members.numel(), generator=generator, device="cpu")
            members = members[order[:pixels_per_class].to(members.device)]
        chosen.append(members)
    if not chosen:
        return torch.zeros(0, dtype=torch.long, device=labels.device)
    return torch.cat(chosen)
