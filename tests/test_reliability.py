"""Reliability: user-caused failures are one line with exit status 2, and nothing is lost.

Read-only folders: tests run as root in CI, where chmod does not stop writes, so the
permission check (`os.access`) is made to answer as it would for another user.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.engine_helpers import tiny_config, write_config, write_tiny_benchmark
from tests.test_cli import TINY_TOY as TINY_TOY_ARGUMENTS
from tests.test_score import one_image_layout
from udaseg import files
from udaseg.cli import main
from udaseg.config import load_config
from udaseg.engine import checkpoint as checkpoints
from udaseg.engine import faults
from udaseg.engine import trainer as trainer_module
from udaseg.engine.logging import RunLogger


def error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI, expect exit status 2 and return its error, checked to be one line."""
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def make_read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """chmod `folder` read-only; as root (where that stops nothing) make os.access say so."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access
        blocked = os.path.abspath(folder)

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and os.path.abspath(path) == blocked:
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    return folder


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_benchmark(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def finished_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4 (both kept) and its config file."""
    folder = tmp_path_factory.mktemp("finished")
    raw = tiny_config(tiny_root, folder / "run")
    raw["train"]["keep_checkpoints"] = 0
    config_path = write_config(folder / "config.yaml", raw)
    assert main(["train", str(config_path)]) == 0
    return folder


def copy_run(finished_run: Path, destination: Path) -> tuple[Path, Path]:
    """A copy of the finished run (its config pointing at the copy): (config path, run_dir)."""
    shutil.copytree(finished_run / "run", destination / "run")
    raw = load_config(finished_run / "config.yaml")
    config = tiny_config(Path(raw.data.source.root).parent, destination / "run")
    config["train"]["keep_checkpoints"] = 0
    return write_config(destination / "config.yaml", config), destination / "run"


# --- Errors that were tracebacks -------------------------------------------------------------


def test_predict_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me", encoding="utf-8")
    line = error_line(
        capsys, ["predict", "image.png", "--checkpoint", "x.pt", "--out", str(existing)]
    )
    assert f"--out {existing}: exists and is a file" in line
    assert existing.read_text(encoding="utf-8") == "keep me"


