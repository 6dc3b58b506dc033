variable "environment" {
  description = "Prefix of every resource name, e.g. \"anc-dev\" or \"anc-prod\"."
  type        = string

  validation {
    # Lower case because it becomes part of the S3 bucket name.
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.environment))
    error_message = "environment must be 2 to 31 characters of lower-case letters, digits and '-', starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the IoT endpoint and every resource."
  type        = string
  default     = "us-east-1"
}

variable "thing_names" {
  description = "IoT things to create. The device id equals the thing name and the MQTT client id."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for name in var.thing_names : can(regex("^[a-zA-Z0-9:_-]{1,128}$", name))])
    error_message = "Each thing name must be 1 to 128 characters of letters, digits, ':', '_' and '-'."
  }
}

variable "tags" {
  description = "Tags added to every resource (on top of Project and Environment)."
  type        = map(string)
  default     = {}
}

variable "lambda_zip_path" {
  description = "Zip of infra/lambda/emergency_handler, built by `python infra/lambda/package.py`. Defaults to infra/lambda/dist/emergency_handler.zip."
  type        = string
  default     = null
}

variable "telemetry_ttl_days" {
  description = "Days a telemetry batch stays in DynamoDB before TTL deletes it (S3 keeps the raw archive)."
  type        = number
  default     = 30

  validation {
    condition     = var.telemetry_ttl_days >= 1
    error_message = "telemetry_ttl_days must be at least 1."
  }
}

variable "archive_expiration_days" {
  description = "Days the raw S3 archive keeps an object; 0 keeps objects forever."
  type        = number
  default     = 0
}

variable "log_retention_days" {
  description = "Retention of the rule-error and Lambda log groups."
  type        = number
  default     = 30
}

variable "emergency_emails" {
  description = "Email addresses subscribed to emergency notifications (each must confirm the subscription)."
  type        = list(string)
  default     = []
}

variable "alarm_emails" {
  description = "Email addresses subscribed to the rule-error and Lambda-error alarms."
  type        = list(string)
  default     = []
}
