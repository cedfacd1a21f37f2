"""Calibration: sensitivity scan, classes, block choice, B2B and HG; writes an SPD plan (METHOD.md s.3-5).

    python -m spd_ref calibrate --model smollm2 --tp 4 --ratio 0.5 --out plans/smollm2-tp4

Python: `plan = calibrate(model, tokenizer, tp_degree=4, ratio=0.5)`, then
`spd_ref.plan.save_plan(plan, dir)` / `apply_plan(model, plan)`. See docs/calibration.md.

Steps: (1) calibration windows; (2) simulated TP and the TP model's block inputs, cached once;
(3) back-to-front scan on those windows; (4) classes by tau1/tau2 and the round(r L) least sensitive
blocks; (5) each chosen block gets its class's strategy: zero-shot (nothing to do), B2B, or HG then
B2B, on a copy of the block (the model's own weights are left as they were).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

import torch
import torch.nn as nn

from spd_ref.block import BlockMode
from spd_ref.calibration.distill import (BATCH_SIZE, EPOCHS, HOLDOUT, LR, WEIGHT_DECAY, block_mse, distill_block,
                                         split_windows, trained_copy)
from spd_ref.calibration.headgroup import MAP_SAMPLES, RULE, RULES, head_grouping, tp_outputs
from spd_ref.calibration.noise import DRAWS, LEVEL, scan_intervals
from spd_ref.hf import SimulatedTPLayer, apply_tp, decoder_layers, remove_tp, set_spd_blocks, spd_blocks_of
from spd_ref.plan import (BlockRecord, Plan, block_prefix, config_signature, package_versions, save_plan,
                   weight_fingerprint)
from spd_ref.calibration.sensitivity import (STRATEGY, TAU1, TAU2, BlockInputs, capture_block_inputs, classify, perplexity, sensitivity_scan)
from spd_ref.plan import choose_blocks

SAMPLES, SEQ_LEN = 8, 256  # [ours] CPU defaults: 2048 calibration tokens (the paper: 128 x 2048)
SCAN_BATCH = 4              # [ours] windows per forward pass in the scan


def _strategy(block_class, b2b: bool, hg: bool) -> str:
    """The class's strategy (METHOD.md s.3), reduced by --no-b2b / --no-hg."""
    strategy = STRATEGY[block_class]
    if not hg:
        strategy = strategy.replace("hg+", "")
    if not b2b:
        strategy = "hg" if strategy.startswith("hg") else "zs"
    return strategy


