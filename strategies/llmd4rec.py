r"""Federated LLMD4Rec on the server: FedAvg of the CRM, federated LoRA of the LLM teacher.

Schedule over ``num-rounds`` rounds, with P = ``llmd4rec-pretrain-rounds``, R =
``llmd4rec-iterations``, E = ``llmd4rec-crm-epochs``:

* rounds 1..P: plain SASRec FedAvg (:class:`FedAvgParams`: every shared array, weighted by the
  nodes' training positions; with ``aggregation='item-weighted'`` the item rows by the nodes'
  item counts);
* at the first round of iteration r (rounds P + (r-1)E + 1), before the CRM's train messages,
  the teacher phase (:meth:`FedLLMD4Rec.teacher_phase`): every node builds its own samples'
  candidates with the current global CRM and trains the LoRA adapter from the global one
  (CE + KL toward the CRM); the server averages the adapters weighted by samples,

  .. math:: A \leftarrow \frac{\sum_k m_k A_k}{\sum_k m_k}

  (:func:`florec.strategies.fedavg_lora.fedavg_adapters`); then every node scores its samples
  with the averaged adapter and keeps the teacher table in its store;
* rounds after P: the CRM's local epochs add the weighted KL toward the node's stored table;
* after the rounds (:meth:`FedLLMD4Rec.after_rounds`): the CRM of the best validation round is
  re-ranked by the teacher on every node's test users (sums pooled).

Nothing sent or received holds a user's history, a prompt, a candidate list or a per-user
number: adapters, CRM arrays and counts / metric sums only (docs/methods/llmd4rec.md).
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

from florec.protocol.codec import from_record, to_record
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.server.loop import stream_replies
from florec.strategies.fedavg_lora import BestRoundArrays, fedavg_adapters
from florec.strategies.fedavg_params import FedAvgParams

#: checkpoint keys of the averaged adapter (``<prefix><name>``), the iteration log and phases
ADAPTER_PREFIX = "llmd4rec-adapter/"
ITERATIONS_KEY = "llmd4rec-iterations"
ITERATION_COLUMNS = ("iteration", "samples", "coverage", "teacher_top1", "nodes")
PHASE_PREFIX = "llmd4rec-phase/"


def iteration_of(cfg: RunConfig, server_round: int) -> int:
    """The iteration whose teacher phase opens ``server_round`` (0: none)."""
    k = server_round - cfg.llmd4rec_pretrain_rounds - 1
    if k < 0 or k % cfg.llmd4rec_crm_epochs or k // cfg.llmd4rec_crm_epochs >= \
            cfg.llmd4rec_iterations:
        return 0
    return k // cfg.llmd4rec_crm_epochs + 1


class FedLLMD4Rec(BestRoundArrays, FedAvgParams):
    """FedAvg of SASRec plus LLMD4Rec's teacher phases (module docstring).

    Only the CRM arrays of the best round so far are kept (and checkpointed) for the
    re-ranking (:class:`~florec.strategies.fedavg_lora.BestRoundArrays`). Checkpoints also hold
    the averaged LoRA adapter, the iteration log and the phase counters
    (:meth:`state_arrays`), so a resumed run goes on from the teacher it had.
    """

    round_prefix = "llmd4rec-round-"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg.fraction_train, cfg.seed,
                         item_weighted=cfg.aggregation == "item-weighted")
        self.cfg = cfg
        self.adapter: dict = {}  # empty: every node starts from the seeded A, B = 0
        self.round_arrays: dict[int, ArrayRecord] = {}
        self.phases: dict[str, dict[str, float]] = {}
        self.iterations: list[dict[str, float]] = []

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The base state plus the adapter, the iteration log and the phase counters.

        Keys: ``llmd4rec-adapter/<PEFT name>`` (float32, as averaged), ``llmd4rec-iterations``
        (one row per iteration, columns :data:`ITERATION_COLUMNS`) and
        ``llmd4rec-phase/<phase>/<counter>`` (scalars).
        """
        state = super().state_arrays()
        state |= {f"{ADAPTER_PREFIX}{k}": v for k, v in self.adapter.items()}
        state[ITERATIONS_KEY] = np.array(
            [[row[c] for c in ITERATION_COLUMNS] for row in self.iterations],
            dtype=np.float64).reshape(-1, len(ITERATION_COLUMNS))
        state |= {f"{PHASE_PREFIX}{name}/{k}": np.float64(v)
                  for name, row in self.phases.items() for k, v in row.items()}
        return state

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_arrays` (a checkpoint without the LLMD4Rec keys restores none)."""
        ours = (ADAPTER_PREFIX, ITERATIONS_KEY, PHASE_PREFIX)
        super().load_state_arrays({k: v for k, v in arrays.items() if not k.startswith(ours)})
        self.adapter = {k[len(ADAPTER_PREFIX):]: np.asarray(v) for k, v in arrays.items()
                        if k.startswith(ADAPTER_PREFIX)}
        rows = np.asarray(arrays.get(ITERATIONS_KEY, np.zeros((0, len(ITERATION_COLUMNS)))))
        self.iterations = [{c: (int(v) if c in ("iteration", "nodes") else float(v))
                            for c, v in zip(ITERATION_COLUMNS, row, strict=True)}
                           for row in rows.reshape(-1, len(ITERATION_COLUMNS))]
        self.phases = {}
        for key, value in arrays.items():
            if key.startswith(PHASE_PREFIX):
                name, counter = key[len(PHASE_PREFIX):].rsplit("/", 1)
                self.phases.setdefault(name, {})[counter] = float(value)

    def _ask(self, grid: Grid, name: str, record: RecordDict, kind: str) -> list[Message]:
        t0 = time.perf_counter()
        nodes = self.responsive_nodes(grid)
        msgs = self.messages(record, nodes, kind)  # counts the bytes sent
        replies = list(stream_replies(grid, self.in_node_order(msgs),  # partition order
                                      self.cfg.round_timeout_s))
        row = self.phases.setdefault(name, {"seconds": 0.0})
        row["seconds"] += time.perf_counter() - t0
        ok = []
        for msg in replies:
            if msg.has_error():
                self.drop(0, msg, f"{name} failed: {msg.error.reason}")
                continue
            self.bytes_up += sum(len(a.data) for rec in msg.content.array_records.values()
                                 for a in rec.values())
            for k, v in msg.content.metric_records["metrics"].items():
                if k.startswith("llm/"):
                    row[k[4:]] = row.get(k[4:], 0) + float(v)
            ok.append(msg)
        return ok

    def teacher_phase(self, grid: Grid, server_round: int, arrays: ArrayRecord,
                      iteration: int) -> None:
        """Federated LoRA of the teacher (when it can train), then the nodes' scoring pass."""
        config = {"server-round": server_round, "iteration": iteration}
        if self.cfg.llmd4rec_llm_epochs > 0:
            replies = self._ask(grid, "teacher-fit", RecordDict(
                {"arrays": arrays, "adapter": to_record(self.adapter),
                 "config": ConfigRecord(config | {"llmd4rec-phase": "lora"})}),
                MessageType.TRAIN)
            weights = [float(m.content.metric_records["metrics"]["num-samples"])
                       for m in replies]
            new = fedavg_adapters([from_record(m.content.array_records["adapter"])
                                   for m in replies], weights) if sum(weights) > 0 else None
            if new is not None:
                self.adapter = new
                log(INFO, "LLMD4Rec iteration %d: adapter averaged over %d samples of %d "
                    "nodes", iteration, int(sum(weights)), len(replies))
            else:
                log(WARNING, "LLMD4Rec iteration %d: no node trained the LLM (backend "
                    "without weights or no covered sample)", iteration)
        replies = self._ask(grid, "teacher-probs", RecordDict(
            {"arrays": arrays, "adapter": to_record(self.adapter),
             "config": ConfigRecord(config | {"llmd4rec-phase": "score"})}), MessageType.TRAIN)
        sums = {k: sum(float(m.content.metric_records["metrics"].get(k, 0)) for m in replies)
                for k in ("samples", "covered", "teacher-top1")}
        self.iterations.append({"iteration": iteration, "samples": sums["samples"],
                                "coverage": sums["covered"] / max(sums["samples"], 1),
                                "teacher_top1": sums["teacher-top1"] / max(sums["covered"], 1),
                                "nodes": len(replies)})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The teacher phase at an iteration's first round, then the CRM's train messages."""
        iteration = iteration_of(self.cfg, server_round)
        if iteration:
            self.teacher_phase(grid, server_round, arrays, iteration)
        if server_round > self.cfg.llmd4rec_pretrain_rounds and self.iterations:
            config["llmd4rec-distill"] = 1
        return super().configure_train(server_round, arrays, config, grid)

    def after_rounds(self, grid: Grid, run: dict[str, Any], out_dir: Any = None
                     ) -> dict[str, Any]:
        """Re-ranking of the best round's CRM top-K by the teacher; returns run fields.

        The averaged adapter is written to ``<out_dir>/adapter.npz`` (PEFT names).
        """
        out: dict[str, Any] = {"phases": self.phases, "iterations": self.iterations}
        if out_dir is not None and self.adapter:
            np.savez(Path(out_dir) / "adapter.npz", **self.adapter)
            out["adapter"] = "adapter.npz"
        best = run.get("best_round")
        if not self.cfg.llmd4rec_rerank or not self.iterations or best not in self.round_arrays:
            return out
        record = RecordDict({"arrays": self.round_arrays[best],
                             "adapter": to_record(self.adapter),
                             "config": ConfigRecord({"llmd4rec-phase": "rerank",
                                                     "server-round": best})})
        sums: dict[str, float] = {}
        for msg in self._ask(grid, "rerank", record, MessageType.EVALUATE):
            for k, v in msg.content.metric_records["metrics"].items():
                if not k.startswith("llm/") and k != "partition-id":
                    sums[k] = sums.get(k, 0.0) + float(v)
        n = max(sums.pop("num-users", 0.0), 1.0)
        out["rerank"] = {k: v / n for k, v in sums.items()} | {"users": n}
        return out


def build_llmd4rec_strategy(cfg: RunConfig, n_items: int) -> tuple[FedLLMD4Rec, ArrayRecord]:
    """The strategy and the seeded SASRec's shared arrays (the same model as ``sasrec``).

    Raises
    ------
    ConfigError
        With ``llmd4rec-teacher='ensemble'`` (the federated teacher is the nodes' LLM).

    """
    if cfg.llmd4rec_teacher != "llm":
        raise ConfigError("federated LLMD4Rec distils from the nodes' LLM; set "
                          "llmd4rec-teacher='llm' (the ensemble teacher runs centrally)")
    from florec.models.registry import sequential_from_config

    init = sequential_from_config(cfg.model_copy(update={"model": "sasrec", "oracle": False}),
                                  n_items)
    return FedLLMD4Rec(cfg), to_record(init.shared_state())
