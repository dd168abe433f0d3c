"""``florec simulate``: persona users (UXAgent-style) test trained recommenders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from florec.recdata.errors import FloRecError
from florec.sim.cli_common import Overwrite, console, stopping


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
    from florec.server.folder_lock import FolderLock
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
