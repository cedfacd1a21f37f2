"""Accuracy against SPD ratio, for each strategy of choosing and recovering SPD blocks (METHOD.md s.3-5).

    python -m spd_ref sweep --model smollm2 --tp 4,3 --steps 6 --limit 80 --out results/sweep

Strategies, each at ratios 0, 1/steps, ..., 1:
  random  zero-shot SPD on randomly ordered blocks (seeded);
  zs      zero-shot SPD on the least sensitive blocks (the scan's order);
  b2b     as zs, plus block-to-block distillation of sensitive and extremely sensitive blocks;
  hg      as b2b, but extremely sensitive blocks get head grouping before B2B (the full method).
One calibration (scan, classes) per TP degree; each block is recovered at most once per recovery kind
and reused at every ratio; a configuration already scored (same blocks, same weights) is not
scored again. Rows go to OUT/sweep_tpN.jsonl; OUT/sweep.png plots average accuracy and perplexity.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from spd_ref.__main__ import CommandParser, check_model_args, listed, number, output_folder
from spd_ref.calibration.calibrate import SAMPLES, SEQ_LEN, recover_block
from spd_ref.hf import apply_tp, decoder_layers, remove_tp
from spd_ref.calibration.sensitivity import (STRATEGY, BlockClass, baseline_blocks, capture_block_inputs, classify, sensitivity_scan)
from spd_ref.models import portable_name
from spd_ref.plan import choose_blocks

STRATEGIES = ("random", "zs", "b2b", "hg")


def recovery(strategy: str, block_class: BlockClass) -> str:
    """What a chosen block of this class gets under this strategy: "zs", "b2b" or "hg+b2b"."""
    if strategy in ("random", "zs") or block_class is BlockClass.INSENSITIVE:
        return "zs"
    return "b2b" if strategy == "b2b" else STRATEGY[block_class]


def sweep_tp(model, tokenizer, tp_degree: int, ratios: list[float], tasks: str = "offline",
             limit: Optional[int] = 100, samples: int = SAMPLES, seq_len: int = SEQ_LEN, seed: int = 0,
             strategies: tuple[str, ...] = STRATEGIES, eval_dtype: torch.dtype = torch.bfloat16,
             progress: bool = True) -> list[dict]:
    """Score every (strategy, ratio) at one TP degree; returns rows (one per task metric).

    Calibration and recovery run on `model` as it is (fp32); [ours] scoring runs on a copy in
    `eval_dtype` (bf16 by default: about 3x faster on a CPU, and what GPUs serve in).
    """
    from spd_ref.calibration.data import calibration_tokens
    from spd_ref.evaluation.evaluate import evaluate_model

    tokens = calibration_tokens(tokenizer, samples, seq_len, seed)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    scorer = copy.deepcopy(model).to(eval_dtype)
    apply_tp(model, tp_degree)
    cache = capture_block_inputs(model, tokens, progress=progress)
    scan = sensitivity_scan(model, cache, progress=progress)
    classes = classify(scan)
    num = len(decoder_layers(model))
    recovered: dict[tuple[int, str], dict] = {}
    scored: dict[tuple, list[dict]] = {}
    rows = []
    points = [(s, r) for r in ratios for s in strategies]
    for strategy, ratio in tqdm(points, desc=f"sweep TP {tp_degree}", disable=not progress):
        blocks = (baseline_blocks("random", num, ratio, seed) if strategy == "random"
                  else choose_blocks(scan.scores, ratio))
        kinds = {l: recovery(strategy, classes[l]) for l in blocks}
        key = tuple(sorted(kinds.items()))
        if key not in scored:
            weights = {}
            for l, kind in kinds.items():
                if kind != "zs" and (l, kind) not in recovered:
                    recovered[l, kind] = recover_block(model, cache, l, kind, seed=seed, progress=progress)[0]
                weights.update(recovered.get((l, kind), {}))
            scorer.load_state_dict(dict(original, **weights))
            apply_tp(scorer, tp_degree, blocks)
            scored[key] = evaluate_model(scorer, tokenizer, tasks, limit=limit)
        for row in scored[key]:
            rows.append({"model": portable_name(model.config._name_or_path), "tp": tp_degree, "strategy": strategy,
                         "eval_dtype": str(eval_dtype).removeprefix("torch."),
                         "spd_ratio": ratio, "spd_blocks": blocks, "recovered": {l: k for l, k in kinds.items()
                                                                                if k != "zs"}, **row})
    remove_tp(model)  # recovery trained copies: the model's own weights never changed
    for l, (s, rel, c) in enumerate(zip(scan.scores, scan.relative, classes)):
        rows.append({"tp": tp_degree, "kind": "sensitivity", "block": l, "sensitivity": s, "relative": rel,
                     "class": c.value, "base_ppl": scan.base_ppl})
    return rows


def load_rows(folder: str | Path) -> list[dict]:
    """Every row of every sweep_tp*.jsonl in `folder`."""
    return [json.loads(line) for path in sorted(Path(folder).glob("sweep_tp*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def average_accuracy(rows: list[dict]) -> dict[tuple, float]:
    """Mean accuracy over the accuracy tasks, per (tp, strategy, ratio)."""
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("metric") == "acc":
            acc.setdefault((r["tp"], r["strategy"], r["spd_ratio"]), []).append(r["value"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def largest_ratio_within(rows: list[dict], drop: float = 0.01) -> dict[tuple, float]:
    """Per (tp, strategy): the largest ratio whose average accuracy is at most `drop` below ratio 0."""
    avg = average_accuracy(rows)
    best: dict[tuple, float] = {}
    for (tp, strategy, ratio), value in sorted(avg.items(), key=lambda kv: kv[0][2]):
        base = avg[(tp, strategy, 0.0)]
        if base - value <= drop:
            best[(tp, strategy)] = ratio
    return best


def report(rows: list[dict], ppl_metric: str = "word_perplexity") -> str:
    """Markdown: average accuracy and held-out perplexity per (tp, strategy, ratio), and per
    (tp, strategy) the largest ratio within 1 point of average accuracy of ratio 0."""
    avg = average_accuracy(rows)
    ppl = {(r["tp"], r["strategy"], r["spd_ratio"]): r["value"] for r in rows
           if r.get("metric") == ppl_metric and "strategy" in r}
    lines = ["| TP | strategy | SPD ratio | avg accuracy | held-out word ppl |", "| --- | --- | --- | --- | --- |"]
    for key in sorted(avg):
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:.2f} | {avg[key]:.3f} | {ppl.get(key, float('nan')):.1f} |")
    lines += ["", "| TP | strategy | largest ratio with avg accuracy drop <= 1 point |", "| --- | --- | --- |"]
    lines += [f"| {tp} | {s} | {r:.2f} |" for (tp, s), r in sorted(largest_ratio_within(rows).items())]
    return "\n".join(lines)


def check_args(args: argparse.Namespace) -> None:
    """What can be known before the model loads: the rows to report, or the tasks and the model's heads."""
    if args.report:
        if not list(Path(args.out).glob("sweep_tp*.jsonl")):
            raise ValueError(f"--report: no sweep_tp*.jsonl in {args.out!r}. Fix: give the --out folder of a sweep")
        return
    from spd_ref.evaluation.evaluate import check_hub_for, resolve_tasks

    check_hub_for(resolve_tasks(args.tasks))
    check_model_args(args.model, args.tp, seq_len=args.seq_len)


