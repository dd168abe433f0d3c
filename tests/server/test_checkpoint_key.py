"""A checkpoint holds no secure-aggregation secret, and no node keeps one once its sum is done."""

from __future__ import annotations

import base64
from pathlib import Path

from flwr.app import Context, Message, MessageType

from florec.client import app as client_app
from florec.client import secagg_node
from florec.protocol.secagg_wire import node_from_json
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid

BASE = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
        "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 2,
        "checkpoint-every": 1, "mf-loss": "fs-pair", "secagg": True}


def forms(secret: bytes) -> list[bytes]:
    """The raw key and its usual text encodings."""
    return [secret, secret.hex().encode(), secret.hex().upper().encode(),
            base64.b64encode(secret), base64.b64encode(secret).rstrip(b"=")]


def secrets_of(context: Context) -> list[bytes]:
    """The secure-aggregation secrets a node holds now (private keys, self-mask seed)."""
    record = context.state.config_records.get(secagg_node.STATE)
    if record is None:
        return []
    node = node_from_json(str(record["json"]))
    return [s for s in (node.c_sk, node.s_sk, node.b_seed) if s]


def run_with_keys(out: Path, spill_mb: float) -> tuple[list[bytes], LocalGrid]:
    keys: list[bytes] = []

    def capture(handler):
        def handle(msg: Message, context: Context) -> Message:
            reply = handler(msg, context)
            keys.extend(secrets_of(context))
            return reply
        return handle

    cfg = parse_run_config(BASE | {"out-dir": str(out), "store-spill-mb": spill_mb})
    handlers = {MessageType.TRAIN: capture(client_app.train),
                MessageType.EVALUATE: client_app.evaluate,
                f"{MessageType.TRAIN}.setup": capture(client_app.setup),
                f"{MessageType.QUERY}.store": client_app.store}
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, handlers=handlers)
    run_federated(grid, cfg, out)
    return sorted(set(keys)), grid


def test_no_file_a_checkpointed_secure_sum_run_writes_holds_a_private_key(tmp_path):
    for spill_mb in (64.0, 0.0):  # node state in the Context, or spilled to disk
        out = tmp_path / f"spill-{spill_mb}"
        keys, _ = run_with_keys(out, spill_mb)
        # per node and aggregation (the popularity sum, then one per round): 2 keys, 1 seed
        want = BASE["num-nodes"] * 3 * (1 + BASE["num-rounds"])
        assert len(keys) == want, "secure aggregation did not run: nothing was checked"
        files = [p for p in out.rglob("*") if p.is_file()]
        assert any("checkpoint" in p.parts for p in files) and any(
            p.suffix == ".npz" and "nodes" in p.parts for p in files), "no node checkpoint"
        for path in files:
            data = path.read_bytes()
            for key in keys:
                assert not any(f in data for f in forms(key)), f"{path} holds a private key"


def test_nodes_forget_their_secure_aggregation_secrets_once_the_sum_is_done(tmp_path):
    keys, grid = run_with_keys(tmp_path, 64.0)
    assert keys
    for context in grid.contexts.values():
        assert secrets_of(context) == []
        for record in context.state.config_records.values():
            text = " ".join(str(v) for v in record.values())
            assert not any(key.hex() in text or key in text.encode() for key in keys)


def test_a_node_store_snapshot_holds_no_pending_secure_aggregation_input(tmp_path):
    import numpy as np
    from flwr.app import RecordDict

    from florec.client.node_store import open_store

    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={"out-dir": str(tmp_path)})
    codes = np.random.default_rng(0).integers(2**20, 2**31, 257).astype(np.uint32)
    secagg_node.advertise(context, 1, codes, "fedavg|round=1|x")  # keys sent, not yet masked
    np.testing.assert_array_equal(secagg_node.pending_codes(context), codes)
    store = open_store(context, 64.0)
    store.replace_all({"users": {"emb": np.ones((3, 2), np.float32)}})
    path = tmp_path / "snap.npz"
    store.snapshot(path)
    with np.load(path) as saved:
        assert any("users" in k for k in saved.files)  # the snapshot did save the store
        assert not any("secagg" in k for k in saved.files)
    data = path.read_bytes()
    assert codes.tobytes()[:64] not in data and codes.tobytes()[-64:] not in data
