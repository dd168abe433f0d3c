"""``florec data``: list datasets, their statistics and item text; write splits and shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from florec.recdata.runconfig import parse_run_config
from florec.sim.cli_common import Override, config_with_overrides, console

data_app = typer.Typer(help="Datasets: list, statistics, splits.", no_args_is_help=True)


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

    cfg = config_with_overrides({"dataset": dataset, "split": split, "split-seed": seed,
                                 "num-nodes": nodes, "users-per-node": users_per_node}, config)
    folders = write_shards(cfg, out, data_dir)
    console.print(f"wrote {len(folders)} shards to {out}/node-NNNN (manifest shard.json with "
                  "sha256s); give node i node-config data-dir=<its folder>")
