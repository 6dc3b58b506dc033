output "iot_data_endpoint" {
  description = "The ATS data endpoint: IOT_ENDPOINT for every device."
  value       = data.aws_iot_endpoint.data.endpoint_address
}

output "device_policy_name" {
  description = "The IoT policy to attach to device certificates (`ancsync provision --policy`)."
  value       = aws_iot_policy.device.name
}

output "thing_type_name" {
  value = aws_iot_thing_type.anc_device.name
}

output "thing_names" {
  value = [for thing in aws_iot_thing.device : thing.name]
}

output "telemetry_table_name" {
  value = aws_dynamodb_table.telemetry.name
}

output "emergency_table_name" {
  value = aws_dynamodb_table.emergencies.name
}

output "archive_bucket_name" {
  value = aws_s3_bucket.archive.bucket
}

output "emergency_lambda_name" {
  value = aws_lambda_function.emergency_handler.function_name
}

output "emergency_sns_topic_arn" {
  value = aws_sns_topic.emergencies.arn
}

output "rule_error_log_group" {
  value = aws_cloudwatch_log_group.rule_errors.name
}

output "provisioning_template_name" {
  description = "The fleet provisioning template (`ancsync provision --claim --template`)."
  value       = aws_iot_provisioning_template.fleet.name
}

output "claim_policy_name" {
  description = "The IoT policy to attach to the claim certificate: the provisioning topics only."
  value       = aws_iot_policy.claim.name
}
