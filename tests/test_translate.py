"""`udaseg translate`: the source layout is written translated, labels follow, reruns skip what is
done, bad input is one line; the recipe's `translate` stage is checked before anything runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine_helpers import tiny_config, write_config, write_tiny_benchmark
from tests.fake_layouts import write_synthia
from udaseg.cli import main
from udaseg.commands.translate import run_translation
from udaseg.config import config_from_dict
from udaseg.data.io import read_image
from udaseg.engine.faults import ENVIRONMENT_VARIABLE
from udaseg.engine.loading import load_for_inference
from udaseg.engine.trainer import train
from udaseg.errors import ConfigError
from udaseg.recipes import _ordered_overrides, load_recipe

REPO = Path(__file__).resolve().parents[1]
# A CycleGAN small enough for CPU tests: one residual block, 4 channels.
TINY_TRANSLATION = {
    "name": "bdl_translation",
    "generator_blocks": 1,
    "generator_channels": 4,
    "discriminator_channels": 4,
    "pool_size": 2,
}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_benchmark(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def generator_checkpoint(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bdl_translation checkpoint after 2 steps on the tiny benchmark."""
    run = tmp_path_factory.mktemp("translation") / "run"
    raw = tiny_config(tiny_root, run, method=TINY_TRANSLATION)
    raw["train"] = {**raw["train"], "steps": 2, "eval_at_end": False}
    train(config_from_dict(raw))
    return run / "checkpoints" / "last.pt"


@pytest.fixture()
def source_config(tiny_root: Path, tmp_path: Path) -> Path:
    return write_config(tmp_path / "source.yaml", tiny_config(tiny_root, tmp_path / "unused"))


