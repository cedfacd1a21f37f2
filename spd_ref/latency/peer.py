"""The peer baseline: transformers' own tensor parallelism (`tp_plan="auto"`) on the same shapes.

    python -m spd_ref.latency.peer --make-checkpoint --shape llama2-7b --checkpoint /tmp/peer-7b   # once, 1 process
    python -m spd_ref.launch --nproc 4 --module spd_ref.latency.peer --shape llama2-7b --checkpoint /tmp/peer-7b \\
        --batch 1,16 --ctx 512 --compile try --out results/h100.jsonl

transformers loads a model with TP only from a checkpoint, so random weights are first saved once
(bf16 safetensors, `--make-checkpoint`). Under torchrun each process then loads it with
`from_pretrained(path, tp_plan="auto", dtype=bfloat16)`: LLaMA's plan splits q/k/v/gate/up by columns
and o/down by rows (two all-reduces per block, as ours), embedding and lm_head replicated (ours
was too in the recorded comparison, results/h100; ours now splits the head: `bench --lm-head`).

Decode is timed like `spd_ref.latency.bench`: a StaticCache of ctx + 1 positions filled by a prefill of ctx
random tokens, then one-token steps at position ctx, CUDA events around each step, median and p90.
Eager first (always written); then, with `--compile try`, `torch.compile(mode="reduce-overhead")`
of the forward (Inductor + CUDA graphs over the static cache). If compiling fails, the eager row is
the result and the compiled row is absent; each row says `compiled`. Rows use bench's schema with
impl="transformers_tp_plan", spd_ratio 0 (no SPD), and sync_points_per_token = 2 per block.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Optional

import torch

from spd_ref.__main__ import CommandParser, listed, number, output_file
from spd_ref.latency.workload import DTYPES, SHAPES, llama_config
from spd_ref.latency.schema import RowWriter, make_row, run_metadata
from spd_ref.latency.timing import ranks_agree, run_then_exit, summarize, time_calls

IMPL = "transformers_tp_plan"


def has_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def make_checkpoint(shape: str, folder: str, layers: Optional[int] = None, dtype: str = "bf16",
                    seed: int = 0) -> Path:
    """Save a randomly initialized LlamaForCausalLM of `shape` (safetensors); skip if one is there.
    Built on the GPU when there is one (a 7B model initializes in seconds there)."""
    from transformers import LlamaForCausalLM

    out = Path(folder)
    if has_checkpoint(out):
        return out
    config = llama_config(shape, layers)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])  # parameters are created in the target dtype, never fp32
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.dtype = DTYPES[dtype]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


def load_tp_model(folder: str, dtype: torch.dtype):
    """transformers' tensor parallelism: the predefined plan of the architecture, sharded at load."""
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():  # newer transformers prefer distributed_config=; tp_plan still works
        warnings.simplefilter("ignore", FutureWarning)
        model = AutoModelForCausalLM.from_pretrained(folder, tp_plan="auto", dtype=dtype)
    return model.eval()


def rewind(cache, position: int) -> None:
    """Make the next step write position `position` again: transformers' static cache layers count
    the tokens they have stored (`cumulative_length`) and write the next token there."""
    for layer in getattr(cache, "layers", []):
        length = getattr(layer, "cumulative_length", None)
        if torch.is_tensor(length):
            length.fill_(position)
        elif length is not None:
            layer.cumulative_length = position


