"""Profile one in-process FedAvg-MF training round, split into local training and the rest.

The cell is ``florec perf``'s in-process round (:func:`florec.sim.perf.run_in_process`: the
real ServerApp, ClientApp handlers and messages on :class:`florec.sim.local_grid.LocalGrid`,
serially, no Flower transport): every user (cohort 1.0), buckets of ``--bucket`` users, d=64,
one local epoch, ``--aggregation`` (default ``sparse``). Round 1 is a warm-up (node stores,
caches); round 2 is timed (and profiled with ``--profile``) from the push of its training
messages to the push of the final evaluation, which is not run (the script stops there).

Printed (and appended as one JSON line to ``--json``):

- ``round_s``: the training round, server aggregation included;
- ``local_update_s``: the nodes' local training alone
  (:func:`florec.client.trainers.bpr_embedding.local_update`, summed over the nodes);
- ``node_s``: the nodes' train handlers in all (so ``node_s - local_update_s`` is each node's
  message work besides training: its cohort, decoding the table, pre-summing and encoding
  its upload, its store);
- ``server_s`` = ``round_s - node_s`` (the strategy's messages and its aggregation);
- ``non_training_s`` = ``round_s - local_update_s``.

``--tree PATH`` imports ``florec`` from another checkout whose root is the package (e.g. a
``git worktree`` of an older commit), so two versions can be timed alternately on a busy
machine (see docs/scale.md, "Where the rest of the round went"); a row's ``tree`` is that
folder, or ``--label``::

    export OMP_NUM_THREADS=1 FLOREC_DATA_DIR=/path/to/data
    python bench/perf_round_profile.py --dataset fedcia-bx --profile      # the profile
    git worktree add ../before <commit>
    python bench/perf_round_profile.py --tree ../before --label before --json side.jsonl
    python bench/perf_round_profile.py --label after --json side.jsonl     # and so on
    python bench/perf_round_profile.py --table side.jsonl                  # medians, ratios
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


class _Stop(Exception):
    """Raised at the first push after the profiled round: the run ends there."""


def _use_tree(tree: str | None) -> Path | None:
    """Import ``florec`` from ``tree`` (a checkout whose root is the package) if given.

    Returns the temporary folder that holds the ``florec`` link (None without ``tree``); it
    is removed at exit (the link only: the checkout it points to is left alone).
    """
    if not tree:
        return None
    link_dir = Path(tempfile.mkdtemp(prefix="florec-tree-"))
    atexit.register(shutil.rmtree, link_dir, ignore_errors=True)
    (link_dir / "florec").symlink_to(Path(tree).resolve(), target_is_directory=True)
    sys.path.insert(0, str(link_dir))
    return link_dir


def run(dataset: str, bucket: int, aggregation: str, profile: bool, work: Path,
        rounds: int = 2, population: int = 0) -> tuple[dict[str, Any], cProfile.Profile | None]:
    """Run ``rounds`` rounds in process; time (and profile) the training of the last one.

    Parameters
    ----------
    dataset : str
        Registered dataset (all its users train).
    bucket : int
        Users per node.
    aggregation : str
        FedAvg aggregation mode.
    profile : bool
        Profile the timed round with cProfile.
    work : Path
        Folder for the run's outputs.
    rounds : int
        Rounds; the last one is timed (the ones before warm up).
    population : int
        Users of a ``synthetic`` dataset (ML-1M's shape); ignored otherwise.

    Returns
    -------
    (dict, cProfile.Profile or None)
        The timings (see the module docstring) and the profile.

    """
    from flwr.app import MessageType

    import florec.client.fedavg_node as fedavg_node
    from florec.recdata.runconfig import parse_run_config
    from florec.recdata.store import num_buckets_for
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid
    from florec.sim.perf import PerfCell

    cfg = PerfCell(dataset, population, 1.0, bucket).run_config(rounds,
                                                                {"aggregation": aggregation})
    cfg |= {"out-dir": str(work)}
    n = num_buckets_for(parse_run_config(cfg))
    run_cfg = parse_run_config(cfg | {"num-nodes": n})
    clock = {"local": 0.0, "node": 0.0, "start": None, "end": None}
    prof = cProfile.Profile() if profile else None
    inner = fedavg_node.local_update

    def timed_update(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            if clock["start"] is not None:
                clock["local"] += time.perf_counter() - t0

    class Grid(LocalGrid):
        def push_messages(self, messages):  # noqa: D102, ANN001, ANN202
            messages = list(messages)
            kind = messages[0].metadata.message_type if messages else ""
            if clock["start"] is None and kind == MessageType.TRAIN and int(
                    messages[0].content.config_records["config"]["server-round"]) == rounds:
                clock["start"] = time.perf_counter()
                if prof is not None:
                    prof.enable()
            elif clock["start"] is not None:
                if prof is not None:
                    prof.disable()
                clock["end"] = time.perf_counter()
                raise _Stop
            return super().push_messages(messages)

        def _handle(self, msg):  # noqa: ANN001, ANN202
            t0 = time.perf_counter()
            try:
                return super()._handle(msg)
            finally:
                if clock["start"] is not None:
                    clock["node"] += time.perf_counter() - t0

    fedavg_node.local_update = timed_update
    try:
        run_federated(Grid(run_cfg.to_flower(), n, keep_replies=False), run_cfg, work)
    except _Stop:
        pass
    finally:
        fedavg_node.local_update = inner
    if clock["end"] is None:
        raise RuntimeError("the run ended before the timed round was over")
    round_s = clock["end"] - clock["start"]
    return {"dataset": dataset, "bucket": bucket, "aggregation": aggregation, "nodes": n,
            "round_s": round_s, "local_update_s": clock["local"], "node_s": clock["node"],
            "server_s": round_s - clock["node"], "non_training_s": round_s - clock["local"],
            "load_avg_1m": os.getloadavg()[0]}, prof


def print_profile(prof: cProfile.Profile, top: int) -> str:
    """The ``top`` rows by cumulative and by own time, as text."""
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    for key in ("cumulative", "tottime"):
        out.write(f"\n==== by {key} ====\n")
        stats.sort_stats(key).print_stats(top)
    return out.getvalue()


def before_and_after(names: list[str]) -> tuple[str, str]:
    """Which of two tree names is "before" and which "after".

    The tree whose name contains "before" is before; else, if one contains "after", the other
    is before; else the first (in the order of the rows) is before.

    Raises
    ------
    SystemExit
        With one line, if both names contain "before", or both "after", or one both.

    """
    low = [name.lower() for name in names]
    marked_b = [i for i, name in enumerate(low) if "before" in name]
    marked_a = [i for i, name in enumerate(low) if "after" in name]
    if len(marked_b) > 1 or len(marked_a) > 1 or set(marked_b) & set(marked_a):
        raise SystemExit(f"--table cannot tell before from after: trees {names!r}; label "
                         "one tree 'before...' and the other 'after...'")
    first = marked_b[0] if marked_b else (1 - marked_a[0]) if marked_a else 0
    return names[first], names[1 - first]


def side_by_side(rows: list[dict]) -> str:
    """Markdown table of alternated rows of two trees: medians and after/before ratios.

    "Before" is the tree whose name (``tree`` field, ``--label``) contains "before", else the
    one that does not contain "after", else the first tree in ``rows``
    (:func:`before_and_after`); the header names both. Rows pair up in their order (one run
    of each tree, alternated). The ratio is the median of the pairs' ratios.
    """
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["tree"], []).append(r)
    if len(by) != 2:
        raise SystemExit(f"--table needs rows of exactly two trees, got {len(by)}")
    name_b, name_a = before_and_after(list(by))
    before, after = by[name_b], by[name_a]
    if len(before) != len(after):
        raise SystemExit(f"--table needs paired rows, got {len(before)} of "
                         f"'{name_b}' and {len(after)} of '{name_a}'")
    lines = [f"| in-process round | before ('{name_b}') | after ('{name_a}') "
             "| after / before (median of pairs) |",
             "|---|---|---|---|"]
    for r in rows:
        r["node_other_s"] = r["node_s"] - r["local_update_s"]
    for key, label in (("round_s", "round (training + server)"),
                       ("non_training_s", "of which not local training"),
                       ("node_other_s", "nodes' message work besides training"),
                       ("server_s", "server (messages, checks, fold, step)"),
                       ("local_update_s", "local training (`local_update`)")):
        b, a = (statistics.median(r[key] for r in side) for side in (before, after))
        pairs = [y[key] / x[key] for x, y in zip(before, after, strict=True)]
        lines.append(f"| {label} | {b:.2f} s | {a:.2f} s | {statistics.median(pairs):.3f}x |")
    loads = [r["load_avg_1m"] for r in rows]
    lines.append(f"\n{len(before)} + {len(after)} runs, {rows[0]['dataset']} "
                 f"({rows[0]['aggregation']}, {rows[0]['nodes']} nodes), 1-minute load "
                 f"{min(loads):.2f}-{max(loads):.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fedcia-bx")
    p.add_argument("--bucket", type=int, default=100, help="users per node")
    p.add_argument("--population", type=int, default=1000, help="users of synthetic")
    p.add_argument("--aggregation", default="sparse")
    p.add_argument("--profile", action="store_true", help="cProfile the timed round")
    p.add_argument("--top", type=int, default=40, help="rows of each profile table")
    p.add_argument("--tree", default=None, help="import florec from this checkout")
    p.add_argument("--label", default=None,
                   help="the rows' tree field (default: the imported florec's folder)")
    p.add_argument("--json", type=Path, default=None, help="append the timings here")
    p.add_argument("--dump", type=Path, default=None, help="write the raw profile here")
    p.add_argument("--work-dir", type=Path, default=None, help="parent of the run's folder")
    p.add_argument("--table", type=Path, default=None,
                   help="print the side-by-side table of this --json file and stop")
    args = p.parse_args(argv)
    if args.table is not None:
        print(side_by_side([json.loads(x) for x in args.table.read_text().splitlines()]))
        return
    _use_tree(args.tree)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        row, prof = run(args.dataset, args.bucket, args.aggregation, args.profile, Path(tmp),
                        population=args.population)
    import florec

    row |= {"tree": args.label or str(Path(florec.__file__).resolve().parent)}
    if prof is not None:
        print(print_profile(prof, args.top))
        if args.dump is not None:
            prof.dump_stats(args.dump)
    print(json.dumps(row))
    if args.json is not None:
        with args.json.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
