# IoT topic rules. The SQL lives in rules/*.sql so tests/infra can check it against the payload
# models; every rule sends failed deliveries to the rule-error log group.

resource "aws_iot_topic_rule" "telemetry_to_dynamodb" {
  name        = "${replace(local.prefix, "-", "_")}_telemetry_to_dynamodb"
  description = "Telemetry batches into DynamoDB, one item per (device_id, msg_id), expiring by TTL"
  enabled     = true
  sql         = local.rule_sql_one_line.telemetry_to_dynamodb
  sql_version = "2016-03-23"

  dynamodbv2 {
    role_arn = aws_iam_role.rule_telemetry_dynamodb.arn

    put_item {
      table_name = aws_dynamodb_table.telemetry.name
    }
  }

  error_action {
    cloudwatch_logs {
      log_group_name = aws_cloudwatch_log_group.rule_errors.name
      role_arn       = aws_iam_role.rule_errors.arn
    }
  }
}

resource "aws_iot_topic_rule" "telemetry_to_s3" {
  name        = "${replace(local.prefix, "-", "_")}_telemetry_to_s3"
  description = "Raw telemetry batches into the S3 archive, keyed by device, kind, date and msg_id"
  enabled     = true
  sql         = local.rule_sql_one_line.telemetry_to_s3
  sql_version = "2016-03-23"

  s3 {
    role_arn    = aws_iam_role.rule_archive_s3.arn
    bucket_name = aws_s3_bucket.archive.bucket
    # A redelivered batch has the same msg_id, so it overwrites its own object.
    key = "telemetry/device_id=$${topic(3)}/kind=$${topic(4)}/date=$${parse_time(\"yyyy-MM-dd\", timestamp(), \"UTC\")}/$${msg_id}.json"
  }

  error_action {
    cloudwatch_logs {
      log_group_name = aws_cloudwatch_log_group.rule_errors.name
      role_arn       = aws_iam_role.rule_errors.arn
    }
  }
}

resource "aws_iot_topic_rule" "emergency_to_lambda" {
  name        = "${replace(local.prefix, "-", "_")}_emergency_to_lambda"
  description = "Emergency events to the emergency Lambda (record, notify, acknowledge) and the S3 archive"
  enabled     = true
  sql         = local.rule_sql_one_line.emergency_to_lambda
  sql_version = "2016-03-23"

  lambda {
    function_arn = aws_lambda_function.emergency_handler.arn
  }

  s3 {
    role_arn    = aws_iam_role.rule_archive_s3.arn
    bucket_name = aws_s3_bucket.archive.bucket
    key         = "emergencies/device_id=$${topic(3)}/date=$${parse_time(\"yyyy-MM-dd\", timestamp(), \"UTC\")}/$${event_id}.json"
  }

  error_action {
    cloudwatch_logs {
      log_group_name = aws_cloudwatch_log_group.rule_errors.name
      role_arn       = aws_iam_role.rule_errors.arn
    }
  }
}

resource "aws_lambda_permission" "iot_invokes_emergency_handler" {
  statement_id   = "AllowIoTRuleInvoke"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.emergency_handler.function_name
  principal      = "iot.amazonaws.com"
  source_arn     = aws_iot_topic_rule.emergency_to_lambda.arn
  source_account = local.account_id
}
