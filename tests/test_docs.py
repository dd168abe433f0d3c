"""The documentation: generated reference pages are current, every relative link resolves."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs/gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _anchors(md: Path) -> set[str]:
    """GitHub heading anchors of a Markdown file (lower case, punctuation dropped, - for space)."""
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_committed_reference_pages_equal_the_generated_ones():
    for path, text in _generator().pages().items():
        assert path.read_text() == text, f"{path} is stale: run python docs/gen_reference.py"


def test_config_reference_lists_every_runconfig_key_with_its_default():
    page = (ROOT / "docs/reference/config.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z0-9-]+)` \| `([^`]*)` \|",
                                                        page, flags=re.M)}
    keys = {name.replace("_", "-"): f.default for name, f in RunConfig.model_fields.items()}
    assert set(rows) == set(keys)
    gen = _generator()
    for key, default in keys.items():
        assert rows[key] == gen._toml(default), key


def test_generator_refuses_a_key_without_description(monkeypatch):
    gen = _generator()
    descriptions = dict(gen.DESCRIPTIONS)
    del descriptions["lr"]
    monkeypatch.setattr(gen, "DESCRIPTIONS", descriptions)
    with pytest.raises(ConfigError, match="DESCRIPTIONS disagrees with RunConfig: missing"):
        gen.config_page()


def test_cli_reference_documents_every_command():
    page = (ROOT / "docs/reference/cli.md").read_text()
    for command in ("central", "sim", "demo", "bench", "perf", "plot", "data list",
                    "data split", "deploy local"):
        assert f"## `florec {command}`" in page, command


def test_every_relative_link_in_readme_and_docs_points_at_an_existing_file_and_heading():
    broken = []
    for md in _markdown_files():
        text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = md.parent / path if path else md
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{md.relative_to(ROOT)} -> {target} (no such heading)")
    assert not broken, broken


def test_anchor_rule_follows_github_headings(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n## Framework cost at scale (`florec perf`)\n## CoT-Rec\n")
    assert _anchors(page) == {"title", "framework-cost-at-scale-florec-perf", "cot-rec"}


def test_readme_is_short_and_links_every_method_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    for page in sorted((ROOT / "docs/methods").glob("*.md")):
        assert f"docs/methods/{page.name}" in readme, page.name


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """MkDocs (mkdocs.yml) fails on broken links, missing pages and bad anchors."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "methods" / "cotrec" / "index.html").is_file()
