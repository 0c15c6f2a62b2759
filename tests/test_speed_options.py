"""Speed options (train.channels_last, optimizer_implementation, compile, precision) change how a
step is computed, not what it computes: 2 training steps with each option must move the weights
as the default does, within a tolerance that a genuinely different run exceeds by far."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine_helpers import tiny_config, write_tiny_benchmark
from udaseg.config import EvalConfig, OptimizerConfig, config_from_dict
from udaseg.data.datasets import build_dataset
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.data.loaders import eval_loader
from udaseg.engine import trainer
from udaseg.engine.checkpoint import read_checkpoint
from udaseg.engine.optim import build_optimizer
from udaseg.engine.trainer import train
from udaseg.evaluation.evaluate import evaluate
from udaseg.losses.segmentation import segmentation_loss
from udaseg.models import build_segmentor
from udaseg.registry import METHODS

# Relative size of the difference between two runs' weight updates (see _update_difference).
FP32_TOLERANCE = 1e-3
BF16_TOLERANCE = 0.2


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_benchmark(tmp_path_factory.mktemp("tiny"))


def _run(root: Path, run_dir: Path, seed: int = 0, **train_options) -> dict[str, dict]:
    """2 AdaptSegNet steps (SGD segmentor, Adam discriminator); the final modules' states.

    Two, so that the optimizers' state (momentum, Adam's moments) enters the second update; more
    would let the tiny model's chaotic first steps amplify bf16's rounding.
    """
    raw = tiny_config(
        root,
        run_dir,
        seed=seed,
        method={"name": "adaptsegnet"},
        schedule={"total_steps": 2},
    )
    raw["train"].update({"steps": 2, "eval_at_end": False, **train_options})
    result = train(config_from_dict(raw))
    return read_checkpoint(result.final_checkpoint)["modules"]


def _update_difference(initial: dict, reference: dict, other: dict) -> float:
    """||(other - initial) - (reference - initial)|| / ||reference - initial|| over float tensors.

    The weight update, not the weights: the update is what an option could get wrong, and the
    weights themselves barely move in 2 steps.
    """
    difference = reference_norm = 0.0
    for key, start in initial.items():
        if not start.is_floating_point() or key.endswith(("running_mean", "running_var")):
            continue
        reference_update = reference[key].float() - start.float()
        difference += (other[key].float() - reference[key].float()).pow(2).sum().item()
        reference_norm += reference_update.pow(2).sum().item()
    return (difference / reference_norm) ** 0.5


@pytest.fixture(scope="module")
def default_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory = tmp_path_factory.mktemp("runs")
    raw = tiny_config(tiny_root, directory / "x", method={"name": "adaptsegnet"})
    initial = build_segmentor(config_from_dict(raw).model, 19).state_dict()
    torch.manual_seed(0)
    return {
        "initial": initial,
        "reference": _run(tiny_root, directory / "default"),
        "other_seed": _run(tiny_root, directory / "seed1", seed=1),
    }


def test_the_tolerance_tells_a_different_run(default_run: dict) -> None:
    """Another seed (other crops and batches) moves the weights differently by far more than
    either tolerance: a broken option could not pass as noise."""
    difference = _update_difference(
        default_run["initial"],
        default_run["reference"]["segmentor"],
        default_run["other_seed"]["segmentor"],
    )
    assert difference > 4 * BF16_TOLERANCE


@pytest.mark.parametrize(
    ("options", "tolerance"),
    [
        ({"channels_last": True}, FP32_TOLERANCE),
        ({"optimizer_implementation": "foreach"}, FP32_TOLERANCE),
        ({"optimizer_implementation": "fused"}, FP32_TOLERANCE),
        ({"precision": "bf16"}, BF16_TOLERANCE),
        ({"compile": True}, FP32_TOLERANCE),
    ],
    ids=["channels_last", "foreach", "fused", "bf16", "compile"],
)
def test_speed_option_trains_like_the_default(
    options: dict,
    tolerance: float,
    default_run: dict,
    tiny_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Inductor's code generation takes minutes on 2 cores even for the tiny model; aot_eager
    # runs the same graph capture and autograd decomposition in seconds.
    monkeypatch.setattr(trainer, "COMPILE_BACKEND", "aot_eager")
    modules = _run(tiny_root, tmp_path / "run", **options)
    for name in ("segmentor", "discriminator"):
        reference = default_run["reference"][name]
        assert modules[name].keys() == reference.keys(), f"{name}: state_dict keys changed"
    difference = _update_difference(
        default_run["initial"], default_run["reference"]["segmentor"], modules["segmentor"]
    )
    assert difference < tolerance, f"{options}: update differs by {difference:.2e}"


@pytest.mark.parametrize("implementation", ["foreach", "fused"])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizer_implementation_reaches_torch(name: str, implementation: str) -> None:
    module = torch.nn.Conv2d(3, 4, 3)
    optimizer = build_optimizer(module, OptimizerConfig(name=name), "segmentor", implementation)
    assert optimizer.defaults[implementation] is True
    default = build_optimizer(module, OptimizerConfig(name=name), "segmentor")
    assert not default.defaults.get("fused") and default.defaults.get("foreach") is None


def test_compile_modules_compiles_every_module_in_place() -> None:
    """In place: the modules keep their state_dict keys, so checkpoints stay loadable."""
    config = config_from_dict(
        tiny_config(Path("root"), Path("run"), method={"name": "adaptsegnet"})
    )
    segmentor = build_segmentor(config.model, 19)
    method = METHODS.get("adaptsegnet")(config.method, segmentor, CITYSCAPES19)
    keys = {name: list(module.state_dict()) for name, module in method.all_modules().items()}
    trainer.compile_modules(method)
    for name, module in method.all_modules().items():
        assert module._compiled_call_impl is not None, f"{name} was not compiled"
        assert list(module.state_dict()) == keys[name]


@pytest.mark.parametrize(
    ("options", "largest_disagreement"),
    [({"channels_last": True}, 0.0), ({"precision": "bf16"}, 0.02)],
    ids=["channels_last", "bf16"],
)
def test_evaluation_speed_options_score_like_the_default(
    options: dict, largest_disagreement: float, tiny_root: Path
) -> None:
    """The confusion matrix moves by at most `largest_disagreement` of the pixels (bf16 may flip
    near-ties of argmax), the protocol records the precision, and logits stay float32."""
    raw = tiny_config(tiny_root, tiny_root / "unused", method={"name": "source_only"})
    config = config_from_dict(raw)
    torch.manual_seed(0)
    segmentor = build_segmentor(config.model, 19).eval()
    dataset = build_dataset(config.data.val, CITYSCAPES19, "val")
    seen_dtypes = []

    def forward(images: torch.Tensor) -> torch.Tensor:
        logits = segmentor(images)["logits"]
        seen_dtypes.append(logits.dtype)
        return logits

    default = evaluate(forward, eval_loader(dataset), CITYSCAPES19, EvalConfig(), "cpu")
    faster = evaluate(forward, eval_loader(dataset), CITYSCAPES19, EvalConfig(**options), "cpu")
    reference, other = np.asarray(default.confusion_matrix), np.asarray(faster.confusion_matrix)
    assert reference.sum() == other.sum() > 0
    moved = np.abs(reference - other).sum() / 2  # each moved pixel leaves one cell, enters one
    assert moved <= largest_disagreement * reference.sum(), f"{moved} of {reference.sum()}"
    assert faster.protocol["precision"] == options.get("precision", "fp32")
    if "precision" in options:
        assert torch.bfloat16 in seen_dtypes  # autocast did reach the network


def test_segmentation_loss_needs_no_host_sync_and_stays_float32() -> None:
    """The mean over non-void pixels without testing for an all-void crop on the host; bf16
    logits are upsampled and scored in float32."""
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]], requires_grad=True)  # [1, 2, 1, 2]
    labels = torch.tensor([[[0, 255]]])
    # One valid pixel with logits (2, 0) and class 0: -log(e^2 / (e^2 + 1)).
    expected = -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1))
    assert torch.allclose(segmentation_loss(logits, labels), expected)

    void = segmentation_loss(logits, torch.full((1, 1, 2), 255))
    void.backward()
    assert void.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))

    low = segmentation_loss(logits.detach().to(torch.bfloat16), labels)
    assert low.dtype == torch.float32
