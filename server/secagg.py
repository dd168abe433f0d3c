"""The server's half of secure aggregation (:mod:`florec.protocol.secagg`) over the Message API.

A :class:`SecAggSession` is one aggregation: it takes the nodes' public keys (from FedAvg's
training replies, or from Fair Sampling's first setup stage), then builds and folds the three
exchanges ``share``, ``mask`` and ``unmask`` (``train.setup`` messages, see
:mod:`florec.protocol.secagg_wire`). The server routes encrypted shares it cannot read, receives
masked vectors, and removes the masks of the nodes whose vectors arrived (and the pair masks of
those that dropped after sharing) in one pass: it learns the sum over the surviving nodes only.

:func:`run_exchanges` drives the three exchanges in one go (FedAvg rounds); a strategy with
setup stages calls :meth:`SecAggSession.records` and :meth:`SecAggSession.take` per stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.protocol.codec import to_record
from florec.protocol.secagg import SecAggServer, default_threshold
from florec.protocol.secagg_wire import (
    KEY_BYTES,
    REFUSED,
    SEALED_BYTES,
    SETUP_NAME,
    SHARE_WIDTH,
    STAGES,
    encode_roster,
    fedavg_range,
)
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.server.loop import stream_replies
from florec.strategies.base import RecStrategy
from florec.strategies.payload import checked_arrays

__all__ = ["SETUP_TYPE", "STAGE_ARRAYS", "SecAggError", "SecAggRefused", "SecAggSession",
           "SecAggSpec", "SecAggTooFew", "check_secagg", "public_keys", "refusal",
           "run_exchanges", "stage_problem"]

SETUP_TYPE = f"{MessageType.TRAIN}.setup"
#: The arrays a node's reply to each exchange must hold (see :mod:`florec.client.secagg_node`).
STAGE_ARRAYS = {"share": ("to", "sealed"), "mask": ("masked",),
                "unmask": ("ids", "kind", "shares")}


class SecAggError(RuntimeError):
    """The aggregation cannot go on (see the subclasses)."""


class SecAggTooFew(SecAggError):
    """Too few nodes are left (dropouts): this aggregation fails, a run may go on."""


class SecAggRefused(SecAggError):
    """A node refused an unmask request: the server asked for what would expose a node."""


def refusal(msg: Message) -> str | None:
    """The reason of a node's refusal (a reply flagged ``secagg-refused``), else None."""
    if msg.has_error() or REFUSED not in msg.content.config_records:
        return None
    return str(msg.content.config_records[REFUSED].get("reason", "refused"))


@dataclass(frozen=True)
class SecAggSpec:
    """Secure aggregation of a FedAvg run: quantisation range ``R`` and exchange timeout."""

    clip: float
    timeout_s: float


def check_secagg(cfg: RunConfig) -> SecAggSpec | None:
    """The run's :class:`SecAggSpec` (None without ``secagg``); one-line errors for misuse.

    Raises
    ------
    ConfigError
        For a method other than FedAvg-MF, or a robust ``defense`` (it needs every node's update,
        which secure aggregation hides).

    """
    if not cfg.secagg:
        return None
    if cfg.algorithm != "fedavg" or cfg.model != "mf":
        raise ConfigError("secagg=true is implemented for algorithm 'fedavg' with model 'mf'; "
                          "set secagg=false for other methods")
    if cfg.defense != "none":
        raise ConfigError(f"defense '{cfg.defense}' needs each node's update, which secagg=true "
                          "hides from the server; set defense='none' or secagg=false")
    return SecAggSpec(fedavg_range(cfg.secagg_clip, cfg.aggregation, cfg.weighting),
                      cfg.round_timeout_s)


