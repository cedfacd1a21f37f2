"""Issue 12's measurements on SmolLM2-135M (or --model) at simulated TP 4 (fp32, CPU); resumable, one JSON
row per setting.

    python scripts/recovery_study.py blocks    # SPD on blocks 0-2: zero-shot, HG (paper / error), B2B, ...
    python scripts/recovery_study.py blocks 32x256:0 "HG (error) + B2B"    # one variant, other calibration
    python scripts/recovery_study.py tokens 8x256:0 8x256:1 32x512:0    # what calibration tokens buy
    python scripts/recovery_study.py scan 32x512:0    # only the scan part (or: b2b), e.g. in two processes

    python scripts/recovery_study.py --model qwen2.5-0.5b tokens 8x256:0 32x512:0    # another offline model

Rows go to results/recovery/{blocks,tokens}.jsonl (with --model M other than smollm2:
results/recovery/M/{blocks,tokens}.jsonl); a setting already there is skipped, so an
interrupted run resumes where it stopped. Held-out perplexity: the first 8 held-out windows of 256
tokens (spd_ref.calibration.data.heldout_tokens), the issue's setting (drop_shared=False: its text).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from spd_ref.calibration.recover import recover_blocks
from spd_ref.calibration.data import calibration_tokens, heldout_tokens
from spd_ref.calibration.noise import scan_intervals
from spd_ref.calibration.sensitivity import capture_block_inputs, perplexity, sensitivity_scan
from spd_ref.hf import apply_tp, decoder_layers, set_spd_blocks
from spd_ref.models import load_model

OUT = Path(__file__).resolve().parents[1] / "results" / "recovery"
TP, BLOCKS, HELD = 4, (0, 1, 2), (8, 256)
# name: (strategy, options) for blocks 0-2
VARIANTS = {
    "zero-shot": ("zs", {}),
    "HG (paper)": ("hg", {"hg_rule": "paper"}),
    "HG (error)": ("hg", {"hg_rule": "error"}),
    "B2B": ("b2b", {}),
    "B2B, no hold-out": ("b2b", {"holdout": 0.0}),
    "B2B, refit": ("b2b", {"refit": True}),
    "HG (paper) + B2B": ("hg+b2b", {"hg_rule": "paper"}),
    "HG (error) + B2B": ("hg+b2b", {"hg_rule": "error"}),
    "B2B, sequential": ("b2b", {"sequential": True}),
    "HG (error) + B2B, refit": ("hg+b2b", {"hg_rule": "error", "refit": True}),
    "HG (error) + B2B, sequential": ("hg+b2b", {"hg_rule": "error", "sequential": True}),
    "B2B, sequential, model targets": ("b2b", {"sequential": True, "targets": "model"}),
    "HG (error) + B2B, sequential, model targets": ("hg+b2b", {"hg_rule": "error", "sequential": True,
                                                              "targets": "model"}),
    "HG (columns)": ("hg", {"hg_rule": "columns"}),
    "HG (columns) + B2B": ("hg+b2b", {"hg_rule": "columns"}),
}


def done(path: Path) -> set[str]:
    return {json.loads(line)["key"] for line in path.read_text().splitlines()} if path.exists() else set()


def write(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}), flush=True)


@torch.no_grad()
def heldout_ppl(model, held, weights: dict) -> float:
    """Held-out perplexity with SPD on BLOCKS carrying `weights`; the model's own weights restored."""
    params = dict(model.named_parameters())
    saved = {k: params[k].detach().clone() for k in weights}
    for k, v in weights.items():
        params[k].copy_(v)
    set_spd_blocks(model, BLOCKS)
    try:
        return perplexity(model, held)
    finally:
        set_spd_blocks(model, [])
        for k, v in saved.items():
            params[k].copy_(v)


def block_records(recovered: dict) -> dict:
    out = {}
    for l, (hg, b2b) in recovered.items():
        out[str(l)] = {"hg": hg and {k: hg.get(k) for k in ("pairing", "mlp_perm", "head_perm", "mse_zero_shot",
                                                           "mse_after_hg", "kept", "mlp_columns_moved")},
                       "b2b": b2b and {k: b2b[k] for k in ("mse_before", "mse_after", "best_epoch", "kept",
                                                          "heldout_curve")}}
    return out


