"""Rewrite a bench folder's ``report.md`` (and, with ``--plots``, ``plots/``) from its results.json.

``florec bench`` writes both after running its cells and ``florec plot`` redraws the plots; this
rebuilds the report too, e.g. after a change of the report writer (``florec.sim.report``) or for
a folder whose cells were not committed (``docs/results/sequential``).

Usage: python bench/rewrite_report.py docs/results/ml100k [docs/results/fair_ml1m ...] [--plots]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from florec.recdata.errors import ConfigError
from florec.server.results import read_results
from florec.sim.report import write_report


def rewrite(folder: Path, plots: bool = False) -> list[Path]:
    """Rewrite ``folder/report.md`` (and the plots) from ``folder/results.json``.

    Raises
    ------
    ConfigError
        If the folder has no ``results.json``.

    """
    path = folder / "results.json"
    if not path.is_file():
        raise ConfigError(f"{folder} has no results.json; give a folder written by florec bench")
    written = [write_report(read_results(path), folder)]
    if plots:
        from florec.sim.plots import write_plots

        written += write_plots(folder)
    return written


def main() -> None:
    """Command line: rewrite each folder's report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("--plots", action="store_true", help="also redraw plots/ (needs the cells)")
    args = ap.parse_args()
    for folder in args.folders:
        for path in rewrite(folder, args.plots):
            print(path)


if __name__ == "__main__":
    main()
