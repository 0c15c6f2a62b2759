"""Pseudo-label policies (equal to BDL/FDA/CBST/ProDA code), streaming thresholds, the command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine_helpers import tiny_config, write_tiny_benchmark
from udaseg import pseudo_labels
from udaseg.cli import main as cli_main
from udaseg.commands.pseudo_label import run_pseudo_labelling
from udaseg.config import config_from_dict
from udaseg.data.io import read_label
from udaseg.engine.checkpoint import atomic_save, read_checkpoint
from udaseg.engine.trainer import train
from udaseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
F32 = np.float32


def _pixels(*vectors: tuple[float, ...]) -> np.ndarray:
    """Probability vectors as a [1, C, 1, W] float32 map, one pixel per vector."""
    return np.array(vectors, dtype=F32).T[None, :, None, :]


# Class 0 is predicted with confidences 0.4, 0.5, 0.6, 0.7, 0.8; class 1 with 0.95 and 0.97;
# class 2 never.
PERCENTILE_MAP = _pixels(
    (0.40, 0.35, 0.25),
    (0.50, 0.30, 0.20),
    (0.60, 0.30, 0.10),
    (0.70, 0.20, 0.10),
    (0.80, 0.10, 0.10),
    (0.03, 0.95, 0.02),
    (0.02, 0.97, 0.01),
)


def test_class_percentile_bdl_median_rounds_half_to_even_and_caps() -> None:
    # Class 0: 5 values, index round(2.5) = 2 (half to even; half up would take 3) -> 0.6,
    # kept from 0.6 on (prob < threshold is dropped). Class 1: index round(1.0) = 1 -> 0.97,
    # capped at 0.9, so both pixels stay. Class 2: never predicted -> threshold 0.
    labels = pseudo_labels.assign(PERCENTILE_MAP, "class_percentile", percentile=50, cap=0.9)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[[255, 255, 0, 0, 0, 1, 1]]]
    confidence, predicted = pseudo_labels.confidence_and_prediction(
        torch.from_numpy(PERCENTILE_MAP)
    )
    thresholds = pseudo_labels.class_thresholds(
        confidence, predicted, 3, "class_percentile", percentile=50, cap=0.9
    )
    assert thresholds.tolist() == [float(F32(0.6)), 0.9, 0.0]


def test_class_percentile_fda_66th_and_the_single_pixel_clamp() -> None:
    # Class 0: index round(5 * 0.66) = round(3.3) = 3 -> 0.7. Class 1: round(1.32) = 1 -> 0.97,
    # capped to 0.9.
    labels = pseudo_labels.assign(PERCENTILE_MAP, "class_percentile", percentile=66, cap=0.9)
    assert labels.tolist() == [[[255, 255, 255, 0, 0, 1, 1]]]
    # One pixel of class 1: FDA's index round(0.66) = 1 is past the end; it is clamped to 0.
    single = _pixels((0.6, 0.3, 0.1), (0.7, 0.2, 0.1), (0.2, 0.5, 0.3))
    labels = pseudo_labels.assign(single, "class_percentile", percentile=66, cap=0.9)
    # Class 0: round(1.32) = 1 -> 0.7, so 0.6 is dropped; class 1 keeps its only pixel.
    assert labels.tolist() == [[[255, 0, 1]]]


def test_the_cap_takes_effect_only_above_it() -> None:
    labels = pseudo_labels.assign(PERCENTILE_MAP, "class_percentile", percentile=50, cap=0.55)
    # Class 0's median 0.6 is capped to 0.55: now 0.6, 0.7, 0.8 stay as before (0.5 < 0.55).
    assert labels.tolist() == [[[255, 255, 0, 0, 0, 1, 1]]]
    labels = pseudo_labels.assign(PERCENTILE_MAP, "class_percentile", percentile=50, cap=0.45)
    # Cap 0.45: the 0.5 pixel is kept too.
    assert labels.tolist() == [[[255, 0, 0, 0, 0, 1, 1]]]


# Class 0 predicted with 0.5, 0.45, 0.4, 0.4; class 1 with 0.48 and 0.9; class 2 never.
BALANCED_MAP = _pixels(
    (0.50, 0.30, 0.20),
    (0.45, 0.35, 0.20),
    (0.40, 0.35, 0.25),
    (0.40, 0.30, 0.30),
    (0.46, 0.48, 0.06),
    (0.05, 0.90, 0.05),
)


def test_class_balanced_follows_the_kc_policy() -> None:
    # portion 0.5: class 0 keeps floor(4 * 0.5) = 2, threshold = descending[1] = 0.45; class 1
    # floor(2 * 0.5) = 1 -> descending[0] = 0.9; class 2 never predicted -> 1.
    # Ratios: pixel 1 is exactly 1 (kept, >= 1); pixel 4 is predicted as 1 but 0.46 / 0.45 >
    # 0.48 / 0.9, so it is labelled 0; pixel 5 reaches 0.9 / 0.9 = 1.
    labels = pseudo_labels.assign(BALANCED_MAP, "class_balanced", portion=0.5)
    assert labels.tolist() == [[[0, 0, 255, 255, 0, 1]]]
    confidence, predicted = pseudo_labels.confidence_and_prediction(torch.from_numpy(BALANCED_MAP))
    thresholds = pseudo_labels.class_thresholds(
        confidence, predicted, 3, "class_balanced", portion=0.5
    )
    assert thresholds.tolist() == [float(F32(0.45)), float(F32(0.9)), 1.0]


def test_class_balanced_portion_below_one_pixel_gives_threshold_one() -> None:
    # floor(4 * 0.2) = floor(2 * 0.2) = 0: every class keeps threshold 1, as CRST leaves it, so
    # no probability below 1 passes.
    confidence, predicted = pseudo_labels.confidence_and_prediction(torch.from_numpy(BALANCED_MAP))
    thresholds = pseudo_labels.class_thresholds(
        confidence, predicted, 3, "class_balanced", portion=0.2
    )
    assert thresholds.tolist() == [1.0, 1.0, 1.0]
    labels = pseudo_labels.assign(BALANCED_MAP, "class_balanced", portion=0.2)
    assert labels.tolist() == [[[255] * 6]]


def test_fixed_threshold_is_strict_as_in_proda_and_argmax_breaks_ties_low() -> None:
    probabilities = _pixels((0.5, 0.3, 0.2), (0.25, 0.75, 0.0), (0.45, 0.45, 0.1))
    # ProDA drops conf <= threshold: exactly 0.5 is dropped.
    labels = pseudo_labels.assign(probabilities, "threshold", threshold=0.5)
    assert labels.tolist() == [[[255, 1, 255]]]
    labels = pseudo_labels.assign(probabilities, "threshold", threshold=0.4)
    assert labels.tolist() == [[[0, 1, 0]]]
    assert pseudo_labels.assign(probabilities, "argmax").tolist() == [[[0, 1, 0]]]


def test_torch_input_gives_torch_output_equal_to_numpy() -> None:
    generator = np.random.default_rng(0)
    logits = generator.normal(size=(2, 5, 6, 7)) * 3
    probabilities = torch.from_numpy(logits).softmax(1).float()
    for policy, options in [
        ("argmax", {}),
        ("threshold", {"threshold": 0.6}),
        ("class_percentile", {"percentile": 50, "cap": 0.9}),
        ("class_balanced", {"portion": 0.3}),
    ]:
        from_torch = pseudo_labels.assign(probabilities, policy, **options)
        from_numpy = pseudo_labels.assign(probabilities.numpy(), policy, **options)
        assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.uint8
        assert isinstance(from_numpy, np.ndarray) and from_numpy.shape == (2, 6, 7)
        np.testing.assert_array_equal(from_torch.numpy(), from_numpy)


@pytest.mark.parametrize(
    ("policy", "options", "message"),
    [
        ("median", {}, "policy 'median': unknown"),
        ("class_percentile", {"percentile": 50}, "option 'cap': required"),
        ("argmax", {"threshold": 0.5}, "option 'threshold': policy 'argmax' takes no options"),
        ("class_percentile", {"percentile": 101, "cap": 0.9}, "'percentile': 101 is outside"),
        ("class_balanced", {"portion": 0}, "'portion': 0 is outside \\(0, 1\\]"),
        ("threshold", {"threshold": 1.5}, "'threshold': 1.5 is outside \\[0, 1\\]"),
        ("threshold", {"threshold": "0.5"}, "expected a number"),
        ("class_percentile", {"percentile": 50, "cap": True}, "expected a number"),
    ],
)
def test_bad_policies_and_options_are_config_errors(policy, options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        pseudo_labels.assign(PERCENTILE_MAP, policy, **options)


def test_label_and_confidence_pngs_round_trip(tmp_path: Path) -> None:
    labels = np.array([list(range(10)), [*range(10, 19), 255]], dtype=np.uint8)
    path = tmp_path / "a" / "b" / "label.png"
    pseudo_labels.write_label_png(path, labels)
    with Image.open(path) as image:
        assert image.mode == "L"
    read = read_label(path)
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, labels)

    confidence = np.array([[0.0, 1.0, 0.5], [1 / 65535, 0.123456, 0.99999]], dtype=F32)
    confidence_path = tmp_path / "c" / "conf.png"
    pseudo_labels.write_confidence_png(confidence_path, torch.from_numpy(confidence))
    stored = pseudo_labels.confidence_to_uint16(confidence)
    # round(conf * 65535): 0.5 -> 32767.5 -> 32768 (half to even), 0.123456 -> 8090.69 -> 8091.
    assert stored.tolist() == [[0, 65535, 32768], [1, 8091, 65534]]
    back = pseudo_labels.read_confidence_png(confidence_path)
    np.testing.assert_allclose(back, confidence, atol=0.5 / 65535)
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["conf.png", "label.png"]


def test_histogram_interpolates_inside_the_bin_of_the_order_statistic() -> None:
    histogram = pseudo_labels.ConfidenceHistogram(num_classes=2, bins=4)
    histogram.update(torch.tensor([0.1, 0.3, 0.35, 0.9]), torch.tensor([0, 0, 0, 0]))
    assert histogram.counts.tolist() == [[1, 2, 0, 1], [0, 0, 0, 0]]
    # Median: rank round(4 * 0.5) = 2 lies in bin 1 (counts 1 before it, 2 in it), the second
    # of its two values: (1 + (2 - 1 + 0.5) / 2) / 4 = 0.4375; the exact value is 0.35.
    thresholds = histogram.thresholds("class_percentile", percentile=50, cap=0.9)
    assert thresholds.tolist() == [0.4375, 0.0]
    # Portion 0.5: floor(4 * 0.5) = 2, descending[1] = ascending rank 2, the same value.
    assert histogram.thresholds("class_balanced", portion=0.5).tolist() == [0.4375, 1.0]


def test_streaming_histogram_matches_exact_thresholds_and_labels() -> None:
    generator = np.random.default_rng(3)
    logits = torch.from_numpy(generator.normal(size=(4, 19, 48, 64)) * 4)
    probabilities = logits.softmax(1).float()
    confidence, predicted = pseudo_labels.confidence_and_prediction(probabilities)
    whole = pseudo_labels.ConfidenceHistogram(19)
    first, second = pseudo_labels.ConfidenceHistogram(19), pseudo_labels.ConfidenceHistogram(19)
    for index in range(4):
        whole.update(confidence[index], predicted[index])
        (first if index < 2 else second).update(confidence[index], predicted[index])
    restored = pseudo_labels.ConfidenceHistogram(19)
    restored.load_state_dict(first.state_dict())
    restored.merge(second)
    assert torch.equal(restored.counts, whole.counts)
    assert torch.equal(
        whole.predicted_pixels(), torch.bincount(predicted.reshape(-1), minlength=19)
    )

    for policy, options in [
        ("class_percentile", {"percentile": 50, "cap": 0.9}),
        ("class_percentile", {"percentile": 66, "cap": 1.0}),
        ("class_balanced", {"portion": 0.2}),
    ]:
        exact = pseudo_labels.class_thresholds(confidence, predicted, 19, policy, **options)
        streamed = whole.thresholds(policy, **options)
        assert (streamed - exact).abs().max() < 1 / 65536
        exact_labels = pseudo_labels.assign(probabilities, policy, **options)
        streamed_labels = pseudo_labels.apply_thresholds(probabilities, streamed, policy)
        differing = (exact_labels != streamed_labels).double().mean().item()
        assert differing < 1e-3, (policy, differing)
        assert (exact_labels == 255).any() and (exact_labels != 255).any()


# --- The command -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelling_setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = write_tiny_benchmark(tmp_path_factory.mktemp("tiny"))
    run_dir = tmp_path_factory.mktemp("run")
    raw = tiny_config(
        root,
        run_dir,
        train={
            "steps": 2,
            "checkpoint_every": 2,
            "deterministic": True,
            "progress_bar": False,
            "tensorboard": False,
            "eval_at_end": False,
        },
    )
    train(config_from_dict(raw))
    # The tiny model predicts one class everywhere; N(0, 1) head weights without biases make
    # its predictions vary over the pixels, so several classes get thresholds.
    payload = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    generator = torch.Generator().manual_seed(0)
    for key, value in payload["modules"]["segmentor"].items():
        if key.startswith("layer5."):
            value.zero_() if key.endswith("bias") else value.normal_(0, 1, generator=generator)
    checkpoint = str(run_dir / "varied.pt")
    atomic_save(payload, checkpoint)
    reference = tmp_path_factory.mktemp("reference")
    summary = run_pseudo_labelling(
        None,
        ["eval.input_size=[16,32]"],
        [checkpoint],
        "class_percentile",
        {"percentile": 50, "cap": 0.9},
        reference,
        save_soft=True,
        progress=False,
    )
    return {"root": root, "checkpoint": checkpoint, "reference": reference, "summary": summary}


def _label_files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and ".state" not in path.parts and path.name != "summary.json"
    }


def test_command_writes_one_label_per_target_image_consistent_with_its_summary(
    labelling_setup: dict,
) -> None:
    reference: Path = labelling_setup["reference"]
    summary = labelling_setup["summary"]
    expected_names = [
        f"{city}/{city}_{number:06d}_{19 + number:06d}_leftImg8bit"
        for number, city in enumerate(["aachen", "bremen"] * 3)
    ]
    labelled = np.zeros(19, dtype=np.int64)
    for name in expected_names:
        labels = read_label(reference / f"{name}.png")
        # Native size on disk (32x64), not eval.input_size (16x32).
        assert labels.shape == (32, 64) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {*range(19), 255}
        labelled += np.bincount(labels[labels != 255], minlength=19)
        confidence = pseudo_labels.read_confidence_png(reference / "confidence" / f"{name}.png")
        assert confidence.shape == (32, 64) and confidence.min() >= 1 / 19 - 1e-4
        soft = np.load(reference / "soft" / f"{name}.npy")
        # The stride-8 grid of the 16x32 input (ceil-mode max pooling rounds up).
        assert soft.dtype == np.float16 and soft.shape == (19, 3, 5)
        np.testing.assert_allclose(soft.astype(np.float32).sum(0), 1.0, atol=1e-2)
    assert len(list(reference.glob("*/*.png"))) == 6

    on_disk = json.loads((reference / "summary.json").read_text())
    assert on_disk == summary
    names = list(summary["labelled_pixels"])
    assert [summary["labelled_pixels"][name] for name in names] == labelled.tolist()
    assert summary["num_images"] == 6 and summary["total_pixels"] == 6 * 32 * 64
    assert sum(summary["predicted_pixels"].values()) == 6 * 32 * 64
    assert summary["overall_kept_fraction"] == pytest.approx(labelled.sum() / (6 * 32 * 64))
    assert sum(count > 0 for count in summary["predicted_pixels"].values()) >= 3
    for name in names:
        predicted = summary["predicted_pixels"][name]
        threshold = summary["thresholds"][name]
        if predicted == 0:
            assert threshold == 0.0 and summary["kept_fraction"][name] is None
        else:
            # The median keeps predicted - round(predicted / 2) pixels (at most one off, the
            # streamed threshold being within a bin width).
            assert 0 < threshold <= 0.9
            expected = predicted - round(predicted / 2)
            assert abs(summary["labelled_pixels"][name] - expected) <= 1
    assert summary["protocol"]["input_size"] == [16, 32]
    assert "1/65536" in summary["exactness"]


def test_rerun_is_done_and_other_settings_are_refused(
    labelling_setup: dict, capsys: pytest.CaptureFixture
) -> None:
    reference: Path = labelling_setup["reference"]
    before = {path: path.stat().st_mtime_ns for path in reference.rglob("*.png")}
    arguments = ["pseudo-label", "eval.input_size=[16,32]", "--out", str(reference)]
    arguments += ["--checkpoint", labelling_setup["checkpoint"], "--save-soft"]
    assert (
        cli_main([*arguments, "--policy", "class_percentile", "--percentile", "50", "--cap", "0.9"])
        == 0
    )
    assert "already done" in capsys.readouterr().err
    assert before == {path: path.stat().st_mtime_ns for path in reference.rglob("*.png")}
    assert (
        cli_main([*arguments, "--policy", "class_percentile", "--percentile", "66", "--cap", "0.9"])
        == 2
    )
    assert (
        "holds pseudo-labels made with other options; pass --overwrite" in capsys.readouterr().err
    )
    assert cli_main([*arguments, "--policy", "class_percentile", "--percentile", "50"]) == 2
    assert "option 'cap': required" in capsys.readouterr().err


def test_argmax_policy_keeps_every_pixel(labelling_setup: dict, tmp_path: Path) -> None:
    summary = run_pseudo_labelling(
        None,
        ["eval.input_size=[16,32]", "eval.flip=true", "eval.resize=torch"],
        [labelling_setup["checkpoint"]] * 2,
        "argmax",
        {},
        tmp_path / "argmax",
        progress=False,
    )
    assert summary["overall_kept_fraction"] == 1.0 and summary["thresholds"] is None
    assert summary["labelled_pixels"] == summary["predicted_pixels"]
    for path in (tmp_path / "argmax").glob("*/*.png"):
        assert 255 not in read_label(path)


def _run_cli(arguments: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("UDASEG_TEST_SIGKILL_AT", None)
    if kill_at is not None:
        environment["UDASEG_TEST_SIGKILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "udaseg", "pseudo-label", *arguments],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("kill_at", "state_file", "images_done"),
    [("pseudo_label.statistics#2", "pass1", 1), ("pseudo_label.image#3", "pass2", 2)],
)
def test_sigkill_then_rerun_gives_the_same_bytes(
    labelling_setup: dict, tmp_path: Path, kill_at: str, state_file: str, images_done: int
) -> None:
    out = tmp_path / "killed"
    arguments = ["eval.input_size=[16,32]", "--checkpoint", labelling_setup["checkpoint"]]
    arguments += ["--policy", "class_percentile", "--percentile", "50", "--cap", "0.9"]
    arguments += ["--save-soft", "--state-every", "0", "--out", str(out)]
    killed = _run_cli(arguments, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "summary.json").exists()
    # The progress saved before the kill: the image being counted when it came was not.
    state = torch.load(out / ".state" / f"{state_file}_rank0of1.pt", weights_only=True)
    assert state["images_done"] == images_done
    if state_file == "pass2":
        assert len(list(out.glob("*/*.png"))) == 3  # the third was written, not yet counted

    resumed = _run_cli(arguments)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference: Path = labelling_setup["reference"]
    assert _label_files(out) == _label_files(reference)
    assert json.loads((out / "summary.json").read_text()) == labelling_setup["summary"]


def test_two_process_torchrun_equals_one_process(labelling_setup: dict, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("UDASEG_TEST_SIGKILL_AT", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "udaseg", "pseudo-label", "eval.input_size=[16,32]"]
    command += ["--checkpoint", labelling_setup["checkpoint"], "--policy", "class_percentile"]
    command += ["--percentile", "50", "--cap", "0.9", "--save-soft", "--device", "cpu"]
    command += ["--out", str(out)]
    completed = subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=180
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    # Each rank counted its shard; the summed histogram gives the same thresholds and files.
    assert sorted(p.name for p in (out / ".state").glob("pass1_*")) == [
        "pass1_rank0of2.pt",
        "pass1_rank1of2.pt",
    ]
    assert _label_files(out) == _label_files(labelling_setup["reference"])
    assert json.loads((out / "summary.json").read_text()) == labelling_setup["summary"]
