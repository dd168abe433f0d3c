"""Federated LLMD4Rec on an in-process grid: it finishes, and messages carry no per-user data."""

from __future__ import annotations

import numpy as np
import pytest

from florec.client.seq_node import node_sequences
from florec.models.llmd4rec.llm_step import build_prompts
from florec.models.registry import sequential_from_config
from florec.protocol.codec import from_record
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.llmd4rec import iteration_of

BASE = {"model": "llmd4rec", "algorithm": "fedavg", "dataset": "synthetic",
        "synthetic-users": 45, "synthetic-items": 40, "synthetic-interactions": 12, "dim": 16,
        "heads": 2, "max-seq-len": 12, "llm-cache": False, "device": "cpu", "ks": "10",
        "num-nodes": 3, "num-rounds": 2, "llmd4rec-pretrain-rounds": 1,
        "llmd4rec-iterations": 1, "llmd4rec-crm-epochs": 1, "llmd4rec-positions": 1,
        "llmd4rec-history": 4, "llmd4rec-crm-lr": 0.005, "llmd4rec-candidates": 5}



def _run(tmp_path, **kw):
    cfg = parse_run_config(BASE | {"out-dir": str(tmp_path / "out")} | kw)
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)
    return cfg, grid, run_federated(grid, cfg, tmp_path / "out")


def test_iteration_schedule_opens_every_e_rounds_after_pretraining():
    cfg = parse_run_config({"model": "llmd4rec", "llmd4rec-pretrain-rounds": 2,
                            "llmd4rec-iterations": 2, "llmd4rec-crm-epochs": 3})
    assert [iteration_of(cfg, r) for r in range(1, 11)] == [0, 0, 1, 0, 0, 2, 0, 0, 0, 0]


def _allowed_arrays(cfg) -> set[str]:
    crm = sequential_from_config(cfg.model_copy(update={"model": "sasrec"}), 40)
    return set(crm.shared_state())


@pytest.mark.slow
def test_tiny_llm_federation_finishes_and_sends_only_adapters_weights_and_counts(tmp_path):
    cfg, grid, run = _run(tmp_path, **{"llm-backend": "tiny"})
    assert run["best_round"] is not None and run["metrics"]["ndcg@10"] >= 0
    assert [it["iteration"] for it in run["iterations"]] == [1]
    assert run["phases"]["teacher-fit"]["llm_calls"] == 0  # training is not a cached call
    assert run["phases"]["teacher-probs"]["llm_calls"] > 0
    assert 0 <= run["rerank"]["rerank/ndcg@5"] <= run["rerank"]["rerank/hr@5"] <= 1
    phases = [m.content.config_records["config"].get("llmd4rec-phase")
              for m in grid.sent if m.metadata.message_type == "train"]
    assert phases.count("lora") == phases.count("score") == cfg.num_nodes
    adapters = [from_record(m.content.array_records["adapter"]) for m in grid.sent
                if "adapter" in m.content.array_records]
    assert any(adapters) and all("lora_" in k for a in adapters for k in a)
    # the scoring pass uses the averaged, trained adapter (B moved off zero)
    assert any(np.abs(v).sum() > 0 for k, v in adapters[-1].items() if "lora_B" in k)
    allowed = _allowed_arrays(cfg)
    texts, users = _history_texts(cfg, grid)
    for msg in grid.sent + grid.received:
        assert not msg.has_error(), msg.error.reason if msg.has_error() else ""
        for name, rec in msg.content.array_records.items():
            for key, arr in from_record(rec).items():
                assert arr.dtype.kind not in "USO"
                assert key in allowed or (name == "adapter" and "lora_" in key), key
                assert arr.shape[0] not in users, f"{key} has one row per user"
        for rec in (*msg.content.config_records.values(), *msg.content.metric_records.values()):
            for key, value in rec.items():
                assert not any(t in str(key) or t in str(value) for t in texts)


