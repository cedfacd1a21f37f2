"""What notebooks 01 (communication cost) and 02 (building the SPD block) call, so that their cells
stay short (DESIGN.md, Notebooks). The two WRONG SPD variants here exist only to show the pitfalls
of METHOD.md s.2; nothing else in the package uses them.
"""
from __future__ import annotations

import io
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .block import BlockMode, MlpShards, block_residual
from .commcost import BF16_BYTES, AlphaBeta, fit_rows, load_rows, predict_decode, print_table, saving_table
from .hf import RankPartialsOProj, SimulatedTPLayer, apply_tp, decoder_layers, random_model, remove_tp
from .launch import launch
from .partition import Partition, partition_for_config

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference_h100.json"


# ---- notebook 01: measurements -------------------------------------------------------------------
def live_allreduce(nproc: int = 2, sizes: str = "1K,4K,16K,64K,256K,1M,4M", timeout_s: float = 180) -> list[dict]:
    """bench rows from `nproc` gloo processes on this CPU (through spd_ref.launch): the all-reduce
    microbenchmark, and a decode step of the tiny shape as baseline, SPD on every block, no comm."""
    with tempfile.TemporaryDirectory() as tmp:  # live rows are this machine's: they stay out of results/
        out = Path(tmp) / "live.jsonl"
        # 20 replays per size and 30 decode steps over 64 cached tokens: about 20 s on 2 cores.
        done = launch(nproc, ["bench", "--allreduce", "--ar-sizes", sizes, "--ar-repeats", "20", "--warmup", "3",
                              "--shape", "tiny", "--batch", "1", "--prompt-lens", "none", "--ctx", "64",
                              "--spd-ratios", "0,1", "--no-comm", "--repeats", "30", "--out", str(out)],
                      timeout_s=timeout_s, cpu=True)
        if done.returncode != 0:
            raise RuntimeError(f"live benchmark failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        return load_rows([str(out)])


def load_recorded(results_dir: Path = REFERENCE.parent) -> tuple[list[dict], str]:
    """(rows, where they came from): GPU all-reduce/decode rows of results/**/*.jsonl, or, while
    none are recorded yet, the reference table of RESOURCES.md (results/reference_h100.json)."""
    files = sorted(Path(results_dir).rglob("*.jsonl"))
    rows = [r for r in load_rows(str(f) for f in files)
            if r.get("kind") in ("allreduce", "decode") and r.get("gpu") not in (None, "cpu")]
    if rows:
        return rows, f"{len(rows)} GPU rows from {', '.join(str(f.relative_to(results_dir)) for f in files)}"
    reference = json.loads(REFERENCE.read_text())
    return reference["rows"], reference["provenance"]["summary"]


def print_fits(rows: list[dict]) -> None:
    """The alpha-beta fit of each (TP, P2P) all-reduce microbenchmark in `rows`, one line each."""
    for (tp, p2p), fit in fit_rows(rows).items():
        print(f"TP {tp}, P2P {'on' if p2p else 'off'}: alpha = {fit.alpha_ms * 1e3:.1f} us, "
              f"bus bandwidth = {fit.busbw_gbps:.2f} GB/s ({fit.points} message sizes)")


def _ours(r: dict) -> bool:
    """A compiled decode row of this runtime (not the transformers peer, not an eager variant)."""
    return r.get("kind") == "decode" and (r.get("impl") or "spd_ref") == "spd_ref" and r.get("compiled") is not False


def ceiling_table(rows: list[dict]) -> list[dict]:
    """commcost.saving_table plus, on baselines, the cost of one sync inside the model, and on SPD
    rows the ceiling: removing k of S syncs saves at most comm_share x k / S (half of it at k = L)."""
    out, base_syncs = [], {}
    for r in saving_table(rows):
        key = (r["impl"], r["shape"], r["tp"], r["p2p"], r["batch"], r["ctx"], r["compiled"])
        if r["spd_ratio"] == 0:
            base_syncs[key] = r["syncs"]
            if r["floor_ms"] is not None and r["syncs"]:
                r["per_sync_us"] = (r["ms"] - r["floor_ms"]) / r["syncs"] * 1e3
            out.append(r)
        elif r["comm_share"] is not None and base_syncs.get(key):
            out.append(dict(r, ceiling=r["comm_share"] * (1 - r["syncs"] / base_syncs[key])))
    return out


def in_model_sync_us(table: list[dict], shape: str, tp: int, p2p: bool = True, batch: int = 1) -> float:
    """The measured cost of one sync inside the decode step of one setting (from ceiling_table)."""
    for r in table:
        if (r["shape"], r["tp"], r["p2p"], r["batch"]) == (shape, tp, p2p, batch) and "per_sync_us" in r:
            return r["per_sync_us"]
    raise ValueError(f"no baseline and no-comm decode rows for {shape} tp={tp} p2p={p2p} batch={batch}")


def show_figure(plot: Callable[[list[dict], Path], Optional[Path]], rows: list[dict]):
    """A spd_ref.plots_latency figure (they write PNG files) as an image a notebook displays."""
    from IPython.display import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = plot(rows, Path(tmp) / "figure.png")
        return None if path is None else Image(data=path.read_bytes(), format="png")


def _figure(*subplots, **kw):
    """A Figure outside pyplot, so any backend works (plots_latency switches pyplot to Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    return fig, fig.subplots(*subplots)


def as_image(fig):
    """The figure rendered to PNG, as an image a notebook displays (and stores for a static page)."""
    from IPython.display import Image

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return Image(data=buf.getvalue(), format="png")


# ---- notebook 01: the decode cost model ----------------------------------------------------------
@dataclass(frozen=True)
class DecodeCostModel:
    """decode ms/token = floor(N) + syncs x t_sync, t_sync = alpha + 2(N-1)/N x bytes / busbw.

    [ours] The compute floor is serial + parallel / N (Amdahl), fitted to recorded no-comm floors of
    one shape and batch, and kept for other batches: decode at small batch is bound by reading the
    weights, so this holds up to a few tens of tokens and underestimates compute beyond.
    """

    shape: str
    layers: int
    hidden: int
    batch: int
    serial_ms: float
    parallel_ms: float

    def floor_ms(self, tp: int) -> float:
        return self.serial_ms + self.parallel_ms / tp

    def predict(self, tp: int, busbw_gbps: float, alpha_us: float, spd_ratio: float,
                batch: Optional[int] = None) -> dict:
        if tp < 2:
            raise ValueError(f"tp={tp}: one rank has no sync point to drop; use tp >= 2")
        batch = batch or self.batch
        spd_blocks = math.floor(spd_ratio * self.layers + 0.5)  # the count bench.spread_blocks takes
        allreduce = AlphaBeta(alpha_us / 1e3, 0.0, tp).with_busbw(busbw_gbps)
        floor = self.floor_ms(tp)
        base, spd = predict_decode(floor, self.layers, spd_blocks, allreduce, batch, self.hidden)
        return dict(tp=tp, busbw_gbps=busbw_gbps, alpha_us=alpha_us, batch=batch, spd_ratio=spd_ratio,
                    per_sync_us=allreduce.time_ms(batch * self.hidden * BF16_BYTES) * 1e3, floor_ms=floor,
                    baseline_ms=base, spd_ms=spd, comm_share=(base - floor) / base, saving=(base - spd) / base)


COST_COLUMNS = [("tp", ""), ("busbw_gbps", ".0f"), ("alpha_us", ".1f"), ("batch", ""), ("spd_ratio", ".2f"),
                ("per_sync_us", ".1f"), ("floor_ms", ".2f"), ("baseline_ms", ".2f"), ("spd_ms", ".2f"),
                ("comm_share", ".0%"), ("saving", ".1%")]


def fit_cost_model(rows: list[dict], shape: str = "llama2-7b", batch: int = 1) -> DecodeCostModel:
    """Fit floor(N) = serial + parallel / N to the compute-only decode times of `shape` at `batch`:
    the no-comm rows, and TP 1 baselines (one rank has nothing to communicate)."""
    pts = [r for r in rows if _ours(r) and r["shape"] == shape and r["batch"] == batch
           and (r.get("no_comm") or r["tp"] == 1)]
    if len({r["tp"] for r in pts}) < 2:
        raise ValueError(f"need compute floors of {shape} at batch {batch} for 2 or more TP degrees, got "
                         f"{sorted({r['tp'] for r in pts})}. Fix: record `bench --no-comm` at other TP degrees.")
    inv_tp, ms = np.array([1 / r["tp"] for r in pts]), np.array([r["ms_median"] for r in pts])
    (serial, parallel), *_ = np.linalg.lstsq(np.stack([np.ones_like(inv_tp), inv_tp], 1), ms, rcond=None)
    return DecodeCostModel(shape, pts[0]["layers"], pts[0]["hidden"], batch, float(serial), float(parallel))


def plot_cost_model(model: DecodeCostModel, alpha_us: float, measured: Sequence[dict] = (), tps=(2, 4, 8)):
    """Left: predicted saving of SPD on every block against bus bandwidth, batch 1 and 64. Right:
    decode ms against SPD ratio at 300 GB/s, the measured decode times of the shape as markers."""
    fig, (left, right) = _figure(1, 2, figsize=(10, 3.6))
    bws, ratios = np.logspace(0, 3, 40), np.linspace(0, 1, 11)
    for i, tp in enumerate(tps):
        for batch, ls in ((1, "-"), (64, ":")):
            left.plot(bws, [100 * model.predict(tp, bw, alpha_us, 1.0, batch)["saving"] for bw in bws],
                      ls=ls, color=f"C{i}", label=f"TP {tp}, batch {batch}")
        right.plot(ratios, [model.predict(tp, 300, alpha_us, r)["spd_ms"] for r in ratios], color=f"C{i}",
                   label=f"TP {tp} model")
        right.axhline(model.floor_ms(tp), color=f"C{i}", ls="--", lw=1)
        pts = [(r["spd_ratio"], r["ms_median"]) for r in measured if _ours(r) and r["tp"] == tp
               and (r["shape"], r["batch"]) == (model.shape, model.batch) and r["p2p"] and not r["no_comm"]]
        if pts:
            right.plot(*zip(*sorted(pts)), "o", color=f"C{i}", label=f"TP {tp} measured (P2P on)")
    left.set(xscale="log", xlabel="bus bandwidth (GB/s)", ylabel="saving of SPD on every block (%)",
             title=f"{model.shape}, alpha {alpha_us:.1f} us")
    right.set(xlabel="SPD ratio", ylabel="decode ms / token", ylim=(0, None),
              title=f"batch {model.batch}, 300 GB/s (dashed: no comm)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return as_image(fig)


def cost_explorer(model: DecodeCostModel, alpha_us: float):
    """ipywidgets.interactive over the cost model: TP degree, bus bandwidth, alpha, batch, SPD ratio."""
    import ipywidgets as widgets
    from IPython.display import display

    def show(tp: int, busbw_gbps: float, alpha_us: float, batch: int, spd_ratio: float) -> None:
        p = model.predict(tp, busbw_gbps, alpha_us, spd_ratio, batch)
        print_table([p], COST_COLUMNS)
        fig, ax = _figure(figsize=(6, 1.8))
        for y, total in ((1, p["baseline_ms"]), (0, p["spd_ms"])):
            ax.barh(y, p["floor_ms"], color="C0", label="compute" if y else None)
            ax.barh(y, total - p["floor_ms"], left=p["floor_ms"], color="C3", label="all-reduce" if y else None)
        ax.set(yticks=[0, 1], yticklabels=[f"SPD {spd_ratio:.0%}", "baseline"], xlabel="decode ms / token")
        ax.legend(fontsize=7, loc="lower right")
        display(as_image(fig))

    return widgets.interactive(
        show, tp=widgets.IntSlider(value=4, min=2, max=8, description="TP degree"),
        busbw_gbps=widgets.FloatLogSlider(value=300, base=10, min=0, max=3, description="bus GB/s"),
        alpha_us=widgets.FloatSlider(value=round(alpha_us, 1), min=1, max=100, step=0.5, description="alpha (us)"),
        batch=widgets.SelectionSlider(options=[1, 4, 16, 64, 256], value=1, description="batch"),
        spd_ratio=widgets.FloatSlider(value=1.0, min=0, max=1, step=0.05, description="SPD ratio"))


# ---- notebook 02: one block, rank by rank --------------------------------------------------------
def random_llama(bias: bool = False, seed: int = 0, layers: int = 2, heads: int = 4, hidden: int = 64):
    """A small multi-head LlamaForCausalLM with random weights; biases and norms perturbed so every
    term of the block equations is exercised."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads,
                         vocab_size=256, attention_bias=bias, mlp_bias=bias, max_position_embeddings=256)
    return random_model(config, seed)


