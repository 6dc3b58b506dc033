"""The parts of amqtt's private API the embedded broker relies on, and its connect decision.

If an amqtt upgrade breaks one of these tests, read ``ancsync/emulator/amqtt_broker.py`` (the
``AwsLikeBroker`` overrides) against the new amqtt source before changing anything else.
"""

from __future__ import annotations

import inspect
import re
import ssl
from importlib.metadata import version
from typing import Any

import pytest
from amqtt.broker import Broker, Server
from amqtt.contexts import BrokerConfig, ListenerConfig
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers import AllowEverything

from ancsync.emulator.amqtt_broker import _RESUMED_FIELDS
from ancsync.emulator.auth import ClientIdentity, connect_refusal, publish_allowed
from ancsync.emulator.certificates import certificate_id
from ancsync.emulator.certs import DevCerts

# name -> (parameters, is a coroutine function)
RELIED_ON = {
    "_handle_message_delivery": (["self", "client_session", "handler", "wait_deliver"], True),
    "_initialize_client_session": (
        ["self", "reader", "writer", "remote_address", "remote_port"],
        True,
    ),
    "_client_message_loop": (["self", "client_session", "handler"], True),
    "_handle_subscription": (["self", "client_session", "handler", "subscribe_waiter"], True),
    "_handle_unsubscription": (
        ["self", "client_session", "handler", "unsubscribe_waiter"],
        True,
    ),
    "_handle_disconnect": (["self", "client_session", "handler", "disconnect_waiter"], True),
    "_publish_session_retained_messages": (["self", "session"], True),
    "_del_all_subscriptions": (["self", "session"], True),
    "_get_handler": (["self", "session"], False),
    "_create_ssl_context": (["listener"], False),
    "_delete_session": (["self", "client_id"], True),
    "stream_connected": (["self", "reader", "writer", "listener_name"], True),
    "internal_message_broadcast": (["self", "topic", "data", "qos"], True),
    "retain_message": (["self", "source_session", "topic_name", "data", "qos"], True),
}


def test_amqtt_is_the_pinned_minor_version() -> None:
    assert version("amqtt").startswith("0.12."), (
        "ancsync.emulator.broker overrides private amqtt 0.12 methods; check them against "
        f"amqtt {version('amqtt')} and update the pin in pyproject.toml"
    )


@pytest.mark.parametrize("name", sorted(RELIED_ON))
def test_amqtt_broker_methods_we_override_or_call_are_unchanged(name: str) -> None:
    expected_parameters, is_coroutine = RELIED_ON[name]
    method = getattr(Broker, name, None)
    assert method is not None, f"amqtt.broker.Broker.{name} is gone: the emulator broker needs it"
    parameters = list(inspect.signature(method).parameters)
    assert parameters == expected_parameters, (
        f"amqtt.broker.Broker.{name} now takes {parameters}, the emulator broker was written "
        f"for {expected_parameters}: re-check AwsLikeBroker in ancsync/emulator/amqtt_broker.py"
    )
    assert inspect.iscoroutinefunction(method) == is_coroutine, f"Broker.{name} changed kind"


def test_amqtt_still_makes_client_certificates_only_optional(dev_certs: DevCerts) -> None:
    """Why we override _create_ssl_context: if this fails, amqtt may now require them itself."""
    listener = ListenerConfig(
        ssl=True,
        cafile=dev_certs.ca,
        certfile=dev_certs.server.cert,
        keyfile=dev_certs.server.key,
    )
    assert Broker._create_ssl_context(listener).verify_mode == ssl.CERT_OPTIONAL


async def test_amqtt_keeps_its_servers_by_listener_name() -> None:
    listeners = {"default": ListenerConfig(bind="127.0.0.1:0")}
    broker = Broker(BrokerConfig(listeners=listeners, plugins={}))
    assert broker._servers == {}, "AwsLikeBroker reads bound ports from Broker._servers"


async def test_amqtt_servers_and_states_are_as_shutdown_within_reads_them() -> None:
    """AwsLikeBroker.bound_ports and shutdown_within read a Server's socket and the state."""
    assert "started" in Broker.states, "AwsLikeBroker.shutdown_within checks for 'started'"
    init = inspect.getsource(Server.__init__)
    assert "self.instance = server_instance" in init, (
        "Server.instance is gone: re-check bound_ports"
    )
    assert inspect.iscoroutinefunction(Server.close_instance)
    listeners = {"default": ListenerConfig(bind="127.0.0.1:0")}
    broker = Broker(BrokerConfig(listeners=listeners, plugins={}))
    assert broker.transitions.state == "new"


