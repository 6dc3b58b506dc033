"""get_status() has exactly the keys its TypedDict documents, before start as well as after."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from helpers import assert_typed, load_docs_script

from ancsync import DataSyncOrchestrator
from ancsync.status import OrchestratorStatus, SessionStatus


def test_a_status_before_start_has_the_documented_shape(tmp_path: Path) -> None:
    device = DataSyncOrchestrator(
        thing_name="anc-device-001",
        endpoint="127.0.0.1",
        tls=False,
        data_dir=tmp_path,
    )
    status = device.get_status()
    orjson.dumps(status)
    assert_typed(status, OrchestratorStatus)
    assert status["connection"]["state"] == "stopped"


def test_the_shape_check_fails_on_a_missing_or_extra_key() -> None:
    session: dict[str, object] = dict.fromkeys(SessionStatus.__annotations__, 0)
    session["last_error"] = None
    session["connected_since"] = None
    session["failed_subscriptions"] = []
    session["refused_topics"] = []
    assert_typed(session, SessionStatus)
    with pytest.raises(AssertionError, match="are missing"):
        assert_typed({k: v for k, v in session.items() if k != "state"}, SessionStatus)
    with pytest.raises(AssertionError, match="are not in SessionStatus"):
        assert_typed({**session, "surprise": 1}, SessionStatus)


def test_the_status_page_lists_every_field() -> None:
    generator = load_docs_script("gen_status")
    assert generator.PAGE.read_text() == generator.render(), (
        "run: .venv/bin/python docs/gen_status.py"
    )
