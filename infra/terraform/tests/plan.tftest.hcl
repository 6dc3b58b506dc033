# `terraform test` with a mocked AWS provider: plans the whole module offline, with no account,
# and checks what the rendered configuration says.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iot_endpoint" {
    defaults = { endpoint_address = "example-ats.iot.eu-west-1.amazonaws.com" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
}

variables {
  environment = "anc-test"
  region      = "eu-west-1"
  thing_names = ["anc-device-001", "anc-device-002"]
  # Any existing file will do: a plan only hashes it.
  lambda_zip_path = "tests/plan.tftest.hcl"
}

run "plan" {
  command = plan

  assert {
    condition     = length(aws_iot_thing.device) == 2
    error_message = "one thing per name"
  }
  assert {
    condition     = strcontains(aws_iot_policy.device.policy, "arn:aws:iot:eu-west-1:123456789012:client/$${iot:Connection.Thing.ThingName}")
    error_message = "the device policy is rendered with the region, the account and the thing-name policy variable"
  }
  assert {
    condition     = aws_iot_topic_rule.emergency_to_lambda.sql == "SELECT *, timestamp() AS received_at FROM 'anc/devices/+/emergency' WHERE is_emergency = true AND device_id = topic(3)"
    error_message = "the emergency rule SQL is the one-line form of rules/emergency_to_lambda.sql"
  }
  assert {
    condition     = strcontains(aws_iot_topic_rule.telemetry_to_dynamodb.sql, "+ 2592000 AS expires_at")
    error_message = "the TTL of 30 days is rendered into the telemetry SQL"
  }
  assert {
    condition = alltrue([
      for rule in [aws_iot_topic_rule.telemetry_to_dynamodb, aws_iot_topic_rule.telemetry_to_s3, aws_iot_topic_rule.emergency_to_lambda] :
      length(rule.error_action) == 1
    ])
    error_message = "every rule has an error action"
  }
  assert {
    condition     = aws_lambda_permission.iot_invokes_emergency_handler.principal == "iot.amazonaws.com"
    error_message = "IoT may invoke the emergency Lambda"
  }
  assert {
    condition     = output.iot_data_endpoint == "example-ats.iot.eu-west-1.amazonaws.com"
    error_message = "the ATS endpoint is an output"
  }
  assert {
    condition     = aws_iot_provisioning_template.fleet.name == "anc-test-fleet" && aws_iot_provisioning_template.fleet.type == "FLEET_PROVISIONING"
    error_message = "one fleet provisioning template, named after the environment"
  }
  assert {
    condition     = strcontains(aws_iot_policy.claim.policy, "topic/$aws/provisioning-templates/anc-test-fleet/provision/json*") && !strcontains(aws_iot_policy.claim.policy, "anc/telemetry")
    error_message = "the claim policy allows the provisioning topics of the fleet template, and no device topic"
  }
  assert {
    condition     = jsondecode(aws_iot_provisioning_template.fleet.template_body).Resources.policy.Properties.PolicyName == "anc-test-device"
    error_message = "a provisioned certificate gets the device policy"
  }
  assert {
    condition     = aws_iam_role_policy_attachment.provisioning.policy_arn == "arn:aws:iam::aws:policy/service-role/AWSIoTThingsRegistration"
    error_message = "the provisioning role may register things and nothing more"
  }
}

run "rejects_bad_thing_name" {
  command = plan

  variables {
    thing_names = ["bad/name"]
  }

  expect_failures = [var.thing_names]
}
