r"""Server optimisers over FedAvg's pseudo-gradient: FedAvgM, FedAdam, FedYogi as in Flower.

The server aggregates the nodes' item-row changes into one update :math:`\Delta_t` (the
aggregated table minus the current one, zero on rows nobody touched) and then steps

- ``none``: :math:`x \leftarrow x + \eta \Delta_t` (plain FedAvg at :math:`\eta = 1`);
- ``avgm`` (Hsu et al. 2019; ``flwr.serverapp.strategy.FedAvgM``): pseudo-gradient
  :math:`g_t = -\Delta_t`, :math:`m_t = \mu m_{t-1} + g_t` (:math:`m_1 = g_1`),
  :math:`x \leftarrow x - \eta m_t`;
- ``adam`` (Reddi et al. 2021; ``flwr.serverapp.strategy.FedAdam``):
  :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1)\Delta_t`,
  :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2)\Delta_t^2`,
  :math:`x \leftarrow x + \eta \frac{\sqrt{1-\beta_2^{t+1}}}{1-\beta_1^{t+1}}
  \frac{m_t}{\sqrt{v_t} + \tau}` (Flower's bias correction, with :math:`t` the server round);
- ``yogi`` (``flwr.serverapp.strategy.FedYogi``): :math:`m_t` as Adam,
  :math:`v_t = v_{t-1} - (1-\beta_2)\Delta_t^2 \operatorname{sign}(v_{t-1} - \Delta_t^2)`,
  :math:`x \leftarrow x + \eta\, m_t / (\sqrt{v_t} + \tau)`.

Flower's classes aggregate whole ArrayRecords from their own FedAvg; FloRec's nodes upload
pre-summed sparse rows, so the same update rules are applied here to the pseudo-gradient that
:class:`florec.strategies.fedavg.FedAvgRec` computes, and to the change of the weighted mean
that :class:`florec.strategies.fedavg_params.FedAvgParams` computes for the sequential models
(both checkpoint the moments and undo a discarded round through :class:`ServerStepping`;
``tests/strategies/test_server_opt.py`` and ``test_fedavg_params.py`` check them against
Flower's classes on dense toys). Moments cover every row: rows without a
change this round still move by their momentum, as in Flower.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig

SERVER_OPTS = ("none", "avgm", "adam", "yogi")


@dataclass
class ServerOptimizer:
    r"""A stateful server step ``x_{t+1} = step(x_t, Delta_t, t)`` over named arrays.

    Parameters
    ----------
    kind : {"none", "avgm", "adam", "yogi"}
        Update rule (see the module docstring).
    lr : float
        Server learning rate :math:`\eta` (``server-lr``).
    momentum : float
        FedAvgM's :math:`\mu` (``server-momentum``).
    beta1, beta2, tau : float
        FedAdam / FedYogi moments and adaptivity (``server-beta1``, ``server-beta2``,
        ``server-tau``; Flower's defaults 0.9, 0.99, 1e-3).

    """

    kind: str = "none"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ServerOptimizer:
        """The server step of a run config's ``server-*`` keys."""
        return cls(cfg.server_opt, cfg.server_lr, cfg.server_momentum, cfg.server_beta1,
                   cfg.server_beta2, cfg.server_tau)

    def __post_init__(self) -> None:
        if self.kind not in SERVER_OPTS:
            raise ConfigError(f"server-opt '{self.kind}' is unknown; use one of "
                              f"{', '.join(SERVER_OPTS)}")

    def step(self, current: dict[str, np.ndarray], delta: dict[str, np.ndarray],
             server_round: int) -> dict[str, np.ndarray]:
        """The new arrays from the current ones and the aggregated update ``delta``.

        Parameters
        ----------
        current : dict of str to np.ndarray
            The global arrays this round started from.
        delta : dict of str to np.ndarray
            The aggregated change of each array (same keys and shapes).
        server_round : int
            The round (FedAdam's bias correction uses it, as Flower does).

        Returns
        -------
        dict of str to np.ndarray
            The updated arrays (float64; the caller casts).

        """
        new = {}
        for key, x in current.items():
            x = x.astype(np.float64)
            d = np.asarray(delta[key], dtype=np.float64)
            if self.kind == "none":
                new[key] = x + self.lr * d
            elif self.kind == "avgm":
                m = self.momentum * self.m.get(key, np.zeros_like(d)) - d
                self.m[key] = m
                new[key] = x - self.lr * m
            else:
                m = self.beta1 * self.m.get(key, np.zeros_like(d)) + (1 - self.beta1) * d
                v = self.v.get(key, np.zeros_like(d))
                if self.kind == "adam":
                    v = self.beta2 * v + (1 - self.beta2) * d**2
                    eta = self.lr * np.sqrt(1 - self.beta2 ** (server_round + 1.0)) \
                        / (1 - self.beta1 ** (server_round + 1.0))
                else:
                    v = v - (1 - self.beta2) * d**2 * np.sign(v - d**2)
                    eta = self.lr
                self.m[key], self.v[key] = m, v
                new[key] = x + eta * m / (np.sqrt(v) + self.tau)
        return new

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The moments, keyed ``m.<name>`` and ``v.<name>`` (for checkpoints)."""
        return {f"m.{k}": a for k, a in self.m.items()} | {f"v.{k}": a for k, a in self.v.items()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_arrays` returned."""
        self.m = {k[2:]: np.asarray(a, np.float64) for k, a in arrays.items()
                  if k.startswith("m.")}
        self.v = {k[2:]: np.asarray(a, np.float64) for k, a in arrays.items()
                  if k.startswith("v.")}

    def copy_state(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """A snapshot of the moments (to undo a discarded round)."""
        return dict(self.m), dict(self.v)


class ServerStepping:
    """Strategy mixin: a :class:`ServerOptimizer` whose moments are checkpointed and undone.

    The strategy sets ``self.server_opt`` and calls :meth:`save_server_state` when a round starts;
    :meth:`discard_round` restores the moments saved then.
    """

    server_opt: ServerOptimizer
    _saved_opt: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {})

    def save_server_state(self) -> None:
        """Remember the moments as they are before this round's step."""
        self._saved_opt = self.server_opt.copy_state()

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The server optimiser's moments (checkpoints)."""
        return self.server_opt.state_arrays()

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the server optimiser's moments."""
        self.server_opt.load_state_arrays(arrays)

    def discard_round(self) -> None:
        """Undo this round's server-optimiser step (its update is not applied)."""
        self.server_opt.m, self.server_opt.v = self._saved_opt
