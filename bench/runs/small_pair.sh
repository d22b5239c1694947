#!/bin/bash
# Issue 18: BCCD downscaled to 200 px (many small images: per-RoI costs dominate),
# torchvision's recipe vs cpu-scratch at a time budget, side by side, one thread each, AVX2 view.
cd /work/main && . /work/venv/bin/activate
MIN=${1:-10}; B=/work/runs/small$MIN
[ -d /work/runs/bccd-200 ] || python bench/make_small_copy.py /work/shared/data/bccd /work/runs/bccd-200 --side 200
export OMP_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
for r in gpu cpu-scratch; do
  python -m detect.train --backbone mobilenet --data /work/runs/bccd-200 --skip-invalid --weights none --recipe $r \
    --time $MIN --out $B --name $r > $B-$r.log 2>&1 &
done
wait
unset OMP_NUM_THREADS ONEDNN_MAX_CPU_ISA ATEN_CPU_CAPABILITY
python -m detect.eval --weights $B/gpu/best.pt $B/cpu-scratch/best.pt --json $B/eval.json > $B/eval.txt 2>&1
