#!/usr/bin/env bash
# The latency sweeps on H100 machines (4 GPUs unless a phase says 2), each phase one call of under
# 10 minutes.
#
#   bash scripts/gpu_sweep.sh a      # TP 4 (P2P on, off) for 7B, 13B, 70B; TP 1 for 7B, 13B
#   bash scripts/gpu_sweep.sh b      # TP 2 (P2P on, off) for 7B, 13B; peer: transformers tp_plan, TP 4, 7B
#   bash scripts/gpu_sweep.sh c      # 7B again at TP 4 (P2P on, off) and TP 1, then TP 2 (on, off) for 7B, 13B
#   bash scripts/gpu_sweep.sh peer   # 7B TP 4 ours beside transformers tp_plan, same machine and call
#   bash scripts/gpu_sweep.sh tune   # 7B TP 4 and 1: torch.compile default against max-autotune
#   bash scripts/gpu_sweep.sh head   # 2 GPUs: split vs replicated lm_head, compile mode; TP 2, 1 and a TP-4 shard
#   bash scripts/gpu_sweep.sh d      # 2 GPUs, current defaults: 7B TP 2 (on, off), TP 1, TP-4 shard floor
#   bash scripts/gpu_sweep.sh e      # 4 GPUs, current defaults: 7B TP 4 (on, off), TP 1, the peer (issue 5's TP 4 check)
#   bash scripts/gpu_sweep.sh h2a    # 2 H200s: 7B TP 2 nccl vs oneshot beside the minimal loop
#   bash scripts/gpu_sweep.sh h2b    # 2 H200s: 7B TP 2 (nccl, oneshot; P2P off), TP 1, the peer at TP 2
#   bash scripts/gpu_sweep.sh h2c    # 2 H200s: GPU equality check (nccl, oneshot), 7B cache 2048, 13B TP 2 and TP 1
#   bash scripts/gpu_sweep.sh h2d    # 2 H200s: where a TP-2 shard's time goes; attention and inductor settings; TP 2 with the best
#   bash scripts/gpu_sweep.sh h2e    # 2 H200s: compile settings (GEMVs as matmuls or reductions); TP 2 and TP 1 with the best
#   bash scripts/gpu_sweep.sh h2f    # 2 H200s: the record again with slowest-rank floors (h2b, then 13B)
#   bash scripts/gpu_sweep.sh h2g    # 2 H200s: the decode GEMVs as a Triton kernel (microbenchmark, TP 2, floors, check)
#   bash scripts/gpu_sweep.sh h2h    # 2 H200s: the record with --compile-mode auto, TP 2 with the Triton GEMV, check, TP 1
#   bash scripts/gpu_sweep.sh h2i    # 2 H200s: the equality check with the Triton GEMV; batch-1 record again, TP 1
#   bash scripts/gpu_sweep.sh h2j    # 2 H200s: the batch-1 floor under max-autotune, auto and default
#   bash scripts/gpu_sweep.sh h2k    # 2 H200s: the record in one call (auto compile), TP 1
#   bash scripts/gpu_sweep.sh h2m    # 2 H200s: the record with --attention auto (the default), sdpa beside it, TP 1
#   bash scripts/gpu_sweep.sh h1a    # 1 H200: the split-KV attention kernel (microbenchmark, TP-2 shard floors, check)
#   bash scripts/gpu_sweep.sh h1b    # 1 H200: the kernel's new setting and --attention auto; floors alternated
#   bash scripts/gpu_sweep.sh h1c    # 1 H200: floors with sdpa and auto alternated, ctx 2048 and 512, batch 1
#   bash scripts/gpu_sweep.sh h1d    # 1 H200: RMSNorm as its own Triton kernel (profiles, floors alternated, check)
#   bash scripts/gpu_sweep.sh h1e    # 1 H200: the RMSNorm kernel read once, warps timed; profile; floors alternated
#   bash scripts/gpu_sweep.sh h1f    # 1 H200: more batch-1 floor pairs, --norm torch / triton, order alternated
#   bash scripts/gpu_sweep.sh h1g    # 1 H200: the batch-1 floor compiled with an empty inductor cache each time, then with one shared
#   bash scripts/gpu_sweep.sh smoke  # ~3 minutes: every code path on 2 GPUs with 2-layer shapes
#
# Each phase writes $OUT/sweep_PHASE.jsonl (one row per measurement, results/README.md), the full
# log $OUT/sweep_PHASE.log and two PNGs, and prints a short table last (scripts/sweep_summary.py).
# OUT defaults to results/gpu. Every step runs under `spd_ref.launch --timeout`, inside a phase
# budget (BUDGET_S, default 560 s): a step that would start with under 30 s left is skipped and
# named at the end; rows are written as they are measured, so a step cut short keeps its rows.
# If the first step of a phase fails without writing a row, the phase stops there (a code bug,
# not worth the device time of the rest).
#
# Phases a, b, c, peer and tune (results/h100) ran before bench's defaults became --compile-mode
# max-autotune-no-cudagraphs and --lm-head split: to repeat them as they ran, use
# BENCH_EXTRA="--compile-mode default --lm-head replicated" (tune sets its compile modes itself).
# BENCH_EXTRA adds bench flags to every bench step (e.g. BENCH_EXTRA=--eager if compiling fails there).
# NCCL settings of the machine are left alone (NVLink multicast stays off); `--p2p off` only sets
# NCCL_P2P_DISABLE=1 for that step.
set -uo pipefail
cd "$(dirname "$0")/.."