def test_read_only_output_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    locked = make_read_only(tmp_path / "locked", monkeypatch)
    try:
        commands = {
            "predict": ["predict", "a.png", "--checkpoint", "x.pt", "--out", str(locked / "out")],
            "train": ["train", "toy/source_only.yaml", f"run_dir={locked / 'run'}"],
            "score": ["score", "pred", "gt", "--json", str(locked / "scores.json")],
            "eval": ["eval", "--checkpoint", "x.pt", "--json", str(locked / "eval.json")],
        }
        for name, argv in commands.items():
            line = error_line(capsys, argv)
            assert f"cannot write in {locked}" in line, (name, line)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_write_failure_during_a_command_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A folder that turns read-only while the command runs (checks passed): still one line."""
    prediction, ground_truth = one_image_layout(tmp_path, [[0, 0, 0, 1], [13, 255, 13, 13]])
    output = tmp_path / "scores.json"

    def refuse(source, destination):
        raise PermissionError(errno.EACCES, "Permission denied", str(destination))

    monkeypatch.setattr(files.os, "replace", refuse)
    line = error_line(capsys, ["score", str(prediction), str(ground_truth), "--json", str(output)])
    assert f"{output}: Permission denied" in line
    assert not output.exists() and not list(tmp_path.glob(".scores.json.*.tmp"))


@pytest.mark.parametrize("failure", ["torch_runtime_error", "os_error"])
def test_disk_full_while_checkpointing(
    failure: str,
    tiny_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    raw = tiny_config(tiny_root, tmp_path / "run")
    config_path = write_config(tmp_path / "config.yaml", raw)
    real_save = torch.save

    def save_until_step_four(payload, stream, *args, **kwargs):
        if isinstance(payload, dict) and payload.get("step") == 4:
            stream.write(b"PK\x03\x04 half a checkpoint")
            if failure == "os_error":
                raise OSError(errno.ENOSPC, "No space left on device")
            # What torch's zip writer raises: many lines of C++ context.
            raise RuntimeError(
                "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                "file data/3: file write failed\n" + "frame #0: c10::...\n" * 30
            )
        return real_save(payload, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_step_four)
    line = error_line(capsys, ["train", str(config_path)])
    checkpoint_dir = tmp_path / "run" / "checkpoints"
    assert "step_000004.pt: cannot write the checkpoint" in line
    assert f"the last good checkpoint is {checkpoint_dir / 'last.pt'} (step 2)" in line
    if failure == "os_error":
        assert "the disk is full" in line
    monkeypatch.undo()
    assert checkpoints.read_checkpoint(checkpoint_dir / "last.pt")["step"] == 2
    assert sorted(path.name for path in checkpoint_dir.iterdir()) == ["last.pt", "step_000002.pt"]


def test_output_paths_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Each command names its bad output path, not the missing input it would have read first."""
    folder = tmp_path / "a_folder"
    folder.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me", encoding="utf-8")
    missing = str(tmp_path / "missing.pt")
    cases = [
        (["eval", "--checkpoint", missing, "--json", str(folder)], f"--json {folder}: is a folder"),
        (["score", "no_pred", "no_gt", "--json", str(folder)], f"--json {folder}: is a folder"),
        (
            ["predict", "no.png", "--checkpoint", missing, "--out", str(a_file)],
            f"--out {a_file}: exists and is a file",
        ),
        (
            ["pseudo-label", "--checkpoint", missing, "--policy", "argmax", "--out", str(a_file)],
            f"--out {a_file}: exists and is a file",
        ),
        (
            ["train", "toy/source_only.yaml", f"run_dir={a_file}", "data.source.root=/nowhere"],
            f"run_dir {a_file}: exists and is a file",
        ),
    ]
    for argv, expected in cases:
        assert expected in error_line(capsys, argv), argv
    assert a_file.read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.checkpoint_every=0", "config key train.checkpoint_every: must be >= 1, got 0"),
        ("train.log_every=0", "config key train.log_every: must be >= 1, got 0"),
        ("train.steps=0", "config key train.steps: must be >= 1, got 0"),
        ("train.steps=-5", "config key train.steps: must be >= 1, got -5"),
        ("train.accumulation_steps=0", "config key train.accumulation_steps: must be >= 1"),
        ("train.grad_clip_norm=0", "config key train.grad_clip_norm: must be > 0"),
        ("train.keep_checkpoints=-1", "config key train.keep_checkpoints: must be >= 0"),
        ("train.eval_every=-2", "config key train.eval_every: must be >= 0"),
        ("data.batch_size=0", "config key data.batch_size: must be >= 1, got 0"),
        ("data.num_workers=-1", "config key data.num_workers: must be >= 0, got -1"),
        ("optim.segmentor.lr=-0.1", "config key optim.segmentor.lr: must be >= 0, got -0.1"),
        ("optim.segmentor.momentum=1.5", "config key optim.segmentor.momentum: must be in [0, 1)"),
        ("optim.segmentor.weight_decay=-1", "config key optim.segmentor.weight_decay: must be >="),
        ("schedule.total_steps=0", "config key schedule.total_steps: must be >= 1"),
        ("schedule.power=-1", "config key schedule.power: must be >= 0"),
        ("schedule.warmup_ratio=2", "config key schedule.warmup_ratio: must be in [0, 1]"),
        ("eval.batch_size=0", "config key eval.batch_size: must be >= 1"),
        ("eval.window=[0,512]", "config key eval.window: must be >= 1 (each value), got [0, 512]"),
        ("eval.max_images=0", "config key eval.max_images: must be >= 1"),
        ("seed=-1", "config key seed: must be >= 0"),
    ],
)
def test_numeric_config_ranges(override: str, message: str, capsys) -> None:
    assert message in error_line(capsys, ["print-config", "toy/source_only.yaml", override])


