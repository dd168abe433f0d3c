"""bench/attacks.py: the grid expands to cells and the report is drawn from cell files alone."""

import json
import tomllib
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
CONFIG = BENCH / "attacks.toml"


def test_the_committed_grid_expands_to_unique_cells_with_valid_run_configs(bench_script):
    from florec.recdata.runconfig import parse_run_config

    attacks = bench_script("attacks")
    spec = tomllib.loads(CONFIG.read_text())
    cells = attacks.cells(spec)
    names = [c["cell"] for c in cells]
    assert len(names) == len(set(names))
    assert {"fedrecattack-f0.01-median-s0", "fedcia-pipattack-f0.1-median-s0"} <= set(names)
    for cell in cells:
        parse_run_config(dict(spec["base"]) | cell["grid_config"]
                         | {"attack": cell["attack"], "attack-fraction": cell["fraction"],
                            "defense": cell["defense"]})


def test_the_ml1m_configs_expand_to_valid_ratio_split_cells(bench_script):
    from florec.recdata.runconfig import parse_run_config

    attacks = bench_script("attacks")
    for name in ("attacks_ml1m.toml",):
        spec = tomllib.loads((BENCH / name).read_text())
        cells = attacks.cells(spec)
        assert len({c["cell"] for c in cells}) == len(cells) > 0
        for cell in cells:
            cfg = parse_run_config(dict(spec["base"]) | cell["grid_config"]
                                   | {"dataset": spec["bench"]["dataset"],
                                      "attack": cell["attack"],
                                      "attack-fraction": cell["fraction"],
                                      "defense": cell["defense"]})
            assert cfg.split == "ratio"  # the ML-1M copy has no timestamps for leave-one-out


def test_the_pivot_has_one_column_per_defense_and_pools_seeds(bench_script):
    attacks = bench_script("attacks")

    def run(er: float, ndcg: float) -> dict:
        return {"metrics": {"er@10": er, "ndcg@10": ndcg}}

    by = {("FedAvg-MF", "fedrecattack", 0.01, "none"): [run(0.6, 0.01), run(0.8, 0.03)],
          ("FedAvg-MF", "fedrecattack", 0.01, "median"): [run(0.0, 0.02)],
          ("FedAvg-MF", "none", 0.0, "none"): [run(0.0, 0.04)]}
    lines = attacks.pivot(by)
    header = next(line for line in lines if line.startswith("| attack"))
    assert header == "| attack | malicious | none | median |"
    rows = [line for line in lines if line.startswith("| ")][1:]
    assert rows[0] == "| none | 0.0% | 0.000 / 0.0400 (1) | - |"  # no-attack row first
    assert rows[1].startswith("| fedrecattack | 1.0% | 0.700 ± 0.141 / 0.0200 ± 0.0141 (2) |")
    assert rows[1].endswith("| 0.000 / 0.0200 (1) |")


def test_the_report_pools_seeds_per_cell_and_draws_the_plot(tmp_path, bench_script):
    attacks = bench_script("attacks")
    (tmp_path / "cells").mkdir()
    for seed, er in ((0, 0.2), (1, 0.4)):
        for defense in ("none", "median"):
            cell = {"attack": "fedrecattack", "fraction": 0.01, "defense": defense, "seed": seed,
                    "config": {"algorithm": "fedavg"}, "malicious": [1, 2], "bytes_up": 2**21,
                    "metrics": {"er@10": er, "er@20": er, "target-rank@all": 10.0,
                                "ndcg@10": 0.03},
                    "curve": [{"round": 2, "er@10": er}, {"round": 4, "er@10": er}]}
            (tmp_path / "cells" / f"{defense}-{seed}.json").write_text(json.dumps(cell))
    text = attacks.report({"bench": {"dataset": "ml-100k"}}, tmp_path)
    row = next(line for line in text.splitlines() if "| none |" in line)
    # mean over seeds; 2 MiB over 4 rounds (validated every 2nd round)
    assert "| 0.300 |" in row and "| 0.50 |" in row
    assert [c.strip() for c in row.split("|")].count("0.300") == 3  # ER@10, ER@20, last ER@10
    assert (tmp_path / "attacks.png").stat().st_size > 0


def test_mb_per_round_divides_by_the_rounds_run_not_the_last_validated_one(bench_script):
    attacks = bench_script("attacks")
    curve = [{"round": 2, "er@10": 0.0}, {"round": 4, "er@10": 0.0}]
    # 5 rounds with eval-every 2: round 5 uploaded but was not validated
    old = {"config": {"num-rounds": 5, "eval-every": 2}, "curve": curve}
    assert attacks._rounds(old) == 5
    assert attacks._rounds(old | {"rounds_run": 3}) == 3  # recorded by newer cells
    # an early stop (patience) ends on a validated round; no num-rounds: the curve's last
    assert attacks._rounds({"config": {"num-rounds": 9, "patience": 1}, "curve": curve}) == 4
    assert attacks._rounds({"config": {}, "curve": curve}) == 4


def test_the_last_round_exposure_skips_rounds_no_node_could_evaluate(bench_script):
    attacks = bench_script("attacks")
    diverged = {"curve": [{"round": 5, "er@10": 0.25}, {"round": 10, "er@10": 0.375},
                          {"round": 15, "er@10": None}, {"round": 20, "er@10": None}]}
    assert attacks._last_er(diverged) == 0.375
    assert attacks._last_er({"curve": [{"round": 5, "er@10": 0.0}]}) == 0.0


def test_the_grid_figure_draws_attacks_run_at_several_shares_only(tmp_path, bench_script):
    plot = bench_script("attacks_plot")

    def runs(er: float) -> list[dict]:
        return [{"metrics": {"er@10": er, "ndcg@10": 0.03}, "curve": []}]

    one_share = {("FedAvg-MF", "none", 0.0, "none"): runs(0.0),
                 ("FedAvg-MF", "fedrecattack", 0.01, "none"): runs(0.5)}
    assert not plot.plot_attack_grid(one_share, tmp_path / "one.png")
    assert not (tmp_path / "one.png").exists()
    two_shares = one_share | {("FedAvg-MF", "fedrecattack", 0.05, "median"): runs(0.9),
                              ("FedAvg-MF", "fedrecattack", 0.01, "median"): runs(0.0),
                              ("FedCIA-MF", "pipattack", 0.05, "none"): runs(0.3)}
    assert plot.plot_attack_grid(two_shares, tmp_path / "two.png")
    assert (tmp_path / "two.png").stat().st_size > 0
    assert plot.ordered_defenses({"median", "zz", "none", "norm-bound"}) == [
        "none", "norm-bound", "median", "zz"]


def test_cells_are_selected_by_seed_and_name_pattern(bench_script):
    attacks = bench_script("attacks")
    spec = tomllib.loads((BENCH / "attacks_ml1m.toml").read_text())
    grid = attacks.cells(spec, {"fedcia200"})
    names = [c["cell"] for c in attacks.selected(grid, "2", "*-median-s2,*-none-s*")]
    assert names == ["fedcia200-pipattack-f0.005-none-s2", "fedcia200-pipattack-f0.005-median-s2"]
    assert attacks.selected(grid) == grid
