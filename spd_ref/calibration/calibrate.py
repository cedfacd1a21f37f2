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
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from spd_ref.__main__ import CommandParser, check_model_args, number, output_folder
from spd_ref.calibration.distill import BATCH_SIZE, EPOCHS, HOLDOUT, LR, WEIGHT_DECAY
from spd_ref.calibration.headgroup import MAP_SAMPLES, RULE, RULES
from spd_ref.calibration.noise import DRAWS, LEVEL, scan_intervals
from spd_ref.calibration.recover import recover_block, recover_blocks  # noqa: F401 (recover_block: the sweep's)
from spd_ref.calibration.resume import Checkpoint
from spd_ref.hf import SimulatedTPLayer, apply_tp, decoder_layers, remove_tp, set_spd_blocks, spd_blocks_of
from spd_ref.models import MODEL_HELP, portable_name
from spd_ref.plan import (BlockRecord, Plan, config_signature, package_versions, save_plan, weight_fingerprint)
from spd_ref.calibration.sensitivity import (STRATEGY, TAU1, TAU2, capture_block_inputs, classify, perplexity,
                                             sensitivity_scan)
from spd_ref.plan import choose_blocks

SAMPLES, SEQ_LEN = 8, 256  # [ours] CPU defaults: 2048 calibration tokens (the paper: 128 x 2048)
# [ours] windows HG and B2B train on (the scan reads the first SAMPLES of them): on the 0.5B at TP 4,
# 32 instead of 8 gained 4.8 [2.9, 6.8] accuracy points with B2B on every block (results/recovery)
RECOVER_SAMPLES = 32
SCAN_BATCH = 4              # [ours] windows per forward pass in the scan


def recover_windows(samples: int, recover_samples: Optional[int], flags: bool = False) -> int:
    """The windows recovery trains on: recover_samples, or when None RECOVER_SAMPLES (`samples` where that
    is more). Fewer than the scan's `samples` is refused (`flags`: name the command-line options)."""
    if recover_samples is not None and recover_samples < samples:
        name, scan = ("--recover-samples ", "--samples ") if flags else ("recover_samples=", "samples=")
        raise ValueError(f"{name}{recover_samples} is below {scan}{samples}: recovery trains on the scan's windows "
                         f"and more. Fix: give {name.strip(' =')} >= {scan.strip(' =')}")
    return recover_samples or max(samples, RECOVER_SAMPLES)


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
              recover_samples: Optional[int] = None, tau1: float = TAU1, tau2: float = TAU2, lr: float = LR,
              epochs: int = EPOCHS, b2b: bool = True, hg: bool = True, b2b_batch_size: int = BATCH_SIZE,
              weight_decay: float = WEIGHT_DECAY, map_samples: int = MAP_SAMPLES, batch_size: int = SCAN_BATCH,
              hg_rule: str = RULE, holdout: float = HOLDOUT, refit: bool = False, sequential: bool = False,
              cache_dtype: Optional[torch.dtype] = None, offload: Optional[str] = None,
              model_id: Optional[str] = None, progress: bool = True, checkpoint: Optional[Checkpoint] = None) -> Plan:
    """Calibrate an SPD plan for `model` at `tp_degree` ranks with SPD on round(ratio * L) blocks.

    tokens: calibration windows (n, T); when None, `spd_ref.calibration.data.calibration_tokens(tokenizer, samples,
    seq_len, seed, source)`. [ours] The scan measures perplexity on these calibration windows (held-out
    text stays for evaluation). recover_samples: [ours] windows that recovery (HG, B2B) trains on; the
    scan reads the first `samples` of them (a seeded draw of more windows begins with the smaller draw,
    so the scan is unchanged). None: RECOVER_SAMPLES, or `samples` where that is more.
    The model is left as it was found (weights, TP state, SPD blocks).
    checkpoint: where finished work is kept and read back from (spd_ref.calibration.resume), or None.
    hg_rule, holdout, refit, sequential: recovery (spd_ref.calibration.recover); cache_dtype, offload:
    how block activations are stored (spd_ref.calibration.activations).
    """
    given = tokens is not None
    if given and recover_samples is not None:
        raise ValueError("recover_samples draws the calibration windows, and tokens were given too. Fix: pass "
                         "one of them (given tokens serve the scan and recovery alike)")
    windows = recover_windows(samples, recover_samples)
    if not given:
        from spd_ref.calibration.data import calibration_tokens
        tokens = calibration_tokens(tokenizer, windows, seq_len, seed, source)
    scan_windows = tokens.shape[0] if given else samples
    was_tp = isinstance(decoder_layers(model)[0], SimulatedTPLayer)
    was_degree, was_spd = getattr(model, "tp_degree", 1), spd_blocks_of(model) if was_tp else []
    model.eval()
    apply_tp(model, tp_degree)
    try:
        cache = capture_block_inputs(model, tokens, batch_size, progress, dtype=cache_dtype, offload=offload)
        keep = checkpoint or Checkpoint(None)
        scan = keep.scan(lambda: sensitivity_scan(model, cache.first(scan_windows), progress=progress))
        # [ours] bootstrap over windows: which scores the data can resolve (one window: no interval)
        noise = scan_intervals(scan) if scan_windows > 1 else None
        classes = classify(scan, tau1, tau2)
        chosen = choose_blocks(scan.scores, ratio)
        layers = decoder_layers(model)
        strategies = {l: _strategy(classes[l], b2b, hg) for l in chosen}
        weights, recovered = recover_blocks(
            model, cache, strategies, sequential, checkpoint=keep, lr=lr, epochs=epochs,
            b2b_batch_size=b2b_batch_size, weight_decay=weight_decay, map_samples=map_samples, hg_rule=hg_rule,
            holdout=holdout, refit=refit, seed=seed, progress=progress)
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
    settings = {"ratio": ratio, "samples": int(scan_windows), "recover_samples": int(tokens.shape[0]),
                "seq_len": int(tokens.shape[1]), "seed": seed,
                "source": "given" if given else source, "tau1": tau1, "tau2": tau2, "lr": lr,
                "epochs": epochs, "b2b": b2b, "hg": hg, "b2b_batch_size": b2b_batch_size,
                "weight_decay": weight_decay, "map_samples": map_samples, "scan_batch_size": batch_size,
                "hg_rule": hg_rule, "b2b_holdout": holdout, "b2b_refit": refit,
                "b2b_inputs": "sequential" if sequential else "tp",
                "cache_dtype": str(cache_dtype or "model").removeprefix("torch."),
                "scan_text": "calibration", "suffix_ppl": scan.suffix_ppl,
                "scan_noise": noise and {"level": LEVEL, "draws": DRAWS, "low": noise.low, "high": noise.high,
                                         "median_half_width": noise.median_half_width()}}
    model_id = model_id or portable_name(getattr(model.config, "_name_or_path", "") or "unknown")
    return Plan(model_id, tp_degree, len(layers),
                config_signature(model.config), weight_fingerprint(model), scan.base_ppl, chosen,
                sorted(records, key=lambda r: r.block), settings, package_versions(), weights)


