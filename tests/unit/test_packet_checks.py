"""The emulator's check of each client packet's fixed header and PUBLISH topic name.

Every packet a real MQTT 3.1.1 client sends must pass (paho, awscrt, mosquitto_pub send these
first bytes); the rest closes the connection (tests/integration/test_hostile_input.py).
"""

from __future__ import annotations

import pytest

from ancsync.emulator.amqtt_broker import (
    MAX_PACKET_BYTES,
    _filters_problem,
    _header_problem,
    _topic_name_problem,
)


@pytest.mark.parametrize(
    ("first", "length"),
    [
        (0x30, 10),  # PUBLISH QoS 0
        (0x32, 12),  # QoS 1
        (0x3B, 12),  # QoS 1, DUP and retain
        (0x30, MAX_PACKET_BYTES),
        (0x40, 2),  # PUBACK
        (0x50, 2),  # PUBREC
        (0x62, 2),  # PUBREL
        (0x70, 2),  # PUBCOMP
        (0x82, 6),  # SUBSCRIBE
        (0xA2, 5),  # UNSUBSCRIBE
        (0xC0, 0),  # PINGREQ
        (0xE0, 0),  # DISCONNECT
    ],
)
def test_what_clients_send_passes(first: int, length: int) -> None:
    assert _header_problem(first, length) is None


@pytest.mark.parametrize(
    ("first", "length", "problem"),
    [
        (0x00, 0, "packet type 0"),
        (0xF0, 0, "packet type 15"),
        (0x10, 20, "packet type 1"),  # a second CONNECT
        (0x20, 2, "packet type 2"),  # CONNACK, SUBACK, UNSUBACK, PINGRESP: server packets
        (0x90, 3, "packet type 9"),
        (0xB0, 2, "packet type 11"),
        (0xD0, 0, "packet type 13"),
        (0x36, 12, "QoS 3"),
        (0x30, MAX_PACKET_BYTES + 1, "at most"),
        (0x41, 2, "flags 0x1"),
        (0x60, 2, "flags 0x0"),  # PUBREL must carry 0x2
        (0x80, 6, "flags 0x0"),
        (0x40, 3, "PUBACK of 3 bytes"),
        (0xC0, 1, "PINGREQ of 1 bytes"),
        (0x82, 4, "SUBSCRIBE of 4 bytes"),
        (0x30, 1, "PUBLISH of 1 bytes"),
    ],
)
def test_what_mqtt_forbids_is_named(first: int, length: int, problem: str) -> None:
    found = _header_problem(first, length)
    assert found is not None
    assert problem in found


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        (b"anc/devices/anc-device-001/status", None),
        ("anc/ümlaut/ü".encode(), None),
        (b"anc/\xff", "not UTF-8"),
        (b"anc/\xc3\x28", "not UTF-8"),
        (b"anc/+/status", "wildcard"),
        (b"#", "wildcard"),
        (b"anc/\x00", "U+0000"),
    ],
)
def test_topic_names(topic: bytes, problem: str | None) -> None:
    found = _topic_name_problem(topic)
    assert (found is None) if problem is None else (found is not None and problem in found)


def _filter(text: bytes, qos: int | None = None) -> bytes:
    return len(text).to_bytes(2, "big") + text + (b"" if qos is None else bytes([qos]))


@pytest.mark.parametrize(
    ("body", "with_qos", "problem"),
    [
        (b"\x00\x01" + _filter(b"a/#", 1) + _filter(b"$aws/things/x/shadow/+", 0), True, None),
        (b"\x00\x01" + _filter("ü/+".encode()), False, None),
        (b"\x00\x01" + _filter(b"a/\xff", 1), True, "not UTF-8"),
        (b"\x00\x01" + _filter(b"a/\xff"), False, "not UTF-8"),
        (b"\x00\x01" + _filter(b"", 1), True, "empty"),
        (b"\x00\x01" + _filter(b"a", 3), True, "QoS byte 0x03"),
        (b"\x00\x01\x00\x09a/b", False, "past its end"),
        (b"\x00\x01" + _filter(b"a/b"), True, "past its end"),  # no QoS byte
    ],
)
def test_topic_filters(body: bytes, with_qos: bool, problem: str | None) -> None:
    found = _filters_problem(body, with_qos=with_qos)
    assert (found is None) if problem is None else (found is not None and problem in found)
