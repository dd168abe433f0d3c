"""A checkpoint holds no secure-sum private key, and no node keeps it once setup is over."""

from __future__ import annotations

import base64
from pathlib import Path

from flwr.app import Context, Message, MessageType

from florec.client import app as client_app
from florec.client import setup_node
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid

BASE = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
        "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 2,
        "checkpoint-every": 1, "mf-loss": "fs-pair"}


def forms(secret: bytes) -> list[bytes]:
    """The raw key and its usual text encodings."""
    return [secret, secret.hex().encode(), secret.hex().upper().encode(),
            base64.b64encode(secret), base64.b64encode(secret).rstrip(b"=")]


def run_with_keys(out: Path, spill_mb: float) -> tuple[list[bytes], LocalGrid]:
    keys: list[bytes] = []

    def setup(msg: Message, context: Context) -> Message:
        reply = client_app.setup(msg, context)
        record = context.state.config_records.get(setup_node.SECRET_KEY)
        if record is not None:
            keys.append(bytes(record["sk"]))
        return reply

    cfg = parse_run_config(BASE | {"out-dir": str(out), "store-spill-mb": spill_mb})
    handlers = {MessageType.TRAIN: client_app.train, MessageType.EVALUATE: client_app.evaluate,
                f"{MessageType.TRAIN}.setup": setup, f"{MessageType.QUERY}.store": client_app.store}
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, handlers=handlers)
    run_federated(grid, cfg, out)
    return sorted(set(keys)), grid


def test_no_file_a_checkpointed_secure_sum_run_writes_holds_a_private_key(tmp_path):
    for spill_mb in (64.0, 0.0):  # node state in the Context, or spilled to disk
        out = tmp_path / f"spill-{spill_mb}"
        keys, _ = run_with_keys(out, spill_mb)
        assert len(keys) == BASE["num-nodes"], "the secure sum did not run: nothing was checked"
        files = [p for p in out.rglob("*") if p.is_file()]
        assert any("checkpoint" in p.parts for p in files) and any(
            p.suffix == ".npz" and "nodes" in p.parts for p in files), "no node checkpoint"
        for path in files:
            data = path.read_bytes()
            for key in keys:
                assert not any(f in data for f in forms(key)), f"{path} holds a private key"


def test_nodes_forget_the_secure_sum_key_when_training_starts(tmp_path):
    keys, grid = run_with_keys(tmp_path, 64.0)
    assert keys
    for context in grid.contexts.values():
        assert setup_node.SECRET_KEY not in context.state.config_records
        for record in context.state.config_records.values():
            assert not any(isinstance(v, bytes) and v in keys for v in record.values())