def check_args(args: argparse.Namespace) -> None:
    """The model's heads against --tp, the window length against its positions, tau1 <= tau2, recovery's
    windows at least the scan's."""
    if args.tau1 > args.tau2:
        raise ValueError(f"--tau1 {args.tau1} is above --tau2 {args.tau2}: in-sensitive blocks must score below "
                         "extremely sensitive ones. Fix: give tau1 <= tau2")
    recover_windows(args.samples, args.recover_samples, flags=True)
    check_model_args(args.model, [args.tp], seq_len=args.seq_len)


def _parser() -> CommandParser:
    count = number(int, 1)
    p = CommandParser(prog="python -m spd_ref calibrate", checks=[check_args],
                      description="SPD calibration: sensitivity scan, B2B, HG; writes a plan folder. Interrupted "
                                  "(Ctrl-C, killed), the same command resumes: the scan and every recovered block "
                                  "are kept in OUT/.calibration/ as they finish. The plan's files are written "
                                  "atomically, plan.json last.",
                      epilog="Defaults marked [ours] are this project's (the paper does not fix them).")
    p.add_argument("--model", default="smollm2", help=MODEL_HELP)
    p.add_argument("--tp", type=count, required=True, help="tensor-parallel degree N the plan is for")
    p.add_argument("--ratio", type=number(float, 0, 1), required=True, help="fraction of blocks with SPD (0..1)")
    p.add_argument("--out", type=output_folder, required=True,
                   help="folder to write plan.json and weights.safetensors into")
    p.add_argument("--samples", type=count, default=SAMPLES, help=f"calibration windows [ours] {SAMPLES}; paper 128")
    p.add_argument("--recover-samples", type=count, default=None,
                   help=f"windows HG and B2B train on; the scan reads the first --samples of them [ours] "
                        f"{RECOVER_SAMPLES}, or --samples where that is more")
    p.add_argument("--seq-len", type=number(int, 2), default=SEQ_LEN,
                   help=f"tokens per window [ours] {SEQ_LEN}; paper 2048")
    p.add_argument("--seed", type=int, default=0, help="window sampling and B2B shuffling seed")
    p.add_argument("--source", default="offline", choices=("offline", "wikitext2"),
                   help="calibration text: offline Wikipedia (gensim) [ours], or the paper's WikiText2 (needs hub)")
    p.add_argument("--tau1", type=float, default=TAU1, help=f"in-sensitive if s_l/PPL <= tau1 [ours] {TAU1}")
    p.add_argument("--tau2", type=float, default=TAU2,
                   help=f"extremely sensitive if s_l/PPL > tau2 [ours] {TAU2}")
    p.add_argument("--lr", type=number(float, 0), default=LR, help=f"B2B AdamW learning rate (paper, LLaMA2) {LR}")
    p.add_argument("--epochs", type=count, default=EPOCHS, help=f"B2B epochs (paper) {EPOCHS}")
    p.add_argument("--b2b-batch-size", type=count, default=BATCH_SIZE, help=f"B2B windows per step [ours] {BATCH_SIZE}")
    p.add_argument("--map-samples", type=count, default=MAP_SAMPLES, help=f"HG windows for maps [ours] {MAP_SAMPLES}")
    p.add_argument("--batch-size", type=count, default=SCAN_BATCH, help=f"scan windows per pass [ours] {SCAN_BATCH}")
    p.add_argument("--no-b2b", action="store_true", help="skip B2B (sensitive blocks get zero-shot SPD)")
    p.add_argument("--no-hg", action="store_true", help="skip HG (extremely sensitive blocks get B2B only)")
    p.add_argument("--hg-rule", default=RULE, choices=RULES,
                   help="HG [ours: columns]: 'columns' keeps a regrouping (single MLP columns may move between "
                        "ranks) only if it lowers the block error; 'error': the same with whole MLP shards only; "
                        "'paper': the max-norm pairing, unconditionally")
    p.add_argument("--b2b-holdout", type=number(float, 0, 0.99), default=HOLDOUT,
                   help=f"fraction of windows B2B holds out to pick its epoch or refuse training [ours] {HOLDOUT}")
    p.add_argument("--b2b-refit", action="store_true",
                   help="after the held-out check, train again on all windows for the best epoch count [ours] off")
    p.add_argument("--b2b-sequential", action="store_true",
                   help="B2B inputs from the recovered SPD blocks before each block, not the TP model [ours] off")
    p.add_argument("--cache-dtype", default="model", choices=("model", "bfloat16"),
                   help="block activations stored in the model's dtype [ours] or bfloat16 (half the memory)")
    p.add_argument("--cache-dir", default=None,
                   help="keep block activations in memory-mapped files here (host disk) [ours: off, on the device]")
    p.add_argument("--eval-windows", type=number(int, 0), default=8,
                   help="held-out windows for the final perplexity check, 0 to skip [ours] 8")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype [ours] float32")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# Arguments that change neither the scan nor any recovered block: a checkpoint made with others still holds.
