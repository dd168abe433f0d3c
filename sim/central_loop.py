"""The epoch loop every central runner shares: validate, keep the best epoch, stop, write files.

A runner (:mod:`florec.sim.central`, :mod:`florec.sim.central_seq`, :mod:`florec.sim.central_fair`)
builds its model and hands :func:`fit_and_select` three callables: one epoch of training, a
validation pass and a test pass. The loop validates every ``eval-every`` epochs (and at the last),
tests at each strict improvement of ``selection-metric`` (so the reported test metrics are those of
the best validation epoch), stops after ``patience`` evaluations without improvement (early
stopping; ``epochs`` is then the cap), records ``best_epoch``, ``epochs_run``, ``max_epochs`` and
``stopped_early`` in the run entry (the bench report flags a best epoch at the cap), and
writes ``config.json``, one ``rounds.jsonl`` line per epoch and ``results.json`` (rewritten
every epoch with status ``running``, so a killed run keeps its finished epochs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from florec.recdata.errors import ConfigError
from florec.recdata.recbole_io import data_notes
from florec.recdata.runconfig import RunConfig
from florec.server.results import ResultsWriter, run_entry
from florec.server.rss_monitor import RssMonitor

Metrics = dict[str, float]


def fit_and_select(
    cfg: RunConfig,
    method: str,
    epochs: int,
    train_epoch: Callable[[], Metrics],
    validate: Callable[[], Metrics],
    test: Callable[[], Metrics],
    out_dir: Path | None = None,
    config: dict[str, Any] | None = None,
    time_budget_s: float | None = None,
    t_start: float | None = None,
    model: Any = None,
) -> dict[str, Any]:
    """Train for at most ``epochs`` epochs and return the run's entry of ``results.json``.

    Parameters
    ----------
    cfg : RunConfig
        Supplies ``eval-every``, ``selection-metric``, ``patience`` and the run's identity.
    method : str
        The method name recorded in the run entry.
    epochs : int
        Epoch cap; 0 evaluates the model as it is (a model without training).
    train_epoch : callable
        One epoch; returns its training metrics (``train-loss`` must be finite).
    validate, test : callable
        Full-ranking metrics of the validation and test split.
    out_dir : Path, optional
        Results folder; nothing is written without it.
    config : dict, optional
        What ``config.json`` records (default: the run config).
    time_budget_s : float, optional
        Stop after the first epoch that ends past this many seconds (``"stopped":
        "time-budget"`` in the run entry).
    t_start : float, optional
        ``time.perf_counter()`` when the run began (data loading included); default: now.
    model : torch.nn.Module, optional
        Its ``state_dict`` at the best validation epoch is saved as ``model.npz`` in
        ``out_dir`` (what ``florec simulate`` loads).

    Returns
    -------
    dict
        The run entry: besides the metrics, ``best_epoch`` (= ``best_round``, the epoch whose
        validation score was best; 0 for an untrained model), ``epochs_run`` (= ``rounds``),
        ``max_epochs`` (the cap) and ``stopped_early`` (``patience`` evaluations without
        improvement ended the run before the cap).

    Raises
    ------
    FloatingPointError
        An epoch's training loss is NaN or infinite.
    ConfigError
        ``epochs`` is negative.

    """
    if epochs < 0:
        raise ConfigError(f"epochs={epochs} is negative; train for 1 or more epochs (0 evaluates "
                          "the untrained model)")
    t_start = time.perf_counter() if t_start is None else t_start
    config = config if config is not None else cfg.to_flower()
    writer = ResultsWriter(out_dir) if out_dir else None
    memory = writer.memory if writer else RssMonitor()
    if writer:
        writer.write_config(config)
    run = run_entry(method, "central", cfg.dataset, cfg.split, cfg.seed, **data_notes(cfg))
    run.update(best_epoch=None, epochs_run=0, max_epochs=epochs, stopped_early=False)
    best_state: dict[str, Any] = {}
    if epochs == 0:
        run.update(best_round=0, best_epoch=0, valid_metrics=validate(), metrics=test())
        best_state = _arrays(model)
    best, since_best = -math.inf, 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train = train_epoch()
        if not math.isfinite(train.get("train-loss", 0.0)):
            raise FloatingPointError(f"epoch {epoch}: the training loss of {method} is not "
                                     "finite; lower lr or init-std")
        row: dict[str, Any] = {"round": epoch, "train": train,
                               "train_seconds": time.perf_counter() - t0}
        if epoch % cfg.eval_every == 0 or epoch == epochs:
            valid = validate()
            row["valid"] = valid
            if valid[cfg.selection_metric] > best:
                best, since_best = valid[cfg.selection_metric], 0
                run.update(best_round=epoch, best_epoch=epoch, metrics=test(),
                           valid_metrics=valid)
                best_state = _arrays(model)
            else:
                since_best += 1
        row.update(seconds=time.perf_counter() - t0, **memory.fields())
        run.update(rounds=epoch, epochs_run=epoch, wall_s=time.perf_counter() - t_start)
        if writer:
            writer.append_round(row)
            writer.write_results(config, [run], status="running")
        if cfg.patience and since_best >= cfg.patience:
            run["stopped_early"] = epoch < epochs
            break
        if time_budget_s is not None and time.perf_counter() - t_start > time_budget_s:
            run["stopped"] = "time-budget"
            break
    run.update(wall_s=time.perf_counter() - t_start, **memory.fields())
    memory.stop()
    if writer:
        if best_state:
            np.savez(Path(out_dir) / "model.npz", **best_state)
        writer.write_results(config, [run])
        writer.close()
    return run


def _arrays(model: Any) -> dict[str, Any]:
    """A copy of ``model``'s state as numpy arrays (empty without a model)."""
    if model is None:
        return {}
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
