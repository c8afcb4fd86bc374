"""Running under `torchrun`: which process this is, the process group, and each rank's contiguous share of work.

One process (no torchrun) is a world of size 1 and touches nothing of torch.distributed. Under torchrun the
process group uses NCCL when the rank has a GPU and gloo otherwise; a rank with a GPU uses cuda:LOCAL_RANK.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# A rank waits at a barrier for the slowest rank's share of a long extraction or epoch.
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(device_ids=[self.local_rank] if dist.get_backend() == "nccl" else None)

    def gather(self, value: object) -> list[object]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[object] = [None] * self.size
        dist.all_gather_object(values, value)
        return values


def world(device: str = "auto") -> World:
    """This process's place under torchrun, with the process group started (once); World() without torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=BARRIER_TIMEOUT)
    return World(rank, size, local_rank)


def shard(length: int, batch_size: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [start, stop) of `rank`: contiguous, in order, cut at batch boundaries so that every batch holds
    the same images as in a one-process run (and so gives the same numbers)."""
    batches = -(-length // batch_size)
    first, last = batches * rank // size, batches * (rank + 1) // size
    return min(first * batch_size, length), min(last * batch_size, length)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
