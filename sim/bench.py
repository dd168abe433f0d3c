"""The benchmark suite: a TOML matrix of datasets x methods x seeds, run in-process, resumably.

A bench file has three parts::

    [bench]
    name = "ml100k"
    datasets = ["ml-100k"]
    seeds = [0, 1, 2]
    reference = "MF-BPR"

    [defaults]            # run-config keys shared by every cell
    split = "loo"
    central-lr = 0.005    # lr of central methods without their own lr (default 0.005);
                          # a default `lr` reaches the federated methods only

    [[method]]
    label = "MF-BPR"
    setting = "central"   # or "federated"
    epochs = 20           # central only; batch-size is optional (1024)
    model = "mf"          # any other run-config key
    seeds = [0]           # optional: this method's seeds instead of [bench]'s (tuning cells)

Each cell runs into ``OUT/cells/<dataset>/<folder>/seed<s>/`` (``folder``: the label with
every run of characters other than letters, digits and ``._+=-`` replaced by one ``-``, so
results folders have no spaces) and is skipped when that folder's
``results.json`` says ``"status": "finished"`` and its ``cell.json`` (the cell's resolved
settings, written when it starts) equals the current ones: a cell whose method table or
defaults were edited since it ran is run again. A cell that raises is reported in one line and
the others go on. ``OUT/results.json`` collects every finished cell's run dict plus its label.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from florec.recdata.errors import ConfigError
from florec.server.results import ResultsWriter, environment, read_results

log = logging.getLogger(__name__)

#: Central Adam step size when a central method sets no ``lr`` (as ``florec central``).
CENTRAL_LR = 0.005
#: Keys of a ``[[method]]`` table that are not run-config keys.
METHOD_KEYS = ("label", "setting", "epochs", "batch-size", "seeds")


@dataclass
class Cell:
    """One run of the matrix: a dataset, a method table and a seed."""

    dataset: str
    method: dict[str, Any]
    seed: int
    out_dir: Path

    @property
    def label(self) -> str:
        """The method's label."""
        return str(self.method["label"])

    @property
    def name(self) -> str:
        """``dataset/label/seed<s>``, how messages and reports name the cell."""
        return f"{self.dataset}/{self.label}/seed{self.seed}"

    def settings(self, conf: dict[str, Any]) -> dict[str, Any]:
        """Everything that defines this cell's run: its run config and central epochs/batch."""
        extra = {k: self.method[k] for k in ("setting", "epochs", "batch-size")
                 if k in self.method}
        return cell_config(conf, self) | extra

    def finished(self, conf: dict[str, Any] | None = None) -> bool:
        """Whether this cell finished (``results.json`` status) with the settings of ``conf``.

        Without ``conf`` only the status is checked.
        """
        path = self.out_dir / "results.json"
        if not path.exists():
            return False
        try:
            if read_results(path).get("status") != "finished":
                return False
            if conf is None:
                return True
            saved = json.loads((self.out_dir / "cell.json").read_text())
            return saved == json.loads(json.dumps(self.settings(conf)))
        except (OSError, json.JSONDecodeError):
            return False

    def mark_started(self, conf: dict[str, Any]) -> None:
        """Record the settings this cell runs with (``cell.json``)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "cell.json").write_text(json.dumps(self.settings(conf), indent=1))


@dataclass
class BenchOutcome:
    """What a bench run did: cells run, skipped, failed (name -> error) and still unfinished."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)


