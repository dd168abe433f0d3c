"""Federated CoT-Rec on an in-process grid: placement of LLM work, federated LoRA, pooling."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message

from florec.client.cotrec_node import USER_KEY, node_tools
from florec.client.node_store import open_store
from florec.client.seq_node import node_sequences
from florec.models.cotrec.pipeline import histories
from florec.models.cotrec.prompts import user_prompt
from florec.protocol.codec import from_record
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.fedavg_lora import fedavg_adapters

BASE = {"model": "cotrec", "algorithm": "fedavg", "dataset": "synthetic",
        "synthetic-users": 60, "synthetic-items": 50, "synthetic-interactions": 20, "dim": 16,
        "heads": 2, "max-seq-len": 20, "lr": 0.005, "llm-cache": False, "encoder": "tiny",
        "cotrec-mapb-users": 4, "cotrec-item-tokens": 8, "cotrec-user-tokens": 8,
        "device": "cpu", "ks": "10", "num-nodes": 3, "num-rounds": 2, "local-batch-size": 64}



def _run(tmp_path, **kw):
    cfg = parse_run_config(BASE | {"out-dir": str(tmp_path / "out")} | kw)
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)
    return cfg, grid, run_federated(grid, cfg, tmp_path / "out")


def _strings(msg: Message) -> list[str]:
    """Every string a message carries: config values, record and metric names, text arrays."""
    out: list[str] = []
    content = msg.content
    for rec in content.config_records.values():
        out += [str(k) for k in rec] + [str(v) for v in rec.values()]
    for rec in content.metric_records.values():
        out += [str(k) for k in rec]
    for rec in content.array_records.values():
        for name, arr in from_record(rec).items():
            assert arr.dtype.kind not in "USO", f"a message carries a text array '{name}'"
            out.append(name)
    return out


def test_fedavg_adapters_is_the_sample_weighted_mean():
    a = {"x.lora_A": np.ones((2, 3), np.float32), "x.lora_B": np.zeros((3, 2), np.float32)}
    b = {"x.lora_A": 3 * np.ones((2, 3), np.float32), "x.lora_B": np.ones((3, 2), np.float32)}
    mean = fedavg_adapters([a, b], [1, 3])
    np.testing.assert_allclose(mean["x.lora_A"], 2.5)
    np.testing.assert_allclose(mean["x.lora_B"], 0.75)
    assert fedavg_adapters([a, b], [0, 0]) is None
    with pytest.raises(ValueError, match="one lora_r"):
        fedavg_adapters([a, {"x.lora_A": np.ones((4, 3))}], [1, 1])


def test_fedavg_adapters_leaves_out_nodes_that_trained_nothing():
    a = {"x.lora_A": np.ones((2, 3), np.float32), "x.lora_B": np.zeros((3, 2), np.float32)}
    b = {"x.lora_A": 3 * np.ones((2, 3), np.float32), "x.lora_B": np.ones((3, 2), np.float32)}
    # a node with no sample may send anything, the empty adapter included: weight 0, no vote
    mean = fedavg_adapters([{}, a, b, {"x.lora_A": np.ones((4, 3))}], [0, 1, 3, 0])
    np.testing.assert_allclose(mean["x.lora_A"], 2.5)
    np.testing.assert_allclose(mean["x.lora_B"], 0.75)
    assert fedavg_adapters([{}, a], [0, 0]) is None


def test_the_ranker_counts_users_whose_best_round_tokens_are_missing(tmp_path, monkeypatch):
    from florec.client import cotrec_node

    config = {"llm-backend": "scripted", "scripted-p": 1.0, "cotrec-init": "title",
              "cotrec-ranker": "untuned"}
    _, _, kept = _run(tmp_path / "kept", **config)
    assert kept["ranker"]["untuned"]["tokens_fallback"] == 0
    # every node drops every round's copy (as a node that missed the best round's evaluation):
    # the ranker used to take the last round's tokens silently
    keep = cotrec_node.keep_round_tokens
    monkeypatch.setattr(cotrec_node, "keep_round_tokens", lambda store, rounds: keep(store, set()))
    cfg, grid, lost = _run(tmp_path / "lost", **config)
    assert lost["ranker"]["untuned"]["tokens_fallback"] == cfg.synthetic_users
    counts = [m.content.metric_records["metrics"]["tokens-fallback"] for m in grid.received
              if "tokens-fallback" in m.content.metric_records.get("metrics", {})]
    assert len(counts) == cfg.num_nodes and all(c > 0 for c in counts)


def _forbidden(cfg, grid) -> set[str]:
    """History texts of every user (prompt, joined titles) and the nodes' preference texts."""
    texts, _, _ = node_tools(cfg, next(iter(grid.contexts.values())))
    hists = [h for ctx in grid.contexts.values()  # each node's shard: its own users only
             for h in histories(node_sequences(ctx, cfg), np.arange(60), "train",
                                cfg.cotrec_history, texts)]
    assert sum(1 for h in hists if h) >= 50
    prefs = [str(p) for c in grid.contexts.values()
             for p in open_store(c, cfg.store_spill_mb).get(USER_KEY)["prefs"]]
    assert len(prefs) == 60
    return ({user_prompt(h) for h in hists if h} | {"\n".join(h) for h in hists if h}
            | {"; ".join(h) for h in hists if h} | set(prefs)) - {""}


