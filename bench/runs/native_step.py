import sys, time, statistics
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import _repo, torch
from detect.training import budget, config as C, data_prep, trainer
res = []
for rep in range(3):
    cfg = C.resolve_config(C.TrainConfig(data=None, weights="none", no_check=True, workers=0))
    cfg, d = data_prep.prepare_data(cfg)
    torch.manual_seed(0)
    model = trainer.model_for_config(cfg, len(d.classes) + 1)
    _, loader, _, val_loader, _ = data_prep.make_loaders(cfg, d)
    pace = budget.measure(model, loader, val_loader, torch.device("cpu"), optimizer=cfg.optimizer, lr=cfg.lr, clock=time.perf_counter)
    res.append(pace.epoch_seconds(len(loader), len(d.val), False))
    print(round(pace.step_s, 3), round(res[-1], 1), flush=True)
print("median epoch s", statistics.median(res), "12 epochs min", 12 * statistics.median(res) / 60, torch.backends.cpu.get_cpu_capability())
