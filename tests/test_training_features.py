"""Engine features for teachers, GANs and stages: per-optimizer schedules, weight-decay
multipliers, fp16 with alternating updates, init from checkpoints, setup, visuals, throughput;
and the small methods built on them (adabn, self_training) with hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.engine_helpers import (
    TINY_MODEL,
    RecordingContext,
    tiny_config,
    write_tiny_benchmark,
)
from udaseg.config import OptimizerConfig, config_from_dict
from udaseg.data.datasets import build_dataset
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.data.loaders import TrainStream
from udaseg.engine.checkpoint import read_checkpoint
from udaseg.engine.logging import RunLogger
from udaseg.engine.optim import build_optimizer
from udaseg.engine.trainer import _to_device, initialise_modules, train
from udaseg.errors import CheckpointError, ConfigError
from udaseg.methods.adabn import AdaBN
from udaseg.methods.base import Method, SetupContext
from udaseg.methods.self_training import SelfTraining, SelfTrainingConfig
from udaseg.methods.teachers import ema_update, frozen_copy
from udaseg.models import build_segmentor
from udaseg.registry import METHODS


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_benchmark(tmp_path_factory.mktemp("tiny"))


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["kind"] == "train"]


def test_each_optimizer_follows_its_own_schedule_and_is_logged(
    tiny_root: Path, tmp_path: Path
) -> None:
    raw = tiny_config(
        tiny_root,
        tmp_path / "run",
        method={"name": "adaptsegnet"},
        optim={
            "segmentor": {"lr": 0.01},
            "discriminator": {"name": "adam", "lr": 1e-4, "schedule": {"name": "constant"}},
        },
        schedule={"name": "poly", "power": 0.9, "total_steps": 4},
    )
    train(config_from_dict(raw))
    records = _records(tmp_path / "run")
    # The record at completed step k carries the rates used for step k - 1.
    expected = [0.01 * (1 - step / 4) ** 0.9 for step in range(4)]
    assert [record["lr/segmentor"] for record in records] == pytest.approx(expected)
    assert [record["lr/discriminator"] for record in records] == pytest.approx([1e-4] * 4)
    assert all(record["time/step_seconds"] > 0 for record in records)
    assert all(record["time/images_per_second"] > 0 for record in records)
    assert all(record["memory/peak_mb"] > 0 for record in records)


def test_linear_decay_is_constant_then_linear_to_zero() -> None:
    from udaseg.config import ScheduleConfig
    from udaseg.engine.optim import lr_factor

    # CycleGAN's niter = niter_decay: 1 for the first half of 8 steps, then 4/4, 3/4, ... 1/4.
    halves = ScheduleConfig(name="linear_decay")
    factors = [lr_factor(step, halves, train_steps=8) for step in range(8)]
    assert factors == pytest.approx([1, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    early = ScheduleConfig(name="linear_decay", decay_start=2, total_steps=10)
    assert lr_factor(1, early, 99) == 1.0
    assert lr_factor(6, early, 99) == pytest.approx(0.5)  # (10 - 6) / (10 - 2)
    assert lr_factor(12, early, 99) == 0.0  # past the horizon: never negative
    with pytest.raises(ConfigError, match="decay_start: must be below total_steps"):
        config_from_dict(
            {"schedule": {"name": "linear_decay", "decay_start": 10, "total_steps": 10}}
        )
    with pytest.raises(ConfigError, match="decay_start: must be below the total steps"):
        lr_factor(0, ScheduleConfig(name="linear_decay", decay_start=8), train_steps=8)


def test_an_optimizer_for_no_module_is_an_error(tiny_root: Path, tmp_path: Path) -> None:
    raw = tiny_config(
        tiny_root, tmp_path / "run", method={"name": "adaptsegnet"}, optim={"discriminatr": {}}
    )
    with pytest.raises(ConfigError, match=r"optim.discriminatr: .*valid names: segmentor, discr"):
        train(config_from_dict(raw))


def test_weight_decay_multipliers_per_group() -> None:
    segmentor = build_segmentor(config_from_dict({"model": TINY_MODEL}).model, 19)
    config = OptimizerConfig(weight_decay=5e-4, weight_decay_multipliers={"head": 0.0})
    optimizer = build_optimizer(segmentor, config, "segmentor")
    decays = {group["name"]: group["weight_decay"] for group in optimizer.param_groups}
    assert decays == {"backbone": 5e-4, "head": 0.0}
    with pytest.raises(ConfigError, match=r"weight_decay_multipliers.norm: .*groups: backbone"):
        build_optimizer(segmentor, OptimizerConfig(weight_decay_multipliers={"norm": 0.0}), "x")


class _Alternating(Method):
    """Odd steps train only the segmentor, even steps only a second module: a GAN's rhythm."""

    Config = SelfTrainingConfig  # any config with a `name` field

    def __init__(self, config: Any, segmentor: nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        self.critic = nn.Conv2d(19, 1, 1)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"segmentor": self.segmentor, "critic": self.critic}

    def training_step(self, batch: dict, ctx: Any) -> dict[str, Any]:
        logits = self.segmentor(batch["source"]["image"])["logits"]
        if ctx.step % 2 == 0:
            loss = logits.float().square().mean()
        else:
            loss = self.critic(logits.detach()).float().square().mean()
        ctx.backward(loss)
        return {"loss": loss.detach()}


