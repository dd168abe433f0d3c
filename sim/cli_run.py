"""``florec central``, ``florec sim`` and ``florec demo``: central and simulated federated runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from florec.recdata.errors import ConfigError, FloRecError
from florec.recdata.runconfig import RunConfig
from florec.recdata.store import num_buckets_for
from florec.sim.cli_common import (
    CENTRAL_LR,
    Override,
    Overwrite,
    config_with_overrides,
    console,
    print_runs,
    report_finished,
    stopping,
)


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
    from florec.server.folder_lock import claim_folder
    from florec.sim.central import run_central

    for name, value in (("epochs", epochs), ("batch-size", batch_size)):
        if value < 1:
            raise FloRecError(f"--{name} {value} is below 1; give a positive number, e.g. "
                              f"--{name} {20 if name == 'epochs' else 1024}")
    cfg = config_with_overrides(
        {"dataset": dataset, "model": model, "split": split, "seed": seed, "lr": lr}, config
    )
    if cfg.user_refit_steps > 0:  # the nodes' refit (client/fedavg_node.py): no central analogue
        raise ConfigError("user-refit-steps refits user embeddings on the nodes of a federated "
                          "FedAvg-MF run; a central run would ignore it: set user-refit-steps=0 "
                          "or use florec sim")
    with claim_folder(out, overwrite), stopping(f"start it again with --overwrite --out {out}"):
        run = run_central(cfg, epochs, batch_size, out)
    print_runs([run], *([("accuracy", "macro-f1")] if cfg.model == "llkd" else []))
    console.print(f"results: {out}/results.json")


def federated_config(dataset: str, algorithm: str, model: str, nodes: int, rounds: int,
                     config: list[str] | None, **extra: Any) -> tuple[RunConfig, int, dict]:
    """Validated config of a federated run, its node count and its non-default keys."""
    from florec.sim.flower_config import check_federated

    cfg = config_with_overrides({"dataset": dataset, "algorithm": algorithm, "model": model,
                                 "num-nodes": nodes, "num-rounds": rounds} | extra, config)
    check_federated(cfg)
    overrides, n = node_overrides(cfg)
    return cfg, n, overrides


def node_overrides(cfg: RunConfig) -> tuple[dict[str, Any], int]:
    """The run-config keys of ``cfg`` that differ from the defaults, with its node count."""
    n = num_buckets_for(cfg)
    defaults = RunConfig().to_flower()
    overrides = {k: v for k, v in cfg.to_flower().items() if v != defaults[k]}
    return overrides | {"num-nodes": n}, n


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
    from florec.server.folder_lock import claim_folder
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
    cfg = config_with_overrides(saved | {"resume": True, "out-dir": str(out)}, config)
    load_checkpoint(out, cfg.to_flower())  # no checkpoint, or a changed key: fail before Ray
    return node_overrides(cfg)


#: The demo's federated recipe, FedSGD (issue 15 §1; bench/fedmf_converge.toml): each round 10
#: sampled users take one full-batch local SGD step, the server sums their item changes and
#: steps Adam on the sum; ~94 rounds cover ML-100K's training set once. Over 30 seeds it
#: scores 101.8% of central MF-BPR's test ndcg@10 (docs/methods/fedavg-mf.md).
DEMO_FEDSGD = ("aggregation='sum'", "optimizer='sgd'", "lr=4.0", "local-batch-size=100000",
               "cohort-size=10", "server-opt='adam'", "server-lr=0.005", "eval-every=94",
               "patience=10")


def demo(
    out: Annotated[Path, typer.Option()] = Path("results/demo"),
    nodes: Annotated[int, typer.Option()] = 10,
    rounds: Annotated[int, typer.Option(help="cap; validation stops the run earlier")] = 9400,
    config: Override = None,
    overwrite: Overwrite = False,
) -> None:
    """FedSGD-MF on ML-100K under `flwr run` vs MF-BPR trained centrally; prints a table.

    Both stop by validation ndcg@10 (patience 10 evaluations). ``-c`` overrides apply to both,
    except that central MF-BPR keeps its Adam lr (0.005).
    """
    from florec.server.folder_lock import claim_folder
    from florec.server.results import read_results
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
        config=[*DEMO_FEDSGD, *(config or [])],
        overwrite=overwrite,
    )
    cfg = config_with_overrides({"dataset": "ml-100k", "model": "mf", "patience": 10},
                                config).model_copy(update={"lr": CENTRAL_LR})
    with claim_folder(out / "central", overwrite), stopping("run the demo again"):
        run_central(cfg, epochs=300, batch_size=1024, out_dir=out / "central")
    runs = read_results(out / "federated")["runs"] + read_results(out / "central")["runs"]
    console.rule("FloRec demo: ML-100K, test metrics at the best validation round")
    print_runs(runs)
    console.print(f"results folder: {out}")
