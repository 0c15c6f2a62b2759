"""Recipes: references checked before anything runs; a recipe killed anywhere and run again
ends with the checkpoints and pseudo labels of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.engine_helpers import tiny_config, write_config, write_tiny_benchmark
from udaseg.engine.checkpoint import read_checkpoint
from udaseg.engine.faults import ENVIRONMENT_VARIABLE
from udaseg.errors import ConfigError
from udaseg.recipes import load_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_benchmark(tmp_path_factory.mktemp("tiny"))


def _write_recipe(path: Path, stages: list[dict], directory: str | None = "out") -> Path:
    data = {"stages": stages}
    if directory is not None:
        data["dir"] = directory
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_references_are_substituted_in_order(tmp_path: Path) -> None:
    recipe = load_recipe(
        _write_recipe(
            tmp_path / "r.yaml",
            [
                {"name": "a", "train": "a.yaml"},
                {
                    "name": "b",
                    "pseudo_label": {
                        "checkpoints": ["${stages.a.checkpoint}"],
                        "policy": "argmax",
                    },
                },
                {
                    "name": "c",
                    "train": "c.yaml",
                    "set": {"init.teacher": "${stages.a.checkpoint}#segmentor"},
                },
            ],
        ),
        directory=tmp_path / "elsewhere",
    )
    assert [stage.name for stage in recipe.stages] == ["a", "b", "c"]
    assert recipe.directory == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            [{"name": "a", "train": "a.yaml", "set": {"init.segmentor": "${stages.z.checkpoint}"}}],
            r"stage 'a': \$\{stages.z.checkpoint\} refers to no earlier stage \(stages before it: none\)",
        ),
        (
            [
                {"name": "a", "train": "a.yaml", "set": {"x": "${stages.b.checkpoint}"}},
                {"name": "b", "train": "b.yaml"},
            ],
            r"\$\{stages.b.checkpoint\} refers to no earlier stage",
        ),
        (
            [
                {"name": "a", "train": "a.yaml"},
                {"name": "b", "train": "b.yaml", "set": {"x": "${stages.a.dir}"}},
            ],
            r"a train stage has outputs checkpoint, run_dir",
        ),
        ([{"name": "a", "train": "a.yaml"}, {"name": "a", "train": "b.yaml"}], "two stages"),
        ([{"name": "a", "train": "a.yaml", "pseudo_label": {}}], "exactly one of"),
        ([{"name": "a", "train": "a.yaml", "sets": {}}], "unknown key 'sets'"),
        ([{"name": "a", "pseudo_label": {"policy": "argmax"}}], "checkpoints is required"),
        ([{"name": "a/b", "train": "a.yaml"}], "must be letters"),
        ([{"name": "a", "train": "a.yaml", "set": {"x": "${seed}"}}], "is not a reference"),
    ],
)
def test_bad_recipes_are_refused_before_running(
    stages: list[dict], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe(_write_recipe(tmp_path / "bad.yaml", stages))


def test_a_recipe_needs_a_directory(tmp_path: Path) -> None:
    path = _write_recipe(tmp_path / "r.yaml", [{"name": "a", "train": "a.yaml"}], None)
    with pytest.raises(ConfigError, match="no `dir:`"):
        load_recipe(path)


def _tiny_recipe(root: Path, tmp_path: Path) -> Path:
    """source (4 steps) -> pseudo labels (class_percentile) -> self-training (4 steps)."""
    # 4 steps, a checkpoint every 2; the recipe sets each stage's run_dir.
    source = tiny_config(root, tmp_path / "ignored")
    write_config(tmp_path / "source.yaml", source)
    student = {**source, "method": {"name": "self_training"}}
    write_config(tmp_path / "student.yaml", student)
    stages = [
        {"name": "source", "train": str(tmp_path / "source.yaml")},
        {
            "name": "labels",
            "pseudo_label": {
                "checkpoints": ["${stages.source.checkpoint}"],
                "policy": "class_percentile",
                "options": {"percentile": 50, "cap": 0.9},
            },
        },
        {
            "name": "student",
            "train": str(tmp_path / "student.yaml"),
            "set": {
                "init.segmentor": "${stages.source.checkpoint}",
                "data.target.pseudo_labels": "${stages.labels.dir}",
            },
        },
    ]
    return _write_recipe(tmp_path / "recipe.yaml", stages, directory=None)


def _recipe(recipe: Path, directory: Path, kill_at: str | None = None) -> int:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop(ENVIRONMENT_VARIABLE, None)
    if kill_at:
        environment[ENVIRONMENT_VARIABLE] = kill_at
    command = [sys.executable, "-m", "udaseg", "recipe", str(recipe), "--dir", str(directory)]
    completed = subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )
    if completed.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(completed.stderr[-3000:])
    return completed.returncode


def _outputs(directory: Path) -> dict[str, object]:
    """Every stage's final weights and every pseudo-label PNG's bytes."""
    found: dict[str, object] = {}
    for stage in ("source", "student"):
        modules = read_checkpoint(directory / stage / "checkpoints" / "last.pt")["modules"]
        found.update({f"{stage}/{key}": value for key, value in modules["segmentor"].items()})
    labels = sorted((directory / "labels").rglob("*.png"))
    assert labels, "no pseudo labels written"
    found.update({str(path.relative_to(directory)): path.read_bytes() for path in labels})
    return found


def test_killed_anywhere_the_recipe_ends_as_an_uninterrupted_one(
    tiny_root: Path, tmp_path: Path
) -> None:
    recipe = _tiny_recipe(tiny_root, tmp_path)
    assert _recipe(recipe, tmp_path / "straight") == 0
    killed = tmp_path / "killed"
    # Inside the first training stage (after step 3; the last checkpoint is step 2) ...
    assert _recipe(recipe, killed, "train.step#3") == -signal.SIGKILL
    assert not (killed / "stages" / "source.json").exists()
    # ... between stages (right after the source stage is recorded as done) ...
    assert _recipe(recipe, killed, "recipe.stage#1") == -signal.SIGKILL
    assert (killed / "stages" / "source.json").exists()
    # ... inside pseudo-labelling (after 3 of the 6 target images are written) ...
    assert _recipe(recipe, killed, "pseudo_label.image#3") == -signal.SIGKILL
    assert not (killed / "stages" / "labels.json").exists()
    # ... and inside the last training stage.
    assert _recipe(recipe, killed, "train.step#3") == -signal.SIGKILL
    assert _recipe(recipe, killed) == 0

    expected, resumed = _outputs(tmp_path / "straight"), _outputs(killed)
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        if torch.is_tensor(value):
            assert torch.equal(value, resumed[key]), key
        else:
            assert value == resumed[key], key
    # A finished recipe runs nothing again.
    assert _recipe(recipe, killed) == 0
