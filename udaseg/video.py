"""Reading and writing videos for `udaseg predict`, with PyAV (`av`, FFmpeg bundled in the wheel).

- `probe_video(path)`: size, frame rate and a first decoded frame, or a one-line `DataError`
  (not a video, corrupt, no video stream, zero frames) before any output is written.
- `VideoFrames`: a torch `IterableDataset` yielding batches of decoded frames
  (`{"images": uint8 [B, 3, H, W], "indices": int64 [B]}`) in order, for a `DataLoader` with
  `batch_size=None`; with several workers, batch k comes from worker k % workers (each worker
  decodes the stream and keeps its own batches), so the loader still returns them in order.
- `VideoWriter`: H.264 (libx264, yuv420p) in an .mp4 when the FFmpeg build has the encoder,
  else MPEG-4 part 2 (`mpeg4`, in every FFmpeg build); written to a temporary file beside the
  destination and renamed over it at the end, so a failure leaves no half video and an
  existing one untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from udaseg.errors import DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# Preferred encoders, best first: H.264, then MPEG-4 part 2 which every FFmpeg build has.
CODECS = ("libx264", "mpeg4")
INSTALL_HINT = "pip install av (PyAV, which bundles FFmpeg)"


def import_av() -> ModuleType:
    """The `av` module, or a one-line DataError saying how to install it."""
    try:
        import av
    except ImportError:
        raise DataError(f"reading and writing videos needs PyAV: {INSTALL_HINT}") from None
    return av


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@dataclass
class VideoInfo:
    path: Path
    height: int
    width: int
    rate: Fraction  # frames per second
    frames: int | None  # as the container says (may be absent or approximate)


def probe_video(path: str | Path) -> VideoInfo:
    """Open `path`, decode its first frame; a DataError if that cannot be done."""
    av = import_av()
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: has no video stream (or no frames)")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            if first is None:
                raise DataError(f"{path}: the video has no frames")
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            frames = int(stream.frames) if stream.frames else None
            return VideoInfo(path, first.height, first.width, Fraction(rate), frames)
    except DataError:
        raise
    except EOFError:  # av.error.EOFError: the stream ends before its first frame
        raise DataError(f"{path}: the video has no frames") from None
    except (av.FFmpegError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read this video ({_reason(error)})") from None


def iterate_frames(
    path: str | Path, every: int = 1, keep: Callable[[int], bool] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, uint8 RGB [H, W, 3]) for every `every`-th frame; errors as DataError.

    `keep(position)` (position = index // every) skips the RGB conversion of selected frames
    another reader handles.
    """
    av = import_av()
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index % every == 0 and (keep is None or keep(index // every)):
                    yield index, frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot decode the video ({_reason(error)})") from None


class VideoFrames(IterableDataset):
    """Batches of every `every`-th frame of a video, in order (see the module docstring).

    Items: `{"images": uint8 [B, 3, H, W], "indices": int64 [B]}`, or `{"error": message}`
    once if decoding fails (raised as DataError by the consumer, so the message stays one line
    instead of a worker traceback).
    """

    def __init__(self, path: str | Path, batch_size: int, every: int = 1) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.every = every

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        batch_size = self.batch_size

        def mine(position: int) -> bool:
            return (position // batch_size) % workers == worker_id

        images: list[np.ndarray] = []
        indices: list[int] = []
        try:
            for index, frame in iterate_frames(self.path, self.every, mine):
                images.append(frame)
                indices.append(index)
                if len(images) == batch_size:
                    yield _batch(images, indices)
                    images, indices = [], []
            if images:
                yield _batch(images, indices)
        except DataError as error:
            yield {"error": str(error)}


def _batch(images: list[np.ndarray], indices: list[int]) -> dict[str, torch.Tensor]:
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return {"images": stacked, "indices": torch.tensor(indices, dtype=torch.int64)}


def available_codec() -> str:
    """The first encoder of CODECS this FFmpeg build has."""
    av = import_av()
    for name in CODECS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # av raises UnknownCodecError (a ValueError) or FFmpegError
            continue
        return name
    raise DataError(f"this FFmpeg build has none of the encoders {', '.join(CODECS)}")


class VideoWriter:
    """Write uint8 RGB [H, W, 3] frames into an .mp4 at `rate` frames per second.

    Odd sizes are padded by one edge pixel (yuv420p needs even sizes). Use as a context
    manager: the file appears at `path` only when the block ends without an exception.
    """

    def __init__(
        self, path: str | Path, rate: Fraction, height: int, width: int, codec: str | None = None
    ) -> None:
        self.av = import_av()
        self.path = Path(path)
        self.codec = codec or available_codec()
        self.height, self.width = height, width
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        os.close(handle)
        self.temporary = Path(temporary)
        self.container = self.av.open(str(self.temporary), "w", format="mp4")
        self.stream = self.container.add_stream(self.codec, rate=rate)
        self.stream.width = width + width % 2
        self.stream.height = height + height % 2
        self.stream.pix_fmt = "yuv420p"
        if self.codec == "libx264":
            self.stream.options = {"crf": "20", "preset": "veryfast"}
        else:
            self.stream.bit_rate = 8_000_000

    def write(self, frame: np.ndarray) -> None:
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame {frame.shape} is not {self.height}x{self.width}")
        if self.height % 2 or self.width % 2:
            frame = np.pad(frame, ((0, self.height % 2), (0, self.width % 2), (0, 0)), "edge")
        video_frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self.stream.encode(video_frame):
            self.container.mux(packet)
        self.frames += 1

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            if kind is None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
            self.container.close()
            if kind is None:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.temporary, 0o666 & ~umask)
                os.replace(self.temporary, self.path)
        finally:
            with contextlib.suppress(OSError):
                self.temporary.unlink()


def read_video(path: str | Path) -> tuple[list[np.ndarray], Fraction]:
    """All frames (uint8 RGB [H, W, 3]) and the frame rate: for tests and small clips."""
    info = probe_video(path)
    return [frame for _, frame in iterate_frames(path)], info.rate
