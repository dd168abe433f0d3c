"""`florec perf`: what a federated round costs under `flwr run` + Ray, cell by cell.

For each cell of population x cohort x bucket size, one short FedAvg-MF run goes through a
local Flower simulation (:func:`florec.sim.flower.flwr_run`) and the same run goes through the
in-process grid (:class:`florec.sim.local_grid.LocalGrid`: the same ServerApp, ClientApp and
messages, no SuperLink, Ray or serialisation). Both write ``rounds.jsonl``; round 1 (warm-up) is
skipped.

- ``s_per_round``: median training seconds of rounds 2..R under Flower (evaluation excluded);
- ``framework_ms_per_update``: the cost of Flower and Ray alone per logical client update:
  (Flower seconds - in-process seconds / workers) per round, divided by the users that trained
  in it. ``workers`` = min(nodes, CPUs) Ray actors (one CPU per simulated client) run the nodes'
  compute in parallel while the in-process grid runs it serially, so the in-process time is
  divided by them (an estimate that assumes linear speed-up of the nodes' compute);
- ``peak_mem_mb``: the peak, over the run, of the summed RSS of this process and every process
  it started (SuperLink, simulation, Ray head and workers), sampled every 0.5 s;
- ``peak_pss_mb``: the peak of their summed PSS (shared pages charged once in all), and
  ``peak_pss_by_role``: that sample's PSS by process role (:mod:`florec.sim.memory`);
- ``bytes_per_round``: bytes down + up of one round;
- ``eval_s``: the full-ranking evaluation of every user (final round, in-process);
- ``load_avg_1m``: the machine's 1-minute load average when the cell started and ended (a
  shared machine's seconds are only comparable at a similar load);
- ``local_round_over_central_epoch`` (full-cohort cells): the local training compute of one
  round of every user (:func:`florec.client.trainers.bpr_embedding.local_update` over all
  buckets, serially, no Flower) over one central MF-BPR epoch on the same interactions
  (:func:`florec.sim.central.train_epoch`, Adam, batches of 1,024), timed alternately in this
  process (:func:`compute_ratio`), median of the pairs' ratios.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from florec.recdata.errors import ConfigError
from florec.sim.memory import ProcessTreeMemory

#: ML-1M's catalogue and mean interactions per user, for synthetic populations of any size
ML1M_SHAPE = {"synthetic-items": 3706, "synthetic-interactions": 165}
PERF_DEFAULTS = {"algorithm": "fedavg", "model": "mf", "dim": 64, "local-epochs": 1,
                 "local-batch-size": 64, "eval-every": 1000, "split": "ratio"}


@dataclass(frozen=True)
class PerfCell:
    """One measured configuration.

    ``dataset`` is a registered dataset (all its users) or ``synthetic`` (``population`` users
    shaped like ML-1M); ``cohort`` is the share of users trained per round; ``bucket`` the users
    per node.
    """

    dataset: str
    population: int
    cohort: float
    bucket: int

    def run_config(self, rounds: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run-config overrides of this cell (``extra`` overrides the perf defaults)."""
        cfg = PERF_DEFAULTS | (extra or {}) | {"dataset": self.dataset, "num-rounds": rounds,
                               "users-per-node": self.bucket, "cohort-fraction": self.cohort}
        if self.dataset == "synthetic":
            cfg |= ML1M_SHAPE | {"synthetic-users": self.population}
        return cfg


class TreeMemory(ProcessTreeMemory):
    """The summed RSS of this process and all its descendants, sampled in a thread (``peak_mb``).

    RSS only (no ``smaps_rollup`` reads); :class:`ProcessTreeMemory` gives PSS and roles.
    """

    def __init__(self, every_s: float = 0.2) -> None:
        super().__init__(every_s=every_s, pss=False)

    @property
    def peak_mb(self) -> float:
        """The largest summed RSS (MiB) seen so far."""
        return self.peak_rss_mb


def read_rounds(out: Path) -> list[dict[str, Any]]:
    """The rows of ``out/rounds.jsonl``; a one-line error if the run wrote none."""
    path = out / "rounds.jsonl"
    if not path.exists():
        raise ConfigError(f"the run wrote no {path}; see its log above")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_seconds(row: dict[str, Any]) -> float:
    """Seconds of a round's training (its evaluation, if any, excluded)."""
    return float(row["seconds"]) - float(row.get("eval_seconds", 0.0))


