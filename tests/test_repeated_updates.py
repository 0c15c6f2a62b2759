"""optim.<name>.repeated_backbone_updates: the released AdaptSegNet/ADVENT optimizer lists each
backbone tensor once per enclosing module, and SGD applies every copy."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tests.engine_helpers import tiny_config, write_tiny_benchmark
from udaseg.config import OptimizerConfig, config_from_dict, load_config
from udaseg.engine.checkpoint import read_checkpoint
from udaseg.engine.optim import RepeatedUpdateSGD, build_optimizer, released_repeats
from udaseg.engine.trainer import train
from udaseg.errors import ConfigError
from udaseg.models import build_segmentor


def test_repeat_counts_are_the_released_lists() -> None:
    """DeepLabV2-R101: the released optim_parameters() yields 314 entries for 104 tensors: the
    stem conv once, 99 block tensors 3 times, the 4 downsample convs 4 times (counted on the
    released model/deeplab_multi.py under PyTorch 2.13)."""
    config = load_config(None, ["model.depth=101", "model.multi_level=true"])
    segmentor = build_segmentor(config.model, 19, load_weights=False)
    optimizer = build_optimizer(
        segmentor, OptimizerConfig(repeated_backbone_updates=True), "segmentor"
    )
    assert isinstance(optimizer, RepeatedUpdateSGD)
    backbone, head = optimizer.param_groups
    assert backbone["name"] == "backbone" and head["name"] == "head"
    assert Counter(backbone["repeats"]) == Counter({1: 1, 3: 99, 4: 4})
    assert sum(backbone["repeats"]) == 314
    assert set(head["repeats"]) == {1}  # get_10x_lr_params lists parameters() directly
    assert released_repeats("layer3.22.conv2.weight") == 3


def test_three_repeats_are_three_sgd_updates_with_the_same_gradient() -> None:
    """By hand, for one weight w listed 3 times (lr 0.1, momentum 0.9, weight decay 0.01),
    gradient 1, w0 = 2: each copy takes d = 1 + 0.01 w, buf = 0.9 buf + d (buf starts at d),
    w -= 0.1 buf."""
    learning_rate, momentum, decay = 0.1, 0.9, 0.01
    weight, buffer = 2.0, None
    for _ in range(3):
        direction = 1.0 + decay * weight
        buffer = direction if buffer is None else momentum * buffer + direction
        weight -= learning_rate * buffer
    repeated = torch.nn.Parameter(torch.tensor([2.0]))
    once = torch.nn.Parameter(torch.tensor([2.0]))
    optimizer = RepeatedUpdateSGD(
        [
            {"params": [repeated], "repeats": [3]},
            {"params": [once], "repeats": [1]},
        ],
        lr=learning_rate,
        momentum=momentum,
        weight_decay=decay,
    )
    repeated.grad = torch.ones(1)
    once.grad = torch.ones(1)
    optimizer.step()
    assert repeated.item() == pytest.approx(weight, rel=1e-6)
    assert once.item() == pytest.approx(2.0 - learning_rate * (1.0 + decay * 2.0), rel=1e-6)
    # The groups hold their whole parameter lists again, so checkpoints see every parameter.
    assert optimizer.param_groups[0]["params"] == [repeated]
    assert optimizer.state_dict()["param_groups"][0]["repeats"] == [3]


def test_repeated_updates_need_sgd_and_a_backbone() -> None:
    with pytest.raises(ConfigError, match="repeated_backbone_updates"):
        OptimizerConfig(name="adam", repeated_backbone_updates=True).validate()
    with pytest.raises(ConfigError, match="optim.discriminator.repeated_backbone_updates"):
        build_optimizer(
            torch.nn.Conv2d(1, 1, 1),
            OptimizerConfig(repeated_backbone_updates=True),
            "discriminator",
        )


def test_a_run_with_repeated_updates_moves_the_backbone_further(tmp_path) -> None:
    """Through `train`, one step, no weight decay: a block conv (3 copies) moves 1 + 1.9 + 2.71
    = 5.61 times as far (momentum 0.9 grows its buffer with each copy), the stem and the head
    (1 copy) as far as without, and the checkpoint records the choice."""
    root = write_tiny_benchmark(tmp_path / "tiny")
    moved = {}
    for repeated in (False, True):
        raw = tiny_config(root, tmp_path / f"run{repeated}", schedule={"total_steps": 1})
        raw["optim"]["segmentor"]["repeated_backbone_updates"] = repeated
        raw["optim"]["segmentor"]["weight_decay"] = 0.0
        raw["train"].update({"steps": 1, "eval_at_end": False})
        config = config_from_dict(raw)
        torch.manual_seed(0)
        initial = build_segmentor(config.model, 19).state_dict()
        payload = read_checkpoint(train(config).final_checkpoint)
        final = payload["modules"]["segmentor"]
        moved[repeated] = {key: (final[key] - initial[key]).abs().sum().item() for key in initial}
        assert payload["config"]["optim"]["segmentor"]["repeated_backbone_updates"] is repeated
    block, stem, head = "layer2.0.conv2.weight", "conv1.weight", "layer5.conv2d_list.0.weight"
    assert moved[True][block] == pytest.approx(5.61 * moved[False][block], rel=1e-4)
    assert moved[True][stem] == pytest.approx(moved[False][stem], rel=1e-4)
    assert moved[True][head] == pytest.approx(moved[False][head], rel=1e-4)


RELEASED_WALK = [  # configs whose paper's code builds its SGD list with the modules() walk
    "adaptsegnet_single_gta5_cityscapes",
    "adaptsegnet_multi_gta5_cityscapes",
    "adaptsegnet_feature_gta5_cityscapes",
    "adaptsegnet_multi_synthia_camvid",
    "minent_gta5_cityscapes",
    "advent_gta5_cityscapes",
    "advent_minent_gta5_cityscapes",
    "bdl_gta5_cityscapes",
    "fda_gta5_cityscapes",
    "fda_beta005_gta5_cityscapes",
    "fda_beta009_gta5_cityscapes",
    "fda_mbt_self_training_gta5_cityscapes",
]


def test_exactly_the_released_walk_configs_repeat_backbone_updates() -> None:
    from udaseg.config import PACKAGED_CONFIGS, load_config

    repeating = sorted(
        path.stem
        for path in (PACKAGED_CONFIGS / "experiments").glob("*.yaml")
        if (segmentor := load_config(path).optim.get("segmentor")) is not None
        and segmentor.repeated_backbone_updates
    )
    assert repeating == sorted(RELEASED_WALK)
    for path in (PACKAGED_CONFIGS / "toy").glob("*.yaml"):
        segmentor = load_config(path).optim.get("segmentor")
        assert segmentor is None or not segmentor.repeated_backbone_updates, path.name
