"""Structure Enhancement: L1 reconstruction, decoder, ASPP discriminator, the step, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.engine_helpers import RecordingContext
from tests.fake_layouts import write_gta5_to_cityscapes
from udaseg.cli import main
from udaseg.config import config_from_dict, load_config
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.errors import ConfigError
from udaseg.losses.reconstruction import reconstruction_loss
from udaseg.methods.structure_enhancement import StructureEnhancement
from udaseg.models import build_segmentor
from udaseg.models.aspp_discriminator import ASPPDiscriminator
from udaseg.models.decoders import ReconstructionDecoder
from udaseg.models.normalization import CAFFE_MEAN_BGR

EXPERIMENTS = Path(__file__).resolve().parents[1] / "udaseg" / "configs" / "experiments"
TOY = Path(__file__).resolve().parents[1] / "udaseg" / "configs" / "toy"
NUM_CLASSES = 3
SIZE = (4, 6)


# --- the loss and the two modules ---------------------------------------------------------------


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


def test_decoder_upsamples_by_eight_and_to_the_input_size() -> None:
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


def test_aspp_discriminator_keeps_the_size_and_concatenates_four_dilated_branches() -> None:
    discriminator = ASPPDiscriminator(NUM_CLASSES, base_channels=5)
    assert [branch.dilation for branch in discriminator.branches] == [(r, r) for r in (1, 2, 3, 4)]
    assert [branch.padding for branch in discriminator.branches] == [(r, r) for r in (1, 2, 3, 4)]
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


# --- the training step with controlled outputs --------------------------------------------------


class FakeSegmentor(nn.Module):
    """Logits and features are learnable maps scaled by the image (source 0s -> x1, target
    255s -> x2); `normalize` subtracts a constant as the Caffe preset does."""

    def __init__(self, multi_level: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.num_classes = NUM_CLASSES
        self.multi_level = multi_level
        self.feature_channels = 2
        self.main = nn.Parameter(torch.randn(1, NUM_CLASSES, *SIZE, generator=generator))
        self.aux = nn.Parameter(torch.randn(1, NUM_CLASSES, *SIZE, generator=generator))
        self.feature = nn.Parameter(torch.randn(1, 2, *SIZE, generator=generator))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images - 100.0

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        scale = 1 + images[:, :1] / 255
        outputs = {"logits": self.main * scale, "features": self.feature * scale}
        if self.multi_level:
            outputs["aux_logits"] = self.aux * scale
        return outputs


class ScaleDecoder(nn.Module):
    """Reconstruction = gain x (mean over feature channels), broadcast to 3 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(30.0))

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


@pytest.mark.parametrize("multi_level", [False, True], ids=["single", "multi"])
def test_losses_equal_the_sum_of_lambdas_times_terms(multi_level: bool) -> None:
    method = _method(multi_level)
    ctx = RecordingContext()
    scalars = method.training_step(_batch(), ctx)
    segmentor, decoder, discriminator = method.segmentor, method.decoder, method.discriminator
    batch = _batch()
    labels = batch["source"]["label"]

    def rec_loss(features, images):
        reconstruction = decoder.gain * features.mean(dim=1, keepdim=True)
        return (reconstruction - (images - 100.0)).abs().mean()

    def d(maps):
        return (discriminator.weight.view(1, -1, 1, 1) * maps).sum(1, keepdim=True) + (
            discriminator.bias
        )

    with torch.no_grad():
        feature, main, aux = segmentor.feature, segmentor.main, segmentor.aux
        # Backward 1: CE (+ 0.1 aux CE) + 1e-5 x L1(source).
        rec_source = rec_loss(feature, batch["source"]["image"])
        first = F.cross_entropy(main, labels, ignore_index=255) + 1e-5 * rec_source
        if multi_level:
            first = first + 0.1 * F.cross_entropy(aux, labels, ignore_index=255)
        # Backward 2: 1e-5 x L1(target) + 1e-3 x BCE(D(softmax target), source label 0).
        rec_target = rec_loss(2 * feature, batch["target"]["image"])
        target_maps = torch.softmax(2 * main, dim=1)
        second = 1e-5 * rec_target + 1e-3 * F.softplus(d(target_maps)).mean()
        # Backwards 3, 4: D on source -> 0 and target -> 1, each halved.
        third = F.softplus(d(torch.softmax(main, dim=1))).mean() / 2
        fourth = F.softplus(-d(target_maps)).mean() / 2
    expected = [first.item(), second.item(), third.item(), fourth.item()]
    assert ctx.losses == pytest.approx(expected, rel=1e-5)
    assert scalars["loss_rec_source"].item() == pytest.approx(rec_source.item())
    assert scalars["loss_rec_target"].item() == pytest.approx(rec_target.item())
    assert ("loss_seg_aux" in scalars) == multi_level


