"""Interop: AWS's own ``awsiot.iotjobs.IotJobsClient`` runs the Jobs workflow on the emulator.

The client (awsiotsdk over awscrt, MQTT 3.1.1 over TLS with the device certificate) is used
exactly as AWS's jobs sample uses it: subscribe to next-job-changed events and to the replies,
get the pending executions, start the next one, report progress, succeed. Its callbacks run on
awscrt's threads; they hand what they receive to the test through a thread-safe queue
(``awsiot_device.Events``).
"""

from __future__ import annotations

import anyio
from awscrt import mqtt
from awsiot import iotjobs
from awsiot_device import TIMEOUT, Events, awsiot_connection, wait

from ancsync.emulator.server import Emulator

THING = "anc-device-001"


async def test_aws_iot_jobs_client_runs_the_workflow(emulator: Emulator) -> None:
    connection = awsiot_connection(emulator, THING, clean_session=True)
    events = Events()
    qos = mqtt.QoS.AT_LEAST_ONCE
    with anyio.fail_after(TIMEOUT * 4):
        await wait(connection.connect())
        try:
            jobs = iotjobs.IotJobsClient(connection)
            subscriptions = [
                jobs.subscribe_to_next_job_execution_changed_events(
                    iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=THING),
                    qos,
                    events.on("next"),
                ),
                jobs.subscribe_to_get_pending_job_executions_accepted(
                    iotjobs.GetPendingJobExecutionsSubscriptionRequest(thing_name=THING),
                    qos,
                    events.on("pending"),
                ),
                jobs.subscribe_to_start_next_pending_job_execution_accepted(
                    iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=THING),
                    qos,
                    events.on("started"),
                ),
                jobs.subscribe_to_update_job_execution_accepted(
                    iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=THING, job_id="+"),
                    qos,
                    events.on("updated"),
                ),
                jobs.subscribe_to_update_job_execution_rejected(
                    iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=THING, job_id="+"),
                    qos,
                    events.on("update-rejected"),
                ),
            ]
            for future, _topic in subscriptions:
                await wait(future)

            await emulator.jobs.create_job("nm-7", [THING], {"operation": "update_noise_model"})
            upcoming = await events.received("next")
            assert upcoming.execution.job_id == "nm-7"
            assert upcoming.execution.job_document == {"operation": "update_noise_model"}

            await wait(
                jobs.publish_get_pending_job_executions(
                    iotjobs.GetPendingJobExecutionsRequest(thing_name=THING, client_token="p1"),
                    qos,
                )
            )
            pending = await events.received("pending")
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
            started = await events.received("started")
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
                updated = await events.received("updated")
                assert updated.execution_state.status == status
                version = updated.execution_state.version_number

            stale = iotjobs.UpdateJobExecutionRequest(
                thing_name=THING, job_id="nm-7", status="SUCCEEDED", expected_version=1
            )
            await wait(jobs.publish_update_job_execution(stale, qos))
            rejected = await events.received("update-rejected")
            assert rejected.code == "InvalidStateTransition"
        finally:
            await wait(connection.disconnect())
    assert emulator.jobs.describe_job("nm-7")["executions"][THING]["status"] == "SUCCEEDED"
