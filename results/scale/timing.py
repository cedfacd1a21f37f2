"""Scoring time of an SPD plan against the plain model (issue 13, item 3), on the same items.

    OMP_NUM_THREADS=1 python results/scale/timing.py MODEL TP LIMIT REPS >> results/scale/timing.jsonl

Scores the offline suite (first LIMIT items a task) in bf16 with: the plain transformers model;
simulated TP with SPD on the second half of the blocks through the fast path (spd_ref.hf, fast=True);
the same through the rank-by-rank path (fast=False). The three alternate, REPS times, so that a
machine whose load drifts slows all three alike. One JSON line per evaluation.
"""
import json
import sys
import time

import torch

from spd_ref.evaluation.evaluate import device_name, evaluate_model
from spd_ref.hf import apply_tp, remove_tp
from spd_ref.models import load_model

name, tp, limit, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, tok = load_model(name, dtype=torch.bfloat16)
num = model.config.num_hidden_layers
blocks = list(range(num // 2, num))
for rep in range(reps):
    for path in ("plain", "fast", "ranks"):
        remove_tp(model)
        if path != "plain":
            apply_tp(model, tp, blocks, fast=path == "fast")
        start = time.time()
        rows = evaluate_model(model, tok, "offline", limit=limit)
        seconds = time.time() - start
        acc = [r["value"] for r in rows if r["metric"] == "acc"]
        print(json.dumps({"model": name, "tp": tp, "limit": limit, "path": path, "rep": rep, "seconds": round(seconds, 1),
                          "avg_acc": sum(acc) / len(acc), "spd_blocks": 0 if path == "plain" else len(blocks),
                          "device": device_name(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}),
              flush=True)
