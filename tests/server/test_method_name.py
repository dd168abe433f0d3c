import pytest

from florec.recdata.runconfig import parse_run_config
from florec.server.app import method_name


@pytest.mark.parametrize("overrides, name", [
    ({}, "fedavg-mf"),
    ({"aggregation": "sparse"}, "fedavg-mf-sparse"),
    ({"mf-loss": "fs-point"}, "fedavg-mf-fs-point"),
    ({"mf-loss": "fs-pair", "aggregation": "sparse"}, "fedavg-mf-fs-pair-approx-sparse"),
    ({"model": "sasrec"}, "fedavg-sasrec"),
    ({"model": "gru4rec", "oracle": True}, "fedavg-oracle4rec-gru4rec"),
    ({"algorithm": "fedcia", "fedcia-comm": "factored"}, "fedcia-mf-factored-r128"),
    ({"algorithm": "fedcia", "model": "gfcf", "gfcf-mode": "gsp"}, "fedcia-gfcf-gsp"),
])
def test_method_names_say_what_ran(overrides, name):
    assert method_name(parse_run_config(overrides)) == name
