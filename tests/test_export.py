"""`udaseg export`: ONNX models of the evaluated network match torch, carry their metadata,
and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.engine_helpers import tiny_config, write_tiny_benchmark  # noqa: E402
from udaseg import __version__  # noqa: E402
from udaseg.cli import main  # noqa: E402
from udaseg.config import config_from_dict  # noqa: E402
from udaseg.engine.loading import load_for_inference  # noqa: E402
from udaseg.engine.trainer import train  # noqa: E402
from udaseg.errors import CheckpointError, OutputError  # noqa: E402
from udaseg.export import OnnxSegmentor, export_checkpoint, read_metadata  # noqa: E402

SIZES = [(32, 64), (48, 40)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_tiny_benchmark(tmp_path_factory.mktemp("tiny"))
    run_dir = tmp_path_factory.mktemp("run")
    config = tiny_config(
        root, run_dir, train={"steps": 2, "checkpoint_every": 2}, eval={"input_size": [32, 64]}
    )
    train(config_from_dict(config))
    path = run_dir / "checkpoints" / "last.pt"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint: Path):
    return load_for_inference(str(checkpoint), None, None, [], torch.device("cpu"))


def _images(size: tuple[int, int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *size, generator=generator) * 255


def test_dynamic_logits_match_torch(checkpoint: Path, loaded, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--dynamic", "--out", str(out)]) == 0
    segmentor = OnnxSegmentor(out)
    assert segmentor.output == "logits"
    assert segmentor.num_classes == loaded.label_space.num_classes
    assert segmentor.label_space == loaded.label_space.name
    for batch, size in zip((2, 1), SIZES, strict=True):
        images = _images(size, batch)
        with torch.no_grad():
            expected = loaded.method.predict(images)
        got = segmentor(images.numpy())
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        assert got.shape == tuple(expected.shape)
        assert np.abs(got - expected.numpy()).max() <= 1e-4
        assert expected.std() > 1e-3  # the comparison is not between near-zero maps
        # torch in, torch out
        as_tensor = segmentor(images)
        assert isinstance(as_tensor, torch.Tensor)
        assert torch.equal(as_tensor, torch.from_numpy(got))


def test_argmax_matches_torch(checkpoint: Path, loaded, tmp_path: Path) -> None:
    out = tmp_path / "labels.onnx"
    export_checkpoint(checkpoint, out, output="argmax", dynamic=True)
    segmentor = OnnxSegmentor(out)
    assert segmentor.output == "argmax"
    align_corners = loaded.config.eval.align_corners
    for size in SIZES:
        images = _images(size, seed=1)
        with torch.no_grad():
            logits = F.interpolate(
                loaded.method.predict(images),
                size=size,
                mode="bilinear",
                align_corners=align_corners,
            )
        labels = segmentor(images.numpy())
        assert labels.dtype == np.uint8 and labels.shape == (2, *size)
        np.testing.assert_array_equal(labels, logits.argmax(1).numpy())


def test_static_export_and_metadata(checkpoint: Path, loaded, tmp_path: Path) -> None:
    out = tmp_path / "static.onnx"
    result = export_checkpoint(checkpoint, out)
    metadata = read_metadata(out)
    assert metadata == result.metadata
    assert metadata["udaseg_version"] == __version__
    assert metadata["label_space"] == loaded.label_space.name
    assert int(metadata["num_classes"]) == loaded.label_space.num_classes
    assert metadata["output"] == "logits" and metadata["precision"] == "float32"
    assert metadata["dynamic"] == "false" and metadata["input_size"] == "32x64"
    assert metadata["method"] == loaded.config.method.name
    assert metadata["checkpoint"] == "last.pt" and metadata["checkpoint_step"] == "2"
    model = json.loads(metadata["model"])
    assert model["name"] == "deeplabv2" and model["width"] == 4
    assert metadata["input_normalization"] == model["input_normalization"]
    images = _images((32, 64), batch=1)
    with torch.no_grad():
        expected = loaded.method.predict(images).numpy()
    assert np.abs(OnnxSegmentor(out)(images.numpy()) - expected).max() <= 1e-4


def test_half_is_close(checkpoint: Path, loaded, tmp_path: Path) -> None:
    out = tmp_path / "half.onnx"
    export_checkpoint(checkpoint, out, half=True, dynamic=True)
    assert read_metadata(out)["precision"] == "float16"
    segmentor = OnnxSegmentor(out)
    for size in SIZES:
        images = _images(size)
        with torch.no_grad():
            expected = loaded.method.predict(images).numpy()
        got = segmentor(images.numpy())
        assert got.dtype == np.float32 and got.shape == expected.shape
        # fp16 keeps ~3 significant digits; the tolerance is relative to the logits' range.
        scale = float(np.abs(expected).max())
        error = float(np.abs(got - expected).max())
        print(f"fp16 max abs error {error:.3g} for logits up to {scale:.3g}")
        assert error <= 1e-2 * scale


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("udaseg export: error:") and "\n" not in error
    return error


def test_bad_input_is_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint", encoding="utf-8")
    out = tmp_path / "m.onnx"
    assert "notes.pt" in _one_line_error(
        ["export", "--checkpoint", str(not_a_checkpoint), "--out", str(out)], capsys
    )
    assert "missing.pt" in _one_line_error(
        ["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)], capsys
    )
    out.write_bytes(b"earlier")
    assert "--overwrite" in _one_line_error(
        ["export", "--checkpoint", str(checkpoint), "--out", str(out)], capsys
    )
    assert out.read_bytes() == b"earlier"
    assert "folder" in _one_line_error(
        ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path)], capsys
    )
    if not _is_root():  # root writes into read-only folders
        read_only = tmp_path / "read_only"
        read_only.mkdir()
        read_only.chmod(0o500)
        try:
            assert "cannot write" in _one_line_error(
                ["export", "--checkpoint", str(checkpoint), "--out", str(read_only / "m.onnx")],
                capsys,
            )
        finally:
            read_only.chmod(0o700)
    with pytest.raises(CheckpointError, match="not an ONNX model|cannot load"):
        OnnxSegmentor(not_a_checkpoint)
    with pytest.raises(OutputError):
        export_checkpoint(checkpoint, tmp_path)


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0
