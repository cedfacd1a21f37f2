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
import json
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from spd_ref.__main__ import CommandParser, check_model_args, listed, number, output_folder
from spd_ref.calibration.calibrate import SAMPLES, SEQ_LEN, recover_block
from spd_ref.calibration.headgroup import RULE as HG_RULE
from spd_ref.calibration.sensitivity import (STRATEGY, BlockClass, SensitivityScan, baseline_blocks,
                                             capture_block_inputs, classify, sensitivity_scan)
from spd_ref.evaluation.statistics import Drop, format_drop, rows_drop
from spd_ref.evaluation.store import ResultStore
from spd_ref.hf import apply_tp, decoder_layers, remove_tp
from spd_ref.models import MODEL_HELP, portable_name
from spd_ref.plan import choose_blocks

STRATEGIES = ("random", "zs", "b2b", "hg")


def recovery(strategy: str, block_class: BlockClass) -> str:
    """What a chosen block of this class gets under this strategy: "zs", "b2b" or "hg+b2b"."""
    if strategy in ("random", "zs") or block_class is BlockClass.INSENSITIVE:
        return "zs"
    return "b2b" if strategy == "b2b" else STRATEGY[block_class]


def sweep_tp(model, tokenizer, tp_degree: int, ratios: list[float], tasks: str = "offline",
             limit: Optional[int] = None, samples: int = SAMPLES, seq_len: int = SEQ_LEN, seed: int = 0,
             strategies: tuple[str, ...] = STRATEGIES, eval_dtype: torch.dtype = torch.bfloat16,
             progress: bool = True, model_name: str = "", store: Optional[ResultStore] = None,
             on_setting: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """Score every (strategy, ratio) at one TP degree; returns rows (one per task metric).

    Calibration and recovery run on `model` as it is (fp32); [ours] scoring runs on a copy in
    `eval_dtype` (bf16 by default: about 3x faster on a CPU, and what GPUs serve in). With a
    `store`, finished pieces are read back instead of computed; `on_setting(rows so far)` is called
    after each setting (to write rows as they come).
    """
    from spd_ref.calibration.data import calibration_tokens
    from spd_ref.evaluation.evaluate import evaluate_model

    def cached(key: dict, compute: Callable):
        return compute() if store is None else store.get_or_compute(key, compute)

    calibration = {"model": model_name, "tp": tp_degree, "samples": samples, "seq_len": seq_len, "seed": seed}
    # Kept in the scoring dtype: they are only ever loaded into the scorer (fp32 would double the
    # memory of a 1.5B model: the OOM that stopped the first qwen2.5-1.5b run on 24 GiB).
    original = {k: v.detach().to(eval_dtype, copy=True) for k, v in model.state_dict().items()}
    apply_tp(model, tp_degree)
    block_inputs = []  # captured once, only when something needs them (not on a resumed zero-shot run)

    def inputs():
        if not block_inputs:
            tokens = calibration_tokens(tokenizer, samples, seq_len, seed)
            block_inputs.append(capture_block_inputs(model, tokens, progress=progress))
        return block_inputs[0]

    scan = SensitivityScan(**cached({"kind": "scan", **calibration},
                                    lambda: sensitivity_scan(model, inputs(), progress=progress).__dict__))
    classes = classify(scan)
    num, params = len(decoder_layers(model)), sum(p.numel() for p in model.parameters())
    scorer, recovered = None, {}
    setting = {"kind": "score", **calibration, "tasks": tasks, "limit": limit,
               "eval_dtype": str(eval_dtype).removeprefix("torch.")}

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
                recovered[l, kind] = recover_block(model, inputs(), l, kind, seed=seed, progress=progress)[0]
            weights.update(recovered.get((l, kind), {}))
        scorer.load_state_dict(dict(original, **weights))
        apply_tp(scorer, tp_degree, blocks)
        start = time.time()
        scored = evaluate_model(scorer, tokenizer, tasks, limit=limit)
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


def drops(rows: list[dict]) -> dict[tuple, Drop]:
    """The paired drop of average accuracy against ratio 0, per (tp, strategy, ratio)."""
    return {(r["tp"], r["strategy"], r["spd_ratio"]): Drop(r["drop"], *r["drop_ci95"], r["drop_n_items"])
            for r in rows if r.get("metric") == "acc" and "drop_ci95" in r}


def largest_ratio_within(rows: list[dict], points: float = 1.0) -> dict[tuple, float]:
    """Per (tp, strategy): the largest ratio whose paired 95% interval of the average-accuracy drop lies
    at or below `points` (Drop.within): the interval, not the point estimate."""
    best: dict[tuple, float] = {}
    for (tp, strategy, ratio), drop in sorted(drops(rows).items(), key=lambda kv: kv[0][2]):
        if drop.within(points):
            best[(tp, strategy)] = ratio
    return best


def report(rows: list[dict], ppl_metric: str = "word_perplexity") -> str:
    """Markdown: average accuracy, its paired drop with the 95% interval and held-out perplexity per
    (tp, strategy, ratio); per (tp, strategy) the largest ratio whose interval stays within 1 point."""
    avg, drop = average_accuracy(rows), drops(rows)
    ppl = {(r["tp"], r["strategy"], r["spd_ratio"]): r["value"] for r in rows
           if r.get("metric") == ppl_metric and "strategy" in r}
    items = {k: d.n_items for k, d in drop.items()}
    lines = ["| TP | strategy | SPD ratio | avg accuracy | drop, points [95% CI] | items | held-out word ppl |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for key in sorted(avg):
        d = format_drop(drop[key]).removesuffix(" points") if key in drop else "-"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:.2f} | {avg[key]:.3f} | {d} | {items.get(key, '-')} | "
                     f"{ppl.get(key, float('nan')):.1f} |")
    lines += ["", "| TP | strategy | largest ratio whose 95% CI of the drop stays <= 1 point |", "| --- | --- | --- |"]
    best = largest_ratio_within(rows)
    for tp, strategy in sorted({(k[0], k[1]) for k in drop}):
        lines.append(f"| {tp} | {strategy} | {best.get((tp, strategy), 0.0):.2f} |")
    gains = recovery_gains(rows)
    if gains:
        lines += ["", "| TP | SPD ratio | step | accuracy gained, points [95% CI], paired |", "| --- | --- | --- | --- |"]
        lines += [f"| {tp} | {ratio:.2f} | {step} | {100 * g.drop:.1f} [{100 * g.low:.1f}, {100 * g.high:.1f}] |"
                  for (tp, ratio, step), g in sorted(gains.items())]
    return "\n".join(lines)


