"""sim/deploy_run.report_nodes: which nodes did not reply, named once with their partition."""

import json
from types import SimpleNamespace

from florec.sim.deploy_run import report_nodes


def _deployment(exited=None):
    return SimpleNamespace(num_nodes=2, node_ids=lambda: {0: 501, 1: 777}, exited=exited or {},
                           describe=lambda name: f"{name} (SuperNode ID 777)")


def test_a_dropped_node_is_named_once_with_its_partition(tmp_path):
    rows = [{"round": 1, "train": {"num-replies": 2}, "dropped": []},
            {"round": 2, "train": {"num-replies": 1}, "dropped": ["node 777 (partition 1)"]},
            {"round": 3, "train": {"num-replies": 1}, "dropped": ["node 777"]}]
    (tmp_path / "rounds.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    lines = report_nodes(_deployment({"supernode-1": -9}), tmp_path)
    assert lines == [
        "round 2: 1 of 2 sampled nodes replied; failed replies: node 777 (partition 1)",
        "round 3: 1 of 2 sampled nodes replied; failed replies: node 777 (partition 1)",
        "supernode-1 (SuperNode ID 777) exited with code -9 during the run"]
