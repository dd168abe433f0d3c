"""The bench suite: a smoke matrix, resumption, failed cells, the report and the plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from florec.recdata.errors import ConfigError
from florec.sim.bench import BenchOutcome, Cell, label_folder, load_bench, run_bench, run_cell
from florec.sim.report import write_report

SMOKE = Path(__file__).resolve().parents[2] / "bench" / "smoke.toml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BenchOutcome]:
    """bench/smoke.toml run once into a temporary folder."""
    out = tmp_path_factory.mktemp("smoke")
    return out, run_bench(SMOKE, out, progress=False)


def test_smoke_bench_writes_results_report_and_plots(smoke: tuple[Path, BenchOutcome]) -> None:
    out, outcome = smoke
    conf = load_bench(SMOKE)
    n_cells = len(conf["method"]) * len(conf["bench"]["seeds"])
    assert not outcome.failed and len(outcome.ran) == n_cells
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"config", "env", "runs"} and len(res["runs"]) == n_cells
    assert {r["label"] for r in res["runs"]} == {m["label"] for m in conf["method"]}
    assert all(r["metrics"]["ndcg@10"] >= 0 for r in res["runs"])
    report = (out / "report.md").read_text()
    assert "## synthetic" in report and "Protocol card" in report and "±" in report
    for m in conf["method"]:
        assert (out / "cells" / "synthetic" / label_folder(m["label"]) / "seed1" /
                "results.json").exists()


def test_second_run_skips_every_finished_cell(smoke: tuple[Path, BenchOutcome]) -> None:
    out, first = smoke
    calls: list[Cell] = []

    def counting(conf: dict[str, Any], cell: Cell) -> dict[str, Any]:
        calls.append(cell)
        return run_cell(conf, cell)

    again = run_bench(SMOKE, out, progress=False, runner=counting)
    assert calls == [] and again.ran == []
    assert sorted(again.skipped) == sorted(first.ran)
    assert len(again.results["runs"]) == len(first.results["runs"])


def test_failing_cell_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(SMOKE.read_text().split("[[method]]")[0] + """
[[method]]
label = "Pop"
setting = "central"
model = "pop"

