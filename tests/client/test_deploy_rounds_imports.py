"""A deployed ClientApp is a new process per message: it imports only what the message needs."""

import json
import subprocess
import sys

PROBE = """
import json, sys
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app import RecordDict as RD
from flwr.supercore.task_identity import TaskIdentity
import florec.client.app as app
for attr in ("_run_id", "_task_id", "_node_id"):  # what a Flower process sets
    setattr(TaskIdentity, attr, 1)
loaded = {"app": sorted(m for m in ("torch", "dp_accounting", "florec.client.fedavg_node",
                                  "florec.models.registry") if m in sys.modules)}
cfg = {"dataset": "synthetic", "synthetic-users": 20, "synthetic-items": 30,
       "synthetic-interactions": 8, "num-nodes": 2}
ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
              state=RD(), run_config=cfg)
msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1,
              message_type="query.partition")
msg.metadata.__dict__["_message_id"] = "q"
reply = app.partition(msg, ctx)
loaded["query"] = sorted(m for m in ("torch", "dp_accounting") if m in sys.modules)
loaded["users"] = int(reply.content["metrics"]["num-users"])
node = app._node(app.parse_run_config(cfg))
loaded["fedavg"] = sorted(m for m in ("torch", "dp_accounting", "florec.models.registry")
                          if m in sys.modules) + [node.__name__]
from florec.models.registry import SEQUENTIAL_MODELS
loaded["sequential"] = [list(SEQUENTIAL_MODELS), list(app.SEQUENTIAL_MODELS)]
print(json.dumps(loaded))
"""


def test_the_clientapp_imports_no_torch_until_a_message_trains_and_fedavg_no_registry():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.splitlines()[-1])
    assert loaded["app"] == [] and loaded["query"] == []  # a query.partition: no torch
    assert loaded["users"] == 10
    # FedAvg trains with torch; DP accounting and the model registry stay out
    assert loaded["fedavg"] == ["torch", "florec.client.fedavg_node"]
    seq, mine = loaded["sequential"]
    assert seq == mine  # the ClientApp's copy of the sequential models matches the registry's
