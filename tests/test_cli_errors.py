"""Bad input is refused before any work starts: one `error: ...` line naming the value and the fix,
exit status 2, within seconds, and no model loaded (issue 15, items 1 and 4)."""
import json
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from spd_ref.models import OFFLINE_MODELS, cache_dir, model_config, portable_name
from spd_ref.shards import check_gguf, check_safetensors_folder

GGUF_NAME = OFFLINE_MODELS["smollm2"].gguf_name
SMOLLM2_CONFIG = OFFLINE_MODELS["smollm2"].config

GGUF_SIZE = 98_362_432  # SmolLM2-135M-Instruct.Q4_1.gguf
SECONDS = 30  # per command, importing torch on a loaded 2-core machine included (measured: 2-10 s)

# Runs every case in one interpreter (one torch import), with load_model replaced by a tripwire: a
# command that loads a model before refusing its input fails the test instead of passing slowly.
RUNNER = """
import contextlib, io, json, sys, time
import spd_ref.models
def tripwire(*args, **kwargs):
    raise SystemExit("a model was loaded")
spd_ref.models.load_model = tripwire
from spd_ref.__main__ import main
results = []
for argv in json.loads(sys.argv[1]):
    err, start = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    results.append({"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - start})
print(json.dumps(results))
"""


def truncated_gguf(folder, size: int):
    path = folder / f"first{size}.gguf"
    with open(cache_dir() / GGUF_NAME, "rb") as src:
        path.write_bytes(src.read(size))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A half and a 1 MB GGUF, a folder missing a shard, a plan for TP 3, an empty folder, a file."""
    from spd_ref.plan import Plan, config_signature, save_plan

    tmp = tmp_path_factory.mktemp("bad")
    sharded = tmp / "sharded"
    sharded.mkdir()
    shutil.copy(cache_dir() / "SmolLM2-135M-Instruct" / "config.json", sharded)
    index = {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                            "b.weight": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    (sharded / "model-00001-of-00002.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    signature = config_signature(model_config("smollm2"))
    save_plan(Plan("smollm2", 3, 30, signature, [1.0] * 17, 1.0, [], [], {}), tmp / "plan_tp3")
    (tmp / "empty").mkdir()
    (tmp / "a_file").write_text("not a folder")
    return {"HALF": str(truncated_gguf(tmp, GGUF_SIZE // 2)), "MB": str(truncated_gguf(tmp, 1_000_000)),
            "SHARDED": str(sharded), "PLAN3": str(tmp / "plan_tp3"), "EMPTY": str(tmp / "empty"),
            "FILE": str(tmp / "a_file")}


CASES = {  # id: (argv, what the error line must say); HALF, MB, ... are the files above
    "generate-tokens": ("generate --max-new-tokens 0", "argument --max-new-tokens: 0 is outside the range. "
                                                       "Fix: give an integer of at least 1"),
    "generate-blocks": ("generate --spd-blocks 3-x",
                        "argument --spd-blocks: '3-x' is not a block index or range. Fix: write e.g. 1,3,5-7"),
    "generate-block-range": ("generate --spd-blocks 28-31", "SPD block 30 does not exist: 'smollm2' has blocks 0-29"),
    "generate-tp": ("generate --tp 2", "--tp 2 needs 2 processes but this run has 1"),
    "generate-ids": ("generate --prompt-ids 1,49152", "token 49152 is not in the vocabulary of 'smollm2'"),
    "generate-half-gguf": ("generate --model HALF", f"HALF is truncated or not a GGUF (expected {GGUF_SIZE} bytes, "
                                                    f"found {GGUF_SIZE // 2})"),
    "generate-folder": ("generate --model ./no/such/folder", "model folder './no/such/folder' does not exist. Fix:"),
    "generate-hub": ("generate --model nosuch-org/nosuch-model", "could not load model 'nosuch-org/nosuch-model'"),
    "generate-length": ("generate --max-new-tokens 9000", "--max-new-tokens 9000 does not fit the 8192 positions"),
    "generate-plan": ("generate --plan EMPTY", "no plan.json in 'EMPTY'"),
    "calibrate-ratio": ("calibrate --tp 4 --ratio 1.5 --out EMPTY", "argument --ratio: 1.5 is outside the range. "
                                                                    "Fix: give a number in [0, 1]"),
    "calibrate-heads": ("calibrate --tp 10 --ratio 0.5 --out EMPTY", "--tp 10 does not fit 'smollm2': tp_degree=10 "
                                                                     "cannot split a model with 9 attention heads"),
    "calibrate-missing-gguf": ("calibrate --model EMPTY/none.gguf --tp 3 --ratio 0.5 --out EMPTY",
                               "model file 'EMPTY/none.gguf' does not exist"),
    "calibrate-1mb-gguf": ("calibrate --model MB --tp 3 --ratio 0.5 --out EMPTY",
                           "MB is truncated or not a GGUF (expected at least"),
    "calibrate-shards": ("calibrate --model SHARDED --tp 3 --ratio 0.5 --out EMPTY",
                         "SHARDED is missing 1 of its 2 weight shards (model-00002-of-00002.safetensors"),
    "calibrate-out": ("calibrate --tp 3 --ratio 0.5 --out FILE", "argument --out: 'FILE' is a file, not a folder"),
    "calibrate-tau": ("calibrate --tp 3 --ratio 0.5 --out EMPTY --tau1 0.2 --tau2 0.1",
                      "--tau1 0.2 is above --tau2 0.1"),
    "calibrate-seq-len": ("calibrate --tp 3 --ratio 0.5 --out EMPTY --seq-len 9000",
                          "--seq-len 9000 is longer than the 8192 positions of 'smollm2'"),
    "calibrate-samples": ("calibrate --tp 3 --ratio 0.5 --out EMPTY --samples 0", "argument --samples: 0 is outside"),
    "calibrate-recover-samples": ("calibrate --tp 3 --ratio 0.5 --out EMPTY --recover-samples 4",
                                  "--recover-samples 4 is below --samples 8"),
    "sweep-recover-samples": ("sweep --tp 3 --samples 8 --recover-samples 2", "--recover-samples 2 is below --samples 8"),
    "eval-plan": ("eval --plan EMPTY", "no plan.json in 'EMPTY'"),
    "eval-plan-tp": ("eval --plan PLAN3 --tp 4", "the plan was calibrated for tp_degree=3, not tp_degree=4"),
    "eval-plan-and-blocks": ("eval --plan PLAN3 --spd-blocks 1",
                             "--plan PLAN3 and --spd-blocks both choose SPD blocks"),
    "eval-tasks": ("eval --tasks nosuch", "unknown task 'nosuch'"),
    "eval-limit": ("eval --limit 0", "argument --limit: 0 is outside the range"),
    "eval-hub": ("eval --tasks arc_easy", "tasks arc_easy download their datasets from the Hugging Face hub"),
    "eval-out": ("eval --out EMPTY", "argument --out: 'EMPTY' is a folder. Fix: give a file path"),
    "sweep-tp": ("sweep --tp 4,12", "--tp 12 does not fit 'smollm2'"),
    "sweep-steps": ("sweep --steps 0", "argument --steps: 0 is outside the range"),
    "sweep-report": ("sweep --report --out EMPTY", "--report: no sweep_tp*.jsonl in 'EMPTY'"),
    "demo-tp": ("demo --tp 10", "--tp 10 does not fit 'smollm2'"),
    "demo-ratio": ("demo --ratio -0.1", "argument --ratio: -0.1 is outside the range"),
    "commcost-results": ("commcost --results EMPTY/*.jsonl", "argument --results: 'EMPTY/*.jsonl' matches no file"),
    "commcost-what-if": ("commcost --results results/h100/*.jsonl --what-if 8:maybe",
                         "--what-if item '8:maybe' is not TP:on|off[:BUSBW_GBPS]. Fix: write e.g. 8:off:10"),
    "report-results": ("report EMPTY/none.jsonl", "argument results: 'EMPTY/none.jsonl' matches no file"),
    "report-figure": ("report results/h100/*.jsonl --figure EMPTY", "argument --figure: 'EMPTY' is a folder"),
    "predict-ratios": ("predict --results results/h100/*.jsonl --ratios 0.5,2", "argument --ratios: 2 is outside"),
    "predict-tp": ("predict --results results/h100/*.jsonl --tp x", "argument --tp: 'x' is not an integer"),
    "bench-allreduce": ("bench --allreduce nccl,ring", "argument --allreduce: ring is not an all-reduce kind. "
                                                       "Fix: a comma list of auto, nccl, oneshot"),
    "bench-ratio": ("bench --spd-ratios 0,1.5", "argument --spd-ratios: 1.5 is outside the range"),
    "bench-shape": ("bench --shape llama3", "argument --shape: unknown shape llama3. Fix: one of"),
    "bench-model": ("bench --model EMPTY/none", "--model EMPTY/none is not a folder"),
    "bench-shard-ar": ("bench --shard-of 2 --ar-bench", "--shard-of 2 runs one process with no group"),
    "peer-batch": ("peer --batch 0", "argument --batch: 0 is outside the range"),
    "unknown-command": ("shout", "unknown command 'shout'. Fix: use one of generate, calibrate"),
}


def expand(text: str, files: dict) -> str:
    for name, value in files.items():
        text = text.replace(name, value)
    return text


@pytest.fixture(scope="module")
def outcomes(files):
    argvs = [expand(argv, files).split() for argv, _ in CASES.values()]
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(argvs)], capture_output=True, text=True,
                          cwd=ROOT, timeout=SECONDS * len(CASES))
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(zip(CASES, json.loads(done.stdout.splitlines()[-1])))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line_status_2_within_seconds(case, outcomes, files):
    got, want = outcomes[case], expand(CASES[case][1], files)
    first_line = got["stderr"].strip().splitlines()[0] if got["stderr"].strip() else ""
    assert got["code"] == 2, got
    assert first_line.startswith("error: ") and want in first_line, got["stderr"]
    assert "Traceback" not in got["stderr"] and got["seconds"] < SECONDS, got


def test_a_real_process_exits_2_with_one_line():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "spd_ref", "predict", "--results", "none.jsonl"], cwd=ROOT,
                          capture_output=True, text=True, timeout=SECONDS)
    assert done.returncode == 2 and time.perf_counter() - start < SECONDS
    assert done.stderr == ("error: argument --results: 'none.jsonl' matches no file. Fix: give existing result "
                           "files (JSON lines, e.g. results/h100/*.jsonl)\n")


@pytest.mark.parametrize("size", [0, 3, 100, 1_000_000, GGUF_SIZE // 2, GGUF_SIZE - 1])
def test_truncated_gguf_names_expected_and_found_bytes(tmp_path, size):
    path = truncated_gguf(tmp_path, size)
    found = size if size > 3 else ""  # shorter than the magic: the bytes found are shown instead
    with pytest.raises(ValueError, match=rf"{path} is truncated or not a GGUF \(expected .*found {found}"):
        check_gguf(path)


def test_whole_gguf_and_safetensors_pass_and_a_cut_safetensors_file_does_not(tmp_path):
    check_gguf(cache_dir() / GGUF_NAME)
    folder = cache_dir() / "SmolLM2-135M-Instruct"
    check_safetensors_folder(folder)
    with open(folder / "model.safetensors", "rb") as src:
        (tmp_path / "model.safetensors").write_bytes(src.read(1 << 20))
    with pytest.raises(ValueError, match=r"model.safetensors is truncated or not a safetensors file \(expected "
                                         r"538090408 bytes, found 1048576\)"):
        check_safetensors_folder(tmp_path)


def test_portable_name_is_portable(tmp_path):
    assert portable_name("smollm2") == portable_name(str(cache_dir() / "SmolLM2-135M-Instruct")) == "smollm2"
    assert portable_name("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    (tmp_path / "m.gguf").write_bytes(b"abc")  # sha256 of b"abc" is well known
    assert portable_name(str(tmp_path / "m.gguf")) == \
        "m.gguf@sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_registry_config_is_smollm2s_own():
    """Commands check arguments against SMOLLM2_CONFIG before the first conversion: it must be the real one."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(cache_dir() / "SmolLM2-135M-Instruct")
    assert {k: getattr(config, k) for k in SMOLLM2_CONFIG} == SMOLLM2_CONFIG
