"""The ``florec`` command: data, central and federated runs, the demo and deployments.

Each command group lives in its own module: ``data`` in :mod:`florec.sim.cli_data`, ``central``,
``sim`` and ``demo`` in :mod:`florec.sim.cli_run`, ``deploy`` in :mod:`florec.sim.cli_deploy`,
``simulate`` in :mod:`florec.sim.cli_personas` and the benchmark commands (``bench``, ``perf``,
``plot``) in :mod:`florec.sim.cli_bench`; what they share is in :mod:`florec.sim.cli_common`.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from florec.recdata.errors import FloRecError
from florec.sim import cli_bench
from florec.sim.cli_data import data_app
from florec.sim.cli_deploy import deploy_app
from florec.sim.cli_personas import simulate
from florec.sim.cli_run import central, demo, sim

app = typer.Typer(
    help="FloRec: federated recommendation on Flower.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
for command in (central, sim, demo):
    app.command()(command)
app.add_typer(deploy_app, name="deploy")
for command in (simulate, cli_bench.bench, cli_bench.perf, cli_bench.plot):
    app.command()(command)


def main() -> None:
    """Console entry point: FloRec errors print as one line and exit 2.

    SIGTERM and SIGHUP stop a command as SIGINT does: everything it started is stopped, one
    line says how to go on, and the exit code is 128 + the signal number.
    """
    from florec.sim.teardown import handle_signals

    try:
        with handle_signals():
            app()
    except FloRecError as err:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {err}", highlight=False)
        sys.exit(getattr(err, "exit_code", 2))


if __name__ == "__main__":
    main()
