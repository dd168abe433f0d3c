"""User-level DP-FedAvg: the accountant, calibration, the server's noise and end-to-end runs."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from florec.protocol import dp_account
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.dp import UserDP, check_dp

BASE = {"dataset": "synthetic", "synthetic-users": 60, "synthetic-items": 50,
        "synthetic-interactions": 10, "dim": 8, "num-nodes": 3, "num-rounds": 3,
        "aggregation": "sum", "lr": 0.05, "device": "cpu"}


def test_epsilon_matches_the_library_called_directly():
    q, z, rounds, delta = 0.05, 1.5, 50, 1e-5
    acc = rdp.RdpAccountant(list(dp_account.ORDERS))
    acc.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds))
    ours = dp_account.epsilon(q, z, rounds, delta)
    assert ours == pytest.approx(acc.get_epsilon(delta), rel=1e-12)
    assert ours == pytest.approx(1.4036, abs=1e-3)  # this setting's value, pinned
    # RDP is an upper bound on the (tighter) PLD epsilon, and not a loose one here
    tight = dp_account.epsilon(q, z, rounds, delta, "pld")
    assert tight <= ours <= 1.3 * tight


def test_epsilon_grows_with_rounds_and_falls_with_noise_and_sampling():
    eps = [dp_account.epsilon(0.1, 1.0, t, 1e-3) for t in (1, 10, 100)]
    assert eps[0] < eps[1] < eps[2]
    assert dp_account.epsilon(0.1, 2.0, 10, 1e-3) < eps[1]
    assert dp_account.epsilon(0.05, 1.0, 10, 1e-3) < eps[1]
    assert math.isinf(dp_account.epsilon(0.1, 0.0, 10, 1e-3))
    assert dp_account.epsilon(0.1, 1.0, 0, 1e-3) == 0.0


def test_dp_epsilon_calibrates_the_noise_multiplier_to_the_target():
    cfg = parse_run_config({"dp": True, "dp-epsilon": 4.0, "cohort-fraction": 0.1,
                            "num-rounds": 30})
    z = dp_account.noise_multiplier(cfg, 1000)
    assert dp_account.epsilon(0.1, z, 30, 1e-3) == pytest.approx(4.0, abs=0.01)
    assert dp_account.epsilon(0.1, 0.95 * z, 30, 1e-3) > 4.0


@pytest.mark.parametrize(("extra", "word"), [
    ({"aggregation": "sparse"}, "fixed denominator"),
    ({"aggregation": "dense"}, "weighting='uniform'"),
    ({"cohort-size": 5}, "Poisson"),
    ({"fraction-train": 0.5}, "Poisson"),
    ({"algorithm": "local"}, "fedavg"),
    ({"algorithm": "fedcia", "fedcia-comm": "factored"}, "dense"),
    ({"dp-epsilon": 1.0, "dp-noise-multiplier": 1.0}, "not both"),
])
def test_settings_dp_cannot_account_for_are_refused_in_one_line(extra, word):
    cfg = parse_run_config({"dp": True, "aggregation": "sum"} | extra)
    with pytest.raises(ConfigError, match=word) as err:
        check_dp(cfg)
    assert "\n" not in str(err.value)


def test_central_noise_has_std_z_clip_over_the_whole_table_and_a_fixed_denominator():
    cfg = parse_run_config({"dp": True, "dp-clip": 0.5, "dp-noise-multiplier": 2.0,
                            "aggregation": "dense", "weighting": "uniform",
                            "cohort-fraction": 0.25})
    dp = UserDP.from_config(cfg, 400)
    assert dp.delta == pytest.approx(1 / 400)
    emb, bias, denom = dp.privatize(np.zeros((300, 32)), np.zeros(300))
    assert emb.std() == pytest.approx(1.0, rel=0.03) and bias.std() == pytest.approx(1.0, rel=0.2)
    assert denom.tolist() == [100.0]
    emb2, _, _ = dp.privatize(np.zeros((300, 32)), np.zeros(300))
    assert not np.allclose(emb, emb2)  # fresh entropy, not the run's seed


def federate(extra: dict) -> tuple[dict, list[dict]]:
    cfg = parse_run_config(BASE | extra)
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)
    with tempfile.TemporaryDirectory(prefix="florec-dp-") as out:
        run = run_federated(grid, cfg, Path(out))
        rows = [json.loads(line) for line in (Path(out) / "rounds.jsonl").open()]
        saved = json.loads((Path(out) / "results.json").read_text())["runs"][0]
    assert saved.get("dp") == run.get("dp")
    return run, rows


@pytest.mark.parametrize("agg", [{}, {"aggregation": "dense", "weighting": "uniform"}])
def test_dp_without_noise_and_with_a_huge_clip_equals_the_plain_run(agg):
    plain, _ = federate(agg)  # dense: every synthetic user has training rows, so D = q U = 60
    dp, rows = federate(agg | {"dp": True, "dp-clip": 1e9})
    assert dp["metrics"] == pytest.approx(plain["metrics"], abs=1e-9)
    assert dp["dp"]["epsilon"] is None and "dp-epsilon" not in rows[-1]["train"]
    assert dp["dp"]["denominator"] == (60.0 if agg else 1.0)


def test_a_small_clip_changes_the_run():
    plain, _ = federate({})
    clipped, _ = federate({"dp": True, "dp-clip": 1e-3})
    assert clipped["metrics"] != pytest.approx(plain["metrics"], abs=1e-6)


@pytest.mark.parametrize("mode", ["central", "distributed"])
def test_a_dp_run_reports_the_accountants_epsilon_per_round(mode):
    run, rows = federate({"dp": True, "dp-noise-multiplier": 1.0, "cohort-fraction": 0.5,
                          "dp-mode": mode, "secagg": mode == "distributed"})
    want = [dp_account.epsilon(0.5, 1.0, t, 1 / 60) for t in (1, 2, 3)]
    assert [r["train"]["dp-epsilon"] for r in rows] == pytest.approx(want, rel=1e-9)
    assert run["dp"]["epsilon"] == pytest.approx(want[-1]) and run["dp"]["mode"] == mode
    assert 0 < run["metrics"]["ndcg@10"] < 1
