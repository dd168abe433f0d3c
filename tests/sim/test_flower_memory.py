"""Memory of `florec sim`: checks in a forked child, one actor per node below the CPU count."""

import os
import sys

import pytest

from florec.recdata.errors import ConfigError, FloRecError
from florec.sim.flower_config import in_child


def _import_and_answer(name: str, x: int) -> tuple[int, bool]:
    __import__(name)
    return x * 2, name in sys.modules


def test_in_child_returns_the_result_and_keeps_the_imports_in_the_child():
    name = "xml.dom.minidom"
    if name in sys.modules:
        pytest.skip(f"{name} is already imported in this process")
    assert in_child(_import_and_answer, name, x=21) == (42, True)
    assert name not in sys.modules


def _fail() -> None:
    raise ConfigError("users-per-node=0 is not allowed; give 1 or more")


def test_in_child_raises_the_childs_exception_here():
    with pytest.raises(ConfigError, match="users-per-node=0"):
        in_child(_fail)


def test_a_child_that_dies_is_a_one_line_error_with_its_exit_code():
    with pytest.raises(FloRecError, match="exited with code 3"):
        in_child(os._exit, 3)


def test_a_federation_of_fewer_nodes_than_cpus_asks_ray_for_no_idle_actors():
    from florec.sim.flower_config import federation_config

    assert federation_config(1, 1.0, 0.0, local_cpus=2).endswith(" init-args-num-cpus=1")
    assert federation_config(3, 2.0, 0.0, local_cpus=16).endswith(" init-args-num-cpus=6")
    assert "init-args" not in federation_config(61, 1.0, 0.0, local_cpus=2)
    assert "init-args" not in federation_config(1, 1.0, 0.5, local_cpus=None)  # a Ray cluster
    assert federation_config(61, 1.0, 0.25, 2) == (
        "num-supernodes=61 client-resources-num-cpus=1 client-resources-num-gpus=0.25")
