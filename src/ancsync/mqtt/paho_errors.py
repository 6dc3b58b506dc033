"""How the paho backend's failures become :mod:`ancsync.errors` (the one place they are mapped).

Each moment that can fail has its own function: the blocking TCP connect and TLS handshake
(:func:`connect_failure`, from the :mod:`socket` or :mod:`ssl` exception), a CONNACK that refuses
(:func:`refused`, from paho's reason code), an answer paho cannot take (:func:`protocol_refused`),
the connection ending before any CONNACK (:func:`closed_before_connack`, from what paho logged),
no CONNACK in time (:func:`connack_timeout`) and a connection lost later (:func:`lost`). The table
in docs/transport.md lists every case with its message.
"""

from __future__ import annotations

import socket
import ssl

from paho.mqtt.reasoncodes import ReasonCode

from ancsync.errors import ConnectError, NotAuthorized, TLSError

__all__ = [
    "closed_before_connack",
    "connack_timeout",
    "connect_failure",
    "lost",
    "protocol_refused",
    "refused",
]

# CONNACK refusals (MQTT 3.1.1 return codes 5 and 4, as paho names them) that mean the
# certificate or client id is not allowed; and the one (2) that retrying can never fix. Code 1
# never arrives as a refusal: see protocol_refused.
_NOT_AUTHORIZED = {"Not authorized", "Bad user name or password"}
_PERMANENT = {"Client identifier not valid"}
# OpenSSL reasons that mean "a certificate was refused", as opposed to a broken network.
_CERTIFICATE_REASONS = ("CERTIFICATE", "UNKNOWN_CA", "BAD_CERT", "HANDSHAKE_FAILURE")


def _refused_certificate(who: str, detail: str) -> TLSError:
    return TLSError(
        f"{who} refused the client certificate ({detail}); check that cert_path is a "
        "certificate registered and active in AWS IoT (or issued by the emulator's CA)"
    )


def refused(reason: ReasonCode, host: str) -> ConnectError:
    """The CONNACK refused the connection with ``reason``."""
    name = reason.getName()
    if name in _NOT_AUTHORIZED:
        return NotAuthorized(
            f"the broker at {host} refused the connection: {name}. Check that the certificate "
            "is active (not revoked or inactive), attached to the thing, and has a policy "
            "allowing iot:Connect for this client id (the thing name)"
        )
    error = ConnectError(f"the broker at {host} refused the connection: {name}")
    error.permanent = name in _PERMANENT
    return error


def protocol_refused(host: str, port: int) -> ConnectError:
    """The answer to the CONNECT was not one paho accepts (paho's "Protocol error").

    paho reports a CONNACK refusing MQTT 3.1.1 (return code 1) this way, not as a refusal, when it
    must not fall back to MQTT 3.1; so does an answer that is not MQTT at all.
    """
    error = ConnectError(
        f"{host}:{port} refused the connection: Unsupported protocol version (ancsync speaks "
        "MQTT 3.1.1), or it answered with something that is not MQTT; check the endpoint and port"
    )
    error.permanent = True
    return error


def closed_before_connack(detail: str | None, host: str, port: int) -> ConnectError:
    """The connection ended after the TLS handshake but before a CONNACK.

    ``detail`` is the last error paho logged (a TLS alert shows up only there): TLS 1.3 reports a
    refused client certificate only after the handshake, and AWS IoT closes the connection of a
    CONNECT its policy does not allow.
    """
    where = f"{host}:{port}"
    if detail and any(part in detail.upper() for part in _CERTIFICATE_REASONS):
        return _refused_certificate(where, detail)
    return ConnectError(
        f"{where} closed the connection before accepting it ({detail or 'no reason given'}); "
        "on AWS IoT this usually means the certificate is inactive or its policy does not "
        "allow iot:Connect for this client id (the thing name)"
    )


def connack_timeout(host: str, port: int, timeout: float) -> ConnectError:
    """Connected and sent CONNECT, but no CONNACK came within the connect timeout."""
    return ConnectError(
        f"{host}:{port} sent no CONNACK within the connect timeout ({timeout:g} s); is it an "
        "MQTT broker, and is the port the TLS one when TLS is on?"
    )


def connect_failure(exc: Exception, host: str, port: int, timeout: float) -> ConnectError:
    """What the blocking TCP connect and TLS handshake raised, as an ancsync error."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(
            f"the server certificate of {where} failed verification ({exc.verify_message}); "
            "check root_ca_path (AmazonRootCA1.pem for AWS IoT, the emulator's ca.pem locally) "
            "and that the endpoint is the host name the certificate was issued for"
        )
    if isinstance(exc, ssl.SSLError) and any(
        part in (exc.reason or "") for part in _CERTIFICATE_REASONS
    ):
        return _refused_certificate(
            f"the TLS handshake with {where} failed: the broker", exc.reason
        )
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve {host} ({exc.strerror}); check the endpoint")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"{where} refused the TCP connection; is the broker running?")
    if isinstance(exc, TimeoutError):
        return ConnectError(f"no answer from {where} within the connect timeout ({timeout:g} s)")
    return ConnectError(f"cannot connect to {where}: {exc}")


def lost(detail: str | None) -> ConnectError:
    """An established connection ended; ``detail`` says how, if known."""
    return ConnectError(f"connection lost: {detail or 'the broker closed it'}")
