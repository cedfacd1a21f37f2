"""`python -m spd_ref COMMAND ...`: each command lives in its own module, which has `cli(argv) -> int`.

Every command builds its parser with `CommandParser` and the argument types below, so that bad input
is refused the same way everywhere: one line, `error: ...`, naming the value and the fix, exit status
2 (argparse's convention), before any model is loaded or any process is started. Checks that need
several arguments or the model's config (`check_model_args`: TP degree against the heads, SPD
blocks, the plan) read the config only, which takes seconds.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, Optional, Sequence

COMMANDS = {
    "generate": ("spd_ref.generate", "greedy generation with TP/SPD, under torchrun or in one process"),
    "calibrate": ("spd_ref.calibration.calibrate", "sensitivity scan, B2B, HG; writes an SPD plan"),
    "eval": ("spd_ref.evaluation.eval_command", "lm-eval accuracy and perplexity of a model or an SPD plan"),
    "sweep": ("spd_ref.evaluation.sweep", "accuracy against SPD ratio for every strategy"),
    "bench": ("spd_ref.latency.bench", "decode/prefill latency under torchrun (GPUs or CPUs)"),
    "peer": ("spd_ref.latency.peer", "the peer baseline: transformers' own tp_plan on the same shapes"),
    "commcost": ("spd_ref.latency.commcost", "fit the alpha-beta all-reduce model and predict SPD savings"),
    "report": ("spd_ref.latency.report", "the measured latency table (markdown) from result rows"),
    "predict": ("spd_ref.latency.predict", "PREDICTED latency at an unmeasured TP degree, from measured rows"),
    "demo": ("spd_ref.demo", "the main job: calibrate SmolLM2 at TP 4, evaluate, print the table"),
}


REFUSAL = ("Bad arguments are refused before any model loads or process starts: one line, `error: ...`, "
           "exit status 2.")


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one `error: ...` line with status 2, and which runs `checks`
    (functions of the parsed arguments that raise ValueError, OSError or RuntimeError) right after parsing."""

    def __init__(self, *args, checks: Sequence[Callable[[argparse.Namespace], None]] = (), **kwargs):
        kwargs["epilog"] = " ".join(filter(None, [kwargs.get("epilog"), REFUSAL]))  # every --help says it
        super().__init__(*args, **kwargs)
        self.checks = list(checks)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())}\n")  # one line, whatever the message

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        parsed = super().parse_args(args, namespace)
        for check in self.checks:
            try:
                check(parsed)
            except (ValueError, OSError, RuntimeError) as err:
                self.error(str(err))
        return parsed


def number(kind: type, low: float, high: Optional[float] = None) -> Callable[[str], float]:
    """An argument type: an int or float in [low, high] (no upper bound when high is None)."""
    a = "an integer" if kind is int else "a number"
    span = f"of at least {low}" if high is None else f"in [{low}, {high}]"

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {a}. Fix: give {a} {span}") from None
        if not (low <= value and (high is None or value <= high)):  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text} is outside the range. Fix: give {a} {span}")
        return value
    return convert


def listed(item: Callable[[str], float], empty: bool = False) -> Callable[[str], list]:
    """An argument type: a comma-separated list of `item`, at least one unless `empty`."""
    def convert(text: str) -> list:
        values = [item(part.strip()) for part in text.split(",") if part.strip()]
        if not values and not empty:
            raise argparse.ArgumentTypeError(f"{text!r} lists nothing. Fix: give comma-separated values")
        return values
    return convert


def block_list(text: str) -> list[int]:
    """An argument type: '1,3,5-7' -> [1, 3, 5, 6, 7] ('' -> [])."""
    blocks: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        if not (lo.isdigit() and (hi.isdigit() or not hi)) or int(hi or lo) < int(lo):
            raise argparse.ArgumentTypeError(f"{part!r} is not a block index or range. Fix: write e.g. 1,3,5-7")
        blocks.extend(range(int(lo), int(hi or lo) + 1))
    return blocks


def _writable(path: Path, text: str, what: str) -> None:
    parent = next(p for p in [path, *path.parents] if p.exists())
    if parent != path and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {parent} is a file. Fix: choose a {what} "
                                         "path under a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r} cannot be written ({parent} is not writable). Fix: choose "
                                         f"a {what} where you can write")


def output_folder(text: str) -> str:
    """An argument type: a folder that exists or can be created, and can be written."""
    path = Path(text).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder. Fix: give a folder path")
    _writable(path, text, "folder")
    return text


def output_file(text: str) -> str:
    """An argument type: a file path that can be written (its folder exists or can be created)."""
    path = Path(text).expanduser().absolute()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder. Fix: give a file path")
    _writable(path.parent, text, "file")
    return text


def existing_glob(text: str) -> str:
    """An argument type: a file, or a glob that matches at least one file."""
    if not any(os.path.isfile(f) for f in glob.glob(text)):
        raise argparse.ArgumentTypeError(f"{text!r} matches no file. Fix: give existing result files "
                                         "(JSON lines, e.g. results/h100/*.jsonl)")
    return text


def check_model_args(model: str, tp_degrees: Sequence[int] = (), blocks: Sequence[int] = (),
                     plan: Optional[str] = None, plan_tp: Optional[int] = None, seq_len: Optional[int] = None):
    """Read MODEL's config (not its weights) and check what a command will ask of it: each TP degree
    splits its heads, every SPD block exists, windows of `seq_len` tokens fit its positions, the plan
    (if any) was made for it and for `plan_tp` ranks (None: any). Raises ValueError / OSError; returns the config."""
    from spd_ref.models import model_config
    from spd_ref.partition import make_partition

    config = model_config(model)
    heads = config.num_attention_heads
    for tp in tp_degrees:
        try:
            make_partition(tp, heads, getattr(config, "num_key_value_heads", None) or heads, config.intermediate_size)
        except ValueError as err:
            raise ValueError(f"--tp {tp} does not fit {model!r}: {err}") from None
    layers = config.num_hidden_layers
    outside = [b for b in blocks if not 0 <= b < layers]
    if outside:
        raise ValueError(f"SPD block {outside[0]} does not exist: {model!r} has blocks 0-{layers - 1}. "
                         "Fix: give blocks in that range")
    positions = getattr(config, "max_position_embeddings", None)
    if seq_len and positions and seq_len > positions:
        raise ValueError(f"--seq-len {seq_len} is longer than the {positions} positions of {model!r}. "
                         f"Fix: use --seq-len {positions} or less")
    if plan:
        from spd_ref.plan import check_plan_folder

        check_plan_folder(plan, config, plan_tp)
    return config


def usage() -> str:
    rows = "\n".join(f"  {name:<10} {about}" for name, (_, about) in COMMANDS.items())
    return f"usage: python -m spd_ref COMMAND [--help]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}. Fix: use one of {', '.join(COMMANDS)}.\n\n{usage()}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.cli(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
