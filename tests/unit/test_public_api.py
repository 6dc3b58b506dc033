"""The public API: every name in ``ancsync.__all__`` is importable, and nothing else is lazy."""

from __future__ import annotations

import importlib

import ancsync


def test_every_public_name_resolves_from_its_module() -> None:
    lazy = ancsync._LAZY
    assert set(lazy) == set(ancsync.__all__) - {"__version__"}
    for name, module in lazy.items():
        assert getattr(ancsync, name) is getattr(importlib.import_module(module), name), name


def test_the_options_of_public_constructors_are_public_too() -> None:
    # IoTConnection(lane_limits=..., reconnect=...) takes these: users import them from ancsync.
    assert {"LaneLimits", "Lane", "BackoffPolicy", "PublishHandle"} <= set(ancsync.__all__)
