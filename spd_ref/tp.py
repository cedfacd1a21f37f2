"""Process groups from the torchrun environment, and the all-reduce that a sync point is.

Without torchrun the program runs as one process (world size 1, no process group): every sync point
is then the identity, which is exactly tensor parallelism of degree 1.

Two implementations of the all-reduce (`TPContext.use_allreduce`), both traceable by torch.compile
and capturable in a CUDA graph:
- "nccl": torch's functional all-reduce (NCCL on GPUs, gloo on CPUs).
- "oneshot": PyTorch's symmetric-memory one-shot all-reduce: each rank copies its partial into a
  buffer every peer can read over NVLink, then reads all N partials and sums them in one kernel. No
  NVLink multicast (never the multimem ops). GPUs with peer access only; messages larger than the
  buffer (`ONESHOT_MAX_BYTES`, [ours]) fall back to NCCL.
- "auto" (the default, [ours]): oneshot where it can run, else nccl.
The floor (`skip_sync`) keeps an opaque op where the all-reduce was, so the compiler fuses around it
as around a collective (same fusion boundaries as a run that communicates), and only the
communication is missing.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 300.0  # [ours] long enough for a first torch.compile, short enough not to hang CI
ALLREDUCE_KINDS = ("auto", "nccl", "oneshot")
# [ours] auto = oneshot where symmetric memory works, else nccl: on 2 x H200 the one-shot baseline was
# 10% faster than NCCL's at batch 1 and at batch 16 (results/h200_x2/README.md).
DEFAULT_ALLREDUCE = "auto"
# [ours] The largest message the one-shot all-reduce takes (decode syncs are batch x d x 2 bytes: 8 KB at
# batch 1 and d 4096). Measured faster than NCCL up to 1 MiB on 2 x H200 (15.2 vs 17.1 us at 1 MiB,
# results/h200_x2); larger messages (prefill) go to NCCL.
ONESHOT_MAX_BYTES = 1 << 20


@torch.library.custom_op("spd_ref::skip_sync_", mutates_args=("x",))
def skip_sync_(x: torch.Tensor) -> None:
    """Where the floor's all-reduce would be: nothing happens. Being an opaque op, it stops fusion
    exactly where a collective does, so the floor's kernels are split as in the runs that communicate."""


def skip_sync(partials: torch.Tensor) -> torch.Tensor:
    """The "no communication" sync: this rank's partials only (the latency floor, not a model)."""
    total = _local_total(partials)
    skip_sync_(total)
    return total


def _local_total(partials: torch.Tensor) -> torch.Tensor:
    # One held rank (the torchrun runtime): its partial as it is, with no copy for a sum over one item.
    return partials[0] if partials.shape[0] == 1 else partials.sum(0)


@dataclass
class TPContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    group: Optional[dist.ProcessGroup]
    allreduce: str = DEFAULT_ALLREDUCE
    # Symmetric memory, one buffer per dtype, set up by use_allreduce("oneshot", dtype).
    oneshot_buffers: dict = field(default_factory=dict)

    def sync(self, partials: torch.Tensor) -> torch.Tensor:
        """A sync point: sum the (R, ...) partials held here, then all-reduce across processes."""
        total = _local_total(partials)
        if self.world_size == 1:
            return total
        if self.allreduce == "oneshot":
            buf = self.oneshot_buffers.get(total.dtype)
            if buf is None:
                raise RuntimeError(f"no one-shot buffer for {total.dtype}. Fix: call "
                                   f"ctx.use_allreduce('oneshot', {total.dtype}) on every rank first")
            if total.numel() <= buf.numel():  # larger messages: NCCL (ONESHOT_MAX_BYTES)
                view = buf[:total.numel()].view_as(total)
                return torch.ops.symm_mem.one_shot_all_reduce_copy(view, total, "sum", self.group.group_name)
        # The functional collective traces under torch.compile and captures in a CUDA graph.
        return funcol.all_reduce(total, "sum", self.group)

    def use_allreduce(self, kind: str, dtype: torch.dtype = torch.bfloat16,
                      max_bytes: int = ONESHOT_MAX_BYTES) -> None:
        """Choose the all-reduce of every sync point ("auto" resolves to oneshot or nccl here; the
        `allreduce` field holds the resolved kind). "oneshot" allocates its symmetric buffer here (a
        collective: every rank must call it, before any compile or graph capture)."""
        if kind not in ALLREDUCE_KINDS:
            raise ValueError(f"all-reduce {kind!r} is not known. Fix: one of {', '.join(ALLREDUCE_KINDS)}")
        if kind == "auto":
            kind = "oneshot" if self.world_size > 1 and oneshot_unavailable(self) is None else "nccl"
        if kind == "oneshot" and self.world_size > 1 and dtype not in self.oneshot_buffers:
            why = oneshot_unavailable(self)
            if why:
                raise ValueError(f"--allreduce oneshot is not available here: {why}. Fix: --allreduce nccl")
            os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"  # unset means allowed: never NVLink multicast
            import torch.distributed._symmetric_memory as symm_mem

            numel = max_bytes // torch.empty((), dtype=dtype).element_size()
            buf = symm_mem.empty(numel, dtype=dtype, device=self.device)
            symm_mem.rendezvous(buf, self.group.group_name)
            self.oneshot_buffers[dtype] = buf
        self.allreduce = kind

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


def oneshot_unavailable(ctx: TPContext) -> Optional[str]:
    """Why symmetric memory cannot serve this group, or None when it can."""
    if ctx.group is None:
        return "one process has no group to reduce over"
    if ctx.device.type != "cuda" or dist.get_backend(ctx.group) != "nccl":
        return f"it needs GPUs with NCCL, this run is {ctx.device.type} with {dist.get_backend(ctx.group)}"
    if os.environ.get("NCCL_P2P_DISABLE", "0") == "1":
        return ("NCCL_P2P_DISABLE=1 (--p2p off) stands for a machine without GPU peer links, and the "
                "one-shot all-reduce reads its peers' memory over them")
    if os.environ.get("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1") != "1":  # never NVLink multicast
        return "TORCH_SYMM_MEM_DISABLE_MULTICAST is not 1, and this project never uses NVLink multicast"
    peers = [d for d in range(torch.cuda.device_count()) if d != ctx.device.index]
    if not all(torch.cuda.can_device_access_peer(ctx.device.index, d) for d in peers):
        return "this GPU cannot access its peers' memory (no P2P)"
    return None


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