[[method]]
label = "Broken"
setting = "central"
model = "pop"
data-dir = "/no/such/folder"
""")
    messages: list[str] = []
    out = run_bench(toml, tmp_path / "out", progress=False, echo=messages.append)
    assert len(out.failed) == 2 and all("Broken" in k for k in out.failed)
    assert len(out.ran) == 2 and all("Pop" in k for k in out.ran)
    assert len(messages) == 2 and "/no/such/folder" in messages[0]
    assert (tmp_path / "out" / "cells" / "synthetic" / "Broken" / "seed0" / "error.txt").exists()
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["label"] for r in res["runs"]] == ["Pop", "Pop"]
    # the failed cells run again on resume, the finished ones do not
    again = run_bench(toml, tmp_path / "out", progress=False, echo=messages.append)
    assert len(again.skipped) == 2 and len(again.failed) == 2


def _run(label: str, seed: int, ndcg: float, recall: float, setting: str = "central") -> dict:
    return {"label": label, "method": label.lower(), "setting": setting, "dataset": "toy",
            "split": "loo", "seed": seed, "best_round": seed + 1, "valid_metrics": {},
            "metrics": {"ndcg@10": ndcg, "recall@10": recall, "precision@10": recall / 10,
                        "f1@10": recall / 5}}


def test_report_from_hand_made_results_has_mean_sd_bold_best_and_p_value(tmp_path: Path) -> None:
    results = {
        "config": {"bench": {"name": "toy", "datasets": ["toy"], "seeds": [0, 1, 2],
                             "reference": "A"},
                   "defaults": {"split": "loo"},
                   "method": [{"label": "A", "setting": "central"},
                              {"label": "B", "setting": "federated"}]},
        "env": {"python": "3.11", "packages": {"numpy": "2.0"}, "commit": "abc"},
        "runs": [_run("A", 0, 0.10, 0.2), _run("A", 1, 0.12, 0.2), _run("A", 2, 0.14, 0.2),
                 _run("B", 0, 0.20, 0.1, "federated"), _run("B", 1, 0.21, 0.1, "federated"),
                 _run("B", 2, 0.25, 0.1, "federated")],
    }
    text = write_report(results, tmp_path).read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| A ") or line.startswith("| B ")}
    assert "0.1200 ± 0.0200" in rows["A"]  # mean and sample sd (ddof=1) of 0.10, 0.12, 0.14
    assert "**0.2200 ± 0.0265**" in rows["B"]  # best ndcg@10 in bold
    assert "**0.2000 ± 0.0000**" in rows["A"]  # best recall@10 in bold
    assert "reference" in rows["A"]
    # paired t-test of B vs A on ndcg@10: differences 0.10, 0.09, 0.11 -> p ≈ 0.00332
    assert "0.00332 (n=3)" in rows["B"]
    assert "| 3 | 2.0 |" in rows["B"]  # n and mean best round
    assert "full ranking" in text and "numpy 2.0" in text and "ndcg@k" in text


def test_report_bolds_the_lowest_arp(tmp_path: Path) -> None:
    runs = [_run("A", s, 0.1, 0.2) for s in (0, 1)] + [_run("B", s, 0.1, 0.2) for s in (0, 1)]
    for r, arp in zip(runs, (900.0, 950.0, 400.0, 420.0), strict=True):
        r["metrics"]["arp@20"] = arp
    results = {"config": {"bench": {"datasets": ["toy"], "seeds": [0, 1], "reference": "A"},
                          "defaults": {}, "method": [{"label": "A", "setting": "central"},
                                                     {"label": "B", "setting": "central"}]},
               "env": {}, "runs": runs}
    text = write_report(results, tmp_path).read_text()
    row_b = next(line for line in text.splitlines() if line.startswith("| B "))
    assert "arp@20" in text and "**410.0000 ± 14.1421**" in row_b
    assert "arp@10" not in text  # listed only where some run has it


def test_plots_are_non_empty_pngs_and_redraw_from_the_folder(
        smoke: tuple[Path, BenchOutcome]) -> None:
    from typer.testing import CliRunner

    from florec.sim.cli import app

    out, _ = smoke
    pngs = sorted((out / "plots").glob("*.png"))
    names = {"valid_synthetic.png", "bytes_synthetic.png", "clients_synthetic.png"}
    assert {p.name for p in pngs} == names
    for p in pngs:
        p.unlink()
    result = CliRunner().invoke(app, ["plot", str(out)])
    assert result.exit_code == 0, result.output
    for name in names:
        data = (out / "plots" / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_accuracy_by_clients_has_one_point_per_client_count(
        smoke: tuple[Path, BenchOutcome]) -> None:
    from florec.sim.plots import accuracy_by_clients

    out, outcome = smoke
    points = accuracy_by_clients(out, outcome.results["runs"])
    assert sorted(points["fedcia-mf"]) == [4, 8]  # 2 nodes x 2 clients, 4 nodes x 2 clients
    assert list(points["fedavg-mf"]) == [4]
    assert all(0 <= v <= 1 for by_n in points.values() for v in by_n.values())


def test_bench_command_runs_a_matrix_and_prints_a_summary(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from florec.sim.cli import app

    toml = tmp_path / "pop.toml"
    toml.write_text(SMOKE.read_text().split("[[method]]")[0]
                    + '[[method]]\nlabel = "Pop"\nsetting = "central"\nmodel = "pop"\n')
    result = CliRunner().invoke(app, ["bench", "--config", str(toml), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "2 cells ran, 0 skipped" in result.output
    assert (tmp_path / "o" / "report.md").exists()


def test_unfinished_cell_reruns_from_scratch_without_stale_rounds(tmp_path: Path) -> None:
    toml = tmp_path / "fed.toml"
    toml.write_text(SMOKE.read_text().split("[[method]]")[0].replace("[0, 1]", "[0]")
                    + '[[method]]\nlabel = "F"\nsetting = "federated"\nalgorithm = "fedavg"\n'
                    'num-nodes = 2\nnum-rounds = 2\n')
    cell = tmp_path / "o" / "cells" / "synthetic" / "F" / "seed0"
    cell.mkdir(parents=True)
    (cell / "rounds.jsonl").write_text('{"round": 1}\n{"round": 2}\n{"round": 3}\n')
    (cell / "results.json").write_text('{"status": "running", "runs": []}')
    out = run_bench(toml, tmp_path / "o", progress=False)
    assert out.ran == ["synthetic/F/seed0"]
    rounds = [json.loads(x)["round"] for x in (cell / "rounds.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]


def test_an_edited_method_table_reruns_only_that_methods_cells(tmp_path: Path) -> None:
    head = SMOKE.read_text().split("[[method]]")[0]
    methods = """