def run_in_process(cfg: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Run ``cfg`` on the in-process grid; returns its rounds."""
    from florec.recdata.store import num_buckets_for
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    run_cfg = _validated(cfg | {"out-dir": str(out)})
    n = num_buckets_for(run_cfg)
    run_cfg = _validated(cfg | {"out-dir": str(out), "num-nodes": n})
    run_federated(LocalGrid(run_cfg.to_flower(), n, keep_replies=False), run_cfg, out)
    return read_rounds(out)


def run_flower(cfg: dict[str, Any], out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``cfg`` under `flwr run` (one CPU per client); returns its rounds and its memory.

    The memory is :meth:`florec.sim.memory.ProcessTreeMemory.report` of this process's tree.
    """
    from florec.recdata.store import num_buckets_for
    from florec.sim.flower import RunFailed, flwr_run

    n = num_buckets_for(_validated(cfg))
    with ProcessTreeMemory() as mem:
        try:
            flwr_run(cfg | {"out-dir": str(out), "num-nodes": n}, n, 1.0, 0.0)
        except RunFailed as err:
            raise ConfigError(f"the perf run under Flower failed: {err}") from None
    return read_rounds(out), mem.report()


def _validated(cfg: dict[str, Any]):
    from florec.recdata.runconfig import parse_run_config

    return parse_run_config(cfg)


def parallel_workers(cell: PerfCell, cpus: int | None = None) -> int:
    """Ray actors that run nodes at once: one per CPU (one CPU per client), at most the nodes."""
    return max(1, min(-(-cell.population // cell.bucket), cpus or os.cpu_count() or 1))


def framework_seconds(flower_s: float, in_process_s: float, workers: int) -> float:
    """Seconds of a round spent in Flower and Ray: the Flower round minus the parallel compute."""
    return flower_s - in_process_s / workers


def measure(cell: PerfCell, rounds: int = 3, work_dir: Path | None = None,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure one cell (see the module docstring); returns one row of the perf table.

    ``extra`` holds run-config keys applied to every cell (e.g. ``aggregation``).
    """
    if rounds < 2:
        raise ConfigError(f"rounds={rounds}: perf needs at least 2 (round 1 is a warm-up)")
    cfg = cell.run_config(rounds, extra)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        local = run_in_process(cfg, Path(tmp) / "local")
        flower, memory = run_flower(cfg, Path(tmp) / "flower")
    steady = range(1, min(len(local), len(flower)))
    workers = parallel_workers(cell)
    overhead = [framework_seconds(train_seconds(flower[r]), train_seconds(local[r]), workers)
                for r in steady]
    users = [max(float(flower[r]["train"].get("num-users", 0.0)), 1.0) for r in steady]
    return asdict(cell) | {
        "algorithm": f"fedavg-mf-{cfg.get('aggregation', 'dense')}",
        "nodes": -(-cell.population // cell.bucket),
        "workers": workers,
        "s_per_round": statistics.median(train_seconds(flower[r]) for r in steady),
        "s_per_round_in_process": statistics.median(train_seconds(local[r]) for r in steady),
        "framework_ms_per_update": 1000 * statistics.median(
            o / u for o, u in zip(overhead, users, strict=True)),
        "peak_mem_mb": memory["peak_rss_mb"],
        "peak_pss_mb": memory["peak_pss_mb"],
        "peak_pss_by_role": {k: v["pss_mb"] for k, v in memory["by_role"].items()},
        "bytes_per_round": int(flower[1]["bytes_up"] + flower[1]["bytes_down"]),
        "eval_s": float(local[-1].get("eval_seconds", float("nan"))),
        **({"local_round_over_central_epoch": compute_ratio(cfg)["local_round_over_central_epoch"]}
           if cell.cohort >= 1.0 else {}),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
        "cpus": os.cpu_count(),
        "load_avg_1m": [load_start, os.getloadavg()[0]],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def compute_ratio(cfg: dict[str, Any], reps: int = 3, central_batch: int = 1024,
                  trainers: dict[str, Callable[..., Any]] | None = None) -> dict[str, Any]:
    """Local training compute of one full round against one central epoch, timed side by side.

    Each repetition times one central MF-BPR epoch, then one round of every user's local
    training with each trainer (a full cohort, every bucket of ``users-per-node`` users in
    turn, the global tables and private embeddings at their initial values). Alternating the
    two keeps the ratio meaningful on a shared machine.

    Parameters
    ----------
    cfg : dict
        Run-config overrides (dataset, split, dim, local knobs, ``users-per-node``).
    reps : int
        Repetitions; the medians are reported.
    central_batch : int
        Central minibatch size (``florec central``'s default).
    trainers : dict of str to callable, optional
        Named ``local_update`` functions to time (default: ``{"local": local_update}``);
        another, e.g. a previous version, gets keys ``<name>_round_s`` and
        ``<name>_round_over_central_epoch``.

    Returns
    -------
    dict
        ``central_epoch_s``, ``<name>_round_s`` and ``<name>_round_over_central_epoch`` (the
        median of the per-repetition ratios), ``reps`` and ``threads``.

    """
    import numpy as np
    import torch

    from florec.client.trainers.bpr_embedding import LocalConfig, local_update
    from florec.client.trainers.bucket import Bucket
    from florec.models.base import seeded_rows
    from florec.models.mf import USER_SALT
    from florec.models.registry import model_from_config
    from florec.recdata.partition import partition_users
    from florec.recdata.seeds import Salt, stream
    from florec.recdata.store import get_split
    from florec.sim.central import train_epoch

    run = _validated(cfg)
    if run.model != "mf" or run.users_per_node < 1:
        raise ConfigError("compute_ratio needs model=mf and users-per-node >= 1")
    trainers = trainers or {"local": local_update}
    split, _ = get_split(run.dataset, run.split, run.split_seed, run.data_dir, run.min_rating,
                         run.synthetic_params())
    buckets = [Bucket.from_split(split, u)
               for u in partition_users(split.n_users, users_per_node=run.users_per_node)]
    init = model_from_config(run, "mf", split.n_users, split.n_items)
    item_emb = init.item_emb.detach().numpy().copy()
    item_bias = init.item_bias.detach().numpy().copy()
    user_embs = [seeded_rows(b.users, run.dim, run.seed, run.init_std, USER_SALT)
                 for b in buckets]
    local_cfg = LocalConfig.from_run_config(run, 1)

    def central_epoch() -> float:
        torch.manual_seed(run.seed)
        model = model_from_config(run, "mf", split.n_users, split.n_items)
        opt_cls = torch.optim.Adam if run.optimizer == "adam" else torch.optim.SGD
        opt = opt_cls(model.parameters(), lr=run.lr, weight_decay=run.weight_decay)
        t0 = time.perf_counter()
        train_epoch(model, split, opt, stream(run.seed, Salt.CENTRAL_SHUFFLE), central_batch)
        return time.perf_counter() - t0

    def one_round(fn: Callable[..., Any]) -> float:
        t0 = time.perf_counter()
        for bucket, user_emb in zip(buckets, user_embs, strict=True):
            fn(bucket, item_emb, item_bias, user_emb, local_cfg, 1)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"central_epoch_s": []} | {f"{k}_round_s": [] for k in trainers}
    for _ in range(reps):
        times["central_epoch_s"].append(central_epoch())
        for name, fn in trainers.items():
            times[f"{name}_round_s"].append(one_round(fn))
    row: dict[str, Any] = {k: statistics.median(v) for k, v in times.items()}
    for name in trainers:
        row[f"{name}_round_over_central_epoch"] = statistics.median(
            np.asarray(times[f"{name}_round_s"]) / np.asarray(times["central_epoch_s"]))
    return row | {"reps": reps, "interactions": int(split.matrix("train").nnz),
                  "threads": torch.get_num_threads()}


def perf_cells(datasets: list[str], populations: list[int], cohorts: list[float],
               buckets: list[int]) -> list[PerfCell]:
    """The matrix: ``synthetic`` at each population, any other dataset at its own size."""
    from florec.recdata.datasets import load_dataset

    cells = []
    for dataset in datasets:
        sizes = populations if dataset == "synthetic" else [load_dataset(dataset).n_users]
        for population in sizes:
            for cohort in cohorts:
                for bucket in buckets:
                    if bucket <= population:
                        cells.append(PerfCell(dataset, population, cohort, bucket))
    return cells


def save_measurement(out: Path | None, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` plus where and when it was timed (threads, CPUs, machine, torch), to ``out``."""
    import torch

    result = result | {"omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
                       "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                       "machine": platform.machine(), "torch": torch.__version__,
                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    return result
