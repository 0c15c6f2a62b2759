"""Structure Enhancement: L1 reconstruction, the decoders, the ASPP discriminator, the step,
encoder-gradient averaging, optimizers and configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.engine_helpers import TINY_MODEL, RecordingContext
from tests.fake_layouts import write_gta5_to_cityscapes
from udaseg.cli import main
from udaseg.config import config_from_dict, load_config
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.engine.checkpoint import read_checkpoint
from udaseg.engine.optim import build_optimizer
from udaseg.engine.trainer import _optimizer_configs
from udaseg.errors import ConfigError
from udaseg.losses.reconstruction import reconstruction_loss
from udaseg.methods.adversarial import train_discriminator
from udaseg.methods.structure_enhancement import StructureEnhancement
from udaseg.models import build_segmentor
from udaseg.models.aspp_discriminator import ASPPDiscriminator
from udaseg.models.decoders import ReconstructionDecoder, UNITStyleDecoder
from udaseg.models.normalization import CAFFE_MEAN_BGR

EXPERIMENTS = Path(__file__).resolve().parents[1] / "udaseg" / "configs" / "experiments"
TOY = Path(__file__).resolve().parents[1] / "udaseg" / "configs" / "toy"
NUM_CLASSES = 3
SIZE = (4, 6)


def tiny_segmentor(multi_level: bool = False) -> nn.Module:
    model = config_from_dict({"model": {**TINY_MODEL, "multi_level": multi_level}}).model
    return build_segmentor(model, NUM_CLASSES, load_weights=False)


# --- the loss and the decoders ------------------------------------------------------------------


def test_l1_reconstruction_by_hand() -> None:
    reconstruction = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).requires_grad_()
    images = torch.tensor([[[[0.0, 2.0], [5.0, 1.0]]]]).requires_grad_()
    # |1-0| + |2-2| + |3-5| + |4-1| = 6 over 4 elements.
    loss = reconstruction_loss(reconstruction, images)
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    # d/dx mean|x - y| = sign(x - y) / N; the target is a constant.
    assert torch.equal(reconstruction.grad, torch.tensor([[[[0.25, 0.0], [-0.25, 0.25]]]]))
    assert images.grad is None
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3))


def test_unit_style_decoder_is_units_decoder_at_stride_eight() -> None:
    decoder = UNITStyleDecoder(in_channels=16, base_channels=8, residual_blocks=4)
    assert decoder.project.out_channels == 32  # UNIT's latent width 4 x ch
    assert len(decoder.residual) == 4  # UNIT: 1 shared + 3 per-domain residual blocks
    block = decoder.residual[0].body
    assert [type(layer) for layer in block] == [
        nn.Conv2d,
        nn.InstanceNorm2d,
        nn.ReLU,
        nn.Conv2d,
        nn.InstanceNorm2d,
    ]
    assert not block[1].affine  # UNIT's InstanceNorm2d has no affine parameters
    transposed = [layer for layer in decoder.upsample if isinstance(layer, nn.ConvTranspose2d)]
    assert [(layer.in_channels, layer.out_channels) for layer in transposed] == [
        (32, 16),
        (16, 8),
        (8, 4),
    ]
    for layer in transposed:
        assert (layer.kernel_size, layer.stride, layer.padding, layer.output_padding) == (
            (3, 3),
            (2, 2),
            (1, 1),
            (1, 1),
        )
    assert decoder.output.kernel_size == (1, 1) and decoder.output.out_channels == 3
    # UNIT's gaussian_weights_init: N(0, 0.02) on every conv weight.
    wide = UNITStyleDecoder(in_channels=64, base_channels=64)
    weights = torch.cat(
        [
            m.weight.flatten()
            for m in wide.residual.modules()
            if hasattr(m, "weight") and m.weight is not None
        ]
    )
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert weights.mean().abs().item() < 1e-3
    with pytest.raises(ValueError, match="base_channels"):
        UNITStyleDecoder(in_channels=4, base_channels=1)


def _deeplab_feature_size(height: int, width: int) -> tuple[int, int]:
    """Cells of DeepLabV2's stride-8 map (conv1 s2 p3 k7, ceil-mode max-pool s2, layer2 s2)."""

    def cells(size: int) -> int:
        size = (size + 2 * 3 - 7) // 2 + 1  # conv1
        size = math.ceil((size + 2 - 3) / 2) + 1  # max-pool, ceil mode
        return (size - 1) // 2 + 1  # layer2's stride-2 1x1 conv

    return cells(height), cells(width)


