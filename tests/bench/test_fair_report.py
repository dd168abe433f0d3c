"""bench/fair_report.py: the Fair Sampling report is rebuilt from the committed cells."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from florec.recdata.errors import ConfigError

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def test_committed_fair_report_is_what_the_generator_writes(bench_script) -> None:
    report = bench_script("fair_report")
    text = report.build(RESULTS / "fair_ml1m", RESULTS / "fair_synthetic")
    assert (RESULTS / "fair_ml1m" / "fair_report.md").read_text() == text


def test_report_numbers_come_from_the_cells(bench_script, tmp_path: Path) -> None:
    report = bench_script("fair_report")
    shutil.copytree(RESULTS / "fair_ml1m" / "cells", tmp_path / "cells")
    path = tmp_path / "cells" / "ml-1m" / "FS-Pair" / "seed0" / "results.json"
    saved = json.loads(path.read_text())
    saved["runs"][0]["metrics"]["recall@20"] = 0.9876  # now above BPR's
    path.write_text(json.dumps(saved))
    text = report.build(tmp_path, None)
    assert "| FS-Pair | central | 0.9876 |" in text
    assert "(FS-Pair >= BPR) holds" in text and "Synthetic check" not in text


def test_a_folder_without_cells_is_a_config_error_naming_the_command(
        bench_script, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="florec bench --config"):
        bench_script("fair_report").build(tmp_path, None)
