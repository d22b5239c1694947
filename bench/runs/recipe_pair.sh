#!/bin/bash
# torchvision's recipe (--recipe gpu) against the CPU recipe (--recipe cpu-scratch) on one dataset
# at one time budget, from scratch: the two trainings side by side with one thread each (so both
# see the same machine), in the AVX2 view (the common CPU), then both scored.
#   bench/runs/recipe_pair.sh DATA MINUTES OUT        e.g. bench/runs/recipe_pair.sh path/to/bccd 20 runs/bccd20
set -euo pipefail
DATA=${1:?usage: recipe_pair.sh DATA MINUTES OUT}; MIN=${2:?minutes}; OUT=${3:?output folder}
mkdir -p "$OUT"
for r in gpu cpu-scratch; do
  OMP_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \
    python -m detect.train --backbone mobilenet --data "$DATA" --skip-invalid --weights none --recipe $r \
      --time "$MIN" --out "$OUT" --name $r > "$OUT/train-$r.log" 2>&1 &
done
wait
python -m detect.eval --weights "$OUT/gpu/best.pt" "$OUT/cpu-scratch/best.pt" --json "$OUT/eval.json" | tee "$OUT/eval.txt"
