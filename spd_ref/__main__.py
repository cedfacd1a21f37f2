"""`python -m spd_ref COMMAND ...`: each command lives in its own module, which has `cli(argv) -> int`."""
from __future__ import annotations

import importlib
import sys

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
        print(f"unknown command {name!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.cli(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
