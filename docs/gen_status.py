"""Regenerate docs/status.md, the field-by-field reference of get_status(), from ancsync.status.

    .venv/bin/python docs/gen_status.py          # rewrite the page
    .venv/bin/python docs/gen_status.py --check  # exit 1 if the page is out of date

The unit tests run the check, so a status type changed without a regenerated page fails the suite.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import ancsync.status

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from griffe_roles import markdown_roles

PAGE = Path(__file__).with_name("status.md")

INTRO = """# Status fields

`get_status()` returns plain, JSON-serialisable dictionaries whose keys are fixed and typed:
the TypedDicts of `ancsync.status`, so mypy checks the code that reads them. This page lists
every field as those types document it (it is generated from them).
"""


def render() -> str:
    """The page: one table per status type, in the module's order."""
    lines = [INTRO.rstrip()]
    for node in ast.parse(inspect.getsource(ancsync.status)).body:
        if not isinstance(node, ast.ClassDef):
            continue
        doc = markdown_roles(inspect.cleandoc(ast.get_docstring(node) or ""))
        lines += ["", f"## {node.name}", "", doc]
        bases = [ast.unparse(base) for base in node.bases if ast.unparse(base) != "TypedDict"]
        if bases:
            lines += ["", f"All the fields of {', '.join(bases)}, and:"]
        lines += ["", "| field | type | meaning |", "|---|---|---|"]
        for field, doc in zip(node.body, node.body[1:], strict=False):
            if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name):
                meaning = ast.literal_eval(doc.value) if isinstance(doc, ast.Expr) else ""
                kind = ast.unparse(field.annotation).replace("|", "\\|")
                text = markdown_roles(" ".join(meaning.split()))
                lines.append(f"| `{field.target.id}` | `{kind}` | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if PAGE.read_text() == render() else 1)
    PAGE.write_text(render())
