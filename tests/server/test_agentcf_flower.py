"""AgentCF(++) through the Flower ServerApp and ClientApp: memories in the node store only."""

from __future__ import annotations

import json

import pytest

from florec.client.agentcf_node import STORE_KEY
from florec.client.node_store import open_store
from florec.models.agentcf.memory import UserMemory
from florec.models.agentcf.pipeline import load_domain_data, make_agent_llm
from florec.models.llm.encoder import SentenceEncoder
from florec.models.llm.placement import leaked_texts
from florec.recdata.errors import ConfigError, DataError
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.central_agentcf import run_federated_agentcf
from florec.sim.local_grid import LocalGrid
from florec.strategies.registry import build_strategy


def _flower_run(tmp_path, cfg):
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)
    run = run_federated(grid, cfg, tmp_path / "out")
    for msg in grid.received:
        assert not msg.has_error(), msg.error.reason
    return grid, run


def _private_texts(grid, cfg) -> list[str]:
    """Every memory text the nodes' stores hold at the end of the run."""
    texts = []
    for ctx in grid.contexts.values():
        arrays = open_store(ctx, cfg.store_spill_mb).get(STORE_KEY)
        for mem in json.loads(str(arrays["memories"][0])).values():
            texts += UserMemory.from_dict(mem).texts()
    return texts


def test_flower_run_equals_the_in_process_run_with_the_scripted_llm(tmp_path):
    cfg = parse_run_config({"model": "agentcf++", "dataset": "synthetic", "agentcf-users": 24,
                            "llm-backend": "scripted", "llm-cache": False, "encoder": "tiny",
                            "agentcf-kmeans-k": 6, "agentcf-synthetic-trend": 0.6,
                            "num-nodes": 3, "out-dir": str(tmp_path / "out")})
    grid, flower = _flower_run(tmp_path, cfg)
    local = run_federated_agentcf(cfg, 3, llm=make_agent_llm(cfg),
                                  encoder=SentenceEncoder("tiny"), data=load_domain_data(cfg))
    for key in ("mrr", "ndcg@1", "ndcg@5", "ndcg@10", "n"):
        assert flower["metrics"][key] == pytest.approx(local["metrics"][key], abs=1e-12)
    assert flower["train"] == local["train"] and flower["groups"] == local["groups"]
    assert flower["llm"]["llm_calls"] == local["llm"]["llm_calls"] > 0
    assert flower["nodes"] == 3 and flower["setting"] == "federated"
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert saved["metrics"]["mrr"] == pytest.approx(flower["metrics"]["mrr"])
    rows = [json.loads(x) for x in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["train", "groups", "rank"]
    assert rows[0]["train"] == flower["train"] and rows[2]["metrics"] == saved["metrics"]
    assert rows[2]["bytes_up"] == flower["bytes_up"] and not any("error" in r for r in rows)
    assert grid.pushed["evaluate.agentcf"] == 3  # one ranking message per node
    assert 3 <= flower["train"]["steps"] <= grid.pushed["train.agentcf"]
    assert len(_private_texts(grid, cfg)) >= 24


def test_agentcf_has_no_round_strategy():
    cfg = parse_run_config({"model": "agentcf", "dataset": "synthetic"})
    with pytest.raises(ConfigError, match="step loop"):
        build_strategy(cfg, 10)


@pytest.mark.slow
def test_no_flower_message_of_a_tiny_llm_run_carries_a_user_memory(tmp_path):
    cfg = parse_run_config({"model": "agentcf++", "dataset": "synthetic", "agentcf-users": 4,
                            "agentcf-train-max": 2, "agentcf-max-tokens": 12,
                            "agentcf-kmeans-k": 4, "llm-backend": "tiny", "llm-cache": False,
                            "encoder": "tiny", "num-nodes": 2,
                            "out-dir": str(tmp_path / "out")})
    grid, run = _flower_run(tmp_path, cfg)
    private = _private_texts(grid, cfg)
    assert len(private) >= 4
    payloads = [{k: v for rec in m.content.config_records.values() for k, v in rec.items()}
                for m in grid.sent + grid.received]
    assert leaked_texts(payloads, private, min_chars=12) == []
    assert run["train"]["item_update_bytes"] > 0 and run["metrics"]["n"] > 0


def test_a_node_failing_in_evaluate_leaves_the_finished_phases_and_a_one_line_error(tmp_path):
    cfg = parse_run_config({"model": "agentcf++", "dataset": "synthetic", "agentcf-users": 12,
                            "llm-backend": "scripted", "llm-cache": False, "encoder": "tiny",
                            "agentcf-kmeans-k": 4, "num-nodes": 2,
                            "out-dir": str(tmp_path / "out")})
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes,
                     fail=lambda pid, kind: pid == 1 and kind == "evaluate.agentcf")
    with pytest.raises(DataError, match="'evaluate' message: RuntimeError: injected failure"):
        run_federated(grid, cfg, tmp_path / "out")
    rows = [json.loads(line)
            for line in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["train", "groups", "rank"]
    train, groups, failed = rows
    assert train["train"]["steps"] >= 1 and train["llm"]["llm_calls"] > 0
    assert train["bytes_up"] > 0 and "error" not in train
    assert groups["groups"] and all(0 < n <= 12 for n in groups["groups"])
    assert "metrics" not in failed and "\n" not in failed["error"]
    assert "injected failure on partition 1" in failed["error"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["status"] == "failed"
    run = saved["runs"][0]
    assert run["train"] == train["train"] and run["metrics"] == {}
    assert run["groups"]["sizes"] == groups["groups"]
    assert run["error"].startswith("rank phase: ") and "\n" not in run["error"]
    assert set(run["phases"]) == {"train", "groups"}