def test_fp16_with_alternating_updates(tiny_root: Path, tmp_path: Path) -> None:
    """Each fp16 step leaves one module without gradients; only the other one steps."""
    METHODS._entries["_alternating"] = _Alternating
    try:
        raw = tiny_config(
            tiny_root,
            tmp_path / "run",
            method={"name": "_alternating"},
            optim={"segmentor": {"lr": 0.01}, "critic": {"name": "adam", "lr": 0.01}},
        )
        raw["train"]["precision"] = "fp16"
        result = train(config_from_dict(raw))
    finally:
        del METHODS._entries["_alternating"]
    payload = read_checkpoint(result.final_checkpoint)
    assert payload["step"] == 4
    # Adam stepped the critic twice (steps 1 and 3), never on the segmentor's steps.
    assert all(
        int(state["step"]) == 2 for state in payload["optimizers"]["critic"]["state"].values()
    )
    assert payload["scaler"]["scale"] > 0


def test_init_from_a_checkpoint_module(tiny_root: Path, tmp_path: Path) -> None:
    raw = tiny_config(tiny_root, tmp_path / "first", method={"name": "adaptsegnet"})
    raw["train"]["steps"] = 2
    checkpoint = train(config_from_dict(raw)).final_checkpoint
    saved = read_checkpoint(checkpoint)["modules"]
    model_config = config_from_dict({"model": TINY_MODEL}).model
    student = build_segmentor(model_config, 19)
    teacher = frozen_copy(build_segmentor(model_config, 19))
    initialise_modules(
        {"segmentor": str(checkpoint), "teacher": f"{checkpoint}#segmentor"},
        {"segmentor": student, "teacher": teacher},
    )
    for module in (student, teacher):
        state = module.state_dict()
        assert all(torch.equal(state[key], saved["segmentor"][key]) for key in state)
    with pytest.raises(CheckpointError, match=r"has no module 'critic'.*segmentor, discriminator"):
        initialise_modules({"segmentor": f"{checkpoint}#critic"}, {"segmentor": student})
    with pytest.raises(ConfigError, match=r"init.teacher: the method has no module 'teacher'"):
        initialise_modules({"teacher": str(checkpoint)}, {"segmentor": student})
    # A plain state_dict in the released layout loads into a segmentor; `#` then means nothing.
    released = tmp_path / "released.pth"
    torch.save(saved["segmentor"], released)
    fresh = build_segmentor(model_config, 19)
    initialise_modules({"segmentor": str(released)}, {"segmentor": fresh})
    assert torch.equal(fresh.state_dict()["conv1.weight"], saved["segmentor"]["conv1.weight"])
    with pytest.raises(CheckpointError, match=r"not a udaseg checkpoint, so `#segmentor`"):
        initialise_modules({"segmentor": f"{released}#segmentor"}, {"segmentor": fresh})

    # Through the config: a fresh run starts from those weights (lr 0 keeps them).
    raw = tiny_config(tiny_root, tmp_path / "second", optim={"segmentor": {"lr": 0.0}})
    raw["init"] = {"segmentor": f"{checkpoint}#segmentor"}
    raw["train"]["steps"] = 1
    second = read_checkpoint(train(config_from_dict(raw)).final_checkpoint)["modules"]
    assert torch.equal(second["segmentor"]["conv1.weight"], saved["segmentor"]["conv1.weight"])


def test_ema_update_by_hand() -> None:
    teacher, student = nn.BatchNorm1d(1), nn.BatchNorm1d(1)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
        teacher.running_mean.fill_(10.0)
        student.running_mean.fill_(20.0)
    ema_update(teacher, student, alpha=0.75, buffers="keep")
    assert teacher.weight.item() == 1.5  # 0.75 * 1 + 0.25 * 3
    assert teacher.running_mean.item() == 10.0
    ema_update(teacher, student, alpha=0.5, buffers="ema")
    assert teacher.weight.item() == 2.25  # 0.5 * 1.5 + 0.5 * 3
    assert teacher.running_mean.item() == 15.0
    ema_update(teacher, student, alpha=0.5, buffers="copy")
    assert teacher.running_mean.item() == 20.0
    assert student.weight.item() == 3.0, "the student is never changed"
    with pytest.raises(ValueError, match="alpha"):
        ema_update(teacher, student, alpha=1.5)


