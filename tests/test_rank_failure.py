"""A rank that dies mid-generate ends the whole torchrun job, with the failing rank named, well within
the process-group timeout: never a hang (issue 15, item 2)."""
import os
import signal
import subprocess
import time

import pytest

from conftest import ROOT, random_model, tiny_config
from spd_ref.launch import child_env, torchrun_argv

PG_TIMEOUT_S = 60  # generate --timeout: the longest a surviving rank may wait in a collective


def worker_pid(torchrun_pid: int, rank: int) -> int:
    """The pid of torchrun's worker of this rank (its child with RANK=rank in its environment)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except (OSError, IndexError):
            continue
        if parent == torchrun_pid and f"RANK={rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} under torchrun {torchrun_pid}")


@pytest.mark.slow
def test_killing_one_of_three_ranks_mid_generate_ends_the_job(tmp_path, smollm2):
    config = tiny_config(vocab=smollm2[1].vocab_size)  # 4 heads: 2, 1, 1 over three ranks
    config.max_position_embeddings = 4096  # room for a generation that outlasts the kill
    random_model(config).save_pretrained(tmp_path)
    smollm2[1].save_pretrained(tmp_path)
    cmd = torchrun_argv(3, ["generate", "--model", str(tmp_path), "--prompt-ids", "1,2,3", "--max-new-tokens",
                            "4000", "--timeout", str(PG_TIMEOUT_S)])
    job = subprocess.Popen(cmd, env=child_env(cpu=True), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, process_group=0)
    try:
        seen = []
        for line in job.stderr:  # rank 0 says when the model is loaded and generation starts
            seen.append(line)
            if "generating 4000 tokens" in line:
                break
        assert job.poll() is None, "".join(seen)
        time.sleep(1.0)
        os.kill(worker_pid(job.pid, 1), signal.SIGKILL)
        killed = time.perf_counter()
        out, err = job.communicate(timeout=PG_TIMEOUT_S + 30)
        took = time.perf_counter() - killed
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0 and took < PG_TIMEOUT_S, (job.returncode, took)
    assert "[TP 3" not in out  # it died mid-generate: no rank finished
    root_cause = err[err.index("Root Cause"):]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "Signal 9 (SIGKILL)" in root_cause, err[-3000:]
