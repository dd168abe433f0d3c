"""The benchmark commands of ``florec``, registered by :mod:`florec.sim.cli`.

``bench`` runs a TOML matrix, ``perf`` measures rounds under Flower and Ray, ``plot`` redraws a
bench folder's plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from florec.sim.cli_common import Override, console, stopping


def bench(
    config: Annotated[Path, typer.Option("--config", help="bench TOML file")],
    out: Annotated[Path | None, typer.Option(help="results folder (default results/bench-NAME)")]
    = None,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="run no cell: report over the finished cells, list the rest")]
    = False,
) -> None:
    """Run (or resume) a bench matrix; writes OUT/results.json, report.md and plots/."""
    from florec.recdata.errors import FloRecError
    from florec.sim.bench import load_bench, run_bench

    if out is None:
        name = load_bench(config)["bench"].get("name", config.stem)
        out = Path("results") / f"bench-{name}"
    with stopping(f"run the same command again: finished cells in {out} are skipped"):
        done = run_bench(config, out, echo=console.print, report_only=report_only)
    not_run = f", {len(done.not_run)} not run" if report_only else ""
    console.print(f"{len(done.ran)} cells ran, {len(done.skipped)} skipped (finished){not_run}, "
                  f"{len(done.failed)} failed; report: {out}/report.md, plots: {out}/plots/")
    if done.failed:
        first, why = next(iter(done.failed.items()))
        raise FloRecError(f"{len(done.failed)} bench cell(s) failed, first {first}: {why}; see "
                          f"{out}/cells/{first}/error.txt, fix it and run the same command again "
                          "(finished cells are skipped)")


def perf(
    datasets: Annotated[str, typer.Option(
        help="comma-separated; 'synthetic' (ML-1M-shaped) takes --populations, any other "
             "dataset runs at its own size")] = "synthetic,ml-1m",
    populations: Annotated[str, typer.Option()] = "100,1000,6040",
    cohorts: Annotated[str, typer.Option(help="shares of users trained per round")] = "1.0,0.1",
    buckets: Annotated[str, typer.Option(help="users per node")] = "10,100",
    rounds: Annotated[int, typer.Option(help="rounds per cell (round 1 is a warm-up)")] = 3,
    json_lines: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    out: Annotated[Path | None, typer.Option(help="also append the JSON lines to this file")]
    = None,
    config: Override = None,
) -> None:
    """Benchmark FedAvg-MF rounds under `flwr run` + Ray: time, framework cost, memory, bytes."""
    import json

    from florec.recdata.runconfig import parse_run_config
    from florec.sim.flower_config import check_federated, parse_overrides
    from florec.sim.perf import measure, perf_cells

    extra = parse_overrides(config or [])
    def floats(text: str) -> list[float]:
        return [float(x) for x in text.split(",") if x]

    cells = perf_cells(datasets.split(","), [int(x) for x in floats(populations)],
                       floats(cohorts), [int(x) for x in floats(buckets)])
    for cell in cells:  # every cell's config is checked before the first one starts Ray
        check_federated(parse_run_config(cell.run_config(rounds, extra)))
    table = Table("dataset", "algorithm", "population", "cohort", "bucket", "nodes", "s/round",
                  "framework ms/update", "peak MB", "MB/round", "eval s")
    for cell in cells:
        with stopping("its Flower runs and temporary folders are gone; run perf again"):
            row = measure(cell, rounds, extra=extra)
        line = json.dumps(row)
        if out is not None:
            with out.open("a") as fh:
                fh.write(line + "\n")
        if json_lines:
            print(line, flush=True)
        else:
            table.add_row(row["dataset"], row["algorithm"], str(row["population"]),
                          f"{row['cohort']:g}",
                          str(row["bucket"]), str(row["nodes"]), f"{row['s_per_round']:.2f}",
                          f"{row['framework_ms_per_update']:.2f}", f"{row['peak_mem_mb']:.0f}",
                          f"{row['bytes_per_round'] / 2**20:.1f}", f"{row['eval_s']:.2f}")
    if not json_lines:
        console.print(table)


def plot(results_dir: Path) -> None:
    """Redraw the PNG plots of a bench results folder into RESULTS_DIR/plots/."""
    from florec.sim.plots import write_plots

    for path in write_plots(results_dir):
        console.print(str(path))
