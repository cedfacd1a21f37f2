"""Start N processes of `python -m spd_ref COMMAND ...` under torchrun, on CPUs (gloo) or GPUs (NCCL).

    python -m spd_ref.launch --nproc 4 [--p2p off] [--timeout 600] bench --shape llama2-7b ...

is `torchrun --standalone --nproc-per-node 4 -m spd_ref bench --shape llama2-7b ...`, run as
`sys.executable -m torch.distributed.run` so that it uses this interpreter, plus three guarantees:
- bad inputs fail before anything starts, with the value and the fix (N < 1; on a CUDA machine, N
  larger than the number of visible GPUs: one process drives one GPU);
- `--p2p off` sets NCCL_P2P_DISABLE=1 (no direct GPU links: the paper's low-bandwidth setting);
  `--p2p on` removes the variable; by default the environment is passed on unchanged. Every other
  NCCL variable (NCCL_NVLS_ENABLE...) is passed on as it is;
- a wall-clock timeout ends the whole process group (torchrun and its workers), so a hung
  collective never outlives the launcher.
The backend follows the machine: `spd_ref.tp.init_distributed` picks NCCL when CUDA is visible,
gloo otherwise; `--cpu` hides the GPUs (CUDA_VISIBLE_DEVICES="") to force gloo on a GPU machine.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

DEFAULT_TIMEOUT_S = 900.0
TIMEOUT_EXIT_CODE = 124  # what coreutils `timeout` returns
_KILL_GRACE_S = 10.0


def visible_gpu_count() -> int:
    """GPUs this process can see (0 without CUDA). Does not create a CUDA context."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_nproc(nproc: int, cpu: bool = False) -> None:
    """Raise ValueError with the fix when `nproc` processes cannot run here."""
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ValueError(f"--nproc {nproc!r}: the number of processes must be a positive integer "
                         "(1 runs a single rank with no tensor parallelism).")
    if cpu:
        return
    gpus = visible_gpu_count()
    if gpus and nproc > gpus:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
        raise ValueError(
            f"--nproc {nproc} needs {nproc} GPUs (one process per GPU), but this machine shows {gpus}"
            f"{where}. Fix: use --nproc {gpus} or fewer, run on a machine with {nproc} GPUs, or add "
            "--cpu to run gloo processes on the CPU instead.")


def torchrun_argv(nproc: int, argv: Sequence[str], module: str = "spd_ref") -> list[str]:
    """The command line that runs `python -m MODULE ARGV` in `nproc` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", module, *argv]


def child_env(env: Optional[Mapping[str, str]] = None, p2p: Optional[str] = None,
              cpu: bool = False) -> dict[str, str]:
    """The workers' environment: `env` (default: this one) with the interconnect setting applied."""
    out = dict(os.environ if env is None else env)
    if p2p == "off":
        out["NCCL_P2P_DISABLE"] = "1"
    elif p2p == "on":
        out.pop("NCCL_P2P_DISABLE", None)
    elif p2p is not None:
        raise ValueError(f"p2p={p2p!r}: use 'on', 'off' or None (leave the environment as it is)")
    if cpu:
        out["CUDA_VISIBLE_DEVICES"] = ""
    # The workers import spd_ref from this checkout, also when it is not pip-installed.
    root = str(Path(__file__).resolve().parent.parent)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (root, out.get("PYTHONPATH", "")) if p)
    out.setdefault("PYTHONUNBUFFERED", "1")
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (torchrun forwards it to the workers), then SIGKILL stragglers."""
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            # torchrun may have exited while a worker ignores SIGTERM: finish the group off anyway.
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def launch(nproc: int, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
           timeout_s: float = DEFAULT_TIMEOUT_S, p2p: Optional[str] = None, cpu: bool = False,
           capture: bool = True, module: str = "spd_ref") -> subprocess.CompletedProcess:
    """Run `python -m spd_ref ARGV` (or `-m MODULE ARGV`) in `nproc` torchrun processes, and wait.

    Returns the CompletedProcess of torchrun (stdout/stderr as text when `capture`). After
    `timeout_s` seconds the whole process group is killed and returncode is 124.
    """
    check_nproc(nproc, cpu=cpu)
    if not argv:
        raise ValueError("no command: give one, e.g. launch(2, ['bench', '--shape', 'tiny'])")
    cmd = torchrun_argv(nproc, argv, module)
    pipe = subprocess.PIPE if capture else None
    # A new process group in the same session: we can kill it as a whole, and whoever ends our
    # session (a terminal, a job runner) still ends it too, which a new session (setsid) would dodge.
    proc = subprocess.Popen(cmd, env=child_env(env, p2p, cpu), stdout=pipe, stderr=pipe, text=True,
                            process_group=0)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        code = TIMEOUT_EXIT_CODE
        note = f"\nspd_ref.launch: timed out after {timeout_s:g} s; killed the process group.\n"
        if capture:
            err = (err or "") + note
        else:
            print(note, file=sys.stderr, flush=True)
    except BaseException:  # KeyboardInterrupt, SIGTERM turned into SystemExit: leave nothing behind
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, code, out, err)


_VALUE_OPTIONS = ("--nproc", "--p2p", "--timeout", "--module")
_FLAG_OPTIONS = ("--cpu", "-h", "--help")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spd_ref.launch",
        usage="python -m spd_ref.launch --nproc N [--p2p on|off] [--timeout S] [--cpu] [--module M] "
              "[--] COMMAND ARGS...",
        description="Run `python -m spd_ref COMMAND ARGS...` in N torchrun processes (NCCL on GPUs, "
                    "gloo on CPUs). Everything from COMMAND on goes to the workers.")
    p.add_argument("--nproc", type=int, required=True, help="number of processes = tensor-parallel degree")
    p.add_argument("--p2p", choices=("on", "off"), default=None,
                   help="off: NCCL_P2P_DISABLE=1 (no direct GPU links); on: unset it; default: leave the environment")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"wall-clock seconds before the process group is killed (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--cpu", action="store_true", help="hide GPUs: gloo processes on the CPU")
    p.add_argument("--module", default="spd_ref",
                   help="run `python -m MODULE ARGS...` instead (e.g. spd_ref.latency.peer); ARGS need no COMMAND")
    return p


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the launcher's own options from the workers' command line (at COMMAND or `--`)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return list(argv[:i]), list(argv[i + 1:])
        if arg.split("=", 1)[0] in _VALUE_OPTIONS:
            i += 1 if "=" in arg else 2
        elif arg in _FLAG_OPTIONS:
            i += 1
        else:
            break
    return list(argv[:i]), list(argv[i:])


def main(argv: Optional[Sequence[str]] = None) -> int:
    own, rest = split_argv(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(own)
    if not rest:
        parser.error("no COMMAND: e.g. `python -m spd_ref.launch --nproc 2 bench --shape tiny`")
    # SIGTERM from outside (a job runner's timeout) must reach the workers: turn it into an
    # exception so that launch() kills the group on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        done = launch(args.nproc, rest, timeout_s=args.timeout, p2p=args.p2p, cpu=args.cpu,
                      capture=False, module=args.module)
    except ValueError as e:
        print(f"spd_ref.launch: {e}", file=sys.stderr)
        return 2
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
