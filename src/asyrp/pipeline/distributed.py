"""Multi-process runs under ``torchrun``: data-parallel training (gradients summed over processes) and sharded
precompute / edit / evaluate (each rank a contiguous slice; results merged by rank 0).

``torchrun --nproc_per_node=N -m asyrp train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`context_from_env`
turns them into a :class:`Context` (NCCL on CUDA, gloo on CPU). A plain ``asyrp train`` gets ``None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int

    def shard(self, items: Sequence) -> list:
        """This rank's contiguous slice of ``items`` (sizes differ by at most one)."""
        n = len(items)
        lo = self.rank * n // self.world_size
        hi = (self.rank + 1) * n // self.world_size
        return list(items[lo:hi])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum gradients over processes in one flat buffer (the loss is already weighted by each shard's share)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def all_gather_objects(self, obj) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def context_from_env() -> Context | None:
    """A Context when launched by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Context(rank=rank, world_size=world, local_rank=local_rank)
