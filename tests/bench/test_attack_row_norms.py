"""bench/attack_row_norms.py: one norm per uploaded benign row, and the strategy left as it was."""

import numpy as np

from florec.strategies import robust


def test_every_uploaded_row_gets_a_finite_norm_and_the_rule_is_restored(bench_script,
                                                                        small_config):
    norms_of = bench_script("attack_row_norms").benign_row_norms
    aggregate = robust.row_aggregate
    norms = norms_of(small_config | {"aggregation": "sum"}, rounds=2)
    assert robust.row_aggregate is aggregate
    assert len(norms) == 2
    for n in norms:  # every user touches rows, and a trained row moves
        assert len(n) > small_config.get("num-nodes", 1) and np.all(np.isfinite(n))
        assert np.all(n >= 0) and n.max() > 0


def test_rows_are_changes_not_absolute_rows(bench_script, small_config):
    config = small_config | {"aggregation": "sum", "lr": 1e-9}
    norms = bench_script("attack_row_norms").benign_row_norms(config, rounds=1)
    assert len(norms) == 1 and len(norms[0]) > 0
    assert norms[0].max() < 1e-6  # a vanishing step moves no row (absolute rows have norm ~1)
