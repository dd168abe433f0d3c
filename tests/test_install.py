"""The non-editable install: build the wheel, install it into a fresh venv, run from outside.

The editable install of the development venv imports the repository itself, so it cannot show
that the wheel holds every module. Here the wheel is built from a copy of the working tree,
installed with ``--no-deps`` into a new venv whose dependencies come from the project venv (a
``.pth`` line naming its site-packages), and a tiny central run goes through ``python -m``
from a folder outside the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Not copied into the build tree (only at the repository root, except caches everywhere).
SKIP_AT_ROOT = {".git", ".venv", ".flwr", "results", "splits", ".cache", "build", "dist"}
SKIP_ANYWHERE = {"__pycache__", ".pytest_cache", ".ruff_cache"}
TOP_LEVEL = ("models", "client", "server", "strategies", "sim", "recdata")

pytestmark = pytest.mark.slow


def _ignore(folder: str, names: list[str]) -> set[str]:
    at_root = Path(folder).resolve() == ROOT
    return {n for n in names if n in SKIP_ANYWHERE or n.endswith(".egg-info")
            or (at_root and n in SKIP_AT_ROOT)}


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}" \
                                 f"\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built offline from a copy of the working tree (the repo gets no build/)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_ignore)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    (built,) = (tmp / "dist").glob("florec-*.whl")
    return built


def test_the_wheel_holds_the_flower_app_files_and_no_top_level_packages(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {"florec/pyproject.toml", "florec/flower_entry.py", "florec/__init__.py",
            "florec/models/registry.py", "florec/sim/cli.py"} <= set(names)
    tops = {n.split("/")[0] for n in names}
    assert not tops & set(TOP_LEVEL), sorted(tops)
    assert tops <= {"florec"} | {t for t in tops if t.endswith(".dist-info")}


def test_every_module_of_every_package_folder_is_in_the_wheel(wheel):
    """A new package folder (one with __init__.py) must also be listed in pyproject.toml."""
    src = wheel.parent.parent / "src"

    def in_package(path: Path) -> bool:
        rel = path.parent.relative_to(src)
        folders = [src / Path(*rel.parts[:i]) for i in range(len(rel.parts) + 1)]
        return rel.parts[:1] != ("tests",) and all((f / "__init__.py").is_file() for f in folders)

    modules = {f"florec/{p.relative_to(src).as_posix()}" for p in src.rglob("*.py")
               if in_package(p)}
    assert "florec/models/mf.py" in modules
    missing = sorted(modules - set(zipfile.ZipFile(wheel).namelist()))
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {missing[:5]}"


def test_the_installed_wheel_imports_and_runs_a_central_run_outside_the_repo(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                     "['purelib'])"], cwd=tmp_path).stdout.strip())
    # Dependencies from the project venv; a plain path line, so its editable-install hook
    # (a .pth that imports a finder) is not run and cannot shadow the installed wheel.
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", "--quiet", str(wheel)], cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"FLOREC_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    probe = ("import importlib.util, json, florec, florec.models, florec.models.registry; "
             f"print(json.dumps({{'file': florec.__file__, 'tops': [m for m in {TOP_LEVEL!r} "
             "if importlib.util.find_spec(m) is not None]}))")
    found = json.loads(run([str(python), "-c", probe], cwd=work, env=env).stdout)
    assert Path(found["file"]).resolve().is_relative_to(site.resolve()), found["file"]
    assert not Path(found["file"]).resolve().is_relative_to(ROOT)
    assert found["tops"] == [], f"top-level packages importable: {found['tops']}"

    out = tmp_path / "out"
    run([str(python), "-m", "florec.sim.cli", "central", "--dataset", "synthetic", "--epochs", "2",
         "--batch-size", "64", "--out", str(out), "-c", "synthetic-users=40",
         "-c", "synthetic-items=60", "-c", "synthetic-interactions=12", "-c", "dim=8"],
        cwd=work, env=env)
    saved = json.loads((out / "results.json").read_text())
    run_entry = saved["runs"][0]
    assert run_entry["setting"] == "central" and run_entry["dataset"] == "synthetic"
    assert 0.0 <= run_entry["metrics"]["recall@10"] <= 1.0