def _target_batches(config, steps: int) -> list[dict]:
    dataset = build_dataset(config.data.target, CITYSCAPES19, "target")
    stream = TrainStream(dataset, batch_size=2, seed=0, name="target")
    iterator = stream.batches(0)
    return [_to_device(next(iterator), torch.device("cpu"), None) for _ in range(steps)]


def test_adabn_statistics_are_the_target_average(tiny_root: Path, tmp_path: Path) -> None:
    """After two batches, the first BN's running mean is the mean of the two batch means."""
    config = config_from_dict(tiny_config(tiny_root, tmp_path / "run", method={"name": "adabn"}))
    segmentor = build_segmentor(config.model, 19)
    method = AdaBN(config.method, segmentor, CITYSCAPES19)
    assert method.trainable_modules() == {}, "adabn changes no weight"
    method.setup(SetupContext(datasets={}, resumed=False, device=torch.device("cpu")))
    method.train(True)
    batches = _target_batches(config, 2)
    with torch.no_grad():
        batch_means = [
            segmentor.conv1(segmentor.normalize(batch["image"])).mean(dim=(0, 2, 3))
            for batch in batches
        ]
        for batch in batches:
            method.training_step({"target": batch}, RecordingContext())
    expected = (batch_means[0] + batch_means[1]) / 2
    assert torch.allclose(segmentor.bn1.running_mean, expected, atol=1e-5)
    assert int(segmentor.bn1.num_batches_tracked) == 2

    # A resumed run keeps the statistics it restored; only a fresh start forgets the source's.
    method.setup(SetupContext(datasets={}, resumed=True, device=torch.device("cpu")))
    assert torch.allclose(segmentor.bn1.running_mean, expected, atol=1e-5)
    frozen = config_from_dict(
        tiny_config(tiny_root, tmp_path / "f", model={**TINY_MODEL, "bn": "frozen"})
    )
    with pytest.raises(ConfigError, match="bn: half_frozen or trainable"):
        AdaBN(config.method, build_segmentor(frozen.model, 19), CITYSCAPES19).setup(
            SetupContext(datasets={}, resumed=False, device=torch.device("cpu"))
        )


class _FixedLogits(nn.Module):
    """Returns the same logits [1, 2, 1, 2] whatever the images: losses by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.logits}


def test_self_training_losses_by_hand() -> None:
    # Pixel 0: logits (0, 0); pixel 1: logits (0, ln 3), so p(class 1) = 3/4 there.
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])
    method = SelfTraining(SelfTrainingConfig(lambda_target=0.5), _FixedLogits(logits), None)
    images = torch.zeros(1, 3, 1, 2)
    batch = {
        "source": {"image": images, "label": torch.tensor([[[0, 255]]])},
        "target": {"image": images, "pseudo_label": torch.tensor([[[255, 1]]])},
    }
    context = RecordingContext()
    scalars = method.training_step(batch, context)
    # Source: only pixel 0 counts, CE = ln 2. Target: only pixel 1, CE = -ln(3/4), x 0.5.
    assert context.losses == pytest.approx([math.log(2.0), 0.5 * math.log(4.0 / 3.0)])
    assert float(scalars["loss_seg_target"]) == pytest.approx(math.log(4.0 / 3.0))


def test_self_training_needs_pseudo_labels(tiny_root: Path, tmp_path: Path) -> None:
    raw = tiny_config(tiny_root, tmp_path / "run", method={"name": "self_training"})
    del raw["data"]["target"]["pseudo_labels"]
    with pytest.raises(ConfigError, match="data.target.pseudo_labels: method self_training"):
        train(config_from_dict(raw))


def test_visuals_reach_the_logger(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged: list[tuple[int, dict]] = []
    monkeypatch.setattr(
        RunLogger, "images", lambda self, step, images: logged.append((step, images))
    )
    raw = tiny_config(tiny_root, tmp_path / "run", method={"name": "self_training"})
    raw["train"]["visual_every"] = 2
    train(config_from_dict(raw))
    assert [step for step, _ in logged] == [2, 4]
    images = logged[0][1]
    assert set(images) == {"target/image", "target/pseudo_label", "target/prediction"}
    assert all(image.dtype == np.uint8 and image.ndim == 3 for image in images.values())
    assert images["target/pseudo_label"].shape[-1] == 3
