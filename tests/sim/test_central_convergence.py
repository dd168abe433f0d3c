"""Early stopping of the central epoch loop and the bench report's best-at-cap flag."""

from __future__ import annotations

import json

import pytest

from florec.recdata.runconfig import parse_run_config
from florec.sim.central_loop import fit_and_select
from florec.sim.report import (
    AT_CAP,
    AT_ROUND_CAP,
    RAN_TO_CAP,
    convergence_table,
    federated_convergence_table,
    round_caps,
    write_report,
)


def _run(valid_scores: list[float], epochs: int, tmp_path=None, **keys):
    """fit_and_select over a hand-made validation sequence; test metrics name their epoch."""
    cfg = parse_run_config({"model": "mf", "selection-metric": "ndcg@10"} | keys)
    state = {"epoch": 0, "trained": 0}

    def train() -> dict[str, float]:
        state["epoch"] += 1
        state["trained"] += 1
        return {"train-loss": 1.0 / state["epoch"]}

    def validate() -> dict[str, float]:
        return {"ndcg@10": valid_scores[state["epoch"] - 1]}  # epoch 0 -> the last

    def metrics_at_test() -> dict[str, float]:
        return {"ndcg@10": float(state["epoch"])}  # the epoch it was taken at

    run = fit_and_select(cfg, "mf", epochs, train, validate, metrics_at_test, out_dir=tmp_path)
    return run, state["trained"]


def test_early_stopping_stops_after_patience_evaluations_without_improvement():
    # best at epoch 2; epochs 3, 4 (a tie is no improvement) and 5 do not improve -> stop at 5
    run, trained = _run([0.1, 0.3, 0.2, 0.3, 0.25, 0.9, 0.9], epochs=7, patience=3)
    assert trained == 5
    assert (run["best_epoch"], run["epochs_run"], run["max_epochs"]) == (2, 5, 7)
    assert run["stopped_early"] is True
    assert run["metrics"]["ndcg@10"] == 2.0  # test metrics of the best validation epoch
    assert run["valid_metrics"]["ndcg@10"] == pytest.approx(0.3)


def test_patience_counts_evaluations_not_epochs():
    # eval-every 2: validations at epochs 2 (0.5), 4 (0.4), 6 (0.4) -> 2 without improvement
    scores = [0.0, 0.5, 0.0, 0.4, 0.0, 0.4, 0.0, 0.9, 0.0, 0.9]
    run, trained = _run(scores, epochs=10, patience=2, **{"eval-every": 2})
    assert trained == 6 and run["best_epoch"] == 2 and run["stopped_early"] is True


def test_a_run_still_improving_ends_at_its_cap_with_the_best_epoch_there(tmp_path):
    run, trained = _run([0.1, 0.2, 0.3, 0.4], epochs=4, tmp_path=tmp_path, patience=2)
    assert trained == 4
    assert (run["best_epoch"], run["epochs_run"], run["stopped_early"]) == (4, 4, False)
    saved = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert {k: saved[k] for k in ("best_epoch", "epochs_run", "max_epochs", "stopped_early")} \
        == {"best_epoch": 4, "epochs_run": 4, "max_epochs": 4, "stopped_early": False}


def test_patience_that_fires_on_the_last_epoch_is_not_an_early_stop():
    run, trained = _run([0.5, 0.4, 0.3], epochs=3, patience=2)
    assert trained == 3 and run["best_epoch"] == 1 and run["stopped_early"] is False


def test_an_untrained_model_has_best_epoch_zero_and_no_cap():
    run, trained = _run([0.2], epochs=0)
    assert trained == 0 and (run["best_epoch"], run["epochs_run"], run["max_epochs"]) == (0, 0, 0)


def _entry(label: str, seed: int, best: int, ran: int, cap: int, early: bool) -> dict:
    return {"label": label, "setting": "central", "dataset": "d", "seed": seed,
            "metrics": {"ndcg@10": 0.1}, "best_round": best, "best_epoch": best,
            "epochs_run": ran, "max_epochs": cap, "stopped_early": early}


def test_report_flags_a_method_whose_best_epoch_is_its_cap(tmp_path):
    runs = [_entry("MF", 0, 14, 24, 300, True), _entry("MF", 1, 16, 26, 300, True),
            _entry("LightGCN", 0, 40, 50, 100, True), _entry("LightGCN", 1, 100, 100, 100, False),
            _entry("Pop", 0, 0, 0, 0, False)]
    lines = convergence_table(runs, ["MF", "LightGCN", "Pop"])
    mf = next(x for x in lines if x.startswith("| MF |"))
    gcn = next(x for x in lines if x.startswith("| LightGCN |"))
    assert mf == "| MF | 300 | 14, 16 | 24, 26 | 2/2 | ok |"
    assert gcn == f"| LightGCN | 100 | 40, 100 | 50, 100 | 1/2 | {AT_CAP} |"
    assert not any(x.startswith("| Pop |") for x in lines)  # nothing trained, nothing to flag
    results = {"config": {"bench": {"name": "b", "datasets": ["d"], "reference": "MF"},
                          "method": [{"label": "MF"}, {"label": "LightGCN"}, {"label": "Pop"}]},
               "runs": runs}
    text = write_report(results, tmp_path).read_text()
    assert gcn in text and mf in text


def test_report_has_no_convergence_table_without_trained_central_runs():
    assert convergence_table([_entry("Pop", 0, 0, 0, 0, False)], ["Pop"]) == []


def test_report_lists_federated_best_round_against_the_round_cap():
    def fed(label: str, seed: int, best: int, ran: int) -> dict:
        return {"label": label, "setting": "federated", "dataset": "d", "seed": seed,
                "metrics": {"ndcg@10": 0.1}, "best_round": best, "rounds": ran}

    runs = [fed("A", 0, 30, 40), fed("A", 1, 20, 30), fed("B", 0, 99, 100),
            fed("C", 0, 50, 50), fed("One", 0, 1, 1)]
    conf = {"defaults": {"num-rounds": 100},
            "method": [{"label": "A", "setting": "federated"},
                       {"label": "B", "setting": "federated"},
                       {"label": "C", "setting": "federated", "num-rounds": 50},
                       {"label": "One", "setting": "federated", "num-rounds": 1}]}
    caps = round_caps(conf)
    assert caps == {"A": 100, "B": 100, "C": 50, "One": 1}
    lines = federated_convergence_table(runs, ["A", "B", "C", "One"], caps)
    assert "| A | 100 | 30, 20 | 40, 30 | 2/2 | ok |" in lines
    assert f"| B | 100 | 99 | 100 | 0/1 | {RAN_TO_CAP} |" in lines
    assert f"| C | 50 | 50 | 50 | 0/1 | {AT_ROUND_CAP} |" in lines
    assert not any(x.startswith("| One |") for x in lines)  # one round: nothing to converge
    assert federated_convergence_table(runs[-1:], ["One"], caps) == []
