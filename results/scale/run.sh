#!/usr/bin/env bash
# The scale study of issue 13: zero-shot SPD sweeps of the offline models (results/scale/README.md).
# Resumable: rerun this script (or one lane of it) and every finished piece (sensitivity scan, scored
# setting) is read back from results/scale/MODEL/store instead of computed again; the rows file of a
# TP degree is rewritten with every setting of the run, finished ones first. Ratios are scored in the
# order 0, 0.5, 1, 0.25, 0.75 (the coarse curve first).
# Run from the repository root:  bash results/scale/run.sh [smollm2|qwen0.5|qwen1.5|recovery]  (default: the
# first two lanes side by side, one core each; never two Qwen models at once: the sweep holds the 1.5B
# in fp32 plus a bf16 scorer, and its recovery sweep at TP 2 peaked at 21.2 GB resident).
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TQDM_DISABLE=1
PY=${PY:-python}
STRATEGIES=${STRATEGIES:-zs}  # zs,b2b,hg adds the recovered settings (the recovery lane below)
run() {  # MODEL TP
    # --recover-samples 8: the study's recovery trained on the scan's 8 windows, before the default became 32
    nice -n 10 "$PY" -m spd_ref sweep --model "$1" --tp "$2" --ratios 0,0.5,1,0.25,0.75 \
        --strategies "$STRATEGIES" --recover-samples 8 --out "results/scale/$1"
}
lane() {  # MODEL TP...
    local model=$1; shift
    for tp in "$@"; do run "$model" "$tp"; done
}
# TP degrees: the one the heads divide into first (SmolLM2: 9 heads -> 3; Qwen2.5-0.5B: 14 -> 2), then 4.
case "${1:-both}" in
    smollm2) lane smollm2 3 4 2 ;;
    qwen0.5) lane qwen2.5-0.5b 2 4 ;;
    qwen1.5) lane qwen2.5-1.5b 2 4 ;;
    recovery) STRATEGIES=zs,b2b,hg lane smollm2 4 3 ;;  # issue 12: SmolLM2 with B2B and HG beside zero-shot
    both) lane smollm2 3 4 2 & lane qwen2.5-0.5b 2 4; wait ;;
esac
