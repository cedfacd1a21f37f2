"""Accuracy against SPD ratio, for each strategy of choosing and recovering SPD blocks (METHOD.md s.3-5).

    python -m spd_ref sweep --model smollm2 --tp 4,3 --steps 4 --strategies zs --out results/scale/smollm2

Strategies, each at ratios 0, 1/steps, ..., 1:
  random  zero-shot SPD on randomly ordered blocks (seeded);
  zs      zero-shot SPD on the least sensitive blocks (the scan's order);
  b2b     as zs, plus block-to-block distillation of sensitive and extremely sensitive blocks;
  hg      as b2b, but extremely sensitive blocks get head grouping before B2B (the full method).
One calibration (scan, classes) per TP degree; each block is recovered at most once per recovery kind
and reused at every ratio; a configuration already scored (same blocks, same weights) is not scored
again. Every accuracy is compared with ratio 0 (plain TP) on the same items: `drop` and `drop_ci95`
(spd_ref.evaluation.statistics). Resumable: the scan and every scored setting are kept in OUT/store
(spd_ref.evaluation.store), so a stopped run continues; OUT/sweep_tpN.jsonl is rewritten after each
setting, and OUT/sweep.png plots average accuracy (with intervals) and perplexity.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from spd_ref.__main__ import CommandParser, check_model_args, listed, number, output_folder
from spd_ref.calibration.calibrate import RECOVER_SAMPLES, SAMPLES, SEQ_LEN, recover_block, recover_windows
from spd_ref.calibration.headgroup import RULE as HG_RULE
from spd_ref.calibration.sensitivity import (STRATEGY, BlockClass, SensitivityScan, baseline_blocks,
                                             capture_block_inputs, classify, sensitivity_scan)
from spd_ref.evaluation.statistics import rows_drop
from spd_ref.evaluation.store import ResultStore
from spd_ref.evaluation.sweep_rows import load_rows, report
from spd_ref.hf import apply_tp, decoder_layers, remove_tp
from spd_ref.models import MODEL_HELP, portable_name
from spd_ref.plan import choose_blocks

STRATEGIES = ("random", "zs", "b2b", "hg")
BATCH_SIZE = 16  # [ours] lm-eval's batch when scoring; the store's keys name any other


def release_memory() -> None:
    """Hand memory that earlier settings freed back to the OS before a scoring run (glibc keeps freed heap
    pages). With this and no copy of the original weights, the 1.5B model's TP-2 recovery sweep ran whole
    at a peak of 21.2 GB resident, where it had been killed at 24.2 GB on a 24 GiB machine."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the allocator keeps its own policy
        pass


def recovery(strategy: str, block_class: BlockClass) -> str:
    """What a chosen block of this class gets under this strategy: "zs", "b2b" or "hg+b2b"."""
    if strategy in ("random", "zs") or block_class is BlockClass.INSENSITIVE:
        return "zs"
    return "b2b" if strategy == "b2b" else STRATEGY[block_class]


