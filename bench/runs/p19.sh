#!/bin/bash
# Issue 19: planted mistakes in the demo's train split, audited out of fold, top-K fixed, retrained.
set -x
cd /work/main && . /work/venv/bin/activate
export OMP_NUM_THREADS=1
C=/work/cache-main/demo-480/classes.txt
P=/work/runs/planted-train
R=/work/runs/p19
rm -rf $P $R; mkdir -p $R
python bench/plant_mistakes.py /work/cache-main/demo-480 $P --split train --copy-rest --seed 0
for i in 0 1; do
  python -m detect.train --backbone mobilenet --data $P --classes $C --recipe demo --epochs 12 --folds 2 --fold $i --out $R --name fold$i > $R/fold$i.log 2>&1 &
done
wait
for i in 0 1; do
  /usr/bin/time -f "%e s wall" python -m detect.audit --weights $R/fold$i/best.pt --data $P --split val --format json --gallery 0 --no-progress > $R/audit$i.json 2> $R/audit$i.err
done
python - <<'PY'
import json
docs = [json.load(open(f"/work/runs/p19/audit{i}.json")) for i in (0, 1)]
findings = sorted([f for d in docs for f in d["findings"]], key=lambda f: -f["confidence"])
summary = dict(docs[0]["summary"]); summary["seconds"] = round(sum(d["summary"]["seconds"] for d in docs), 2)
summary["images"] = sum(d["summary"]["images"] for d in docs)
json.dump({"findings": findings, "summary": summary}, open("/work/runs/p19/audit-oof.json", "w"))
k = len(json.load(open("/work/runs/planted-train/planted.json"))["mistakes"])
top = findings[:k]
per = [sum(1 for f in top if any(f is g for g in d["findings"])) for d in docs]
# the fold each top finding came from: by identity is lost after sorting copies; count by path membership instead
paths = [set((g["path"], g.get("line"), g["kind"], g["confidence"]) for g in d["findings"]) for d in docs]
per = [sum(1 for f in top if (f["path"], f.get("line"), f["kind"], f["confidence"]) in p) for p in paths]
json.dump({"k": k, "per_fold": per}, open("/work/runs/p19/topk.json", "w"))
print("K", k, "top-K per fold", per)
PY
python bench/audit_score.py $P/planted.json $R/audit-oof.json > $R/audit-oof.txt
K0=$(python -c "import json;print(json.load(open('$R/topk.json'))['per_fold'][0])")
K1=$(python -c "import json;print(json.load(open('$R/topk.json'))['per_fold'][1])")
rm -rf $R/review /work/runs/fixed-train
python -m detect.audit --weights $R/fold0/best.pt --data $P --split val --top $K0 --gallery 0 --save-xml $R/review --no-progress > /dev/null 2>&1
python -m detect.audit --weights $R/fold1/best.pt --data $P --split val --top $K1 --gallery 0 --save-xml $R/review --no-progress > /dev/null 2>&1
cp -r $P /work/runs/fixed-train && cp $R/review/*.xml /work/runs/fixed-train/
ls $R/review | wc -l
for d in planted-train fixed-train; do
  python -m detect.train --backbone mobilenet --data /work/runs/$d --classes $C --recipe demo --epochs 12 --out $R --name retrain-$d > $R/retrain-$d.log 2>&1 &
done
wait
python -m detect.eval --weights $R/retrain-planted-train/best.pt $R/retrain-fixed-train/best.pt --data /work/cache-main/demo-480 --split val --json $R/eval.json > $R/eval.txt 2>&1
