"""``fused-evaluate``: which rounds defer their evaluation, which runs may, and the reply split.

With ``fused-evaluate=true`` a round r that is due for evaluation (``eval-every``) sends no
``evaluate`` message: round r+1's train message asks every node to evaluate the arrays it
brings (round r's global model) before training (:mod:`florec.protocol.fused`), and the round
loop (:func:`florec.server.app.run_round`) records round r when round r+1's replies are in. The
last round and a checkpoint round (its nodes' stores are snapshot right after it) are evaluated
with a plain ``evaluate`` message, so rounds.jsonl, the selected round and checkpoints are those
of a separate run; an early stop is known one round late (docs/scale.md). Failures are booked
as a separate run books them: a node whose training of round r+1 fails is dropped in round
r+1's row and keeps its evaluation of round r; one whose evaluation fails is dropped in round
r's row; one that missed a reply of round r is not evaluated for it (:class:`FusedReplies`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import Any

from flwr.app import Message

from florec.models.registry import SEQUENTIAL_MODELS
from florec.protocol.fused import split_reply
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig


def check_fused(cfg: RunConfig) -> None:
    """Refuse ``fused-evaluate`` where a train message cannot carry the evaluation unchanged.

    Raises
    ------
    ConfigError
        One line naming the combination and the fix: a method other than FedAvg-MF (BPR) or
        sequential FedAvg, node sampling or user cohorts (the train messages would not reach
        every node), user-level DP or secure aggregation (the train reply is noised or masked).

    """
    if not cfg.fused_evaluate:
        return
    fix = "; set fused-evaluate=false"
    mf = cfg.algorithm == "fedavg" and cfg.model == "mf" and cfg.mf_loss == "bpr"
    if not (mf or (cfg.algorithm == "fedavg" and cfg.model in SEQUENTIAL_MODELS)):
        what = f"mf-loss '{cfg.mf_loss}'" if cfg.model == "mf" and cfg.algorithm == "fedavg" \
            else f"algorithm '{cfg.algorithm}' with model '{cfg.model}'"
        raise ConfigError(f"fused-evaluate is implemented for FedAvg-MF (mf-loss 'bpr') and "
                          f"sequential FedAvg (sasrec, gru4rec), not {what}{fix}")
    if cfg.fraction_train < 1.0 or cfg.cohort_fraction < 1.0 or cfg.cohort_size > 0:
        raise ConfigError("fused-evaluate needs every node in every round (its train message "
                          "carries the evaluation of all users); set fraction-train=1, "
                          f"cohort-fraction=1 and cohort-size=0{fix}")
    if cfg.dp or cfg.secagg:
        key = "dp" if cfg.dp else "secagg"
        raise ConfigError(f"fused-evaluate is not implemented with {key}=true (noised or masked "
                          f"train replies); set {key}=false{fix}")


def defers(cfg: RunConfig, rnd: int) -> bool:
    """Whether round ``rnd``'s due evaluation rides on round ``rnd + 1``'s train messages.

    Not the last round (no next message) nor a checkpoint round (the checkpoint holds the
    round's selection state and its nodes' stores before the next training).
    """
    checkpoint = cfg.checkpoint_every > 0 and rnd % cfg.checkpoint_every == 0
    return cfg.fused_evaluate and rnd < cfg.num_rounds and not checkpoint


class FusedReplies:
    """Split fused replies as they stream in: train replies pass on, evaluations are kept.

    Iterate it in place of the replies (the strategy's ``aggregate_train`` does); afterwards
    :attr:`evaluations` holds the evaluation part of every reply that carried one (an
    evaluation that failed on the node as an error reply, so the strategy logs it) and
    :attr:`seconds` the slowest of those nodes' evaluation time. A reply that failed as a whole
    carries no evaluation: its node is missing from the evaluation, and the strategy logs it
    once, as a failed training.

    Parameters
    ----------
    replies : iterable of Message
        The fused train replies.
    skip : collection of int
        Nodes whose evaluation part is discarded: those that missed a reply of the evaluated
        round, which a separate run sends no ``evaluate`` message
        (:meth:`florec.strategies.base.RecStrategy.responsive_nodes`).

    """

    def __init__(self, replies: Iterable[Message], skip: Collection[int] = ()) -> None:
        self.replies = replies
        self.skip = frozenset(int(n) for n in skip)
        self.evaluations: list[Message] = []
        self.seconds = 0.0

    def __iter__(self) -> Iterator[Message]:
        for msg in self.replies:
            train, evaluation, seconds = split_reply(msg)
            if evaluation is not None and int(msg.metadata.src_node_id) not in self.skip:
                self.evaluations.append(evaluation)
                self.seconds = max(self.seconds, seconds)
            yield train


def book_evaluation_drops(row: dict[str, Any], dropped: list[str], unresponsive: int) -> None:
    """Add a deferred round's failed evaluations to its row's ``dropped``, as a separate run.

    A separate run's row lists the training's failed nodes, then the evaluation's, then the
    nodes that missed a reply (:func:`florec.server.rounds.round_costs`); the deferred row holds
    the first and the last (``unresponsive`` names at its end) when the evaluations come in.
    """
    names = row.setdefault("dropped", [])
    at = len(names) - unresponsive
    names[at:at] = dropped
