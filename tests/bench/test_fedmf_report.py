"""bench/fedmf_report.py: federated vs central rows with the share of the reference and bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from florec.recdata.errors import ConfigError


def run(label, seed, ndcg, setting="federated", down=0, up=0, **extra):
    return {"dataset": "d", "label": label, "seed": seed, "setting": setting, "best_round": 3,
            "rounds": 5, "bytes_down": down, "bytes_up": up,
            "metrics": {"ndcg@10": ndcg, "recall@20": 2 * ndcg}} | extra


def results(runs, reference="C"):
    return {"config": {"bench": {"datasets": ["d"], "reference": reference},
                       "method": [{"label": "C"}, {"label": "F"}]}, "runs": runs}


def test_rows_give_the_share_of_the_reference_mean_and_mean_megabytes(bench_script):
    runs = [run("C", 0, 0.06, "central"), run("C", 1, 0.04, "central"),
            run("F", 0, 0.045, down=2e6, up=1e6), run("F", 1, 0.045, down=4e6, up=3e6)]
    lines = bench_script("fedmf_report").report(results(runs)).splitlines()
    assert lines[2].startswith("| d | C | central | 2 | 0.0500 ± 0.0141 | 0.1000 ± 0.0283 | 100.0%"
                               " | — | 3, 3 | 5, 5 | ?, ? | ?, ? |")
    assert lines[3].startswith("| d | F | federated | 2 | 0.0450 ± 0.0000 | 0.0900 ± 0.0000 |"
                               " 90.0%")
    assert lines[3].endswith(" | 3, 3 | 5, 5 | ?, ? | ?, ? | 3 | 2 |")


def test_a_recall_at_20_table_shows_recall_at_20_once(bench_script):
    runs = [run("C", 0, 0.06, "central"), run("F", 0, 0.03)]
    lines = bench_script("fedmf_report").report(results(runs), metric="recall@20").splitlines()
    assert lines[0].count("recall@20") == 1
    assert lines[3].startswith("| d | F | federated | 1 | 0.0600 | 50.0% |")


def test_the_valid_column_shows_each_rows_mean_best_validation_value(bench_script):
    mod = bench_script("fedmf_report")
    runs = [run("C", 0, 0.06, "central", valid_metrics={"ndcg@10": 0.07}),
            run("F", 0, 0.03, valid_metrics={"ndcg@10": 0.04}),
            run("F", 1, 0.03, valid_metrics={"ndcg@10": 0.06})]
    lines = mod.report(results(runs), valid=True).splitlines()
    assert "| test recall@20 | best valid ndcg@10 | share of C |" in lines[0]
    assert lines[3].startswith("| d | F | federated | 2 | 0.0300 ± 0.0000 | 0.0600 ± 0.0000 |"
                               " 0.0500 ± 0.0141 | 50.0% |")
    assert "best valid" not in mod.report(results(runs))
    with pytest.raises(ConfigError, match="no validation ndcg@10"):
        mod.report(results([run("C", 0, 0.06, "central")]), valid=True)


def test_paired_share_is_the_per_seed_ratio_with_its_student_t_interval(bench_script):
    mod = bench_script("fedmf_report")
    refs = [run("C", s, 0.1, "central") for s in (0, 1, 2)]
    runs = [run("F", s, v) for s, v in zip((2, 0, 1), (0.098, 0.094, 0.096), strict=True)]
    # ratios 94, 96, 98 %: mean 96, sd 2, half-width t(0.975, 2) * 2 / sqrt(3) = 4.303 * 1.1547
    assert mod.paired_share(runs, refs) == "96.0 ± 2.0% [91.0, 101.0]"
    assert mod.paired_share(runs[:1], refs) == "98.0%"
    assert mod.paired_share([run("F", 7, 0.1)], refs) == "—"


def test_another_reference_and_a_method_subset_give_their_own_table(bench_script):
    mod = bench_script("fedmf_report")
    runs = [run("C", 0, 0.10, "central"), run("F", 0, 0.05), run("G", 0, 0.04)]
    chosen = mod.selected(results(runs), reference="F", methods=["F", "G"])
    lines = mod.report(chosen).splitlines()
    assert "share of F" in lines[0] and len(lines) == 4
    assert lines[2].startswith("| d | F | federated | 1 | 0.0500 | 0.1000 | 100.0% | — |")
    assert lines[3].startswith("| d | G | federated | 1 | 0.0400 | 0.0800 | 80.0% | 80.0% |")
    assert mod.selected(results(runs), None, None) == results(runs)


def test_paired_share_pairs_seeds_not_means(bench_script):
    # the reference's seeds differ a lot; each federated seed is 95% of its own seed's reference
    refs = [run("C", 0, 0.2, "central"), run("C", 1, 0.1, "central")]
    runs = [run("F", 0, 0.19), run("F", 1, 0.095)]
    assert bench_script("fedmf_report").paired_share(runs, refs) == "95.0 ± 0.0% [95.0, 95.0]"


def test_the_cap_column_shows_cap_or_central_max_epochs_and_what_ended_each_run(bench_script):
    runs = [run("C", 0, 0.1, "central", max_epochs=300), run("F", 0, 0.09, cap=120),
            run("F", 1, 0.09, cap=5)]  # 5 rounds run of a cap of 5: the cap ended it
    lines = bench_script("fedmf_report").report(results(runs)).splitlines()
    assert lines[2].endswith("| 3 | 5 | 300 | patience | 0 | 0 |")
    assert lines[3].endswith("| 3, 3 | 5, 5 | 120, 5 | patience, cap | 0 | 0 |")


def test_pooled_runs_let_a_later_part_replace_the_same_seed(bench_script):
    first = results([run("C", 0, 0.1, "central"), run("F", 0, 0.08, cap=80),
                     run("F", 1, 0.07, cap=80)])
    later = {"config": {"bench": {}, "method": [{"label": "F"}, {"label": "G"}]},
             "runs": [run("F", 1, 0.09, cap=120), run("G", 0, 0.05)]}
    pooled = bench_script("fedmf_report").pooled([first, later])
    got = {(r["label"], r["seed"]): r["metrics"]["ndcg@10"] for r in pooled["runs"]}
    assert got == {("C", 0): 0.1, ("F", 0): 0.08, ("F", 1): 0.09, ("G", 0): 0.05}
    assert [m["label"] for m in pooled["config"]["method"]] == ["C", "F", "G"]
    assert pooled["config"]["bench"]["reference"] == "C"


def test_pooling_one_row_with_two_settings_is_a_config_error(bench_script):
    from florec.recdata.errors import ConfigError

    first = results([run("C", 0, 0.1, "central"), run("F", 0, 0.08, cap=80) | {
        "cell_settings": {"lr": 2.0, "seed": 0}}])
    same = {"config": {"bench": {}, "method": [{"label": "F"}]},
            "runs": [run("F", 1, 0.09, cap=120) | {"cell_settings": {"lr": 2.0, "seed": 1}}]}
    assert len(bench_script("fedmf_report").pooled([first, same])["runs"]) == 3
    other = {"config": {"bench": {}, "method": [{"label": "F"}]},
             "runs": [run("F", 1, 0.09, cap=120) | {"cell_settings": {"lr": 1.0, "seed": 1}}]}
    with pytest.raises(ConfigError, match="different settings"):
        bench_script("fedmf_report").pooled([first, other])


def test_a_reference_without_runs_is_a_config_error(bench_script):
    with pytest.raises(ConfigError, match="reference 'X' has no runs on d"):
        bench_script("fedmf_report").report(results([run("F", 0, 0.1)], reference="X"))


def test_curves_list_each_cells_validation_values_and_its_best_round(bench_script, tmp_path):
    cell = tmp_path / "M" / "seed0"
    cell.mkdir(parents=True)
    rows = [{"round": 1, "valid": {"ndcg@10": 0.01}}, {"round": 2, "valid": {"ndcg@10": 0.03}},
            {"round": 3, "valid": {"ndcg@10": 0.02}}]
    (cell / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    lines = bench_script("fedmf_report").curves(tmp_path).splitlines()
    assert lines[2] == "| M seed0 | 3 | 0.0300 (2) | 0.0100 0.0300 0.0200 |"


BENCH = """
[bench]
datasets = ["d"]
seeds = [0, 1]
reference = "C"