def load_bench(path: Path) -> dict[str, Any]:
    """Read and check a bench TOML file.

    Raises
    ------
    ConfigError
        If the file is missing or not TOML, ``[bench]`` lacks datasets or seeds, a method lacks
        a label or has an unknown setting, two methods share a label, or a cell's run config
        is invalid (an unknown key, a bad value, a combination without a federated form).

    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"bench file {path} does not exist; give --config the path of a bench "
                          "TOML file (e.g. bench/ml100k.toml)")
    try:
        conf = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}; fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    bench = conf.get("bench", {})
    if not bench.get("datasets") or not bench.get("seeds"):
        raise ConfigError(f"{path}: [bench] needs non-empty 'datasets' and 'seeds'")
    methods = conf.get("method", [])
    if not methods:
        raise ConfigError(f"{path}: no [[method]] tables")
    labels = [m.get("label") for m in methods]
    if None in labels or len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: every [[method]] needs a unique 'label'")
    folders = [label_folder(str(label)) for label in labels]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"{path}: two labels share a results folder name ({folders}); "
                          "make them differ in letters or digits, not only in spaces or symbols")
    for m in methods:
        if m.get("setting") not in ("central", "federated"):
            raise ConfigError(f"{path}: method '{m['label']}': setting must be central|federated")
        seeds = m.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigError(f"{path}: method '{m['label']}': seeds={seeds!r}; give a non-empty "
                              "list of integers, e.g. [0, 1, 2]")
    conf.setdefault("defaults", {})
    _warn_default_lr(conf, path)
    check_cells(conf, path)
    return conf


def _warn_default_lr(conf: dict[str, Any], path: Path) -> None:
    """Warn where a default ``lr`` would silently not reach the trained central methods."""
    defaults = conf["defaults"]
    if "lr" not in defaults or "central-lr" in defaults:
        return
    central = [m["label"] for m in conf["method"]
               if m["setting"] == "central" and "epochs" in m and "lr" not in m]
    if central:
        log.warning("%s: [defaults] lr = %s reaches the federated methods only; the central "
                    "methods without their own lr (%s) train at central-lr = %s: set "
                    "central-lr in [defaults] or lr in the method", path, defaults["lr"],
                    ", ".join(central), CENTRAL_LR)


def check_cells(conf: dict[str, Any], path: Path) -> None:
    """Validate every cell's run config before any cell runs (one line naming the method).

    Raises
    ------
    ConfigError
        A method's keys (with the defaults) make an invalid run config, ``epochs`` or
        ``batch-size`` is not a positive integer, or a federated cell has no federated form.

    """
    from florec.recdata.runconfig import parse_run_config
    from florec.sim.flower_config import check_federated

    for cell in cells_of(conf, Path(".")):
        where = f"{path}: method '{cell.label}' on {cell.dataset} (seed {cell.seed})"
        for key in ("epochs", "batch-size"):
            value = cell.method.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: {key}={value!r}; give a positive integer")
        try:
            cfg = parse_run_config(cell_config(conf, cell))
            if cell.method["setting"] == "federated":
                check_federated(cfg)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


def label_folder(label: str) -> str:
    """A method label as a folder name: runs of other than ``[A-Za-z0-9._+=-]`` become ``-``.

    ``"FedAvg BPR sparse"`` -> ``"FedAvg-BPR-sparse"``, ``"SASRec (no filter)"`` ->
    ``"SASRec-no-filter"``.
    """
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", label).strip("-") or "method"


def cells_of(conf: dict[str, Any], out: Path) -> list[Cell]:
    """The cells of a bench config, datasets x methods x seeds, in that order.

    A method's own ``seeds`` replace ``[bench]``'s for it, so one file can hold one-seed tuning
    cells and the finalists' seeds; adding seeds to a method leaves its finished cells valid.
    """
    return [Cell(ds, m, int(s), out / "cells" / ds / label_folder(m["label"]) / f"seed{s}")
            for ds in conf["bench"]["datasets"] for m in conf["method"]
            for s in m.get("seeds", conf["bench"]["seeds"])]


def cell_config(conf: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The run-config dict of a cell: defaults, then the method's keys, dataset and seed."""
    keys = {k: v for k, v in cell.method.items() if k not in METHOD_KEYS}
    base = dict(conf["defaults"])
    if cell.method["setting"] == "central" and "lr" not in keys:
        base["lr"] = base.get("central-lr", CENTRAL_LR)
    base.pop("central-lr", None)
    return base | keys | {"dataset": cell.dataset, "seed": cell.seed}


