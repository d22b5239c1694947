#!/bin/bash
# Issue 20 on BCCD: --balance none vs loss (repeat's factors are all 1 there at t=0.3), the
# cpu-scratch recipe from scratch, E epochs each (the same optimizer steps: the sampler is
# the same), side by side, one thread each, natively; then per-class AP of both.
# --balance loss existed from commit 0705467 until it was removed for not helping (docs/performance.md).
cd /work/main && . /work/venv/bin/activate
export OMP_NUM_THREADS=1
E=${1:-5}; B=/work/runs/bccd-bal
for arm in none loss; do
  python -m detect.train --backbone mobilenet --data /work/shared/data/bccd --skip-invalid --weights none \
    --recipe cpu-scratch --epochs $E --balance $arm --out $B --name $arm > $B-$arm.log 2>&1 &
done
wait
unset OMP_NUM_THREADS
python -m detect.eval --weights $B/none/best.pt $B/loss/best.pt --json $B/eval.json > $B/eval.txt 2>&1
