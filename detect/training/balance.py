"""Class rebalancing by repeat-factor sampling (LVIS, Gupta et al. 2019; detectron2's
``RepeatFactorTrainingSampler``), for datasets where a defect class is rare.

For each class ``c``, ``f(c)`` is the fraction of training images that contain it and its
repeat factor is ``r(c) = max(1, sqrt(t / f(c)))``: a class in at least ``t`` of the images is
not repeated, a rarer one is, by the square root of how much rarer it is. An image's factor is
the largest of its classes' (1 for an image without objects). Each epoch an image appears
``floor(r)`` times plus once more with probability ``r - floor(r)``.

:class:`RepeatFactorSampler` builds each epoch's repeated index list from ``(seed, epoch)``
alone, identically on every process, shuffles it, fixes its length at the expected epoch
size (``round(sum of factors)``, so the schedule, the progress bar and a mid-epoch resume see
the same number of batches every epoch) and hands each process every ``world``-th entry, as
:class:`torch.utils.data.distributed.DistributedSampler` does.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["BALANCE_CHOICES", "RepeatFactorSampler", "class_repeat_factors", "image_repeat_factors"]

BALANCE_CHOICES = ("none", "repeat")


def class_repeat_factors(image_classes: Sequence[Iterable[str]], t: float) -> dict[str, float]:
    """``r(c) = max(1, sqrt(t / f(c)))`` for every class in ``image_classes`` (one set of class
    names per training image), ``f(c)`` the fraction of images containing ``c``."""
    if not t > 0:
        raise ValueError(f"t must be > 0, got {t}")
    n = len(image_classes)
    counts: dict[str, int] = {}
    for names in image_classes:
        for name in set(names):
            counts[name] = counts.get(name, 0) + 1
    return {c: max(1.0, math.sqrt(t / (k / n))) for c, k in sorted(counts.items())}


def image_repeat_factors(image_classes: Sequence[Iterable[str]], factors: Mapping[str, float]) -> list[float]:
    """Each image's factor: the largest of its classes' (1.0 for an image without objects)."""
    return [max((factors[c] for c in names), default=1.0) for names in image_classes]


class RepeatFactorSampler(Sampler[int]):
    """This process's share of an epoch in which image ``i`` appears about ``factors[i]``
    times (see the module docstring); :meth:`set_epoch` picks the epoch, as with
    ``DistributedSampler``."""

    def __init__(self, factors: Sequence[float], *, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        if not factors:
            raise ValueError("no images to sample")
        if any(f < 1 for f in factors):
            raise ValueError("repeat factors must be >= 1")
        self.factors = torch.tensor(list(factors), dtype=torch.float64)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.epoch_size = max(1, int(round(float(self.factors.sum()))))
        self.num_samples = math.ceil(self.epoch_size / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> list[int]:
        """The whole repeated epoch (every process's share, before sharding), in order: the
        same list on every process for a given seed and epoch."""
        g = torch.Generator().manual_seed(self.seed * 10_000 + self.epoch)
        whole = torch.floor(self.factors)
        reps = (whole + (torch.rand(len(self.factors), generator=g, dtype=torch.float64) < self.factors - whole)).long()
        indices = torch.repeat_interleave(torch.arange(len(self.factors)), reps)
        indices = indices[torch.randperm(len(indices), generator=g)].tolist()
        # The stochastic part makes the count vary by a few; the epoch keeps its expected size.
        while len(indices) < self.epoch_size:
            indices += indices[: self.epoch_size - len(indices)]
        return indices[: self.epoch_size]

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        total = self.num_samples * self.num_replicas
        while len(indices) < total:  # every process gets as many (DistributedSampler pads alike)
            indices += indices[: total - len(indices)]
        return iter(indices[self.rank:total:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
