#!/bin/bash
# Measurements on the README's demo model (weights/mobilenet/best.pt), run on the idle CPU.
set -x
cd /work/main && . /work/venv/bin/activate
W=/work/main/weights/mobilenet/best.pt
cp $W /work/runs/demo-best.pt
python -m detect.export --weights /work/runs/demo-best.pt --out /work/runs/demo.onnx --overwrite 2>&1 | tail -3
# 17: counting on the rendered belt, several defect shares from the same detections
python bench/counting_accuracy.py --weights /work/runs/demo.onnx --out /work/runs/belt20 --defect-share 0 0.2 0.3 0.4 0.5 > /work/runs/m/counting.txt 2>&1
# 19: planted mistakes in the val split, audited by the demo model (never trained on val)
rm -rf /work/runs/planted-val
python bench/plant_mistakes.py /work/cache-main/demo-480 /work/runs/planted-val --split val --seed 0 > /work/runs/m/plant-val.txt 2>&1
/usr/bin/time -f "%e s wall" python -m detect.audit --weights /work/runs/demo-best.pt --data /work/runs/planted-val --format json --gallery 0 > /work/runs/m/audit-val.json 2> /work/runs/m/audit-val.err
python bench/audit_score.py /work/runs/planted-val/planted.json /work/runs/m/audit-val.json > /work/runs/m/audit-val.txt 2>&1
