"""Does ProDA's prototype rectification make the warm-up model's pseudo labels more accurate?

A diagnostic of stage 1's starting point, read with the target train split's labels (which
training never sees): for a warm-up checkpoint, the class prototypes of its target features
(pixel means over the images read, as `proda`'s `prototype_init: pixel_mean`), the
rectification weights omega = softmax_k(-||f - eta_k|| / tau), and the accuracy of the hard
labels argmax p_t0 (no rectification) and argmax omega x p_t0 (rectified), at the loss
resolution (1/4 of the image). Also how peaked omega is (mean of max_k omega) and the mean
distance to the nearest prototype, since tau = 1 assumes a feature scale.

    python bench/proda_rectification.py runs/v2/toy_proda/seed0/warmup/checkpoints/last.pt \
        [--images 300] [--temperature 1.0]

Prints JSON. Whole target images, unaugmented (training rectifies augmented crops with the EMA
copy of the model, which equals the warm-up model at step 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import torch.nn.functional as F

from udaseg.data.datasets import build_dataset
from udaseg.engine.loading import load_for_inference
from udaseg.losses.proda import (
    class_mean_features,
    prototype_distances,
    prototype_weights,
    rectified_pseudo_labels,
)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="the warm-up model (any udaseg segmentor checkpoint)")
    parser.add_argument("--images", type=int, default=300, help="target train images to read")
    parser.add_argument("--temperature", type=float, default=1.0, help="tau")
    parser.add_argument("--loss-stride", type=int, default=4)
    args = parser.parse_args()

    loaded = load_for_inference(args.checkpoint, None, None, [], torch.device("cpu"))
    segmentor = loaded.method.segmentor.eval()
    space = loaded.label_space
    target = dataclasses.replace(
        loaded.config.data.target, resize=None, random_scale=None, crop=None, flip=False
    )
    if hasattr(target, "pseudo_labels"):
        target = dataclasses.replace(target, pseudo_labels=None)
    if hasattr(target, "soft_pseudo_labels"):
        target = dataclasses.replace(target, soft_pseudo_labels=None)
    dataset = build_dataset(target, space, "val")  # with labels: a diagnostic
    count = min(args.images, len(dataset))

    features, probabilities, labels = [], [], []
    for index in range(count):
        sample = dataset[index]
        image = sample["image"][None].float()
        height, width = image.shape[-2:]
        size = (height // args.loss_stride, width // args.loss_stride)
        outputs = segmentor(image)
        resize = dict(size=size, mode="bilinear", align_corners=True)
        features.append(F.interpolate(outputs["features"].float(), **resize))
        probabilities.append(torch.softmax(F.interpolate(outputs["logits"].float(), **resize), 1))
        label = sample["label"][None, None].float()
        labels.append(F.interpolate(label, size=size, mode="nearest")[:, 0].long())
    features, probabilities, labels = map(torch.cat, (features, probabilities, labels))

    classes = space.num_classes
    predictions = probabilities.argmax(1)
    means, _ = class_mean_features(features, predictions, classes, 1)
    pixels = F.one_hot(predictions, classes).sum(dim=(1, 2)).double()
    prototypes = (means.double() * pixels[..., None]).sum(0) / pixels.sum(0).clamp_min(1)[:, None]
    prototypes = prototypes.float()

    weights = prototype_weights(features, prototypes, args.temperature)
    rectified = rectified_pseudo_labels(weights, probabilities, 0.0)
    valid = labels != space.ignore_index
    distances = prototype_distances(features, prototypes)
    present = pixels.sum(0) > 0  # classes the warm-up model predicts at all

    def accuracy(hard: torch.Tensor) -> float:
        return round(100 * (hard == labels)[valid].float().mean().item(), 2)

    report = {
        "checkpoint": args.checkpoint,
        "images": count,
        "temperature": args.temperature,
        "classes_predicted": int(present.sum()),
        "accuracy_argmax_p_t0": accuracy(predictions),
        "accuracy_rectified": accuracy(rectified),
        "changed_by_rectification_percent": round(
            100 * (rectified != predictions)[valid].float().mean().item(), 2
        ),
        "mean_max_weight": round(weights.max(1).values.mean().item(), 4),
        "mean_nearest_distance": round(distances[:, present].min(1).values.mean().item(), 3),
        "mean_distance_gap_second_nearest": round(
            (distances[:, present].topk(2, dim=1, largest=False).values.diff(dim=1)).mean().item(),
            3,
        ),
    }
    # Where rectification moves labels: the largest (from, to) class pairs, with how many of
    # the moved pixels each hard label got right.
    moved = valid & (rectified != predictions)
    pairs = predictions[moved] * classes + rectified[moved]
    counts = torch.bincount(pairs, minlength=classes * classes)
    names = space.class_names
    report["largest_moves"] = []
    for pair in counts.argsort(descending=True)[:5].tolist():
        if counts[pair] == 0:
            break
        before, after = divmod(pair, classes)
        where = moved & (predictions == before) & (rectified == after)
        report["largest_moves"].append(
            {
                "from": names[before],
                "to": names[after],
                "percent_of_pixels": round(100 * counts[pair].item() / valid.sum().item(), 2),
                "correct_before_percent": round(
                    100 * (labels[where] == before).float().mean().item(), 1
                ),
                "correct_after_percent": round(
                    100 * (labels[where] == after).float().mean().item(), 1
                ),
            }
        )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
