#!/bin/bash
# Issue 20 on BCCD: --augment line against the default (light: bccd_balance.sh's `none` run,
# the same recipe, epochs and seed). The line run trains on one thread while the light
# model's corruption report runs on the other; then the line model's report.
cd /work/main && . /work/venv/bin/activate
export OMP_NUM_THREADS=1
E=${1:-5}; B=/work/runs/bccd-bal
python -m detect.train --backbone mobilenet --data /work/shared/data/bccd --skip-invalid --weights none \
  --recipe cpu-scratch --epochs $E --augment line --out $B --name line > $B-line.log 2>&1 &
python -m detect.eval --weights $B/none/best.pt --corruptions --json $B/corr-light.json --report $B/report-light > $B/corr-light.txt 2>&1 &
wait
unset OMP_NUM_THREADS
python -m detect.eval --weights $B/line/best.pt --corruptions --json $B/corr-line.json --report $B/report-line > $B/corr-line.txt 2>&1