[[method]]
label = "Pop"
setting = "central"
model = "pop"

[[method]]
label = "MF"
setting = "central"
model = "mf"
epochs = 1
"""
    toml = tmp_path / "b.toml"
    toml.write_text(head + methods)
    first = run_bench(toml, tmp_path / "out", progress=False)
    assert len(first.ran) == 4 and not first.failed
    toml.write_text(head + methods.replace("epochs = 1", "epochs = 2"))
    messages: list[str] = []
    again = run_bench(toml, tmp_path / "out", progress=False, echo=messages.append)
    assert sorted(again.ran) == sorted(k for k in first.ran if "/MF/" in k)
    assert all("Pop" in k for k in again.skipped) and len(again.skipped) == 2
    assert len(messages) == 2 and "settings changed" in messages[0]
    cell = json.loads((tmp_path / "out/cells/synthetic/MF/seed0/cell.json").read_text())
    assert cell["epochs"] == 2


def test_a_methods_own_seeds_replace_the_bench_seeds_and_extending_them_keeps_its_cells(
        tmp_path: Path) -> None:
    head = SMOKE.read_text().split("[[method]]")[0].replace("seeds = [0, 1]", "seeds = [0]")
    assert "seeds = [0]" in head
    method = '[[method]]\nlabel = "Pop"\nsetting = "central"\nmodel = "pop"\nseeds = [3]\n'
    toml = tmp_path / "b.toml"
    toml.write_text(head + method)
    first = run_bench(toml, tmp_path / "out", progress=False)
    assert first.ran == ["synthetic/Pop/seed3"] and not first.failed
    toml.write_text(head + method.replace("[3]", "[3, 4]"))
    again = run_bench(toml, tmp_path / "out", progress=False)
    assert again.ran == ["synthetic/Pop/seed4"] and again.skipped == ["synthetic/Pop/seed3"]
    toml.write_text(head + method.replace("[3]", "[]"))
    with pytest.raises(ConfigError, match="seeds=\\[\\]; give a non-empty list"):
        load_bench(toml)


def test_a_default_lr_that_misses_the_central_methods_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    head = SMOKE.read_text().split("[[method]]")[0]
    method = '[[method]]\nlabel = "MF"\nsetting = "central"\nmodel = "mf"\nepochs = 1\n'
    toml = tmp_path / "b.toml"
    toml.write_text(head.replace("[defaults]", "[defaults]\nlr = 0.001") + method)
    load_bench(toml)
    assert "lr = 0.001 reaches the federated methods only; the central methods without " \
           "their own lr (MF) train at central-lr = 0.005" in caplog.text
    caplog.clear()
    toml.write_text(head.replace("[defaults]", "[defaults]\nlr = 0.001\ncentral-lr = 0.001")
                    + method)
    conf = load_bench(toml)
    assert caplog.text == ""
    from florec.sim.bench import cell_config, cells_of
    assert cell_config(conf, cells_of(conf, tmp_path)[0])["lr"] == 0.001


#: configs of ``florec bench`` (``[[method]]`` tables); the others feed one bench script each
#: (bench/attacks.py, bench/llkd.py, bench/llmd4rec.py), which validates its own
BENCH_CONFIGS = [p for p in sorted(SMOKE.parent.glob("*.toml")) if "[[method]]" in p.read_text()]


def test_the_bench_folder_has_florec_bench_configs() -> None:
    assert {"smoke.toml", "ml100k.toml", "ml1m.toml"} <= {p.name for p in BENCH_CONFIGS}


@pytest.mark.parametrize("toml", BENCH_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_bench_config_has_valid_cells(toml: Path) -> None:
    from florec.recdata.runconfig import parse_run_config
    from florec.sim.bench import cell_config, cells_of
    from florec.strategies.registry import check_algorithm

    conf = load_bench(toml)
    for cell in cells_of(conf, Path("unused")):
        cfg = parse_run_config(cell_config(conf, cell))
        if cell.method["setting"] == "federated":
            check_algorithm(cfg)


def test_a_federated_cell_with_users_per_node_gets_one_node_per_bucket(tmp_path: Path) -> None:
    toml = tmp_path / "upn.toml"
    toml.write_text(SMOKE.read_text().split("[[method]]")[0] + """
