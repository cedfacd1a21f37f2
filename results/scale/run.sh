#!/usr/bin/env bash
# The scale study of issue 13: zero-shot SPD sweeps of the offline models (results/scale/README.md).
# Resumable: rerun this script (or one line of it) and every finished piece (sensitivity scan, scored
# setting) is read back from results/scale/MODEL/store instead of computed again.
# Run from the repository root: bash results/scale/run.sh  (one model at a time: the 0.5B peaks at ~5 GB)
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TQDM_DISABLE=1
PY=${PY:-python}
run() {  # MODEL TP
    nice -n 10 "$PY" -m spd_ref sweep --model "$1" --tp "$2" --steps 4 --strategies zs --out "results/scale/$1"
}
# Order: the degree the heads divide into first (SmolLM2: 9 heads; Qwen2.5-0.5B: 14), then TP 4, then the rest.
run smollm2 3
run qwen2.5-0.5b 2
run smollm2 4
run qwen2.5-0.5b 4
run smollm2 2
run qwen2.5-1.5b 2
run qwen2.5-1.5b 4