PHASE=${1:-a}
OUT=${OUT:-results/gpu}
BUDGET_S=${BUDGET_S:-560}
mkdir -p "$OUT"
JSONL="$OUT/sweep_$PHASE.jsonl"
LOG="$OUT/sweep_$PHASE.log"
: > "$JSONL"
exec > >(tee -a "$LOG") 2>&1

export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Inductor's cache in the checkout (an ignored folder): the P2P-off step reuses the P2P-on step's
# compiled kernels, and a warm machine keeps them for the next phase.
export TORCHINDUCTOR_CACHE_DIR="$PWD/.cache/inductor"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The measurement itself (DESIGN.md performance protocol): ctx 512, batch 1 and 16, prompts 128 and
# 2048, five SPD ratios plus the no-comm floor, compiled blocks + CUDA graphs.
BENCH=(bench --ctx 512 --batch 1,16 --prompt-lens 128,2048 --spd-ratios 0,0.25,0.5,0.75,1
       --prefill-ratios 0,1 --no-comm --repeats 100 --warmup 10 --prefill-repeats 3
       --out "$JSONL" --tag "sweep-$PHASE" ${BENCH_EXTRA:-})
# The 7B sweep with bench's current defaults (max-autotune, split lm_head), prompts of 128 only
# (phases d and e: they must fit one call with max-autotune's longer compiles).
CUR=("${BENCH[@]}" --shape llama2-7b --prompt-lens 128)
PEER_DIR=${PEER_DIR:-/tmp/spd_ref_peer_llama2-7b}
# PYTHON: the interpreter (python3 there; this repo's .venv/bin/python to try the smoke phase on a CPU).
PYTHON=${PYTHON:-python3}

STATUS=()
FIRST=1
rows() { [[ -f "$JSONL" ]] && wc -l < "$JSONL" || echo 0; }

# step NAME MAX_SECONDS ARGS...: "$PYTHON" -m spd_ref.launch --timeout LIMIT ARGS...
step() {
  local name=$1 max=$2; shift 2
  local left=$(( BUDGET_S - SECONDS ))
  if (( left < 30 )); then
    echo "=== $name: SKIPPED, ${left} s left of the ${BUDGET_S} s budget"
    STATUS+=("$name: skipped (budget)"); return 0
  fi
  local limit=$(( max < left ? max : left )) before t0 rc
  before=$(rows); t0=$SECONDS
  echo "=== $name: start at ${SECONDS} s, limit ${limit} s"
  "$PYTHON" -m spd_ref.launch --timeout "$limit" "$@"
  rc=$?
  echo "=== $name: rc=$rc, $(( SECONDS - t0 )) s, $(( $(rows) - before )) rows"
  STATUS+=("$name: rc=$rc, $(( SECONDS - t0 )) s, $(( $(rows) - before )) rows")
  if (( FIRST && rc != 0 && $(rows) == before )); then
    echo "=== the first step failed without a row: stopping phase $PHASE (fix, then resend)"
    finish; exit 1
  fi
  FIRST=0
}

# raw NAME MAX_SECONDS CMD...: a command that is not a spd_ref.launch step (the minimal loop, the
# profiler), under the same budget; its rows go where the command writes them.
raw() {
  local name=$1 max=$2; shift 2
  local left=$(( BUDGET_S - SECONDS ))
  if (( left < 30 )); then
    echo "=== $name: SKIPPED, ${left} s left"; STATUS+=("$name: skipped (budget)"); return 0
  fi
  local limit=$(( max < left ? max : left )) t0=$SECONDS rc
  echo "=== $name: start at ${SECONDS} s, limit ${limit} s"
  timeout "$limit" "$@"; rc=$?
  echo "=== $name: rc=$rc, $(( SECONDS - t0 )) s"
  STATUS+=("$name: rc=$rc, $(( SECONDS - t0 )) s")
}

# peer NPROC CHECKPOINT_S STEP_S BATCHES: transformers' tp_plan on the 7B shape (checkpoint made once).
peer() {
  local nproc=$1 ckpt_s=$2 step_s=$3 batches=$4
  echo "=== peer checkpoint: $PEER_DIR"
  timeout "$ckpt_s" "$PYTHON" -m spd_ref.latency.peer --make-checkpoint --shape llama2-7b --checkpoint "$PEER_DIR"
  step "peer-tp$nproc" "$step_s" --nproc "$nproc" --p2p on --module spd_ref.latency.peer --shape llama2-7b \
    --checkpoint "$PEER_DIR" --batch "$batches" --ctx 512 --compile try --compile-batches 1 --repeats 50 --warmup 5 \
    --out "$JSONL" --tag "sweep-$PHASE"
}