@pytest.mark.slow
def test_a_node_without_a_covered_sample_does_not_stop_the_adapter_average(tmp_path,
                                                                           monkeypatch):
    import dataclasses

    from florec.client import llmd4rec_node

    def none_covered_on_user_0s_node(model, windows, users, *args):
        ds = training_set(model, windows, users, *args)
        return dataclasses.replace(ds, targets=np.full(len(ds), -1)) if 0 in users else ds

    training_set = llmd4rec_node.training_set
    monkeypatch.setattr(llmd4rec_node, "training_set", none_covered_on_user_0s_node)
    # iteration 1 starts from the server's empty adapter: the idle node used to send it back
    # ({}, 0 samples) and the average failed on names ("the nodes' adapters differ")
    cfg, grid, run = _run(tmp_path, **{"llm-backend": "tiny", "num-nodes": 2,
                                       "synthetic-users": 30, "llmd4rec-rerank": False})
    assert run["iterations"][0]["nodes"] == 2 and 0 < run["iterations"][0]["coverage"] < 1
    fit = [m for m in grid.received if "adapter" in m.content.array_records]
    samples = sorted(float(m.content.metric_records["metrics"]["num-samples"]) for m in fit)
    assert len(fit) == 2 and samples[0] == 0 < samples[1]
    idle = from_record(next(m for m in fit if not m.content.metric_records["metrics"][
        "num-samples"]).content.array_records["adapter"])
    assert idle and all(not v.any() for k, v in idle.items() if "lora_B" in k)  # the start
    scored = [from_record(m.content.array_records["adapter"]) for m in grid.sent
              if m.content.config_records["config"].get("llmd4rec-phase") == "score"]
    trained = from_record(next(m for m in fit if m.content.metric_records["metrics"][
        "num-samples"]).content.array_records["adapter"])
    for key, value in trained.items():  # the average over the one node that trained
        np.testing.assert_allclose(scored[0][key], value, rtol=1e-6)


def _history_texts(cfg, grid) -> tuple[set[str], set[int]]:
    """Every node's users' history titles and prompts, and the node user counts."""
    from florec.recdata.shard import shard_of_node

    texts: set[str] = set()
    counts = set()
    for ctx in grid.contexts.values():
        shard = shard_of_node(cfg, dict(ctx.node_config))
        items = shard.item_texts()
        users = shard.users
        counts.add(len(users))
        windows = node_sequences(ctx, cfg).inputs(users, "train", cfg.max_seq_len)
        cands = np.tile(np.arange(cfg.llmd4rec_candidates), (len(users), 1))
        slots = cands.copy()
        texts |= set(build_prompts(windows, cands, slots, items, cfg.llmd4rec_history, "rank"))
        texts |= {items[t - 1] for row in windows for t in row if t > 0}
    return texts - {""}, counts


@pytest.mark.slow
def test_scripted_federation_skips_lora_and_still_distils(tmp_path):
    _, grid, run = _run(tmp_path, **{"llm-backend": "scripted", "scripted-p": 1.0})
    assert run["iterations"][0]["teacher_top1"] == pytest.approx(1.0)
    kd = [float(m.content.metric_records["metrics"]["kd-samples"]) for m in grid.received
          if "kd-samples" in m.content.metric_records.get("metrics", {})]
    assert kd and max(kd) > 0
    assert run["rerank"]["rerank/ndcg@5"] == pytest.approx(run["rerank"]["coverage"])


