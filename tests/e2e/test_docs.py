"""The docs site builds with --strict, and every Python snippet in the README and docs parses."""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"^ *```python\n(.*?)^ *```", re.DOTALL | re.MULTILINE)
TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


@pytest.mark.slow
async def test_the_site_builds_strict(tmp_path: Path) -> None:
    mkdocs = str(Path(sys.executable).with_name("mkdocs"))
    with anyio.fail_after(120):
        result = await anyio.run_process(
            [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
            cwd=ROOT,
            check=False,
            env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
        )
    assert result.returncode == 0, result.stderr.decode()
    # Pages are files (getting-started.html), so the site also works opened from disk.
    assert (tmp_path / "site" / "getting-started.html").is_file()
    check = await anyio.run_process(
        [sys.executable, str(ROOT / "scripts" / "check-site"), str(tmp_path / "site")], check=False
    )
    assert check.returncode == 0, check.stderr.decode()  # no broken link, no literal role


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_snippets_parse(page: Path) -> None:
    for number, block in enumerate(PYTHON_BLOCK.findall(page.read_text()), start=1):
        code = textwrap.dedent(block)
        if code.startswith(">>>"):  # a REPL transcript: its input lines
            code = "\n".join(line[4:] for line in code.splitlines() if line[:4] in (">>> ", "... "))
        # Snippets may await at top level, as in an async REPL (python -m asyncio).
        compile(code, f"{page.name} snippet {number}", "exec", TOP_LEVEL_AWAIT)