def test_encoder_gets_both_branches_and_discriminator_only_its_own() -> None:
    method = _method(lambda_rec=0.5, lambda_adv=0.25)  # large weights: visible gradients
    method.training_step(_batch(), RecordingContext())
    segmentor, decoder, discriminator = method.segmentor, method.decoder, method.discriminator
    batch = _batch()

    feature = segmentor.feature.detach().clone().requires_grad_()
    main = segmentor.main.detach().clone().requires_grad_()
    gain = decoder.gain.detach().clone().requires_grad_()
    weight = discriminator.weight.detach().clone()
    bias = discriminator.bias.detach().clone()

    def rec(features, images):
        return (gain * features.mean(1, keepdim=True) - (images - 100.0)).abs().mean()

    target_maps = torch.softmax(2 * main, dim=1)
    fooled = F.softplus((weight.view(1, -1, 1, 1) * target_maps).sum(1, keepdim=True) + bias)
    total = (
        F.cross_entropy(main, batch["source"]["label"], ignore_index=255)
        + 0.5 * rec(feature, batch["source"]["image"])
        + 0.5 * rec(2 * feature, batch["target"]["image"])
        + 0.25 * fooled.mean()
    )
    total.backward()
    # The encoder (features) receives the reconstruction gradients of both domains.
    assert feature.grad.abs().sum() > 0
    assert torch.allclose(segmentor.feature.grad, feature.grad, atol=1e-7)
    assert torch.allclose(segmentor.main.grad, main.grad, atol=1e-7)
    assert decoder.gain.grad.item() == pytest.approx(gain.grad.item(), rel=1e-5)

    # The discriminator's gradient is that of its own two halved terms only.
    weight.requires_grad_()
    bias.requires_grad_()
    source_maps = torch.softmax(main.detach(), dim=1)
    own = (
        F.softplus((weight.view(1, -1, 1, 1) * source_maps).sum(1, keepdim=True) + bias).mean() / 2
        + F.softplus(
            -((weight.view(1, -1, 1, 1) * target_maps.detach()).sum(1, keepdim=True) + bias)
        ).mean()
        / 2
    )
    own.backward()
    assert torch.allclose(discriminator.weight.grad, weight.grad, atol=1e-7)
    assert discriminator.bias.grad.item() == pytest.approx(bias.grad.item(), rel=1e-5)


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
    # The decoder's output scale is the span of the target: 255 (Caffe, 0..255), 1 (unit).
    assert method.decoder.output_scale == pytest.approx(255.0)
    assert unit.decoder.output_scale == pytest.approx(1.0)
    modules = method.trainable_modules()
    assert set(modules) == {"segmentor", "decoder", "discriminator"}
    assert modules["decoder"].reduce.in_channels == segmentor.feature_channels
    assert modules["discriminator"].branches[0].in_channels == 19


def test_paper_defaults_and_validation() -> None:
    config = StructureEnhancement.Config()
    assert (config.lambda_rec, config.lambda_adv, config.lambda_seg_aux) == (1e-5, 1e-3, 0.1)
    assert tuple(config.discriminator_dilations) == (1, 2, 3, 4)
    for name in ("discriminator", "decoder"):
        optimizer = StructureEnhancement.default_optimizers[name]
        assert optimizer["name"] == "adam" and optimizer["lr"] == 1e-4
        assert tuple(optimizer["betas"]) == (0.9, 0.99) and optimizer["weight_decay"] == 0.0
    with pytest.raises(ConfigError, match="lambda_rec: must be >= 0"):
        config_from_dict({"method": {"name": "structure_enhancement", "lambda_rec": -1}})
    with pytest.raises(ConfigError, match="discriminator_dilations"):
        config_from_dict(
            {"method": {"name": "structure_enhancement", "discriminator_dilations": [0, 1]}}
        )


# --- shipped configs ----------------------------------------------------------------------------


def test_experiment_config_holds_the_paper_settings() -> None:
    config = load_config(EXPERIMENTS / "structure_enhancement_gta5_cityscapes.yaml")
    method = config.method
    assert method.name == "structure_enhancement"
    assert (method.lambda_rec, method.lambda_adv) == (1e-5, 1e-3)
    assert tuple(method.discriminator_dilations) == (1, 2, 3, 4)
    assert method.reconstruction_target == "network_input"
    assert not config.model.multi_level and config.model.depth == 101
    assert config.model.input_normalization == "caffe_bgr"
    assert config.model.init.endswith("DeepLab_resnet_pretrained_init-f81d91e8.pth")
    segmentor = config.optim["segmentor"]
    assert (segmentor.name, segmentor.lr, segmentor.head_lr_multiplier) == ("sgd", 2.5e-4, 10.0)
    for name in ("discriminator", "decoder"):
        optimizer = config.optim[name]
        assert (optimizer.name, optimizer.lr, tuple(optimizer.betas)) == ("adam", 1e-4, (0.9, 0.99))
    assert (config.schedule.total_steps, config.train.steps) == (250000, 150000)
    assert config.data.source.resize == (720, 1280) and config.data.target.resize == (512, 1024)


def test_toy_config_loads() -> None:
    assert load_config(TOY / "structure_enhancement.yaml").method.name == "structure_enhancement"


def test_config_trains_on_the_real_layouts(tmp_path: Path) -> None:
    overrides = [
        *write_gta5_to_cityscapes(tmp_path),
        "method.decoder_channels=8",
        "method.discriminator_channels=8",
    ]
    config = EXPERIMENTS / "structure_enhancement_gta5_cityscapes.yaml"
    assert main(["train", str(config), *overrides]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "loss_rec_target" in metrics and "loss_d_target" in metrics