@pytest.mark.slow
def test_item_weighted_crm_replies_carry_the_nodes_item_counts(tmp_path):
    from florec.protocol.item_counts import COUNTS_RECORD, item_counts

    cfg, grid, run = _run(tmp_path, **{"llm-backend": "scripted", "scripted-p": 0.5,
                                       "aggregation": "item-weighted", "llmd4rec-rerank": False})
    assert run["best_round"] is not None
    crm = [m for m in grid.received if "kd-samples" in m.content.metric_records.get("metrics", {})]
    assert len(crm) == cfg.num_rounds * cfg.num_nodes
    want = {}
    for ctx in grid.contexts.values():
        users = np.arange(cfg.synthetic_users)
        windows = node_sequences(ctx, cfg).inputs(users, "train", cfg.max_seq_len)
        want[int(ctx.node_config["partition-id"])] = item_counts(windows, 40)
    for msg in crm:
        pid = int(msg.content.metric_records["metrics"]["partition-id"])
        got = from_record(msg.content.array_records[COUNTS_RECORD])["counts"]
        np.testing.assert_array_equal(got, want[pid])


@pytest.mark.slow
def test_the_strategy_keeps_only_the_best_round_and_reranks_it_as_if_it_kept_all(
        tmp_path, monkeypatch):
    from florec.strategies.fedavg_lora import BestRoundArrays

    held, checkpointed = [], []
    evaluate, state = BestRoundArrays.configure_evaluate, BestRoundArrays.state_arrays

    def probe_evaluate(self, *args, **kw):
        out = evaluate(self, *args, **kw)
        held.append(len(self.round_arrays))
        return out

    def probe_state(self):
        arrays = state(self)
        checkpointed.append({k.split("/")[0] for k in arrays if k.startswith("llmd4rec-round-")})
        return arrays

    monkeypatch.setattr(BestRoundArrays, "configure_evaluate", probe_evaluate)
    monkeypatch.setattr(BestRoundArrays, "state_arrays", probe_state)
    # crm-lr=0.05 over 3 rounds: round 2 is the best, round 3 is evaluated after it
    config = {"llm-backend": "scripted", "scripted-p": 1.0, "num-rounds": 3,
              "llmd4rec-crm-lr": 0.05, "checkpoint-every": 1}
    _, grid, run = _run(tmp_path / "best", **config)
    assert run["best_round"] == 2, "the fixture no longer has a best round before the last"
    assert held == [1, 2, 2]
    assert checkpointed == [{"llmd4rec-round-1"}, {"llmd4rec-round-2"}, {"llmd4rec-round-2"}]
    assert [m.content.config_records["config"]["server-round"] for m in grid.sent
            if m.content.config_records["config"].get("llmd4rec-phase") == "rerank"] \
        == [2] * 3
    # before the change every evaluated round was kept: same best round, same re-ranking
    monkeypatch.setattr(BestRoundArrays, "best_round_selected", lambda self, best: None)
    _, _, every = _run(tmp_path / "every", **config)
    assert held[-3:] == [1, 2, 3]
    assert every["best_round"] == 2
    assert run["rerank"] == pytest.approx(every["rerank"], abs=1e-12)


def test_the_checkpoint_round_trips_the_adapter_iterations_and_phases():
    from florec.strategies.llmd4rec import FedLLMD4Rec

    cfg = parse_run_config(BASE)
    strategy = FedLLMD4Rec(cfg)
    rng = np.random.default_rng(0)
    strategy.adapter = {"base_model.q_proj.lora_A.weight": rng.random((2, 8), np.float32),
                        "base_model.q_proj.lora_B.weight": rng.random((8, 2), np.float32)}
    strategy.iterations = [{"iteration": 1, "samples": 40.0, "coverage": 0.25,
                            "teacher_top1": 0.1, "nodes": 3}]
    strategy.phases = {"teacher-fit": {"seconds": 1.5, "llm_calls": 0.0}}
    restored = FedLLMD4Rec(cfg)
    restored.load_state_arrays(strategy.state_arrays())
    assert restored.adapter.keys() == strategy.adapter.keys()
    for key, value in strategy.adapter.items():  # bit-exact, float32 as averaged
        assert restored.adapter[key].dtype == np.float32
        np.testing.assert_array_equal(restored.adapter[key], value)
    assert restored.iterations == strategy.iterations
    assert restored.phases == strategy.phases
    empty = FedLLMD4Rec(cfg)
    empty.load_state_arrays(FedLLMD4Rec(cfg).state_arrays())
    assert empty.adapter == {} and empty.iterations == [] and empty.phases == {}


