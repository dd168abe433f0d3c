"""FedAvg-MF rounds under secure aggregation: same model as plain, dropouts, a lying server."""

import json
import logging

import numpy as np
import pytest
from flwr.app import Array, Message, MessageType, RecordDict

from florec.client import secagg_node
from florec.protocol import shamir
from florec.protocol.codec import from_record
from florec.protocol.fixed_point import quant_bits
from florec.protocol.secagg import _pair_masks
from florec.protocol.secagg_wire import fedavg_range
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.server import secagg as server_secagg
from florec.server.app import run_federated
from florec.server.federation import prepare_federation
from florec.server.rounds import train_round
from florec.server.secagg import SecAggRefused, SecAggSession
from florec.sim.local_grid import LocalGrid
from florec.strategies.registry import build_strategy

SETUP = f"{MessageType.TRAIN}.setup"
BASE = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
        "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 2}


def final_table(grid: LocalGrid) -> np.ndarray:
    """The item table of the last evaluation message (the run's final global model)."""
    last = [m for m in grid.sent if m.metadata.message_type == MessageType.EVALUATE][-1]
    return from_record(last.content.array_records["arrays"])["item_emb"]


def run(tmp_path, name: str, extra: dict, **grid_kw):
    cfg = parse_run_config(BASE | extra)
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, **grid_kw)
    result = run_federated(grid, cfg, tmp_path / name)
    rows = [json.loads(x) for x in (tmp_path / name / "rounds.jsonl").read_text().splitlines()]
    return result, rows, grid


@pytest.mark.parametrize("extra", [{"aggregation": "dense"}, {"aggregation": "sparse"},
                                   {"aggregation": "sum", "cohort-fraction": 0.5}])
def test_fedavg_with_secagg_equals_the_plain_run_within_quantisation_error(tmp_path, extra):
    plain, plain_rows, plain_grid = run(tmp_path, "plain", extra)
    secure, rows, grid = run(tmp_path, "secure", extra | {"secagg": True})
    # per round, each summed entry is off by at most n R / (2^k - 1) (k = quant_bits(n))
    clip = fedavg_range(0.0, extra["aggregation"], "interactions")  # the automatic range
    step = 4 * clip / (2 ** quant_bits(4) - 1)
    np.testing.assert_allclose(final_table(grid), final_table(plain_grid), atol=20 * step)
    for key, value in plain["metrics"].items():
        assert secure["metrics"][key] == pytest.approx(value, abs=1e-6), key
    for row, ref in zip(rows, plain_rows, strict=True):
        assert row["train"]["train-loss"] == pytest.approx(ref["train"]["train-loss"], rel=1e-6)
        assert row["train"]["secagg-alive"] == row["train"]["num-replies"]
        assert row["train"]["secagg-clipped"] == 0
        # the masked upload: n (d + 1) words (+ n counts when sparse) + 1, from every node
        words = 60 * 9 + (60 if extra["aggregation"] != "dense" else 0) + 1
        alive = row["train"]["secagg-alive"]
        assert row["train"]["secagg-bytes-up"] > 4 * words * alive
        assert row["bytes_up"] > row["train"]["secagg-bytes-up"]


@pytest.fixture
def inputs(monkeypatch) -> dict[int, np.ndarray]:
    """Each node's quantised input as it first enters secure aggregation, by node id."""
    recorded: dict[int, np.ndarray] = {}
    advertise = secagg_node.advertise

    def record(context, node_id, codes, info):
        recorded.setdefault(int(node_id), np.asarray(codes, np.uint32))
        return advertise(context, node_id, codes, info)

    monkeypatch.setattr(secagg_node, "advertise", record)
    return recorded


def stage_of(msg) -> str:
    return str(msg.content.config_records.get("config", {}).get("stage", ""))


def test_one_of_ten_nodes_dropping_after_masking_leaves_the_sum_of_the_nine(inputs):
    cfg = parse_run_config(BASE | {"num-nodes": 10, "secagg": True, "round-timeout-s": 1.0})
    grid = LocalGrid(cfg.to_flower(), 10, keep_replies=False,  # node 4 masks, then is lost
                     lose=lambda m: m.metadata.dst_node_id == 4 and stage_of(m) == "mask")
    fed = prepare_federation(grid, cfg)
    _, row = train_round(grid, fed.strategy, 1, fed.arrays, cfg.round_timeout_s)
    session = fed.strategy.secagg_session
    assert session.dropped == [4] and len(session.alive) == 9
    want = np.zeros_like(inputs[1])
    for node in session.alive:
        want = want + inputs[node]
    np.testing.assert_array_equal(session.total, want)  # exact: the masks all cancel
    assert row["train"]["secagg-dropped"] == 1 and row["train"]["num-replies"] == 9