def test_feature_size_formula_matches_the_segmentor() -> None:
    segmentor = tiny_segmentor()
    for size in [(64, 128), (33, 65)]:
        with torch.no_grad():
            features = segmentor(torch.zeros(1, 3, *size))["features"]
        assert tuple(features.shape[-2:]) == _deeplab_feature_size(*size)


@pytest.mark.parametrize(
    "size",
    [(64, 128), (128, 256), (720, 1280), (512, 1024)],
    ids=["toy-crop", "toy-eval", "gta5", "cityscapes"],
)
def test_unit_style_decoder_output_shape_and_range(size: tuple[int, int]) -> None:
    """Every input size of the toy benchmark and the paper, from a fake res5c map of ResNet-101's
    2048 channels at DeepLabV2's stride 8 (ceil mode: 91x161 cells for 720x1280), with a
    decoder of width 2 so that it stays fast."""
    torch.manual_seed(0)
    cells = _deeplab_feature_size(*size)
    assert 8 * cells[0] >= size[0] and 8 * cells[1] >= size[1]
    decoder = UNITStyleDecoder(in_channels=2048, base_channels=2, residual_blocks=1)
    with torch.no_grad():
        for parameter in decoder.output.parameters():
            parameter.mul_(200.0)  # drive tanh into saturation: the bound must still hold
        features = torch.randn(1, 2048, *cells)
        full = decoder(features)
        output = decoder(features, size)
    assert full.shape == (1, 3, 8 * cells[0], 8 * cells[1])
    assert output.shape == (1, 3, *size)
    assert torch.equal(output, full[..., : size[0], : size[1]])  # the top-left crop
    assert output.min() >= -1.0 and output.max() <= 1.0
    assert output.min() < -0.99 and output.max() > 0.99  # the range is used, not just bounded
    image = UNITStyleDecoder.to_image(output)
    assert image.min() >= 0.0 and image.max() <= 255.0


def test_unit_style_decoder_resizes_maps_smaller_than_the_image() -> None:
    decoder = UNITStyleDecoder(in_channels=4, base_channels=2, residual_blocks=0)
    features = torch.randn(1, 4, 4, 5)
    # A floor-mode network (VGG) can give 8h < H: the output is resized, not padded.
    assert decoder(features, (35, 41)).shape == (1, 3, 35, 41)


def test_transposed_conv_decoder_upsamples_by_eight_and_to_the_input_size() -> None:
    decoder = ReconstructionDecoder(in_channels=16, base_channels=8)
    features = torch.randn(2, 16, 5, 9)
    assert decoder(features).shape == (2, 3, 40, 72)
    # The ceil-mode DeepLabV2 gives 5x9 cells for a 33x65 input: resized to it exactly.
    assert decoder(features, (33, 65)).shape == (2, 3, 33, 65)
    widths = [decoder.reduce.out_channels] + [layer.out_channels for layer in decoder.upsample]
    assert widths == [32, 16, 8, 4]
    # output_scale multiplies the last conv's output and is not a parameter.
    scaled = ReconstructionDecoder(in_channels=16, base_channels=8, output_scale=255.0)
    scaled.load_state_dict(decoder.state_dict())
    assert torch.allclose(scaled(features), 255.0 * decoder(features), rtol=1e-5, atol=1e-4)


# --- the discriminator --------------------------------------------------------------------------


