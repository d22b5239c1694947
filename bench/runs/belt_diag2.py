import sys, collections, numpy as np, cv2
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1])); import _repo
from detect.demo.conveyor import plan_conveyor, render_conveyor
from detect.inference.loader import load_detector
from detect.scoring.metrics import box_iou
det = load_detector(sys.argv[1], threads=2)
classes = det.classes
plan = plan_conveyor(20, seed=0)
conf = collections.Counter()
cap = cv2.VideoCapture("/work/runs/belt20/belt/conveyor.mp4")
for f, img, boxes in render_conveyor(plan):
    ok, vid = cap.read()
    if f % 6: continue
    for name, frame in (("raw", img),):
        [d] = det.detect([cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)], [str(f)])
        keep = d.scores >= 0.5
        if not boxes: continue
        gt = np.array([b for _, _, b in boxes]); iou = box_iou(gt, d.boxes[keep]) if keep.any() else np.zeros((len(gt), 0))
        labs = d.labels[keep]
        for i, (_, c, _) in enumerate(boxes):
            j = np.flatnonzero(iou[i] >= 0.5)
            sc = d.scores[keep]
            got = classes[int(labs[j[np.argmax(sc[j])]]) - 1] if len(j) else "-"
            conf[(name, c, got)] += 1
for k in sorted(conf): print(k, conf[k])
