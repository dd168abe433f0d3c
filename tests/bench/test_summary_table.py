"""bench/summary_table.py: per-method summary rows from a bench results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from florec.recdata.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def run(label: str, seed: int, ndcg: float, best: int, rounds: int, wall: float) -> dict:
    return {"dataset": "d", "label": label, "seed": seed, "setting": "central",
            "metrics": {"ndcg@10": ndcg}, "best_round": best, "rounds": rounds, "wall_s": wall}


def test_rows_give_mean_and_sample_sd_over_seeds_in_config_order(bench_script) -> None:
    results = {"config": {"bench": {"datasets": ["d"]},
                          "method": [{"label": "B"}, {"label": "A"}]},
               "runs": [run("A", 0, 0.1, 3, 5, 10.0), run("B", 1, 0.3, 2, 4, 8.0),
                        run("B", 0, 0.2, 1, 2, 6.0)]}
    lines = bench_script("summary_table").summary(results, ["ndcg@10"]).splitlines()
    assert lines[2] == "| d | B | central | 2 | 0.2500 ± 0.0707 | 1, 2 | 2, 4 | 2.5 |"
    assert lines[3] == "| d | A | central | 1 | 0.1000 | 3 | 5 | 2.0 |"


def test_a_missing_metric_is_a_config_error_naming_the_choices(bench_script) -> None:
    results = {"config": {}, "runs": [run("A", 0, 0.1, 1, 1, 1.0)]}
    with pytest.raises(ConfigError, match="no \\['hr@10'\\].*ndcg@10"):
        bench_script("summary_table").summary(results, ["hr@10"])


def test_committed_sequential_summary_is_the_generated_one(bench_script) -> None:
    folder = ROOT / "docs/results/sequential"
    text = bench_script("summary_table").summary(
        json.loads((folder / "results.json").read_text()), ["hr@10", "ndcg@10", "mrr@10"])
    assert (folder / "summary.md").read_text() == text


def test_docs_sequential_shows_the_generated_table() -> None:
    summary = (ROOT / "docs/results/sequential/summary.md").read_text()
    assert summary in (ROOT / "docs/methods/sequential.md").read_text()
