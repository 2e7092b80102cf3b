"""Data-parallel training under ``torchrun`` (DDP): gloo on CPUs, nccl on GPUs.

``torchrun --nproc-per-node N hs-train ...`` starts N copies; each reads its rank from the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). ``--batch-size`` is the global batch and ``--lr`` the
single-process learning rate: every step all ranks draw the same global batch (indices, noise, flips,
timesteps) from the per-step seed and rank ``r`` keeps its contiguous ``1/N`` slice. DDP averages the
gradients of the per-rank mean losses, which is the gradient of the global mean loss, so N processes
follow the one-process run up to the order of floating-point reductions. Rank 0 alone writes
checkpoints, logs and plots; every rank reads a checkpoint to resume.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from histosmith.errors import HistoSmithError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, batch: int) -> slice:
        """This rank's contiguous part of a global batch of ``batch`` items."""
        if batch % self.world:
            raise HistoSmithError(f"--batch-size {batch} (the global batch) must be a multiple of the "
                                  f"{self.world} torchrun processes")
        per = batch // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def from_environment() -> DistContext:
    """The torchrun rank of this process (one process when ``WORLD_SIZE`` is unset or 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def start(ctx: DistContext, device: torch.device) -> torch.device:
    """Join the process group (nccl for CUDA devices, gloo otherwise); returns this rank's device."""
    if not ctx.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world)
        log.debug("rank %d of %d joined (%s) on %s", ctx.rank, ctx.world, backend, device)
    return device


def wrap(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DDP around ``model`` under torchrun (the forward to call); the model itself otherwise. Buffers are not
    broadcast: every rank updates them identically (the quantiser gathers the global batch)."""
    if not ctx.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scalar tensors averaged over ranks (the global-batch loss for logs); unchanged outside DDP."""
    if _world() == 1 or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()).cpu() for k in keys])
    if dist.get_backend() == "nccl":
        stacked = stacked.cuda()
    dist.all_reduce(stacked)
    means = dict(zip(keys, stacked.cpu() / _world(), strict=True))
    return {k: means[k] for k in values}  # the stage's column order


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (all ranks stop at the same step)."""
    if _world() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def unwrap(model: Any) -> Any:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