def test_a_teacher_phase_counts_the_bytes_it_sends_and_receives_once():
    from flwr.app import Message, MessageType, MetricRecord, RecordDict

    from florec.protocol.codec import to_record
    from florec.strategies.llmd4rec import FedLLMD4Rec
    from florec.strategies.payload import record_nbytes

    def reply(msg, context):
        return Message(RecordDict({"adapter": msg.content.array_records["adapter"],
                                   "metrics": MetricRecord({"llm/calls": 2})}), reply_to=msg)

    cfg = parse_run_config(BASE)
    grid = LocalGrid(cfg.to_flower(), 3, handlers={MessageType.TRAIN: reply})
    strategy = FedLLMD4Rec(cfg)
    adapter = {"q.lora_A.weight": np.ones((2, 8), np.float32)}
    record = RecordDict({"arrays": to_record({"w": np.zeros((5, 4), np.float32)}),
                         "adapter": to_record(adapter)})
    replies = strategy._ask(grid, "teacher-fit", record, MessageType.TRAIN)
    assert len(replies) == len(grid.sent) == 3
    assert strategy.bytes_down == sum(record_nbytes(m.content) for m in grid.sent) > 0
    assert strategy.bytes_up == sum(record_nbytes(m.content) for m in grid.received) > 0
    assert strategy.phases["teacher-fit"]["calls"] == 6


@pytest.mark.slow
def test_a_resumed_run_goes_on_from_the_averaged_adapter_and_equals_the_whole_run(tmp_path):
    from florec.server.checkpoint import load_checkpoint
    from florec.strategies.llmd4rec import ADAPTER_PREFIX

    # round 2 opens the only iteration (LoRA, scoring); the cut run's checkpoint follows it, so
    # the resumed round 3 distils toward the stored tables and the end keeps the same adapter
    config = {"llm-backend": "tiny", "num-rounds": 3, "llmd4rec-crm-epochs": 2,
              "llmd4rec-rerank": False, "checkpoint-every": 1, "store-spill-mb": 0.0,
              "synthetic-users": 30, "num-nodes": 2}
    cfg, _, whole = _run(tmp_path / "whole", **config)
    _run(tmp_path / "cut", **config | {"num-rounds": 2})
    _, grid, resumed = _run(tmp_path / "cut", **config, resume=True)
    assert resumed["iterations"] == whole["iterations"] and len(whole["iterations"]) == 1
    kd = [float(m.content.metric_records["metrics"]["kd-samples"]) for m in grid.received
          if "kd-samples" in m.content.metric_records.get("metrics", {})]
    assert kd and min(kd) > 0  # round 3 distilled after the resume
    assert resumed["metrics"] == pytest.approx(whole["metrics"], abs=1e-9)
    ends = [load_checkpoint(tmp_path / d / "out", cfg.to_flower() | {"out-dir": str(
        tmp_path / d / "out")}).strategy for d in ("whole", "cut")]
    adapters = [{k: v for k, v in s.items() if k.startswith(ADAPTER_PREFIX)} for s in ends]
    assert adapters[0] and adapters[0].keys() == adapters[1].keys()
    assert any(np.abs(v).sum() > 0 for k, v in adapters[0].items() if "lora_B" in k)
    for key, value in adapters[0].items():
        np.testing.assert_array_equal(adapters[1][key], value)
    saved = [np.load(tmp_path / d / "out" / "adapter.npz") for d in ("whole", "cut")]
    assert sorted(saved[0].files) == sorted(k[len(ADAPTER_PREFIX):] for k in adapters[0])
    for key in saved[0].files:  # the averaged adapter written beside the results
        np.testing.assert_array_equal(saved[1][key], saved[0][key])
