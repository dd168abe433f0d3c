import json

from florec.recdata.runconfig import parse_run_config
from florec.sim.central import run_central


def test_central_mf_beats_popularity_on_clustered_data(tmp_path):
    base = {"dataset": "synthetic", "synthetic-users": 150, "synthetic-items": 80,
            "synthetic-interactions": 20, "dim": 16, "lr": 0.01, "selection-metric": "ndcg@10"}
    pop = run_central(parse_run_config(base | {"model": "pop"}), 0, 256)
    mf = run_central(parse_run_config(base | {"model": "mf"}), 12, 64, tmp_path / "mf")
    assert mf["metrics"]["ndcg@10"] > pop["metrics"]["ndcg@10"]
    saved = json.loads((tmp_path / "mf" / "results.json").read_text())
    assert saved["runs"][0]["setting"] == "central" and saved["runs"][0]["best_round"] >= 1
    lines = (tmp_path / "mf" / "rounds.jsonl").read_text().splitlines()
    assert len(lines) == 12