def run_cell(conf: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """Run one cell in this process; returns its run dict (with ``label``)."""
    from florec.recdata.runconfig import parse_run_config

    cfg = parse_run_config(cell_config(conf, cell))
    for stale in ("rounds.jsonl", "results.json", "error.txt"):  # of an unfinished attempt
        (cell.out_dir / stale).unlink(missing_ok=True)
    if cell.method["setting"] == "central":
        from florec.sim.central import run_central

        run = run_central(cfg, int(cell.method.get("epochs", 20)),
                          int(cell.method.get("batch-size", 1024)), cell.out_dir)
    else:
        from florec.recdata.store import num_buckets_for
        from florec.server.app import run_federated
        from florec.sim.local_grid import LocalGrid
        from florec.strategies.registry import check_algorithm

        check_algorithm(cfg)
        cfg = cfg.model_copy(update={"num_nodes": num_buckets_for(cfg)})  # users-per-node
        grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False)
        run = run_federated(grid, cfg, cell.out_dir)
    return run | {"label": cell.label}


def collect(conf: dict[str, Any], cells: list[Cell]) -> dict[str, Any]:
    """The bench ``results.json`` dict: config, environment and every finished cell's run.

    Cells without a finished run are listed under ``not_run`` (the key is absent when every
    cell finished).
    """
    runs, not_run = [], []
    for cell in cells:
        if cell.finished(conf):
            for run in read_results(cell.out_dir)["runs"]:
                runs.append(run | {"label": cell.label})
        else:
            not_run.append(cell.name)
    results = {"config": conf, "env": environment(), "runs": runs}
    return results | ({"not_run": not_run} if not_run else {})


def run_bench(config_path: Path, out: Path, progress: bool = True,
              runner: Callable[[dict[str, Any], Cell], dict[str, Any]] = run_cell,
              echo: Callable[[str], None] = print, report_only: bool = False) -> BenchOutcome:
    """Run (or resume) a bench file into ``out``; writes results.json, report.md and plots.

    Parameters
    ----------
    config_path : Path
        The bench TOML file.
    out : Path
        The bench results folder.
    progress : bool
        Show a rich progress bar.
    runner : callable
        ``runner(conf, cell) -> run dict``; :func:`run_cell` unless testing.
    echo : callable
        Where one-line cell messages go.
    report_only : bool
        Run no cell: write results.json, report.md and plots over the finished cells and list
        the others as not run (e.g. while ``bench/dp_curve_parallel.py`` is still filling them).

    Returns
    -------
    BenchOutcome
        Labels of ran, skipped and failed cells and the collected results.

    """
    from rich.progress import Progress

    from florec.sim.plots import write_plots
    from florec.sim.report import write_report

    conf = load_bench(config_path)
    out = Path(out)
    writer = ResultsWriter(out)  # locks the bench folder while the bench runs
    cells = cells_of(conf, out)
    outcome = BenchOutcome()
    import florec.server.app  # noqa: F401 - flwr sets its logger's level on import; quiet it after

    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.WARNING)  # per-round INFO lines would break the progress bar
    try:
        with Progress(disable=not progress, transient=False) as bar:
            task = bar.add_task(conf["bench"].get("name", "bench"), total=len(cells))
            for cell in cells:
                name = cell.name
                bar.update(task, description=name)
                if cell.finished(conf):
                    outcome.skipped.append(name)
                elif not report_only:
                    try:
                        if cell.finished():
                            echo(f"cell {name}: its settings changed since it ran; running again")
                        cell.mark_started(conf)
                        runner(conf, cell)
                        outcome.ran.append(name)
                    except Exception as err:  # noqa: BLE001 - one failed cell must not stop others
                        msg = f"{type(err).__name__}: {err}".splitlines()[0]
                        outcome.failed[name] = msg
                        echo(f"cell {name} failed: {msg}")
                        (cell.out_dir).mkdir(parents=True, exist_ok=True)
                        (cell.out_dir / "error.txt").write_text(traceback.format_exc())
                bar.advance(task)
    finally:
        flwr_log.setLevel(level)
    outcome.results = collect(conf, cells)
    outcome.not_run = outcome.results.get("not_run", [])
    writer._write_json("results.json", outcome.results)
    write_report(outcome.results, out)
    write_plots(out)
    writer.close()
    return outcome
