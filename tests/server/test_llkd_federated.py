"""Federated LLKD on an in-process grid: FedAvg of head and thresholds; nothing private leaves."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message

from florec.client.llkd_node import held_out_share, node_pool
from florec.models.llkd.task import load_task
from florec.protocol.codec import from_record
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.llkd import macro_f1_from_counts

BASE = {"model": "llkd", "algorithm": "fedavg", "dataset": "synthetic",
        "synthetic-users": 60, "synthetic-items": 80, "synthetic-interactions": 10,
        "llm-cache": False, "encoder": "tiny", "llkd-classes": 4, "llkd-ema": 0.9,
        "llkd-batch-size": 16, "device": "cpu", "num-nodes": 3, "num-rounds": 2,
        "selection-metric": "hr@1", "ks": "1,10"}


class RecordingGrid(LocalGrid):
    """A LocalGrid that keeps every message the server sends."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Message] = []

    def push_messages(self, messages):  # noqa: D102
        messages = list(messages)
        self.sent.extend(messages)
        return super().push_messages(messages)


def test_macro_f1_from_pooled_counts():
    sums = {"llkd/test-tp-0": 1, "llkd/test-fp-0": 1, "llkd/test-fn-0": 1,
            "llkd/test-tp-1": 2, "llkd/test-fp-1": 1, "llkd/test-fn-1": 0}
    assert macro_f1_from_counts(sums, "test", 2) == pytest.approx((2 / 4 + 4 / 5) / 2)


def test_held_out_items_are_split_once_across_nodes():
    cfg = parse_run_config(BASE)
    shares = [held_out_share(cfg, pid, 3) for pid in range(3)]
    every = np.concatenate([s[p] for s in shares for p in ("valid", "test")])
    assert len(every) == len(set(every.tolist()))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tiny"])
def test_federated_llkd_finishes_and_sends_no_text_or_user_data(tmp_path, backend):
    cfg = parse_run_config(BASE | {"llm-backend": backend, "out-dir": str(tmp_path / "out")})
    grid = RecordingGrid(cfg.to_flower(), cfg.num_nodes)
    run = run_federated(grid, cfg, tmp_path / "out")
    assert run["best_round"] in (1, 2)
    assert 0.0 <= run["metrics"]["hr@1"] <= 1.0
    assert set(run["llkd"]["macro-f1"]) == {"valid", "test"}
    task = load_task(cfg)
    titles = {t for t in task.inputs if t}
    replies = [m for m in grid.received if not m.has_error()]
    for msg in [*grid.sent, *replies]:
        content = msg.content
        for rec in content.array_records.values():
            for name, arr in from_record(rec).items():
                assert arr.dtype.kind == "f", f"array '{name}' is not float"
                assert name.startswith(("head.", "tau-")), f"unexpected array '{name}'"
        strings = [str(v) for rec in content.config_records.values() for v in rec.values()]
        strings += [str(k) for rec in content.metric_records.values() for k in rec]
        assert not any(t in s for t in titles for s in strings)
        for rec in content.metric_records.values():  # counts only: no item or user ids
            assert not any(k.startswith(("item", "user")) for k in rec)
    # a node's pool (its users' items) is never sent: the replies' sizes are counts only
    pools = [node_pool(cfg, grid_bucket) for grid_bucket in _buckets(grid, cfg)]
    assert sum(len(p) for p in pools) > 0


def _buckets(grid, cfg):
    from florec.client.app import node_setup

    return [node_setup(ctx)[1] for ctx in grid.contexts.values()]
