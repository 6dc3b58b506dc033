"""Interop: AWS's own ``awsiot.iotjobs.IotJobsClient`` runs the Jobs workflow on the emulator.

The client (awsiotsdk over awscrt, MQTT 3.1.1 over TLS with the device certificate) is used
exactly as AWS's jobs sample uses it: subscribe to next-job-changed events and to the replies,
get the pending executions, start the next one, report progress, succeed. Its callbacks run on
awscrt's threads; they hand what they receive to the test through a thread-safe queue.
"""

from __future__ import annotations

import queue
from concurrent.futures import Future
from typing import Any

import anyio
from awscrt import mqtt
from awsiot import iotjobs, mqtt_connection_builder

from ancsync.emulator.server import Emulator

THING = "anc-device-001"
TIMEOUT = 15


async def wait(future: Future[Any]) -> Any:
    return await anyio.to_thread.run_sync(future.result, TIMEOUT)


async def received(events: queue.Queue[tuple[str, Any]], kind: str) -> Any:
    while True:
        got, value = await anyio.to_thread.run_sync(events.get, True, TIMEOUT)
        if got == kind:
            return value


async def test_aws_iot_jobs_client_runs_the_workflow(emulator: Emulator) -> None:
    device = emulator.certs.device(THING)
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="127.0.0.1",
        port=emulator.port,
        cert_filepath=str(device.cert),
        pri_key_filepath=str(device.key),
        ca_filepath=str(emulator.certs.ca),
        client_id=THING,
        clean_session=True,
        keep_alive_secs=30,
    )
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def on(kind: str) -> Any:
        return lambda value: events.put((kind, value))

    qos = mqtt.QoS.AT_LEAST_ONCE
    with anyio.fail_after(TIMEOUT * 4):
        await wait(connection.connect())
        try:
            jobs = iotjobs.IotJobsClient(connection)
            subscriptions = [
                jobs.subscribe_to_next_job_execution_changed_events(
                    iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=THING),
                    qos,
                    on("next"),
                ),
                jobs.subscribe_to_get_pending_job_executions_accepted(
                    iotjobs.GetPendingJobExecutionsSubscriptionRequest(thing_name=THING),
                    qos,
                    on("pending"),
                ),
                jobs.subscribe_to_start_next_pending_job_execution_accepted(
                    iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=THING),
                    qos,
                    on("started"),
                ),
                jobs.subscribe_to_update_job_execution_accepted(
                    iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=THING, job_id="+"),
                    qos,
                    on("updated"),
                ),
                jobs.subscribe_to_update_job_execution_rejected(
                    iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=THING, job_id="+"),
                    qos,
                    on("update-rejected"),
                ),
            ]
            for future, _topic in subscriptions:
                await wait(future)

            await emulator.jobs.create_job("nm-7", [THING], {"operation": "update_noise_model"})
            upcoming = await received(events, "next")
            assert upcoming.execution.job_id == "nm-7"
            assert upcoming.execution.job_document == {"operation": "update_noise_model"}

            await wait(
                jobs.publish_get_pending_job_executions(
                    iotjobs.GetPendingJobExecutionsRequest(thing_name=THING, client_token="p1"),
                    qos,
                )
            )
            pending = await received(events, "pending")
            assert pending.client_token == "p1"
            assert [summary.job_id for summary in pending.queued_jobs] == ["nm-7"]

            await wait(
                jobs.publish_start_next_pending_job_execution(
                    iotjobs.StartNextPendingJobExecutionRequest(
                        thing_name=THING, step_timeout_in_minutes=10
                    ),
                    qos,
                )
            )
            started = await received(events, "started")
            assert started.execution.status == "IN_PROGRESS"
            version = started.execution.version_number

            for status, details in (("IN_PROGRESS", {"step": "download"}), ("SUCCEEDED", None)):
                await wait(
                    jobs.publish_update_job_execution(
                        iotjobs.UpdateJobExecutionRequest(
                            thing_name=THING,
                            job_id="nm-7",
                            status=status,
                            status_details=details,
                            expected_version=version,
                            include_job_execution_state=True,
                        ),
                        qos,
                    )
                )
                updated = await received(events, "updated")
                assert updated.execution_state.status == status
                version = updated.execution_state.version_number

            stale = iotjobs.UpdateJobExecutionRequest(
                thing_name=THING, job_id="nm-7", status="SUCCEEDED", expected_version=1
            )
            await wait(jobs.publish_update_job_execution(stale, qos))
            rejected = await received(events, "update-rejected")
            assert rejected.code == "InvalidStateTransition"
        finally:
            await wait(connection.disconnect())
    assert emulator.jobs.describe_job("nm-7")["executions"][THING]["status"] == "SUCCEEDED"