class ClaimsALiveNodeDropped(SecAggSession):
    """A server that hides a live node's masked vector and asks for its pair-mask key."""

    def take(self, stage, replies):
        if stage == "unmask":  # what a curious server does with the shares it got
            shares = {sorted(self.server.roster).index(u) + 1:
                      bytes(a["shares"][list(a["ids"]).index(self.victim)])
                      for u, a in replies.items() if self.victim in a["ids"]}
            self.victim_s = shamir.combine(dict(list(shares.items())[:self.server.threshold]))
        super().take(stage, replies)
        if stage == "mask":
            self.victim = sorted(self.uploads)[1]
            self.stolen = self.uploads.pop(self.victim)


def test_a_server_that_claims_a_live_node_dropped_learns_nothing_and_is_refused(
        inputs, monkeypatch):
    cfg = parse_run_config(BASE | {"num-nodes": 6, "secagg": True})
    grid = LocalGrid(cfg.to_flower(), 6)
    fed = prepare_federation(grid, cfg)
    monkeypatch.setattr("florec.strategies.fedavg.SecAggSession", ClaimsALiveNodeDropped)
    train_round(grid, fed.strategy, 1, fed.arrays, cfg.round_timeout_s)
    session = fed.strategy.secagg_session
    victim = session.victim
    assert session.dropped == [victim]
    want = np.zeros_like(inputs[victim])
    for node in session.alive:
        want = want + inputs[node]
    np.testing.assert_array_equal(session.total, want)  # the others' sum, as if v had dropped
    # the server holds y_v and rebuilt s_v: removing v's pair masks leaves x_v + PRG(b_v)
    peers = {w: keys[1] for w, keys in session.server.roster.items()}
    left = session.stolen - _pair_masks(victim, session.victim_s, peers, session.server.info,
                                        len(want))
    assert np.mean(left == inputs[victim]) < 0.01
    corr = np.corrcoef(left.astype(np.float64), inputs[victim].astype(np.float64))[0, 1]
    assert abs(corr) < 0.2
    # asking again, now for v's self-mask seed, is refused and stops the round
    monkeypatch.setattr(server_secagg, "STAGES", ("unmask",))

    class AsksForTheSeed(SecAggSession):
        def __init__(self, info, roster):
            super().__init__(session.info, roster)
            self.server, self.uploads = session.server, {victim: session.stolen}
            self.uploads |= {u: np.zeros(1, np.uint32) for u in session.alive}

    with pytest.raises(SecAggRefused, match="refused") as err:
        server_secagg.run_exchanges(fed.strategy, grid, AsksForTheSeed("", {}), 1, 5.0)
    assert "\n" not in str(err.value)


def test_no_message_carries_an_unmasked_node_update(tmp_path, inputs, no_trace):
    _, _, grid = run(tmp_path, "secure", {"aggregation": "sparse", "secagg": True,
                                          "num-rounds": 1})
    messages: list[Message] = grid.sent + grid.received
    names = {k for m in messages if m.has_content()
             for rec in m.content.array_records.values() for k in rec}
    assert not names & {"items", "counts"}  # the sparse layout never travels
    compared = 0
    for msg in messages:
        if not msg.has_content() or msg.metadata.message_type == MessageType.EVALUATE:
            continue
        for rec in msg.content.array_records.values():
            for key, arr in from_record(rec).items():
                flat = arr.ravel().astype(np.float64)
                for codes in inputs.values():  # the whole input, at every offset
                    compared += no_trace(flat, codes.astype(np.float64), key)
    assert compared >= len(inputs) ** 2  # at least every masked vector against every input


def loses_round_one_masks(lost: set[int]):
    """``lose`` for LocalGrid: these nodes mask their vector in round 1, which never arrives."""
    return lambda m: (m.metadata.dst_node_id in lost and stage_of(m) == "mask" and str(
        m.content.config_records["config"].get("info", "")).startswith("fedavg|round=1|"))


def test_more_than_n_minus_t_dropouts_fail_that_round_only_and_the_run_goes_on(tmp_path):
    # 10 nodes, t = 7: four vectors lost after masking leave 6 < t
    result, rows, grid = run(tmp_path, "few", {"num-nodes": 10, "secagg": True,
                                               "round-timeout-s": 1.0},
                             lose=loses_round_one_masks({1, 2, 3, 4}))
    first, second = rows[0]["train"], rows[1]["train"]
    assert first["secagg-failed"] == 1 and first["secagg-alive"] == 6
    assert first["num-replies"] == 0 and first["secagg-roster"] == 10
    assert "secagg-failed" not in second and second["secagg-alive"] == 10
    stages = [(m.content.config_records["config"]["stage"],
               str(m.content.config_records["config"]["info"]))
              for m in grid.sent if m.metadata.message_type == SETUP]
    assert not any(st == "unmask" and info.startswith("fedavg|round=1|") for st, info in stages)
    assert any(st == "unmask" and info.startswith("fedavg|round=2|") for st, info in stages)
    assert result["metrics"]  # the run finished and reported