def sweep_tp(model, tokenizer, tp_degree: int, ratios: list[float], tasks: str = "offline",
             limit: Optional[int] = None, samples: int = SAMPLES, seq_len: int = SEQ_LEN, seed: int = 0,
             recover_samples: Optional[int] = None, strategies: tuple[str, ...] = STRATEGIES,
             eval_dtype: torch.dtype = torch.bfloat16, batch_size: int = BATCH_SIZE, progress: bool = True,
             model_name: str = "", store: Optional[ResultStore] = None,
             on_setting: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """Score every (strategy, ratio) at one TP degree; returns rows (one per task metric).

    Calibration and recovery run on `model` as it is (fp32); [ours] scoring runs on a copy in
    `eval_dtype` (bf16 by default: about 3x faster on a CPU, and what GPUs serve in) with lm-eval's
    `batch_size` (a smaller one holds fewer logits of a large vocabulary at once). recover_samples:
    windows HG and B2B train on (calibrate's option; None: RECOVER_SAMPLES, or `samples` if more). With a
    `store`, finished pieces are read back instead of computed; `on_setting(rows so far)` is called
    after each setting (to write rows as they come).
    """
    from spd_ref.calibration.data import calibration_tokens
    from spd_ref.evaluation.evaluate import evaluate_model

    def cached(key: dict, compute: Callable):
        return compute() if store is None else store.get_or_compute(key, compute)

    calibration = {"model": model_name, "tp": tp_degree, "samples": samples, "seq_len": seq_len, "seed": seed}
    windows = recover_windows(samples, recover_samples)
    if not set(strategies) - {"zs", "random"}:  # zero-shot alone: capture the scan's windows only
        windows = samples
    apply_tp(model, tp_degree)  # the model's own weights never change (recovery trains copies): the
    # scorer is reset from them, converted by load_state_dict (a copy of them would cost 3.6 GB at 1.5B)
    block_inputs = []  # captured once, only when something needs them (not on a resumed zero-shot run)

    def inputs():  # recovery's windows; the scan reads the first `samples` (a seeded draw's prefix)
        if not block_inputs:
            tokens = calibration_tokens(tokenizer, windows, seq_len, seed)
            block_inputs.append(capture_block_inputs(model, tokens, progress=progress))
        return block_inputs[0]

    scan = SensitivityScan(**cached({"kind": "scan", **calibration},
                                    lambda: sensitivity_scan(model, inputs().first(samples),
                                                             progress=progress).__dict__))
    classes = classify(scan)
    num, params = len(decoder_layers(model)), sum(p.numel() for p in model.parameters())
    scorer, recovered = None, {}
    setting = {"kind": "score", **calibration, "tasks": tasks, "limit": limit,
               "eval_dtype": str(eval_dtype).removeprefix("torch.")}
    if batch_size != BATCH_SIZE:  # padding changes float order: never pair scores of two batch sizes
        setting["batch_size"] = batch_size

    def score(blocks: list[int], kinds: dict[int, str]) -> dict:
        nonlocal scorer
        if scorer is None:
            # deepcopy with each parameter already in the scoring dtype: no fp32 copy of the model
            memo = {id(p): torch.nn.Parameter(p.detach().to(eval_dtype), requires_grad=False)
                    for p in remove_tp(model).parameters()}
            scorer = copy.deepcopy(model, memo).to(eval_dtype)
            apply_tp(model, tp_degree)
        weights = {}
        for l, kind in kinds.items():
            if kind != "zs" and (l, kind) not in recovered:
                trained = recover_block(model, inputs(), l, kind, seed=seed, progress=progress)[0]
                recovered[l, kind] = {k: v.to(eval_dtype) for k, v in trained.items()}  # only ever scored
            weights.update(recovered.get((l, kind), {}))
        scorer.load_state_dict(dict(model.state_dict(), **weights))
        apply_tp(scorer, tp_degree, blocks)
        release_memory()
        start = time.time()
        scored = evaluate_model(scorer, tokenizer, tasks, limit=limit, batch_size=batch_size)
        return {"rows": scored, "score_s": time.time() - start}

    points = []
    for ratio in ratios:
        for strategy in strategies:
            blocks = (baseline_blocks("random", num, ratio, seed) if strategy == "random"
                      else choose_blocks(scan.scores, ratio))
            kinds = {l: recovery(strategy, classes[l]) for l in blocks}
            key = {**setting, "blocks": blocks, "recovered": sorted((l, k) for l, k in kinds.items() if k != "zs")}
            if "hg+b2b" in kinds.values():  # what HG does changed with its rule: never mix them in the store
                key["hg_rule"] = HG_RULE
            if key["recovered"] and windows != samples:  # recovery trained on more windows than the scan
                key["recover_samples"] = windows
            points.append((strategy, ratio, blocks, kinds, key))
    if store is not None:  # finished settings first: rows written as they come never lose a finished one
        points.sort(key=lambda p: store.get(p[4]) is None)
    base_key = {**setting, "blocks": [], "recovered": []}  # ratio 0, plain TP: the paired baseline
    # Without ratio 0 among the ratios (a process scoring one setting beside another run), the
    # baseline is taken from the store if there, and scored last otherwise.
    base = cached(base_key, lambda: score([], {})) if 0.0 in ratios or store is None else store.get(base_key)
    finished = []

    def rows_so_far() -> list[dict]:
        out = []
        for strategy, ratio, blocks, kinds, done in finished:
            drop = rows_drop(base["rows"], done["rows"]).as_row() if base and tasks_have_items(done["rows"]) else {}
            out += [{"model": model_name, "tp": tp_degree, "strategy": strategy, "spd_ratio": ratio,
                     "eval_dtype": setting["eval_dtype"], "spd_blocks": blocks,
                     "hg_rule": HG_RULE if "hg+b2b" in kinds.values() else None,
                     "recovered": {l: k for l, k in kinds.items() if k != "zs"}, "score_s": done["score_s"],
                     "recover_samples": windows if any(k != "zs" for k in kinds.values()) else None,
                     **drop, **row} for row in done["rows"]]
        return out + sensitivity_rows(scan, classes, tp_degree, model_name, params)

    for strategy, ratio, blocks, kinds, key in tqdm(points, desc=f"sweep TP {tp_degree}", disable=not progress):
        finished.append((strategy, ratio, blocks, kinds, cached(key, lambda: score(blocks, kinds))))
        on_setting(rows_so_far())
    if base is None:
        base = cached(base_key, lambda: score([], {}))
        on_setting(rows_so_far())
    remove_tp(model)  # recovery trained copies: the model's own weights never changed
    return rows_so_far()


def tasks_have_items(rows: list[dict]) -> bool:
    return any(r.get("items") for r in rows)


def sensitivity_rows(scan: SensitivityScan, classes: list[BlockClass], tp: int, model_name: str,
                     params: int) -> list[dict]:
    return [{"model": model_name, "params": params, "tp": tp, "kind": "sensitivity", "block": l, "sensitivity": s,
             "relative": rel, "class": c.value, "base_ppl": scan.base_ppl}
            for l, (s, rel, c) in enumerate(zip(scan.scores, scan.relative, classes))]


def strategy(text: str) -> str:
    """An argument type: one of STRATEGIES."""
    if text not in STRATEGIES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a strategy. Fix: use {', '.join(STRATEGIES)}")
    return text


def check_args(args: argparse.Namespace) -> None:
    """What can be known before the model loads: the rows to report, or the tasks and the model's heads."""
    if args.report:
        if not list(Path(args.out).glob("sweep_tp*.jsonl")):
            raise ValueError(f"--report: no sweep_tp*.jsonl in {args.out!r}. Fix: give the --out folder of a sweep")
        return
    recover_windows(args.samples, args.recover_samples, flags=True)
    from spd_ref.evaluation.evaluate import check_hub_for, resolve_tasks

    check_hub_for(resolve_tasks(args.tasks))
    check_model_args(args.model, args.tp, seq_len=args.seq_len)


def cli(argv: list[str]) -> int:
    p = CommandParser(prog="python -m spd_ref sweep", description=__doc__.split("\n\n")[0], checks=[check_args])
    p.add_argument("--model", default="smollm2", help=MODEL_HELP)
    p.add_argument("--tp", type=listed(number(int, 1)), default="4,3", help="comma-separated TP degrees")
    p.add_argument("--steps", type=number(int, 1), default=6, help="ratios 0, 1/steps, ..., 1")
    p.add_argument("--ratios", type=listed(number(float, 0, 1)), default=None,
                   help="comma-separated ratios instead of --steps (e.g. 0.5: one setting, scored in a second "
                        "process beside a run that scores ratio 0; both share --out's store)")
    p.add_argument("--strategies", type=listed(strategy), default=",".join(STRATEGIES),
                   help=f"comma-separated, of {','.join(STRATEGIES)}")
    p.add_argument("--tasks", default="offline")
    p.add_argument("--limit", type=number(int, 1), default=None,
                   help="items per task [ours: all of the offline suite, 1250 accuracy items]")
    p.add_argument("--batch-size", type=number(int, 1), default=BATCH_SIZE,
                   help=f"lm-eval's batch when scoring [ours: {BATCH_SIZE}; smaller needs less memory for "
                        "a large vocabulary, and is a separate setting in the store]")
    p.add_argument("--samples", type=number(int, 1), default=SAMPLES, help=f"scan windows [ours: {SAMPLES}]")
    p.add_argument("--recover-samples", type=number(int, 1), default=None,
                   help=f"windows HG and B2B train on; the scan reads the first --samples of them [ours: "
                        f"{RECOVER_SAMPLES}, or --samples if more; the study in results/scale used 8]")
    p.add_argument("--seq-len", type=number(int, 2), default=SEQ_LEN)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=output_folder, default="results/sweep",
                   help="rows, figure, and OUT/store: what a rerun resumes from")
    p.add_argument("--report", action="store_true", help="only print the tables of the rows already in --out")
    args = p.parse_args(argv)
    if args.report:
        print(report(load_rows(args.out)))
        return 0
    from spd_ref.evaluation.plots import plot_sweep
    from spd_ref.models import load_model

    model, tokenizer = load_model(args.model)
    ratios = args.ratios or [i / args.steps for i in range(args.steps + 1)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / "store")
    for tp in args.tp:
        def write(rows: list[dict], path: Path = out / f"sweep_tp{tp}.jsonl") -> None:
            # One file per TP degree, rewritten as settings finish: degrees can run as separate processes.
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))

        sweep_tp(model, tokenizer, tp, ratios, args.tasks, args.limit, args.samples, args.seq_len, args.seed,
                 args.recover_samples, tuple(args.strategies), batch_size=args.batch_size,
                 model_name=portable_name(args.model), store=store, on_setting=write)
    rows = load_rows(out)
    plot_sweep(rows, out / "sweep.png", title=args.model)
    print(report(rows))
    return 0
