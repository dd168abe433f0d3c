"""The Oracle4Rec tuning report: selection on validation, finalists, the KL term's twin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _cell(out: Path, folder: str, seed: int, valid: float, test: float, **settings) -> None:
    path = out / "ml100k" / "cells" / "ml-100k" / folder / f"seed{seed}"
    path.mkdir(parents=True)
    base = {"model": "sasrec", "lr": 0.001, "dropout": 0.5, "seed": seed,
            "dataset": "ml-100k", "epochs": 100}
    (path / "cell.json").write_text(json.dumps(base | settings))
    run = {"dataset": "ml-100k", "seed": seed, "best_epoch": 100 if valid > 0.2 else 7,
           "epochs_run": 17, "max_epochs": 100, "wall_s": 12.0,
           "valid_metrics": {"ndcg@10": valid},
           "metrics": {"ndcg@10": test, "hr@10": 2 * test, "mrr@10": test / 2}}
    (path / "results.json").write_text(json.dumps({"status": "finished", "runs": [run]}))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    _cell(tmp_path, "SASRec-lr=0.001", 0, 0.100, 0.090)
    _cell(tmp_path, "SASRec-lr=0.003", 0, 0.110, 0.080, lr=0.003)
    for seed, (with_kl, without) in enumerate([(0.095, 0.090), (0.097, 0.091), (0.094, 0.090)]):
        _cell(tmp_path, "Oracle4Rec-a0.01", seed, 0.105 if seed == 0 else 0.1, with_kl,
              oracle=True, **{"oracle-alpha": 0.01})
        _cell(tmp_path, "Oracle4Rec-a0", seed, 0.101, without, oracle=True,
              **{"oracle-alpha": 0.0})
    unfinished = tmp_path / "ml100k" / "cells" / "ml-100k" / "SASRec-x" / "seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "results.json").write_text(json.dumps({"status": "running"}))
    return tmp_path


def test_the_best_validation_cell_of_each_family_is_chosen(bench_script, out: Path) -> None:
    text = bench_script("oracle4rec_tuning").summary(out, [])
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines()
            if line.startswith("| SASRec") or line.startswith("| Oracle4Rec")}
    assert "(chosen)" in rows["SASRec-lr=0.003"] and "(chosen)" not in rows["SASRec-lr=0.001"]
    assert "**0.1050** (chosen)" in text  # Oracle4Rec-a0.01's seed-0 validation
    assert "SASRec-x" not in text  # unfinished cells are left out


def test_the_kl_term_is_measured_against_its_alpha_zero_twin(bench_script, out: Path) -> None:
    text = bench_script("oracle4rec_tuning").summary(out, [])
    kl = [line for line in text.splitlines() if line.startswith("- the KL term")]
    assert len(kl) == 1 and "`Oracle4Rec-a0.01` vs `Oracle4Rec-a0`" in kl[0]
    assert "+0.0050" in kl[0] and "3 seeds" in kl[0]  # mean of 0.005, 0.006, 0.004
    assert "| Oracle4Rec-a0.01 | 3 | 0.0953 ± 0.0015 |" in text


def test_a_best_epoch_at_the_cap_is_flagged(bench_script, out: Path) -> None:
    assert "100 / 17 of 100 (at cap)" not in bench_script("oracle4rec_tuning").summary(out, [])
    _cell(out, "SASRec-lr=0.01", 0, 0.3, 0.1, lr=0.01)
    assert "100 / 17 of 100 (at cap)" in bench_script("oracle4rec_tuning").summary(out, [])


def test_cells_of_the_config_without_results_are_listed(bench_script, out: Path) -> None:
    toml = out / "oracle4rec_tuning_ml100k.toml"
    toml.write_text("""
[bench]
datasets = ["ml-100k"]
seeds = [0]

[[method]]
label = "SASRec lr=0.001"
setting = "central"
model = "sasrec"
epochs = 3

[[method]]
label = "SASRec wd"
setting = "central"
model = "sasrec"
weight-decay = 0.0001
seeds = [0, 1]
epochs = 3
""")
    text = bench_script("oracle4rec_tuning").summary(out, [toml])
    assert "Not run yet (3 cells of the config): SASRec lr=0.001 (seed 0); SASRec wd (seed 0); " \
           "SASRec wd (seed 1)." in text


def test_the_committed_summary_is_generated_from_the_committed_cells(bench_script) -> None:
    folder = Path(__file__).resolve().parents[2] / "docs" / "results" / "oracle4rec_tuning"
    committed = (folder / "summary.md").read_text()
    assert bench_script("oracle4rec_tuning").summary(folder) == committed
