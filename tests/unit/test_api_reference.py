"""The API reference: every public name documented and listed, and the site checker's verdicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import griffe
from helpers import load_docs_script

import ancsync

ROOT = Path(__file__).parents[2]


def test_every_public_name_has_a_docstring() -> None:
    package = griffe.load("ancsync", search_paths=[str(ROOT / "src")])
    undocumented = []
    for name, module in ancsync._LAZY.items():
        target = package[name].final_target if package[name].is_alias else package[name]
        if target.docstring is None or not target.docstring.value.strip():
            undocumented.append(f"{module}.{name}")
    assert undocumented == [], f"public names without a docstring: {undocumented}"


def test_the_reference_page_lists_every_public_name() -> None:
    generator = load_docs_script("gen_reference")
    page = generator.PAGE.read_text()
    assert page == generator.render(), "run: .venv/bin/python docs/gen_reference.py"
    for name in ancsync._LAZY:
        assert f"ancsync.{name}\n" in page or f"[`{name}`]" in page, name


def check_site(site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check-site"), str(site)],
        capture_output=True,
        text=True,
    )


def test_the_site_checker_passes_a_sound_site_and_names_each_problem(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text('<h1 id="top">A</h1><a href="b.html#part">b</a>')
    (tmp_path / "b.html").write_text('<p id="part">B</p><a href="a.html#top">a</a>')
    assert check_site(tmp_path).returncode == 0

    (tmp_path / "c.html").write_text(
        '<a href="gone.html">x</a><a href="b.html#nowhere">y</a>'
        '<a href="https://example.com/">not followed</a><p>see :class:`Thing`</p>'
    )
    result = check_site(tmp_path)
    assert result.returncode == 1
    assert "c.html: broken link 'gone.html'" in result.stderr
    assert "c.html: link 'b.html#nowhere': no #nowhere in that page" in result.stderr
    assert "c.html: a literal reST role ':class:`'" in result.stderr
    assert "example.com" not in result.stderr