def stage_problem(msg: Message, stage: str) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """A reply's arrays for exchange ``stage`` and why they cannot be used (None if they can).

    An error reply, one without an ``arrays`` record, one that does not decode, or one that
    lacks an array of :data:`STAGE_ARRAYS` (or holds one of a non-real dtype) cannot be used.
    The caller treats such a node as dropped at ``stage``, as the protocol treats a node that
    fails or times out: before ``mask`` it is left out of the sum, after it its masks are
    removed with the others' shares. The reason is one line.
    """
    if msg.has_error():
        return None, msg.error.reason.strip().splitlines()[-1]
    arrays, problem = checked_arrays(msg, dict.fromkeys(STAGE_ARRAYS.get(stage, ())))
    return (None, problem) if problem is not None else (arrays, None)


def public_keys(arrays: dict[str, np.ndarray]) -> tuple[bytes, bytes] | None:
    """``(C, S)`` from a reply's arrays, or None if they are missing or malformed."""
    c, s = arrays.get("secagg-c-pk"), arrays.get("secagg-s-pk")
    if c is None or s is None or c.shape != (KEY_BYTES,) or s.shape != (KEY_BYTES,):
        return None
    return c.astype(np.uint8).tobytes(), s.astype(np.uint8).tobytes()


class SecAggSession:
    """One secure aggregation, server side.

    Parameters
    ----------
    info : str
        The aggregation's name (fresh per aggregation; nodes refuse other names).
    roster : dict of int to (bytes, bytes)
        Each participating node's public keys ``(C, S)``.
    floor : int
        Lowest threshold (:func:`florec.protocol.secagg.dp_noise_shares` under distributed DP).

    """

    def __init__(self, info: str, roster: dict[int, tuple[bytes, bytes]],
                 floor: int = 0) -> None:
        self.info = info
        self.server = SecAggServer(max(default_threshold(len(roster)), floor), info.encode())
        self.server.roster = dict(sorted(roster.items()))
        self.inboxes: dict[int, dict[int, bytes]] = {}
        self.uploads: dict[int, np.ndarray] = {}
        self.total: np.ndarray | None = None

    @property
    def alive(self) -> list[int]:
        """Nodes whose masked vector arrived (the sum is over them)."""
        return sorted(self.uploads)

    @property
    def dropped(self) -> list[int]:
        """Nodes that shared their secrets but sent no masked vector."""
        return [v for v in self.server.shared if v not in self.uploads]

    def _record(self, stage: str, arrays: dict[str, np.ndarray]) -> RecordDict:
        cfg = ConfigRecord({"setup": SETUP_NAME, "stage": stage, "info": self.info})
        return RecordDict({"config": cfg, "arrays": to_record(arrays)})

    def records(self, stage: str) -> dict[int, RecordDict]:
        """The message content of ``stage`` for each node that takes part in it.

        Raises
        ------
        SecAggTooFew
            Before ``mask`` / ``unmask``, if fewer nodes than the threshold shared their
            secrets / sent their masked vector (more than ``n - t`` dropped): the nodes would
            refuse, and the sum cannot be unmasked.

        """
        if stage == "mask" and len(self.server.shared) < self.server.threshold:
            raise SecAggTooFew(f"{len(self.server.shared)} nodes shared their secrets, fewer "
                               f"than the threshold {self.server.threshold}")
        if stage == "unmask" and len(self.alive) < self.server.threshold:
            raise SecAggTooFew(f"{len(self.alive)} masked vectors arrived, fewer than the "
                               f"threshold {self.server.threshold} of {len(self.server.roster)}")
        if stage == "share":
            record = self._record(stage, encode_roster(self.server.roster))
            return dict.fromkeys(self.server.roster, record)
        if stage == "mask":
            out = {}
            for v, box in self.inboxes.items():
                ids = sorted(box)
                sealed = (np.stack([np.frombuffer(box[u], np.uint8) for u in ids]) if ids
                          else np.zeros((0, SEALED_BYTES), np.uint8))
                out[v] = self._record(stage, {"from": np.array(ids, np.uint64),
                                              "sealed": sealed})
            return out
        lists = {"alive": np.array(self.alive, np.uint64),
                 "dropped": np.array(self.dropped, np.uint64)}
        return dict.fromkeys(self.alive, self._record(stage, lists))

    def take(self, stage: str, replies: dict[int, dict[str, np.ndarray]]) -> None:
        """Fold the good replies (node -> arrays) of ``stage``.

        Raises
        ------
        SecAggTooFew
            If, after ``unmask``, fewer than the threshold of nodes revealed their shares.

        """
        if stage == "share":
            boxes = {}
            for u, arr in replies.items():
                if arr["sealed"].shape[1:] == (SEALED_BYTES,) and u in self.server.roster:
                    boxes[u] = {int(v): c.astype(np.uint8).tobytes()
                                for v, c in zip(arr["to"].astype(np.uint64), arr["sealed"],
                                                strict=True)}
            self.inboxes = self.server.route(boxes)
        elif stage == "mask":  # a vector of another length than most is treated as missing
            lengths = [len(a["masked"]) for u, a in replies.items() if u in self.server.shared]
            common = max(set(lengths), key=lengths.count) if lengths else 0
            self.uploads = {u: a["masked"].astype(np.uint32) for u, a in replies.items()
                            if u in self.server.shared and len(a["masked"]) == common}
            if len(self.uploads) < len(lengths):
                log(WARNING, "secure aggregation: %d masked vector(s) of another length than "
                    "%d left out", len(lengths) - len(self.uploads), common)
        else:
            reveals = {u: {int(v): ("s" if k else "b", sh.astype(np.uint8).tobytes())
                           for v, k, sh in zip(a["ids"].astype(np.uint64), a["kind"],
                                               a["shares"], strict=True)}
                       for u, a in replies.items()
                       if a["shares"].shape[1:] == (SHARE_WIDTH,)}
            if len(reveals) < self.server.threshold:
                raise SecAggTooFew(f"{len(reveals)} nodes revealed shares, fewer than the "
                                   f"threshold {self.server.threshold}")
            self.total = self.server.unmask_sum(self.uploads, reveals)


