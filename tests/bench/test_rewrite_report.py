"""bench/rewrite_report.py: a bench report rebuilt from a results.json alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from florec.recdata.errors import ConfigError

ML100K = Path(__file__).resolve().parents[2] / "docs" / "results" / "ml100k"


def test_report_is_rebuilt_from_the_results_json_alone(bench_script, tmp_path: Path) -> None:
    shutil.copy(ML100K / "results.json", tmp_path / "results.json")
    (path,) = bench_script("rewrite_report").rewrite(tmp_path)
    table = [x for x in path.read_text().splitlines() if x.startswith("| MF-BPR |")]
    assert table and "0.0637 ± 0.0028" in table[0]  # MF-BPR ndcg@10 over seeds 0-2


def test_a_folder_without_results_is_a_config_error(bench_script, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no results.json"):
        bench_script("rewrite_report").rewrite(tmp_path)
