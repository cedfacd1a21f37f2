"""`python -m spd_ref COMMAND ...`: each command lives in its own module, which has `cli(argv) -> int`."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": ("spd_ref.generate", "greedy generation with TP/SPD, under torchrun or in one process"),
    "calibrate": ("spd_ref.calibrate", "sensitivity scan, B2B, HG; writes an SPD plan"),
    "eval": ("spd_ref.evaluate", "lm-eval accuracy and perplexity of a model or an SPD plan"),
    "sweep": ("spd_ref.sweep", "accuracy against SPD ratio for every strategy"),
    "bench": ("spd_ref.bench", "decode/prefill latency under torchrun (GPUs or CPUs)"),
    "commcost": ("spd_ref.commcost", "fit the alpha-beta all-reduce model and predict SPD savings"),
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
