data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# The ATS endpoint: its server certificate chains to Amazon Root CA 1.
data "aws_iot_endpoint" "data" {
  endpoint_type = "iot:Data-ATS"
}

locals {
  prefix     = var.environment
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # The one source of device permissions, shared with the local emulator's authoriser.
  device_policy_template = "${path.module}/../../src/ancsync/emulator/device_policy.json.tpl"

  lambda_zip_path = coalesce(var.lambda_zip_path, "${path.module}/../lambda/dist/emergency_handler.zip")

  # IoT SQL has no comments and reads cleanest as one line: the .sql files are the source,
  # and tests/infra reads the same files to check them against the payload models.
  rule_sql = {
    telemetry_to_dynamodb = templatefile("${path.module}/rules/telemetry_to_dynamodb.sql", {
      ttl_seconds = var.telemetry_ttl_days * 86400
    })
    telemetry_to_s3     = file("${path.module}/rules/telemetry_to_s3.sql")
    emergency_to_lambda = file("${path.module}/rules/emergency_to_lambda.sql")
  }
  rule_sql_one_line = { for name, sql in local.rule_sql : name => trimspace(replace(sql, "\n", " ")) }
}
