"""What the ``florec`` commands share: the console, option types, stop handling, run tables."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from florec.recdata.errors import FloRecError
from florec.recdata.runconfig import RunConfig, parse_run_config

console = Console()
#: Central Adam step size; the run config's ``lr`` (0.05) is tuned for federated local training.
CENTRAL_LR = 0.005
#: ``--overwrite``: replace the run in the results folder (else a folder holding one is refused)
Overwrite = Annotated[bool, typer.Option(
    help="replace the run already in the results folder (default: refuse to)")]

#: ``-c key=value`` run-config overrides
Override = Annotated[
    list[str] | None, typer.Option("--config", "-c", help="run-config override key=value")
]


class Stopped(FloRecError):
    """A stop signal ended a command after everything it started was stopped."""

    def __init__(self, signum: int, hint: str) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}: every process this command started was stopped; "
                         f"{hint}")
        self.exit_code = 128 + signum


@contextlib.contextmanager
def stopping(hint: str) -> Iterator[None]:
    """Turn an interrupt (SIGINT, SIGTERM, SIGHUP) into a :class:`Stopped` saying ``hint``."""
    try:
        yield
    except KeyboardInterrupt as err:
        raise Stopped(getattr(err, "signum", signal.SIGINT), hint) from None


def config_with_overrides(base: dict[str, Any], overrides: list[str] | None) -> RunConfig:
    """Validated run config: ``base`` keys updated by ``-c key=value`` ``overrides``."""
    from florec.sim.flower_config import parse_overrides

    return parse_run_config(base | parse_overrides(overrides or []))


def print_runs(runs: list[dict[str, Any]], ks: tuple[str, ...] = ("recall@10", "ndcg@10")) -> None:
    """Print runs as one table: method, setting, test metrics at the best round, time."""
    table = Table()
    for col in ("method", "setting", "dataset", *ks, "best round", "wall s"):
        table.add_column(col)
    for r in runs:
        table.add_row(
            r["method"],
            r["setting"],
            r["dataset"],
            *(f"{r['metrics'].get(k, float('nan')):.4f}" for k in ks),
            str(r["best_round"]),
            f"{r['wall_s']:.1f}",
        )
    console.print(table)


def report_finished(out: Path, failed: bool, what: str, started: float = 0.0) -> None:
    """Print the results table of a finished run, or one line saying where its rounds are.

    ``results.json`` must have been written at or after ``started`` (a time.time() stamp):
    an older one belongs to another run and is never shown as this run's.
    """
    from florec.server.results import read_results

    path = out / "results.json"
    if failed or not path.exists() or path.stat().st_mtime < started - 1.0:  # mtime granularity
        raise FloRecError(f"the {what} run wrote no results; see the log above and {out} for "
                          "finished rounds")
    res = read_results(out)
    if res.get("status") != "finished":
        raise FloRecError(f"the {what} run stopped early after {res['runs'][0]['rounds']} rounds; "
                          f"finished rounds are in {out}/rounds.jsonl")
    print_runs(res["runs"])
    console.print(f"results: {out}/results.json")

