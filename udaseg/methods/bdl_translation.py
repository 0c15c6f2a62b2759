"""BDL's translation model F (Li, Yuan, Vasconcelos, CVPR 2019): CycleGAN plus a perceptual loss.

F maps source images to the target's appearance (S' = F(S)) and F^-1 maps back (T' = F^-1(T)).
It is CycleGAN as released (junyanz/pytorch-CycleGAN-and-pix2pix, in the copy liyunsheng13/BDL
ships in cyclegan/; REFERENCE §3.3): ResNet generators, PatchGAN discriminators, LS-GAN, cycle
reconstruction (lambda 10 each way), identity term (0.5 x lambda), image pools of 50; plus BDL's
perceptual loss through the frozen segmentation model M between S and F(S), T and F^-1(T), and
between each image and its reconstruction (udaseg/losses/perceptual.py, two forms).

One step, in the released order (`optimize_parameters`):
1. forward: F(S), F^-1(F(S)), F^-1(T), F(F^-1(T));
2. generators, with both discriminators frozen (their parameters get no gradient): LS-GAN toward
   "real" (1) for F(S) under D_target and F^-1(T) under D_source, plus cycle, identity and
   perceptual terms, one backward;
3. discriminators: real images -> 1, generated images drawn through the image pools -> 0,
   (real + fake) / 2 per discriminator, generated images detached.
The engine then steps both Adams; the discriminators' gradients come from step 3 only, so this
equals the released G step followed by the D step (whose generated images were made before the G
update there too).

Modules: `generators` (`source_to_target` = F, the released G_A; `target_to_source` = F^-1, G_B)
and `discriminators` (`target` = D_A judging target-style images, `source` = D_B) are trained;
the segmentor is M, frozen and in eval mode, loaded with `init.segmentor` (an earlier stage's
checkpoint); `predict` is M's, so evaluating an F run scores the M it was trained with.
Images enter the generators in [-1, 1], M sees them back in 0..255 RGB (BDL's `img_preprocess`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from udaseg.errors import ConfigError
from udaseg.losses.adversarial import GanLoss, domain_loss
from udaseg.losses.perceptual import PerceptualForm, perceptual_loss
from udaseg.losses.reconstruction import reconstruction_loss
from udaseg.methods.base import Method, StepContext, check_non_negative, frozen
from udaseg.models.cyclegan import (
    PatchDiscriminator,
    ResnetGenerator,
    from_generator_range,
    to_generator_range,
)
from udaseg.registry import METHODS

# CycleGAN's labels (GANLoss): a real image 1, a generated one 0.
REAL = 1.0
FAKE = 0.0

# CycleGAN's optimizer for both generators and both discriminators: Adam 2e-4, beta1 0.5. The
# released schedule keeps the rate for `niter` epochs, then decays it linearly to 0 over
# `niter_decay`; udaseg has no such schedule, so the default is constant (docs/methods/bdl.md).
CYCLEGAN_ADAM = {
    "name": "adam",
    "lr": 2e-4,
    "betas": (0.5, 0.999),
    "weight_decay": 0.0,
    "head_lr_multiplier": 1.0,
    "schedule": {"name": "constant"},
}


@dataclass
class BDLTranslationConfig:
    name: str = "bdl_translation"
    generator_blocks: int = 9  # residual blocks (`resnet_9blocks`)
    generator_channels: int = 64  # ngf
    discriminator_channels: int = 64  # ndf
    discriminator_layers: int = 3  # stride-2 convs of the PatchGAN (`basic`)
    gan: GanLoss = "lsgan"  # CycleGAN's default LS-GAN (`no_lsgan` off)
    lambda_gan: float = 1.0  # λ_GAN of the paper's Eq. 2; 1 in the code
    lambda_cycle: float = 10.0  # λ_recon; the code's lambda_A = lambda_B
    lambda_identity: float = 0.5  # identity weight = lambda_cycle x this (`lambda_identity`)
    pool_size: int = 50  # generated images kept for the discriminators (`pool_size`)
    perceptual: PerceptualForm = "released"  # MSE of instance-normalised logits, or paper's L1
    lambda_per: float = 0.1  # F(S) vs S and F^-1(T) vs T (code: 0.1 fixed)
    lambda_per_recon: float = 10.0  # reconstructions vs originals (code: lambda_A x semantic)

    def validate(self) -> None:
        check_non_negative(self)
        for name, minimum in (
            ("generator_blocks", 0),
            ("generator_channels", 1),
            ("discriminator_channels", 1),
            ("discriminator_layers", 1),
            ("pool_size", 0),
        ):
            if getattr(self, name) < minimum:
                raise ConfigError(f"{name}: must be >= {minimum}, got {getattr(self, name)}")


class ImagePool:
    """CycleGAN's history of generated images (Shrivastava et al.): D sees older fakes too.

    While fewer than `capacity` images are stored, each queried image is stored and returned;
    then each is, with probability 1/2, swapped with a stored one chosen uniformly (the stored
    one is returned), else returned as is. The draws use torch's generator, which the engine
    seeds per step, and the stored images are checkpointed (`state`), so a resume is exact. An
    image whose size differs from the one drawn is returned as is (the released code assumes
    one crop size).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] detached generated images -> [B, 3, H, W] for the discriminator."""
        if self.capacity == 0:
            return images
        chosen = []
        for image in images.detach():
            if len(self.images) < self.capacity:
                self.images.append(image.clone())
                chosen.append(image)
                continue
            swap = float(torch.rand(())) > 0.5
            # The index is drawn only when swapping, as the released code draws it.
            index = int(torch.randint(self.capacity, ())) if swap else -1
            if swap and self.images[index].shape == image.shape:
                stored = self.images[index].to(image.device)
                self.images[index] = image.clone()
                chosen.append(stored)
            else:
                chosen.append(image)
        return torch.stack(chosen)

    def state(self) -> list[torch.Tensor]:
        return [image.cpu() for image in self.images]

    def load_state(self, images: list[torch.Tensor]) -> None:
        self.images = [image.clone() for image in images]


@METHODS.register("bdl_translation")
class BDLTranslation(Method):
    Config = BDLTranslationConfig
    default_optimizers: ClassVar[dict[str, dict[str, Any]]] = {
        "generators": CYCLEGAN_ADAM,
        "discriminators": CYCLEGAN_ADAM,
    }

    def __init__(self, config: Any, segmentor: nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        # M is fixed while F trains: gradients pass through it to the generators only.
        for parameter in self.segmentor.parameters():
            parameter.requires_grad_(False)
        self.generators = nn.ModuleDict(
            {
                name: ResnetGenerator(config.generator_blocks, config.generator_channels)
                for name in ("source_to_target", "target_to_source")
            }
        )
        self.discriminators = nn.ModuleDict(
            {
                name: PatchDiscriminator(config.discriminator_channels, config.discriminator_layers)
                for name in ("target", "source")
            }
        )
        # fake target-style images (for D_target) and fake source-style ones (for D_source).
        self.pools = {name: ImagePool(config.pool_size) for name in ("target", "source")}

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"generators": self.generators, "discriminators": self.discriminators}

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"segmentor": self.segmentor}

    def extra_state(self) -> dict[str, Any]:
        return {f"pool_{name}": pool.state() for name, pool in self.pools.items()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for name, pool in self.pools.items():
            pool.load_state(state.get(f"pool_{name}", []))

    def translate(self, images: torch.Tensor, direction: str = "source_to_target") -> torch.Tensor:
        """F (or F^-1 with direction "target_to_source") on float RGB 0..255 [B, 3, H, W].

        Returns:
            float RGB [B, 3, H, W] in 0..255 (tanh-bounded), same size.
        """
        return from_generator_range(self.generators[direction](to_generator_range(images)))

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        config = self.config
        forward_net = self.generators["source_to_target"]  # F, G_A
        inverse_net = self.generators["target_to_source"]  # F^-1, G_B
        source = to_generator_range(batch["source"]["image"])
        target = to_generator_range(batch["target"]["image"])

        # 1. Translations and reconstructions, in [-1, 1].
        fake_target = forward_net(source)  # S' = F(S)
        reconstructed_source = inverse_net(fake_target)  # F^-1(F(S))
        fake_source = inverse_net(target)  # T' = F^-1(T)
        reconstructed_target = forward_net(fake_source)  # F(F^-1(T))

        # 2. Generators, with the discriminators frozen.
        scalars: dict[str, Any] = {}
        with frozen(self.discriminators):
            gan_target = domain_loss(self.discriminators["target"](fake_target), REAL, config.gan)
            gan_source = domain_loss(self.discriminators["source"](fake_source), REAL, config.gan)
        cycle_source = reconstruction_loss(reconstructed_source, source)
        cycle_target = reconstruction_loss(reconstructed_target, target)
        loss = config.lambda_gan * (gan_target + gan_source)
        loss = loss + config.lambda_cycle * (cycle_source + cycle_target)
        scalars.update(
            loss_gan_target=gan_target.detach(),
            loss_gan_source=gan_source.detach(),
            loss_cycle_source=cycle_source.detach(),
            loss_cycle_target=cycle_target.detach(),
        )
        if config.lambda_identity > 0:
            # F should leave a target image as it is, F^-1 a source image.
            identity_target = reconstruction_loss(forward_net(target), target)
            identity_source = reconstruction_loss(inverse_net(source), source)
            weight = config.lambda_cycle * config.lambda_identity
            loss = loss + weight * (identity_target + identity_source)
            scalars.update(
                loss_identity_target=identity_target.detach(),
                loss_identity_source=identity_source.detach(),
            )
        if config.lambda_per > 0 or config.lambda_per_recon > 0:
            terms = self.perceptual_terms(
                batch, fake_target, reconstructed_source, fake_source, reconstructed_target
            )
            loss = loss + config.lambda_per * (terms["per_source"] + terms["per_target"])
            recon = terms["per_recon_source"] + terms["per_recon_target"]
            loss = loss + config.lambda_per_recon * recon
            scalars.update({f"loss_{key}": value.detach() for key, value in terms.items()})
        ctx.backward(loss)

        # 3. Discriminators: real -> 1, pooled generated images (detached) -> 0, halved.
        for name, real, fake in (("target", target, fake_target), ("source", source, fake_source)):
            discriminator = self.discriminators[name]
            pooled = self.pools[name].query(fake.detach())
            loss_real = domain_loss(discriminator(real), REAL, config.gan)
            loss_fake = domain_loss(discriminator(pooled), FAKE, config.gan)
            loss_discriminator = (loss_real + loss_fake) * 0.5
            ctx.backward(loss_discriminator)
            scalars[f"loss_d_{name}"] = loss_discriminator.detach()
        if ctx.wants_visuals:
            scalars["visuals"] = self.visuals(batch, fake_target, fake_source)
        return scalars

    def perceptual_terms(
        self,
        batch: dict[str, dict[str, Any]],
        fake_target: torch.Tensor,
        reconstructed_source: torch.Tensor,
        fake_source: torch.Tensor,
        reconstructed_target: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """M's logits of each generated image against those of the real image it comes from.

        Generated images are [-1, 1] [B, 3, H, W]; M sees all of them in 0..255 RGB.
        Returns:
            per_source (F(S) vs S), per_recon_source (F^-1(F(S)) vs S), per_target (F^-1(T) vs
            T), per_recon_target (F(F^-1(T)) vs T): unweighted scalars.
        """
        form = self.config.perceptual

        def logits(images: torch.Tensor) -> torch.Tensor:
            return self.segmentor(from_generator_range(images))["logits"]

        with torch.no_grad():
            source_logits = self.segmentor(batch["source"]["image"])["logits"]
            target_logits = self.segmentor(batch["target"]["image"])["logits"]
        return {
            "per_source": perceptual_loss(logits(fake_target), source_logits, form),
            "per_recon_source": perceptual_loss(logits(reconstructed_source), source_logits, form),
            "per_target": perceptual_loss(logits(fake_source), target_logits, form),
            "per_recon_target": perceptual_loss(logits(reconstructed_target), target_logits, form),
        }

    @torch.no_grad()
    def visuals(
        self, batch: dict[str, dict[str, Any]], fake_target: torch.Tensor, fake_source: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The first source and target images and their translations, uint8-ready [3, H, W]."""
        return {
            "source/image": batch["source"]["image"][0],
            "source/translated": from_generator_range(fake_target[0]),
            "target/image": batch["target"]["image"][0],
            "target/translated": from_generator_range(fake_source[0]),
        }
