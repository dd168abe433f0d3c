"""Run the unfinished cells of a bench config in several worker processes (the DP curves).

``florec bench`` runs cells one after another and locks its results folder. On a machine with
idle cores, this runs the same cells (:func:`florec.sim.bench.run_cell`, same folders, same
``cell.json``) in ``--workers`` processes, cells of one method and seed never twice. Then
``florec bench`` with the same ``--config``/``--out`` skips every finished cell and writes
``results.json``, ``report.md`` and plots as usual.

Run: FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/dp_curve_parallel.py \
       --config bench/dp_curve_ml1m.toml --out docs/results/dp_ml1m --workers 2
"""

from __future__ import annotations

import argparse
import logging
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from florec.sim.bench import cells_of, load_bench, run_cell


def _run(config: str, out: str, index: int) -> str:
    """Run cell ``index`` of the config (in a worker); returns a one-line outcome."""
    import florec.server.app  # noqa: F401 - flwr sets its logger's level on import

    logging.getLogger("flwr").setLevel(logging.WARNING)
    conf = load_bench(Path(config))
    cell = cells_of(conf, Path(out))[index]
    name = cell.name
    try:
        cell.mark_started(conf)
        run_cell(conf, cell)
        return f"{name}: finished"
    except Exception as err:  # noqa: BLE001 - one failed cell must not stop the others
        (cell.out_dir / "error.txt").write_text(traceback.format_exc())
        return f"{name} failed: {type(err).__name__}: {err}".splitlines()[0]


def main() -> None:
    """Run the unfinished cells in a process pool, printing one line per cell."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--label", action="append", default=None,
                    help="run only the cells of this method label (repeatable)")
    args = ap.parse_args()
    conf = load_bench(Path(args.config))
    cells = cells_of(conf, Path(args.out))  # seed-major: a cut-short run has every method
    todo = sorted((i for i, c in enumerate(cells) if not c.finished(conf)
                   and (args.label is None or c.label in args.label)),
                  key=lambda i: (cells[i].seed, i))
    print(f"{len(todo)} unfinished cells, {args.workers} workers")
    with ProcessPoolExecutor(args.workers) as pool:
        for line in pool.map(_run, [args.config] * len(todo), [args.out] * len(todo), todo):
            print(line, flush=True)


if __name__ == "__main__":
    main()
