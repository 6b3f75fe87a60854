"""Evaluation under torch.distributed: which shard of a split a rank evaluates, the split's per-sample results
gathered back in its order, and the one rank that writes files.

An evaluation is *sharded* when its DataLoader's sampler is a ``DistributedSampler`` over W > 1 processes
(:func:`medsymmflow.data.evaluation_sampler`): rank r then evaluates samples r, r + W, r + 2W, ... of the
split, which is the layout of ``DistributedSampler(shuffle=False)`` without padding, so the split's order
is rebuilt by taking the ranks' k-th samples in rank order (:func:`interleave`). Reports sum their
counts over the ranks and gather their per-sample rows, so that every rank ends with the numbers one
process reaches on the whole split; only :func:`is_main_process` writes them. An evaluation that is not
sharded (one process, or every rank seeing the whole split, as the validation of a DDP training does when
its loader has no distributed sampler) does no collective at all: a rank may then run it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from medsymmflow.data.sampling import distributed_world

__all__ = [
    "collective_device", "evaluation_shards", "gather_in_order", "gather_tensor_in_order", "interleave", "is_main_process",
    "wait_for_every_rank",
]

_FIX = "use medsymmflow.data.evaluation_sampler(dataset), i.e. monai.data.DistributedSampler(dataset, even_divisible=False, shuffle=False)"


def is_main_process() -> bool:
    """True in the one process that writes files: rank 0 of an initialised process group, or a process without one."""
    world = distributed_world()
    return world is None or world[1] == 0


def evaluation_shards(data_loader: Any) -> tuple[int, int] | None:
    """``(world_size, rank)`` when ``data_loader`` gives this rank a shard of the split, None when it reads the whole split.

    Raises ValueError for a distributed sampler that would change the metrics or their order: one that
    shuffles, pads the last shard with repeated samples or drops samples (torch's ``DistributedSampler``
    does either when the split does not divide by the world size), a loader that drops its last batch,
    or a sampler of another process group.
    """
    sampler = getattr(data_loader, "sampler", None)
    if not isinstance(sampler, torch.utils.data.DistributedSampler) or sampler.num_replicas == 1:
        return None
    world = distributed_world()
    if world != (sampler.num_replicas, sampler.rank):
        raise ValueError(
            f"the evaluation's DistributedSampler is rank {sampler.rank} of {sampler.num_replicas} but the process group "
            f"is {'not initialised' if world is None else f'rank {world[1]} of {world[0]}'}"
        )
    if sampler.shuffle:
        raise ValueError(f"the evaluation's DistributedSampler shuffles: {_FIX}")
    n = len(sampler.dataset)  # type: ignore[arg-type]
    if sampler.total_size != n:
        what = "pads the shards with repeated samples" if sampler.total_size > n else "drops samples"
        raise ValueError(f"the evaluation's DistributedSampler {what} ({sampler.total_size} for {n}): {_FIX}")
    if getattr(data_loader, "drop_last", False):
        raise ValueError("the evaluation's DataLoader has drop_last=True: every sample of the split must be evaluated")
    return world


def interleave(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """The split's order back from the ranks' shards: rank r's k-th item goes to position ``k * W + r``."""
    out: list[Any] = []
    for k in range(max((len(p) for p in parts), default=0)):
        out.extend(p[k] for p in parts if k < len(p))
    return out


def gather_in_order(items: Sequence[Any], shards: tuple[int, int] | None) -> list[Any]:
    """Every rank's ``items`` (one per sample, in its shard's order) as one list in the split's order, on every rank.

    ``shards`` is :func:`evaluation_shards`' answer; None returns ``items`` as a list (no collective).
    Items are pickled (``torch.distributed.all_gather_object``), so keep them small: rows, not images.
    """
    if shards is None:
        return list(items)
    parts: list[Any] = [None] * shards[0]
    torch.distributed.all_gather_object(parts, list(items))
    return interleave(parts)


def collective_device() -> torch.device:
    """Where tensors must be for a collective of the current process group: the current GPU under NCCL, else the CPU."""
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wait_for_every_rank() -> None:
    """Block until every rank of the process group gets here (a no-op without one), e.g. until rank 0 has saved a checkpoint."""
    if distributed_world() is not None:
        torch.distributed.barrier()


def gather_tensor_in_order(tensor: torch.Tensor, dim: int, shards: tuple[int, int] | None) -> torch.Tensor:
    """Every rank's ``tensor`` (samples along ``dim``, in its shard's order) as one CPU tensor in the split's order, on every rank."""
    if shards is None:
        return tensor
    world = shards[0]
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, tensor.detach().cpu())
    shape = list(parts[0].shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    out = parts[0].new_empty(shape)
    for rank, part in enumerate(parts):
        out.movedim(dim, 0)[rank::world] = part.movedim(dim, 0)
    return out
