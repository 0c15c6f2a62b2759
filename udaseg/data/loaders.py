"""Deterministic training streams and sharded evaluation loaders.

A `TrainStream` is an endless sequence of batches that is a pure function of
`(seed, name, step)`: resuming at step k yields exactly the batches k, k+1, ... that an
uninterrupted run would have seen, whatever the number of data-loading workers.

- Epoch e is a permutation of the dataset drawn from a generator seeded by
  `(seed, crc32(name), e)` (crc32, not Python's `hash()`, which is salted per process).
- With W processes, position j of the permutation belongs to rank `j % W`; each rank keeps
  `len // W` samples, so shards are disjoint and equal; the rest of the epoch is dropped.
- Step s is batch `s % batches_per_epoch` of epoch `s // batches_per_epoch`.
- The augmentation seed of a sample derives from `(seed, crc32(name), epoch, j)` through
  `np.random.SeedSequence` and travels with its index to the worker, as `dataset[(index,
  seed)]`; so neither worker scheduling nor worker count can change a batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from udaseg.errors import DataError

# Per-pixel maps of a sample that are batched like the label (int64 [H, W] each).
LABEL_KEYS = ("label", "pseudo_label")
# Other per-sample maps batched alike: ProDA's soft pseudo labels, float16 [C, H, W]
# (`data.target.soft_pseudo_labels`).
MAP_KEYS = ("soft_pseudo_label",)

# Tags that keep the permutation and the per-sample seed streams apart.
_PERMUTATION_STREAM = 0
_SAMPLE_STREAM = 1


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch.

    Args:
        samples: dicts with "image" uint8 [3, H, W], optionally "label" and "pseudo_label"
            int64 [H, W], "name" str and "index" int, all of the same size.
    Returns:
        {"image": uint8 [B, 3, H, W], "label": int64 [B, H, W] (if the samples have labels),
         "pseudo_label": int64 [B, H, W] (if they have pseudo labels), "name": list of B str,
         "index": int64 [B]}.
    Raises:
        DataError: the samples differ in size (no crop/resize for a training set, or
            validation labels of different native sizes with batch_size > 1).
    """
    batch: dict[str, Any] = {
        "image": _stack(samples, "image"),
        "name": [sample["name"] for sample in samples],
        "index": torch.tensor([sample["index"] for sample in samples], dtype=torch.int64),
    }
    for key in (*LABEL_KEYS, *MAP_KEYS):
        if key in samples[0]:
            batch[key] = _stack(samples, key)
    return batch


def _stack(samples: list[dict[str, Any]], key: str) -> torch.Tensor:
    shapes = {tuple(sample[key].shape) for sample in samples}
    if len(shapes) > 1:
        names = ", ".join(sample["name"] for sample in samples)
        raise DataError(
            f"cannot batch {key}s of different sizes {sorted(shapes)} ({names}); set `crop` or "
            "`resize` for training sets, or use batch size 1 for validation"
        )
    return torch.stack([sample[key] for sample in samples])


class TrainStream:
    """An endless, epoch-reshuffled, resumable stream of training batches.

    Args:
        dataset: a dataset whose `__getitem__` takes `(index, augmentation seed)` pairs.
        batch_size: samples per batch on this process.
        seed: the experiment seed (non-negative; negative values are wrapped).
        name: the stream's name ("source", "target"), so that two streams over the same data
            with the same seed still differ.
        rank: this process's rank.
        world_size: the number of processes.
        num_workers: data-loading processes (0 loads in the calling process).
        pin_memory: pin batches in page-locked memory (faster copies to a GPU).

    Raises:
        DataError: the dataset has fewer than `world_size * batch_size` samples.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        name: str,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size={batch_size}, "
                f"rank={rank}, world_size={world_size}"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = int(seed) % 2**64
        self.name = name
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._name_key = zlib.crc32(name.encode("utf-8"))
        self.samples_per_rank = len(dataset) // world_size
        self.batches_per_epoch = self.samples_per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"{name} dataset: {len(dataset)} samples are too few for batches of {batch_size} "
                f"on {world_size} process(es); at least {batch_size * world_size} are needed"
            )
        self._cached_epoch: int | None = None
        self._cached_permutation: np.ndarray | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of all dataset indices in `epoch` (int64 [len(dataset)])."""
        if epoch != self._cached_epoch:
            sequence = np.random.SeedSequence(
                self.seed, spawn_key=(self._name_key, _PERMUTATION_STREAM, epoch)
            )
            self._cached_permutation = np.random.default_rng(sequence).permutation(
                len(self.dataset)
            )
            self._cached_epoch = epoch
        assert self._cached_permutation is not None
        return self._cached_permutation

    def sample_seed(self, epoch: int, position: int) -> int:
        """The augmentation seed of the sample at `position` of epoch `epoch`'s permutation."""
        sequence = np.random.SeedSequence(
            self.seed, spawn_key=(self._name_key, _SAMPLE_STREAM, epoch, position)
        )
        return int(sequence.generate_state(1, dtype=np.uint64)[0])

    def batch_indices(self, step: int) -> list[tuple[int, int]]:
        """The (dataset index, augmentation seed) pairs of this rank's batch at `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, batch_in_epoch = divmod(step, self.batches_per_epoch)
        permutation = self.permutation(epoch)
        first = batch_in_epoch * self.batch_size
        positions = [
            (first + offset) * self.world_size + self.rank for offset in range(self.batch_size)
        ]
        return [(int(permutation[p]), self.sample_seed(epoch, p)) for p in positions]

    def epoch_of(self, step: int) -> int:
        return step // self.batches_per_epoch

    def batches(self, start_step: int = 0) -> Iterator[dict[str, Any]]:
        """Batches `start_step`, `start_step + 1`, ... (endless).

        Yields:
            {"image": uint8 [B, 3, H, W], "label": int64 [B, H, W] (labelled datasets),
             "pseudo_label": int64 [B, H, W] (datasets with pseudo labels),
             "name": list of B str, "index": int64 [B]}.
        """
        loader = DataLoader(
            self.dataset,
            batch_sampler=_StepBatchSampler(self, start_step),
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
        )
        return iter(loader)


class _StepBatchSampler:
    """Yields `stream.batch_indices(step)` for step = start, start + 1, ... forever.

    The sampler runs in the main process; workers only receive the lists, so the batches do
    not depend on how many workers there are or which one loads a batch.
    """

    def __init__(self, stream: TrainStream, start_step: int) -> None:
        self.stream = stream
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.stream.batch_indices(step)
            step += 1


def eval_loader(
    dataset: Dataset,
    batch_size: int = 1,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A sequential loader over this rank's share of an evaluation set.

    Rank r reads indices r, r + world_size, ...; shards are disjoint, cover the whole set and
    are not padded (padding would count some images twice in a confusion matrix).

    Returns:
        a DataLoader of batches as `collate` makes them (last batch possibly smaller).
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size={batch_size}, "
            f"rank={rank}, world_size={world_size}"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(range(rank, len(dataset), world_size)),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=False,
    )
