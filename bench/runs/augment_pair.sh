#!/bin/bash
# --augment light (the default) against --augment line, the same epochs and seed, side by side
# with one thread each, then both scored clean and under the eight corruptions at three
# severities (mean corrupted mAP, relative robustness, the heat-map in OUT/report/).
# Without DATA: the demo and its recipe. With DATA: that dataset from scratch, --recipe cpu-scratch.
#   bench/runs/augment_pair.sh OUT EPOCHS [DATA]     e.g. bench/runs/augment_pair.sh runs/aug 11
set -euo pipefail
OUT=${1:?usage: augment_pair.sh OUT EPOCHS [DATA]}; EPOCHS=${2:?epochs}; DATA=${3:-}
DATA_ARGS=()
[ -n "$DATA" ] && DATA_ARGS=(--data "$DATA" --skip-invalid --weights none --recipe cpu-scratch)
mkdir -p "$OUT"
for a in light line; do
  OMP_NUM_THREADS=1 python -m detect.train --backbone mobilenet "${DATA_ARGS[@]}" --epochs "$EPOCHS" \
    --augment $a --out "$OUT" --name $a > "$OUT/train-$a.log" 2>&1 &
done
wait
python -m detect.eval --weights "$OUT/light/best.pt" "$OUT/line/best.pt" --corruptions \
  --json "$OUT/corruptions.json" --report "$OUT/report" | tee "$OUT/corruptions.txt"
