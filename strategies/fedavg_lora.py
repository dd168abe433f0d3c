r"""Federated CoT-Rec on the server: item perception once, FedAvg of the retriever, federated LoRA.

* Before round 1 (:meth:`FedCoTRec.configure_setup`) the server broadcasts the projection it
  fitted on the **public** item texts (:func:`build_cotrec_strategy` runs item perception here,
  once); each node runs user perception for its own users.
* Rounds: FedAvg of the retriever's shared arrays exactly as :class:`FedAvgParams` (user tokens
  stay on the nodes). Only the arrays of the best round so far are kept for the ranker
  (:class:`BestRoundArrays`).
* After the rounds (:meth:`FedCoTRec.after_rounds`, at the best round): the ranker's LoRA
  adapter is trained on the nodes' validation targets and averaged, weighted by samples,

  .. math:: A \leftarrow \frac{\sum_k m_k A_k}{\sum_k m_k}

  over ``cotrec-lora-rounds`` rounds (:func:`fedavg_adapters`); the untuned and the averaged
  ranker are then evaluated on every node's test users (sums pooled, MAPB included).

Nothing the server sends or receives holds a user's history text: prompts over histories are
built and answered on the nodes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.models.cotrec.perception import Projection
from florec.models.cotrec.pipeline import PhaseLog, item_side, make_encoder, make_llm
from florec.models.cotrec.ranker import K
from florec.models.cotrec.retriever import build_retriever
from florec.protocol.codec import from_record, to_record
from florec.recdata.runconfig import RunConfig
from florec.server.loop import stream_replies
from florec.strategies.fedavg_params import FedAvgParams

SETUP_TYPE = f"{MessageType.TRAIN}.setup"
#: prefix of the kept round arrays in a checkpoint's strategy state (``cotrec-round-<r>/<name>``)
ROUND_PREFIX = "cotrec-round-"


class BestRoundArrays:
    """Mixin: keep the global arrays of the loop's best round only, for a phase after the rounds.

    :meth:`configure_evaluate` keeps the evaluated round's arrays; once the loop has selected
    the best round (its rule: validation ``selection-metric``, coverage, ties keep the earlier
    round; :func:`florec.server.selection.select_round`) it calls :meth:`best_round_selected`,
    which drops every other round. So the strategy holds at most two rounds' arrays (the best
    and the one being evaluated), and a checkpoint, written after the selection, at most one.
    Mix in before a :class:`~florec.strategies.base.RecStrategy`; set :attr:`round_prefix`.
    """

    #: prefix of the kept arrays in the checkpoint's strategy state (``<prefix><r>/<name>``)
    round_prefix = ROUND_PREFIX
    round_arrays: dict[int, ArrayRecord]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Keep this round's arrays (it may become the best round), then evaluate.

        The rounds kept before this one (the best so far) go to the nodes as ``kept-rounds``:
        a node that keeps per-round state (CoT-Rec's user tokens) drops the other rounds'.
        """
        if self.round_arrays:
            config["kept-rounds"] = sorted(self.round_arrays)
        self.round_arrays[server_round] = arrays
        return super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]

    def best_round_selected(self, best: int | None) -> None:
        """Drop the arrays of every round but ``best``, the loop's best round so far."""
        self.round_arrays = {r: a for r, a in self.round_arrays.items() if r == best}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The base state plus the kept round's arrays (``<round_prefix><r>/<name>``).

        A resumed run needs them: the phase after the rounds runs at the best round, which may
        precede the checkpoint.
        """
        state = super().state_arrays()  # type: ignore[misc]
        for rnd, record in self.round_arrays.items():
            state |= {f"{self.round_prefix}{rnd}/{k}": v for k, v in from_record(record).items()}
        return state

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_arrays` (the kept round's arrays included)."""
        rounds: dict[int, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            if key.startswith(self.round_prefix):
                rnd, name = key[len(self.round_prefix):].split("/", 1)
                rounds.setdefault(int(rnd), {})[name] = value
        super().load_state_arrays({k: v for k, v in arrays.items()  # type: ignore[misc]
                                   if not k.startswith(self.round_prefix)})
        self.round_arrays = {r: to_record(a) for r, a in sorted(rounds.items())}


def fedavg_adapters(states: list[dict[str, np.ndarray]], weights: list[float]
                    ) -> dict[str, np.ndarray] | None:
    """Sample-weighted mean of LoRA adapters (module formula); ``None`` if all weights are 0.

    A state of weight 0 (a node that trained on nothing) does not enter the mean, so it may be
    anything, the empty adapter included; the caller keeps its previous adapter on ``None``.

    Raises
    ------
    ValueError
        If the weighted adapters do not share names and shapes, or a weight is negative.

    """
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} adapters and {len(weights)} weights; give one each")
    if any(w < 0 for w in weights):
        raise ValueError("adapter weights must be >= 0 (numbers of samples)")
    pairs = [(s, float(w)) for s, w in zip(states, weights, strict=True) if w > 0]
    if not pairs:
        return None
    states, weights = [s for s, _ in pairs], [w for _, w in pairs]
    total = float(sum(weights))
    ref = states[0]
    for s in states[1:]:
        if set(s) != set(ref) or any(s[k].shape != ref[k].shape for k in ref):
            raise ValueError("the nodes' adapters differ in names or shapes; use one lora_r")
    return {k: (sum(w * s[k].astype(np.float64) for s, w in zip(states, weights, strict=True))
                / total).astype(np.float32) for k in ref}


