"""Batch samplers the trainer accepts: any ``torch.utils.data.Sampler`` of index lists with
``set_epoch(epoch)`` whose batches depend only on (seed, epoch), so that a resumed run sees the
same batches as one that never stopped.

- :class:`ShapeBatchSampler`: every example once per epoch, batches of one shape (aspect-ratio
  buckets), shuffled;
- :class:`WeightedBatchSampler`: importance sampling, examples drawn with replacement in
  proportion to a weight (e.g. a judge's score), batches of one shape.
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence

import torch

from editforge.errors import UsageError


def _groups(shapes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(index)
    return groups


class ShapeBatchSampler(torch.utils.data.Sampler):
    """Batches of indices that share one shape, shuffled by (seed, epoch): the same every run."""

    def __init__(self, shapes: Sequence[tuple[int, int]], batch_size: int, seed: int = 0, drop_last: bool = True):
        self.groups = _groups(shapes)
        self.batch_size, self.seed, self.drop_last, self.epoch = batch_size, seed, drop_last, 0
        if drop_last and all(len(g) < batch_size for g in self.groups.values()):
            raise UsageError(
                f"no shape has a full batch of {batch_size} examples; lower --train_batch_size "
                f"(largest group: {max(len(g) for g in self.groups.values())})"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        batches = []
        for shape in sorted(self.groups):
            indices = list(self.groups[shape])
            rng.shuffle(indices)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start: start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class WeightedBatchSampler(torch.utils.data.Sampler):
    """Importance sampling: each epoch draws ``num_samples`` examples (default: as many as there are)
    with replacement, example *i* with probability ``weights[i] / sum(weights)``, and batches them
    by shape (one shape per batch, in the order the draws fill them). A weight of 0 is never drawn."""

    def __init__(self, weights: Sequence[float], batch_size: int, shapes: Sequence[tuple[int, int]] | None = None,
                 num_samples: int | None = None, seed: int = 0):
        self.weights = torch.as_tensor(list(weights), dtype=torch.float64)
        if self.weights.ndim != 1 or len(self.weights) == 0:
            raise UsageError("importance sampling needs one weight per example")
        bad = torch.nonzero(~torch.isfinite(self.weights) | (self.weights < 0))
        if len(bad):
            index = int(bad[0])
            raise UsageError(f"example {index}: sampling weight {float(self.weights[index])} is not a finite number >= 0")
        if float(self.weights.sum()) <= 0:
            raise UsageError("every sampling weight is 0: nothing can be drawn")
        self.shapes = [tuple(s) for s in shapes] if shapes is not None else [(0, 0)] * len(self.weights)
        if len(self.shapes) != len(self.weights):
            raise UsageError(f"{len(self.weights)} weights but {len(self.shapes)} shapes")
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.num_samples = num_samples if num_samples is not None else len(self.weights)
        if self.num_samples < batch_size:
            raise UsageError(f"{self.num_samples} draws per epoch cannot fill a batch of {batch_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist()
        open_batches: dict[tuple[int, int], list[int]] = {}
        batches = []
        for index in draws:
            batch = open_batches.setdefault(self.shapes[index], [])
            batch.append(index)
            if len(batch) == self.batch_size:
                batches.append(open_batches.pop(self.shapes[index]))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
