# One role per purpose, each allowed exactly one thing on exactly one resource.

data "aws_iam_policy_document" "iot_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["iot.amazonaws.com"]
    }

    # Only this account's rules may use these roles (confused-deputy protection).
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "rule_telemetry_dynamodb" {
  name               = "${local.prefix}-rule-telemetry-dynamodb"
  assume_role_policy = data.aws_iam_policy_document.iot_assume.json
}

resource "aws_iam_role_policy" "rule_telemetry_dynamodb" {
  name = "put-telemetry-items"
  role = aws_iam_role.rule_telemetry_dynamodb.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = "dynamodb:PutItem"
      Resource = aws_dynamodb_table.telemetry.arn
    }]
  })
}

resource "aws_iam_role" "rule_archive_s3" {
  name               = "${local.prefix}-rule-archive-s3"
  assume_role_policy = data.aws_iam_policy_document.iot_assume.json
}

resource "aws_iam_role_policy" "rule_archive_s3" {
  name = "put-archive-objects"
  role = aws_iam_role.rule_archive_s3.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect = "Allow"
      Action = "s3:PutObject"
      Resource = [
        "${aws_s3_bucket.archive.arn}/telemetry/*",
        "${aws_s3_bucket.archive.arn}/emergencies/*",
      ]
    }]
  })
}

resource "aws_iam_role" "rule_errors" {
  name               = "${local.prefix}-rule-errors"
  assume_role_policy = data.aws_iam_policy_document.iot_assume.json
}

resource "aws_iam_role_policy" "rule_errors" {
  name = "write-rule-error-logs"
  role = aws_iam_role.rule_errors.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
      Resource = ["${aws_cloudwatch_log_group.rule_errors.arn}:*"]
    }]
  })
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "emergency_handler" {
  name               = "${local.prefix}-emergency-handler"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role_policy" "emergency_handler" {
  name = "emergency-handler"
  role = aws_iam_role.emergency_handler.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "WriteOwnLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = ["${aws_cloudwatch_log_group.emergency_handler.arn}:*"]
      },
      {
        Sid      = "RecordEventsOnce"
        Effect   = "Allow"
        Action   = ["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem"]
        Resource = aws_dynamodb_table.emergencies.arn
      },
      {
        Sid      = "Notify"
        Effect   = "Allow"
        Action   = "sns:Publish"
        Resource = aws_sns_topic.emergencies.arn
      },
      {
        Sid      = "AcknowledgeToDevice"
        Effect   = "Allow"
        Action   = "iot:Publish"
        Resource = "arn:${local.partition}:iot:${var.region}:${local.account_id}:topic/anc/devices/*/commands"
      },
    ]
  })
}