def calibrate(model: nn.Module, tokenizer, tp_degree: int, ratio: float, *, tokens: Optional[torch.Tensor] = None,
              samples: int = SAMPLES, seq_len: int = SEQ_LEN, seed: int = 0, source: str = "offline",
              tau1: float = TAU1, tau2: float = TAU2, lr: float = LR, epochs: int = EPOCHS,
              b2b: bool = True, hg: bool = True, b2b_batch_size: int = BATCH_SIZE,
              weight_decay: float = WEIGHT_DECAY, map_samples: int = MAP_SAMPLES, batch_size: int = SCAN_BATCH,
              hg_rule: str = RULE, holdout: float = HOLDOUT, refit: bool = False, sequential: bool = False,
              cache_dtype: Optional[torch.dtype] = None, offload: Optional[str] = None, model_id: Optional[str] = None, progress: bool = True) -> Plan:
    """Calibrate an SPD plan for `model` at `tp_degree` ranks with SPD on round(ratio * L) blocks.

    tokens: calibration windows (n, T); when None, `spd_ref.calibration.data.calibration_tokens(tokenizer, samples,
    seq_len, seed, source)`. [ours] The scan measures perplexity on these calibration windows (held-out
    text stays for evaluation). The model is left as it was found (weights, TP state, SPD blocks).
    """
    given = tokens is not None
    if not given:
        from spd_ref.calibration.data import calibration_tokens
        tokens = calibration_tokens(tokenizer, samples, seq_len, seed, source)
    was_tp = isinstance(decoder_layers(model)[0], SimulatedTPLayer)
    was_degree, was_spd = getattr(model, "tp_degree", 1), spd_blocks_of(model) if was_tp else []
    model.eval()
    apply_tp(model, tp_degree)
    try:
        cache = capture_block_inputs(model, tokens, batch_size, progress, dtype=cache_dtype, offload=offload)
        scan = sensitivity_scan(model, cache, progress=progress)
        noise = scan_intervals(scan)  # [ours] bootstrap over windows: which scores the data can resolve
        classes = classify(scan, tau1, tau2)
        chosen = choose_blocks(scan.scores, ratio)
        layers = decoder_layers(model)
        strategies = {l: _strategy(classes[l], b2b, hg) for l in chosen}
        weights, recovered = recover_blocks(
            model, cache, strategies, sequential, lr=lr, epochs=epochs, b2b_batch_size=b2b_batch_size,
            weight_decay=weight_decay, map_samples=map_samples, hg_rule=hg_rule, holdout=holdout, refit=refit,
            seed=seed, progress=progress)
        records = [BlockRecord(l, scan.scores[l], scan.relative[l], classes[l].value, strategies[l], True,
                               hg=recovered.get(l, (None, None))[0], b2b=recovered.get(l, (None, None))[1])
                   for l in chosen]
        for l in sorted(set(range(len(layers))) - set(chosen)):
            records.append(BlockRecord(l, scan.scores[l], scan.relative[l], classes[l].value,
                                       _strategy(classes[l], b2b, hg), False))
    finally:
        if was_tp:
            apply_tp(model, was_degree, was_spd)
        else:
            remove_tp(model)
    settings = {"ratio": ratio, "samples": int(tokens.shape[0]), "seq_len": int(tokens.shape[1]), "seed": seed,
                "source": "given" if given else source, "tau1": tau1, "tau2": tau2, "lr": lr,
                "epochs": epochs, "b2b": b2b, "hg": hg, "b2b_batch_size": b2b_batch_size,
                "weight_decay": weight_decay, "map_samples": map_samples, "scan_batch_size": batch_size,
                "hg_rule": hg_rule, "b2b_holdout": holdout, "b2b_refit": refit,
                "b2b_inputs": "sequential" if sequential else "tp",
                "cache_dtype": str(cache_dtype or "model").removeprefix("torch."),
                "scan_text": "calibration", "suffix_ppl": scan.suffix_ppl,
                "scan_noise": {"level": LEVEL, "draws": DRAWS, "low": noise.low, "high": noise.high,
                               "median_half_width": noise.median_half_width()}}
    return Plan(model_id or getattr(model.config, "_name_or_path", "") or "unknown", tp_degree, len(layers),
                config_signature(model.config), weight_fingerprint(model), scan.base_ppl, chosen,
                sorted(records, key=lambda r: r.block), settings, package_versions(), weights)


def recover_layer(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, kwargs: dict, strategy: str, *,
                  lr: float = LR, epochs: int = EPOCHS, b2b_batch_size: int = BATCH_SIZE,
                  weight_decay: float = WEIGHT_DECAY, map_samples: int = MAP_SAMPLES, hg_rule: str = RULE,
                  holdout: float = HOLDOUT, refit: bool = False, seed: int = 0, progress: bool = True,
                  desc: str = "B2B") -> tuple[nn.Module, Optional[dict], Optional[dict]]:
    """Recover a copy of one SPD block ("b2b", "hg" or "hg+b2b") on its inputs and TP targets.

    Before B2B, HG scores its candidates on the windows B2B trains on, and [ours] its choice is
    undone if it raises the error on B2B's held-out windows (a regrouping fitted to a few windows
    can), so neither step can make the block worse on text it did not see. Returns the copy and the
    HG and B2B records (None where not run); the HG record includes the block's MSE on all windows
    before and after HG (zero-shot SPD) and whether HG was kept.
    """
    layer, hg, b2b = trained_copy(layer), None, None
    if strategy.startswith("hg"):
        layer.block_mode = BlockMode.SPD  # errors before and after HG show what HG alone changes
        zero_shot = block_mse(layer, inputs, targets, kwargs)
        train, held = split_windows(inputs.shape[0], holdout if strategy.endswith("b2b") else 0.0)
        own = {k: v.clone() for k, v in layer.state_dict().items()}
        held_before = block_mse(layer, inputs[held], targets[held], kwargs)
        hg = head_grouping(layer, inputs[train], kwargs, map_samples, rule=hg_rule).as_dict()
        hg["kept"] = train == held or block_mse(layer, inputs[held], targets[held], kwargs) <= held_before
        if not hg["kept"]:
            layer.load_state_dict(own)
        hg["mse_zero_shot"] = zero_shot
        hg["mse_after_hg"] = block_mse(layer, inputs, targets, kwargs)
    if strategy.endswith("b2b"):
        b2b = distill_block(layer, inputs, targets, kwargs, lr=lr, epochs=epochs, batch_size=b2b_batch_size,
                            weight_decay=weight_decay, holdout=holdout, refit=refit, seed=seed,
                            progress=progress, desc=desc).as_dict()
    return layer, hg, b2b