def run_exchanges(strategy: RecStrategy, grid: Grid, session: SecAggSession, server_round: int,
                  timeout_s: float) -> dict[str, float]:
    """Drive ``share``, ``mask`` and ``unmask``; the sum is left in ``session.total``.

    Bytes are counted on ``strategy`` (of the replies used); a node that fails, times out or
    sends a malformed reply (:func:`stage_problem`) is named in its dropped list and left out
    (before masking: not in the sum; after: recovered). Returns the costs:
    nodes alive and dropped, seconds, and the bytes of the three exchanges up and down (the
    masked vectors included; the keys ride on the training replies).

    Raises
    ------
    SecAggRefused
        A node refused to unmask (the server asked for what would expose a node).
    SecAggTooFew
        Too few nodes are left to mask or to remove the masks (checked before each exchange).

    """
    t0, up0, down0 = time.perf_counter(), strategy.bytes_up, strategy.bytes_down
    for stage in STAGES:
        messages = [m for node, rec in session.records(stage).items()
                    for m in strategy.messages(rec, [node], SETUP_TYPE)]
        good: dict[int, dict[str, np.ndarray]] = {}
        for msg in stream_replies(grid, messages, timeout_s, strategy.unresponsive):
            if (why := refusal(msg)) is not None:
                raise SecAggRefused(f"node {msg.metadata.src_node_id} refused to {stage}: {why}")
            arrays, problem = stage_problem(msg, stage)
            if arrays is None:  # failed, or a malformed reply: the node dropped at this stage
                strategy.drop(server_round, msg, f"secure aggregation {stage}: {problem}")
                continue
            strategy.bytes_up += sum(len(a.data) for a in
                                     msg.content.array_records["arrays"].values())
            good[int(msg.metadata.src_node_id)] = arrays
        session.take(stage, good)
    if session.dropped:
        log(WARNING, "round %d: secure aggregation recovered %d node(s) that dropped after "
            "sharing: %s", server_round, len(session.dropped), session.dropped)
    return {"secagg-alive": len(session.alive), "secagg-dropped": len(session.dropped),
            "secagg-s": time.perf_counter() - t0,
            "secagg-bytes-up": strategy.bytes_up - up0,
            "secagg-bytes-down": strategy.bytes_down - down0}

