"""`make demo` / `python -m spd_ref demo`: the whole method on SmolLM2-135M, offline, on a CPU.

1. calibrate an SPD plan at TP 4 (sensitivity scan, classes, B2B / HG for the blocks that need it);
2. score the original model and the plan on the offline task suite (lm-eval) and held-out perplexity;
3. print what was dropped, the sync points per token before and after, accuracy and perplexity
   before and after, and what dropping that share of sync points saved on the recorded 4 x H100 runs;
4. save a figure (per-block sensitivity with the chosen blocks; accuracy per task before and after).

Every accuracy difference is paired (the same items before and after) and printed with its 95%
bootstrap interval (spd_ref.evaluation.statistics).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from spd_ref.__main__ import CommandParser, check_model_args, number, output_folder
from spd_ref.models import MODEL_HELP

if TYPE_CHECKING:
    from spd_ref.evaluation.statistics import Drop

RECORDED = Path(__file__).resolve().parents[1] / "results" / "h100" / "sweep_c.jsonl"


def recorded_saving(ratio: float, path: Path = RECORDED, shape: str = "llama2-7b", tp: int = 4) -> Optional[dict]:
    """Measured decode ms/token at SPD ratio 0 and at the recorded ratio closest to `ratio`
    (batch 1, NVLink, compiled + CUDA graph), from the committed 4 x H100 sweep; None if absent."""
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["kind"] == "decode" and r["shape"] == shape and r["tp"] == tp and r["p2p"]
            and r["batch"] == 1 and r.get("compiled") and not r.get("no_comm") and r.get("impl", "spd_ref") == "spd_ref"]
    by_ratio = {r["spd_ratio"]: r for r in rows}
    if 0.0 not in by_ratio:
        return None
    near = min(by_ratio, key=lambda x: abs(x - ratio))
    base, spd = by_ratio[0.0]["ms_median"], by_ratio[near]["ms_median"]
    return {"shape": shape, "tp": tp, "ratio": near, "base_ms": base, "spd_ms": spd, "saving": 1 - spd / base,
            "gpu": by_ratio[near]["gpu"], "date": by_ratio[near]["date"]}


def summary_rows(before: list[dict], after: list[dict]) -> list[tuple[str, float, float, Optional[Drop]]]:
    """(label, before, after, paired drop with its 95% interval) for each task's accuracy, their average,
    and held-out word perplexity (no interval: one number over the text)."""
    from spd_ref.evaluation.statistics import item_scores, paired_drop

    def pick(rows: list[dict], metric: str) -> dict[str, float]:
        return {r["task"]: r["value"] for r in rows if r["metric"] == metric}

    acc_b, acc_a = pick(before, "acc"), pick(after, "acc")
    items_b, items_a = item_scores(before), item_scores(after)
    drop = {task: paired_drop({task: items_b[task]}, {task: items_a[task]}) for task in items_b}
    out = [(f"acc {task}", acc_b[task], acc_a[task], drop.get(task)) for task in sorted(acc_b)]
    out.append(("acc average", sum(acc_b.values()) / len(acc_b), sum(acc_a.values()) / len(acc_a),
                paired_drop(items_b, items_a) if items_b else None))
    ppl_b, ppl_a = pick(before, "word_perplexity"), pick(after, "word_perplexity")
    out += [(f"word ppl {task}", ppl_b[task], ppl_a[task], None) for task in sorted(ppl_b)]
    return out


def save_figure(plan, table: list[tuple], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    blocks = [r.block for r in plan.blocks]
    colors = ["tab:green" if r.chosen else "tab:gray" for r in plan.blocks]
    left.bar(blocks, [100 * r.relative for r in plan.blocks], color=colors)
    # symlog: a few blocks add over 1000% and most under 1%; a linear axis shows only the first, a log
    # axis cannot show the slightly negative (noise) scores. Linear within +-1%, logarithmic beyond.
    left.set_yscale("symlog", linthresh=1.0)
    left.set(xlabel="block", ylabel="sensitivity s_l (% of base perplexity, symlog)",
             title=f"Back-to-front scan at TP {plan.tp_degree} (green: SPD)")
    left.grid(axis="y", alpha=0.3)
    accs = [t for t in table if t[0].startswith("acc")]
    x = range(len(accs))
    right.bar([i - 0.2 for i in x], [t[1] for t in accs], width=0.4, label="original (TP)")
    # the paired interval of the drop, as error bars on the SPD accuracy (after = before - drop)
    err = [(t[3].high - t[3].drop, t[3].drop - t[3].low) if t[3] else (0.0, 0.0) for t in accs]
    right.bar([i + 0.2 for i in x], [t[2] for t in accs], width=0.4, yerr=list(zip(*err)), capsize=3,
              label=f"SPD on {len(plan.spd_blocks)} blocks (bars: paired 95% CI)")
    right.set_xticks(list(x), [t[0].removeprefix("acc ") for t in accs], rotation=20)
    right.set(ylabel="accuracy", title="Offline suite (lm-eval)")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cli(argv: list[str]) -> int:
    p = CommandParser(prog="python -m spd_ref demo", description=__doc__.split("\n\n")[0],
                      checks=[lambda args: check_model_args(args.model, [args.tp])])
    p.add_argument("--model", default="smollm2", help=MODEL_HELP)
    p.add_argument("--tp", type=number(int, 1), default=4)
    p.add_argument("--ratio", type=number(float, 0, 1), default=0.5, help="fraction of blocks with SPD [ours: 0.5]")
    p.add_argument("--limit", type=number(int, 1), default=100,
                   help="items per task [ours: 100, 400 accuracy items, to stay within 10 minutes on a CPU; "
                        "the study (sweep) scores all 1250]")
    p.add_argument("--epochs", type=number(int, 1), default=2,
                   help="B2B epochs [ours for the demo: 2, to stay within minutes on a CPU; the paper: 10]")
    p.add_argument("--eval-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="dtype the offline suite is scored in [ours: bfloat16]")
    p.add_argument("--out", type=output_folder, default="out/demo", help="plan folder, JSON lines and figure go here")
    args = p.parse_args(argv)
    from spd_ref.calibration.calibrate import RECOVER_SAMPLES, calibrate
    from spd_ref.calibration.resume import FOLDER, Checkpoint
    from spd_ref.evaluation.evaluate import evaluate_model
    from spd_ref.evaluation.statistics import format_drop
    from spd_ref.models import load_model, portable_name
    from spd_ref.plan import apply_plan, save_plan

    start = time.time()
    out = Path(args.out)
    model, tokenizer = load_model(args.model)
    name = portable_name(args.model)
    # Interrupted, `make demo` resumes its calibration (spd_ref.calibration.resume). The settings name
    # recovery's windows too: a checkpoint of blocks trained on fewer windows must not be read back.
    settings = {"model": name, "tp": args.tp, "ratio": args.ratio, "epochs": args.epochs,
                "recover_samples": RECOVER_SAMPLES}
    checkpoint = Checkpoint(out / "plan" / FOLDER, settings)
    plan = calibrate(model, tokenizer, args.tp, args.ratio, epochs=args.epochs, model_id=name, checkpoint=checkpoint)
    save_plan(plan, out / "plan")
    checkpoint.remove()
    print(plan.table())
    if checkpoint.reused:
        print(checkpoint.summary())
    # [ours] calibrate in fp32, score in bf16 (about 3x faster on a CPU; what GPUs serve in)
    scorer = model.to(getattr(torch, args.eval_dtype))
    before = evaluate_model(scorer, tokenizer, "offline", limit=args.limit)
    apply_plan(scorer, plan)
    after = evaluate_model(scorer, tokenizer, "offline", limit=args.limit)
    table = summary_rows(before, after)
    num = plan.num_blocks
    print(f"\n{args.model} at TP {args.tp}: SPD on {len(plan.spd_blocks)} of {num} blocks {plan.spd_blocks}")
    strategies = {r.strategy for r in plan.blocks if r.chosen}
    print(f"recovery used: {', '.join(sorted(strategies))}; sync points per token: "
          f"{2 * num} -> {2 * num - len(plan.spd_blocks)}")
    print(f"{'':<26}{'before':>10}{'after':>10}   accuracy drop, points [paired 95% CI]")
    for label, b, a, drop in table:
        print(f"{label:<26}{b:>10.3f}{a:>10.3f}   {format_drop(drop) if drop else ''}")
    items = table[-2][3].n_items if table[-2][3] else 0
    print(f"({items} items, scored before and after; an interval that includes 0 is no measurable drop)")
    worth = recorded_saving(len(plan.spd_blocks) / num)
    if worth:
        print(f"\nOn the recorded runs ({worth['gpu']} x{worth['tp']}, NVLink, {worth['date'][:10]}), SPD on "
              f"{100 * worth['ratio']:.0f}% of the blocks of the LLaMA2-7B shape cut decode from "
              f"{worth['base_ms']:.2f} to {worth['spd_ms']:.2f} ms/token ({100 * worth['saving']:.1f}% less); "
              f"results/h100/README.md has every setting.")
    figure = save_figure(plan, table, out / "demo.png")
    with open(out / "demo.jsonl", "w") as f:
        for stage, rows in (("original", before), ("spd_plan", after)):
            f.writelines(json.dumps({"stage": stage, "model": name, "tp": args.tp, "spd_ratio": args.ratio,
                                     "eval_dtype": args.eval_dtype, **r}) + "\n" for r in rows)
    print(f"\nplan: {out / 'plan'}  figure: {figure}  rows: {out / 'demo.jsonl'}  ({time.time() - start:.0f} s)")
    return 0