def test_aspp_discriminator_keeps_the_size_and_concatenates_four_dilated_branches() -> None:
    discriminator = ASPPDiscriminator(NUM_CLASSES, base_channels=5)
    assert [branch.dilation for branch in discriminator.branches] == [(r, r) for r in (1, 2, 3, 4)]
    assert [branch.padding for branch in discriminator.branches] == [(r, r) for r in (1, 2, 3, 4)]
    assert [branch.kernel_size for branch in discriminator.branches] == [(3, 3)] * 4
    assert discriminator.classifier.in_channels == 4 * 5  # concatenation, not a sum
    assert discriminator.classifier.kernel_size == (1, 1)
    assert discriminator(torch.rand(2, NUM_CLASSES, 17, 23)).shape == (2, 1, 17, 23)

    with torch.no_grad():
        for parameter in discriminator.parameters():
            parameter.zero_()
        for index, branch in enumerate(discriminator.branches):
            branch.bias.fill_(index + 1.0)  # branch i outputs the constant i + 1 (positive)
        # Output = 10 x (first channel of branch 2) - 1 x (last channel of branch 3) + 0.5.
        discriminator.classifier.weight[0, 2 * 5, 0, 0] = 10.0
        discriminator.classifier.weight[0, 3 * 5 + 4, 0, 0] = -1.0
        discriminator.classifier.bias.fill_(0.5)
    output = discriminator(torch.rand(1, NUM_CLASSES, 6, 7))
    assert torch.allclose(output, torch.full((1, 1, 6, 7), 10 * 3.0 - 4.0 + 0.5))


def test_aspp_discriminator_sees_at_most_four_pixels_away() -> None:
    """Receptive field of rates 1-4 and a 1x1 classifier: a 9x9 window, no sigmoid."""
    torch.manual_seed(0)
    discriminator = ASPPDiscriminator(NUM_CLASSES, base_channels=4)
    base = torch.rand(1, NUM_CLASSES, 15, 15)
    poked = base.clone()
    poked[0, :, 7, 7] += 1.0
    changed = (discriminator(poked) - discriminator(base)).abs()[0, 0] > 0
    rows, columns = torch.nonzero(changed, as_tuple=True)
    assert rows.min() == 3 and rows.max() == 11 and columns.min() == 3 and columns.max() == 11
    # Logits, not probabilities: BCE-with-logits is applied by the losses.
    assert not any(isinstance(module, nn.Sigmoid) for module in discriminator.modules())


def test_discriminator_loss_is_minus_half_of_eq_2() -> None:
    """D maximises eq. (2), mean log(1 - D(target)) + mean log D(source) with D = P(source);
    the discriminator step minimises (BCE(source, 0) + BCE(target, 1)) / 2 on the logits."""
    torch.manual_seed(1)
    discriminator = ASPPDiscriminator(NUM_CLASSES, base_channels=4)
    source_maps = torch.softmax(torch.randn(2, NUM_CLASSES, 5, 6), dim=1)
    target_maps = torch.softmax(torch.randn(2, NUM_CLASSES, 5, 6), dim=1)
    with torch.no_grad():
        logits = discriminator(source_maps)
        d_source = discriminator.source_probability(source_maps)
        d_target = discriminator.source_probability(target_maps)
    assert torch.allclose(d_source, 1 / (1 + torch.exp(logits)))  # sigmoid(-z), by hand
    eq_2 = torch.log(1 - d_target).mean() + torch.log(d_source).mean()
    context = RecordingContext()
    train_discriminator(discriminator, source_maps, target_maps, context)
    assert sum(context.losses) == pytest.approx(-eq_2.item() / 2, rel=1e-5)


# --- the training step with controlled outputs --------------------------------------------------


