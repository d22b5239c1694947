"""torchrun: two CPU processes (gloo) train together, as `torchrun --nproc_per_node 2 -m detect.train`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import TINY_TRAIN, make_devkit

REPO = Path(__file__).resolve().parents[1]

# What each process does: the CLI's own path from argv to train(), then a report of what
# this rank holds, which the product itself never writes (only rank 0 writes).
WORKER = textwrap.dedent("""
    import json, os, sys
    from detect import train as T
    from detect.training import config as train_config, data_prep, trainer
    from detect.model.checkpoint import payload_digest
    parser = T.build_parser()
    args = parser.parse_args(sys.argv[2:])
    if args.resume is not None:
        cfg = train_config.resume_config(args.resume, {"epochs": args.epochs})
    else:
        cfg = T.config_from_args(args)
    result = trainer.train(cfg)
    report = {"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]),
              "digest": payload_digest(result.model.state_dict()), "iterations": result.iterations,
              "status": result.status}
    with open(os.path.join(sys.argv[1], f"rank{report['rank']}.json"), "w") as fh:
        json.dump(report, fh)
""")


def torchrun(tmp_path: Path, *argv: str) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    reports = tmp_path / "reports"
    reports.mkdir(exist_ok=True)
    for old in reports.glob("*.json"):
        old.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(reports), *argv]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((reports / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_processes_train_as_one(tmp_path: Path) -> None:
    data = make_devkit(tmp_path / "data", n=10)  # 8 train images (ImageSets lists), 2 val
    out = tmp_path / "w"
    common = ["--data", str(data), "--classes", str(data / "classes.txt"), "--out", str(out), *TINY_TRAIN,
              "--weights", "none", "--device", "cpu"]
    reports = torchrun(tmp_path, *common, "--epochs", "1")
    # Both ranks end with bitwise the same weights (DDP averages the gradients) ...
    assert reports[0]["digest"] == reports[1]["digest"]
    # ... each having taken half the steps one process would: 8 images / 2 ranks / batch 2.
    assert [r["iterations"] for r in reports] == [2, 2]
    # One run folder, one row in the run log: only rank 0 writes.
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["mobilenet"]
    assert len(list(csv.DictReader((out / "runs.csv").open()))) == 1
    assert [r["epoch"] for r in csv.DictReader((out / "mobilenet" / "results.csv").open())] == ["1"]

    # --resume works under torchrun too: one more epoch, still in step.
    reports = torchrun(tmp_path, "--resume", str(out / "mobilenet" / "last.pt"), "--epochs", "2")
    assert reports[0]["digest"] == reports[1]["digest"] and [r["iterations"] for r in reports] == [2, 2]
    assert [r["epoch"] for r in csv.DictReader((out / "mobilenet" / "results.csv").open())] == ["1", "2"]
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["mobilenet"]
