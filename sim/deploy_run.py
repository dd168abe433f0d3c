"""One job on the loopback deployment (``florec deploy local``), and what its logs say."""

from __future__ import annotations

import json
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from florec.recdata.errors import FloRecError
from florec.recdata.shard_files import shard_dir
from florec.sim.deploy import LoopbackDeployment
from florec.sim.deploy_services import make_certs


def message_seconds(log_dir: Path) -> list[float]:
    """Seconds each SuperNode took from receiving a message to sending its reply.

    In process isolation this is a ClientApp's whole life: the SuperExec polling for the task,
    a new ``flwr-clientapp`` process (Python, torch and the app imported anew), the work, and
    handing the reply back to the SuperNode.
    """
    def stamp(line: str) -> float:
        h, m, s = line.split(" ", 1)[0].split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    out: list[float] = []
    for path in sorted(Path(log_dir).glob("supernode-*.log")):
        got: float | None = None
        for line in path.read_text(errors="replace").splitlines():
            if "Receiving:" in line:
                got = stamp(line)
            elif "Sending:" in line and got is not None:
                out.append((stamp(line) - got) % 86400)
                got = None
    return out


def report_nodes(dep: LoopbackDeployment, out_dir: Path) -> list[str]:
    """Lines saying, per round, which nodes did not reply (by partition and SuperNode ID)."""
    rounds, config = Path(out_dir) / "rounds.jsonl", Path(out_dir) / "config.json"
    fraction = json.loads(config.read_text())["config"]["fraction-train"] if config.exists() \
        else 1.0
    sampled = max(1, round(fraction * dep.num_nodes))
    part_of = {str(nid): i for i, nid in dep.node_ids().items()}
    lines = []
    for row in map(json.loads, rounds.read_text().splitlines() if rounds.exists() else []):
        replies = int(row.get("train", {}).get("num-replies", 0))
        failed = [d if "(partition" in d else f"{d} (partition {part_of.get(d.split()[-1], '?')})"
                  for d in row.get("dropped", [])]  # the server names nodes it has mapped
        if replies < sampled or failed:
            lines.append(f"round {row['round']}: {replies} of {sampled} sampled nodes replied"
                         + (f"; failed replies: {', '.join(failed)}" if failed else ""))
    return lines + [f"{dep.describe(name)} exited with code {code} during the run"
                    for name, code in dep.exited.items()]


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_local(run_config: dict[str, Any], num_nodes: int, out_dir: Path, tls: bool = False,
              certs: Path | None = None, auth: bool = False, data_dir: str = "",
              shards: Path | None = None) -> int:
    """Start the loopback deployment, run one job, tear it down; 0 if the run completed.

    ``certs`` is a folder made by ``deploy/certs.sh`` (made in a temporary folder if not
    given); ``shards`` a ``florec data shard`` folder (node i reads only its shard). Logs go
    to ``out_dir/logs``; SIGTERM and Ctrl-C tear everything down as well.
    """
    out_dir = Path(out_dir).resolve()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        with tempfile.TemporaryDirectory(prefix="florec-certs-") as tmp:
            if tls and certs is None:
                certs = make_certs(Path(tmp), supernode_keys=num_nodes if auth else 0)
            with LoopbackDeployment(num_nodes, out_dir / "logs", certs if tls else None, auth,
                                    data_dir, shards) as dep:
                print(f"[florec deploy] SuperLink on 127.0.0.1:{dep.port} "
                      f"({'TLS' if tls else 'insecure'}{', auth' if auth else ''}), SuperNode "
                      f"IDs by partition {dep.node_ids()}; logs in {out_dir / 'logs'}; "
                      + (f"node i reads only {shard_dir(dep.shards, 0).parent}/node-000i"
                         if dep.shards else "nodes cut their shards in memory")
                      + ", the server opens no data", flush=True)
                code = dep.submit(run_config | {"out-dir": str(out_dir), "num-nodes": num_nodes})
                for line in report_nodes(dep, out_dir):
                    print(f"[florec deploy] {line}", flush=True)
    except KeyboardInterrupt:
        raise FloRecError(f"interrupted: every process of the deployment was stopped; finished "
                          f"rounds are in {out_dir}, logs in {out_dir / 'logs'}") from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if secs := message_seconds(out_dir / "logs"):
        print(f"[florec deploy] {len(secs)} ClientApp messages took {sum(secs) / len(secs):.2f} s "
              "each on their node (receive -> reply; one ClientApp process per message)")
    return code
