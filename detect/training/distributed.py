"""Training on several processes: ``torchrun --nproc_per_node N -m detect.train ...``.

torchrun starts N copies of the command with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set;
:func:`setup` joins them into one process group (NCCL on GPUs, gloo on CPUs) and says which
one this process is. Each process then trains on its share of every epoch's batches
(:class:`torch.utils.data.distributed.DistributedSampler`) and DistributedDataParallel
averages the gradients, so every process ends each step with the same weights. Only rank 0
writes files and prints.

A single process (no torchrun) gets ``Dist(rank=0, world=1)`` and every helper here is a
no-op, so the training code has one path.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from detect.common.errors import UsageError

__all__ = ["Dist", "setup"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` processes, ``local_rank`` on
    this machine (its GPU when there are GPUs)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def broadcast(self, value: Any) -> Any:
        """``value`` as rank 0 has it (any picklable object), on every rank."""
        if not self.active:
            return value
        box = [value]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, value)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (a Ctrl-C seen by one)."""
        return any(self.gather(bool(flag))) if self.active else bool(flag)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (batch-norm running statistics, which each
        process updates from its own images): the model every rank holds is then the one
        rank 0 saves."""
        if self.active:
            for buffer in model.buffers():
                tdist.broadcast(buffer, src=0)

    def close(self) -> None:
        if self.active and tdist.is_initialized():
            tdist.destroy_process_group()


def setup(device_name: str) -> tuple[Dist, str]:
    """Join the torchrun job when there is one; returns this process's :class:`Dist` and the
    device it should use (``cuda:LOCAL_RANK`` with GPUs, else ``device_name``).

    Raises:
        UsageError: torchrun asked for more processes than this machine has GPUs while
            ``--device`` names CUDA.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"torchrun started {world} processes here but this machine has "
                             f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return Dist(rank=rank, world=world, local_rank=local_rank), device_name
