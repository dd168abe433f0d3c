"""Every SuperExec of the compose file polls for tasks as often as ``florec deploy local``'s."""

from pathlib import Path

import yaml

from florec.sim.deploy import SUPEREXEC_POLL_S

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yml"


def test_every_superexec_of_the_compose_file_polls_like_the_local_deployment():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    superexecs = [name for name in services if name.startswith("superexec-")]
    assert sorted(superexecs) == ["superexec-clientapp-0", "superexec-clientapp-1",
                                  "superexec-serverapp"]
    for name in superexecs:
        env = services[name]["environment"]
        assert float(env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]) == SUPEREXEC_POLL_S, name
