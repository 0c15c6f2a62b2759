"""MinEnt / AdvEnt / both (methods/advent.py): losses, step order, gradients, configs."""

from __future__ import annotations

import math
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
from udaseg.methods.advent import AdvEnt, AdvEntMinEnt, MinEnt
from udaseg.registry import METHODS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "udaseg" / "configs" / "experiments"
TOY = Path(__file__).resolve().parents[1] / "udaseg" / "configs" / "toy"
ADVENT_INIT = "https://github.com/valeoai/ADVENT/releases/download/v0.1/DeepLab_resnet_pretrained_imagenet.pth"
NUM_CLASSES = 3
SIZE = (4, 5)


class FakeSegmentor(nn.Module):
    """Logits are learnable maps at the input size, scaled by the image: source images of 0s
    give `main`, target images of 255s give 2 x `main` (same for `aux`)."""

    def __init__(self, multi_level: bool) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.num_classes = NUM_CLASSES
        self.multi_level = multi_level
        self.feature_channels = 2
        self.main = nn.Parameter(torch.randn(1, NUM_CLASSES, *SIZE, generator=generator))
        self.aux = nn.Parameter(torch.randn(1, NUM_CLASSES, *SIZE, generator=generator))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        scale = 1 + images[:, :1] / 255
        outputs = {"logits": self.main * scale, "features": images[:, :2]}
        if self.multi_level:
            outputs["aux_logits"] = self.aux * scale
        return outputs