class FakeSegmentor(nn.Module):
    """A tiny encoder E and head S whose outputs depend on both, so that both branches reach E.

    features = encoder[k] x (1 + image/255) x pattern   [B, 2, H, W]  (source 0s: x1, target
    255s: x2), logits = head @ features (+ an aux head on the same features), and `normalize`
    subtracts a constant as the Caffe preset does. E is the "backbone" group, S the "head".
    """

    def __init__(self, multi_level: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.num_classes = NUM_CLASSES
        self.multi_level = multi_level
        self.feature_channels = 2
        self.encoder = nn.Parameter(torch.tensor([0.7, -1.3]))
        self.pattern = torch.randn(1, 2, *SIZE, generator=generator)
        self.head = nn.Parameter(torch.randn(NUM_CLASSES, 2, generator=generator))
        self.aux = nn.Parameter(torch.randn(NUM_CLASSES, 2, generator=generator))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images - 100.0

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": [self.encoder], "head": [self.head, self.aux]}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        scale = 1 + images[:, :1] / 255
        features = self.encoder.view(1, 2, 1, 1) * scale * self.pattern
        outputs = {
            "logits": torch.einsum("ck,bkhw->bchw", self.head, features),
            "features": features,
        }
        if self.multi_level:
            outputs["aux_logits"] = torch.einsum("ck,bkhw->bchw", self.aux, features)
        return outputs


class ScaleDecoder(nn.Module):
    """Output = gain x (mean over feature channels), broadcast to 3 channels (in [-1, 1] for the
    unit_style path, which maps it to 0..255 and normalises it)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(0.3))

    def forward(self, features: torch.Tensor, output_size=None) -> torch.Tensor:
        return (self.gain * features.mean(dim=1, keepdim=True)).expand(-1, 3, -1, -1)


class AffineDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.8, -0.5, 0.3]))
        self.bias = nn.Parameter(torch.tensor(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.weight.view(1, -1, 1, 1) * x).sum(dim=1, keepdim=True) + self.bias


def _batch() -> dict:
    labels = torch.tensor([[0, 1, 2, 255, 1, 0]] * SIZE[0]).unsqueeze(0)
    return {
        "source": {"image": torch.zeros(1, 3, *SIZE), "label": labels},
        "target": {"image": torch.full((1, 3, *SIZE), 255.0)},
    }


def _method(multi_level: bool = False, **fields) -> StructureEnhancement:
    config = StructureEnhancement.Config(**fields)
    method = StructureEnhancement(config, FakeSegmentor(multi_level), CITYSCAPES19)
    method.decoder = ScaleDecoder()
    method.discriminator = AffineDiscriminator()
    return method


class Formulas:
    """The method's losses written out directly from copies of its parameters."""

    def __init__(self, method: StructureEnhancement) -> None:
        segmentor = method.segmentor
        self.encoder = segmentor.encoder.detach().clone().requires_grad_()
        self.head = segmentor.head.detach().clone().requires_grad_()
        self.aux = segmentor.aux.detach().clone().requires_grad_()
        self.gain = method.decoder.gain.detach().clone().requires_grad_()
        self.weight = method.discriminator.weight.detach().clone().requires_grad_()
        self.bias = method.discriminator.bias.detach().clone().requires_grad_()
        self.pattern = segmentor.pattern

    def features(self, scale: float) -> torch.Tensor:
        return self.encoder.view(1, 2, 1, 1) * scale * self.pattern

    def rec(self, scale: float, images: torch.Tensor) -> torch.Tensor:
        # unit_style: [-1, 1] output -> (y + 1) x 127.5 -> normalised (- 100), like the image.
        output = self.gain * self.features(scale).mean(1, keepdim=True)
        return ((output + 1) * 127.5 - 100.0 - (images - 100.0)).abs().mean()

    def logits(self, scale: float, head: torch.Tensor | None = None) -> torch.Tensor:
        return torch.einsum(
            "ck,bkhw->bchw", self.head if head is None else head, self.features(scale)
        )

    def d(self, maps: torch.Tensor) -> torch.Tensor:
        return (self.weight.view(1, -1, 1, 1) * maps).sum(1, keepdim=True) + self.bias


@pytest.mark.parametrize("generator_loss", ["minimax", "non_saturating"])
@pytest.mark.parametrize("multi_level", [False, True], ids=["single", "multi"])
def test_losses_equal_the_sum_of_lambdas_times_terms(
    multi_level: bool, generator_loss: str
) -> None:
    method = _method(multi_level, generator_loss=generator_loss)
    ctx = RecordingContext()
    scalars = method.training_step(_batch(), ctx)
    formulas = Formulas(method)
    batch = _batch()
    labels = batch["source"]["label"]
    with torch.no_grad():
        # Backward 1: CE (+ 0.1 aux CE) + 1e-5 x L1(source).
        rec_source = formulas.rec(1.0, batch["source"]["image"])
        first = F.cross_entropy(formulas.logits(1.0), labels, ignore_index=255) + 1e-5 * rec_source
        if multi_level:
            aux = F.cross_entropy(formulas.logits(1.0, formulas.aux), labels, ignore_index=255)
            first = first + 0.1 * aux
        # Backward 2: 1e-5 x L1(target) + 1e-3 x the generator term. D_src = sigmoid(-z).
        rec_target = formulas.rec(2.0, batch["target"]["image"])
        target_maps = torch.softmax(formulas.logits(2.0), dim=1)
        d_source = torch.sigmoid(-formulas.d(target_maps))
        if generator_loss == "minimax":
            adversarial = torch.log(1 - d_source).mean()  # eq. (2), target term
        else:
            adversarial = -torch.log(d_source).mean()
        second = 1e-5 * rec_target + 1e-3 * adversarial
        # Backwards 3, 4: D on source -> 0 and target -> 1, each halved.
        third = F.softplus(formulas.d(torch.softmax(formulas.logits(1.0), dim=1))).mean() / 2
        fourth = F.softplus(-formulas.d(target_maps)).mean() / 2
    expected = [first.item(), second.item(), third.item(), fourth.item()]
    assert ctx.losses == pytest.approx(expected, rel=1e-5)
    assert scalars["loss_rec_source"].item() == pytest.approx(rec_source.item(), rel=1e-6)
    assert scalars["loss_rec_target"].item() == pytest.approx(rec_target.item(), rel=1e-6)
    assert scalars["loss_adv"].item() == pytest.approx(adversarial.item(), rel=1e-6)
    assert (scalars["loss_adv"].item() < 0) == (generator_loss == "minimax")
    assert ("loss_seg_aux" in scalars) == multi_level


@pytest.mark.parametrize("encoder_gradient", ["average", "sum"])
def test_encoder_gradient_is_the_mean_of_the_two_branches(encoder_gradient: str) -> None:
    """E gets (g_segmentation + g_reconstruction) / 2 (paper) or their sum; S and G their own."""
    method = _method(lambda_rec=0.5, lambda_adv=0.25, encoder_gradient=encoder_gradient)
    method.training_step(_batch(), RecordingContext())
    formulas = Formulas(method)
    batch = _batch()
    source, target = batch["source"]["image"], batch["target"]["image"]
    labels = batch["source"]["label"]

    # The segmentation branch (through S): source CE + the adversarial term on target.
    target_maps = torch.softmax(formulas.logits(2.0), dim=1)
    with torch.no_grad():
        weight, bias = formulas.weight.clone(), formulas.bias.clone()  # D is frozen here
    d_target = (weight.view(1, -1, 1, 1) * target_maps).sum(1, keepdim=True) + bias
    segmentation_branch = (
        F.cross_entropy(formulas.logits(1.0), labels, ignore_index=255)
        + 0.25 * torch.log(torch.sigmoid(d_target)).mean()
    )
    # The reconstruction branch (through G): both domains' L1.
    reconstruction_branch = 0.5 * (formulas.rec(1.0, source) + formulas.rec(2.0, target))
    encoder_segmentation, head = torch.autograd.grad(
        segmentation_branch, [formulas.encoder, formulas.head]
    )
    encoder_reconstruction, gain = torch.autograd.grad(
        reconstruction_branch, [formulas.encoder, formulas.gain]
    )
    # The two branches pull the encoder differently: the test can tell mean from sum.
    assert encoder_segmentation.abs().min() > 1e-3 and encoder_reconstruction.abs().min() > 1e-3
    assert not torch.allclose(encoder_segmentation, encoder_reconstruction, rtol=0.1)

    total = encoder_segmentation + encoder_reconstruction
    expected = total / 2 if encoder_gradient == "average" else total
    assert torch.allclose(method.segmentor.encoder.grad, expected, rtol=1e-5, atol=1e-7)
    # S and G keep their own, unscaled gradients.
    assert torch.allclose(method.segmentor.head.grad, head, rtol=1e-5, atol=1e-7)
    assert method.decoder.gain.grad.item() == pytest.approx(gain.item(), rel=1e-5)

    # The hooks are gone after the step: a later backward reaches E unscaled.
    method.segmentor.encoder.grad = None
    method.segmentor.encoder.sum().backward()
    assert torch.equal(method.segmentor.encoder.grad, torch.ones(2))


def test_encoder_gradient_by_hand_on_a_scalar_encoder() -> None:
    """One number each: E's weight e, two branch losses a*e and b*e: the mean is (a + b) / 2."""

    class ScalarSegmentor(FakeSegmentor):
        def param_groups(self) -> dict[str, list[nn.Parameter]]:
            return {"backbone": [self.encoder], "head": [self.head]}

    method = StructureEnhancement(StructureEnhancement.Config(), ScalarSegmentor(), CITYSCAPES19)
    encoder = method.segmentor.encoder
    with method.scaled_encoder_gradients():
        (3.0 * encoder[0]).backward()  # branch 1: d/de = 3
        (5.0 * encoder[0] + 2.0 * encoder[1]).backward()  # branch 2: d/de = 5, 2
    assert torch.equal(encoder.grad, torch.tensor([(3.0 + 5.0) / 2, 2.0 / 2]))
    # With lambda_rec = 0 there is one branch: nothing is halved.
    single = StructureEnhancement(
        StructureEnhancement.Config(lambda_rec=0.0), ScalarSegmentor(), CITYSCAPES19
    )
    assert single.encoder_gradient_scale() == 1.0
    assert method.encoder_gradient_scale() == 0.5


def test_discriminator_gets_only_its_own_two_halved_terms() -> None:
    method = _method(lambda_rec=0.5, lambda_adv=0.25)
    method.training_step(_batch(), RecordingContext())
    formulas = Formulas(method)
    with torch.no_grad():
        source_maps = torch.softmax(formulas.logits(1.0), dim=1)
        target_maps = torch.softmax(formulas.logits(2.0), dim=1)
    own = (
        F.softplus(formulas.d(source_maps)).mean() / 2
        + F.softplus(-formulas.d(target_maps)).mean() / 2
    )
    weight, bias = torch.autograd.grad(own, [formulas.weight, formulas.bias])
    assert torch.allclose(method.discriminator.weight.grad, weight, atol=1e-7)
    assert method.discriminator.bias.grad.item() == pytest.approx(bias.item(), rel=1e-5)


def test_ablations_drop_their_branch() -> None:
    feature_level = _method(lambda_adv=0.0)  # Table 1 "feature-level": reconstruction only
    context = RecordingContext()
    scalars = feature_level.training_step(_batch(), context)
    assert len(context.losses) == 2 and "loss_adv" not in scalars and "loss_d_source" not in scalars
    assert feature_level.discriminator.weight.grad is None
    assert feature_level.decoder.gain.grad is not None
    assert feature_level.encoder_gradient_scale() == 0.5  # still two branches

    output_level = _method(lambda_rec=0.0)  # Table 1 "output-level": adversarial only
    context = RecordingContext()
    scalars = output_level.training_step(_batch(), context)
    assert len(context.losses) == 4 and "loss_rec_source" not in scalars
    assert output_level.decoder.gain.grad is None
    assert output_level.encoder_gradient_scale() == 1.0

    neither = _method(lambda_rec=0.0, lambda_adv=0.0)
    context = RecordingContext()
    assert set(neither.training_step(_batch(), context)) == {"loss_seg"}
    assert len(context.losses) == 1


def test_reconstruction_target_is_the_network_input_by_default() -> None:
    model = config_from_dict({"model": {"blocks": [1, 1, 1, 1], "width": 4}}).model
    segmentor = build_segmentor(model, 19, load_weights=False)
    method = StructureEnhancement(StructureEnhancement.Config(), segmentor, CITYSCAPES19)
    images = torch.zeros(1, 3, 2, 2)
    images[:, 0] = 255.0  # pure red
    target = method.reconstruction_target(images)
    # Caffe BGR: channel 0 is blue (0 - 104.0), channel 2 red (255 - 122.7).
    assert target[0, 0, 0, 0].item() == pytest.approx(-CAFFE_MEAN_BGR[0])
    assert target[0, 2, 0, 0].item() == pytest.approx(255.0 - CAFFE_MEAN_BGR[2])
    unit = StructureEnhancement(
        StructureEnhancement.Config(reconstruction_target="unit"), segmentor, CITYSCAPES19
    )
    assert torch.equal(unit.reconstruction_target(images), images / 255.0)
    # UNIT-style G (default): its [-1, 1] output is an RGB image normalised like the input.
    assert isinstance(method.decoder, UNITStyleDecoder)
    features = torch.randn(1, segmentor.feature_channels, 3, 4)
    with torch.no_grad():
        output = method.decoder(features, (20, 30))
        expected = segmentor.normalize((output + 1) * 127.5)
        assert torch.allclose(method.reconstruct(features, (20, 30)), expected)
    # transposed_conv G: its output scale is the span of the target: 255 (Caffe), 1 (unit).
    fields = {"decoder": "transposed_conv"}
    old = StructureEnhancement(StructureEnhancement.Config(**fields), segmentor, CITYSCAPES19)
    old_unit = StructureEnhancement(
        StructureEnhancement.Config(**fields, reconstruction_target="unit"), segmentor, CITYSCAPES19
    )
    assert isinstance(old.decoder, ReconstructionDecoder)
    assert old.decoder.output_scale == pytest.approx(255.0)
    assert old_unit.decoder.output_scale == pytest.approx(1.0)
    modules = method.trainable_modules()
    assert set(modules) == {"segmentor", "decoder", "discriminator"}
    assert modules["decoder"].project.in_channels == segmentor.feature_channels
    assert modules["discriminator"].branches[0].in_channels == 19


def test_paper_defaults_and_validation() -> None:
    config = StructureEnhancement.Config()
    assert (config.lambda_rec, config.lambda_adv, config.lambda_seg_aux) == (1e-5, 1e-3, 0.1)
    assert tuple(config.discriminator_dilations) == (1, 2, 3, 4)
    assert (config.decoder, config.decoder_channels, config.decoder_residual_blocks) == (
        "unit_style",
        64,
        4,
    )
    assert (config.encoder_gradient, config.generator_loss) == ("average", "minimax")
    with pytest.raises(ConfigError, match="lambda_rec: must be >= 0"):
        config_from_dict({"method": {"name": "structure_enhancement", "lambda_rec": -1}})
    with pytest.raises(ConfigError, match="discriminator_dilations"):
        config_from_dict(
            {"method": {"name": "structure_enhancement", "discriminator_dilations": [0, 1]}}
        )
    with pytest.raises(ConfigError, match="encoder_gradient"):
        config_from_dict({"method": {"name": "structure_enhancement", "encoder_gradient": "max"}})
    with pytest.raises(ConfigError, match="decoder_residual_blocks"):
        config_from_dict(
            {"method": {"name": "structure_enhancement", "decoder_residual_blocks": -1}}
        )


# --- the optimizers the paper names -------------------------------------------------------------


def _built_optimizers(config) -> dict[str, torch.optim.Optimizer]:
    config.method.decoder_channels = 4  # a small G: only the optimizers are looked at
    method = StructureEnhancement(config.method, tiny_segmentor(), CITYSCAPES19)
    modules = method.trainable_modules()
    chosen = _optimizer_configs(config, StructureEnhancement, modules)
    return {name: build_optimizer(modules[name], chosen[name], name) for name in modules}


@pytest.mark.parametrize(
    "path",
    [
        None,  # no optim.decoder / optim.discriminator: the method's defaults
        EXPERIMENTS / "structure_enhancement_gta5_cityscapes.yaml",
        EXPERIMENTS / "structure_enhancement_feature_level_only_gta5_cityscapes.yaml",
        EXPERIMENTS / "structure_enhancement_output_level_only_gta5_cityscapes.yaml",
    ],
    ids=["defaults", "full", "feature-level", "output-level"],
)
def test_optimizers_are_the_papers(path: Path | None) -> None:
    """E and S: SGD, momentum 0.9, lr 2.5e-4 (heads 10x), poly 0.9; G and D: Adam (0.9, 0.99)."""
    overrides = ["method.name=structure_enhancement"] if path is None else []
    config = load_config(path, overrides)
    optimizers = _built_optimizers(config)
    segmentor = optimizers["segmentor"]
    assert type(segmentor) is torch.optim.SGD
    groups = {group["name"]: group for group in segmentor.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(2.5e-4)
    assert groups["head"]["lr"] == pytest.approx(2.5e-3)
    assert all(group["momentum"] == 0.9 for group in segmentor.param_groups)
    assert groups["backbone"]["weight_decay"] == pytest.approx(5e-4)
    for name in ("decoder", "discriminator"):
        optimizer = optimizers[name]
        assert type(optimizer) is torch.optim.Adam, name
        (group,) = optimizer.param_groups
        assert group["betas"] == (0.9, 0.99) and group["lr"] == pytest.approx(1e-4)
        assert group["weight_decay"] == 0.0
    assert (config.schedule.name, config.schedule.power) == ("poly", 0.9)


# --- shipped configs ----------------------------------------------------------------------------


def test_experiment_config_holds_the_paper_settings() -> None:
    config = load_config(EXPERIMENTS / "structure_enhancement_gta5_cityscapes.yaml")
    method = config.method
    assert method.name == "structure_enhancement"
    assert (method.lambda_rec, method.lambda_adv) == (1e-5, 1e-3)
    assert tuple(method.discriminator_dilations) == (1, 2, 3, 4)
    assert method.reconstruction_target == "network_input"
    assert (method.decoder, method.encoder_gradient, method.generator_loss) == (
        "unit_style",
        "average",
        "minimax",
    )
    assert not config.model.multi_level and config.model.depth == 101
    assert config.model.input_normalization == "caffe_bgr"
    assert config.model.init.endswith("DeepLab_resnet_pretrained_init-f81d91e8.pth")
    assert (config.schedule.total_steps, config.train.steps) == (250000, 150000)
    assert config.data.source.resize == (720, 1280) and config.data.target.resize == (512, 1024)


@pytest.mark.parametrize(
    "suffix, lambdas",
    [("feature_level_only", (1e-5, 0.0)), ("output_level_only", (0.0, 1e-3))],
)
def test_ablation_configs_zero_one_lambda(suffix: str, lambdas: tuple[float, float]) -> None:
    full = load_config(EXPERIMENTS / "structure_enhancement_gta5_cityscapes.yaml")
    for folder, name in [
        (EXPERIMENTS, f"structure_enhancement_{suffix}_gta5_cityscapes.yaml"),
        (TOY, f"structure_enhancement_{suffix}.yaml"),
    ]:
        config = load_config(folder / name)
        assert (config.method.lambda_rec, config.method.lambda_adv) == lambdas, name
        assert config.method.encoder_gradient == "average"
        assert suffix in config.run_dir
    ablation = load_config(EXPERIMENTS / f"structure_enhancement_{suffix}_gta5_cityscapes.yaml")
    assert ablation.model == full.model and ablation.train == full.train


def test_toy_configs() -> None:
    full = load_config(TOY / "structure_enhancement.yaml")
    assert full.method.name == "structure_enhancement"
    assert (full.method.decoder, full.method.encoder_gradient, full.method.generator_loss) == (
        "unit_style",
        "average",
        "minimax",
    )
    old = load_config(TOY / "structure_enhancement_v0.yaml").method
    assert (old.decoder, old.encoder_gradient, old.generator_loss) == (
        "transposed_conv",
        "sum",
        "non_saturating",
    )
    assert (old.lambda_rec, old.lambda_adv) == (1e-5, 1e-3)


def test_config_trains_on_the_real_layouts(tmp_path: Path) -> None:
    overrides = [
        *write_gta5_to_cityscapes(tmp_path),
        "method.decoder_channels=8",
        "method.discriminator_channels=8",
    ]
    config = EXPERIMENTS / "structure_enhancement_gta5_cityscapes.yaml"
    assert main(["train", str(config), *overrides]) == 0
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    # The choices are recorded with the weights.
    method = checkpoint["config"]["method"]
    assert (method["decoder"], method["encoder_gradient"], method["generator_loss"]) == (
        "unit_style",
        "average",
        "minimax",
    )
    assert "project.weight" in checkpoint["modules"]["decoder"]
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "loss_rec_target" in metrics and "loss_d_target" in metrics