[[method]]
label = "FedAvg buckets of 15"
setting = "federated"
algorithm = "fedavg"
model = "mf"
users-per-node = 15
num-rounds = 1
""")
    out = run_bench(toml, tmp_path / "out", progress=False)
    assert not out.failed and len(out.ran) == 2
    assert all(r["num_nodes"] == 3 for r in out.results["runs"])  # 40 users / 15 per node


def test_cell_folders_have_no_spaces_and_distinct_labels_keep_distinct_folders(
        tmp_path: Path) -> None:
    from florec.sim.bench import cells_of, label_folder

    assert label_folder("FedAvg BPR sparse") == "FedAvg-BPR-sparse"
    assert label_folder("SASRec+Oracle4Rec (no filter)") == "SASRec+Oracle4Rec-no-filter"
    assert label_folder("FedCIA-MF factored r=2d") == "FedCIA-MF-factored-r=2d"
    for toml in BENCH_CONFIGS:
        for cell in cells_of(load_bench(toml), tmp_path):
            assert " " not in str(cell.out_dir.relative_to(tmp_path)), cell.out_dir
    clash = tmp_path / "clash.toml"
    clash.write_text(SMOKE.read_text().split("[[method]]")[0] + """
[[method]]
label = "MF a"
setting = "central"

[[method]]
label = "MF-a"
setting = "central"
""")
    with pytest.raises(ConfigError, match="share a results folder"):
        load_bench(clash)


def _bench_text(method: str) -> str:
    return SMOKE.read_text().split("[[method]]")[0] + method


@pytest.mark.parametrize(("method", "named"), [
    ('[[method]]\nlabel = "Typo"\nsetting = "central"\nmodl = "mf"\n', "unknown config key 'modl'"),
    ('[[method]]\nlabel = "CPR"\nsetting = "federated"\nmf-loss = "cpr"\n', "no federated form"),
    ('[[method]]\nlabel = "Zero"\nsetting = "central"\nepochs = 0\n', "epochs=0"),
])
def test_bench_method_keys_are_checked_before_any_cell_runs(tmp_path: Path, method: str,
                                                            named: str) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(_bench_text(method))
    with pytest.raises(ConfigError) as err:
        run_bench(toml, tmp_path / "out", progress=False)
    line = str(err.value)
    assert named in line and str(toml) in line and "\n" not in line
    assert not (tmp_path / "out" / "cells").exists()


def test_bench_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    toml = tmp_path / "broken.toml"
    toml.write_text('[bench]\nname = "x"\ndatasets = ["synthetic"]\nseeds = 0 1\n')
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML: .*line 4"):
        load_bench(toml)
    with pytest.raises(ConfigError, match="does not exist"):
        load_bench(tmp_path / "missing.toml")


def test_florec_bench_exits_non_zero_when_a_cell_failed(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from florec.sim.cli import app

    toml = tmp_path / "bad.toml"
    toml.write_text(_bench_text('[[method]]\nlabel = "Broken"\nsetting = "central"\n'
                                'model = "pop"\ndata-dir = "/no/such/folder"\n'))
    result = CliRunner().invoke(app, ["bench", "--config", str(toml), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "bench cell(s) failed" in str(result.exception)
    assert "/no/such/folder" in str(result.exception)


def test_report_only_runs_no_cell_and_lists_the_unfinished(
        smoke: tuple[Path, BenchOutcome], tmp_path: Path) -> None:
    out = tmp_path / "copy"  # the shared smoke folder stays as it is
    shutil.copytree(smoke[0], out)
    toml = tmp_path / "more.toml"
    toml.write_text(SMOKE.read_text() + '\n[[method]]\nlabel = "Pop again"\n'
                    'setting = "central"\nmodel = "pop"\n')
    calls: list[Cell] = []
    outcome = run_bench(toml, out, progress=False, report_only=True,
                        runner=lambda conf, cell: calls.append(cell) or {})
    seeds = load_bench(SMOKE)["bench"]["seeds"]
    assert calls == [] and outcome.ran == []
    assert outcome.not_run == [f"synthetic/Pop again/seed{s}" for s in seeds]
    res = json.loads((out / "results.json").read_text())
    assert res["not_run"] == outcome.not_run
    assert {r["label"] for r in res["runs"]} == {m["label"] for m in load_bench(SMOKE)["method"]}
    assert "**Not run (" in (out / "report.md").read_text()
