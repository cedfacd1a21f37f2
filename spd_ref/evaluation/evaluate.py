"""Accuracy and perplexity with lm-eval: the offline suite (spd_ref/tasks) or the paper's suite.

    rows = evaluate_model(model, tokenizer, tasks="offline", limit=100)
    write_results(rows, "results/eval.jsonl", model="smollm2", tp=4, strategy="zs", spd_ratio=0.5)

or from a shell: `python -m spd_ref eval ...` (spd_ref.evaluation.eval_command).
The model is scored in memory by lm-eval's HFLM, so a model patched by `spd_ref.hf.apply_tp` (still a
transformers `LlamaForCausalLM`) is scored like any other. `evaluate_model` keeps no global state, so
every rank of a multi-process run can call it; only the rank that lm-eval reports on gets rows.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import socket
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlparse

from spd_ref.evaluation.tasks import CHANCE, OFFLINE_TASKS, PAPER_TASKS, TASKS_DIR

SUITES = {"offline": OFFLINE_TASKS, "paper": PAPER_TASKS}
_TRUE = {"1", "on", "yes", "true"}


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Task names from "offline", "paper", "a,b" or a list; a name lm-eval does not know raises."""
    if isinstance(tasks, str):
        names = list(SUITES[tasks]) if tasks in SUITES else [t.strip() for t in tasks.split(",") if t.strip()]
    else:
        names = [str(t) for t in tasks]
    if not names:
        raise ValueError(f"no task given ({tasks!r}). Fix: use 'offline', 'paper' or task names: "
                         f"{', '.join(OFFLINE_TASKS + PAPER_TASKS)}.")
    unknown = [n for n in names if n not in OFFLINE_TASKS + PAPER_TASKS]
    if unknown:  # maybe another lm-eval task: look in lm-eval's own index
        unknown = [n for n in unknown if n not in lm_eval_task_names()]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r} (in {tasks!r}). Valid: 'offline' = "
                         f"{','.join(OFFLINE_TASKS)}; 'paper' = {','.join(PAPER_TASKS)}; "
                         "or any lm-eval task name (python -m lm_eval ls tasks).")
    return names


@lru_cache(maxsize=1)
def lm_eval_task_names() -> frozenset[str]:
    """Every task lm-eval has installed, plus ours (a local index: seconds to build, so kept)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager(include_path=str(TASKS_DIR)).all_tasks)


def hub_unreachable_reason() -> str | None:
    """Why the dataset hub cannot be used here (offline flags or no connection), or None if it can."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))  # a mirror, if set
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as err:
        return f"{host}:{port} cannot be reached ({err})"
    return None


def check_hub_for(names: Iterable[str]) -> None:
    """Stop before lm-eval starts if a task needs the dataset hub and there is none."""
    online = [n for n in names if n not in OFFLINE_TASKS]
    if not online:
        return
    reason = hub_unreachable_reason()
    if reason:
        raise RuntimeError(f"tasks {','.join(online)} download their datasets from the Hugging Face hub, "
                           f"but {reason}. Fix: use --tasks offline (tasks='offline': "
                           f"{','.join(OFFLINE_TASKS)}), or run on a machine that reaches the hub with "
                           "HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset.")


def evaluate_model(model, tokenizer, tasks: str | Sequence[str] = "offline", limit: int | None = None,
                   batch_size: int = 16) -> list[dict]:
    """Score an in-memory transformers causal LM; one row per task and metric.

    Rows: task, metric, value, n_items, stderr (binomial, for accuracies; lm-eval's bootstrap is off),
    higher_is_better, chance (offline accuracy tasks). `limit` keeps the first `limit` items of each
    task (the offline tasks order items so that any prefix stays balanced).
    """
    from lm_eval.models.huggingface import HFLM

    names = resolve_tasks(tasks)
    check_hub_for(names)  # before HFLM wraps the model: a missing hub stops before lm-eval starts
    return evaluate_lm(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), names, limit)


def evaluate_lm(lm, tasks: str | Sequence[str] = "offline", limit: int | None = None) -> list[dict]:
    """Score any lm-eval LM (HFLM, or spd_ref.evaluation.runtime.RuntimeHFLM under torchrun) on the tasks."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = resolve_tasks(tasks)
    check_hub_for(names)
    offline_only = all(n in OFFLINE_TASKS for n in names)
    task_manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=not offline_only)
    out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=task_manager, limit=limit,
                                  bootstrap_iters=0, log_samples=True)  # per-item scores: paired statistics
    return [] if out is None else rows_from_results(out)


def item_scores_of(samples: list[dict], metric: str) -> list[float] | None:
    """The per-item scores of one metric, in item order, from lm-eval's logged samples."""
    scores = [(s["doc_id"], s[metric]) for s in samples if isinstance(s.get(metric), (int, float))]
    return [float(v) for _, v in sorted(scores)] if scores and len(scores) == len(samples) else None


def rows_from_results(out: dict) -> list[dict]:
    """Flatten lm-eval's results ({"acc,none": 0.8, ...} per task) into rows; accuracy rows carry the
    per-item scores (`items`, item order) when lm-eval logged samples, for paired statistics."""
    rows = []
    for task, metrics in out["results"].items():
        n_items = out.get("n-samples", {}).get(task, {}).get("effective")
        better = out.get("higher_is_better", {}).get(task, {})
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or "_stderr" in metric or not isinstance(value, (int, float)):
                continue
            stderr = None
            if metric.startswith("acc") and n_items and n_items > 1:
                stderr = math.sqrt(value * (1 - value) / (n_items - 1))
            rows.append({"task": task, "metric": metric if filt == "none" else f"{metric},{filt}",
                         "value": float(value), "n_items": n_items, "stderr": stderr,
                         "higher_is_better": better.get(metric),
                         "chance": CHANCE.get(task) if metric.startswith("acc") else None})
            if metric.startswith("acc") and task in out.get("samples", {}):
                rows[-1]["items"] = item_scores_of(out["samples"][task], metric)
    return rows


def versions() -> dict:
    import lm_eval
    import torch
    import transformers

    from spd_ref import __version__

    return {"spd_ref": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "lm_eval": getattr(lm_eval, "__version__", "?"), "python": platform.python_version()}


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def write_results(rows: Iterable[dict], path: str | Path, *, model: str, tp: int = 1, strategy: str = "none",
                  spd_ratio: float = 0.0, **metadata) -> Path:
    """Append one JSON line per row, with the run's metadata, date, device and package versions.
    `model` and `plan` are named portably (spd_ref.models.portable_name: never a local path)."""
    from spd_ref.models import portable_name

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata.get("plan"):
        metadata["plan"] = portable_name(metadata["plan"])
    common = {"model": portable_name(model), "tp": tp, "strategy": strategy, "spd_ratio": spd_ratio, **metadata,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "device": device_name(), "versions": versions()}
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps({**common, **row}) + "\n")
    return path


def format_table(rows: Sequence[dict]) -> str:
    lines = [f"{'task':<16} {'metric':<16} {'value':>10} {'stderr':>8} {'n_items':>8} {'chance':>7}"]
    for r in rows:
        stderr = f"{r['stderr']:.3f}" if r.get("stderr") is not None else "-"
        chance = f"{r['chance']:.2f}" if r.get("chance") is not None else "-"
        lines.append(f"{r['task']:<16} {r['metric']:<16} {r['value']:>10.4f} {stderr:>8} "
                     f"{r['n_items'] if r['n_items'] is not None else '-':>8} {chance:>7}")
    return "\n".join(lines)
