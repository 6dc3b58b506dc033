"""How the awscrt backend's failures become :mod:`ancsync.errors` (the one place they are mapped).

awscrt reports a failure as an :class:`awscrt.exceptions.AwsCrtError` whose ``name`` is the C
runtime's error name (``AWS_IO_SOCKET_CONNECTION_REFUSED``...), or, for a CONNACK that refuses,
as an exception holding the :class:`awscrt.mqtt.ConnectReturnCode`. This module reads only those
public values: :func:`connect_failure` for a failed connect (by error name),
:func:`refused` for a CONNACK refusal (by return code), :func:`connack_timeout` (with what a
:mod:`ssl` probe of the handshake raised), :func:`lost` for
an established connection that ended, and :func:`tls_setup` for certificate files awscrt cannot
load. The table in docs/transports.md lists every case.
"""

from __future__ import annotations

import ssl

from ancsync.errors import ConfigError, ConnectError, NotAuthorized, TLSError

__all__ = [
    "connack_timeout",
    "connect_failure",
    "error_name",
    "lost",
    "refused",
    "tls_setup",
]

# CONNACK return codes (MQTT 3.1.1): 4 bad user name or password, 5 not authorized; 1 and 2 can
# never succeed on a retry.
_NOT_AUTHORIZED = {4: "Bad user name or password", 5: "Not authorized"}
_PERMANENT = {1: "Unsupported protocol version", 2: "Client identifier not valid"}
_OTHER = {3: "Server unavailable"}

# Errors meaning the server's certificate was not accepted by us.
_SERVER_CERTIFICATE = {
    "AWS_IO_TLS_UNKNOWN_ROOT_CERTIFICATE",
    "AWS_IO_TLS_NO_ROOT_CERTIFICATE_FOUND",
    "AWS_IO_TLS_INVALID_CERTIFICATE_CHAIN",
    "AWS_IO_TLS_HOST_NAME_MISMATCH",
    "AWS_IO_TLS_BAD_PEER_CERTIFICATE",
    "AWS_IO_TLS_PEER_CERTIFICATE_EXPIRED",
    "AWS_IO_TLS_PEER_CERTIFICATE_REVOKED",
    "AWS_IO_TLS_PEER_CERTIFICATE_UNKNOWN",
}
# Errors meaning the broker refused our certificate (a TLS alert from the server).
_CLIENT_CERTIFICATE = {
    "AWS_IO_TLS_ERROR_ALERT_RECEIVED",
    "AWS_IO_TLS_ALERT_NOT_GRACEFUL",
    "AWS_IO_TLS_BAD_CERTIFICATE",
    "AWS_IO_TLS_CERTIFICATE_EXPIRED",
    "AWS_IO_TLS_CERTIFICATE_NOT_YET_VALID",
}
# A handshake that failed without saying which side refused (s2n reports most failures so).
_NEGOTIATION = {"AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE", "AWS_IO_TLS_INTERNAL_ERROR"}
# The TLS session failing right after the handshake, before any CONNACK: with TLS 1.3 that is
# how a broker's refusal of the client certificate (an alert after the handshake) shows up.
_READ_FAILURE = "AWS_IO_TLS_ERROR_READ_FAILURE"
_DNS = {
    "AWS_IO_DNS_QUERY_FAILED",
    "AWS_IO_DNS_INVALID_NAME",
    "AWS_IO_DNS_NO_ADDRESS_FOR_HOST",
    "AWS_IO_DNS_QUERY_AGAIN",
}
_TIMEOUT = {"AWS_IO_SOCKET_TIMEOUT", "AWS_IO_TLS_NEGOTIATION_TIMEOUT"}
# How the connection ended before a CONNACK when the broker hung up on the CONNECT.
_HANGUP = {
    "AWS_ERROR_MQTT_UNEXPECTED_HANGUP",
    "AWS_IO_SOCKET_CLOSED",
    "AWS_IO_TLS_CLOSED_ABORT",
    "AWS_IO_TLS_CLOSED_GRACEFUL",
    "AWS_IO_SOCKET_NOT_CONNECTED",
}
# What a dead link (no PINGRESP within the ping timeout) ends with.
_PING_TIMEOUT = "AWS_ERROR_MQTT_TIMEOUT"


def error_name(exc: BaseException) -> str:
    """The C runtime's name of ``exc`` (``AwsCrtError.name``), else its class name."""
    name = getattr(exc, "name", None)
    return name if isinstance(name, str) else type(exc).__name__


def _refused_certificate(where: str, detail: str) -> TLSError:
    return TLSError(
        f"{where} refused the client certificate ({detail}); check that cert_path is a "
        "certificate registered and active in AWS IoT (or issued by the emulator's CA)"
    )


