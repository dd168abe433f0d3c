"""User-level DP for dense FedCIA: noise calibration, the accountant, refusals, whole runs."""

from __future__ import annotations

import json

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from florec.protocol import dp_account
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.dp import check_dp
from florec.strategies.fedcia_dp import SimilarityDP

BASE = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 30,
        "synthetic-interactions": 10, "dim": 8, "num-nodes": 4, "num-rounds": 2,
        "algorithm": "fedcia", "model": "mf", "align-steps": 5, "lr": 0.05, "device": "cpu"}


def test_epsilon_is_the_librarys_for_the_unsampled_gaussian_mechanism():
    dp = SimilarityDP(clip=1.0, z=1.2, n_users=943, delta=1 / 943)
    acc = rdp.RdpAccountant(list(dp_account.ORDERS))
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.2), 4))
    assert dp.epsilon(4) == pytest.approx(acc.get_epsilon(1 / 943), rel=1e-12)
    assert dp.epsilon(2) < dp.epsilon(4)


def test_dp_epsilon_calibrates_z_for_every_client_every_round():
    cfg = parse_run_config(BASE | {"dp": True, "dp-epsilon": 8.0, "num-rounds": 4})
    dp = SimilarityDP.from_config(cfg, 943)
    assert dp.epsilon(4) == pytest.approx(8.0, abs=0.01)
    assert dp_account.epsilon(1.0, 0.95 * dp.z, 4, 1 / 943) > 8.0


def test_noise_has_std_z_times_twice_the_clip_and_the_release_is_symmetric():
    dp = SimilarityDP(clip=0.5, z=3.0, n_users=100, delta=0.01)
    assert dp.sensitivity == 1.0 and dp.noise_std == 3.0
    out = dp.privatize(np.zeros((400, 400)))
    np.testing.assert_array_equal(out, out.T)
    # sym() halves the variance off the diagonal: (N_ij + N_ji) / 2 has std z Delta / sqrt(2)
    off = out[np.triu_indices(400, 1)]
    assert off.std() == pytest.approx(3.0 / np.sqrt(2), rel=0.02)
    assert np.diag(out).std() == pytest.approx(3.0, rel=0.15)
    assert not np.allclose(out, dp.privatize(np.zeros((400, 400))))  # fresh entropy


@pytest.mark.parametrize(("extra", "word"), [
    ({"fedcia-comm": "factored"}, "fedcia-comm='dense'"),
    ({"model": "gfcf"}, "trained backbone"),
    ({"fedcia-weighting": "interactions"}, "fixed denominator"),
    ({"fraction-train": 0.5}, "fraction-train=1"),
    ({"noise-scale": 0.001}, "noise-scale=0"),
    ({"dp-mode": "distributed"}, "central"),
    ({"attack-targets": "unpopular:5"}, "attack"),
    ({"defense": "median"}, "robust aggregation"),
    ({"algorithm": "local"}, "'fedavg'"),
])
def test_fedcia_settings_dp_cannot_account_for_are_refused_in_one_line(extra, word):
    cfg = parse_run_config(BASE | {"dp": True} | extra)
    with pytest.raises(ConfigError, match=word) as err:
        check_dp(cfg)
    assert "\n" not in str(err.value)


def federate(tmp_path, **extra):
    cfg = parse_run_config(BASE | extra)
    run = run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False), cfg,
                        tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").open()]
    return run, rows


def test_a_huge_clip_without_noise_equals_the_plain_run_and_a_small_clip_does_not(tmp_path):
    plain, _ = federate(tmp_path / "plain")
    huge, rows = federate(tmp_path / "huge", dp=True, **{"dp-clip": 1e12})
    assert huge["metrics"] == pytest.approx(plain["metrics"], abs=1e-6)
    assert huge["dp"]["epsilon"] is None and "dp-epsilon" not in rows[-1]["train"]
    small, _ = federate(tmp_path / "small", dp=True, **{"dp-clip": 1e-4})
    assert small["metrics"] != pytest.approx(plain["metrics"], abs=1e-4)


def test_a_noised_run_reports_the_accountants_epsilon_per_round(tmp_path):
    run, rows = federate(tmp_path, dp=True, **{"dp-noise-multiplier": 2.0, "dp-clip": 0.5})
    want = [dp_account.epsilon(1.0, 2.0, t, 1 / 40) for t in (1, 2)]
    assert [r["train"]["dp-epsilon"] for r in rows] == pytest.approx(want, rel=1e-9)
    saved = json.loads((tmp_path / "results.json").read_text())["runs"][0]["dp"]
    assert saved["epsilon"] == pytest.approx(want[-1]) and saved["sensitivity"] == 1.0
    assert 0 <= run["metrics"]["ndcg@10"] <= 1
