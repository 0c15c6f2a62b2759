"""`udaseg predict` on videos and folders: overlay videos, per-frame PNGs, batching, bad input."""

from __future__ import annotations

import sys
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from udaseg.cli import main
from udaseg.data.io import read_image

av = pytest.importorskip("av")

TINY = [
    "model.width=4",
    "train.steps=2",
    "train.checkpoint_every=2",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.eval_every=0",
    "data.batch_size=2",
    "data.num_workers=0",
]
TINY_TOY = "--size 64x128 --num-source 4 --num-target 4 --num-val 4 --workers 1".split()
FRAMES = 12
RATE = 10


def write_video(path: Path, frames: list[np.ndarray], rate: int = RATE) -> None:
    """An H.264 (or MPEG-4) .mp4/.avi written with PyAV directly, independent of udaseg."""
    with av.open(str(path), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: Path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, Fraction(stream.average_rate)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "bench"
    assert main(["make-toy", "--out", str(root), *TINY_TOY]) == 0
    return root


@pytest.fixture(scope="module")
def checkpoint(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    run_dir = tmp_path_factory.mktemp("run") / "source_only"
    roots = [
        f"data.source.root={toy / 'source'}",
        f"data.target.root={toy / 'target'}",
        f"data.val.root={toy / 'target'}",
    ]
    assert main(["train", "toy/source_only.yaml", *roots, *TINY, f"run_dir={run_dir}"]) == 0
    return str(run_dir / "checkpoints" / "last.pt")


def val_images(toy: Path) -> Path:
    return toy / "target" / "leftImg8bit" / "val"


@pytest.fixture(scope="module")
def clip(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 frames of 64x128 at 10 fps: a toy image sliding sideways."""
    image = read_image(sorted(val_images(toy).rglob("*.png"))[0])
    frames = [np.ascontiguousarray(np.roll(image, 8 * index, axis=1)) for index in range(FRAMES)]
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, frames)
    return path


@pytest.fixture(scope="module")
def predicted(checkpoint: str, clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pred") / "out"
    arguments = ["predict", "--checkpoint", checkpoint, str(clip), "--out", str(out)]
    assert main([*arguments, "--frames", "--num-workers", "0", "--batch-size", "5"]) == 0
    return out


def test_video_gives_an_overlay_video_and_frame_labels(predicted: Path) -> None:
    frames, rate = read_video(predicted / "overlay" / "clip.mp4")
    assert len(frames) == FRAMES
    assert frames[0].shape == (64, 128, 3)
    assert rate == RATE
    labels = sorted((predicted / "labels" / "clip").glob("*.png"))
    assert [path.name for path in labels] == [f"{index:06d}.png" for index in range(FRAMES)]
    first = np.asarray(Image.open(labels[0]))
    assert first.shape == (64, 128) and first.dtype == np.uint8
    assert first.max() < 19


def test_every_third_frame_with_workers(
    checkpoint: str, clip: Path, predicted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    arguments = ["predict", "--checkpoint", checkpoint, str(clip), "--out", str(out), "--frames"]
    assert main([*arguments, "--every", "3", "--batch-size", "1", "--num-workers", "2"]) == 0
    frames, rate = read_video(out / "overlay" / "clip.mp4")
    assert len(frames) == FRAMES // 3
    assert rate == Fraction(RATE, 3)  # the same duration as the input
    names = sorted(path.name for path in (out / "labels" / "clip").glob("*.png"))
    assert names == ["000000.png", "000003.png", "000006.png", "000009.png"]
    # The same frames as the batched run without workers or skipping (in order, too).
    for name in names:
        again = np.asarray(Image.open(out / "labels" / "clip" / name))
        before = np.asarray(Image.open(predicted / "labels" / "clip" / name))
        assert (again == before).mean() > 0.999


def test_folder_batched_equals_one_at_a_time(checkpoint: str, toy: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for index, path in enumerate(sorted(val_images(toy).rglob("*.png"))):
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        pixels = read_image(path)
        Image.fromarray(pixels).save(folder / "sub" / f"{index}.png")
        # Another size in the same batch: predicted in its own group.
        Image.fromarray(pixels[:48, :96].copy()).save(folder / f"small{index}.png")
    base = ["predict", "--checkpoint", checkpoint, str(folder)]
    assert (
        main([*base, "--out", str(tmp_path / "one"), "--batch-size", "1", "--num-workers", "0"])
        == 0
    )
    assert (
        main([*base, "--out", str(tmp_path / "many"), "--batch-size", "3", "--num-workers", "2"])
        == 0
    )
    one = sorted((tmp_path / "one" / "labels").rglob("*.png"))
    assert len(one) == 8
    for path in one:
        many = tmp_path / "many" / "labels" / path.relative_to(tmp_path / "one" / "labels")
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(many)))
        relative = path.relative_to(tmp_path / "one" / "labels")
        assert (tmp_path / "many" / "overlay" / relative).is_file()


def error_line(capsys: pytest.CaptureFixture) -> str:
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error, error
    return error


def test_bad_videos_are_one_line_and_lose_nothing(
    checkpoint: str, clip: Path, predicted: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    (out / "overlay").mkdir(parents=True)
    keep = out / "overlay" / "keep.png"
    keep.write_bytes(b"existing")
    base = ["predict", "--checkpoint", checkpoint, "--out", str(out), "--num-workers", "0"]

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    assert main([*base, str(corrupt)]) == 2
    assert "corrupt.mp4: cannot read this video" in error_line(capsys)

    # A real video cut short: the header is there, the frames are not.
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[:600])
    assert main([*base, str(truncated)]) == 2
    assert "truncated.mp4" in error_line(capsys)

    for empty in (tmp_path / "empty.avi", tmp_path / "empty.mkv", tmp_path / "empty.mp4"):
        with av.open(str(empty), "w") as container:
            stream = container.add_stream("mpeg4", rate=RATE)
            stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p"
            container.start_encoding()
        assert empty.is_file()
        assert main([*base, str(empty)]) == 2
        assert "no frames" in error_line(capsys)

    # An unreadable image in a folder (read in a DataLoader worker): one line, too.
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "broken.png").write_bytes(b"not a png")
    assert main([*base[:-2], "--num-workers", "1", str(tmp_path / "folder")]) == 2
    assert "broken.png: cannot read this image" in error_line(capsys)

    # An existing overlay video is not replaced without --overwrite, nor are its frame labels.
    existing = predicted / "overlay" / "clip.mp4"
    before = existing.read_bytes()
    label = predicted / "labels" / "clip" / "000000.png"
    label_before = label.read_bytes()
    again = ["predict", "--checkpoint", checkpoint, str(clip), "--out", str(predicted)]
    assert main([*again, "--frames"]) == 2
    assert "pass --overwrite" in error_line(capsys)
    assert main(again) == 2
    assert "clip.mp4 exists; pass --overwrite" in error_line(capsys)
    assert existing.read_bytes() == before and label.read_bytes() == label_before

    # Nothing was written for the bad inputs; the unrelated file is untouched.
    assert sorted(path.name for path in out.rglob("*")) == ["keep.png", "overlay"]
    assert keep.read_bytes() == b"existing"


def test_onnx_model_is_used_instead_of_a_checkpoint(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring of --onnx, with a stand-in for udaseg.export.OnnxSegmentor."""

    class FakeOnnxSegmentor:
        num_classes = 19
        label_space = "cityscapes19"
        output = "logits"

        def __init__(self, path: str) -> None:
            assert Path(path).name == "model.onnx"

        def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
            # Class = brightness bucket of the red channel, as numpy (like ONNX Runtime).
            red = np.asarray(images, dtype=np.float32)[:, 0]
            logits = -np.abs(red[:, None] - 13.5 * np.arange(19)[None, :, None, None])
            if self.output == "argmax":
                return logits.argmax(1).astype(np.uint8)  # [B, H, W], as udaseg.export
            return logits

    fake = types.ModuleType("udaseg.export")
    fake.OnnxSegmentor = FakeOnnxSegmentor
    monkeypatch.setitem(sys.modules, "udaseg.export", fake)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    base = ["predict", "--onnx", str(model), str(clip), "--frames", "--num-workers", "0"]
    assert main([*base, "--out", str(tmp_path / "logits")]) == 0
    FakeOnnxSegmentor.output = "argmax"
    assert main([*base, "--out", str(tmp_path / "argmax")]) == 0
    frames, _ = read_video(tmp_path / "logits" / "overlay" / "clip.mp4")
    assert len(frames) == FRAMES
    labels = np.asarray(Image.open(tmp_path / "logits" / "labels" / "clip" / "000000.png"))
    assert labels.shape == (64, 128) and len(np.unique(labels)) > 1
    argmax = np.asarray(Image.open(tmp_path / "argmax" / "labels" / "clip" / "000000.png"))
    assert np.array_equal(labels, argmax)


@pytest.mark.parametrize("output", ["logits", "argmax"])
def test_real_onnx_export_predicts_like_the_checkpoint(
    checkpoint: str, clip: Path, predicted: Path, tmp_path: Path, output: str
) -> None:
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("udaseg.export")
    model = tmp_path / "model.onnx"
    export.export_checkpoint(checkpoint, model, output=output, dynamic=output == "logits")
    out = tmp_path / "out"
    arguments = ["predict", "--onnx", str(model), str(clip), "--out", str(out), "--frames"]
    assert main([*arguments, "--num-workers", "0"]) == 0
    for index in (0, FRAMES - 1):
        name = f"{index:06d}.png"
        onnx_labels = np.asarray(Image.open(out / "labels" / "clip" / name))
        torch_labels = np.asarray(Image.open(predicted / "labels" / "clip" / name))
        assert (onnx_labels == torch_labels).mean() > 0.99
