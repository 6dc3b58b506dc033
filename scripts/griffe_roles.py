"""A griffe extension for the API reference: Sphinx roles in docstrings become Markdown.

ancsync's docstrings name other objects with Sphinx's roles (:class:`~ancsync.IoTConnection`,
:meth:`IoTConnection.start`), which mkdocstrings would show as literal text. Each role becomes a
link to the API reference when its target is a public name of ``ancsync`` (or a member of one),
and inline code otherwise. ``~`` keeps only the last part of the name, as in Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

import ancsync

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|data|mod|attr|exc|obj|const):`(~?)([^`<>]+)`")
PUBLIC = frozenset(ancsync.__all__)


def _target(name: str) -> str | None:
    """The reference's anchor for ``name``, if it documents it: ``ancsync.<Public>[.member]``."""
    parts = name.removesuffix("()").split(".")
    if any(part.startswith("_") for part in parts):
        return None  # private: not in the reference
    for index, part in enumerate(parts):
        if part in PUBLIC:
            rest = parts[index + 1 :]
            return ".".join(["ancsync", part, *rest[:1]])
    return None


def markdown_roles(text: str) -> str:
    """``text`` with every Sphinx role turned into a Markdown cross-reference or inline code."""

    def replace(match: re.Match[str]) -> str:
        short, name = match.group(1) == "~", match.group(2)
        shown = name.split(".")[-1] if short else name
        target = _target(name)
        return f"[`{shown}`][{target}]" if target else f"`{shown}`"

    return ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrites the docstring of every loaded object (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_roles(obj.docstring.value)
