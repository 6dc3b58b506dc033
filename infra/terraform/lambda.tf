# The hashicorp/archive provider is not available offline, so the zip is built outside Terraform
# by infra/lambda/package.py (deterministic: same sources, same bytes, no spurious updates).

resource "aws_cloudwatch_log_group" "emergency_handler" {
  name              = "/aws/lambda/${local.prefix}-emergency-handler"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_function" "emergency_handler" {
  function_name    = "${local.prefix}-emergency-handler"
  description      = "Records each emergency once, notifies SNS and acknowledges to the device"
  role             = aws_iam_role.emergency_handler.arn
  runtime          = "python3.12"
  handler          = "handler.handle"
  filename         = local.lambda_zip_path
  source_code_hash = filebase64sha256(local.lambda_zip_path)
  timeout          = 10
  memory_size      = 128

  environment {
    variables = {
      EMERGENCY_TABLE     = aws_dynamodb_table.emergencies.name
      EMERGENCY_TOPIC_ARN = aws_sns_topic.emergencies.arn
      IOT_DATA_ENDPOINT   = "https://${data.aws_iot_endpoint.data.endpoint_address}"
    }
  }

  depends_on = [aws_cloudwatch_log_group.emergency_handler, aws_iam_role_policy.emergency_handler]
}

resource "aws_sns_topic" "emergencies" {
  name = "${local.prefix}-emergencies"
}

resource "aws_sns_topic_subscription" "emergency_email" {
  for_each = toset(var.emergency_emails)

  topic_arn = aws_sns_topic.emergencies.arn
  protocol  = "email"
  endpoint  = each.value
}
