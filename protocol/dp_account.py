"""Privacy accounting of user-level DP-FedAvg with Poisson user sampling (Google's dp-accounting).

Each round is the sampled Gaussian mechanism: users are included independently with probability
``q`` and the clipped sum gets Gaussian noise with standard deviation ``z C`` (``z`` the noise
multiplier, ``C`` the clip), so its event is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``;
``T`` rounds compose it ``T`` times. The RDP accountant of ``dp_accounting`` (Mironov et al.
2019) turns that into ``epsilon`` at a given ``delta`` (add-or-remove-one-user neighbouring); the
PLD accountant is available for a tighter bound. Nothing here is hand-written accounting.

Both sides use this module: the server to report epsilon per round and to calibrate ``z`` from
a target ``dp-epsilon``, a node (``distributed`` mode) to compute the noise it adds itself
rather than trust the server's word.
"""

from __future__ import annotations

import logging
import math

import dp_accounting
from dp_accounting import pld, rdp

from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig

__all__ = ["ORDERS", "dp_delta", "epsilon", "noise_multiplier", "round_event", "round_metrics"]

#: RDP orders (integers: fractional ones make the library warn and drop them at small q)
ORDERS = tuple(range(2, 65)) + (80, 96, 128, 192, 256, 512, 1024)

logging.getLogger("absl").setLevel(logging.ERROR)


def round_event(q: float, z: float, rounds: int) -> dp_accounting.DpEvent:
    """The DpEvent of ``rounds`` rounds of the Poisson-sampled Gaussian mechanism."""
    one = dp_accounting.GaussianDpEvent(z)
    if q < 1.0:
        one = dp_accounting.PoissonSampledDpEvent(q, one)
    return dp_accounting.SelfComposedDpEvent(one, rounds)


def _accountant(kind: str) -> dp_accounting.PrivacyAccountant:
    if kind == "rdp":
        return rdp.RdpAccountant(list(ORDERS))
    if kind == "pld":
        return pld.PLDAccountant()
    raise ValueError(f"accountant '{kind}' is unknown; use rdp or pld")


def epsilon(q: float, z: float, rounds: int, delta: float, accountant: str = "rdp") -> float:
    r"""Epsilon at ``delta`` after ``rounds`` rounds of sampling rate ``q`` and noise ``z``.

    The privacy loss of the composed sampled Gaussian mechanism
    :math:`\mathcal M_t(D) = \sum_{u \in S_t} \mathrm{clip}_C(\Delta_u) + \mathcal N(0, z^2 C^2 I)`,
    :math:`S_t` a Poisson sample of rate :math:`q`, as the dp-accounting library computes it.

    Parameters
    ----------
    q : float
        User sampling rate in (0, 1].
    z : float
        Noise multiplier (noise std / clip); 0 means no noise (epsilon is infinite).
    rounds : int
        Rounds run so far (0 gives 0).
    delta : float
        Target delta in (0, 1).
    accountant : {"rdp", "pld"}
        The library's accountant.

    Returns
    -------
    float
        Epsilon (``inf`` without noise).

    """
    if rounds <= 0:
        return 0.0
    if z <= 0:
        return math.inf
    acc = _accountant(accountant)
    acc.compose(round_event(q, z, rounds))
    return float(acc.get_epsilon(delta))


def dp_delta(cfg: RunConfig, n_users: int) -> float:
    """``dp-delta``, or ``1 / n_users`` when it is 0."""
    return cfg.dp_delta if cfg.dp_delta > 0 else 1.0 / max(n_users, 2)


def noise_multiplier(cfg: RunConfig, n_users: int) -> float:
    """The run's ``z``: ``dp-noise-multiplier``, or calibrated to ``dp-epsilon`` if that is set.

    With ``dp-epsilon`` > 0, ``z`` is the smallest noise multiplier whose epsilon after
    ``num-rounds`` rounds at ``q = cohort-fraction`` and :func:`dp_delta` is at most
    ``dp-epsilon`` (``dp_accounting.calibrate_dp_mechanism``, RDP accountant).

    Raises
    ------
    ConfigError
        If both ``dp-epsilon`` and ``dp-noise-multiplier`` are set.

    """
    if cfg.dp_epsilon <= 0:
        return cfg.dp_noise_multiplier
    if cfg.dp_noise_multiplier > 0:
        raise ConfigError("set dp-epsilon or dp-noise-multiplier, not both (dp-epsilon "
                          "calibrates the noise multiplier); set the other to 0")
    delta = dp_delta(cfg, n_users)
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant("rdp"),
        lambda z: round_event(cfg.cohort_fraction, z, cfg.num_rounds),
        cfg.dp_epsilon, delta,
        dp_accounting.ExplicitBracketInterval(1e-3, 1e3), tol=1e-4))


def round_metrics(eps: float, delta: float, z: float) -> dict[str, float]:
    """The DP entries of a ``rounds.jsonl`` row.

    ``dp-epsilon`` (left out while infinite), ``dp-delta`` and ``dp-noise-multiplier``.
    """
    out = {"dp-delta": delta, "dp-noise-multiplier": z}
    return out | ({"dp-epsilon": eps} if math.isfinite(eps) else {})
