"""`make demo`'s federated recipe is the bench row that validation chose (issue 15 §1)."""

import tomllib
from pathlib import Path

from florec.recdata.runconfig import RunConfig
from florec.sim.cli_common import config_with_overrides
from florec.sim.cli_run import DEMO_FEDSGD

ROOT = Path(__file__).resolve().parents[2]
CHOSEN = "FedSGD cohort 10 + server Adam 0.005, user SGD lr 4"


def test_demo_recipe_parses_into_a_fedsgd_run_config():
    cfg = config_with_overrides({"dataset": "ml-100k", "model": "mf"}, list(DEMO_FEDSGD))
    assert (cfg.aggregation, cfg.optimizer, cfg.server_opt) == ("sum", "sgd", "adam")
    assert cfg.cohort_size == 10 and cfg.patience > 0 and cfg.eval_every > 1


def test_demo_recipe_equals_the_bench_row_chosen_by_validation():
    bench = tomllib.loads((ROOT / "bench/fedmf_converge.toml").read_text())
    row = next(m for m in bench["method"] if m["label"] == CHOSEN)
    demo = config_with_overrides({"dataset": "ml-100k", "model": "mf"}, list(DEMO_FEDSGD))
    for key, value in row.items():
        if key.replace("-", "_") in RunConfig.model_fields and key not in ("num-nodes",
                                                                            "num-rounds"):
            assert getattr(demo, key.replace("-", "_")) == value, key
    assert demo.patience == bench["defaults"]["patience"]
