"""Federated LLKD on an in-process grid: FedAvg of head and thresholds; nothing private leaves."""

from __future__ import annotations

import numpy as np
import pytest

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



def test_macro_f1_from_pooled_counts():
    sums = {"llkd/test-tp-0": 1, "llkd/test-fp-0": 1, "llkd/test-fn-0": 1,
            "llkd/test-tp-1": 2, "llkd/test-fp-1": 1, "llkd/test-fn-1": 0}
    assert macro_f1_from_counts(sums, "test", 2) == pytest.approx((2 / 4 + 4 / 5) / 2)


def test_held_out_items_are_split_once_across_nodes():
    held_out = np.arange(3, 60, 2)
    shares = [held_out_share(held_out, 0, pid, 3) for pid in range(3)]
    every = np.concatenate([s[p] for s in shares for p in ("valid", "test")])
    assert sorted(every.tolist()) == held_out.tolist()
    assert all(len(s["valid"]) + len(s["test"]) > 0 for s in shares)


def test_shard_item_lines_give_the_same_task_as_the_split():
    from florec.models.llkd.task import build_task, parse_item_line
    from florec.recdata.item_text import item_text_string, load_item_text

    cfg = parse_run_config(BASE)
    task = load_task(cfg)
    items = load_item_text("synthetic", None, list(range(1, 81)), synthetic=cfg.synthetic_params())
    lines = [item_text_string(t) for t in items]
    again = build_task("synthetic", [parse_item_line(x) for x in lines], 4)
    assert again.classes == build_task("synthetic", items, 4).classes
    assert len(task.inputs) == len(task.gold) and task.labelled.size > 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tiny"])
def test_federated_llkd_finishes_and_sends_no_text_or_user_data(tmp_path, backend):
    cfg = parse_run_config(BASE | {"llm-backend": backend, "out-dir": str(tmp_path / "out")})
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)
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
    # the nodes trained on their users' items, and the task they built from the shard's
    # public item text equals the one the central run builds from the split
    from florec.client.app import node_setup
    from florec.client.llkd_node import node_task

    contexts = list(grid.contexts.values())
    assert sum(len(node_pool(cfg, c, node_setup(c)[1])) for c in contexts) > 0
    node = node_task(cfg, contexts[0])[0]
    assert node.classes == task.classes and np.array_equal(node.gold, task.gold)
    assert node.inputs == task.inputs
