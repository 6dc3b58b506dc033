# Every rule's error action writes here; a metric filter counts the entries and an alarm fires
# on the first one, so a rule that stops matching its payloads cannot fail silently.

resource "aws_cloudwatch_log_group" "rule_errors" {
  name              = "/aws/iot/${local.prefix}/rule-errors"
  retention_in_days = var.log_retention_days
}

resource "aws_cloudwatch_log_metric_filter" "rule_errors" {
  name           = "${local.prefix}-rule-errors"
  log_group_name = aws_cloudwatch_log_group.rule_errors.name
  pattern        = ""

  metric_transformation {
    name          = "RuleErrors"
    namespace     = "ancsync/${local.prefix}"
    value         = "1"
    default_value = "0"
  }
}

resource "aws_sns_topic" "alarms" {
  name = "${local.prefix}-alarms"
}

resource "aws_sns_topic_subscription" "alarm_email" {
  for_each = toset(var.alarm_emails)

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = each.value
}

resource "aws_cloudwatch_metric_alarm" "rule_errors" {
  alarm_name          = "${local.prefix}-iot-rule-errors"
  alarm_description   = "An IoT rule action failed; see ${aws_cloudwatch_log_group.rule_errors.name}"
  namespace           = "ancsync/${local.prefix}"
  metric_name         = "RuleErrors"
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "emergency_handler_errors" {
  alarm_name          = "${local.prefix}-emergency-handler-errors"
  alarm_description   = "The emergency Lambda failed; see ${aws_cloudwatch_log_group.emergency_handler.name}"
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.emergency_handler.function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}