def bench_peer(ctx, model, shape: str, meta: dict, writer: RowWriter, args) -> None:
    from transformers import StaticCache

    cfg, dev = model.config, ctx.device
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    steps = {"eager": model.forward}
    for batch in args.batch:
        cache = StaticCache(config=cfg, max_cache_len=args.ctx + 1)
        prompt = torch.randint(0, cfg.vocab_size, (batch, args.ctx), device=dev, generator=gen)
        step_ids = torch.randint(0, cfg.vocab_size, (batch, 1), device=dev, generator=gen)
        step_pos = torch.tensor([args.ctx], device=dev)
        with torch.no_grad():
            model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(args.ctx, device=dev),
                  use_cache=True)
        for mode in ("eager", "compiled"):
            if mode == "compiled":
                if args.compile == "off" or (args.compile_batches and batch not in args.compile_batches):
                    break
                if "compiled" not in steps:
                    steps["compiled"] = torch.compile(model.forward, mode="reduce-overhead", dynamic=False)
            fwd, out = steps[mode], {}

            def step() -> None:
                with torch.no_grad():
                    out["logits"] = fwd(input_ids=step_ids, past_key_values=cache, cache_position=step_pos,
                                        use_cache=True).logits

            t0 = time.perf_counter()
            try:
                for _ in range(3):  # compiles (compiled mode) and records its CUDA graphs
                    rewind(cache, args.ctx)
                    step()
            except Exception:
                if mode == "eager":
                    raise
                if ctx.is_main:
                    print("peer: torch.compile of the transformers TP model failed; eager rows stand:",
                          flush=True)
                    traceback.print_exc()
                args.compile = "off"
                break
            warm_s = time.perf_counter() - t0
            times = time_calls(step, dev, args.warmup, args.repeats, before=lambda: rewind(cache, args.ctx))
            med, p90 = summarize(times)
            agree = ranks_agree(ctx, out["logits"].clone())
            writer.add(make_row(meta, kind="decode", impl=IMPL, shape=shape, layers=cfg.num_hidden_layers,
                                hidden=cfg.hidden_size, batch=batch, ctx=args.ctx, spd_ratio=0.0, no_comm=False,
                                spd_blocks=[], sync_points_per_token=2 * cfg.num_hidden_layers if ctx.world_size > 1 else 0,
                                sync_bytes=batch * cfg.hidden_size * torch.empty((), dtype=model.dtype).element_size(),
                                compiled=mode == "compiled", cuda_graph=mode == "compiled" and dev.type == "cuda",
                                ms_median=med, ms_p90=p90, repeats=len(times), ranks_agree=agree,
                                compile_s=round(warm_s, 2),
                                tag=args.tag))
        del cache


def parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m spd_ref peer", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--shape", default="llama2-7b", choices=sorted(SHAPES), help="a bench shape")
    a("--layers", type=number(int, 1), default=None, help="keep only the first K blocks")
    a("--checkpoint", default=None, help="folder of the random checkpoint (default /tmp/spd_ref_peer_SHAPE)")
    a("--make-checkpoint", action="store_true", help="only save the random checkpoint (one process), then exit")
    a("--dtype", choices=sorted(DTYPES), default="bf16")
    a("--batch", type=listed(number(int, 1)), default="1,16")
    a("--ctx", type=number(int, 1), default=512)
    a("--compile", choices=("off", "try"), default="try",
          help="try: also time torch.compile(mode='reduce-overhead'), keeping eager if it fails")
    a("--compile-batches", type=listed(number(int, 1), empty=True), default="",
      help="compile only at these batch sizes (default: all)")
    a("--repeats", type=number(int, 1), default=100)
    a("--warmup", type=number(int, 0), default=10)
    a("--seed", type=int, default=0)
    a("--tag", default=None)
    a("--out", type=output_file, default="results/bench.jsonl")
    return p


def _load_and_bench(args, folder: str) -> None:
    """Load the tp_plan model on every rank, check it is sharded, and time it."""
    from spd_ref.tp import init_distributed

    if not has_checkpoint(Path(folder)):
        raise FileNotFoundError(f"no checkpoint in {folder}. Fix: first run `python -m spd_ref peer "
                                f"--make-checkpoint --shape {args.shape} --checkpoint {folder}`")
    ctx = init_distributed()
    dtype = DTYPES[args.dtype]
    writer = RowWriter(args.out, ctx.is_main)
    meta = run_metadata(ctx, dtype)
    t0 = time.perf_counter()
    model = load_tp_model(folder, dtype)
    shard = model.model.layers[0].mlp.gate_proj.weight
    local = shard.to_local() if hasattr(shard, "to_local") else shard
    if ctx.world_size > 1 and local.shape[0] * ctx.world_size != model.config.intermediate_size:
        raise RuntimeError(f"transformers did not shard the model: gate_proj holds {tuple(local.shape)} "
                           f"of intermediate size {model.config.intermediate_size} on {ctx.world_size} ranks")
    if ctx.is_main:
        print(f"peer: loaded {folder} with tp_plan=auto on {ctx.world_size} ranks in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    bench_peer(ctx, model, args.shape, meta, writer, args)


def cli(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    # transformers renames arguments between minor versions (past_key_values -> cache, tp_plan ->
    # distributed_config); the old names still work on every version this runs on (5.17 .. 5.24).
    warnings.filterwarnings("ignore", category=FutureWarning)
    label = args.shape + (f"-{args.layers}l" if args.layers else "")
    folder = args.checkpoint or f"/tmp/spd_ref_peer_{label}"
    if args.make_checkpoint:
        t0 = time.perf_counter()
        make_checkpoint(args.shape, folder, args.layers, args.dtype, args.seed)
        print(f"peer: checkpoint {folder} ready in {time.perf_counter() - t0:.0f} s", flush=True)
        return 0
    return run_then_exit(lambda: _load_and_bench(args, folder))


if __name__ == "__main__":
    sys.exit(cli())