def _assert_no_history(grid, forbidden: set[str]) -> None:
    for msg in grid.sent + grid.received:
        assert not msg.has_error(), msg.error.reason if msg.has_error() else ""
        for s in _strings(msg):
            assert s not in forbidden
            assert not any(f in s for f in forbidden if len(f) > 20)


def test_no_message_carries_history_text_with_a_tiny_llm_and_federated_lora(tmp_path):
    cfg, grid, run = _run(tmp_path, **{"llm-backend": "tiny", "cotrec-lora-rounds": 2,
                                       "num-rounds": 1})
    kinds = {m.metadata.message_type for m in grid.sent}
    assert {"train", "train.setup", "evaluate"} <= kinds
    lora_msgs = [m for m in grid.sent
                 if m.content.config_records["config"].get("cotrec-phase") == "lora"]
    assert len(lora_msgs) == 2 * cfg.num_nodes  # two federated LoRA rounds
    assert all(len(m.content.array_records["adapter"]) for m in lora_msgs)
    _assert_no_history(grid, _forbidden(cfg, grid))
    ranker = run["ranker"]
    assert ranker["lora"]["samples"] > 0
    assert 0 <= ranker["lora"]["ndcg@10"] <= ranker["lora"]["hr@10"] <= 1
    assert ranker["untuned"]["hr@10"] == pytest.approx(ranker["retriever"]["hr@10"])
    assert run["phases"]["user-perception"]["llm_calls"] == 60
    assert run["phases"]["item-perception"]["llm_calls"] == 50


def test_preference_texts_that_quote_the_history_stay_on_the_nodes(tmp_path, monkeypatch):
    from florec.client import cotrec_node
    from florec.models.llm.scripted import ScriptedLLM

    def leaky_llm(cfg, book=None):  # answers quote the prompt's last history lines
        return ScriptedLLM(rule_text=lambda p: "likes " + " / ".join(p.splitlines()[-3:]),
                           progress=False)

    monkeypatch.setattr(cotrec_node, "make_llm", leaky_llm)
    cotrec_node._llm_and_encoder.cache_clear()
    cfg, grid, run = _run(tmp_path, **{"llm-backend": "scripted", "cotrec-ranker": "untuned"})
    cotrec_node._llm_and_encoder.cache_clear()
    forbidden = _forbidden(cfg, grid)
    assert sum(f.startswith("likes Item") for f in forbidden) >= 50
    _assert_no_history(grid, forbidden)
    assert run["ranker"]["untuned"]["hr@10"] == pytest.approx(run["ranker"]["retriever"]["hr@10"])


def test_scripted_control_with_p_one_puts_every_covered_target_first(tmp_path):
    _, _, run = _run(tmp_path, **{"llm-backend": "scripted", "scripted-p": 1.0,
                                  "cotrec-init": "title", "cotrec-ranker": "untuned"})
    base, ranked = run["ranker"]["retriever"], run["ranker"]["untuned"]
    assert base["coverage"] > 0
    assert base["ndcg@10"] == pytest.approx(run["metrics"]["ndcg@10"], abs=1e-9)
    assert ranked["ndcg@10"] == pytest.approx(base["coverage"], abs=1e-9)  # rank 1 if covered
    assert ranked["hr@10"] == pytest.approx(base["hr@10"], abs=1e-12)


@pytest.mark.parametrize("cut", [1, 2])
def test_a_resumed_run_still_runs_the_ranker_at_a_best_round_before_the_checkpoint(tmp_path, cut):
    # cut=2: killed in the ranker phase after the last round's checkpoint, resumed straight
    # into it; cut=1: resumed for round 2. Either way the best round's arrays come back.
    config = {"llm-backend": "scripted", "scripted-p": 1.0, "cotrec-init": "title",
              "cotrec-ranker": "untuned", "checkpoint-every": 1, "store-spill-mb": 0.0}
    _, _, whole = _run(tmp_path / "whole", **config)
    _run(tmp_path / "cut", **config, **{"num-rounds": cut})
    _, _, resumed = _run(tmp_path / "cut", **config, resume=True)
    assert resumed["best_round"] == whole["best_round"]
    assert "ranker" in resumed, "the resumed run skipped the ranker phase"
    for part in ("retriever", "untuned"):
        for key in ("ndcg@10", "hr@10"):
            assert resumed["ranker"][part][key] == pytest.approx(whole["ranker"][part][key],
                                                                 abs=1e-9), (part, key)


