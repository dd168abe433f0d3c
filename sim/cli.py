"""The ``florec`` command: data, central and federated runs, the demo and deployments.

The benchmark commands (``bench``, ``perf``, ``plot``) live in :mod:`florec.sim.cli_bench`.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from florec.recdata.errors import FloRecError
from florec.recdata.runconfig import RunConfig, parse_run_config
from florec.recdata.store import num_buckets_for
from florec.sim import cli_bench
from florec.sim.cli_bench import Override

app = typer.Typer(
    help="FloRec: federated recommendation on Flower.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: list, statistics, splits.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
#: Central Adam step size; the run config's ``lr`` (0.05) is tuned for federated local training.
CENTRAL_LR = 0.005
#: ``--overwrite``: replace the run in the results folder (else a folder holding one is refused)
Overwrite = Annotated[bool, typer.Option(
    help="replace the run already in the results folder (default: refuse to)")]


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



def _config(base: dict[str, Any], overrides: list[str] | None) -> RunConfig:
    from florec.sim.flower_config import parse_overrides

    return parse_run_config(base | parse_overrides(overrides or []))


@data_app.command("list")
def data_list() -> None:
    """List the registered datasets."""
    from florec.recdata.datasets import DATASETS

    for name, spec in DATASETS.items():
        console.print(f"[bold]{name}[/bold]  {getattr(spec, 'description', '')}")


@data_app.command("stats")
def data_stats(dataset: str, data_dir: Annotated[str, typer.Option()] = "") -> None:
    """Users, items, interactions and density of a dataset."""
    from florec.recdata.datasets import load_dataset

    inter = load_dataset(dataset, data_dir or None)
    n = len(inter)
    table = Table(title=dataset)
    for col in ("users", "items", "interactions", "density", "timestamps", "titles"):
        table.add_column(col)
    table.add_row(
        str(inter.n_users),
        str(inter.n_items),
        str(n),
        f"{n / (inter.n_users * inter.n_items):.4%}",
        str(inter.has_time),
        str(inter.item_titles is not None),
    )
    console.print(table)


@data_app.command("text")
def data_text(
    dataset: str,
    n: Annotated[int, typer.Option("-n", help="items to print")] = 5,
    data_dir: Annotated[str, typer.Option()] = "",
) -> None:
    """Print the item text LLM prompts use (internal id, raw id, text) for the first N items."""
    from florec.recdata.datasets import load_dataset
    from florec.recdata.item_text import item_text_string, load_item_text

    inter = load_dataset(dataset, data_dir or None)
    texts = load_item_text(dataset, data_dir or None, inter.item_ids)
    for i, (raw, text) in enumerate(zip(inter.item_ids[:n].tolist(), texts[:n], strict=True)):
        typer.echo(f"{i}\t{raw}\t{item_text_string(text)}")


@data_app.command("split")
def data_split(
    dataset: str,
    split: Annotated[str, typer.Option()] = "loo",
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option()] = Path("splits"),
    data_dir: Annotated[str, typer.Option()] = "",
) -> None:
    """Write DIR/<dataset>.{train,valid,test}.inter (RecBole atomic files) and the id maps."""
    import shutil

    from florec.recdata.store import get_split

    cfg = parse_run_config({"dataset": dataset, "split": split, "split-seed": seed})
    sp, path = get_split(
        dataset, cfg.split, seed, data_dir or None, cfg.min_rating, cfg.synthetic_params()
    )
    out.mkdir(parents=True, exist_ok=True)
    for f in path.iterdir():
        shutil.copy2(f, out / f.name)
    sizes = {p: len(sp.parts[p][0]) for p in sp.parts}
    console.print(f"wrote {out}/{dataset}.{{train,valid,test}}.inter {sizes}")


@data_app.command("shard")
def data_shard(
    dataset: str,
    split: Annotated[str, typer.Option()] = "loo",
    seed: Annotated[int, typer.Option(help="split seed (split-seed)")] = 0,
    nodes: Annotated[int, typer.Option(help="number of nodes (num-nodes)")] = 2,
    users_per_node: Annotated[
        int, typer.Option(help="users per node; wins over --nodes when > 0")] = 0,
    out: Annotated[Path, typer.Option(help="new folder: one node-NNNN shard per node")] = Path(
        "shards"),
    data_dir: Annotated[str, typer.Option()] = "",
    config: Override = None,
) -> None:
    """Cut a run's split into one folder per node holding only that node's users' data.

    Give node i ``data-dir=OUT/node-000i`` in its node config; partition, clients-per-node and
    the synthetic generator keys come from -c as in a run.
    """
    from florec.recdata.shard_files import write_shards

    cfg = _config({"dataset": dataset, "split": split, "split-seed": seed, "num-nodes": nodes,
                   "users-per-node": users_per_node}, config)
    folders = write_shards(cfg, out, data_dir)
    console.print(f"wrote {len(folders)} shards to {out}/node-NNNN (manifest shard.json with "
                  "sha256s); give node i node-config data-dir=<its folder>")


@app.command()
def central(
    dataset: Annotated[str, typer.Option()] = "ml-100k",
    model: Annotated[str, typer.Option()] = "mf",
    split: Annotated[str, typer.Option()] = "loo",
    seed: Annotated[int, typer.Option()] = 0,
    epochs: Annotated[int, typer.Option()] = 20,
    batch_size: Annotated[int, typer.Option()] = 1024,
    lr: Annotated[float, typer.Option(help="Adam step size (tuned on ML-100K)")] = CENTRAL_LR,
    out: Annotated[Path, typer.Option()] = Path("results/central"),
    config: Override = None,
    overwrite: Overwrite = False,
) -> None:
    """Train a model on the pooled training data; writes OUT/results.json."""
    from florec.server.results import claim_folder
    from florec.sim.central import run_central

    for name, value in (("epochs", epochs), ("batch-size", batch_size)):
        if value < 1:
            raise FloRecError(f"--{name} {value} is below 1; give a positive number, e.g. "
                              f"--{name} {20 if name == 'epochs' else 1024}")
    cfg = _config(
        {"dataset": dataset, "model": model, "split": split, "seed": seed, "lr": lr}, config
    )
    with claim_folder(out, overwrite), stopping(f"start it again with --overwrite --out {out}"):
        run = run_central(cfg, epochs, batch_size, out)
    print_runs([run], *([("accuracy", "macro-f1")] if cfg.model == "llkd" else []))
    console.print(f"results: {out}/results.json")


def federated_config(dataset: str, algorithm: str, model: str, nodes: int, rounds: int,
                     config: list[str] | None, **extra: Any) -> tuple[RunConfig, int, dict]:
    """Validated config of a federated run, its node count and its non-default keys."""
    from florec.sim.flower_config import check_federated

    cfg = _config({"dataset": dataset, "algorithm": algorithm, "model": model,
                   "num-nodes": nodes, "num-rounds": rounds} | extra, config)
    check_federated(cfg)
    n = num_buckets_for(cfg)
    defaults = RunConfig().to_flower()
    overrides = {k: v for k, v in cfg.to_flower().items() if v != defaults[k]}
    return cfg, n, overrides | {"num-nodes": n}


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


@app.command()
def sim(
    dataset: Annotated[str, typer.Option()] = "ml-100k",
    algorithm: Annotated[str, typer.Option()] = "fedavg",
    model: Annotated[str, typer.Option()] = "mf",
    nodes: Annotated[int, typer.Option(help="nodes (ignored if users-per-node is set)")] = 100,
    rounds: Annotated[int, typer.Option()] = 20,
    out: Annotated[Path, typer.Option()] = Path("results/sim"),
    cpus_per_client: Annotated[float, typer.Option()] = 1.0,
    gpus_per_client: Annotated[float, typer.Option()] = 0.0,
    resume: Annotated[Path | None, typer.Option(
        help="continue the killed run in this results folder from its last checkpoint "
             "(its config.json; -c may change num-rounds)")] = None,
    config: Override = None,
    overwrite: Overwrite = False,
    ray_address: Annotated[str | None, typer.Option(
        envvar="RAY_ADDRESS", help="HOST:PORT of a running Ray head: run the simulated nodes "
        "on that cluster instead of a local Ray (docs/scale.md)")] = None,
) -> None:
    """Run `flwr run .` as a local simulation sized to the partition; stops the SuperLink after.

    The results folder is locked while the run lasts; one that holds a run is refused unless
    ``--overwrite`` or ``--resume``. A run that fails exits non-zero with its cause.
    """
    from florec.server.results import claim_folder
    from florec.sim.flower import RunFailed, flwr_run
    from florec.sim.flower_config import in_child

    # checks and sizing in a child: this process waits for the run without torch or the data
    if resume is not None:
        out = resume.resolve()
        overrides, n = in_child(resume_overrides, out, config)
    else:
        out = out.resolve()
        _, n, overrides = in_child(federated_config, dataset, algorithm, model, nodes, rounds,
                                   config, **{"out-dir": str(out)})
    if ray_address:  # fail in one line before the results folder is claimed
        from florec.sim.ray_cluster import check_ray_address, shared_data_overrides

        ray_address = check_ray_address(ray_address)
        overrides = shared_data_overrides(overrides)
    hint = (f"continue it with `florec sim --resume {out}`"
            if overrides.get("checkpoint-every") else
            "it had no checkpoints (-c checkpoint-every=N), so start it again with --overwrite")
    started = time.time()
    with claim_folder(out, overwrite, resume is not None), stopping(hint):
        try:
            flwr_run(overrides, n, cpus_per_client, gpus_per_client, ray_address=ray_address)
        except RunFailed as err:
            raise FloRecError(f"the federated run failed: {err}; finished rounds are in "
                              f"{out}") from None
    report_finished(out, False, "federated", started)


def resume_overrides(out: Path, config: list[str] | None) -> tuple[dict[str, Any], int]:
    """Run-config overrides and node count that continue the run whose results are in ``out``."""
    import json

    path = out / "config.json"
    if not path.is_file():
        raise FloRecError(f"{path} is missing: --resume needs the results folder of a federated "
                          "run started with -c checkpoint-every=N")
    from florec.server.checkpoint import load_checkpoint

    saved = {k: v for k, v in json.loads(path.read_text())["config"].items()
             if k.replace("-", "_") in RunConfig.model_fields}
    cfg = _config(saved | {"resume": True, "out-dir": str(out)}, config)
    load_checkpoint(out, cfg.to_flower())  # no checkpoint, or a changed key: fail before Ray
    n = num_buckets_for(cfg)
    defaults = RunConfig().to_flower()
    return {k: v for k, v in cfg.to_flower().items() if v != defaults[k]} | {"num-nodes": n}, n


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


@app.command()
def demo(
    out: Annotated[Path, typer.Option()] = Path("results/demo"),
    nodes: Annotated[int, typer.Option()] = 100,
    rounds: Annotated[int, typer.Option()] = 20,
    config: Override = None,
    overwrite: Overwrite = False,
) -> None:
    """FedAvg-MF on ML-100K with 100 nodes vs the same MF trained centrally; prints a table."""
    from florec.server.results import claim_folder, read_results
    from florec.sim.central import run_central

    out = out.resolve()
    sim(
        dataset="ml-100k",
        algorithm="fedavg",
        model="mf",
        nodes=nodes,
        rounds=rounds,
        out=out / "federated",
        cpus_per_client=1.0,
        gpus_per_client=0.0,
        config=config,
        overwrite=overwrite,
    )
    cfg = _config({"dataset": "ml-100k", "model": "mf"}, config).model_copy(
        update={"lr": CENTRAL_LR}
    )
    with claim_folder(out / "central", overwrite), stopping("run the demo again"):
        run_central(cfg, epochs=rounds * cfg.local_epochs, batch_size=1024,
                    out_dir=out / "central")
    runs = read_results(out / "federated")["runs"] + read_results(out / "central")["runs"]
    console.rule("FloRec demo: ML-100K, test metrics at the best validation round")
    print_runs(runs)
    console.print(f"results folder: {out}")


deploy_app = typer.Typer(
    help="Real deployments: SuperLink, SuperExecs and SuperNodes.", no_args_is_help=True
)
app.add_typer(deploy_app, name="deploy")


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
    from florec.server.results import claim_folder
    from florec.sim.deploy import run_local

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


@app.command()
def simulate(
    model: Annotated[list[Path], typer.Option(
        help="results folder of a central run (config.json, model.npz); repeat to compare")],
    personas: Annotated[int, typer.Option(help="persona users")] = 50,
    sessions: Annotated[int, typer.Option(help="sessions per persona")] = 3,
    out: Annotated[Path, typer.Option()] = Path("results/simulate"),
    llm: Annotated[str, typer.Option(
        help="who plays the personas: hf (SmolLM2), openai, tiny, or scripted (genre policy)")
    ] = "hf",
    llm_model: Annotated[str, typer.Option(help="llm-model of hf/openai")] = "",
    llm_base_url: Annotated[str, typer.Option(help="openai: the server URL")] = "",
    encoder: Annotated[str, typer.Option(help="memory encoder: minilm or tiny")] = "minilm",
    seed: Annotated[int, typer.Option()] = 0,
    closed_loop: Annotated[bool, typer.Option(
        help="feed clicks back to the recommender between sessions")] = True,
    cold_start: Annotated[bool, typer.Option(
        help="personas are new users seeded from their text (MF runs)")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Persona users (UXAgent-style) test trained recommenders: RecBole sessions and a report."""
    from florec.models.llm.encoder import SentenceEncoder
    from florec.server.results import FolderLock
    from florec.sim.personas.recommender import check_run
    from florec.sim.personas.run import build_persona_llm, simulate_runs

    for run_dir in model:
        check_run(run_dir)
    if (out / "report.json").exists() and not overwrite:
        raise FloRecError(f"{out} already holds a simulation (report.json); pass --overwrite to "
                          "replace it or choose another --out")
    with FolderLock(out), stopping(f"start it again with --overwrite --out {out} (cached LLM "
                                   "answers are reused)"):
        agent_llm, policy = build_persona_llm(llm, seed, llm_model, llm_base_url)
        report = simulate_runs(model, personas, sessions, out, llm=agent_llm,
                               encoder=SentenceEncoder(encoder), policy=policy, seed=seed,
                               closed_loop=closed_loop, cold_start=cold_start)
    table = Table(title=f"{personas} personas x {sessions} sessions ({policy})")
    for col in ("recommender", "CTR", "expected CTR", "ARP shown", "ARP clicked"):
        table.add_column(col)
    for run in report["runs"]:
        m = run["metrics"]
        table.add_row(run["label"], f"{m['ctr']:.3f}", f"{m['expected_ctr']:.3f}",
                      f"{m['arp_shown']:.1f}",
                      "-" if m["arp_clicked"] is None else f"{m['arp_clicked']:.1f}")
    console.print(table)
    console.print(f"report: {out}/report.md; sessions: {out}/<recommender>/ (RecBole files)")


for command in (cli_bench.bench, cli_bench.perf, cli_bench.plot):
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
