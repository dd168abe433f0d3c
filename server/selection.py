"""Best-round selection over rounds evaluated on possibly different users.

A node that fails (or is lost) during an evaluation leaves its users out of that round's pooled
metrics, so two rounds' scores are comparable only when they cover the same users. Each
evaluation carries a :class:`Coverage`: the partitions (buckets of users) whose sums were
pooled. A round can become the best round only if

- it covers exactly the partitions of the best round so far and scores higher, or
- it covers strictly more partitions than the best round so far (whose score, measured on fewer
  users, is not comparable): it replaces it whatever its score.

Any other evaluated round is *not comparable* (``"comparable": false`` in ``rounds.jsonl``) and
counts as an evaluation without improvement for ``patience``. ``results.json`` reports the
coverage of the selected round next to its metrics (:meth:`Coverage.to_json`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from logging import WARNING
from typing import Any

from flwr.supercore import log

from florec.server.progress import Progress


@dataclass(frozen=True)
class Coverage:
    """Which users one evaluation's pooled metrics cover.

    Attributes
    ----------
    partitions : frozenset of int
        Partitions whose metric sums were pooled.
    num_partitions : int
        Partitions of the run (one per node).
    valid_users, test_users : int
        Users counted in the validation and test means (``num-users``).

    """

    partitions: frozenset[int]
    num_partitions: int
    valid_users: int
    test_users: int

    @classmethod
    def of(cls, partitions: Iterable[int], num_partitions: int, valid: dict[str, float],
           test: dict[str, float]) -> Coverage:
        """The coverage of pooled ``valid`` / ``test`` means over ``partitions``."""
        return cls(frozenset(int(p) for p in partitions), int(num_partitions),
                   int(valid.get("num-users", 0)), int(test.get("num-users", 0)))

    @property
    def complete(self) -> bool:
        """Whether every partition was evaluated."""
        return len(self.partitions) == self.num_partitions

    def to_json(self) -> dict[str, Any]:
        """The ``coverage`` entry of ``results.json`` and ``rounds.jsonl``."""
        missing = sorted(set(range(self.num_partitions)) - self.partitions)
        return {"valid_users": self.valid_users, "test_users": self.test_users,
                "nodes_evaluated": len(self.partitions), "nodes": self.num_partitions,
                "complete": self.complete, "missing_partitions": missing}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Coverage:
        """Inverse of :meth:`to_json` (a resumed run's best-round coverage)."""
        n = int(entry["nodes"])
        return cls(frozenset(range(n)) - frozenset(entry["missing_partitions"]), n,
                   int(entry["valid_users"]), int(entry["test_users"]))


def improves(score: float, coverage: Coverage, best_score: float,
             best: Coverage | None) -> bool:
    """Whether a round of ``score`` over ``coverage`` replaces the best round so far.

    Parameters
    ----------
    score, coverage
        The new round's selection metric and coverage.
    best_score, best
        The best round's; ``best`` is None before the first evaluation (or after resuming a
        run whose checkpoint predates coverage), when only the scores count.

    """
    if best is None or coverage.partitions == best.partitions:
        return score > best_score
    return coverage.partitions > best.partitions


def select_round(state: Progress, rnd: int, metric: str, valid: dict[str, float],
                 test: dict[str, float], coverage: Coverage) -> bool:
    """Update the best round of ``state`` with round ``rnd``'s evaluation.

    Returns
    -------
    bool
        Whether the round was comparable with the best round (see the module docstring).

    """
    run = state.run
    best = Coverage.from_json(run["coverage"]) if run.get("coverage") else None
    score = valid.get(metric, float("-inf"))
    comparable = best is None or coverage.partitions == best.partitions \
        or coverage.partitions > best.partitions
    if not coverage.complete:
        log(WARNING, "round %d: evaluated on %d of %d nodes (%d validation users)%s", rnd,
            len(coverage.partitions), coverage.num_partitions, coverage.valid_users,
            "" if comparable else ": not comparable with the best round, which covers "
            "other users; it cannot be selected")
    if improves(score, coverage, state.best_score, best):
        state.best_score, state.since_best = score, 0
        run.update(best_round=rnd, metrics=test, valid_metrics=valid,
                   coverage=coverage.to_json())
    else:
        state.since_best += 1
    return comparable
