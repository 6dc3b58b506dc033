"""Regenerate docs/reference.md, the API reference: every name in ``ancsync.__all__``.

    .venv/bin/python docs/gen_reference.py          # rewrite the page
    .venv/bin/python docs/gen_reference.py --check  # exit 1 if the page is out of date

A name already rendered on a guide page (``::: ancsync.IoTConnection`` in connection.md) gets a
link there; every other one is rendered here by mkdocstrings, grouped by the module defining it.
The unit tests run the check, so a public name added without a regenerated page fails the suite.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

import ancsync

DOCS = Path(__file__).parent
PAGE = DOCS / "reference.md"
RENDERED = re.compile(r"^::: ([\w.]+)", re.MULTILINE)

INTRO = """# API reference

Everything public is imported from `ancsync` (`from ancsync import IoTConnection`). This page
lists every public name, grouped by the module that defines it; those with a guide of their own
link to it, where they are documented in full.
"""


def rendered_elsewhere() -> dict[str, str]:
    """What the guide pages render with ``:::``, by the rendered path: the page's name."""
    found: dict[str, str] = {}
    for page in sorted(DOCS.glob("*.md")):
        if page != PAGE:
            for path in RENDERED.findall(page.read_text()):
                found.setdefault(path, page.name)
    return found


def render() -> str:
    """The page."""
    elsewhere = rendered_elsewhere()
    by_module: dict[str, list[str]] = defaultdict(list)
    for name, module in ancsync._LAZY.items():
        by_module[module].append(name)
    sections = [INTRO.rstrip()]
    for module in sorted(by_module):
        rendered, linked = [], []
        for name in sorted(by_module[module], key=str.lower):
            paths = (f"ancsync.{name}", f"{module}.{name}", module)
            page = next((elsewhere[path] for path in paths if path in elsewhere), None)
            if page is None:
                rendered.append(f"::: ancsync.{name}\n    options:\n      heading_level: 3")
            else:
                linked.append(f"- [`{name}`]({page}): documented on that page.")
        parts = [f"## `{module}`", *(["\n".join(linked)] if linked else []), *rendered]
        sections.append("\n\n".join(parts))
    return "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if PAGE.read_text() == render() else 1)
    PAGE.write_text(render())