def test_a_refused_connect_undoes_every_field_amqtt_copies_into_a_resumed_session() -> None:
    source = inspect.getsource(Broker._initialize_client_session)
    copied = re.findall(r"existing_client_session\.(\w+) = client_session\.\1\b", source)
    assert sorted(copied) == sorted(_RESUMED_FIELDS), (
        f"amqtt now copies {copied} from a CONNECT into the session it resumes; update "
        "_RESUMED_FIELDS in ancsync/emulator/amqtt_broker.py so that a refused impostor "
        "changes none of them"
    )


def test_the_protocol_handler_can_still_be_told_the_connection_closed() -> None:
    method = BrokerProtocolHandler.handle_connection_closed
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self"]


def test_the_protocol_handler_methods_puback_first_handler_overrides_are_unchanged() -> None:
    """PubackFirstHandler replaces amqtt's outgoing QoS 1 flow, wraps its stop() and gates
    handle_publish (where amqtt queues and acknowledges an incoming publish)."""
    for name, parameters in (
        ("_handle_qos1_message_flow", ["self", "app_message"]),
        ("stop", ["self"]),
        ("handle_publish", ["self", "publish_packet"]),
    ):
        method = getattr(BrokerProtocolHandler, name)
        assert inspect.iscoroutinefunction(method), f"BrokerProtocolHandler.{name} changed kind"
        assert list(inspect.signature(method).parameters) == parameters, (
            f"BrokerProtocolHandler.{name} changed: re-check PubackFirstHandler"
        )
    init = inspect.getsource(ProtocolHandler.__init__)
    for attribute in ("_puback_waiters", "_reader_task", "session", "writer"):
        assert f"self.{attribute}" in init, f"ProtocolHandler.{attribute} is gone"
    assert "_handle_message_flow" in inspect.getsource(ProtocolHandler.handle_publish), (
        "amqtt no longer acknowledges incoming publishes from handle_publish: re-check the "
        "publish gate of PubackFirstHandler"
    )
    for attribute in ("topic_name", "retain_flag", "qos"):
        assert hasattr(PublishPacket, attribute), f"PublishPacket.{attribute} is gone"
    flow = inspect.getsource(ProtocolHandler._handle_qos1_message_flow)
    assert flow.index("_send_packet(publish_packet)") < flow.index("_puback_waiters["), (
        "amqtt now registers the PUBACK waiter before sending: PubackFirstHandler may go"
    )


async def test_the_broker_still_builds_its_handlers_where_we_swap_their_class() -> None:
    """AwsLikeBroker makes the handler _initialize_client_session returns a PubackFirstHandler."""
    source = inspect.getsource(Broker._initialize_client_session)
    assert "BrokerProtocolHandler.init_from_connect" in source
    listeners = {"default": ListenerConfig(bind="127.0.0.1:0")}
    broker = Broker(BrokerConfig(listeners=listeners, plugins={}))
    for attribute in ("_sessions", "_broadcast_task", "_session_monitor_task"):
        assert hasattr(broker, attribute), f"Broker.{attribute} is gone: re-check shutdown_within"


def test_the_client_loop_we_replace_still_waits_on_the_same_handler_calls() -> None:
    """AwsLikeBroker._client_message_loop is amqtt's loop plus a drain of the delivery queue."""
    source = inspect.getsource(Broker._client_message_loop)
    for call in (
        "handler.wait_disconnect()",
        "handler.get_next_pending_subscription()",
        "handler.get_next_pending_unsubscription()",
        "handler.mqtt_deliver_next_message()",
    ):
        assert call in source, f"amqtt's client loop no longer calls {call}: re-check ours"
    assert "delivered_message_queue" not in source, (
        "amqtt's client loop now looks at the delivery queue: it may deliver what is queued at a "
        "disconnect itself, and AwsLikeBroker._client_message_loop may go"
    )
    assert "delivered_message_queue" in inspect.getsource(ProtocolHandler.mqtt_deliver_next_message)


