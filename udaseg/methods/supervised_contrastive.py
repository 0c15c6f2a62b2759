"""Supervised contrastive learning with pseudo labels, two models (Singh & Gerem, seed 002).

The talk (../shared/papers/002) builds on FDA (methods/fda.py, whose step both models reuse):
- model 1, `supervised_contrastive_grayscale`: trained on grayscale source and target images,
  without image translation: cross-entropy on source, FDA's robust entropy on target. Its
  evaluated network (`predict`, used by `udaseg eval` and `udaseg pseudo-label`) sees target
  images first stylised toward the source (FDA with the mean Fourier amplitude of a few source
  images kept in the checkpoint), then greyed: the talk's "Trg in Src" row, whose predictions
  are the pseudo labels;
- model 2, `supervised_contrastive`: FDA's step (cross-entropy on target-stylised source images,
  robust entropy on target, optionally FDA's pseudo-label CE) plus lambda_contrastive x a
  supervised pixel contrastive loss between each target image and its source-stylised version:
  the same pixels of both views, sampled class-balanced from the pseudo labels, embedded by a
  projection head on the decoder features; positives are pixels of the same pseudo class.
`lambda_ent: 0` trains model 2 with source CE and the contrastive loss alone (the talk's ENet
ablation). recipes/toy_supervised_contrastive.yaml runs model 1, the pseudo labels and model 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.augment import luma
from udaseg.errors import ConfigError
from udaseg.losses.contrastive import (
    class_balanced_pixel_sample,
    supervised_pixel_contrastive_loss,
)
from udaseg.methods.base import SetupContext, StepContext, new_layer_sgd, require_pseudo_labels
from udaseg.methods.fda import FDA, FDAConfig
from udaseg.models.projection import mlp_head, pixel_vectors
from udaseg.registry import METHODS
from udaseg.translation import fda_source_to_target


def grayscale_images(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB 0..255 -> the ITU-R 601 luma in all three channels, [B, 3, H, W]."""
    return luma(images.float()).expand(-1, 3, -1, -1)


