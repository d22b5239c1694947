#!/bin/bash
# Issue 20: --augment light (the default) vs line on the demo, same epochs, side by side, one
# thread each; then clean and corrupted val mAP of both.
cd /work/main && . /work/venv/bin/activate
export DETECT_CACHE=/work/cache-main OMP_NUM_THREADS=1
for a in light line; do
  python -m detect.train --backbone mobilenet --epochs 11 --augment $a --out /work/runs/aug --name $a > /work/runs/aug-$a.log 2>&1 &
done
wait
unset OMP_NUM_THREADS
/usr/bin/time -f "%e s wall" python -m detect.eval --weights /work/runs/aug/light/best.pt /work/runs/aug/line/best.pt --corruptions --json /work/runs/m/aug-corr.json --report /work/runs/aug/report > /work/runs/m/aug-corr.txt 2>&1