def test_persistent_sessions_are_resumed_and_expired_as_aws_like_broker_expects() -> None:
    """AwsLikeBroker decides whether a session amqtt resumes is one to resume (not a clean one,
    not expired), leaves the real-time cleanup to amqtt's monitor, and relies on amqtt resending
    what is in flight when a session comes back."""
    resume = inspect.getsource(Broker._initialize_client_session)
    assert "client_session.parent = 1" in resume, "amqtt no longer flags a resumed session"
    assert "existing_client_session.clean_session" not in resume, (
        "amqtt now copies the clean-session flag into a resumed session: re-check "
        "AwsLikeBroker._resumable, which reads the flag of the session's previous connection"
    )
    monitor = inspect.getsource(Broker._session_monitor)
    assert "session_expiry_interval" in monitor
    assert "session_expiry_interval" in BrokerConfig.__dataclass_fields__
    assert "inflight_out" in inspect.getsource(ProtocolHandler._retry_deliveries)
    assert "retain=True" in inspect.getsource(Broker._publish_session_retained_messages), (
        "amqtt no longer flags queued messages retained: the override may go"
    )


# -- the connect decision --------------------------------------------------------------------------


class FakeTLS:
    """Stands in for the ssl.SSLObject of a connection (only getpeercert is used)."""

    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        assert binary_form
        return self.der


def device_tls(dev_certs: DevCerts, thing: str) -> Any:
    cert = x509.load_pem_x509_certificate(dev_certs.device(thing).cert.read_bytes())
    return FakeTLS(cert.public_bytes(serialization.Encoding.DER))


def test_a_tls_connection_without_a_verified_certificate_is_refused() -> None:
    _identity, reason = connect_refusal("anc-device-001", FakeTLS(None), None)  # type: ignore[arg-type]
    assert reason is not None
    assert "no verified client certificate" in reason


def test_a_client_id_amqtt_generated_is_refused(dev_certs: DevCerts) -> None:
    tls = device_tls(dev_certs, "anc-device-001")
    _identity, reason = connect_refusal("amqtt/Abcdefgh12345678", tls, None)
    assert reason is not None
    assert "empty client id" in reason


def test_identities_of_accepted_connections(dev_certs: DevCerts) -> None:
    tls = device_tls(dev_certs, "anc-device-001")
    cert_id = certificate_id(dev_certs.device("anc-device-001").cert.read_text())
    assert connect_refusal("anc-device-001", tls, None) == (
        ClientIdentity("anc-device-001", "anc-device-001", cert_id),
        None,
    )
    assert connect_refusal("local-tool", None, None) == (ClientIdentity("local-tool", None), None)


def test_the_authorizer_reason_is_the_refusal(dev_certs: DevCerts) -> None:
    class Refuse(AllowEverything):
        def authorize_connect(self, identity: ClientIdentity) -> str | None:
            return f"{identity.client_id} is not {identity.common_name}"

    tls = device_tls(dev_certs, "anc-device-001")
    _identity, reason = connect_refusal("anc-device-002", tls, Refuse())
    assert reason == "anc-device-002 is not anc-device-001"


class NoRetainedWill(AllowEverything):
    """Allows everything but retaining, and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bool]] = []

    def authorize_publish(
        self, identity: ClientIdentity, topic: str, *, retain: bool = False
    ) -> bool:
        self.asked.append((topic, retain))
        return not retain


def test_the_last_will_is_part_of_the_connect_decision(dev_certs: DevCerts) -> None:
    tls = device_tls(dev_certs, "anc-device-001")
    policy = NoRetainedWill()
    _identity, reason = connect_refusal("anc-device-001", tls, policy, will_topic="a/b")
    assert reason is None
    _identity, reason = connect_refusal(
        "anc-device-001", tls, policy, will_topic="a/b", will_retain=True
    )
    assert reason == "the retained last will on 'a/b' is not allowed; use a topic the policy allows"
    assert policy.asked == [("a/b", False), ("a/b", True)]


def test_an_authorizer_without_the_retain_flag_still_decides_ordinary_publishes() -> None:
    class TopicOnly:
        def authorize_publish(self, identity: ClientIdentity, topic: str) -> bool:
            return topic == "ok"

    identity = ClientIdentity("tool", None)
    assert publish_allowed(TopicOnly(), identity, "ok", retain=False)  # type: ignore[arg-type]
    assert not publish_allowed(TopicOnly(), identity, "no", retain=False)  # type: ignore[arg-type]