def test_secagg_refuses_robust_defenses_and_other_methods():
    with pytest.raises(ConfigError, match="defense"):
        build_strategy(parse_run_config(BASE | {"secagg": True, "defense": "median"}), 60)
    with pytest.raises(ConfigError, match="secagg"):
        build_strategy(parse_run_config(BASE | {"secagg": True, "algorithm": "fedcia"}), 60)


def test_secagg_composes_with_distributed_dp_noise(tmp_path):
    extra = {"secagg": True, "dp": True, "dp-mode": "distributed", "dp-noise-multiplier": 1.0,
             "aggregation": "sum", "dp-clip": 0.5}
    result, rows, _ = run(tmp_path, "dp", extra)
    assert all(r["train"]["secagg-alive"] == 4 and r["train"]["secagg-clipped"] == 0
               for r in rows)
    assert result["dp"]["epsilon"] > 0


def test_distributed_dp_needs_secagg():
    cfg = parse_run_config(BASE | {"dp": True, "dp-mode": "distributed", "aggregation": "sum"})
    with pytest.raises(ConfigError, match="secagg=true"):
        build_strategy(cfg, 60)


@pytest.mark.parametrize("dp", [False, True])
def test_distributed_dp_never_unmasks_a_sum_with_fewer_noise_shares_than_accounted(tmp_path, dp):
    # 10 configured nodes, one fails to train: roster 9 (t = 6). Three vectors lost after
    # masking leave 6 alive: enough for the plain threshold, but each DP node sized its noise
    # share for t(10) = 7 nodes, so a DP round must fail rather than release too little noise.
    extra = {"num-nodes": 10, "secagg": True, "round-timeout-s": 1.0, "aggregation": "sum"}
    if dp:
        extra |= {"dp": True, "dp-mode": "distributed", "dp-noise-multiplier": 1.0}
    _, rows, _ = run(tmp_path, f"dp{dp}", extra, lose=loses_round_one_masks({1, 2, 3}),
                     fail=lambda pid, kind: pid == 9 and kind == MessageType.TRAIN)
    first = rows[0]["train"]
    assert first["secagg-alive"] == 6
    assert first.get("secagg-failed", 0) == (1 if dp else 0)


def _truncated(content):
    """``content`` with its first array cut short: its header promises bytes that never came."""
    record = content.array_records["arrays"]
    name = next(iter(record))
    whole = record[name]
    record[name] = Array(dtype=whole.dtype, shape=whole.shape, stype=whole.stype,
                         data=whole.data[:-4])
    return content


def test_malformed_secagg_replies_drop_their_node_and_the_rest_sum_exactly(inputs, monkeypatch,
                                                                            caplog):
    # node 2's keys do not decode, node 5's share reply has no arrays, node 4's masked vector
    # does not decode: 2 and 5 never share, 4 is recovered like a node lost after sharing
    fedavg_reply, handle = secagg_node.fedavg_reply, secagg_node.handle

    def keys(cfg, msg, context, n_items, content):
        out = fedavg_reply(cfg, msg, context, n_items, content)
        return _truncated(out) if msg.metadata.dst_node_id == 2 else out

    def stage(msg, context, *args, **kwargs):
        out = handle(msg, context, *args, **kwargs)
        node = msg.metadata.dst_node_id
        if node == 5 and stage_of(msg) == "share":
            return RecordDict({})
        return _truncated(out) if node == 4 and stage_of(msg) == "mask" else out

    monkeypatch.setattr(secagg_node, "fedavg_reply", keys)
    monkeypatch.setattr(secagg_node, "handle", stage)
    cfg = parse_run_config(BASE | {"num-nodes": 10, "secagg": True})
    grid = LocalGrid(cfg.to_flower(), 10, keep_replies=False)
    fed = prepare_federation(grid, cfg)
    with caplog.at_level(logging.WARNING):
        _, row = train_round(grid, fed.strategy, 1, fed.arrays, cfg.round_timeout_s)
    session = fed.strategy.secagg_session
    assert 2 not in session.server.roster and 5 not in session.server.shared
    assert session.dropped == [4] and len(session.alive) == 7
    want = np.zeros_like(inputs[1])
    for node in session.alive:
        want = want + inputs[node]
    np.testing.assert_array_equal(session.total, want)
    assert row["train"]["num-replies"] == 7 and len(fed.strategy.dropped) == 3
    lines = [r.getMessage() for r in caplog.records if "skipping reply" in r.getMessage()]
    assert sum("undecodable arrays" in line for line in lines) == 2
    assert any("share: reply has no 'arrays' record" in line for line in lines)
    assert all("\n" not in line for line in lines)
