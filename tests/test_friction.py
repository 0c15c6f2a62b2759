"""Small frictions users reported: checkpoint overrides that switch a dataset kind, report
headings that name the run, the silent TensorBoard fallback, the silent loop without a progress
bar, and an evaluation bar that ignored `eval.max_images`."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.engine_helpers import tiny_config, write_tiny_benchmark
from udaseg.cli import main
from udaseg.config import EvalConfig, apply_overrides, config_from_dict
from udaseg.data.label_spaces import get_label_space
from udaseg.engine import logging as run_logging
from udaseg.engine.trainer import train
from udaseg.errors import ConfigError
from udaseg.evaluation.evaluate import evaluate
from udaseg.evaluation.report import display_path, result_title


@dataclass
class TinyRun:
    benchmark: Path
    run_dir: Path
    stderr: str


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """4 steps without a progress bar, logging every 2, TensorBoard wanted but not importable."""
    root = tmp_path_factory.mktemp("friction")
    benchmark = write_tiny_benchmark(root / "bench")
    run_dir = root / "run"
    config = tiny_config(benchmark, run_dir)
    config["train"] = {**config["train"], "log_every": 2, "tensorboard": True}
    captured = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(captured):
        # What an install without the tensorboard extra looks like to an import.
        patch.setitem(sys.modules, "torch.utils.tensorboard", None)
        train(config_from_dict(config), device="cpu")
    return TinyRun(benchmark=benchmark, run_dir=run_dir, stderr=captured.getvalue())


# --- 1. overrides that switch a section's kind -----------------------------------------------


def test_checkpoint_eval_on_another_kind_drops_the_old_kinds_keys(
    tiny_run: TinyRun, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = tiny_run.run_dir / "checkpoints" / "last.pt"
    code = main(
        [
            "eval",
            "--checkpoint",
            str(checkpoint),
            "data.val.kind=gta5",
            f"data.val.root={tiny_run.benchmark / 'gta'}",
            "data.val.split=all",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    notice = (
        "[udaseg] data.val.kind changed to gta5: dropped data.val.label_type (a cityscapes key)"
    )
    assert notice in captured.err.splitlines()
    assert re.search(r"^images\s+8$", captured.out, re.MULTILINE)  # all 8 GTA5 images scored
    # 2. the table names the checkpoint (and its step), not only the method.
    assert captured.out.splitlines()[0].split(None, 1)[1].strip() == (
        f"source_only ({checkpoint}) @ 4"
    )


def test_override_keeps_keys_the_user_sets(capsys: pytest.CaptureFixture) -> None:
    saved = {"data": {"val": {"kind": "cityscapes", "root": "cs", "label_type": "labelIds"}}}
    # Set before the kind changes, it is the user's: validation reports it, nothing drops it.
    data = apply_overrides(saved, ["data.val.label_type=labelTrainIds", "data.val.kind=gta5"])
    assert data["data"]["val"]["label_type"] == "labelTrainIds"
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match=r"data\.val\.label_type: unknown key under data\.val"):
        config_from_dict(data)
    # The saved dict itself is not edited.
    assert saved["data"]["val"]["kind"] == "cityscapes"


def test_kind_switch_drops_old_defaults_and_keeps_choices(capsys: pytest.CaptureFixture) -> None:
    saved = {
        # Cityscapes' default split `train` would be invalid for GTA5: its own default applies.
        "data": {"source": {"kind": "cityscapes", "root": "cs", "split": "train", "flip": True}},
        "method": {"name": "minent", "lambda_seg_aux": 0.5, "lambda_ent_main": 0.002},
    }
    data = apply_overrides(saved, ["data.source.kind=gta5", "method.name=advent"])
    config = config_from_dict(data)
    assert config.data.source.split == "all"
    assert (config.data.source.root, config.data.source.flip) == ("cs", True)
    assert config.method.lambda_seg_aux == 0.5  # shared, set away from its default: kept
    assert not hasattr(config.method, "lambda_ent_main")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "[udaseg] data.source.kind changed to gta5: data.source.split back to the gta5 default",
        "[udaseg] method.name changed to advent: dropped method.lambda_ent_main (a minent key)",
    ]
    # The same kind again, or a kind validation rejects, drops nothing.
    assert apply_overrides(saved, ["data.source.kind=cityscapes"]) == saved
    unknown = apply_overrides(saved, ["data.source.kind=nope"])
    assert unknown["data"]["source"]["split"] == "train"
    assert capsys.readouterr().err == ""


# --- 2. report headings name the run ----------------------------------------------------------


def test_final_table_names_the_run(tiny_run: TinyRun) -> None:
    assert f"source_only ({tiny_run.run_dir}) @ 4" in tiny_run.stderr


def test_result_title_shortens_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert result_title("advent", tmp_path / "runs" / "toy", 2000) == "advent (runs/toy) @ 2000"
    assert result_title("adaptsegnet", "https://host/x/GTA2City.pth") == (
        "adaptsegnet (GTA2City.pth)"
    )
    assert display_path("/elsewhere/weights.pth") == "/elsewhere/weights.pth"


# --- 3. TensorBoard missing -------------------------------------------------------------------


def test_missing_tensorboard_is_said_once_at_start(tiny_run: TinyRun) -> None:
    lines = tiny_run.stderr.splitlines()
    notices = [i for i, line in enumerate(lines) if line == run_logging.TENSORBOARD_MISSING]
    assert len(notices) == 1
    assert 'pip install "udaseg[tensorboard]"' in lines[notices[0]]
    first_step = next(i for i, line in enumerate(lines) if line.startswith("[udaseg] step "))
    assert notices[0] < first_step
    assert not (tiny_run.run_dir / "tensorboard").exists()


def test_tensorboard_notice_only_where_it_applies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert not run_logging.warn_if_tensorboard_missing(True, enabled=False)  # rank != 0
    assert not run_logging.warn_if_tensorboard_missing(False)  # train.tensorboard=false
    assert capsys.readouterr().err == ""
    assert run_logging.warn_if_tensorboard_missing(True)
    assert capsys.readouterr().err.strip() == run_logging.TENSORBOARD_MISSING


# --- 4. a log line per log_every without the progress bar ------------------------------------


def test_progress_lines_without_the_bar(tiny_run: TinyRun) -> None:
    lines = [line for line in tiny_run.stderr.splitlines() if line.startswith("[udaseg] step ")]
    assert [line.split()[2] for line in lines] == ["2/4", "4/4"]
    for line in lines:
        assert re.fullmatch(r"\[udaseg\] step \d/4(  loss\S* \S+)+  lr \S+  \S+ img/s", line), line
        numbers = re.findall(r"(?<=\s)[-\d.e+]+(?=\s|$)", line)
        for number in numbers:
            digits = number.split("e")[0].replace(".", "").replace("-", "").lstrip("0")
            assert len(digits) <= 4, line


def test_progress_line_names_each_optimizer() -> None:
    line = run_logging.format_progress_line(
        3, 10, {"loss/seg": 1.234567}, {"segmentor": 2.5e-4, "discriminator": 1e-4}, 12.3456
    )
    assert line == (
        "[udaseg] step 3/10  loss/seg 1.235  lr 0.00025  lr/discriminator 0.0001  12.35 img/s"
    )


# --- 5. the evaluation bar under max_images --------------------------------------------------


class CountingLoader:
    """10 batches of 2 tiny images; counts the batches read."""

    batch_size = 2

    def __init__(self) -> None:
        self.read = 0

    def __len__(self) -> int:
        return 10

    def __iter__(self):
        for _ in range(10):
            self.read += 1
            yield {
                "image": torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
                "label": torch.zeros(2, 8, 8, dtype=torch.int64),
            }


def test_eval_progress_total_follows_max_images(capsys: pytest.CaptureFixture) -> None:
    label_space = get_label_space("cityscapes19")
    loader = CountingLoader()

    def predict(images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], label_space.num_classes, 8, 8)

    result = evaluate(predict, loader, label_space, EvalConfig(max_images=5), "cpu", progress=True)
    assert result.num_images == 5
    assert loader.read == 3  # no batch is read past the limit
    bar = capsys.readouterr().err
    assert "3/3" in bar and "/10" not in bar