def refused(return_code: int, host: str) -> ConnectError:
    """The CONNACK refused the connection with ``return_code`` (1 to 5)."""
    if return_code in _NOT_AUTHORIZED:
        return NotAuthorized(
            f"the broker at {host} refused the connection: {_NOT_AUTHORIZED[return_code]}. "
            "Check that the certificate is active, attached to the thing, and has a policy "
            "allowing iot:Connect for this client id (the thing name)"
        )
    name = _PERMANENT.get(return_code) or _OTHER.get(return_code) or f"return code {return_code}"
    error = ConnectError(f"the broker at {host} refused the connection: {name}")
    error.permanent = return_code in _PERMANENT
    return error


def connect_failure(exc: BaseException, host: str, port: int, timeout: float) -> ConnectError:
    """What a failed connect attempt (TCP, TLS, or the broker hanging up) raised."""
    where = f"{host}:{port}"
    name = error_name(exc)
    if name in _SERVER_CERTIFICATE:
        return TLSError(
            f"the server certificate of {where} failed verification ({name}); check "
            "root_ca_path (AmazonRootCA1.pem for AWS IoT, the emulator's ca.pem locally) and "
            "that the endpoint is the host name the certificate was issued for"
        )
    if name in _CLIENT_CERTIFICATE:
        return _refused_certificate(f"the TLS handshake with {where} failed: the broker", name)
    if name in _NEGOTIATION:
        # awscrt (s2n) does not say whose certificate was refused: name both.
        return TLSError(
            f"the TLS handshake with {where} failed ({name}): either the server certificate "
            "failed verification (check root_ca_path and that the endpoint is the host name "
            "it was issued for) or the broker refused the client certificate (check that "
            "cert_path is registered and active)"
        )
    if name in _DNS:
        return ConnectError(f"cannot resolve {host} ({name}); check the endpoint")
    if name == "AWS_IO_SOCKET_CONNECTION_REFUSED":
        return ConnectError(f"{where} refused the TCP connection; is the broker running?")
    if name in _TIMEOUT:
        return ConnectError(f"no answer from {where} within the connect timeout ({timeout:g} s)")
    if name in _HANGUP:
        return ConnectError(
            f"{where} closed the connection before accepting it ({name}); on AWS IoT this "
            "usually means the certificate is inactive or its policy does not allow "
            "iot:Connect for this client id (the thing name)"
        )
    if name == _READ_FAILURE:
        return _refused_certificate(f"{where} ended the TLS session before a CONNACK: it", name)
    if name == "AWS_ERROR_MQTT_PROTOCOL_ERROR":
        # awscrt's MQTT 3.1.1 client reports a CONNACK refusing the connection this way, without
        # its return code; an answer that is not MQTT looks the same.
        return NotAuthorized(
            f"the broker at {host} refused the connection ({name}: a CONNACK refusing it, or an "
            "answer that is not MQTT 3.1.1). Check that the certificate is active, attached to "
            "the thing, and has a policy allowing iot:Connect for this client id (the thing "
            "name), and that the endpoint and port are AWS IoT's"
        )
    return ConnectError(f"cannot connect to {where}: {exc}")


def connack_timeout(
    host: str, port: int, timeout: float, probe: BaseException | None = None
) -> ConnectError:
    """No CONNACK (nor any failure) within the connect timeout.

    awscrt (s2n) reports a server certificate it does not trust only after a delay of 10 to 30 s
    (s2n's "blinding"), so on a timeout the transport probes the TLS handshake with :mod:`ssl`
    and the same context; ``probe`` is what that raised, if anything.
    """
    if isinstance(probe, ssl.SSLCertVerificationError):
        return TLSError(
            f"the server certificate of {host}:{port} failed verification "
            f"({probe.verify_message}); check root_ca_path (AmazonRootCA1.pem for AWS IoT, the "
            "emulator's ca.pem locally) and that the endpoint is the host name the certificate "
            "was issued for"
        )
    return ConnectError(
        f"{host}:{port} sent no CONNACK within the connect timeout ({timeout:g} s); is it an "
        "MQTT broker, and is the port the TLS one when TLS is on?"
    )


def lost(exc: BaseException | str | None, keep_alive: int = 0) -> ConnectError:
    """An established connection ended: ``exc`` is awscrt's error, or how it ended, in words."""
    if exc is None or isinstance(exc, str):
        return ConnectError(f"connection lost: {exc or 'the broker closed it'}")
    name = error_name(exc)
    if name == _PING_TIMEOUT:
        return ConnectError(
            f"connection lost: no answer to the keep-alive ping within {keep_alive / 2:g} s "
            f"(keep-alive {keep_alive} s): the link is half-open"
        )
    return ConnectError(f"connection lost: {exc}")


def tls_setup(exc: BaseException, cert_path: str, key_path: str) -> ConfigError:
    """awscrt could not build a TLS context from the certificate files."""
    return ConfigError(
        f"cert_path/key_path: awscrt refused the certificate {cert_path} with key {key_path} "
        f"({error_name(exc)}); regenerate the pair"
    )
