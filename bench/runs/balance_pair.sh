#!/bin/bash
# --balance none against --balance repeat on the rare-defect demo (each object defective with
# probability 0.05), side by side with one thread each, then both scored. Give the two runs the
# same number of optimizer steps: repeat's epoch is longer (the banner says how much), so it
# gets fewer epochs (12 and 10 on the 480-image demo).
#   bench/runs/balance_pair.sh OUT [NONE_EPOCHS] [REPEAT_EPOCHS]
set -euo pipefail
OUT=${1:?usage: balance_pair.sh OUT [NONE_EPOCHS] [REPEAT_EPOCHS]}; NONE=${2:-12}; REPEAT=${3:-10}
mkdir -p "$OUT"
OMP_NUM_THREADS=1 python -m detect.train --backbone mobilenet --demo-defect-rate 0.05 --epochs "$NONE" \
  --balance none --out "$OUT" --name none > "$OUT/train-none.log" 2>&1 &
OMP_NUM_THREADS=1 python -m detect.train --backbone mobilenet --demo-defect-rate 0.05 --epochs "$REPEAT" \
  --balance repeat --out "$OUT" --name repeat > "$OUT/train-repeat.log" 2>&1 &
wait
python -m detect.eval --weights "$OUT/none/best.pt" "$OUT/repeat/best.pt" --json "$OUT/eval.json" | tee "$OUT/eval.txt"
