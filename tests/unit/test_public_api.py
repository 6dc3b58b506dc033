"""The public API: every name in ``ancsync.__all__`` is importable, and nothing else is lazy."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import ancsync


def test_every_public_name_resolves_from_its_module() -> None:
    lazy = ancsync._LAZY
    assert set(lazy) == set(ancsync.__all__) - {"__version__"}
    for name, module in lazy.items():
        assert getattr(ancsync, name) is getattr(importlib.import_module(module), name), name


def test_type_checkers_see_the_same_names_as_the_lazy_table() -> None:
    # ancsync/__init__.py repeats the names under TYPE_CHECKING, as `import X as X` (an explicit
    # re-export under mypy --strict); they must not drift from the one table.
    tree = ast.parse(Path(ancsync.__file__).read_text())
    [block] = [node for node in tree.body if isinstance(node, ast.If)]
    seen = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname == alias.name
    }
    assert seen == ancsync._LAZY


def test_the_lifecycle_the_fakes_and_the_status_types_are_public() -> None:
    assert {"Component", "ComponentState", "FakeBroker", "FakeTransport"} <= set(ancsync.__all__)
    assert {"OrchestratorStatus", "ConnectionStatus", "TelemetryStatus"} <= set(ancsync.__all__)


def test_the_options_of_public_constructors_are_public_too() -> None:
    # IoTConnection(lane_limits=..., reconnect=...) takes these: users import them from ancsync.
    assert {"LaneLimits", "Lane", "BackoffPolicy", "PublishHandle"} <= set(ancsync.__all__)