def test_text_file_as_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("experiment notes\n", encoding="utf-8")
    line = error_line(capsys, ["eval", "--checkpoint", str(notes)])
    assert f"{notes}: not a udaseg checkpoint, nor any PyTorch file" in line


# --- Nothing lost, nothing confusing -----------------------------------------------------------


def test_json_results_are_not_overwritten_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prediction, ground_truth = one_image_layout(tmp_path, [[0, 0, 0, 1], [13, 255, 13, 13]])
    output = tmp_path / "scores.json"
    output.write_text("earlier results", encoding="utf-8")
    for argv in (
        ["score", str(prediction), str(ground_truth), "--json", str(output)],
        ["eval", "--checkpoint", str(tmp_path / "x.pt"), "--json", str(output)],
    ):
        assert f"--json {output}: exists; pass --overwrite" in error_line(capsys, argv)
    assert output.read_text(encoding="utf-8") == "earlier results"
    argv = ["score", str(prediction), str(ground_truth), "--json", str(output), "--overwrite"]
    assert main(argv) == 0
    assert "miou" in json.loads(output.read_text(encoding="utf-8"))


def test_resume_drops_replayed_metrics(finished_run: Path, tmp_path: Path) -> None:
    """A kill after step 4's log but before its checkpoint: step 3 and 4 records are replayed."""
    config_path, run_dir = copy_run(finished_run, tmp_path)
    checkpoint_dir = run_dir / "checkpoints"
    (checkpoint_dir / "step_000004.pt").unlink()
    (checkpoint_dir / "last.pt").unlink()
    os.link(checkpoint_dir / "step_000002.pt", checkpoint_dir / "last.pt")
    (run_dir / "eval" / "final.json").unlink()
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 5, "kind": "tr')  # a line cut short by the kill
    assert main(["train", str(config_path), "--resume"]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if record["kind"] == "train"] == [1, 2, 3, 4]
    assert [record["step"] for record in records if record["kind"] == "val"] == [4]


def test_tensorboard_purges_replayed_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created = {}

    class RecordingWriter:
        def __init__(self, **kwargs) -> None:
            created.update(kwargs)

    monkeypatch.setattr("torch.utils.tensorboard.SummaryWriter", RecordingWriter)
    RunLogger(tmp_path, tensorboard=True, start_step=2000)
    assert created["purge_step"] == 2001