# two NAME MAX_SECONDS "CMD ON GPU 0" "CMD ON GPU 1": two one-GPU commands side by side (each a
# string of words: `env K=V ... python3 ...`), under the phase budget; each writes where it says.
two() {
  local name=$1 max=$2 left=$(( BUDGET_S - SECONDS ))
  if (( left < 30 )); then
    echo "=== $name: SKIPPED, ${left} s left"; STATUS+=("$name: skipped (budget)"); return 0
  fi
  local limit=$(( max < left ? max : left )) t0=$SECONDS rc0 rc1
  echo "=== $name: start at ${SECONDS} s, limit ${limit} s"
  CUDA_VISIBLE_DEVICES=0 timeout "$limit" $3 & local p0=$!
  CUDA_VISIBLE_DEVICES=1 timeout "$limit" $4 & local p1=$!
  wait $p0; rc0=$?; wait $p1; rc1=$?
  echo "=== $name: rc=$rc0,$rc1, $(( SECONDS - t0 )) s"
  STATUS+=("$name: rc=$rc0,$rc1, $(( SECONDS - t0 )) s")
}

finish() {
  echo; echo "=== phase $PHASE steps (${SECONDS} s in all):"; printf '  %s\n' "${STATUS[@]}"
  "$PYTHON" -m spd_ref.latency.plots "$JSONL" || true
  "$PYTHON" -m spd_ref commcost --results "$JSONL" > "$OUT/commcost_$PHASE.txt" 2>&1 || true
  echo; "$PYTHON" scripts/sweep_summary.py "$JSONL"
}

echo "=== sweep phase $PHASE on $(hostname) at $(date -u +%FT%TZ), budget ${BUDGET_S} s"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null || true
nvidia-smi topo -m 2>/dev/null | head -8 || true
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else None, 'transformers', transformers.__version__, 'gpus', torch.cuda.device_count())"
env | grep -E '^NCCL_|^TORCH_SYMM|^NVSHMEM' | sort || true

