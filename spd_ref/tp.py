"""Process groups from the torchrun environment, and the all-reduce that a sync point is.

Without torchrun the program runs as one process (world size 1, no process group): every sync point
is then the identity, which is exactly tensor parallelism of degree 1.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 300.0  # [ours] long enough for a first torch.compile, short enough not to hang CI


@dataclass
class TPContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    group: Optional[dist.ProcessGroup]

    def sync(self, partials: torch.Tensor) -> torch.Tensor:
        """A sync point: sum the (R, ...) partials held here, then all-reduce across processes."""
        total = partials.sum(0)
        if self.world_size == 1:
            return total
        # The functional collective traces under torch.compile and captures in a CUDA graph.
        return funcol.all_reduce(total, "sum", self.group)

    def gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's x side by side along the last dimension, in rank order (the split lm_head)."""
        if self.world_size == 1:
            return x
        gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor  # renamed in torch 2.12
        pieces = funcol.wait_tensor(gather(x.contiguous(), 0, self.group))
        pieces = pieces.view(self.world_size, *x.shape)
        return pieces.movedim(0, -2).reshape(*x.shape[:-1], -1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def in_torchrun() -> bool:
    return all(v in os.environ for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def require_torchrun(tp_degree: int) -> None:
    """Raise a clear error when tp_degree processes were asked for but torchrun did not start them."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if in_torchrun() else 1
    if tp_degree != world:
        missing = "" if in_torchrun() else " (no torchrun environment: RANK/WORLD_SIZE/LOCAL_RANK are unset)"
        raise RuntimeError(
            f"--tp {tp_degree} needs {tp_degree} processes but this run has {world}{missing}. "
            f"Fix: torchrun --standalone --nproc-per-node {tp_degree} -m spd_ref ..., or "
            f"python -m spd_ref.launch --nproc {tp_degree} ...")


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, backend: Optional[str] = None) -> TPContext:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU), or run alone without torchrun."""
    if not in_torchrun():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return TPContext(0, 1, 0, device, None)
    rank, world, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local} has no GPU: {torch.cuda.device_count()} visible. "
                               "Fix: start at most that many processes per node.")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        kwargs = {"device_id": device} if use_cuda else {}
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"),
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return TPContext(rank, world, local, device, dist.group.WORLD)


def shutdown(ctx: TPContext) -> None:
    if ctx.group is not None and dist.is_initialized():
        dist.destroy_process_group()
