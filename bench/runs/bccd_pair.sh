#!/bin/bash
# Issue 18: BCCD from scratch, torchvision's recipe (the old default) vs cpu-scratch (the new
# CPU default), the same time budget, side by side, one thread each, AVX2 view.
cd /work/main && . /work/venv/bin/activate
export OMP_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
MIN=$1
for r in gpu cpu-scratch; do
  python -m detect.train --backbone mobilenet --data /work/shared/data/bccd --skip-invalid --weights none --recipe $r --time $MIN --out /work/runs/bccd$MIN --name $r > /work/runs/bccd$MIN-$r.log 2>&1 &
done
wait
unset OMP_NUM_THREADS ONEDNN_MAX_CPU_ISA ATEN_CPU_CAPABILITY
B=/work/runs/bccd$MIN
python -m detect.eval --weights $B/gpu/best.pt $B/cpu-scratch/best.pt --json $B/eval.json > $B/eval.txt 2>&1
/usr/bin/time -f "%e s wall" python -m detect.audit --weights $B/cpu-scratch/best.pt --data /work/shared/data/bccd --split val --format json --gallery 0 --no-progress > $B/audit-val.json 2> $B/audit-val.err
python -m detect.audit --weights $B/cpu-scratch/best.pt --data /work/shared/data/bccd --split val --gallery 24 --out $B/audit --no-progress > $B/audit-val.txt 2>&1