def _images(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*.png"))


def test_generator_mode_writes_the_gta5_layout(
    tiny_root: Path, generator_checkpoint: Path, source_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "translated"
    summary = run_translation(
        source_config, [], out, "generator", generator=generator_checkpoint, progress=False
    )
    images = sorted(path.name for path in (out / "images").iterdir())
    assert images == sorted(path.name for path in (tiny_root / "gta" / "images").iterdir())
    assert summary["written"] == 8 and summary["skipped"] == 0
    assert summary["images_per_second"] > 0
    assert json.loads((out / "translate.json").read_text())["written"] == 8
    # Labels are hard links to the originals (same file), images are F's output.
    for name in images:
        original = tiny_root / "gta" / "labels" / name
        assert os.path.samefile(out / "labels" / name, original)
    method = load_for_inference(str(generator_checkpoint), None, None, [], torch.device("cpu"))
    source = read_image(tiny_root / "gta" / "images" / images[0])
    with torch.inference_mode():
        tensor = torch.from_numpy(source).permute(2, 0, 1)[None].float()
        expected = method.method.translate(tensor)[0].round().clamp(0, 255).byte()
    written = read_image(out / "images" / images[0])
    assert np.array_equal(written, expected.permute(1, 2, 0).numpy())
    assert not np.array_equal(written, source), "the generator changed nothing"
    # The translated set is a GTA5 dataset any config can train on.
    raw = tiny_config(out.parent, tmp_path / "run")
    raw["data"]["source"]["root"] = str(out)
    config = config_from_dict(raw)
    from udaseg.data.datasets import build_dataset
    from udaseg.data.label_spaces import CITYSCAPES19

    dataset = build_dataset(config.data.source, CITYSCAPES19, "source")
    assert len(dataset) == 8 and dataset[0]["label"].shape == (32, 48)


def test_a_rerun_skips_what_is_written(
    generator_checkpoint: Path, source_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "translated"
    arguments = {"mode": "generator", "generator": generator_checkpoint, "progress": False}
    run_translation(source_config, [], out, **arguments)
    first = {name: (out / "images" / name).read_bytes() for name in _images(out / "images")}
    # Finished: nothing is redone.
    before = (out / "images" / "00001.png").stat().st_mtime_ns
    assert run_translation(source_config, [], out, **arguments)["written"] == 8
    assert (out / "images" / "00001.png").stat().st_mtime_ns == before
    # Interrupted (no summary, two images missing): only those two are translated.
    (out / "translate.json").unlink()
    (out / "images" / "00003.png").unlink()
    (out / "images" / "00007.png").unlink()
    (out / "labels" / "00007.png").unlink()
    summary = run_translation(source_config, [], out, **arguments)
    assert (summary["written"], summary["skipped"]) == (2, 6)
    assert {name: (out / "images" / name).read_bytes() for name in _images(out / "images")} == first
    assert (out / "labels" / "00007.png").is_file()


def test_killed_and_rerun_it_ends_as_an_uninterrupted_run(
    generator_checkpoint: Path, source_config: Path, tmp_path: Path
) -> None:
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    command = [sys.executable, "-m", "udaseg", "translate", str(source_config)]
    command += ["--generator", str(generator_checkpoint), "--device", "cpu", "--out", str(killed)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", ENVIRONMENT_VARIABLE: "translate.image#3"}
    completed = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, timeout=300)
    assert completed.returncode == -signal.SIGKILL, completed.stderr[-2000:]
    assert len(_images(killed / "images")) == 3 and not (killed / "translate.json").exists()
    # The same command again (here in-process) finishes the job ...
    arguments = {"mode": "generator", "generator": generator_checkpoint, "progress": False}
    summary = run_translation(source_config, [], killed, device="cpu", **arguments)
    assert (summary["written"], summary["skipped"]) == (5, 3)
    # ... with the files of an uninterrupted run.
    run_translation(source_config, [], straight, device="cpu", **arguments)
    assert _images(killed) == _images(straight)
    for name in _images(straight):
        assert (killed / name).read_bytes() == (straight / name).read_bytes(), name


def test_fda_mode_pairs_each_image_with_a_seeded_target(
    tiny_root: Path, source_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plumbing around FDA: which target, at which size, rounding and clipping."""
    calls = []

    def fake_fda(source, target, beta, window="corners"):
        calls.append((beta, window, tuple(source.shape), tuple(target.shape)))
        return (source + target) / 2 + 300 * (source > 250)  # overshoot: clipped to 255

    fake = types.ModuleType("udaseg.translation")
    fake.fda_source_to_target = fake_fda
    monkeypatch.setitem(sys.modules, "udaseg.translation", fake)
    folder = tmp_path / "targets"
    folder.mkdir()
    targets = []
    for number in range(3):
        # Other sizes than the sources' (32x64): each is resized to its source's size.
        pixels = np.full((20, 30, 3), 60 * number + 10, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"t{number}.png")
        targets.append(pixels[0, 0, 0])
    out = tmp_path / "fda"
    summary = run_translation(
        source_config,
        [],
        out,
        "fda",
        beta=0.05,
        window="centered",
        target_folder=folder,
        seed=3,
        progress=False,
    )
    assert summary["written"] == 8 and summary["beta"] == 0.05 and summary["seed"] == 3
    assert {call[:2] for call in calls} == {(0.05, "centered")}
    assert all(call[2] == call[3] == (1, 3, 32, 64) for call in calls)
    for index, name in enumerate(_images(out / "images")):
        chosen = np.random.default_rng([3, index]).integers(3)
        source = read_image(tiny_root / "gta" / "images" / name).astype(np.float64)
        expected = np.round((source + targets[chosen]) / 2 + 300 * (source > 250))
        assert np.array_equal(read_image(out / "images" / name), np.clip(expected, 0, 255))
    # Another seed pairs differently, so it is another translation: refused in the same folder.
    with pytest.raises(ConfigError, match="another seed"):
        run_translation(
            source_config, [], out, "fda", beta=0.05, window="centered", target_folder=folder
        )


def test_fda_mode_with_the_transform_itself(
    tiny_root: Path, source_config: Path, tmp_path: Path
) -> None:
    from udaseg.translation import fda_source_to_target

    # beta 0 swaps no frequency: the images come back as they were.
    out = tmp_path / "identity"
    run_translation(source_config, [], out, "fda", beta=0.0, progress=False)
    for name in _images(out / "images"):
        source = read_image(tiny_root / "gta" / "images" / name)
        assert np.array_equal(read_image(out / "images" / name), source), name
    # beta 0.09: each image is the FDA of its source and its seeded target, rounded, clipped.
    out = tmp_path / "fda"
    run_translation(source_config, [], out, "fda", beta=0.09, seed=5, progress=False)
    targets = sorted((tiny_root / "cs" / "leftImg8bit" / "train").rglob("*.png"))
    changed = 0
    for index, name in enumerate(_images(out / "images")):
        source = read_image(tiny_root / "gta" / "images" / name)
        target = read_image(targets[np.random.default_rng([5, index]).integers(len(targets))])
        as_tensor = lambda pixels: torch.from_numpy(pixels).permute(2, 0, 1)[None].float()  # noqa: E731
        expected = fda_source_to_target(as_tensor(source), as_tensor(target), 0.09)
        expected = expected[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        written = read_image(out / "images" / name)
        assert np.array_equal(written, expected), name
        changed += not np.array_equal(written, source)
    assert changed == 8


def test_synthia_layout_with_copied_labels(generator_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "SYNTHIA"
    write_synthia(root, count=3, size=(28, 40), mapped_folder="mapped")
    config = tiny_config(tmp_path, tmp_path / "unused")
    config["data"]["source"] = {"kind": "synthia", "root": str(root), "labels_dir": "mapped"}
    path = write_config(tmp_path / "synthia.yaml", config)
    out = tmp_path / "translated"
    run_translation(
        path, [], out, "generator", generator=generator_checkpoint, labels="copy", progress=False
    )
    assert _images(out / "RGB") == _images(root / "RGB")
    for name in _images(root / "mapped"):
        copied = out / "mapped" / name
        assert not os.path.samefile(copied, root / "mapped" / name)
        assert copied.read_bytes() == (root / "mapped" / name).read_bytes()
    # Odd sizes come back at their own size (the generator pads to multiples of 4).
    assert read_image(out / "RGB" / "0000000.png").shape == (28, 40, 3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--fda"], "--beta: FDA needs the window ratio"),
        (["--fda", "--beta", "0.7"], r"--beta 0.7: must be in \[0, 0.5\]"),
        (["--generator", "missing.pt"], "--generator missing.pt: no such checkpoint file"),
        (["--fda", "--beta", "0.01", "--target-folder", "nowhere"], "nowhere: not a folder"),
    ],
)
def test_bad_input_is_one_line(
    arguments: list[str],
    message: str,
    source_config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    command = ["translate", str(source_config), *arguments, "--out", str(tmp_path / "out")]
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("udaseg translate: error:") and "\n" not in error
    assert re.search(message, error), error


def test_foreign_output_and_wrong_checkpoint_are_refused(
    tiny_root: Path, generator_checkpoint: Path, source_config: Path, tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and not written by `udaseg translate`"):
        run_translation(source_config, [], foreign, "generator", generator=generator_checkpoint)
    assert (foreign / "notes.txt").read_text() == "mine"
    segmentor_run = tmp_path / "segmentor"
    raw = tiny_config(tiny_root, segmentor_run)
    raw["train"] = {**raw["train"], "steps": 1, "eval_at_end": False}
    train(config_from_dict(raw))
    with pytest.raises(ConfigError, match="has no translation model"):
        run_translation(
            source_config,
            [],
            tmp_path / "out",
            "generator",
            generator=segmentor_run / "checkpoints" / "last.pt",
        )


# --- the recipe stage ----------------------------------------------------------------------


def _recipe(path: Path, stages: list[dict]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"dir": "out", "stages": stages}), encoding="utf-8")
    return path


def test_translate_stage_is_read_and_checked(tmp_path: Path) -> None:
    recipe = load_recipe(
        _recipe(
            tmp_path / "r.yaml",
            [
                {"name": "f", "train": "f.yaml"},
                {
                    "name": "translated",
                    "translate": {"mode": "generator", "generator": "${stages.f.checkpoint}"},
                },
                {
                    "name": "m",
                    "train": "m.yaml",
                    "set": {"data.source.root": "${stages.translated.dir}"},
                },
            ],
        )
    )
    assert [stage.kind for stage in recipe.stages] == ["train", "translate", "train"]


@pytest.mark.parametrize(
    ("translate", "message"),
    [
        ({"mode": "cyclegan"}, "translate.mode must be one of fda, generator"),
        ({"mode": "fda", "config": "a.yaml"}, "translate.beta is required with mode fda"),
        ({"mode": "generator"}, "translate.generator is required with mode generator"),
        ({"mode": "fda", "config": "a.yaml", "beta": 0.01, "betta": 1}, "translate.betta: unknown"),
        ({"mode": "generator", "generator": "${stages.f.run_dir}x"}, "refers to no earlier stage"),
    ],
)
def test_bad_translate_stages_are_refused(translate: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe(_recipe(tmp_path / "r.yaml", [{"name": "t", "translate": translate}]))


def test_command_overrides_cannot_unwire_stages(tmp_path: Path) -> None:
    stage_set = {"data.source.root": "${stages.t.dir}", "method.lambda_target": "1.0"}
    outputs = {"t": {"dir": "/recipe/t"}}
    commanded = ["data.source.root=/data/GTA5", "method.lambda_target=2"]
    ordered = _ordered_overrides(stage_set, outputs, tmp_path, commanded)
    # The plain entry yields to the command (later wins); the reference comes last and wins.
    assert ordered == [
        "method.lambda_target=1.0",
        "data.source.root=/data/GTA5",
        "method.lambda_target=2",
        "data.source.root=/recipe/t",
    ]
    # Without a conflict, the order is the one recipes always had (finished stages still match).
    assert _ordered_overrides(stage_set, outputs, tmp_path, ["seed=1"]) == [
        "data.source.root=/recipe/t",
        "method.lambda_target=1.0",
        "seed=1",
    ]
