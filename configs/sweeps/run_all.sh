#!/usr/bin/env bash
# Every sweep behind docs/findings.md, in parallel processes that share one cache of data and baseline runs.
# On 2 CPU cores run the parts one at a time (each line's time is in docs/findings.md); on a GPU machine run them
# all at once: `bash configs/sweeps/run_all.sh`.  TREASURE_SWEEPS sets the output root (default: sweeps).
set -euo pipefail
root=${TREASURE_SWEEPS:-sweeps}
shared=$root/shared
treasure=${TREASURE:-treasure}
run() { $treasure sweep "$@" --shared "$shared" > "$root/$(basename "$3").log" 2>&1; }
mkdir -p "$root"
# Parts that need the same run wait for whichever process trains it first (a lock per run), then reuse it.
run configs/sweeps/demo.yaml --out "$root/demo" &
run configs/sweeps/budget.yaml --out "$root/budget" &
run configs/sweeps/tokens.yaml --out "$root/tokens" &
run configs/sweeps/base.yaml --out "$root/base" &
run configs/sweeps/placement.yaml --out "$root/placement" &
run configs/sweeps/format.yaml --out "$root/format" &
run configs/sweeps/dropout.yaml --out "$root/dataset_dropout" --grid dataset_dropout=0,0.5,0.7 &
run configs/sweeps/dropout.yaml --out "$root/sample_dropout" --grid sample_dropout=0.25,0.5,0.75 &
wait
