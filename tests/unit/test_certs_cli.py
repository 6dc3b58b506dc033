"""The pure parts of ``ancsync certs``: the rotation job's id."""

from __future__ import annotations

import re

from ancsync.cli.certs import rotation_job_id


def test_a_rotation_job_id_names_the_thing() -> None:
    assert rotation_job_id("anc-device-001", "ab12cd34") == "rotate-anc-device-001-ab12cd34"


def test_a_rotation_job_id_is_a_valid_job_id_for_any_thing_name() -> None:
    job_id = rotation_job_id("site:" + "x" * 123, "ab12cd34")
    assert len(job_id) == 64
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", job_id)
    assert job_id.endswith("-ab12cd34")
