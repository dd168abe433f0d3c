"""bench/fedcia.py: a finished run folder with the same config is read, not run again."""

from __future__ import annotations

import json
from pathlib import Path


def write_run(folder: Path, config: dict, status: str) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": config, "env": {}}))
    (folder / "results.json").write_text(json.dumps({"runs": [{"best_round": 3}],
                                                     "status": status}))


def test_a_finished_run_with_the_same_config_is_reused(bench_script, tmp_path: Path) -> None:
    finished_run = bench_script("fedcia").finished_run
    config = {"lr": 0.1, "num-rounds": 20, "out-dir": "a"}
    write_run(tmp_path / "same", config | {"out-dir": "elsewhere"}, "finished")
    write_run(tmp_path / "other", config | {"lr": 0.05}, "finished")
    write_run(tmp_path / "killed", config, "running")
    assert finished_run(tmp_path / "same", config) == {"best_round": 3}
    assert finished_run(tmp_path / "other", config) is None
    assert finished_run(tmp_path / "killed", config) is None
    assert finished_run(tmp_path / "missing", config) is None