class SourceStyle(nn.Module):
    """A few source images kept in the checkpoint: the style that target images are given.

    Buffers only, so `udaseg eval` and `udaseg pseudo-label`, which load modules but never run
    `setup`, have them. `style_image(size)` is a real image whose Fourier amplitude is the mean
    amplitude of the stored images resized to `size` (a Hermitian amplitude with zero phase has
    a real inverse transform), so FDA toward it gives the source's average low frequencies.
    """

    def __init__(self, count: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("images", torch.zeros(count, 3, *size, dtype=torch.uint8))

    @torch.no_grad()
    def fill(self, dataset: Any, seed: int) -> None:
        """Store `count` source images (resized bilinearly), drawn by a permutation of `seed`."""
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for slot in range(self.images.shape[0]):
            image = dataset[(order[slot % len(order)], seed)]["image"].float()[None]
            resized = F.interpolate(
                image, size=self.images.shape[-2:], mode="bilinear", antialias=True
            )
            self.images[slot] = resized[0].round().clamp(0, 255).to(torch.uint8)

    @torch.no_grad()
    def style_image(self, size: tuple[int, int]) -> torch.Tensor:
        """float32 [3, H, W] with the stored images' mean Fourier amplitude at size (H, W)."""
        images = F.interpolate(self.images.float(), size=size, mode="bilinear", antialias=True)
        amplitude = torch.fft.fft2(images).abs().mean(0)
        return torch.fft.ifft2(amplitude.to(torch.complex64)).real


@dataclass
class SupervisedContrastiveGrayscaleConfig(FDAConfig):
    name: str = "supervised_contrastive_grayscale"
    # What the evaluated network (and so the pseudo-labeller) sees: the target stylised toward
    # the source then greyed (the talk's pseudo labels), or the greyed target ("Trg in Trg").
    predict_input: Literal["source_style", "target"] = "source_style"
    style_images: int = 8  # source images whose mean amplitude is the source style
    style_size: tuple[int, int] = (256, 512)  # (height, width) they are stored at

    def validate(self) -> None:
        super().validate()
        if self.style_images < 1:
            raise ConfigError(f"style_images: must be >= 1, got {self.style_images}")
        if len(self.style_size) != 2 or min(self.style_size) < 1:
            raise ConfigError(f"style_size: must be [height, width], got {self.style_size}")


@METHODS.register("supervised_contrastive_grayscale")
class SupervisedContrastiveGrayscale(FDA):
    """Model 1: FDA's losses on greyed images, without translation."""

    Config = SupervisedContrastiveGrayscaleConfig

    def __init__(self, config: Any, segmentor: nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        self.source_style = SourceStyle(config.style_images, tuple(config.style_size))

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"source_style": self.source_style}

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        if not ctx.resumed:
            self.source_style.fill(ctx.datasets["source"], ctx.seed)

    @torch.no_grad()
    def translate(self, source_images: torch.Tensor, target_images: torch.Tensor) -> torch.Tensor:
        # "No image translation while training the model" (the talk): FDA's step, untranslated.
        return source_images

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        grey = {
            role: {**samples, "image": grayscale_images(samples["image"])}
            for role, samples in batch.items()
        }
        return super().training_step(grey, ctx)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of greyed (and, by default, source-stylised) images [B, 3, H, W] -> [B, C, h, w]."""
        if self.config.predict_input == "source_style":
            style = self.source_style.style_image(tuple(images.shape[-2:]))
            images = fda_source_to_target(
                images.float(),
                style.expand(images.shape[0], -1, -1, -1),
                self.config.beta,
                self.config.window,
            )
        return self.segmentor(grayscale_images(images))["logits"]


@dataclass
class SupervisedContrastiveConfig(FDAConfig):
    name: str = "supervised_contrastive"
    lambda_contrastive: float = 1.0  # weight of the pixel contrastive loss (talk: not given)
    temperature: float = 0.1  # t of the supervised contrastive loss (talk: not given)
    pixels_per_class: int = 50  # pixels drawn per pseudo class and image, the same in both views
    projection_channels: int = 128  # embedding width (SupCon's 128)
    projection_hidden: int = 256  # hidden width of the projection MLP

    def validate(self) -> None:
        super().validate()
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")
        for key in ("pixels_per_class", "projection_channels", "projection_hidden"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")


@METHODS.register("supervised_contrastive")
class SupervisedContrastive(FDA):
    """Model 2: FDA's step plus the pixel contrastive loss between a target image and its
    source-stylised version."""

    Config = SupervisedContrastiveConfig
    # The head starts from scratch: SGD at the DeepLab classifier's rate (10 x 2.5e-4).
    default_optimizers = {"projection": new_layer_sgd(2.5e-3)}

    def __init__(self, config: Any, segmentor: nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        self.projection = mlp_head(
            segmentor.feature_channels, config.projection_hidden, config.projection_channels
        )

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"segmentor": self.segmentor, "projection": self.projection}

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        require_pseudo_labels(
            ctx,
            "supervised_contrastive",
            "contrasts pixels by pseudo class; write them with model 1 and `udaseg pseudo-label` "
            "(recipes/toy_supervised_contrastive.yaml)",
        )

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        scalars = super().training_step(batch, ctx)
        if self.config.lambda_contrastive > 0:
            target = batch["target"]
            loss = self.contrastive_loss(
                target["image"],
                self.translate(target["image"], batch["source"]["image"]),
                target["pseudo_label"],
            )
            ctx.backward(self.config.lambda_contrastive * loss)
            scalars["loss_contrastive"] = loss.detach()
        return scalars

    def contrastive_loss(
        self, target_images: torch.Tensor, stylised_images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Mean over images of the supervised contrastive loss of the two views' sampled pixels.

        Args:
            target_images: float [B, 3, H, W]; stylised_images: the same toward the source.
            labels: int64 [B, H, W] pseudo labels (255 left out).
        Returns:
            scalar float32, attached to the segmentor and the projection head.
        """
        outputs = self.segmentor(torch.cat([target_images, stylised_images]))
        features = outputs["features"]
        batch_size, grid = target_images.shape[0], tuple(features.shape[-2:])
        embeddings = self.projection(pixel_vectors(features).float())
        # [2 views, B, h * w, D]: pixel i of image b in the target and in its stylised version.
        embeddings = embeddings.reshape(2, batch_size, grid[0] * grid[1], -1)
        classes = F.interpolate(labels[:, None].float(), size=grid, mode="nearest")
        classes = classes.reshape(batch_size, -1).long()
        losses = []
        for image in range(batch_size):
            chosen = class_balanced_pixel_sample(classes[image], self.config.pixels_per_class)
            pair_embeddings = torch.cat(
                [embeddings[0, image, chosen], embeddings[1, image, chosen]]
            )
            pair_labels = classes[image, chosen].repeat(2)
            losses.append(
                supervised_pixel_contrastive_loss(
                    pair_embeddings, pair_labels, self.config.temperature
                )
            )
        return torch.stack(losses).mean()
