"""spd_ref.launch: N gloo processes that agree, bad inputs that fail early, a timeout that kills the group."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spd_ref import launch as L


def test_bad_nproc_is_refused_with_the_fix() -> None:
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"--nproc {bad}.*positive integer"):
            L.check_nproc(bad)
    with pytest.raises(ValueError, match="positive integer"):
        L.check_nproc("2")  # type: ignore[arg-type]


def test_more_processes_than_gpus_names_both_and_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(L, "visible_gpu_count", lambda: 2)
    with pytest.raises(ValueError) as err:
        L.check_nproc(4)
    text = str(err.value)
    assert "--nproc 4" in text and "shows 2" in text and "--nproc 2 or fewer" in text and "--cpu" in text
    L.check_nproc(2)  # as many as there are GPUs: fine
    L.check_nproc(4, cpu=True)  # gloo on the CPU: any number
    monkeypatch.setattr(L, "visible_gpu_count", lambda: 0)
    L.check_nproc(8)  # a CPU machine: gloo, any number


def test_cli_errors_exit_2_before_starting_anything(capsys) -> None:
    assert L.main(["--nproc", "0", "bench"]) == 2
    assert "--nproc 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        L.main(["--nproc", "2"])  # no command
    assert done.value.code == 2


def test_p2p_switch_touches_only_nccl_p2p_disable() -> None:
    base = {"NCCL_NVLS_ENABLE": "0", "NCCL_P2P_DISABLE": "1", "OTHER": "x"}
    off = L.child_env(base, p2p="off")
    on = L.child_env(base, p2p="on")
    same = L.child_env(base)
    assert off["NCCL_P2P_DISABLE"] == "1" and "NCCL_P2P_DISABLE" not in on and same["NCCL_P2P_DISABLE"] == "1"
    for env in (off, on, same):  # multicast and everything else are passed on untouched
        assert env["NCCL_NVLS_ENABLE"] == "0" and env["OTHER"] == "x"
        assert str(Path(L.__file__).resolve().parents[1]) in env["PYTHONPATH"].split(os.pathsep)
    assert L.child_env(base, cpu=True)["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(ValueError, match="p2p='maybe'"):
        L.child_env(base, p2p="maybe")


def test_argv_split_at_the_command() -> None:
    own, rest = L.split_argv(["--nproc", "2", "--p2p=off", "--cpu", "bench", "--shape", "tiny"])
    assert own == ["--nproc", "2", "--p2p=off", "--cpu"] and rest == ["bench", "--shape", "tiny"]
    own, rest = L.split_argv(["--nproc", "4", "--module", "spd_ref.latency.peer", "--", "--shape", "tiny"])
    assert own == ["--nproc", "4", "--module", "spd_ref.latency.peer"] and rest == ["--shape", "tiny"]
    assert L.torchrun_argv(3, ["bench"])[-4:] == ["--nproc-per-node=3", "-m", "spd_ref", "bench"]


@pytest.mark.slow
def test_two_gloo_processes_run_and_agree(tmp_path) -> None:
    # bench --ar-bench checks on every rank that the all-reduce of (rank + 1) is 1 + 2 = 3.
    out = tmp_path / "ar.jsonl"
    done = L.launch(2, ["bench", "--ar-bench", "--ar-sizes", "4K", "--ar-repeats", "2", "--warmup", "1",
                        "--out", str(out)], cpu=True, timeout_s=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1  # rank 0 alone writes
    assert rows[0]["tp"] == 2 and rows[0]["ranks_agree"] is True and rows[0]["gpu"] == "cpu"
    assert "allreduce nccl tp=2" in done.stdout


def _processes_with(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="ignore"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_timeout_kills_the_whole_group(tmp_path) -> None:
    # A worker that never ends (a web server): the launcher must kill torchrun and the worker.
    marker = str(tmp_path / "never_ends")
    os.mkdir(marker)
    done = L.launch(1, ["--bind", "127.0.0.1", "--directory", marker, "0"], module="http.server",
                    cpu=True, timeout_s=8)
    assert done.returncode == L.TIMEOUT_EXIT_CODE
    assert "Serving HTTP" in done.stdout  # the worker was running when the time ran out
    assert "timed out after 8 s" in done.stderr
    assert _processes_with(marker) == []
