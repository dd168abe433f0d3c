"""Federated AgentCF(++): user memories stay on the nodes; the scripted run equals the central."""

from __future__ import annotations

import pytest

from florec.models.agentcf.pipeline import load_domain_data, make_agent_llm
from florec.models.llm import LLMConfig, build_llm
from florec.models.llm.placement import leaked_texts
from florec.recdata.runconfig import parse_run_config
from florec.sim.central_agentcf import run_central_agentcf, run_federated_agentcf


def test_scripted_federated_run_equals_the_central_run(word_encoder):
    cfg = parse_run_config({"model": "agentcf++", "dataset": "synthetic", "agentcf-users": 40,
                            "llm-backend": "scripted", "llm-cache": False,
                            "agentcf-synthetic-trend": 0.6})
    data = load_domain_data(cfg)
    central = run_central_agentcf(cfg, llm=make_agent_llm(cfg), encoder=word_encoder,
                                  data=data)
    fed = run_federated_agentcf(cfg, 4, llm=make_agent_llm(cfg), encoder=word_encoder,
                                data=data)
    for key in ("mrr", "ndcg@1", "ndcg@5", "ndcg@10"):
        assert fed["metrics"][key] == pytest.approx(central["metrics"][key], abs=1e-12)
    assert fed["groups"] == central["groups"]
    assert fed["train"]["item_update_bytes"] == central["train"]["item_update_bytes"] > 0
    assert fed["bytes_up"] > fed["train"]["item_update_bytes"]


@pytest.mark.slow
def test_no_message_of_a_tiny_llm_run_carries_a_user_memory(word_encoder):
    cfg = parse_run_config({"model": "agentcf++", "dataset": "synthetic", "agentcf-users": 4,
                            "agentcf-train-max": 2, "agentcf-max-tokens": 12,
                            "agentcf-kmeans-k": 4, "llm-cache": False})
    llm = build_llm(LLMConfig(backend="tiny", cache=False, progress=False, batch_size=64))
    sent: list = []
    nodes_seen: list = []

    def on_message(direction: str, kind: str, msg) -> None:
        sent.append(msg["agentcf"])

    from florec.client import agentcf_node

    original = agentcf_node.AgentCFNode.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        nodes_seen.append(self)

    agentcf_node.AgentCFNode.__init__ = spy
    try:
        run = run_federated_agentcf(cfg, 2, llm=llm, encoder=word_encoder,
                                    on_message=on_message)
    finally:
        agentcf_node.AgentCFNode.__init__ = original
    private = [t for node in nodes_seen for m in node.memories().values() for t in m.texts()]
    assert len(nodes_seen) == 2 and len(private) >= 4
    payloads = [dict(rec.items()) for rec in sent]
    assert leaked_texts(payloads, private, min_chars=12) == []
    assert run["train"]["item_update_bytes"] > 0 and run["metrics"]["n"] > 0
