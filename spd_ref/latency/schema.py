"""The rows every latency measurement writes (schema in results/README.md): fields, metadata, writer."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Optional

import torch


def run_metadata(ctx, dtype: torch.dtype) -> dict:
    """The fields every row carries: machine, software, interconnect setting. A lone process that
    plays one rank of N (bench --shard-of: no process group) is a shard proxy on one GPU."""
    cuda = ctx.device.type == "cuda"
    shard_proxy = ctx.group is None and ctx.world_size > 1
    nccl = None
    if cuda:
        v = torch.cuda.nccl.version()
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return {"tp": ctx.world_size, "p2p": os.environ.get("NCCL_P2P_DISABLE", "0") != "1",
            "gpu": torch.cuda.get_device_name(ctx.device) if cuda else "cpu",
            "gpu_count": (1 if shard_proxy else ctx.world_size) if cuda else 0,
            "shard_proxy": True if shard_proxy else None, "torch": torch.__version__, "nccl": nccl,
            "cuda": torch.version.cuda if cuda else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dtype": str(dtype).replace("torch.", ""),
            # inductor settings given by environment (e.g. TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1)
            "inductor": {k: v for k, v in sorted(os.environ.items())
                         if k.startswith("TORCHINDUCTOR_") and k != "TORCHINDUCTOR_CACHE_DIR"} or None}


ROW_FIELDS = ("kind", "impl", "shape", "layers", "hidden", "tp", "p2p", "batch", "ctx", "prompt_len",
              "spd_ratio", "no_comm", "spd_blocks", "sync_points_per_token", "sync_bytes", "bytes",
              "compiled", "cuda_graph", "ms_median", "ms_p90", "ms_median_ranks", "repeats", "busbw_gbps",
              "ranks_agree", "compile_s", "compile_mode", "lm_head", "shard_proxy", "gpu", "gpu_count", "torch", "nccl",
              "cuda", "date", "dtype", "tag", "allreduce", "consistent", "consistency", "attention", "inductor",
              "linear", "norm")


def make_row(meta: dict, **fields) -> dict:
    """A result row with every schema field present (None where it does not apply)."""
    unknown = set(fields) - set(ROW_FIELDS)
    if unknown:
        raise KeyError(f"fields {sorted(unknown)} are not in the schema (ROW_FIELDS)")
    row = dict.fromkeys(ROW_FIELDS)
    row.update(meta)
    row.update(fields)
    return row


class RowWriter:
    """Rank 0 appends each row to the JSONL file at once, so a killed run keeps what it measured."""

    def __init__(self, path: Optional[str], active: bool):
        self.rows: list[dict] = []
        self.path, self.active = path, active
        if active and path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.active:
            print(f"  {_row_line(row)}", flush=True)
            if self.path:
                with open(self.path, "a") as f:
                    f.write(json.dumps(row) + "\n")


def _row_line(r: dict) -> str:
    if r["kind"] == "allreduce":
        return (f"allreduce {r['allreduce'] or 'nccl'} tp={r['tp']} p2p={r['p2p']} {r['bytes']:>9d} B  "
                f"{r['ms_median'] * 1e3:8.1f} us")
    what = "floor" if r["no_comm"] else f"spd={r['spd_ratio']:.2f}" + (f" {r['allreduce']}" if r["allreduce"] else "")
    size = f"prompt={r['prompt_len']}" if r["kind"] == "prefill" else f"ctx={r['ctx']}"
    return (f"{r['kind']:<7} {r['shape']} tp={r['tp']} p2p={r['p2p']} b={r['batch']} {size} {what:<9} "
            f"syncs={r['sync_points_per_token']:<3} {r['ms_median']:.3f} ms (p90 {r['ms_p90']:.3f})"
            + ("  INCONSISTENT: " + r["consistency"] if r["consistent"] is False else ""))