def initial_adapter(llm: Any, cfg: RunConfig) -> dict[str, np.ndarray]:
    """The seeded LoRA adapter every node starts from, with ``B = 0`` (the untuned model).

    Returns ``{}`` for backends that cannot train (``scripted``, ``openai``).
    """
    try:
        return llm.new_adapter(cfg.cotrec_lora_r, seed=cfg.seed)
    except NotImplementedError:
        return {}


class FedCoTRec(BestRoundArrays, FedAvgParams):
    """FedAvg of the retriever plus CoT-Rec's setup and ranker phases (module docstring).

    Parameters
    ----------
    cfg : RunConfig
        The run config (``cotrec-*`` keys).
    projection : Projection, optional
        Broadcast to the nodes for their user texts (``None`` for random init).
    adapter : dict
        Initial LoRA adapter (empty when the backend cannot train).
    log_phases : PhaseLog
        The server's phases so far (item perception); node phases are added to it.

    """

    def __init__(self, cfg: RunConfig, projection: Projection | None,
                 adapter: dict[str, np.ndarray], log_phases: PhaseLog) -> None:
        super().__init__(cfg.fraction_train, cfg.seed)
        self.cfg, self.projection, self.adapter = cfg, projection, adapter
        self.log_phases = log_phases
        self.round_arrays: dict[int, ArrayRecord] = {}

    def configure_setup(self, stage: int, arrays: ArrayRecord, grid: Grid) -> Iterable[Message]:
        """Stage 0: every node runs user perception with the broadcast projection."""
        if stage > 0:
            return []
        record = RecordDict({"config": ConfigRecord({"setup": "cotrec-user"})})
        if self.projection is not None:
            record["projection"] = to_record(self.projection.arrays())
        self._t_setup = time.perf_counter()
        return self.messages(record, sorted(grid.get_node_ids()), SETUP_TYPE)

    def aggregate_setup(self, stage: int, arrays: ArrayRecord, replies: Iterable[Message]
                        ) -> ArrayRecord:
        """Count the nodes' LLM use; a failed node keeps random user tokens (logged)."""
        replies = list(replies)  # streamed: the nodes work while we iterate
        self._add_phase("user-perception", replies, time.perf_counter() - self._t_setup)
        return arrays

    def _add_phase(self, name: str, replies: Iterable[Message], seconds: float) -> list[Message]:
        row = self.log_phases.phases.setdefault(name, {"seconds": 0.0})
        row["seconds"] += seconds
        ok = []
        for msg in replies:
            if msg.has_error():
                self.drop(0, msg, f"{name} failed: {msg.error.reason}")
                continue
            for k, v in msg.content.metric_records["metrics"].items():
                if k.startswith("llm/"):
                    row[k[4:]] = row.get(k[4:], 0) + float(v)
            ok.append(msg)
        return ok

    def _ask(self, grid: Grid, name: str, record: RecordDict, kind: str) -> list[Message]:
        t0 = time.perf_counter()
        msgs = self.messages(record, sorted(grid.get_node_ids()), kind)
        replies = list(stream_replies(grid, self.in_node_order(msgs),  # partition order
                                      self.cfg.round_timeout_s))
        for msg in replies:
            if not msg.has_error():
                self.bytes_up += sum(len(a.data) for rec in msg.content.array_records.values()
                                     for a in rec.values())
        return self._add_phase(name, replies, time.perf_counter() - t0)

    def _ranker_eval(self, grid: Grid, best: int, label: str, adapter: dict) -> dict[str, float]:
        n_nodes = max(len(list(grid.get_node_ids())), 1)
        config = ConfigRecord({"cotrec-phase": "ranker", "best-round": best, "label": label,
                               "mapb-users": -(-self.cfg.cotrec_mapb_users // n_nodes)})
        record = RecordDict({"arrays": self.round_arrays[best], "config": config,
                             "adapter": to_record(adapter)})
        sums: dict[str, float] = {}
        for msg in self._ask(grid, f"ranker-{label}", record, MessageType.EVALUATE):
            for k, v in msg.content.metric_records["metrics"].items():
                if not k.startswith("llm/") and k != "partition-id":
                    sums[k] = sums.get(k, 0.0) + float(v)
        n = max(sums.get("num-users", 0.0), 1.0)
        out = {k: sums.get(k, 0.0) / n for k in (f"ndcg@{K}", f"hr@{K}")}
        out["mapb"] = (sums["mapb-sum"] / sums["mapb-users"] if sums.get("mapb-users")
                       else float("nan"))
        # users ranked with other tokens than their best round's (node missed that round)
        out["tokens_fallback"] = sums.get("tokens-fallback", 0.0)
        if out["tokens_fallback"]:
            log(WARNING, "CoT-Rec ranker (%s): %d users had no user tokens of round %d and "
                "used their node's last ones", label, out["tokens_fallback"], best)
        out["retriever"] = {"ndcg@10": sums.get(f"retriever/ndcg@{K}", 0.0) / n,
                            "hr@10": sums.get(f"retriever/hr@{K}", 0.0) / n,
                            "coverage": sums.get("covered", 0.0) / n}
        return out

    def after_rounds(self, grid: Grid, run: dict[str, Any], out_dir: Path | None = None
                     ) -> dict[str, Any]:
        """The ranker at the best round: untuned, federated LoRA, tuned; returns run fields."""
        best = run.get("best_round")
        if self.cfg.cotrec_ranker == "none" or best is None:
            return {"phases": self.log_phases.phases}
        if best not in self.round_arrays:
            log(WARNING, "CoT-Rec: the arrays of the best round %s were not kept; no ranker phase",
                best)
            return {"phases": self.log_phases.phases}
        untuned = self._ranker_eval(grid, best, "untuned", self.adapter)
        ranker: dict[str, Any] = {"retriever": untuned.pop("retriever"), "untuned": untuned}
        if self.cfg.cotrec_ranker == "lora" and not self.adapter:
            ranker["lora"] = {"skipped": "the LLM backend cannot be fine-tuned"}
        elif self.cfg.cotrec_ranker == "lora":
            adapter, samples = self.adapter, 0.0
            for r in range(1, self.cfg.cotrec_lora_rounds + 1):
                config = ConfigRecord({"cotrec-phase": "lora", "best-round": best,
                                       "server-round": r})
                replies = self._ask(grid, "ranker-lora-train", RecordDict(
                    {"arrays": self.round_arrays[best], "config": config,
                     "adapter": to_record(adapter)}), MessageType.TRAIN)
                weights = [float(m.content.metric_records["metrics"]["num-samples"])
                           for m in replies]
                new = fedavg_adapters([from_record(m.content.array_records["adapter"])
                                       for m in replies], weights) if replies else None
                samples = sum(weights)
                if new is None:
                    log(WARNING, "LoRA round %d: no node had a validation sample", r)
                    break
                adapter = new
                log(INFO, "LoRA round %d: %d samples from %d nodes", r, samples, len(replies))
            if out_dir is not None:
                np.savez(Path(out_dir) / "adapter.npz", **adapter)
            ranker["lora"] = self._ranker_eval(grid, best, "lora", adapter)
            ranker["lora"].pop("retriever")
            ranker["lora"]["samples"] = samples
        return {"ranker": ranker, "phases": self.log_phases.phases}


def build_cotrec_strategy(cfg: RunConfig, n_items: int, n_users: int, texts: list[str]
                          ) -> tuple[FedCoTRec, ArrayRecord]:
    """Item perception on the server (public ``texts``), the projection and the initial state.

    ``n_users`` (the user-token table's size) and ``texts`` come from the nodes: the server
    opens no split.
    """
    phases = PhaseLog()
    llm, encoder = make_llm(cfg), make_encoder(cfg)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    with phases.phase("item-perception", llm):
        rows, projection, _ = item_side(cfg, llm, encoder, texts, out_dir)
    adapter = initial_adapter(llm, cfg) if llm is not None and cfg.cotrec_ranker == "lora" \
        else {}
    init = build_retriever(cfg, n_items, n_users, rows)
    log(INFO, "CoT-Rec: item table %s, projection %s, LoRA adapter of %d arrays",
        "from text" if rows is not None else "random", "sent" if projection else "none",
        len(adapter))
    return FedCoTRec(cfg, projection, adapter, phases), to_record(init.shared_state())


