"""Real TP over NCCL equals single-GPU simulated TP: random LLaMA2-7B-shaped weights, a few layers.

    torchrun --standalone --nproc-per-node 4 scripts/gpu_check.py --out results/gpu_check_tp4.json

Every rank builds the same random model (seeded, on the CPU) and runs its shard through the runtime
(spd_ref.model, one all-reduce per sync point); every rank also runs the simulated model
(spd_ref.hf) on its GPU, the reference, and rank 0 compares. Compared: prefill logits and 8 greedy
decode steps, without SPD and with SPD on half the blocks, in fp32 and bf16; eager (split and
replicated lm_head) and with the compiled block function (torch.compile modes default and
max-autotune), with each sync-point all-reduce (nccl; oneshot, the symmetric-memory one-shot
all-reduce, where GPUs allow it), and on GPUs with the decode projections as spd_ref.kernels.gemv's
Triton kernel (linear "triton"), decode attention as spd_ref.kernels.splitkv's (attention "triton") and
RMSNorm as spd_ref.kernels.rmsnorm's (norm "triton"), each eager and compiled (--kernels-only: only
those bf16 rows, beside one eager and one max-autotune row without kernels); a oneshot row also gives
its difference from the nccl row of the same setting (`vs_nccl`). Decode steps are teacher-forced with
the reference's tokens (random weights give near-tied logits, where bf16 rounding may flip an argmax).
Works on CPUs with gloo too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from spd_ref.hf import apply_tp, remove_tp  # noqa: E402
from spd_ref.model import TPTransformer  # noqa: E402
from spd_ref.tp import oneshot_unavailable, init_distributed  # noqa: E402
from spd_ref.latency.schema import run_metadata  # noqa: E402

STEPS = 8


def llama2_7b(layers: int, tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=layers, num_attention_heads=8,
                           num_key_value_heads=8, vocab_size=512, max_position_embeddings=512)
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0)


def compare(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict:
    """Max abs and relative L2 difference over prefill and decode logits, and token agreement."""
    diffs = [(x.float() - y.float()) for x, y in zip(a, b)]
    rel = max(float(d.norm() / y.float().norm()) for d, y in zip(diffs, b))
    return {"max_abs": max(float(d.abs().max()) for d in diffs), "max_rel_l2": rel}


def simulated(model, ids, n, blocks):
    apply_tp(model, n, blocks)
    with torch.no_grad():
        prefill = model(ids).logits
        out = model.generate(ids, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    remove_tp(model)
    return [prefill] + [l[:, None] for l in out.logits[1:]], out.sequences[0, ids.shape[1]:].tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="a tiny shape, for a CPU dry run")
    ap.add_argument("--kernels-only", action="store_true",
                    help="only bf16 with spd_ref's Triton kernels (GPU): a shorter check after a kernel changed")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ctx = init_distributed()
    from transformers import LlamaForCausalLM

    config = llama2_7b(args.layers, args.tiny)
    torch.manual_seed(0)
    full = LlamaForCausalLM(config).eval()  # same seed, same CPU generator: same weights on every rank
    ids = torch.randint(0, config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(1))
    rows = []
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    # The one-shot all-reduce wherever symmetric memory works (GPUs with peer access, P2P on).
    kinds = ["nccl"] + (["oneshot"] if ctx.world_size > 1 and not oneshot_unavailable(ctx) else [])

    for dtype in (torch.bfloat16,) if args.kernels_only else (torch.float32, torch.bfloat16):
        # Every rank computes the (deterministic) reference, so every rank can teacher-force its tokens.
        model = full.to(dtype).to(ctx.device)
        model.model.rotary_emb = LlamaRotaryEmbedding(config).to(ctx.device)  # fp32 frequencies, as loaded
        for blocks in ([], list(range(0, args.layers, 2))):
            ref = simulated(model, ids.to(ctx.device), ctx.world_size, blocks)
            # The latency sweep runs compiled bf16 steps: check that path, and fp32 eager for exactness.
            # (compile mode, lm_head, linear, attention, norm): eager with both heads; compiled in both modes
            # (bench's is max-autotune); on GPUs the Triton GEMV, the split-KV attention kernel and the Triton
            # RMSNorm (bf16 only: fp32 stays on F.linear, sdpa and torch's norm) eager and compiled.
            variants = [(None, "split", "torch", "sdpa", "torch"), (None, "replicated", "torch", "sdpa", "torch")]
            if dtype == torch.bfloat16:
                compiled = [(m, "split", "torch", "sdpa", "torch") for m in ("default", "max-autotune-no-cudagraphs")]
                # --kernels-only keeps one library row, compiled as bench compiles, to read the kernels' rows against
                variants = [variants[0], compiled[1]] if args.kernels_only else variants + compiled
                if ctx.device.type == "cuda":
                    kernels = (("triton", "sdpa", "torch"), ("torch", "triton", "torch"), ("torch", "auto", "triton"))
                    variants += [(mode, "split", *k) for k in kernels for mode in (None, "max-autotune-no-cudagraphs")]
            for mode, head, linear, attention, norm in variants:
                nccl_logits = None
                for kind in kinds:
                    rt = TPTransformer.from_hf(config, model.state_dict(), ctx, dtype)
                    rt.set_spd_blocks(blocks)
                    rt.lm_head_mode, rt.linear, rt.attention, rt.norm = head, linear, attention, norm
                    ctx.use_allreduce(kind, dtype)
                    if mode:
                        rt.compile_blocks(mode)
                    tokens, logits = rt.generate(ids, STEPS, forced_tokens=torch.tensor([ref[1]]))
                    if ctx.is_main:
                        row = {"dtype": str(dtype).split(".")[-1], "spd_blocks": blocks, "compiled": mode is not None,
                               "compile_mode": mode, "lm_head": head, "allreduce": kind, "linear": linear,
                               "attention": attention, "norm": norm,
                               "tokens_equal": tokens[0].tolist() == ref[1], **compare(logits, ref[0])}
                        if nccl_logits is not None:
                            row["vs_nccl"] = compare(logits, nccl_logits)
                        nccl_logits = logits if kind == "nccl" else nccl_logits
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                    del rt
                    torch._dynamo.reset()
        full = model.to("cpu")
    if ctx.is_main:
        result = {"check": "runtime (torchrun) vs simulated TP", "tp": ctx.world_size, "layers": args.layers,
                  "allreduce_kinds": kinds,
                  "shape": "tiny" if args.tiny else "llama2-7b", "prompt_tokens": 64, "decode_steps": STEPS,
                  "rows": rows, **run_metadata(ctx, torch.bfloat16)}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    torch.distributed.barrier() if ctx.world_size > 1 else None
    sys.stdout.flush()
    os._exit(0)  # never hang in destroy_process_group


if __name__ == "__main__":
    main()
