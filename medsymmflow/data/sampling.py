"""Seeded samplers for training, with optional class balancing and torch.distributed support, and the evaluation shards.

Class balancing draws every class equally often (with replacement), which helped SymmFlow on the
imbalanced PneumoniaMNIST. Under DDP each rank must draw from its own shard of the data, so the
distributed variants are MONAI's ``DistributedWeightedRandomSampler`` / ``DistributedSampler``
(both ``torch.utils.data.DistributedSampler`` subclasses, whose ``set_epoch`` MONAI's and ignite's
engines call every epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler

from medsymmflow.checks import positive_int

__all__ = ["class_balanced_weights", "distributed_world", "evaluation_sampler", "make_sampler"]


def _as_label_vector(labels: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    """Labels as an int64 ``(N,)`` tensor; accepts ``(N,)`` or medmnist's ``(N, 1)``."""
    tensor = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if tensor.ndim == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim != 1:
        raise ValueError(f"labels must have shape (N,) or (N, 1), got {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise ValueError("labels are empty: nothing to sample")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {tensor.dtype}")
    tensor = tensor.to(torch.int64)
    if int(tensor.min()) < 0:
        raise ValueError(f"labels must be >= 0, got minimum {int(tensor.min())}")
    return tensor


def class_balanced_weights(labels: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    """Per-sample weights ``1 / count(class)``, float64 ``(N,)``: every present class gets total weight 1."""
    vector = _as_label_vector(labels)
    counts = torch.bincount(vector).to(torch.float64)
    return 1.0 / counts[vector]


def distributed_world() -> tuple[int, int] | None:
    """``(world_size, rank)`` when torch.distributed is initialised with more than one process, else None."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            return world, torch.distributed.get_rank()
    return None


def make_sampler(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    balanced: bool,
    seed: int | None = None,
    num_samples: int | None = None,
    distributed: bool | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> Sampler[int]:
    """A seeded training sampler over ``len(labels)`` samples (pass it to DataLoader without ``shuffle``).

    ``balanced``: draw classes equally often (WeightedRandomSampler, with replacement); otherwise a
    random permutation. ``seed=None`` draws from torch's global RNG, which the trainer re-seeds at every
    epoch (EpochSeedHandler), so a resumed run shuffles exactly like an uninterrupted one; an int seed
    gives the sampler its own generator. ``num_samples`` is the total number of draws per epoch (default
    ``len(labels)``; under DDP it is split over the ranks). ``distributed=None`` detects an initialised
    process group with more than one process; ``num_replicas``/``rank`` override the group (e.g. in tests).
    """
    vector = _as_label_vector(labels)
    n = int(vector.shape[0])
    if num_samples is not None:
        positive_int(num_samples, "num_samples")
    if distributed is None:
        distributed = distributed_world() is not None or num_replicas is not None

    if not distributed:
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        if balanced:
            weights = class_balanced_weights(vector)
            return WeightedRandomSampler(weights, num_samples or n, replacement=True, generator=generator)
        return RandomSampler(range(n), num_samples=num_samples, generator=generator)

    world = distributed_world()
    if num_replicas is None or rank is None:
        if world is None:
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group "
                "(torchrun + init_process_group) or explicit num_replicas and rank"
            )
        num_replicas = world[0] if num_replicas is None else num_replicas
        rank = world[1] if rank is None else rank
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")

    from monai.data import DistributedSampler, DistributedWeightedRandomSampler

    # the DistributedSampler base only needs len(dataset): the indices stand in for the dataset
    indices = range(n)
    seed = 0 if seed is None else int(seed)  # DistributedSampler derives each epoch's order from seed + epoch
    if balanced:
        per_rank = None if num_samples is None else math.ceil(num_samples / num_replicas)
        # plain floats: MONAI looks weights up one index at a time, which is slow on a tensor
        return DistributedWeightedRandomSampler(
            indices,
            class_balanced_weights(vector).tolist(),
            num_samples_per_rank=per_rank,
            generator=torch.Generator().manual_seed(int(seed) + int(rank)),
            num_replicas=num_replicas,
            rank=rank,
            seed=int(seed),
        )
    if num_samples is not None:
        raise ValueError("num_samples is only supported with balanced=True under torch.distributed")
    return DistributedSampler(indices, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed))


def evaluation_sampler(dataset: Sized) -> Sampler[int] | None:
    """The sampler of an evaluation DataLoader: under torch.distributed each rank's disjoint shard of ``dataset``, else None.

    ``None`` leaves the DataLoader's own order (one process sees the whole split). With an initialised
    process group of W > 1 processes it is MONAI's ``DistributedSampler(even_divisible=False, shuffle=False)``:
    rank r gets samples r, r + W, r + 2W, ... and no sample twice (torch's DistributedSampler would pad the
    last shard by repeating samples, which would count them twice in the metrics).
    """
    world = distributed_world()
    if world is None:
        return None
    if len(dataset) < world[0]:
        raise ValueError(f"{len(dataset)} evaluation samples cannot be shared by {world[0]} processes: run fewer processes")
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, even_divisible=False, num_replicas=world[0], rank=world[1], shuffle=False)
