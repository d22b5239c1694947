#!/bin/bash
# Issue 20: --balance none vs repeat on the rare-defect demo (defect rate 0.05), the same
# optimizer steps, side by side, one thread each.
cd /work/main && . /work/venv/bin/activate
export DETECT_CACHE=/work/cache-main OMP_NUM_THREADS=1
NONE_EPOCHS=$1; REPEAT_EPOCHS=$2
python -m detect.train --backbone mobilenet --demo-defect-rate 0.05 --epochs $NONE_EPOCHS --balance none --out /work/runs/rare --name none > /work/runs/rare-none.log 2>&1 &
python -m detect.train --backbone mobilenet --demo-defect-rate 0.05 --epochs $REPEAT_EPOCHS --balance repeat --out /work/runs/rare --name repeat > /work/runs/rare-repeat.log 2>&1 &
wait
python -m detect.eval --weights /work/runs/rare/none/best.pt /work/runs/rare/repeat/best.pt --json /work/runs/m/rare-eval.json > /work/runs/m/rare-eval.txt 2>&1