[[method]]
label = "C"
setting = "central"
model = "mf"

[[method]]
label = "F"
setting = "federated"
model = "mf"
"""


def test_from_cells_reports_the_finished_cells_of_a_stopped_bench(bench_script, tmp_path):
    from florec.sim.bench import cells_of, load_bench

    config = tmp_path / "b.toml"
    config.write_text(BENCH)
    conf = load_bench(config)
    done = {("C", 0): 0.06, ("C", 1): 0.04, ("F", 0): 0.045}  # F seed 1 never finished
    for cell in cells_of(conf, tmp_path / "out"):
        cell.mark_started(conf)
        if (cell.label, cell.seed) in done:
            r = run(cell.label, cell.seed, done[(cell.label, cell.seed)], cell.method["setting"])
            (cell.out_dir / "results.json").write_text(
                json.dumps({"status": "finished", "runs": [r]}))
    mod = bench_script("fedmf_report")
    lines = mod.report(mod.from_cells(config, tmp_path / "out")).splitlines()
    assert lines[2].startswith("| d | C | central | 2 | 0.0500 ± 0.0141 |")
    assert lines[2].endswith("| — | 3, 3 | 5, 5 | 20, 20 | patience, patience | 0 | 0 |")
    # the federated cap: the run config's default num-rounds
    assert lines[3].startswith("| d | F | federated | 1 | 0.0450 | 0.0900 | 90.0% | 75.0% | 3 | 5 |"
                               " 20 |")


def test_from_cells_without_a_finished_cell_is_a_config_error(bench_script, tmp_path):
    config = tmp_path / "b.toml"
    config.write_text(BENCH)
    with pytest.raises(ConfigError, match="no cell of .* has finished"):
        bench_script("fedmf_report").from_cells(config, tmp_path / "out")


ROOT = Path(__file__).resolve().parents[2]
#: Committed summaries and the (bench folder, bench file) pairs they are generated from.
SUMMARIES = {
    "docs/results/fedmf_converge/summary.md": [
        ("docs/results/fedmf_converge", "bench/fedmf_converge.toml")],
    "docs/results/fedmf_converge/summary_10_seeds.md": [
        ("docs/results/fedmf_converge", "bench/fedmf_converge.toml"),
        ("docs/results/fedmf_converge/seeds_3_9", "bench/fedmf_fedsgd_ml100k_seeds.toml")],
    "docs/results/fedmf_converge/summary_30_seeds.md": [
        ("docs/results/fedmf_converge", "bench/fedmf_converge.toml"),
        ("docs/results/fedmf_converge/seeds_3_9", "bench/fedmf_fedsgd_ml100k_seeds.toml"),
        ("docs/results/fedmf_converge/seeds_10_29", "bench/fedmf_fedsgd_ml100k_seeds_10_29.toml")],
    "docs/results/fedmf_converge_ml1m/summary.md": [
        ("docs/results/fedmf_converge_ml1m", "bench/fedmf_converge_ml1m.toml"),
        ("docs/results/fedmf_converge_ml1m/cap120", "bench/fedmf_converge_ml1m_cap120.toml"),
        ("docs/results/fedmf_converge_ml1m/fedsgd", "bench/fedmf_fedsgd_ml1m.toml")],
    "docs/results/converge/lightgcn_p30/summary.md": [
        ("docs/results/converge/lightgcn_p30", "bench/converge_ml100k_lightgcn_p30.toml")],
    "docs/results/fair_federated_ml1m/summary.md": [
        ("docs/results/fair_ml1m", "bench/fair_ml1m.toml"),
        ("docs/results/fair_federated_ml1m", "bench/fair_federated_ml1m.toml"),
        ("docs/results/fair_federated_ml1m/fs_cap40", "bench/fair_federated_ml1m_fs_cap40.toml"),
        ("docs/results/fair_federated_ml1m/bpr_cap60", "bench/fair_federated_ml1m_bpr_cap60.toml")],
    **{f"docs/results/fedseq_converge/summary_{m}.md": [
        ("docs/results/fedseq_converge", "bench/fedseq_converge.toml")] for m in ("sasrec",
                                                                                  "gru4rec")},
    "docs/results/fedseq_converge/item_weighted/summary_sasrec.md": [
        ("docs/results/fedseq_converge", "bench/fedseq_converge.toml"),
        ("docs/results/fedseq_converge/item_weighted", "bench/fedseq_converge_items.toml"),
        ("docs/results/fedseq_converge/item_weighted_lr2e-3",
         "bench/fedseq_converge_items_lr2e-3.toml")],
    "docs/results/fedseq_converge/item_weighted/summary_gru4rec.md": [
        ("docs/results/fedseq_converge", "bench/fedseq_converge.toml"),
        ("docs/results/fedseq_converge/item_weighted", "bench/fedseq_converge_items.toml")],
    "docs/results/fedcia_converge/summary.md": [
        ("docs/results/fedcia_converge", "bench/fedcia_converge.toml")],
    "docs/results/fedseq_converge_amazon/summary.md": [
        ("docs/results/fedseq_converge_amazon", "bench/fedseq_converge_amazon.toml"),
        ("docs/results/fedseq_converge_amazon/server_opt",
         "bench/fedseq_converge_amazon_server.toml"),
        ("docs/results/fedseq_converge_amazon/item_weighted",
         "bench/fedseq_converge_amazon_items.toml")],
}
#: The selection metric of a summary, where it is not ndcg@10.
METRICS = {"docs/results/fair_federated_ml1m/summary.md": "recall@20"}
#: Summaries written with ``--valid``.
VALID = {"docs/results/fedcia_converge/summary.md",
         "docs/results/fedseq_converge_amazon/summary.md",
         *(f"docs/results/fedseq_converge/item_weighted/summary_{m}.md"
           for m in ("sasrec", "gru4rec"))}
#: ``--reference`` and ``--method`` labels of a summary, where it sets them.
SELECT = {**{f"docs/results/fedmf_converge/summary_{n}_seeds.md": (
              None, ["MF-BPR", "FedSGD cohort 10 + server Adam 0.005, user SGD lr 4"])
             for n in (10, 30)},
          "docs/results/fedseq_converge/summary_sasrec.md": (None, ["SASRec", "FedAvg-SASRec"]),
          "docs/results/fedseq_converge/summary_gru4rec.md": ("GRU4Rec",
                                                               ["GRU4Rec", "FedAvg-GRU4Rec"]),
          "docs/results/fedseq_converge/item_weighted/summary_sasrec.md": (None, [
              "SASRec", "FedAvg-SASRec", "FedAvg-SASRec item-weighted",
              "FedAvg-SASRec item-weighted lr 2e-3"]),
          "docs/results/fedseq_converge/item_weighted/summary_gru4rec.md": ("GRU4Rec", [
              "GRU4Rec", "FedAvg-GRU4Rec", "FedAvg-GRU4Rec item-weighted"])}


@pytest.mark.parametrize("summary", sorted(SUMMARIES))
def test_committed_summaries_equal_the_generated_ones(bench_script, summary):
    mod = bench_script("fedmf_report")
    parts = [mod.from_cells(ROOT / config, ROOT / folder) for folder, config in SUMMARIES[summary]]
    metric = METRICS.get(summary, "ndcg@10")
    chosen = mod.selected(mod.pooled(parts), *SELECT.get(summary, (None, None)))
    assert (ROOT / summary).read_text() == mod.report(chosen, metric=metric,
                                                      valid=summary in VALID)