def _round_arrays_probe(monkeypatch) -> dict[str, list]:
    """Record how many rounds' arrays the strategy holds while evaluating and checkpointing."""
    from florec.strategies.fedavg_lora import BestRoundArrays

    seen: dict[str, list] = {"held": [], "checkpointed": []}
    evaluate, state = BestRoundArrays.configure_evaluate, BestRoundArrays.state_arrays

    def probe_evaluate(self, *args, **kw):
        out = evaluate(self, *args, **kw)
        seen["held"].append(len(self.round_arrays))
        return out

    def probe_state(self):
        arrays = state(self)
        seen["checkpointed"].append({k.split("/")[0] for k in arrays
                                     if k.startswith(self.round_prefix)})
        return arrays

    monkeypatch.setattr(BestRoundArrays, "configure_evaluate", probe_evaluate)
    monkeypatch.setattr(BestRoundArrays, "state_arrays", probe_state)
    return seen


def test_the_strategy_keeps_only_the_best_round_and_the_ranker_matches_keeping_all(
        tmp_path, monkeypatch):
    from florec.server import app as server_app
    from florec.server.selection import select_round
    from florec.strategies.fedavg_lora import ROUND_PREFIX, BestRoundArrays

    # 3 rounds whose selection metric is forced so that round 2 is the best and round 3 is
    # evaluated after it: the strategy must keep round 2 past round 3 and drop rounds 1 and 3
    # (the real metric's best round moves with lr, dropout masks and seeds)
    forced = {1: 0.1, 2: 0.9, 3: 0.5}

    def select_forced(state, rnd, metric, valid, test, coverage):
        return select_round(state, rnd, metric, valid | {metric: forced[rnd]}, test, coverage)

    monkeypatch.setattr(server_app, "select_round", select_forced)
    config = {"llm-backend": "scripted", "scripted-p": 1.0, "cotrec-init": "title",
              "cotrec-ranker": "untuned", "num-rounds": 3, "lr": 0.2, "checkpoint-every": 1}
    seen = _round_arrays_probe(monkeypatch)
    _, grid, run = _run(tmp_path / "best", **config)
    assert run["best_round"] == 2
    assert seen["held"] == [1, 2, 2]  # the best so far plus the round being evaluated
    assert seen["checkpointed"] == [{f"{ROUND_PREFIX}1"}, {f"{ROUND_PREFIX}2"},
                                    {f"{ROUND_PREFIX}2"}]
    ranker_rounds = {m.content.config_records["config"]["best-round"] for m in grid.sent
                     if m.content.config_records["config"].get("cotrec-phase") == "ranker"}
    assert ranker_rounds == {2}
    # the behaviour before the change: every evaluated round kept, same best round and ranker
    monkeypatch.setattr(BestRoundArrays, "best_round_selected", lambda self, best: None)
    _, _, every = _run(tmp_path / "every", **config)
    assert seen["held"][-3:] == [1, 2, 3]
    assert every["best_round"] == run["best_round"]
    for part in ("retriever", "untuned"):
        for key in ("ndcg@10", "hr@10"):
            assert run["ranker"][part][key] == pytest.approx(every["ranker"][part][key],
                                                             abs=1e-12), (part, key)


def test_node_stores_keep_trained_tokens_and_only_the_best_and_last_rounds_copies(tmp_path):
    from florec.client.cotrec_node import ROUND_TOKENS

    rounds = 4
    cfg, grid, run = _run(tmp_path, **{"llm-backend": "scripted", "cotrec-ranker": "none",
                                       "num-rounds": rounds, "lr": 0.05})
    best = run["best_round"]
    for ctx in grid.contexts.values():
        store = open_store(ctx, cfg.store_spill_mb)
        copies = sorted(int(n[len(ROUND_TOKENS):]) for n in store.names()
                        if n.startswith(ROUND_TOKENS))
        # bounded: the best round's copy, the last one and at most one more (the best before
        # the last round was selected), never one per round
        assert best in copies and rounds in copies and len(copies) <= 2, store.names()
        assert len(store.names()) <= 4  # tokens, optimizer and those copies
        # the trained tokens persist from round to round (the last copy is the latest state)
        trained, last = store.get(USER_KEY)["rows"], store.get(f"{ROUND_TOKENS}{rounds}")["rows"]
        np.testing.assert_array_equal(trained, last)
        if best != rounds:
            assert not np.allclose(store.get(f"{ROUND_TOKENS}{best}")["rows"], last)
