"""Federated AgentCF(++) under ``flwr run``: the ServerApp's step loop over a Flower grid.

AgentCF has no rounds of aggregated arrays: :func:`federate` drives
:class:`florec.strategies.agentcf.AgentCFServer` through its three phases (``train`` steps until
every node is done, ``tags`` once for AgentCF++'s groups, ``evaluate``), whatever carries the
messages. :class:`GridNodes` carries them through a Flower :class:`~flwr.serverapp.Grid`
(every node of a phase at once); :func:`run_agentcf_federation` is what the ServerApp runs for
``model='agentcf'`` / ``'agentcf++'``: it waits for the nodes, learns their partitions and the
public item text from them (``query.agentcf``; the server opens no data), then federates. Each
phase's outcome is a line of ``rounds.jsonl`` (and ``results.json`` is rewritten) as the phase
ends, so a node that fails or times out in a later phase loses no finished phase: its line
carries the one-line error and ``results.json`` the status ``failed``. ``num-rounds`` is not
used: the steps follow the data (each user's training interactions in time order, one per step).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from florec.models.agentcf.pipeline import agentcf_method_name, uses_groups
from florec.models.agentcf.prompts import PROMPT_VERSION
from florec.models.agentcf.rank import random_mrr
from florec.protocol.agentcf_messages import MESSAGE_TYPES, RECORD, message
from florec.recdata.errors import DataError
from florec.recdata.runconfig import RunConfig
from florec.server.results import ResultsWriter, run_entry
from florec.strategies.agentcf import AgentCFServer

#: the models this driver runs
AGENTCF_MODELS = ("agentcf", "agentcf++")
#: results phase -> the message kind whose LLM counters it reports
PHASES = (("train", "train"), ("groups", "tags"), ("rank", "evaluate"))


class GridNodes:
    """The nodes of a Flower grid in partition order, as :class:`AgentCFServer` addresses them.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid.
    node_ids : list of int
        Flower node ids; ``node_ids[k]`` hosts partition ``k``.
    timeout_s : float
        Longest wait for a phase's replies (``round-timeout-s``).

    """

    def __init__(self, grid: Grid, node_ids: list[int], timeout_s: float) -> None:
        self.grid, self.node_ids, self.timeout_s = grid, list(node_ids), timeout_s

    def __len__(self) -> int:
        return len(self.node_ids)

    def exchange(self, kind: str, msgs: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """Send ``msgs[k]`` to partition ``k``'s node, all at once; every node's reply content.

        Raises
        ------
        DataError
            A node failed (its error's last line is quoted) or did not answer in time.

        """
        from florec.server.loop import stream_replies

        out = [Message(msgs[k], message_type=MESSAGE_TYPES[kind], dst_node_id=self.node_ids[k])
               for k in sorted(msgs)]
        index = {self.node_ids[k]: k for k in msgs}
        replies: dict[int, RecordDict] = {}
        for reply in stream_replies(self.grid, out, self.timeout_s):
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                why = (reply.error.reason.strip().splitlines() or ["no reason given"])[-1]
                raise DataError(f"node {node} failed on the AgentCF '{kind}' message: {why}")
            replies[index[node]] = reply.content
        if len(replies) != len(msgs):
            raise DataError(f"{len(msgs) - len(replies)} node(s) sent no AgentCF '{kind}' reply "
                            "in round-timeout-s; raise it (-c round-timeout-s=...)")
        return replies


def federate(server: AgentCFServer, nodes: Any, cfg: RunConfig, data: dict[str, Any],
             on_phase: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
             ) -> dict[str, Any]:
    """Train, group and rank through ``nodes``; the run's entry of ``results.json``.

    Parameters
    ----------
    server : AgentCFServer
        Item agents and groups.
    nodes : sequence or GridNodes
        The nodes in partition order (in-process objects or a grid).
    cfg : RunConfig
        The run config.
    data : dict
        ``results.json``'s ``data`` facts (source notes, domains, number of users).
    on_phase : callable, optional
        ``on_phase(row, run)`` as each phase ends: ``row`` is its line of ``rounds.jsonl``
        (:func:`phase_row`) and ``run`` the entry so far. A phase that raises is reported
        too, its row and the entry carrying ``error`` (one line), before the error propagates.

    """
    t_start = time.perf_counter()
    out: dict[str, Any] = {}
    phases: dict[str, dict[str, float]] = {}
    for (name, kind), step in zip(PHASES, (server.train, server.build_groups, server.evaluate),
                                  strict=True):
        t0 = time.perf_counter()
        try:
            out[name] = step(nodes)
        except Exception as err:
            if on_phase is not None:
                why = " ".join(str(err).split()) or type(err).__name__
                row = phase_row(server, name, kind, time.perf_counter() - t0) | {"error": why}
                run = run_so_far(server, nodes, cfg, data, out, phases, t_start)
                on_phase(row, run | {"error": f"{name} phase: {why}"})
            raise
        phases[name] = {"seconds": time.perf_counter() - t0} | server.llm.get(kind, {})
        if on_phase is not None:
            on_phase(phase_row(server, name, kind, phases[name]["seconds"], out[name]),
                     run_so_far(server, nodes, cfg, data, out, phases, t_start))
    return run_so_far(server, nodes, cfg, data, out, phases, t_start)


def phase_row(server: AgentCFServer, name: str, kind: str, seconds: float,
              outcome: Any = None) -> dict[str, Any]:
    """One phase's line of ``rounds.jsonl``: its outcome, LLM counters and the bytes so far.

    ``train`` carries its counters (``steps``, ...), ``groups`` the group sizes (``None``
    without groups) and ``rank`` the metrics; a phase that did not finish has no outcome.
    """
    row: dict[str, Any] = {"phase": name, "seconds": seconds, "llm": server.llm.get(kind, {}),
                           "bytes_up": server.bytes["up"], "bytes_down": server.bytes["down"]}
    if name == "train" and outcome is not None:
        row["train"] = outcome
    elif name == "groups":
        row["groups"] = [len(m) for m in outcome.members] if outcome is not None else None
    elif name == "rank" and outcome is not None:
        row["metrics"] = outcome
    return row


def run_so_far(server: AgentCFServer, nodes: Any, cfg: RunConfig, data: dict[str, Any],
               out: dict[str, Any], phases: dict[str, dict[str, float]], t_start: float
               ) -> dict[str, Any]:
    """The run's entry of ``results.json`` from the phases finished so far (``out``)."""
    llm: dict[str, float] = {}
    for row in server.llm.values():
        for key, value in row.items():
            llm[key] = llm.get(key, 0) + value
    groups = out.get("groups")
    run = run_entry(agentcf_method_name(cfg), "federated", cfg.dataset, "agentcf-time",
                    cfg.seed, split_seed=cfg.split_seed)
    run.update(metrics=out.get("rank", {}), random_mrr=random_mrr(cfg.agentcf_negatives + 1),
               train=out.get("train", {}), nodes=len(nodes), bytes_up=server.bytes["up"],
               bytes_down=server.bytes["down"], data=data,
               groups={"sizes": [len(m) for m in groups.members], "names": groups.names}
               if groups is not None else None, phases=dict(phases), llm=llm,
               wall_s=time.perf_counter() - t_start)
    return run


def learn_catalogue(nodes: GridNodes, expected: int) -> tuple[GridNodes, dict[str, Any]]:
    """Order the nodes by partition and fetch the public item side from partition 0.

    Raises
    ------
    DataError
        The nodes do not host partitions ``0..expected-1`` once each, or disagree on the
        population.

    """
    replies = nodes.exchange("partition", {k: message(request="partition")
                                           for k in range(len(nodes))})
    pid = {nodes.node_ids[k]: int(r[RECORD]["partition-id"]) for k, r in replies.items()}
    if sorted(pid.values()) != list(range(expected)):
        raise DataError(f"the nodes host partitions {sorted(pid.values())}, expected "
                        f"0..{expected - 1} once each; give each node its own partition-id")
    populations = {int(r[RECORD]["population"]) for r in replies.values()}
    if len(populations) != 1:
        raise DataError(f"the nodes sampled different users ({sorted(populations)}); give every "
                        "node the same run config and data")
    ordered = GridNodes(nodes.grid, sorted(pid, key=pid.__getitem__), nodes.timeout_s)
    rec = ordered.exchange("catalogue", {0: message(request="catalogue")})[0][RECORD]
    return ordered, {"item_text": [str(t) for t in rec["item_text"]],
                     "item_title": [str(t) for t in rec["item_title"]],
                     "item_domain": np.asarray(rec["item_domain"], np.int64),
                     "domains": [str(d) for d in rec["domains"]],
                     "meta": json.loads(str(rec["meta"])), "users": populations.pop()}


def run_agentcf_federation(grid: Grid, cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """The ServerApp of a federated AgentCF(++) run; writes ``out_dir`` and returns its entry.

    ``rounds.jsonl`` gets one line per finished phase (:func:`phase_row`); a failing phase
    gets a line with its ``error`` and ``results.json`` the finished phases with status
    ``failed`` before the error propagates.
    """
    from florec.server.loop import wait_for_nodes

    t_start = time.perf_counter()
    writer = ResultsWriter(Path(out_dir))
    try:
        config = cfg.to_flower() | {"out-dir": str(out_dir), "setting": "federated",
                                    "prompt-version": PROMPT_VERSION}
        writer.write_config(config)
        node_ids = wait_for_nodes(grid, cfg.num_nodes, cfg.node_wait_s)
        nodes, cat = learn_catalogue(GridNodes(grid, node_ids, cfg.round_timeout_s),
                                     cfg.num_nodes)
        encoder = None
        if uses_groups(cfg):
            from florec.models.llm.encoder import SentenceEncoder

            encoder = SentenceEncoder(cfg.encoder)
        server = AgentCFServer(cat["item_text"], cat["item_domain"], cat["item_title"],
                               encoder=encoder, kmeans_k=cfg.agentcf_kmeans_k,
                               n_groups=cfg.agentcf_groups if uses_groups(cfg) else 0,
                               seed=cfg.seed)

        def record(row: dict[str, Any], run: dict[str, Any]) -> None:
            writer.append_round(row)
            run["wall_s"] = time.perf_counter() - t_start
            writer.write_results(config, [run], "failed" if "error" in row else "running")

        run = federate(server, nodes, cfg, cat["meta"] | {"domains": cat["domains"],
                                                          "users": cat["users"]}, record)
        run["wall_s"] = time.perf_counter() - t_start
        writer.write_results(config, [run])
    finally:
        writer.close()
    return run
