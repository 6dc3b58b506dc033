"""The operator APIs' clients: the emulator's over MQTT, AWS IoT's through boto3.

On the emulator (Jobs, certificates), each request is a JSON object published on
``{prefix}/{operation}`` with a fresh ``clientToken``; the emulator answers on
``{prefix}/{operation}/accepted`` (``{"result": ...}``) or ``.../rejected`` (``code``,
``message``) with the same token. :class:`EmulatorOperatorApi`
correlates the two; :class:`~ancsync.tools.jobs_operator.EmulatorJobsOperator` and
:class:`~ancsync.tools.certs_operator.EmulatorCertificatesOperator` name the operations.
:class:`AwsOperatorApi` calls boto3's ``iot`` client for their AWS counterparts, with botocore's
errors turned into ancsync's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ancsync.connection import IoTConnection
from ancsync.errors import ConfigError, ConnectError
from ancsync.lifecycle import Component
from ancsync.models import new_id

__all__ = ["AwsOperatorApi", "EmulatorOperatorApi"]


class EmulatorOperatorApi(Component):
    """Requests to one operator API (``prefix``) over an operator :class:`IoTConnection` (not
    started). A rejection raises ``rejected(code, message)``; no answer within ``timeout``
    seconds raises TimeoutError."""

    name = "operator-api"

    def __init__(
        self,
        connection: IoTConnection,
        prefix: str,
        rejected: Callable[[str, str], Exception],
        *,
        timeout: float = 15.0,
    ) -> None:
        super().__init__()
        self._connection = connection
        self._prefix = prefix
        self._rejected = rejected
        self.timeout = timeout
        self._waiting: dict[str, tuple[anyio.Event, list[tuple[str, Any]]]] = {}

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Connect (raising a clear error if that fails); ready once connected."""
        self._connection.subscribe(f"{self._prefix}/+/+", self._on_reply)
        async with anyio.create_task_group() as tg:
            await tg.start(self._connection.run)
            await self._connection.wait_connected(timeout=self.timeout)
            task_status.started()

    def _on_reply(self, topic: str, payload: Any) -> None:
        if isinstance(payload, dict):
            waiter = self._waiting.get(str(payload.get("clientToken")))
            if waiter is not None:
                waiter[1].append((topic.rsplit("/", 1)[-1], payload))
                waiter[0].set()

    async def _call(self, operation: str, body: dict[str, Any]) -> Any:
        """Send ``body`` to ``operation`` and return the accepted reply's ``result``."""
        token = new_id()
        event, answer = anyio.Event(), list[tuple[str, Any]]()
        self._waiting[token] = (event, answer)
        try:
            topic = f"{self._prefix}/{operation}"
            await self._connection.publish(topic, {**body, "clientToken": token})
            with anyio.fail_after(self.timeout):
                await event.wait()
        finally:
            self._waiting.pop(token, None)
        outcome, reply = answer[0]
        if outcome != "accepted":
            raise self._rejected(str(reply.get("code")), str(reply.get("message")))
        return reply["result"]


class AwsOperatorApi(Component):
    """AWS IoT's control plane through boto3's ``iot`` client (``client`` may be given).

    A request AWS refuses raises ``rejected(code, message)`` with AWS's error code; no
    credentials or no region is a :class:`~ancsync.errors.ConfigError`, an unreachable API a
    :class:`~ancsync.errors.ConnectError`, each saying what to do.
    """

    name = "aws-operator-api"

    def __init__(
        self,
        rejected: Callable[[str, str], Exception],
        client: Any | None = None,
        *,
        region: str | None = None,
    ) -> None:
        super().__init__()
        self._rejected = rejected
        if client is None:
            try:
                import boto3
                from botocore.exceptions import NoRegionError
            except ImportError:
                raise ConfigError(
                    "talking to AWS needs boto3: pip install 'ancsync[aws]'"
                ) from None
            try:
                client = boto3.client("iot", region_name=region)
            except NoRegionError:
                raise ConfigError("no AWS region given: pass --region or set AWS_REGION") from None
        self._client = client

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Nothing to connect: boto3 calls AWS per request."""
        task_status.started()

    async def _call(self, method: str, **arguments: Any) -> dict[str, Any]:
        """``client.method(**arguments)`` in a worker thread; its reply without metadata."""
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        call = getattr(self._client, method)
        try:
            reply = await anyio.to_thread.run_sync(lambda: call(**arguments))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise self._rejected(str(error.get("Code")), str(error.get("Message"))) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise ConfigError(
                "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or run `aws configure`"
            ) from None
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise ConnectError(
                f"cannot reach the AWS IoT API ({exc}); check the network and --region"
            ) from None
        reply.pop("ResponseMetadata", None)
        return dict(reply)
