r"""The server's half of user-level DP for FedCIA (dense mode): noise on the summed similarity.

The FedCIA paper adds Laplace noise of a fixed scale to each similarity upload: no norm bound,
no calibration, no accounting, so no differential privacy. With ``dp=true`` and
``fedcia-comm='dense'`` instead, every client clips its upload :math:`S_k = E_k E_k^\top` to
Frobenius norm ``C`` (``dp-clip``) on its node (:mod:`florec.protocol.similarity_dp`), and the
server releases

.. math:: \bar S = \frac{1}{K} \operatorname{sym}\Big( \sum_{k=1}^{K} \mathrm{clip}_C(S_k)
          + \mathcal N\big(0, (z \Delta)^2 I_{n \times n}\big) \Big), \qquad \Delta = 2C,

with ``K`` the number of clients (public: every client reports every round, uniform weights)
and :math:`\operatorname{sym}(M) = (M + M^\top)/2` (post-processing). One user moves the sum by
at most :math:`\Delta` (its client's clipped upload is swapped for another), so each round is
the Gaussian mechanism with noise multiplier ``z`` and ``T`` rounds compose it ``T`` times: the
same RDP accountant as DP-FedAvg-MF (:mod:`florec.protocol.dp_account`, sampling rate 1) gives
epsilon at ``delta = 1/users``; ``dp-epsilon`` calibrates ``z``.

What it does not cover: the train metrics a node returns (``train-loss``, ``clients``) are not
noised, nor are the evaluation sums, and choosing the best round on validation uses the
validation data without noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from florec.protocol import dp_account
from florec.protocol.public_knowledge import needs_knowledge
from florec.protocol.similarity_dp import SENSITIVITY_FACTOR
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig

__all__ = ["SimilarityDP", "check_fedcia_dp"]


def check_fedcia_dp(cfg: RunConfig) -> None:
    """Fail with one line if ``dp=true`` FedCIA uses settings the mechanism cannot account for.

    Raises
    ------
    ConfigError
        For a model with no trained item table (``gfcf``), factored communication, weights by
        interactions, node sampling, the paper's Laplace noise on top, distributed noise, a
        robust aggregation or an attack.

    """
    if cfg.model == "gfcf":
        raise ConfigError("dp=true for FedCIA needs a trained backbone (mf, lightgcn, mlp); "
                          "GF-CF uploads a Gram with no norm bound: set dp=false")
    if cfg.fedcia_comm != "dense":
        raise ConfigError("dp=true for FedCIA is implemented for fedcia-comm='dense' (the noise "
                          "is on the n x n sum); set fedcia-comm='dense'")
    if cfg.fedcia_weighting != "uniform":
        raise ConfigError("dp=true for FedCIA needs a fixed denominator: set "
                          "fedcia-weighting='uniform'")
    if cfg.fraction_train < 1.0:
        raise ConfigError("dp=true for FedCIA accounts every client every round; set "
                          "fraction-train=1")
    if cfg.noise_scale > 0:
        raise ConfigError("dp=true replaces the paper's Laplace noise; set noise-scale=0")
    if cfg.dp_mode != "central":
        raise ConfigError("dp=true for FedCIA adds the noise at the server only; set "
                          "dp-mode='central'")
    if cfg.defense != "none" or needs_knowledge(cfg):
        raise ConfigError("dp=true for FedCIA is not combined with a robust aggregation or an "
                          "attack; set defense='none' and attack='none' with no attack-targets")


@dataclass
class SimilarityDP:
    """User-level DP of one dense FedCIA run (see the module docstring).

    Attributes
    ----------
    clip : float
        ``C``, the Frobenius bound of one client's similarity upload.
    z : float
        Noise multiplier (given or calibrated to ``dp-epsilon``).
    n_users : int
        ``U``.
    delta : float
        The delta of the reported epsilon.

    """

    clip: float
    z: float
    n_users: int
    delta: float

    @classmethod
    def from_config(cls, cfg: RunConfig, n_users: int) -> SimilarityDP:
        """The run's DP parameters (calibrates ``z`` when ``dp-epsilon`` is set)."""
        check_fedcia_dp(cfg)
        return cls(cfg.dp_clip, dp_account.noise_multiplier(cfg, n_users), n_users,
                   dp_account.dp_delta(cfg, n_users))

    @property
    def sensitivity(self) -> float:
        """``Delta = 2 C``: how far one user can move the round's sum (Frobenius norm)."""
        return SENSITIVITY_FACTOR * self.clip

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on each entry of the sum, ``z Delta``."""
        return self.z * self.sensitivity

    def privatize(self, total: np.ndarray) -> np.ndarray:
        r"""Noise the round's sum of clipped similarities and symmetrise it.

        .. math:: \operatorname{sym}\big(\textstyle\sum_k \mathrm{clip}_C(S_k) + N\big),\quad
                  N_{ij} \sim \mathcal N(0, (z \Delta)^2) \text{ i.i.d.}

        Parameters
        ----------
        total : np.ndarray
            The sum over every node (``n x n``).

        Returns
        -------
        np.ndarray
            The noised, symmetric sum (float64).

        """
        total = np.asarray(total, dtype=np.float64)
        if self.noise_std > 0:
            rng = np.random.default_rng()  # OS entropy: the run's seed is no secret
            total = total + rng.normal(0.0, self.noise_std, total.shape)
        return (total + total.T) / 2.0

    def epsilon(self, rounds: int) -> float:
        """Epsilon at :attr:`delta` after ``rounds`` rounds (RDP accountant, sampling rate 1)."""
        return dp_account.epsilon(1.0, self.z, rounds, self.delta)

    def round_metrics(self, rounds: int) -> dict[str, float]:
        """``dp-epsilon`` after ``rounds`` rounds (left out while infinite), ``dp-delta``, ``z``."""
        return dp_account.round_metrics(self.epsilon(rounds), self.delta, self.z)

    def summary(self, rounds: int) -> dict[str, Any]:
        """The ``dp`` entry of ``results.json`` after ``rounds`` rounds."""
        eps = self.epsilon(rounds)
        return {"dp": {"epsilon": eps if math.isfinite(eps) else None, "delta": self.delta,
                       "noise_multiplier": self.z, "clip": self.clip,
                       "sensitivity": self.sensitivity, "sampling_rate": 1.0,
                       "rounds": rounds, "mode": "central",
                       "mechanism": "gaussian on the summed Frobenius-clipped similarity",
                       "accountant": "rdp (dp-accounting)"}}