case "$PHASE" in
  a)
    step tp4-p2p-on 300 --nproc 4 --p2p on "${BENCH[@]}" --shape llama2-7b,llama2-13b,llama2-70b --ar-bench
    step tp1 150 --nproc 1 "${BENCH[@]}" --shape llama2-7b,llama2-13b
    step tp4-p2p-off 300 --nproc 4 --p2p off "${BENCH[@]}" --shape llama2-7b,llama2-13b,llama2-70b --ar-bench
    ;;
  b)
    step tp2-p2p-on 240 --nproc 2 --p2p on "${BENCH[@]}" --shape llama2-7b,llama2-13b --ar-bench
    step tp2-p2p-off 200 --nproc 2 --p2p off "${BENCH[@]}" --shape llama2-7b,llama2-13b --ar-bench
    peer 4 300 240 1,16
    ;;
  c)
    # After fusing q/k/v and gate/up (one matmul each): 7B again at TP 4 and 1, then TP 2 for 7B and 13B.
    step tp4-p2p-on-7b 150 --nproc 4 --p2p on "${BENCH[@]}" --shape llama2-7b --ar-bench
    step tp1-7b 100 --nproc 1 "${BENCH[@]}" --shape llama2-7b
    step tp4-p2p-off-7b 150 --nproc 4 --p2p off "${BENCH[@]}" --shape llama2-7b
    step tp2-p2p-on 200 --nproc 2 --p2p on "${BENCH[@]}" --shape llama2-7b,llama2-13b --ar-bench
    step tp2-p2p-off 200 --nproc 2 --p2p off "${BENCH[@]}" --shape llama2-7b,llama2-13b --ar-bench
    ;;
  peer)
    step tp4-p2p-on-7b-b1 100 --nproc 4 --p2p on "${BENCH[@]}" --shape llama2-7b --batch 1,16 --prompt-lens 128 \
      --spd-ratios 0,1
    peer 4 300 240 1,16
    ;;
  tune)
    # One experiment: inductor's max-autotune (Triton GEMM templates, fused epilogues) against the
    # default compile, 7B at TP 4 and TP 1, batch 1, in one call on one machine.
    T=(bench --ctx 512 --batch 1 --prompt-lens 128 --spd-ratios 0,1 --prefill-ratios 0 --no-comm
       --repeats 100 --warmup 10 --prefill-repeats 2 --shape llama2-7b --out "$JSONL")
    step tp4-default 120 --nproc 4 --p2p on "${T[@]}" --compile-mode default --tag tune-default
    step tp4-autotune 220 --nproc 4 --p2p on "${T[@]}" --compile-mode max-autotune-no-cudagraphs --tag tune-max-autotune
    step tp1-default 80 --nproc 1 "${T[@]}" --compile-mode default --tag tune-default
    step tp1-autotune 160 --nproc 1 "${T[@]}" --compile-mode max-autotune-no-cudagraphs --tag tune-max-autotune
    ;;
  head)
    # Two GPUs: the split (vocab-parallel) lm_head against the replicated one, and the compile mode,
    # at TP 2 over NVLink (baseline, SPD 100%, floor) and on the per-GPU work of TP 4 (--shard-of 4:
    # rank 0's shard of the TP-4 model, no communication) and TP 1. 7B, batch 1, ctx 512.
    T=(bench --ctx 512 --batch 1 --prompt-lens none --spd-ratios 0,1 --no-comm --repeats 200 --warmup 20
       --shape llama2-7b --out "$JSONL" --tag head)
    A=(--compile-mode max-autotune-no-cudagraphs)
    step tp2-replicated 120 --nproc 2 --p2p on "${T[@]}" --lm-head replicated
    step tp2-split 120 --nproc 2 --p2p on "${T[@]}" --lm-head split
    step tp2-split-autotune 150 --nproc 2 --p2p on "${T[@]}" --lm-head split "${A[@]}"
    step shard4-split-autotune 90 --nproc 1 "${T[@]}" --shard-of 4 --lm-head split "${A[@]}"
    step shard4-replicated-autotune 90 --nproc 1 "${T[@]}" --shard-of 4 --lm-head replicated "${A[@]}"
    step tp1-autotune 90 --nproc 1 "${T[@]}" "${A[@]}"
    step tp2-replicated-autotune 120 --nproc 2 --p2p on "${T[@]}" --lm-head replicated "${A[@]}"
    ;;
  d)
    # Two GPUs, bench's current defaults (max-autotune, split lm_head): 7B at TP 2 (P2P on, off) with
    # the all-reduce microbenchmark, TP 1, and the TP-4 floor on one GPU (--shard-of 4), batch 1, 16.
    step tp2-p2p-on 200 --nproc 2 --p2p on "${CUR[@]}" --ar-bench
    step tp2-p2p-off 150 --nproc 2 --p2p off "${CUR[@]}" --ar-bench
    step tp1 100 --nproc 1 "${CUR[@]}"
    step shard4 100 --nproc 1 "${CUR[@]}" --shard-of 4
    ;;
  e)
    # Four GPUs, bench's current defaults: 7B at TP 4 (P2P on, off) with the all-reduce
    # microbenchmark, TP 1, then the peer (transformers tp_plan) at TP 4 in the same call. This is
    # the run that checks issue 5's TP 4 target with the current code.
    step tp4-p2p-on 200 --nproc 4 --p2p on "${CUR[@]}" --ar-bench
    step tp4-p2p-off 120 --nproc 4 --p2p off "${CUR[@]}"
    step tp1 90 --nproc 1 "${CUR[@]}"
    peer 4 240 150 1
    ;;
  h2a)
    # Two H200s (issue 11, first look): 7B TP 2 batch 1, floor / baseline / SPD 100% with each sync
    # all-reduce (nccl, oneshot), beside the minimal loop (scripts/minimal_loop.py) in the same call.
    # (Its first run also tried the whole step compiled as one graph: about 80 s per SPD pattern, cut
    # at the step's time limit before a row; that option is gone, results/h200_x2/README.md.)
    H=(bench --ctx 512 --batch 1 --prompt-lens none --spd-ratios 0,1 --no-comm --repeats 200 --warmup 20
       --shape llama2-7b --allreduce nccl,oneshot --out "$JSONL" --tag h2a)
    step tp2 130 --nproc 2 --p2p on "${H[@]}" --ar-bench --ar-sizes 8K,16K,128K,1M
    raw min-tp2 200 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 scripts/minimal_loop.py \
      --allreduce nccl,oneshot --out "$OUT/minimal_$PHASE.jsonl"
    ;;
  h2b)
    # Two H200s, issue 11's record, part 1: 7B at TP 2 NVLink (nccl and oneshot; batch 1, 16; SPD
    # 0..100%; floor; all-reduce microbenchmark), TP 1, P2P off (nccl), then the peer (transformers
    # tp_plan) at TP 2 in the same call.
    R=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --out "$JSONL"
       --tag h2b)
    step tp2-on 260 --nproc 2 --p2p on "${R[@]}" --batch 1,16 --spd-ratios 0,0.25,0.5,0.75,1 \
      --allreduce nccl,oneshot --ar-bench
    step tp1 70 --nproc 1 "${R[@]}" --batch 1,16
    step tp2-off 80 --nproc 2 --p2p off "${R[@]}" --batch 1 --spd-ratios 0,0.5,1 --ar-bench --ar-sizes 8K,16K,128K,1M
    peer 2 100 130 1
    ;;
  h2c)
    # Two H200s, issue 11's record, part 2: the GPU equality check (nccl and oneshot), 7B with 2048
    # cached tokens, and 13B at TP 2 (nccl, oneshot) and TP 1.
    R=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --batch 1 --spd-ratios 0,1 --out "$JSONL"
       --tag h2c)
    raw gpu-check 120 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 scripts/gpu_check.py \
      --layers 4 --out "$OUT/gpu_check_tp2.json"
    step tp2-7b-ctx2048 100 --nproc 2 --p2p on "${R[@]}" --shape llama2-7b --ctx 2048 --allreduce nccl,oneshot
    step tp2-13b 120 --nproc 2 --p2p on "${R[@]}" --shape llama2-13b --ctx 512 --allreduce nccl,oneshot
    step tp1-13b 60 --nproc 1 "${R[@]}" --shape llama2-13b --ctx 512
    ;;
  h2d)
    # Two H200s (issue 11, the compute between the sync points): the kernels of a TP-2 shard's decode
    # step (profiler, 8 layers, attention sdpa | math), then the TP-2 shard floor (32 layers, one GPU
    # each, side by side) for attention sdpa | math, without and with inductor's coordinate-descent
    # tuning; then TP 2 on both GPUs (nccl, oneshot; SPD 0, 1; floor; batch 1, 16) with the fastest
    # floor's setting, and with the default setting too when that is not it (same call).
    P="$PYTHON scripts/profile_decode.py --shard-of 2 --layers 8"
    two profile 150 "$P --attention sdpa --out $OUT/profile_h2d_sdpa.txt" "$P --attention math --out $OUT/profile_h2d_math.txt"
    F="$PYTHON -m spd_ref bench --shard-of 2 --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1,16 --tag h2d-floor"
    CDT="env TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1"
    two floor 150 "$F --attention sdpa --out $OUT/h2d_g0.jsonl" "$F --attention math --out $OUT/h2d_g1.jsonl"
    two floor-cdt 200 "$CDT $F --attention sdpa --out $OUT/h2d_g0.jsonl" "$CDT $F --attention math --out $OUT/h2d_g1.jsonl"
    cat "$OUT"/h2d_g*.jsonl >> "$JSONL" 2>/dev/null; rm -f "$OUT"/h2d_g*.jsonl
    read -r ATT _ TUNE < <("$PYTHON" scripts/sweep_summary.py --best-floor "$JSONL" || echo "sdpa - 0")
    echo "=== fastest TP-2 shard floor at batch 1: attention $ATT, coordinate-descent tuning $TUNE"
    T=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1,16
       --spd-ratios 0,1 --allreduce nccl,oneshot --out "$JSONL" --tag h2d)
    TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=$TUNE step "tp2-$ATT-cdt$TUNE" 200 --nproc 2 --p2p on "${T[@]}" --attention "$ATT"
    if [[ "$ATT $TUNE" != "sdpa 0" ]]; then
      step tp2-sdpa-cdt0 200 --nproc 2 --p2p on "${T[@]}" --attention sdpa
    fi
    ;;
  h2e)
    # Two H200s (issue 11): the profile of h2d showed every decode GEMV compiled as an inductor
    # reduction kernel (max-autotune turns on coordinate-descent tuning, which rewrites one-row
    # matmuls) at 2.2-3.6 TB/s. Here: the TP-2 shard floor (and its kernels) with the GEMVs kept as
    # matmuls (max-autotune-no-cdt: autotuned cuBLAS / Triton templates) and with plain 'default',
    # each setting on both GPUs; then the whole TP-2 record (nccl, oneshot; SPD 0..100%; floor;
    # batch 1, 16) with the fastest setting, the current default beside it, and TP 1.
    P="$PYTHON scripts/profile_decode.py --shard-of 2 --layers 8"
    two profile 150 "$P --compile-mode max-autotune-no-cdt --out $OUT/profile_h2e_nocdt.txt" \
      "$P --compile-mode default --out $OUT/profile_h2e_default.txt"
    F="$PYTHON -m spd_ref bench --shard-of 2 --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1,16 --tag h2e-floor"
    two floor-a 150 "$F --compile-mode max-autotune-no-cdt --out $OUT/h2e_g0.jsonl" "$F --compile-mode default --out $OUT/h2e_g1.jsonl"
    two floor-b 150 "$F --compile-mode max-autotune-no-cudagraphs --out $OUT/h2e_g0.jsonl" \
      "$F --compile-mode max-autotune-no-cdt --out $OUT/h2e_g1.jsonl"
    cat "$OUT"/h2e_g*.jsonl >> "$JSONL" 2>/dev/null; rm -f "$OUT"/h2e_g*.jsonl
    read -r _ MODE _ < <("$PYTHON" scripts/sweep_summary.py --best-floor "$JSONL" || echo "- max-autotune-no-cudagraphs -")
    echo "=== fastest TP-2 shard floor at batch 1: compile mode $MODE"
    T=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1,16
       --allreduce nccl,oneshot --out "$JSONL" --tag h2e)
    step "tp2-$MODE" 230 --nproc 2 --p2p on "${T[@]}" --spd-ratios 0,0.25,0.5,0.75,1 --compile-mode "$MODE"
    if [[ "$MODE" != max-autotune-no-cudagraphs ]]; then
      step tp2-max-autotune-no-cudagraphs 130 --nproc 2 --p2p on "${T[@]}" --spd-ratios 0,1
    fi
    step "tp1-$MODE" 70 --nproc 1 bench --prompt-lens none --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 \
      --batch 1,16 --out "$JSONL" --tag h2e --compile-mode "$MODE"
    ;;
  h2f)
    # Two H200s, issue 11's record again with the floor of the slowest rank (h2e found the ranks'
    # floors 4-9% apart): h2b's steps, then 13B at TP 2 and 1. (This call also compiled the first
    # decode step rank by rank, to make both ranks pick the same tuned kernels: the ranks' floors
    # stayed apart and the slower compile cut three steps short, so that was taken out again.)
    R=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --ctx 512 --out "$JSONL" --tag h2f)
    step tp2-on 240 --nproc 2 --p2p on "${R[@]}" --shape llama2-7b --batch 1,16 --spd-ratios 0,0.25,0.5,0.75,1 \
      --allreduce nccl,oneshot --ar-bench
    step tp1 70 --nproc 1 "${R[@]}" --shape llama2-7b --batch 1,16
    step tp2-off 80 --nproc 2 --p2p off "${R[@]}" --shape llama2-7b --batch 1 --spd-ratios 0,0.5,1
    peer 2 100 110 1
    step tp2-13b 120 --nproc 2 --p2p on "${R[@]}" --shape llama2-13b --batch 1 --spd-ratios 0,1 --allreduce nccl,oneshot
    step tp1-13b 60 --nproc 1 "${R[@]}" --shape llama2-13b --batch 1
    ;;
  h2g)
    # Two H200s (issue 11): the decode GEMVs as spd_ref's Triton kernel (spd_ref.kernels.gemv). The
    # GEMV microbenchmark (GPU 0: cuBLAS and every kernel candidate on the 7B TP-2, 7B TP-1 and 13B
    # TP-2 shapes; GPU 1: inductor's max-autotune beside cuBLAS on 7B TP 2), then TP 2 with the kernel
    # (nccl, oneshot; SPD 0, 1; floor; batch 1, 16), the TP-2 shard floor with --linear torch | triton
    # side by side, TP 2 with torch's GEMVs again (same call), and the GPU equality check with the kernel.
    G="$PYTHON scripts/gemv_bench.py --repeats 20"
    two gemv 150 "$G --no-inductor --shapes llama2-7b:2,llama2-7b:1,llama2-13b:2 --out $OUT/gemv_g0.jsonl" \
      "$G --no-configs --shapes llama2-7b:2 --out $OUT/gemv_g1.jsonl"
    cat "$OUT"/gemv_g*.jsonl > "$OUT/gemv_$PHASE.jsonl"; rm -f "$OUT"/gemv_g*.jsonl
    T=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1,16
       --spd-ratios 0,1 --allreduce nccl,oneshot --out "$JSONL" --tag h2g)
    step tp2-triton 200 --nproc 2 --p2p on "${T[@]}" --linear triton
    F="$PYTHON -m spd_ref bench --shard-of 2 --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1,16 --tag h2g-floor"
    two floor 130 "$F --linear torch --out $OUT/h2g_g0.jsonl" "$F --linear triton --out $OUT/h2g_g1.jsonl"
    cat "$OUT"/h2g_g*.jsonl >> "$JSONL" 2>/dev/null; rm -f "$OUT"/h2g_g*.jsonl
    step tp2-torch 150 --nproc 2 --p2p on "${T[@]}" --linear torch
    raw gpu-check 120 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 scripts/gpu_check.py \
      --layers 4 --out "$OUT/gpu_check_$PHASE.json"
    ;;
  h2h)
    # Two H200s (issue 11): the record with --compile-mode auto (max-autotune at batch 1, default at 16):
    # 7B TP 2 (nccl, oneshot; SPD 0..100%; floor; batch 1, 16), TP 2 with the Triton GEMV (--linear
    # triton; SPD 0, 1; floor), the GPU equality check (with the Triton GEMV), TP 1.
    R=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1,16
       --out "$JSONL" --tag h2h)
    step tp2-auto 250 --nproc 2 --p2p on "${R[@]}" --spd-ratios 0,0.25,0.5,0.75,1 --allreduce nccl,oneshot
    step tp2-triton 150 --nproc 2 --p2p on "${R[@]}" --spd-ratios 0,1 --allreduce oneshot --linear triton
    raw gpu-check 100 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 scripts/gpu_check.py \
      --layers 4 --out "$OUT/gpu_check_$PHASE.json"
    step tp1 70 --nproc 1 "${R[@]}"
    ;;
  h2i)
    # Two H200s (issue 11): the GPU equality check with the Triton GEMV (h2h cut it at 100 s), then a
    # second launch of h2h's batch-1 record (its floor: one rank's max-autotune compile ran 5.24 ms
    # against the other's 2.79, which the consistency check flagged) and TP 1.
    raw gpu-check 250 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 scripts/gpu_check.py \
      --layers 4 --out "$OUT/gpu_check_$PHASE.json"
    R=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1
       --out "$JSONL" --tag h2i)
    step tp2 150 --nproc 2 --p2p on "${R[@]}" --spd-ratios 0,0.5,1 --allreduce nccl,oneshot
    step tp1 60 --nproc 1 "${R[@]}"
    ;;
  h2j)
    # Two H200s (issue 11): h2h and h2i (one machine) measured rank 0's batch-1 floor at 5.2-5.4 ms under
    # --compile-mode auto; here the same TP-2 batch-1 rows (oneshot; SPD 0, 1; floor) under max-autotune,
    # auto and default, in that order, on one machine.
    R=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1
       --spd-ratios 0,1 --allreduce oneshot --out "$JSONL" --tag h2j)
    step tp2-max-autotune 150 --nproc 2 --p2p on "${R[@]}" --compile-mode max-autotune-no-cudagraphs
    step tp2-auto 150 --nproc 2 --p2p on "${R[@]}" --compile-mode auto
    step tp2-default 100 --nproc 2 --p2p on "${R[@]}" --compile-mode default
    ;;
  h2k)
    # Two H200s (issue 11): the record in one call with --compile-mode auto: 7B TP 2 (nccl, oneshot; SPD
    # 0, 0.5, 1; floor; batch 1, 16) and TP 1 at batch 1.
    R=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --out "$JSONL"
       --tag h2k)
    step tp2 230 --nproc 2 --p2p on "${R[@]}" --batch 1,16 --spd-ratios 0,0.5,1 --allreduce nccl,oneshot
    step tp1 60 --nproc 1 "${R[@]}" --batch 1
    ;;
  h2m)
    # Two H200s (issue 11): the record in one call with the split-KV attention kernel at batch 1
    # (--attention auto, the default since h1b/h1c): 7B TP 2 (nccl, oneshot; SPD 0, 0.5, 1; floor; batch
    # 1, 16), then batch 1 with --attention sdpa (SPD 0, 1; floor) in the same call, and TP 1 with each.
    R=(bench --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --out "$JSONL"
       --tag h2m)
    step tp2-auto 230 --nproc 2 --p2p on "${R[@]}" --batch 1,16 --spd-ratios 0,0.5,1 --allreduce nccl,oneshot
    step tp2-sdpa 130 --nproc 2 --p2p on "${R[@]}" --batch 1 --spd-ratios 0,1 --allreduce nccl,oneshot --attention sdpa
    step tp1-auto 60 --nproc 1 "${R[@]}" --batch 1
    step tp1-sdpa 60 --nproc 1 "${R[@]}" --batch 1 --attention sdpa
    ;;
  h1d)
    # One H200 (issue 11): RMSNorm as spd_ref.kernels.rmsnorm's Triton kernel, which inductor cannot fold
    # into the GEMV after it (the fused norm + gate/up kernel took 28.1 us a layer where the GEMV alone took
    # 23.1). Kernel profiles of the 7B TP-2 shard (8 layers) with --norm torch and triton; the TP-2 shard
    # floor (batch 1, 16; ctx 512) with torch and triton alternated three times (each floor is its own
    # max-autotune compile); the GPU equality check of the kernels at TP 1.
    for norm in torch triton; do
      raw "profile-$norm" 90 "$PYTHON" scripts/profile_decode.py --shard-of 2 --layers 8 --norm "$norm" \
        --out "$OUT/profile_${PHASE}_$norm.txt"
    done
    F="$PYTHON -m spd_ref bench --shard-of 2 --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --out $JSONL --tag h1d-floor"
    for i in 1 2 3; do
      raw "floor-torch-$i" 60 $F --ctx 512 --batch 1,16 --norm torch
      raw "floor-triton-$i" 60 $F --ctx 512 --batch 1,16 --norm triton
    done
    raw gpu-check 150 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 scripts/gpu_check.py \
      --layers 4 --kernels-only --out "$OUT/gpu_check_$PHASE.json"
    ;;
  h1e)
    # One H200 (issue 11): h1d's profile put the norm kernel at 2.9 us (two passes, 4 warps), eating most
    # of the 5 us a layer its GEMVs gained, and its floors were within compile-to-compile noise. The kernel
    # now reads a row once. The norm microbenchmark (every warp setting), the profile with --norm triton,
    # then the batch-1 TP-2 shard floor (ctx 512) with torch and triton alternated four times.
    raw norm 90 "$PYTHON" scripts/norm_bench.py --out "$OUT/norm_$PHASE.jsonl"
    raw profile-triton 90 "$PYTHON" scripts/profile_decode.py --shard-of 2 --layers 8 --norm triton \
      --out "$OUT/profile_${PHASE}_triton.txt"
    F="$PYTHON -m spd_ref bench --shard-of 2 --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --out $JSONL --tag h1e-floor"
    for i in 1 2 3 4; do
      raw "floor-torch-$i" 50 $F --ctx 512 --batch 1 --norm torch
      raw "floor-triton-$i" 50 $F --ctx 512 --batch 1 --norm triton
    done
    ;;
  h1f)
    # One H200 (issue 11): h1d and h1e's floor pairs (torch / triton norm) split 5 to 2 for the kernel,
    # within the compile-to-compile spread. More pairs, batch 1, ctx 512, the order swapped every pair.
    F="$PYTHON -m spd_ref bench --shard-of 2 --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --out $JSONL --tag h1f-floor"
    for i in 1 2 3 4 5 6 7; do
      first=torch second=triton
      (( i % 2 == 0 )) && first=triton second=torch
      raw "floor-$first-$i" 45 $F --ctx 512 --batch 1 --norm $first
      raw "floor-$second-$i" 45 $F --ctx 512 --batch 1 --norm $second
    done
    ;;
  h1g)
    # One H200 (issue 11): in h1f, on the machine h1e had used (its inductor cache in .cache/inductor),
    # seven compiles of each kind reproduced h1e's last floor to 0.004 ms, where compiles had spread by
    # 0.1-0.3 ms before. Is the spread max-autotune choosing anew, and does a warm cache fix it? The
    # batch-1 TP-2 shard floor (ctx 512) three times, each compile with an empty cache of its own, then
    # three times sharing one new cache.
    F="$PYTHON -m spd_ref bench --shard-of 2 --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1 --out $JSONL"
    for i in 1 2 3; do
      TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" raw "floor-cold-$i" 60 $F --tag h1g-cold-$i
    done
    shared="$(mktemp -d)"
    for i in 1 2 3; do
      TORCHINDUCTOR_CACHE_DIR="$shared" raw "floor-shared-$i" 60 $F --tag h1g-shared-$i
    done
    ;;
  h1a)
    # One H200 (issue 11): decode attention as spd_ref's split-KV Triton kernel (spd_ref.kernels.splitkv).
    # The 7B TP-2 shard floor (batch 1, 16; ctx 512) with --attention triton, then sdpa; the attention
    # microbenchmark (sdpa, compiled math and flex, the kernel eager, compiled and in every candidate
    # setting; 7B TP-2 shard; batch 1, 16; ctx 512, 2048); the GPU equality check at TP 1; both floors
    # again if time is left (each floor is its own max-autotune compile).
    F="$PYTHON -m spd_ref bench --shard-of 2 --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --ctx 512 --batch 1,16 --out $JSONL --tag h1a-floor"
    raw floor-triton 100 $F --attention triton
    raw floor-sdpa 100 $F --attention sdpa
    raw attention 150 "$PYTHON" scripts/attention_bench.py --shapes llama2-7b:2 --repeats 20 --out "$OUT/attention_$PHASE.jsonl"
    raw gpu-check 120 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 scripts/gpu_check.py \
      --layers 4 --out "$OUT/gpu_check_$PHASE.json"
    raw floor-triton-again 60 $F --attention triton
    raw floor-sdpa-again 60 $F --attention sdpa
    ;;
  h1b)
    # One H200 (issue 11): h1a found the split-KV kernel's first setting slow and (16, 1024, 2, 2) the
    # fastest at batch 1, and sdpa faster at batch 16 in every setting. Here, with that setting first and
    # --attention auto (the kernel at one row, sdpa otherwise): the attention microbenchmark at batch 1
    # (new candidates), then the 7B TP-2 shard floor (batch 1, 16; ctx 512) with sdpa and auto alternated
    # twice (each floor is its own max-autotune compile, and h1a's sdpa floors ranged 2.64-2.81 ms), then
    # both at ctx 2048, batch 1.
    raw attention 90 "$PYTHON" scripts/attention_bench.py --shapes llama2-7b:2 --batch 1 --repeats 20 \
      --out "$OUT/attention_$PHASE.jsonl"
    F="$PYTHON -m spd_ref bench --shard-of 2 --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --out $JSONL --tag h1b-floor"
    for i in 1 2; do
      raw "floor-sdpa-$i" 60 $F --ctx 512 --batch 1,16 --attention sdpa
      raw "floor-auto-$i" 60 $F --ctx 512 --batch 1,16 --attention auto
    done
    raw floor-sdpa-2048 60 $F --ctx 2048 --batch 1 --attention sdpa
    raw floor-auto-2048 60 $F --ctx 2048 --batch 1 --attention auto
    ;;
  h1c)
    # One H200 (issue 11): h1b's one ctx-2048 pair had auto 0.03 ms slower than sdpa although the kernel
    # alone was 3.8 us a layer faster; here the 7B TP-2 shard floor at batch 1, sdpa and auto alternated
    # three times at ctx 2048, then once more each at ctx 512.
    F="$PYTHON -m spd_ref bench --shard-of 2 --prompt-lens none --no-comm --repeats 100 --warmup 10 --shape llama2-7b --batch 1 --out $JSONL --tag h1c-floor"
    for i in 1 2 3; do
      raw "floor-sdpa-2048-$i" 50 $F --ctx 2048 --attention sdpa
      raw "floor-auto-2048-$i" 50 $F --ctx 2048 --attention auto
    done
    raw floor-sdpa-512 50 $F --ctx 512 --attention sdpa
    raw floor-auto-512 50 $F --ctx 512 --attention auto
    ;;
  smoke)
    # 2-layer models: every code path (compiled + graphs, eager + graphs, GQA, P2P off, the peer) and
    # the compile time of one block (compile_s in the rows), in about 3 minutes.
    SMOKE=(bench --ctx 64 --prompt-lens 32 --spd-ratios 0,1 --prefill-ratios 0,1 --no-comm
           --repeats 20 --warmup 3 --prefill-repeats 2 --layers 2 --out "$JSONL" --tag smoke)
    step smoke-tp2 150 --nproc 2 --p2p on "${SMOKE[@]}" --batch 1 --shape llama2-7b --ar-bench --ar-sizes 8K,1M
    step smoke-tp2-eager 90 --nproc 2 --p2p off "${SMOKE[@]}" --batch 1,2 --shape llama2-70b --eager
    timeout 120 "$PYTHON" -m spd_ref.latency.peer --make-checkpoint --shape llama2-7b --layers 2 --checkpoint /tmp/spd_ref_peer_smoke
    step smoke-peer 150 --nproc 2 --module spd_ref.latency.peer --shape llama2-7b --layers 2 \
      --checkpoint /tmp/spd_ref_peer_smoke --batch 1 --ctx 64 --compile "${PEER_COMPILE:-try}" --repeats 20 --warmup 3 \
      --out "$JSONL" --tag smoke
    ;;
  *)
    echo "unknown phase $PHASE: use a, b, c, d, e, h1a, h1b, h1c, h2a, h2b, h2c, h2d, h2e, h2f, h2g, h2h, h2i, h2j, h2k, h2m, peer, tune, head or smoke"; exit 2 ;;
esac
finish