def cli(argv: list[str]) -> int:
    p = CommandParser(prog="python -m spd_ref sweep", description=__doc__.split("\n\n")[0], checks=[check_args])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tp", type=listed(number(int, 1)), default="4,3", help="comma-separated TP degrees")
    p.add_argument("--steps", type=number(int, 1), default=6, help="ratios 0, 1/steps, ..., 1 (the issue: steps >= 6)")
    p.add_argument("--tasks", default="offline")
    p.add_argument("--limit", type=number(int, 1), default=80, help="items per task [ours: CPU-sized]")
    p.add_argument("--samples", type=number(int, 1), default=SAMPLES)
    p.add_argument("--seq-len", type=number(int, 2), default=SEQ_LEN)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=output_folder, default="results/sweep")
    p.add_argument("--report", action="store_true", help="only print the tables of the rows already in --out")
    args = p.parse_args(argv)
    if args.report:
        print(report(load_rows(args.out)))
        return 0
    from spd_ref.evaluation.plots import plot_sweep
    from spd_ref.models import load_model

    model, tokenizer = load_model(args.model)
    ratios = [i / args.steps for i in range(args.steps + 1)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for tp in args.tp:
        rows = sweep_tp(model, tokenizer, tp, ratios, args.tasks, args.limit, args.samples, args.seq_len, args.seed)
        # One file per TP degree: degrees can run as separate processes (one core each) and progress survives.
        with open(out / f"sweep_tp{tp}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    rows = load_rows(out)
    plot_sweep(rows, out / "sweep.png")
    print(report(rows))
    return 0