class AffineDiscriminator(nn.Module):
    """D(x) = weight * sum_c x_c + bias, per pixel: its BCE terms can be written by hand."""

    def __init__(self, weight: float, bias: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight))
        self.bias = nn.Parameter(torch.tensor(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x.sum(dim=1, keepdim=True) + self.bias


def _batch() -> dict:
    labels = torch.tensor([[0, 1, 2, 255, 1]] * SIZE[0]).unsqueeze(0)
    return {
        "source": {"image": torch.zeros(1, 3, *SIZE), "label": labels},
        "target": {"image": torch.full((1, 3, *SIZE), 255.0)},
    }


def _method(method_class, multi_level: bool):
    config = method_class.Config()
    method = method_class(config, FakeSegmentor(multi_level), CITYSCAPES19)
    if method.aligns_entropy:
        method.discriminators["main"] = AffineDiscriminator(0.7, -0.2)
        if multi_level:
            method.discriminators["aux"] = AffineDiscriminator(-0.4, 0.3)
    return method


# --- hand-written versions of the paper's terms ----------------------------------------------


def _self_information(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=1)
    return -p * torch.log2(p) / math.log2(logits.shape[1])


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    return _self_information(logits).sum(dim=1).mean()


def _bce_toward(logits: torch.Tensor, label: float) -> torch.Tensor:
    # BCE-with-logits against a constant: softplus(x) for label 0, softplus(-x) for label 1.
    return (F.softplus(logits) if label == 0 else F.softplus(-logits)).mean()


def _affine(discriminator: AffineDiscriminator, maps: torch.Tensor) -> torch.Tensor:
    return discriminator.weight * maps.sum(dim=1, keepdim=True) + discriminator.bias


@pytest.mark.parametrize("multi_level", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("method_class", [MinEnt, AdvEnt, AdvEntMinEnt])
def test_losses_equal_the_sum_of_lambdas_times_terms(method_class, multi_level: bool) -> None:
    torch.manual_seed(0)
    method = _method(method_class, multi_level)
    config, segmentor = method.config, method.segmentor
    ctx = RecordingContext()
    scalars = method.training_step(_batch(), ctx)

    labels = _batch()["source"]["label"]
    levels = ["main", "aux"] if multi_level else ["main"]
    source = {"main": segmentor.main.detach(), "aux": segmentor.aux.detach()}
    target = {level: 2 * logits for level, logits in source.items()}

    # Backward 1: source cross-entropy (+ 0.1 x aux).
    expected_seg = F.cross_entropy(source["main"], labels, ignore_index=255)
    if multi_level:
        expected_seg = expected_seg + 0.1 * F.cross_entropy(source["aux"], labels, ignore_index=255)
    # Backward 2: the target terms, each weighted by its lambda.
    expected_target = torch.tensor(0.0)
    for level in levels:
        if method.minimizes_entropy:
            weight = getattr(config, f"lambda_ent_{level}")
            expected_target = expected_target + weight * _entropy(target[level])
        if method.aligns_entropy:
            discriminator = method.discriminators[level]
            fooled = _bce_toward(_affine(discriminator, _self_information(target[level])), 0)
            expected_target = expected_target + getattr(config, f"lambda_adv_{level}") * fooled
    expected = [expected_seg.item(), expected_target.item()]
    # Backwards 3+: each discriminator, source -> 0 then target -> 1, each halved.
    if method.aligns_entropy:
        for level in levels:
            discriminator = method.discriminators[level]
            expected.append(
                _bce_toward(_affine(discriminator, _self_information(source[level])), 0).item() / 2
            )
            expected.append(
                _bce_toward(_affine(discriminator, _self_information(target[level])), 1).item() / 2
            )
    assert ctx.losses == pytest.approx(expected, rel=1e-5)

    assert scalars["entropy_target"].item() == pytest.approx(_entropy(target["main"]).item())
    if method.minimizes_entropy:
        assert scalars["loss_ent"].item() == pytest.approx(_entropy(target["main"]).item())
    if method.aligns_entropy:
        # At chance the discriminator terms are ln 2 / 2 each (here the fake D is not at chance).
        assert {"loss_adv", "loss_d_source", "loss_d_target"} <= set(scalars)
        assert ("loss_adv_aux" in scalars) == multi_level


@pytest.mark.parametrize("method_class", [AdvEnt, AdvEntMinEnt])
def test_gradients_go_where_they_belong(method_class) -> None:
    """The segmentor gets source CE + target terms (through the frozen D), the discriminators
    only their own BCE on detached maps."""
    method = _method(method_class, multi_level=True)
    config, segmentor = method.config, method.segmentor
    method.training_step(_batch(), RecordingContext())
    labels = _batch()["source"]["label"]

    main = segmentor.main.detach().clone().requires_grad_()
    aux = segmentor.aux.detach().clone().requires_grad_()
    total = F.cross_entropy(main, labels, ignore_index=255) + 0.1 * F.cross_entropy(
        aux, labels, ignore_index=255
    )
    for level, logits in (("main", 2 * main), ("aux", 2 * aux)):
        frozen = AffineDiscriminator(
            method.discriminators[level].weight.item(), method.discriminators[level].bias.item()
        )
        total = total + getattr(config, f"lambda_adv_{level}") * _bce_toward(
            _affine(frozen, _self_information(logits)), 0
        )
        if method.minimizes_entropy:
            total = total + getattr(config, f"lambda_ent_{level}") * _entropy(logits)
    total.backward()
    assert torch.allclose(segmentor.main.grad, main.grad, atol=1e-7)
    assert torch.allclose(segmentor.aux.grad, aux.grad, atol=1e-7)

    for level, source_logits in (("main", segmentor.main), ("aux", segmentor.aux)):
        trained = method.discriminators[level]
        copy = AffineDiscriminator(trained.weight.item(), trained.bias.item())
        source_maps = _self_information(source_logits.detach())
        target_maps = _self_information(2 * source_logits.detach())
        loss = (
            _bce_toward(_affine(copy, source_maps), 0) / 2
            + _bce_toward(_affine(copy, target_maps), 1) / 2
        )
        loss.backward()
        assert trained.weight.grad.item() == pytest.approx(copy.weight.grad.item(), rel=1e-5)
        assert trained.bias.grad.item() == pytest.approx(copy.bias.grad.item(), rel=1e-5)


def test_discriminators_follow_the_model_levels() -> None:
    from udaseg.models import build_segmentor

    for multi_level, expected in ((False, ["main"]), (True, ["main", "aux"])):
        model = config_from_dict(
            {"model": {"blocks": [1, 1, 1, 1], "width": 4, "multi_level": multi_level}}
        ).model
        segmentor = build_segmentor(model, 19, load_weights=False)
        advent = AdvEnt(AdvEnt.Config(), segmentor, CITYSCAPES19)
        assert list(advent.discriminators) == expected
        assert set(advent.trainable_modules()) == {"segmentor", "discriminator"}
        # The D sees C-channel maps, as ADVENT's get_fc_discriminator(num_classes).
        assert advent.discriminators["main"].conv1.in_channels == 19
        minent = MinEnt(MinEnt.Config(), segmentor, CITYSCAPES19)
        assert set(minent.trainable_modules()) == {"segmentor"}


def test_registered_names_and_paper_defaults() -> None:
    assert {"minent", "advent", "advent_minent"} <= set(METHODS.names())
    minent = METHODS.get("minent").Config()
    assert (minent.lambda_ent_main, minent.lambda_ent_aux, minent.lambda_seg_aux) == (
        0.001,
        0.0002,
        0.1,
    )
    assert not hasattr(minent, "lambda_adv_main")
    advent = METHODS.get("advent").Config()
    assert (advent.lambda_adv_main, advent.lambda_adv_aux, advent.discriminator_channels) == (
        0.001,
        0.0002,
        64,
    )
    assert not hasattr(advent, "lambda_ent_main")
    both = METHODS.get("advent_minent").Config()
    assert (both.lambda_adv_main, both.lambda_ent_main, both.lambda_ent_aux) == (
        0.001,
        0.001,
        0.0002,
    )
    optimizer = AdvEnt.default_optimizers["discriminator"]
    assert optimizer["name"] == "adam" and optimizer["lr"] == 1e-4
    assert tuple(optimizer["betas"]) == (0.9, 0.99) and optimizer["weight_decay"] == 0.0
    with pytest.raises(ConfigError, match="lambda_ent_main: must be >= 0"):
        config_from_dict({"method": {"name": "minent", "lambda_ent_main": -1}})


@pytest.mark.parametrize("name", ["minent", "advent", "advent_minent"])
def test_experiment_configs_hold_the_paper_settings(name: str) -> None:
    config = load_config(EXPERIMENTS / f"{name}_gta5_cityscapes.yaml")
    assert config.method.name == name
    assert config.method.lambda_seg_aux == 0.1
    if name != "advent":
        assert (config.method.lambda_ent_main, config.method.lambda_ent_aux) == (0.001, 0.0002)
    if name != "minent":
        assert (config.method.lambda_adv_main, config.method.lambda_adv_aux) == (0.001, 0.0002)
        discriminator = config.optim["discriminator"]
        assert (discriminator.name, discriminator.lr, tuple(discriminator.betas)) == (
            "adam",
            1e-4,
            (0.9, 0.99),
        )
    model = config.model
    assert model.multi_level and model.aspp_branches == 4 and model.depth == 101
    assert model.init == ADVENT_INIT and model.input_normalization == "caffe_bgr"
    segmentor = config.optim["segmentor"]
    assert (segmentor.name, segmentor.lr, segmentor.momentum, segmentor.weight_decay) == (
        "sgd",
        2.5e-4,
        0.9,
        5e-4,
    )
    assert segmentor.head_lr_multiplier == 10.0
    assert (config.schedule.name, config.schedule.total_steps, config.schedule.power) == (
        "poly",
        250000,
        0.9,
    )
    assert config.train.steps == 120000 and config.data.batch_size == 1
    assert config.data.source.resize == (720, 1280) and config.data.target.resize == (512, 1024)


@pytest.mark.parametrize("name", ["minent", "advent", "advent_minent"])
def test_toy_configs_load(name: str) -> None:
    path = TOY / f"{name}.yaml"
    config = load_config(path)
    assert config.method.name == name


def test_advent_config_trains_on_the_real_layouts(tmp_path: Path) -> None:
    """`udaseg train .../advent_gta5_cityscapes.yaml` with tiny data and model runs 2 steps."""
    overrides = write_gta5_to_cityscapes(tmp_path)
    assert main(["train", str(EXPERIMENTS / "advent_gta5_cityscapes.yaml"), *overrides]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.method.lambda_adv_aux == 0.0002 and saved.schedule.total_steps == 250000
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "loss_d_source_aux" in metrics and "entropy_target" in metrics