RECOVERY_STEPS = (("zs", "b2b"), ("b2b", "hg"))  # what B2B adds to zero-shot; what HG adds to B2B


def recovery_gains(rows: list[dict]) -> dict[tuple, Drop]:
    """Per (tp, ratio, "b2b - zs" / "hg - b2b"): the paired accuracy gain of a recovery step over the
    strategy before it, on the same items (a Drop whose values are gains: positive = the step helped).
    Only where both settings differ in what they ran (at low ratios every block is in-sensitive and
    all strategies are the same setting)."""
    scored = {}
    for r in rows:
        if r.get("items") is not None and r.get("spd_ratio"):
            scored.setdefault((r["tp"], r["spd_ratio"], r["strategy"]), []).append(r)
    out = {}
    for (tp, ratio, strategy), after in scored.items():
        for before_name, after_name in RECOVERY_STEPS:
            before = scored.get((tp, ratio, before_name))
            if strategy == after_name and before and after[0]["recovered"] != before[0]["recovered"]:
                d = rows_drop(after, before)  # before minus after, reversed: the gain of the step
                out[(tp, ratio, f"{after_name} - {before_name}")] = d
    return out


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
    p.add_argument("--samples", type=number(int, 1), default=SAMPLES)
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
                 tuple(args.strategies), model_name=portable_name(args.model), store=store, on_setting=write)
    rows = load_rows(out)
    plot_sweep(rows, out / "sweep.png", title=args.model)
    print(report(rows))
    return 0