def test_stale_temporary_files_are_removed(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config_path, run_dir = copy_run(finished_run, tmp_path)
    checkpoint_dir = run_dir / "checkpoints"
    for name in (".step_000006.pt.k2j4_x.tmp", ".last.pt.4242.tmp"):
        (checkpoint_dir / name).write_bytes(b"half a checkpoint")
    (checkpoint_dir / "notes.tmp").write_text("not ours", encoding="utf-8")
    assert main(["train", str(config_path), "train.steps=6", "--resume"]) == 0
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    names = sorted(path.name for path in checkpoint_dir.iterdir())
    assert names == ["last.pt", "notes.tmp", "step_000002.pt", "step_000004.pt", "step_000006.pt"]


def test_ctrl_c_names_the_last_checkpoint_and_the_resume_command(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    config_path = write_config(tmp_path / "config.yaml", tiny_config(tiny_root, tmp_path / "run"))
    calls = []

    def interrupt_at_step_three(point: str) -> None:
        calls.append(point)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(faults, "maybe_kill", interrupt_at_step_three)
    assert main(["train", str(config_path), "train.log_every=2"]) == 130
    lines = capsys.readouterr().err.splitlines()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    expected = (
        f"[udaseg] interrupted; the last checkpoint is {last} (step 2); resume with: "
        f"udaseg train {config_path} train.log_every=2 --resume"
    )
    assert expected in lines


def test_resume_without_last_lists_step_checkpoints(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config_path, run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "checkpoints" / "last.pt").unlink()
    line = error_line(capsys, ["train", str(config_path), "--resume"])
    assert "holds step_000004.pt, step_000002.pt" in line
    assert "--resume PATH" in line


def test_resume_after_moving_the_dataset(
    finished_run: Path, tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config_path, run_dir = copy_run(finished_run, tmp_path)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_root, moved)
    overrides = [
        f"data.source.root={moved / 'gta'}",
        f"data.target.root={moved / 'cs'}",
        f"data.val.root={moved / 'cs'}",
        "train.steps=6",
    ]
    assert main(["train", str(config_path), *overrides, "--resume"]) == 0
    assert checkpoints.read_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 6


def test_resume_of_a_finished_run_says_so(
    finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    config_path, run_dir = copy_run(finished_run, tmp_path)

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a finished run must not be evaluated again")

    monkeypatch.setattr(trainer_module, "evaluate", no_evaluation)
    assert main(["train", str(config_path), "--resume"]) == 0
    error = capsys.readouterr().err
    assert f"run_dir {run_dir} already finished its 4 steps; raise train.steps to continue" in error
    assert "trained" not in error


def test_disk_full_before_the_first_checkpoint_says_none_was_written(tmp_path: Path) -> None:
    message = checkpoints._write_failure(
        tmp_path, tmp_path / "step_000002.pt", OSError(errno.ENOSPC, "No space left on device")
    )
    assert "cannot write the checkpoint: the disk is full" in message
    assert message.endswith("the last good checkpoint is none (none was written yet)")
    assert "\n" not in message


# --- A newcomer's first minutes ------------------------------------------------------------------


def test_config_is_accepted_as_an_option_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--config CONFIG` (predict's form) works for eval and pseudo-label; two configs do not."""
    missing = tmp_path / "missing.pth"
    line = error_line(
        capsys, ["eval", "--config", "toy/source_only.yaml", "--weights", str(missing)]
    )
    assert f"{missing}: weights file not found" in line
    line = error_line(
        capsys,
        ["eval", "toy/source_only.yaml", "--config", "toy/oracle.yaml", "--weights", str(missing)],
    )
    assert "two configs (toy/source_only.yaml and --config toy/oracle.yaml): give one" in line
    argv = ["pseudo-label", "a.yaml", "--config", "b.yaml", "--checkpoint", str(missing)]
    line = error_line(capsys, [*argv, "--policy", "argmax", "--out", str(tmp_path / "labels")])
    assert "two configs (a.yaml and --config b.yaml): give one" in line
    # train and print-config take both forms too; an override after --config stays an override.
    assert main(["print-config", "--config", "toy/source_only.yaml", "train.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out
    line = error_line(capsys, ["train", "--config", "toy/source_only.yaml", "train.steps=0"])
    assert "config key train.steps: must be >= 1" in line
    assert "no config: give CONFIG" in error_line(capsys, ["train"])


# --- A newcomer's first minutes ----------------------------------------------------------------


def test_toy_generation_shows_a_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["make-toy", "--out", str(tmp_path / "toy"), *TINY_TOY_ARGUMENTS])
    captured = capsys.readouterr()
    assert code == 0
    # The bar counts images to the total (8 + 6 + 4) and gives a rate.
    assert "18/18" in captured.err and "img/s" in captured.err
    # The closing lines say that shipped configs read the cache, and how to use this folder.
    assert "read the cached copy" in captured.out
    assert f"data.source.root={tmp_path / 'toy' / 'source'}" in captured.out


def test_print_config_writes_one_yaml_style(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["print-config", "toy/source_only.yaml"]) == 0
    text = capsys.readouterr().out
    # Block style only: no inline `[64, 128]` lists or `{a: 1}` mappings beside block ones
    # (an empty one can only be written `{}` or `[]`).
    assert not re.search(r"\[[^\]]|\{[^}]", text), text
    assert "crop:\n    - 64\n    - 128\n" in text