NOT_IN_CHECKPOINT = ("out", "eval_windows", "quiet", "cache_dir")


def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from spd_ref.calibration.data import heldout_tokens
    from spd_ref.calibration.resume import FOLDER
    from spd_ref.models import load_model

    start = time.perf_counter()
    model_id = portable_name(args.model)
    settings = {k: v for k, v in vars(args).items() if k not in NOT_IN_CHECKPOINT} | {"model": model_id}
    checkpoint = Checkpoint(Path(args.out) / FOLDER, settings)
    model, tokenizer = load_model(args.model, getattr(torch, args.dtype))
    plan = calibrate(model, tokenizer, args.tp, args.ratio, samples=args.samples, seq_len=args.seq_len,
                     recover_samples=args.recover_samples, seed=args.seed, source=args.source, tau1=args.tau1,
                     tau2=args.tau2, lr=args.lr, epochs=args.epochs, b2b=not args.no_b2b, hg=not args.no_hg,
                     b2b_batch_size=args.b2b_batch_size,
                     map_samples=args.map_samples, batch_size=args.batch_size, hg_rule=args.hg_rule,
                     holdout=args.b2b_holdout, refit=args.b2b_refit, sequential=args.b2b_sequential,
                     cache_dtype=None if args.cache_dtype == "model" else getattr(torch, args.cache_dtype),
                     offload=args.cache_dir, model_id=model_id, progress=not args.quiet, checkpoint=checkpoint)
    folder = save_plan(plan, args.out)
    checkpoint.remove()
    print(plan.table())
    if checkpoint.reused:
        print("\n" + checkpoint.summary())
    print(f"\nTP={plan.tp_degree}, ratio={args.ratio}: SPD on {len(plan.spd_blocks)}/{plan.num_blocks} blocks "
          f"{plan.spd_blocks}; calibration PPL (TP) {plan.base_ppl:.3f}")
    if plan.settings["scan_noise"]:
        print(f"scan noise: the median 95% interval of s_l / PPL is "
              f"+-{plan.settings['scan_noise']['median_half_width']:.2%} (tau1 {args.tau1:.2%}); more --samples narrow it")
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
