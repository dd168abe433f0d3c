import sys, json, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, "/work/main")
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
loss, agg, lr = sys.argv[1], sys.argv[2], float(sys.argv[3])
cfg = parse_run_config({"dataset": "ml-1m", "split": "ratio-fs", "mf-loss": loss, "aggregation": agg,
    "lr": lr, "users-per-node": 100, "num-rounds": 10, "ks": "20", "selection-metric": "recall@20",
    "weight-decay": 0.001, "init-std": 0.1, "dim": 64, "eval-every": 2,
    "out-dir": f"/tmp/fsfed/{loss}-{agg}-{lr}"})
from florec.recdata.store import num_buckets_for
n = num_buckets_for(cfg)
cfg = parse_run_config(cfg.to_flower() | {"num-nodes": n})
t = time.time()
run = run_federated(LocalGrid(cfg.to_flower(), n, keep_replies=False), cfg, __import__("pathlib").Path(cfg.out_dir))
print(json.dumps({"loss": loss, "agg": agg, "lr": lr, "metrics": run["metrics"], "best": run["best_round"], "wall": time.time() - t}))