@dataclass
class BlockPieces:
    """One decoder block on one input, cut into its N ranks' pieces (METHOD.md s.1)."""

    x: torch.Tensor               # (B, T, d) the block input X, replicated on every rank
    attn_partials: torch.Tensor   # (N, B, T, d) Y_i = A_i W_O^(i), o_proj bias excluded
    mlp_shards: MlpShards         # (N, B, T, d) normed inputs -> each rank's MLP_i, down bias excluded
    norm2: Callable[[torch.Tensor], torch.Tensor]
    o_bias: Optional[torch.Tensor]
    down_bias: Optional[torch.Tensor]
    output: torch.Tensor          # the unmodified block's output on x: the reference
    partition: Partition


@torch.no_grad()
def block_pieces(model, ids: torch.Tensor, block: int, tp_degree: int) -> BlockPieces:
    """Run the (unpatched) model on `ids` and cut block `block` into `tp_degree` ranks' pieces. The
    attention itself (RoPE, causal mask) stays transformers' own: we take its output A before o_proj."""
    layer = decoder_layers(model)[block]
    if isinstance(layer, SimulatedTPLayer):
        raise RuntimeError("block_pieces needs the original model. Fix: spd_ref.hf.remove_tp(model) first")
    seen: dict = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, kw: seen.update(x=a[0]), with_kwargs=True),
             layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.update(a=a[0])),
             layer.register_forward_hook(lambda m, a, out: seen.update(out=out))]
    try:
        model(ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    part = partition_for_config(model.config, tp_degree)
    o_proj = RankPartialsOProj(layer.self_attn.o_proj, layer.self_attn.head_dim, part)
    # The package's own per-rank MLP (SimulatedTPLayer.mlp_shards), bound to this layer's weights.
    owner = SimpleNamespace(mlp=layer.mlp, partition=part)
    return BlockPieces(seen["x"], o_proj(seen["a"]), lambda z: SimulatedTPLayer.mlp_shards(owner, z),
                       layer.post_attention_layernorm, o_proj.bias, layer.mlp.down_proj.bias, seen["out"], part)


@torch.no_grad()
def block_output(p: BlockPieces, mode: BlockMode) -> torch.Tensor:
    """The block output under `mode`, from spd_ref.block (a sync point = a sum over the ranks)."""
    return block_residual(p.x, p.attn_partials, p.mlp_shards, p.norm2, sync=lambda t: t.sum(0), mode=mode,
                          o_bias=p.o_bias, down_bias=p.down_bias)


@torch.no_grad()
def _spd_with_pitfalls(p: BlockPieces, residual_on_every_rank: bool, bias_on_every_rank: bool) -> torch.Tensor:
    """SPD with each rank's contribution explicit. A flag adds that term on EVERY rank before the
    all-reduce, so the sum counts it N times; with both flags off this is the correct SPD block."""
    zero = torch.zeros_like(p.x)
    b = zero if p.o_bias is None else p.o_bias.expand_as(p.x)
    per_rank = p.attn_partials + p.mlp_shards(p.norm2(p.x + p.attn_partials + b))  # Y_i + Zh_i
    every = (p.x if residual_on_every_rank else zero) + (b if bias_on_every_rank else zero)
    once = (zero if residual_on_every_rank else p.x) + (zero if bias_on_every_rank else b)
    down = zero if p.down_bias is None else p.down_bias
    return (per_rank + every).sum(0) + once + down  # sum(0): the one all-reduce


def wrong_spd_residual_on_every_rank(p: BlockPieces) -> torch.Tensor:
    """WRONG (METHOD.md s.2 pitfall): every rank adds X before the all-reduce, so O gains (N-1) X."""
    return _spd_with_pitfalls(p, residual_on_every_rank=True, bias_on_every_rank=False)


def wrong_spd_bias_on_every_rank(p: BlockPieces) -> torch.Tensor:
    """WRONG (METHOD.md s.2 pitfall): every rank adds the o_proj bias b before the all-reduce: O gains (N-1) b."""
    return _spd_with_pitfalls(p, residual_on_every_rank=False, bias_on_every_rank=True)


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| (Frobenius)."""
    return float((got - ref).detach().norm() / ref.detach().norm())


@torch.no_grad()
def pitfall_table(p: BlockPieces) -> list[dict]:
    """Each way of dropping the attention sync, against TP: its relative error, and for the two
    wrong SPD variants how exactly they miss SPD by (N-1) X or (N-1) b."""
    n, tp, spd = p.attn_partials.shape[0], block_output(p, BlockMode.TP), block_output(p, BlockMode.SPD)
    naive = block_output(p, BlockMode.NAIVE)
    rows = [dict(variant="SPD", rel_err_vs_tp=relative_error(spd, tp)),
            dict(variant="naive drop (no re-wiring)", rel_err_vs_tp=relative_error(naive, tp))]
    for name, wrong, term in (("X on every rank", wrong_spd_residual_on_every_rank, p.x),
                              ("o_proj bias on every rank", wrong_spd_bias_on_every_rank, p.o_bias)):
        if term is not None:
            got = wrong(p)
            rows.append(dict(variant=name, rel_err_vs_tp=relative_error(got, tp),
                             max_abs_off_by_n_minus_1=float((got - spd - (n - 1) * term).abs().max())))
    return rows


@torch.no_grad()
def exactness_checks(model, ids: torch.Tensor, tp_degrees: Sequence[int] = (2, 4), rtol: float = 1e-5) -> list[dict]:
    """METHOD.md s.2's exact cases, as max |logits - original logits|: TP without SPD at each degree,
    and SPD on every block at N = 1. Exact means within float32 summation-order noise: at most
    `rtol` times the largest original logit."""
    ref = model(ids, use_cache=False).logits
    cases = [(f"TP at N={n}, no SPD block", n, []) for n in tp_degrees]
    cases.append(("N=1, SPD on every block", 1, range(len(decoder_layers(model)))))
    rows = []
    try:
        for name, n, blocks in cases:
            apply_tp(model, n, blocks)
            diff = float((model(ids, use_cache=False).logits - ref).abs().max())
            rows.append(dict(check=name, max_abs_diff=diff, exact=diff <= rtol * float(ref.abs().max())))
    finally:
        remove_tp(model)
    return rows


@torch.no_grad()
def block_errors(model, ids: torch.Tensor, tp_degree: int) -> list[dict]:
    """Per block: the relative error of its output under SPD and under the naive drop against TP,
    each block fed the input it gets in the TP model (so errors do not carry from block to block)."""
    from .sensitivity import capture_block_inputs  # the calibration cache: every block's TP input

    apply_tp(model, tp_degree)
    try:
        cache = capture_block_inputs(model, ids, batch_size=len(ids), progress=False)
        out = []
        for i, layer in enumerate(decoder_layers(model)):
            row = dict(block=i)
            for mode in (BlockMode.SPD, BlockMode.NAIVE):
                layer.block_mode = mode
                got = layer(cache.hidden[i], **cache.kwargs)
                row[f"{mode.value}_rel_err"] = relative_error(got, cache.hidden[i + 1])  # block i's TP output
            out.append(row)
        return out
    finally:
        remove_tp(model)


def plot_block_errors(errors: list[dict]):
    """Bars: relative error of each block's output under SPD (and the naive drop) against TP."""
    fig, ax = _figure(figsize=(10, 3.2))
    blocks = np.array([e["block"] for e in errors])
    ax.bar(blocks - 0.2, [e["spd_rel_err"] for e in errors], width=0.4, label="SPD")
    ax.bar(blocks + 0.2, [e["naive_rel_err"] for e in errors], width=0.4, color="C3", alpha=0.6, label="naive drop")
    ax.set(xlabel="block", ylabel="||O - O_TP|| / ||O_TP||", yscale="log", xticks=blocks)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return as_image(fig)