def blocks(model, tok, setting: str = "8x256:0", names: list[str] | None = None) -> None:
    """VARIANTS (or those `names`) on BLOCKS with calibration `setting` ("NxT:seed"; keys other than
    the default setting's carry it)."""
    path = OUT / "blocks.jsonl"
    finished = done(path)
    held = heldout_tokens(tok, HELD[1], HELD[0], drop_shared=False)
    shape, seed = setting.split(":")
    n, seq = (int(x) for x in shape.split("x"))
    cache = capture_block_inputs(model, calibration_tokens(tok, n, seq, int(seed)), progress=False)
    if "TP" not in finished:
        write(path, {"key": "TP", "variant": "TP (no SPD)", "heldout_ppl": perplexity(model, held)})
    for name, (strategy, options) in VARIANTS.items():
        key = name if setting == "8x256:0" else f"{name} @ {setting}"
        if key in finished or (names and name not in names):
            continue
        options = dict(options)
        sequential, targets = options.pop("sequential", False), options.pop("targets", "block")
        start = time.perf_counter()
        weights, recovered = recover_blocks(model, cache, {l: strategy for l in BLOCKS}, sequential, targets,
                                            progress=False, **options)
        write(path, {"key": key, "variant": name, "calibration": setting,
                     "heldout_ppl": heldout_ppl(model, held, weights),
                     "recover_s": round(time.perf_counter() - start, 1), "blocks": block_records(recovered)})


def tokens(model, tok, settings: list[str], parts: tuple[str, ...] = ("scan", "b2b")) -> None:
    """Per calibration setting "NxT:seed": the scan (time, intervals) and B2B on BLOCKS (held-out PPL)."""
    path = OUT / "tokens.jsonl"
    finished = done(path)
    held = heldout_tokens(tok, HELD[1], HELD[0], drop_shared=False)
    for setting in settings:
        shape, seed = setting.split(":")
        n, seq = (int(x) for x in shape.split("x"))
        todo = [p for p in parts if f"{p} {setting}" not in finished]
        if not todo:
            continue
        cache = capture_block_inputs(model, calibration_tokens(tok, n, seq, int(seed)), progress=False)
        row = {"samples": n, "seq_len": seq, "seed": int(seed)}
        if "scan" in todo:
            start = time.perf_counter()
            scan = sensitivity_scan(model, cache, progress=False)
            seconds = time.perf_counter() - start
            ci = scan_intervals(scan)
            write(path, {"key": f"scan {setting}", **row, "scan_s": round(seconds, 1), "base_ppl": scan.base_ppl,
                         "relative": scan.relative, "low": ci.low, "high": ci.high,
                         "median_half_width": ci.median_half_width(), "max_half_width": max(ci.half_width)})
        if "b2b" in todo:
            start = time.perf_counter()
            weights, recovered = recover_blocks(model, cache, {l: "b2b" for l in BLOCKS}, progress=False)
            write(path, {"key": f"b2b {setting}", **row, "b2b_s": round(time.perf_counter() - start, 1),
                         "heldout_ppl": heldout_ppl(model, held, weights), "blocks": block_records(recovered)})


def main(argv: list[str]) -> int:
    global OUT
    torch.manual_seed(0)
    name = "smollm2"
    if argv[:1] == ["--model"]:
        if len(argv) < 3:
            raise SystemExit("usage: recovery_study.py [--model NAME] blocks|tokens|scan|b2b [SETTING ...]")
        name, argv = argv[1], argv[2:]
        OUT = OUT / name if name != "smollm2" else OUT
    OUT.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(name)
    apply_tp(model.eval(), TP)
    decoder_layers(model)  # a LLaMA-style model
    if argv[0] == "blocks":  # blocks [NxT:seed [VARIANT ...]]
        blocks(model, tok, *(argv[1:2] or ["8x256:0"]), argv[2:] or None)
    else:  # "tokens" (scan and B2B), or one of them: "scan", "b2b"
        tokens(model, tok, argv[1:], ("scan", "b2b") if argv[0] == "tokens" else (argv[0],))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
