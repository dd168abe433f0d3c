"""bench/perf_round_profile.py: one timed in-process round, split into training and the rest."""

from __future__ import annotations

import json
import sys

import pytest


def test_the_timed_round_holds_the_nodes_which_hold_the_local_training(bench_script, tmp_path):
    bench = bench_script("perf_round_profile")
    row, prof = bench.run("synthetic", 20, "sparse", True, tmp_path / "run", population=60)
    assert row["nodes"] == 3
    assert 0 < row["local_update_s"] < row["node_s"] < row["round_s"]
    assert abs(row["non_training_s"] - (row["round_s"] - row["local_update_s"])) < 1e-9
    assert abs(row["server_s"] - (row["round_s"] - row["node_s"])) < 1e-9
    tables = bench.print_profile(prof, 20)
    assert "by cumulative" in tables and "by tottime" in tables and "local_update" in tables


def test_the_command_line_appends_one_json_line(bench_script, tmp_path, capsys):
    bench = bench_script("perf_round_profile")
    out = tmp_path / "side.jsonl"
    for _ in range(2):
        bench.main(["--dataset", "synthetic", "--population", "40", "--bucket", "20",
                    "--json", str(out), "--work-dir", str(tmp_path)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["aggregation"] == "sparse" for r in rows)
    assert "round_s" in capsys.readouterr().out


def _side_rows(pairs):
    """Alternated rows of trees "old" and "new" with the given round times."""
    rows = []
    for before, after in pairs:
        for tree, total in (("old", before), ("new", after)):
            rows.append({"tree": tree, "round_s": total, "local_update_s": 2.0,
                         "node_s": total - 1.0, "server_s": 1.0,
                         "non_training_s": total - 2.0, "load_avg_1m": 3.0,
                         "dataset": "synthetic", "aggregation": "sparse", "nodes": 3})
    return rows


def test_the_side_by_side_table_gives_medians_and_the_median_ratio_of_pairs(bench_script):
    bench = bench_script("perf_round_profile")
    table = bench.side_by_side(_side_rows(((10.0, 5.0), (12.0, 4.0), (11.0, 6.6))))
    round_row = next(line for line in table.splitlines() if line.startswith("| round"))
    # medians 11.0 and 5.0; pair ratios 0.5, 0.333, 0.6 -> median 0.5
    assert round_row == "| round (training + server) | 11.00 s | 5.00 s | 0.500x |"
    assert "3 + 3 runs" in table


def test_the_side_by_side_table_refuses_unpaired_rows(bench_script):
    bench = bench_script("perf_round_profile")
    rows = _side_rows(((10.0, 5.0), (12.0, 4.0)))[:-1]  # the last "new" run is missing
    with pytest.raises(SystemExit, match="paired rows, got 2 of 'old' and 1") as err:
        bench.side_by_side(rows)
    assert "\n" not in str(err.value)


def _relabel(rows, names):
    """``rows`` with trees "old" and "new" renamed by ``names``."""
    return [r | {"tree": names[r["tree"]]} for r in rows]


@pytest.mark.parametrize("names", [{"old": "before (abc)", "new": "after"},
                                   {"old": "base", "new": "after-fix"},
                                   {"old": "old", "new": "new"}])
def test_the_side_by_side_table_takes_before_from_the_labels_whatever_comes_first(
        bench_script, names):
    bench = bench_script("perf_round_profile")
    rows = _relabel(_side_rows(((10.0, 5.0), (12.0, 4.0), (11.0, 6.6))), names)
    swapped = [rows[i + 1 - i % 2 * 2] for i in range(len(rows))]  # "new" runs first
    header = bench.side_by_side(rows).splitlines()[0]
    assert f"before ('{names['old']}')" in header and f"after ('{names['new']}')" in header
    table = bench.side_by_side(swapped)
    round_row = next(line for line in table.splitlines() if line.startswith("| round"))
    if names["old"] == "old":  # no label says which: the first tree in the file is before
        assert round_row == "| round (training + server) | 5.00 s | 11.00 s | 2.000x |"
    else:
        assert round_row == "| round (training + server) | 11.00 s | 5.00 s | 0.500x |"


@pytest.mark.parametrize("names", [{"old": "before-1", "new": "before-2"},
                                   {"old": "after-1", "new": "after-2"},
                                   {"old": "before-after", "new": "x"}])
def test_the_side_by_side_table_refuses_labels_that_do_not_tell_before_from_after(
        bench_script, names):
    bench = bench_script("perf_round_profile")
    with pytest.raises(SystemExit, match="cannot tell before from after") as err:
        bench.side_by_side(_relabel(_side_rows(((10.0, 5.0),)), names))
    assert "\n" not in str(err.value)


def test_another_tree_is_imported_through_a_link_folder_removed_at_exit(bench_script,
                                                                        tmp_path, monkeypatch):
    bench = bench_script("perf_round_profile")
    at_exit = []
    monkeypatch.setattr(bench.atexit, "register", lambda f, *a, **k: at_exit.append((f, a, k)))
    monkeypatch.setattr(sys, "path", list(sys.path))
    tree = tmp_path / "checkout"
    tree.mkdir()
    (tree / "keep.py").write_text("")
    link_dir = bench._use_tree(str(tree))
    assert sys.path[0] == str(link_dir) and (link_dir / "florec" / "keep.py").exists()
    for f, args, kwargs in at_exit:
        f(*args, **kwargs)
    assert not link_dir.exists() and (tree / "keep.py").exists()
    assert bench._use_tree(None) is None


def test_the_label_names_the_rows_tree(bench_script, tmp_path, capsys):
    bench = bench_script("perf_round_profile")
    out = tmp_path / "side.jsonl"
    bench.main(["--dataset", "synthetic", "--population", "40", "--bucket", "20",
                "--label", "after", "--json", str(out), "--work-dir", str(tmp_path)])
    assert json.loads(out.read_text())["tree"] == "after"