def recover_block(model: nn.Module, cache: BlockInputs, block: int, strategy: str,
                  **options) -> tuple[dict[str, torch.Tensor], Optional[dict], Optional[dict]]:
    """Recover one SPD block on a copy, on the TP model's inputs (`cache`, capture_block_inputs).

    Returns the copy's weights under the model's state-dict names and the HG and B2B records;
    `options` are recover_layer's keywords.
    """
    layer, hg, b2b = recover_layer(decoder_layers(model)[block], cache.block(block), cache.block(block + 1),
                                   cache.kwargs, strategy, desc=f"B2B block {block}", **options)
    prefix = block_prefix(model, block)
    return {prefix + name: p.detach().clone() for name, p in layer.named_parameters()}, hg, b2b


def recover_blocks(model: nn.Module, cache: BlockInputs, strategies: dict[int, str], sequential: bool = False,
                   targets: str = "block", **options) -> tuple[dict[str, torch.Tensor], dict[int, tuple[Optional[dict], Optional[dict]]]]:
    """Recover every SPD block of `strategies` (block -> "zs", "b2b", "hg" or "hg+b2b").

    sequential=False: each block trains on the TP model's inputs (METHOD.md s.4, independent blocks).
    [ours] sequential=True: block l trains on the outputs of blocks 0..l-1 as the plan will run them
    (SPD blocks already recovered), towards targets="block": the TP block's output on those same
    inputs (METHOD.md s.4's objective), or targets="model": the TP model's activation after block l,
    so that the block also learns to undo the drift of the SPD blocks before it.
    Returns the changed weights and each recovered block's (HG, B2B) records.
    """
    if targets not in ("block", "model"):
        raise ValueError(f"targets={targets!r} is unknown; use 'block' (the TP block on the same inputs) or "
                         "'model' (the TP model's activations).")
    if not sequential:
        out = {l: recover_block(model, cache, l, s, **options) for l, s in strategies.items() if s != "zs"}
        return {k: v for w, _, _ in out.values() for k, v in w.items()}, {l: r[1:] for l, r in out.items()}
    weights, records, layers = {}, {}, decoder_layers(model)
    h = cache.block(0)
    for l in range(max(strategies, default=-1) + 1):
        layer, strategy = layers[l], strategies.get(l)
        if strategy not in (None, "zs"):
            target = tp_outputs(layer, h, cache.kwargs) if targets == "block" else cache.block(l + 1)
            layer, *records[l] = recover_layer(layer, h, target, cache.kwargs, strategy, desc=f"B2B block {l}",
                                               **options)
            prefix = block_prefix(model, l)
            weights.update({prefix + name: p.detach().clone() for name, p in layer.named_parameters()})
        was, layer.block_mode = layer.block_mode, BlockMode.SPD if l in strategies else BlockMode.TP
        with torch.no_grad():
            h = torch.cat([layer(x, **cache.kwargs) for x in h.split(cache.batch_size)])
        layer.block_mode = was
    return weights, {l: tuple(r) for l, r in records.items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m spd_ref calibrate",
                                description="SPD calibration: sensitivity scan, B2B, HG; writes a plan folder.",
                                epilog="Defaults marked [ours] are this project's (the paper does not fix them).")
    p.add_argument("--model", default="smollm2", help="'smollm2' (offline), a local folder, a .gguf or a hub id")
    p.add_argument("--tp", type=int, required=True, help="tensor-parallel degree N the plan is for")
    p.add_argument("--ratio", type=float, required=True, help="fraction of blocks with SPD (0..1)")
    p.add_argument("--out", required=True, help="folder to write plan.json and weights.safetensors into")
    p.add_argument("--samples", type=int, default=SAMPLES, help=f"calibration windows [ours] {SAMPLES}; paper 128")
    p.add_argument("--seq-len", type=int, default=SEQ_LEN, help=f"tokens per window [ours] {SEQ_LEN}; paper 2048")
    p.add_argument("--seed", type=int, default=0, help="window sampling and B2B shuffling seed")
    p.add_argument("--source", default="offline", choices=("offline", "wikitext2"),
                   help="calibration text: offline Wikipedia (gensim) [ours], or the paper's WikiText2 (needs hub)")
    p.add_argument("--tau1", type=float, default=TAU1, help=f"in-sensitive if s_l/PPL <= tau1 [ours] {TAU1}")
    p.add_argument("--tau2", type=float, default=TAU2, help=f"extremely sensitive if s_l/PPL > tau2 [ours] {TAU2}")
    p.add_argument("--lr", type=float, default=LR, help=f"B2B AdamW learning rate (paper, LLaMA2) {LR}")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"B2B epochs (paper) {EPOCHS}")
    p.add_argument("--b2b-batch-size", type=int, default=BATCH_SIZE, help=f"B2B windows per step [ours] {BATCH_SIZE}")
    p.add_argument("--map-samples", type=int, default=MAP_SAMPLES, help=f"HG windows for maps [ours] {MAP_SAMPLES}")
    p.add_argument("--batch-size", type=int, default=SCAN_BATCH, help=f"scan windows per pass [ours] {SCAN_BATCH}")
    p.add_argument("--no-b2b", action="store_true", help="skip B2B (sensitive blocks get zero-shot SPD)")
    p.add_argument("--no-hg", action="store_true", help="skip HG (extremely sensitive blocks get B2B only)")
    p.add_argument("--hg-rule", default=RULE, choices=RULES,
                   help="HG: 'error' keeps a regrouping only if it lowers the block error [ours]; 'paper': max-norm")
    p.add_argument("--b2b-holdout", type=float, default=HOLDOUT,
                   help=f"fraction of windows B2B holds out to pick its epoch or refuse training [ours] {HOLDOUT}")
    p.add_argument("--b2b-refit", action="store_true",
                   help="after the held-out check, train again on all windows for the best epoch count [ours] off")
    p.add_argument("--b2b-sequential", action="store_true",
                   help="B2B inputs from the recovered SPD blocks before each block, not the TP model [ours] off")
    p.add_argument("--cache-dtype", default="model", choices=("model", "bfloat16"),
                   help="block activations stored in the model's dtype [ours] or bfloat16 (half the memory)")
    p.add_argument("--cache-dir", default=None,
                   help="keep block activations in memory-mapped files here (host disk) [ours: off, on the device]")
    p.add_argument("--eval-windows", type=int, default=8,
                   help="held-out windows for the final perplexity check, 0 to skip [ours] 8")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype [ours] float32")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from spd_ref.calibration.data import heldout_tokens
    from spd_ref.models import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(args.model, getattr(torch, args.dtype))
    plan = calibrate(model, tokenizer, args.tp, args.ratio, samples=args.samples, seq_len=args.seq_len,
                     seed=args.seed, source=args.source, tau1=args.tau1, tau2=args.tau2, lr=args.lr,
                     epochs=args.epochs, b2b=not args.no_b2b, hg=not args.no_hg, b2b_batch_size=args.b2b_batch_size,
                     map_samples=args.map_samples, batch_size=args.batch_size, hg_rule=args.hg_rule,
                     holdout=args.b2b_holdout, refit=args.b2b_refit, sequential=args.b2b_sequential,
                     offload=args.cache_dir,
                     cache_dtype=None if args.cache_dtype == "model" else getattr(torch, args.cache_dtype),
                     model_id=args.model,
                     progress=not args.quiet)
    folder = save_plan(plan, args.out)
    print(plan.table())
    print(f"\nTP={plan.tp_degree}, ratio={args.ratio}: SPD on {len(plan.spd_blocks)}/{plan.num_blocks} blocks "
          f"{plan.spd_blocks}; calibration PPL (TP) {plan.base_ppl:.3f}")
    print(f"scan noise: the median 95% interval of s_l / PPL is +-{plan.settings['scan_noise']['median_half_width']:.2%} "
          f"(tau1 {args.tau1:.2%}); more --samples narrow it")
    if args.eval_windows > 0:
        held = heldout_tokens(tokenizer, args.seq_len, args.eval_windows)
        apply_tp(model, plan.tp_degree)
        tp_ppl = perplexity(model, held, args.batch_size)
        set_spd_blocks(model, plan.spd_blocks)
        zs_ppl = perplexity(model, held, args.batch_size)
        from spd_ref.plan import apply_plan
        plan_ppl = perplexity(apply_plan(model, plan), held, args.batch_size)
        print(f"held-out PPL ({held.shape[0]} x {held.shape[1]} tokens): TP {tp_ppl:.3f} | zero-shot SPD on "
              f"the chosen blocks {zs_ppl:.3f} | plan {plan_ppl:.3f}")
    print(f"plan written to {folder} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
