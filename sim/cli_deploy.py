"""``florec deploy local``: one job on a real SuperLink/SuperExec/SuperNode deployment."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

from florec.recdata.errors import FloRecError
from florec.sim.cli_common import Override, Overwrite, report_finished
from florec.sim.cli_run import federated_config

deploy_app = typer.Typer(
    help="Real deployments: SuperLink, SuperExecs and SuperNodes.", no_args_is_help=True
)


@deploy_app.command("local")
def deploy_local(
    dataset: Annotated[str, typer.Option()] = "ml-100k",
    algorithm: Annotated[str, typer.Option()] = "fedavg",
    model: Annotated[str, typer.Option()] = "mf",
    nodes: Annotated[int, typer.Option(help="SuperNodes to start")] = 2,
    rounds: Annotated[int, typer.Option()] = 20,
    out: Annotated[Path, typer.Option()] = Path("results/deploy"),
    tls: Annotated[bool, typer.Option(help="TLS on every API (self-signed CA)")] = False,
    certs: Annotated[
        Path | None,
        typer.Option(help="certs folder from deploy/certs.sh (default: made for this run)"),
    ] = None,
    auth: Annotated[
        bool, typer.Option(help="SuperNode and SuperExec authentication (needs --tls)")
    ] = False,
    data_dir: Annotated[str, typer.Option(help="data root the shards are cut from")] = "",
    shards: Annotated[
        Path | None,
        typer.Option(help="shards from florec data shard (default: cut into OUT/shards)"),
    ] = None,
    config: Override = None,
    overwrite: Overwrite = False,
) -> None:
    """Run one job on a real deployment on 127.0.0.1: SuperLink, SuperNodes, SuperExecs.

    Node i reads only its shard (SHARDS/node-000i); the server processes open no data.
    """
    from florec.recdata.shard_files import check_shards, write_shards
    from florec.server.folder_lock import claim_folder
    from florec.sim.deploy_run import run_local

    out = out.resolve()
    cfg, n, overrides = federated_config(dataset, algorithm, model, nodes, rounds, config)
    started = time.time()
    with claim_folder(out, overwrite):
        if shards is None:
            shards = out / "shards"
            shutil.rmtree(shards, ignore_errors=True)  # a claimed folder: an earlier run's
            write_shards(cfg, shards, data_dir)
        elif check_shards(shards, cfg) != n:
            raise FloRecError(f"{shards} holds {check_shards(shards, cfg)} shards but the run "
                              f"has {n} nodes; cut them with --nodes {n}")
        code = run_local(overrides, n, out, tls=tls, certs=certs, auth=auth, shards=shards)
    report_finished(out, code != 0, "deployed", started)
