"""The engine: every registered method trains, checkpoints resume exactly, DDP keeps ranks equal."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.engine_helpers import TINY_MODEL, tiny_config, write_config, write_tiny_benchmark
from udaseg.config import config_from_dict
from udaseg.data.datasets import build_dataset
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.data.loaders import TrainStream
from udaseg.engine.checkpoint import read_checkpoint
from udaseg.engine.trainer import TrainContext, _to_device, train
from udaseg.errors import CheckpointError, ConfigError
from udaseg.methods.base import Method
from udaseg.models import build_segmentor
from udaseg.registry import METHODS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_benchmark(tmp_path_factory.mktemp("tiny"))


def _batch(config, role: str, step: int = 0) -> dict:
    dataset = build_dataset(getattr(config.data, role), CITYSCAPES19, role)
    stream = TrainStream(dataset, batch_size=2, seed=0, name=role)
    return _to_device(next(stream.batches(step)), torch.device("cpu"), None)


def _context(step: int = 0) -> TrainContext:
    return TrainContext(
        step=step,
        total_steps=4,
        device=torch.device("cpu"),
        precision="fp32",
        scaler=torch.amp.GradScaler("cpu", enabled=False),
    )


def _states_equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("multi_level", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("method_name", METHODS.names())
def test_every_method_trains_one_step(
    method_name: str, multi_level: bool, tiny_root: Path, tmp_path: Path
) -> None:
    """Losses finite, every trainable parameter gets a gradient, teachers get none."""
    torch.manual_seed(0)
    raw = tiny_config(tiny_root, tmp_path / "run", method={"name": method_name})
    raw["model"] = {**TINY_MODEL, "multi_level": multi_level}
    config = config_from_dict(raw)
    segmentor = build_segmentor(config.model, CITYSCAPES19.num_classes)
    method: Method = METHODS.get(method_name)(config.method, segmentor, CITYSCAPES19)
    method.train(True)
    batch = {"source": _batch(config, "source"), "target": _batch(config, "target")}
    assert "label" not in batch["target"], "the target training split must come without labels"
    outputs = method.training_step(batch, _context())
    scalars = {key: float(value) for key, value in outputs.items() if key != "visuals"}
    assert scalars, "a training step reports its losses"
    assert all(math.isfinite(value) for value in scalars.values()), scalars
    for name, module in method.trainable_modules().items():
        missing = [
            p
            for p, param in module.named_parameters()
            if param.requires_grad and param.grad is None
        ]
        assert not missing, f"{name}: no gradient for {missing[:3]}"
        gradients = [param.grad for param in module.parameters() if param.requires_grad]
        assert all(torch.isfinite(g).all() for g in gradients)
        assert sum(float(g.abs().sum()) for g in gradients) > 0
    for name, module in method.extra_modules().items():
        assert all(param.grad is None for param in module.parameters()), (
            f"teacher {name} got a gradient"
        )
    logits = method.predict(batch["target"]["image"])
    assert logits.shape[:2] == (2, CITYSCAPES19.num_classes)


@pytest.mark.parametrize("method_name", METHODS.names())
def test_every_method_resumes_exactly(method_name: str, tiny_root: Path, tmp_path: Path) -> None:
    """2 steps + checkpoint + resume for 2 more == 4 steps straight (CPU, deterministic)."""
    sections = {"method": {"name": method_name}, "schedule": {"total_steps": 4}}
    straight = config_from_dict(tiny_config(tiny_root, tmp_path / "straight", **sections))
    train(straight)
    first_half = tiny_config(tiny_root, tmp_path / "resumed", **sections)
    first_half["train"]["steps"] = 2
    train(config_from_dict(first_half))
    second_half = tiny_config(tiny_root, tmp_path / "resumed", **sections)
    train(config_from_dict(second_half), resume=True)
    expected = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert resumed["step"] == expected["step"] == 4
    for name, state in expected["modules"].items():
        assert _states_equal(state, resumed["modules"][name]), f"{name} differs after resume"
    for name, state in expected["optimizers"].items():
        for key, value in state["state"].items():
            for slot, tensor in value.items():
                if torch.is_tensor(tensor):
                    assert torch.equal(tensor, resumed["optimizers"][name]["state"][key][slot])
    # Non-module state (prototypes, memory banks, counters) resumes exactly too.
    assert _values_equal(expected["method_state"], resumed["method_state"]), "method_state differs"


def _values_equal(first, second) -> bool:
    """Nested dicts/lists of tensors and plain values, compared exactly."""
    if isinstance(first, dict):
        return (
            isinstance(second, dict)
            and first.keys() == second.keys()
            and all(_values_equal(first[key], second[key]) for key in first)
        )
    if isinstance(first, list | tuple):
        return len(first) == len(second) and all(map(_values_equal, first, second))
    if torch.is_tensor(first):
        return torch.is_tensor(second) and torch.equal(first, second)
    return first == second


def test_checkpoint_holds_everything(tiny_root: Path, tmp_path: Path) -> None:
    config = config_from_dict(tiny_config(tiny_root, tmp_path / "run"))
    result = train(config)
    payload = read_checkpoint(result.final_checkpoint)
    assert payload["step"] == 4
    assert set(payload) >= {"config", "modules", "optimizers", "rng", "model_facts", "method_state"}
    # The quirks that change what the weights mean are recorded explicitly.
    assert payload["model_facts"]["aspp_branches"] == 4
    assert payload["model_facts"]["bn"] == "half_frozen"
    assert payload["config"]["model"]["input_normalization"] == "caffe_bgr"
    # Periodic checkpoints are pruned to keep_checkpoints; last.pt is the newest.
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["last.pt", "step_000002.pt", "step_000004.pt"]
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"kind": "train"') == 4
    assert (tmp_path / "run" / "eval" / "final.json").is_file()


def test_fresh_run_never_overwrites_checkpoints(tiny_root: Path, tmp_path: Path) -> None:
    config = config_from_dict(tiny_config(tiny_root, tmp_path / "run"))
    train(config)
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds checkpoints: pass --resume"):
        train(config)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_refuses_a_changed_config(tiny_root: Path, tmp_path: Path) -> None:
    train(config_from_dict(tiny_config(tiny_root, tmp_path / "run")))
    changed = tiny_config(tiny_root, tmp_path / "run", optim={"segmentor": {"lr": 0.5}})
    with pytest.raises(ConfigError, match=r"changed: optim.segmentor.lr"):
        train(config_from_dict(changed), resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(config_from_dict(tiny_config(tiny_root, tmp_path / "empty")), resume=True)


def test_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    import datetime

    # Any object outside weights_only's allow-list stands for "code that runs on load".
    torch.save(
        {"format": "udaseg-checkpoint", "thing": datetime.datetime.now()}, tmp_path / "evil.pt"
    )
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        read_checkpoint(tmp_path / "evil.pt")


def _run_cli(arguments: list[str], **kwargs) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "udaseg", *arguments], cwd=REPO, env=environment, **kwargs
    )


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_root: Path, tmp_path: Path) -> None:
    sections = {
        "train": {
            "steps": 30,
            "checkpoint_every": 3,
            "log_every": 1,
            "deterministic": True,
            "progress_bar": False,
            "tensorboard": False,
            "eval_at_end": False,
        }
    }
    straight = write_config(
        tmp_path / "straight.yaml", tiny_config(tiny_root, tmp_path / "straight", **sections)
    )
    killed = write_config(
        tmp_path / "killed.yaml", tiny_config(tiny_root, tmp_path / "killed", **sections)
    )
    assert _run_cli(["train", str(straight)]).wait(timeout=240) == 0

    process = _run_cli(["train", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while (
        not (checkpoints / "step_000009.pt").exists()
        and process.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    interrupted_at = read_checkpoint(checkpoints / "last.pt")["step"]
    assert 9 <= interrupted_at < 30
    assert _run_cli(["train", str(killed), "--resume"]).wait(timeout=240) == 0

    expected = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = read_checkpoint(checkpoints / "last.pt")
    assert resumed["step"] == 30
    assert _states_equal(expected["modules"]["segmentor"], resumed["modules"]["segmentor"])


def test_two_process_ddp_keeps_ranks_identical(tiny_root: Path, tmp_path: Path) -> None:
    config = tiny_config(
        tiny_root,
        tmp_path / "run",
        train={
            "steps": 4,
            "checkpoint_every": 4,
            "log_every": 1,
            "deterministic": True,
            "progress_bar": False,
            "tensorboard": False,
        },
    )
    config["data"]["batch_size"] = 1
    config_path = write_config(tmp_path / "ddp.yaml", config)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "ddp_worker.py"),
        str(config_path),
        str(tmp_path),
    ]
    completed = subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert _states_equal(rank0, rank1), "ranks diverged"
    written = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["modules"]["segmentor"]
    assert _states_equal(rank0, written), "rank 0's checkpoint is not its model"
    initial = build_segmentor(config_from_dict(config).model, 19).state_dict()
    assert not torch.equal(initial["conv1.weight"], rank0["conv1.weight"]), (
        "training changed nothing"
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes(
    precision: str, tiny_root: Path, tmp_path: Path
) -> None:
    """Autocast runs the step; fp16 also scales the loss, and the scaler state is checkpointed."""
    sections = {"schedule": {"total_steps": 4}, "method": {"name": "adaptsegnet"}}
    raw = tiny_config(tiny_root, tmp_path / "run", **sections)
    raw["train"]["precision"] = precision
    raw["train"]["channels_last"] = True
    result = train(config_from_dict(raw))
    payload = read_checkpoint(result.final_checkpoint)
    losses = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(math.isfinite(record["loss_seg"]) for record in losses if record["kind"] == "train")
    if precision == "fp16":
        assert payload["scaler"] is not None and payload["scaler"]["scale"] > 0
    else:
        assert payload["scaler"] is None
    assert all(
        torch.isfinite(tensor).all()
        for tensor in payload["modules"]["segmentor"].values()
        if tensor.is_floating_point()
    )


def test_periodic_evaluation_and_tensorboard(tiny_root: Path, tmp_path: Path) -> None:
    raw = tiny_config(
        tiny_root,
        tmp_path / "run",
        train={
            "steps": 4,
            "checkpoint_every": 2,
            "log_every": 1,
            "eval_every": 2,
            "deterministic": True,
            "progress_bar": False,
            "tensorboard": True,
        },
    )
    train(config_from_dict(raw))
    evaluations = sorted(p.name for p in (tmp_path / "run" / "eval").iterdir())
    assert evaluations == ["final.json", "step_000002.json"]
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if r["kind"] == "val"] == [2, 4]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
