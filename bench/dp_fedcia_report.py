"""User-level DP for FedCIA (dense): per-round validation and final test ndcg@10, with and without.

Reads the DP cells of ``florec bench --config bench/dp_fedcia.toml --out docs/results/dp_fedcia``
and, for the same settings without DP, the committed runs of ``bench/fedcia.py`` (FedCIA-MF
dense and Local-MF, ``docs/results/fedcia/paper/``), and writes ``summary.md``: epsilon, noise
multiplier, validation ndcg@10 per round, and test ndcg@10 / recall@10 at the best validation
round (selection on f1@10, as bench/fedcia.py).

Run: python bench/dp_fedcia_report.py --out docs/results/dp_fedcia
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"FedCIA-MF dense (no DP)": ROOT / "docs/results/fedcia/paper/FedCIA-MF-dense",
         "Local-MF (no communication)": ROOT / "docs/results/fedcia/paper/Local-MF"}


def run_row(label: str, folder: Path) -> dict[str, Any]:
    """One run folder's per-round validation ndcg@10, test metrics and DP entry."""
    rounds = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    run = json.loads((folder / "results.json").read_text())["runs"][0]
    dp = run.get("dp") or {}
    return {"label": label, "epsilon": dp.get("epsilon"), "z": dp.get("noise_multiplier"),
            "clip": dp.get("clip"), "valid": [r["valid"]["ndcg@10"] for r in rounds],
            "best_round": run["best_round"], "ndcg@10": run["metrics"]["ndcg@10"],
            "recall@10": run["metrics"]["recall@10"]}


def rows_of(out: Path) -> list[dict[str, Any]]:
    """The no-DP references, then every DP cell under ``out/cells``."""
    rows = [run_row(label, folder) for label, folder in PLAIN.items()]
    for folder in sorted((out / "cells").glob("*/*/seed0")):
        cell = json.loads((folder / "results.json").read_text())
        if cell.get("status") == "finished":
            rows.append(run_row(folder.parent.name, folder))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`rows_of`."""
    lines = ["| run | clip C | noise multiplier | epsilon (delta = 1/943) | valid ndcg@10 per "
             "round | best round | test ndcg@10 | test recall@10 |", "|---" * 8 + "|"]
    for r in rows:
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        z = "-" if r["z"] is None else f"{r['z']:.3f}"
        clip = "-" if r["clip"] is None else f"{r['clip']:g}"
        lines.append(f"| {r['label']} | {clip} | {z} | {eps} | "
                     f"{', '.join(f'{v:.4f}' for v in r['valid'])} | {r['best_round']} | "
                     f"{r['ndcg@10']:.4f} | {r['recall@10']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write summary.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    text = table(rows_of(args.out))
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
