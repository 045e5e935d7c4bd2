"""One run on several devices with DistributedDataParallel, started by ``torchrun``.

``pipeline/train.py`` is the same entry point for one process and for
``torchrun --nproc_per_node N pipeline/train.py ...``: :func:`launch` reads
torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``, initialises the process
group (nccl for CUDA, gloo for CPU) and yields a :class:`World`; without
torchrun it yields the single-process world, whose helpers do nothing, so
a plain run is unchanged.

Semantics (docs/multi_gpu.md has the reasoning):

- Batch sizes in params are GLOBAL. Every rank draws the same global index
  batch and the same augmentations from identically seeded generators and
  keeps its contiguous share (:meth:`World.share`): the global batch is
  exactly the one a single process draws. Each rank augments only its share
  of the unlabeled views (the random draws are made for the whole batch, so
  they match a single process's), and the whole labeled weak view, from which
  CTAugment's probes are drawn.
- Each rank runs one concatenated forward pass over its share (labeled, weak,
  strong in the single-GPU proportions) with its own BatchNorm batch
  statistics, not synchronised (docs/protocol.md §7.3). The loss is a mean over the share and DDP averages gradients, so
  with equal shares the gradient is that of the global mean.
- BatchNorm running statistics: rank 0's are authoritative and copied to
  every rank after each step (:meth:`World.sync_buffers`, DDP's own buffer
  broadcast is off), so every rank holds the same model and EMA.
- Host-side agreement (stop flag, barriers, the evaluated accuracy) goes
  through a gloo group, so on CUDA it never waits for the GPU stream.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
_DDP_ARGUMENTS = inspect.signature(DistributedDataParallel.__init__).parameters


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one run; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None  # the gloo process group for host-side values; None in a single process

    @property
    def distributed(self) -> bool:
        return self.control is not None

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints and metrics."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` under torchrun on CUDA, else ``device``."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def share(self, global_size: int, name: str) -> slice:
        """This rank's contiguous part of a global batch of ``global_size`` images."""
        if global_size % self.world_size:
            raise ValueError(f"{name} = {global_size} is not divisible by the number of processes "
                             f"{self.world_size}: batch sizes in params are global and every rank takes an equal "
                             f"share; use a multiple of {self.world_size} or another --nproc_per_node")
        size = global_size // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged over ranks), or itself in one process."""
        if not self.distributed:
            return model
        device = next(model.parameters()).device
        # Buffers are synchronised by sync_buffers after each step, not by DDP before each forward.
        no_forward_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGUMENTS
                           else {"broadcast_buffers": False})  # renamed in torch 2.13
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                       **no_forward_sync)

    @torch.no_grad()
    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's floating-point buffers (BN running statistics) to every rank, in one broadcast.

        Integer buffers (BN's step counters) advance identically on every rank.
        """
        if not self.distributed:
            return
        buffers = [buffer for buffer in model.buffers() if buffer.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([buffer.reshape(-1) for buffer in buffers])
        dist.broadcast(flat, src=0)
        torch._foreach_copy_(buffers, [part.view_as(buffer) for part, buffer in
                                       zip(flat.split([buffer.numel() for buffer in buffers]), buffers)])

    def mean(self, tensor: Tensor) -> Tensor:
        """The elementwise mean of ``tensor`` over ranks (a device tensor, no host sync)."""
        if not self.distributed:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total / self.world_size

    def gather(self, tensor: Tensor) -> Tensor:
        """Every rank's ``tensor`` (same shape on all), concatenated along dim 0 in rank order."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def first_marked(self, marker: Tensor) -> int:
        """The smallest non-negative value of a scalar ``marker`` over ranks, or -1 when every rank has -1."""
        if not self.distributed:
            return int(marker)
        none = torch.iinfo(torch.long).max
        value = torch.where(marker >= 0, marker.long(), torch.full_like(marker, none, dtype=torch.long)).cpu()
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self.control)
        return -1 if int(value) == none else int(value)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (the stop request)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value)

    def from_main(self, compute: Callable[[], float]) -> float:
        """``compute()`` run on rank 0 only; every rank returns its value (the others wait for it)."""
        if not self.distributed:
            return compute()
        value = torch.tensor([compute() if self.is_main else 0.0], dtype=torch.float64)
        dist.broadcast(value, src=0, group=self.control)
        return float(value)

    def barrier(self) -> None:
        """Wait until every rank got here (after rank 0 wrote a checkpoint)."""
        if self.distributed:
            dist.barrier(group=self.control)


SINGLE_PROCESS = World()


def _environment() -> tuple[int, int, int] | None:
    present = [name for name in TORCHRUN_VARIABLES if name in os.environ]
    if not present:
        return None
    if len(present) != len(TORCHRUN_VARIABLES):
        missing = sorted(set(TORCHRUN_VARIABLES) - set(present))
        raise ValueError(f"environment has {', '.join(present)} but not {', '.join(missing)}: "
                         "start multi-process runs with torchrun, which sets all of them")
    values = {}
    for name in TORCHRUN_VARIABLES:
        text = os.environ[name]
        if not text.isdigit():
            raise ValueError(f"environment variable {name}={text!r} is invalid: expected a non-negative integer")
        values[name] = int(text)
    if values["WORLD_SIZE"] < 1 or values["RANK"] >= values["WORLD_SIZE"]:
        raise ValueError(f"RANK={values['RANK']} and WORLD_SIZE={values['WORLD_SIZE']} are invalid: "
                         "expected 0 <= RANK < WORLD_SIZE")
    return values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]


@contextmanager
def launch(device: str) -> Iterator[World]:
    """The world of this process, with its process group initialised for the duration.

    ``device`` is ``train.device`` (auto | cpu | cuda): CUDA ranks use nccl and
    ``cuda:LOCAL_RANK``, CPU ranks gloo. Without torchrun's variables this
    yields :data:`SINGLE_PROCESS` and initialises nothing.
    """
    environment = _environment()
    if environment is None:
        yield SINGLE_PROCESS
        return
    world_size, rank, local_rank = environment
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        control = dist.new_group(backend="gloo") if use_cuda else dist.group.WORLD
        yield World(rank=rank, world_size=world_size, local_rank=local_rank, control=control)
    finally:
        dist.destroy_process_group()
