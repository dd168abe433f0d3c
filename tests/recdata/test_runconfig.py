import tomllib
from pathlib import Path

import pytest

from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig, parse_run_config

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_config_lists_every_knob_with_its_default():
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert app_config == RunConfig().to_flower()


def test_unknown_key_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as err:
        parse_run_config({"learning-rate": 0.1})
    msg = str(err.value)
    assert "unknown config key 'learning-rate'" in msg and "lr" in msg and "\n" not in msg


@pytest.mark.parametrize("bad, fragment", [
    ({"aggregation": "mean"}, "aggregation"),
    ({"lr": -1.0}, "lr"),
    ({"ks": "ten"}, "ks"),
    ({"selection-metric": "ndcg@5"}, "selection-metric"),
    ({"device": "tpu"}, "'device'.*use auto, cpu, cuda, cuda:N or mps"),
])
def test_bad_values_name_the_key(bad, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_run_config(bad)


def test_hyphenated_keys_parse():
    cfg = parse_run_config({"num-rounds": 3, "ks": "5,10", "selection-metric": "recall@5"})
    assert cfg.num_rounds == 3 and cfg.k_list == [5, 10]


def test_device_accepts_the_torch_device_names():
    for name in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert parse_run_config({"device": name}).device == name
