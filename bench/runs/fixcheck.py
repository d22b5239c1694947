import sys, glob, os
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1])); import _repo
import numpy as np
from detect.data.voc import parse_voc
from detect.scoring.metrics import box_iou
def objs(p):
    a = parse_voc(p); return [(o.name, list(o.box)) for o in a.objects]
def diff(a, b):
    """objects of a (truth) without an equal object in b (same class, IoU >= 0.9), and objects of b without one in a"""
    def unmatched(x, y):
        n = 0; used = set()
        for c, bx in x:
            best = None
            for j, (c2, by) in enumerate(y):
                if j in used or c2 != c: continue
                if box_iou(np.array([bx]), np.array([by]))[0, 0] >= THR: best = j; break
            if best is None: n += 1
            else: used.add(best)
        return n
    return unmatched(a, b), unmatched(b, a)
THR = float(sys.argv[1])
clean_dir = "/work/cache-main/demo-480/Annotations"
tot = {"planted": [0, 0], "fixed": [0, 0]}
for x in sorted(glob.glob("/work/runs/planted-train/*.xml")):
    stem = os.path.basename(x)
    truth = objs(os.path.join(clean_dir, stem))
    for name in tot:
        m, e = diff(truth, objs(f"/work/runs/{name}-train/{stem}"))
        tot[name][0] += m; tot[name][1] += e
print("truth objects missing-or-wrong / extra-or-wrong (all 480 images):", tot)
