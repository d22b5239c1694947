import sys, time, os, statistics
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import _repo, torch
from detect.training import budget, config as C, data_prep, trainer
res = {}
for rep in range(2):
    for ch, size in ((256, 256), (128, 256), (96, 256), (128, 224)):
        cfg = C.resolve_config(C.TrainConfig(data=None, weights="none", no_check=True, workers=0,
                                             model=C.ModelConfig(fpn_channels=ch, input_size=size)))
        cfg, d = data_prep.prepare_data(cfg)
        torch.manual_seed(0)
        model = trainer.model_for_config(cfg, len(d.classes) + 1)
        _, loader, _, val_loader, _ = data_prep.make_loaders(cfg, d)
        pace = budget.measure(model, loader, val_loader, torch.device("cpu"), optimizer=cfg.optimizer, lr=cfg.lr, steps=6, clock=time.perf_counter)
        res.setdefault((ch, size), []).append(pace.step_s)
        print(ch, size, round(pace.step_s, 3), round(pace.val_image_s, 4), flush=True)
for k, v in res.items(): print(k, statistics.median(v))
