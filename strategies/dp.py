r"""The server's half of user-level DP-FedAvg for MF: noise on the round's sum, and the accountant.

The nodes sample users by Poisson sampling at rate ``q = cohort-fraction`` and clip every
user's whole item update to L2 norm ``C`` (:mod:`florec.client.trainers.dp_clip`). The server
then releases

.. math:: \Delta = \frac{1}{D} \Big( \sum_{u \in S_t} \mathrm{clip}_C(\Delta_u)
          + \mathcal N(0, z^2 C^2 I) \Big)

over the whole item table (embeddings and biases, touched rows or not), with a fixed
denominator ``D`` that does not depend on the data: ``D = 1`` for ``aggregation='sum'`` and
``D = q U`` (the expected cohort size, ``U`` users) for ``aggregation='dense'`` with uniform
weights (McMahan et al. 2018's fixed-denominator estimator). One user changes the sum by at most
``C``, so each round is the sampled Gaussian mechanism and the accountant of
:mod:`florec.protocol.dp_account` gives epsilon at ``delta = 1/U`` (or ``dp-delta``) after each
round. In ``central`` mode the server (trusted) draws the noise here; in ``distributed`` mode
every node adds its share, the server adds none and sees only the sum (``secagg`` is required),
and the shares are sized so that any sum the nodes agree to unmask (at least the secure
aggregation's threshold ``t`` of ``num-nodes``) holds the whole ``z^2 C^2``
(:func:`florec.protocol.secagg.dp_noise_shares`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from florec.protocol import dp_account
from florec.protocol.secagg import dp_noise_shares
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.strategies.fedcia_dp import check_fedcia_dp

__all__ = ["UserDP", "check_dp"]


def check_dp(cfg: RunConfig) -> None:
    """Fail with one line if ``dp=true`` is combined with settings it cannot account for.

    Also refuses ``user-refit-steps`` outside FedAvg-MF (with or without DP): the refit
    (:mod:`florec.models.user_refit`) fits MF user rows. Federated runs only: ``florec central``
    refuses the key itself (:func:`florec.sim.cli_run.central`).

    Raises
    ------
    ConfigError
        For another algorithm or model, an aggregation whose denominator depends on the data
        (``sparse``, or ``dense`` weighted by interactions), fixed-size cohorts, node sampling,
        both ``dp-epsilon`` and ``dp-noise-multiplier``, or distributed noise without
        ``secagg`` (the server would see each node's barely noised upload); FedCIA's settings
        are checked by :func:`florec.strategies.fedcia_dp.check_fedcia_dp`.

    """
    if cfg.user_refit_steps > 0 and (cfg.algorithm != "fedavg" or cfg.model != "mf"):
        raise ConfigError("user-refit-steps refits FedAvg-MF user embeddings: it needs algorithm "
                          "'fedavg' and model 'mf'; set user-refit-steps=0 for other methods")
    if not cfg.dp:
        return
    if cfg.dp_epsilon > 0 and cfg.dp_noise_multiplier > 0:
        raise ConfigError("set dp-epsilon or dp-noise-multiplier, not both (dp-epsilon "
                          "calibrates the noise multiplier); set the other to 0")
    if cfg.algorithm == "fedcia":  # the similarity mechanism (strategies/fedcia_dp.py)
        check_fedcia_dp(cfg)
        return
    if cfg.algorithm != "fedavg" or cfg.model != "mf" or cfg.mf_loss != "bpr":
        raise ConfigError("dp=true is implemented for algorithm 'fedavg' (model 'mf', mf-loss "
                          "'bpr') and 'fedcia' (dense) only; set dp=false for other methods")
    if cfg.aggregation == "sparse" or (cfg.aggregation == "dense"
                                       and cfg.weighting != "uniform"):
        raise ConfigError("dp=true needs a fixed denominator: set aggregation='sum', or "
                          "aggregation='dense' with weighting='uniform'")
    if cfg.dp_mode == "distributed" and not cfg.secagg:
        raise ConfigError("dp-mode='distributed' protects against the server only under secure "
                          "aggregation: set secagg=true (or dp-mode='central')")
    if cfg.cohort_size > 0 or cfg.fraction_train < 1.0:
        raise ConfigError("dp=true samples users by Poisson sampling at rate cohort-fraction; "
                          "set cohort-size=0 and fraction-train=1")


@dataclass
class UserDP:
    """User-level DP of one FedAvg-MF run (see the module docstring).

    Attributes
    ----------
    clip : float
        ``C``, the bound of one user's item update.
    z : float
        Noise multiplier (given or calibrated to ``dp-epsilon``).
    q : float
        Poisson sampling rate of users.
    n_users : int
        ``U``.
    delta : float
        The delta of the reported epsilon.
    mode : {"central", "distributed"}
        Who draws the noise.
    denominator : float
        ``D`` (1 for ``sum``, ``q U`` for ``dense``).
    noise_shares : int
        Distributed mode: the fewest node shares in a released sum, which is also the secure
        aggregation's threshold floor; 0 in central mode.

    """

    clip: float
    z: float
    q: float
    n_users: int
    delta: float
    mode: str
    denominator: float
    noise_shares: int = 0

    @classmethod
    def from_config(cls, cfg: RunConfig, n_users: int) -> UserDP:
        """The run's DP parameters (calibrates ``z`` when ``dp-epsilon`` is set)."""
        check_dp(cfg)
        q = cfg.cohort_fraction
        denominator = 1.0 if cfg.aggregation == "sum" else q * n_users
        shares = dp_noise_shares(cfg.num_nodes, cfg.dp_mode == "distributed")
        return cls(cfg.dp_clip, dp_account.noise_multiplier(cfg, n_users), q, n_users,
                   dp_account.dp_delta(cfg, n_users), cfg.dp_mode, denominator, shares)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on the round's sum, ``z C``."""
        return self.z * self.clip

    def privatize(self, emb_sum: np.ndarray, bias_sum: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise the summed clipped updates (central mode) and give the fixed denominator.

        Parameters
        ----------
        emb_sum, bias_sum : np.ndarray
            The round's sums over every node, ``(n_items, d)`` and ``(n_items,)``.

        Returns
        -------
        (np.ndarray, np.ndarray, np.ndarray)
            The noised sums and the denominator as a 1-element array.

        """
        if self.mode == "central" and self.noise_std > 0:
            rng = np.random.default_rng()  # OS entropy: the run's seed is no secret
            emb_sum = emb_sum + rng.normal(0.0, self.noise_std, emb_sum.shape)
            bias_sum = bias_sum + rng.normal(0.0, self.noise_std, bias_sum.shape)
        return emb_sum, bias_sum, np.array([self.denominator])

    def epsilon(self, rounds: int) -> float:
        """Epsilon at :attr:`delta` after ``rounds`` rounds (RDP accountant)."""
        return dp_account.epsilon(self.q, self.z, rounds, self.delta)

    def round_metrics(self, rounds: int) -> dict[str, float]:
        """``dp-epsilon`` after ``rounds`` rounds (left out while infinite), ``dp-delta``, ``z``."""
        return dp_account.round_metrics(self.epsilon(rounds), self.delta, self.z)

    def summary(self, rounds: int) -> dict[str, Any]:
        """The ``dp`` entry of ``results.json`` after ``rounds`` rounds."""
        eps = self.epsilon(rounds)
        return {"dp": {"epsilon": eps if math.isfinite(eps) else None, "delta": self.delta,
                       "noise_multiplier": self.z, "clip": self.clip, "sampling_rate": self.q,
                       "rounds": rounds, "mode": self.mode, "denominator": self.denominator,
                       "accountant": "rdp (dp-accounting)"}}
