# Telemetry batches, one item per batch. The key (device_id, msg_id) makes a QoS 1 redelivery
# overwrite its own item instead of adding a duplicate.
resource "aws_dynamodb_table" "telemetry" {
  name         = "${local.prefix}-telemetry"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "device_id"
  range_key    = "msg_id"

  attribute {
    name = "device_id"
    type = "S"
  }

  attribute {
    name = "msg_id"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }
}

# Emergency events, written once per event_id by the emergency Lambda (conditional put).
resource "aws_dynamodb_table" "emergencies" {
  name         = "${local.prefix}-emergencies"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "device_id"
  range_key    = "event_id"

  attribute {
    name = "device_id"
    type = "S"
  }

  attribute {
    name = "event_id"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }
}

# Raw archive of every telemetry batch and emergency, as the device sent it.
resource "aws_s3_bucket" "archive" {
  bucket = "${local.prefix}-archive-${local.account_id}"
}

resource "aws_s3_bucket_public_access_block" "archive" {
  bucket                  = aws_s3_bucket.archive.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "archive" {
  bucket = aws_s3_bucket.archive.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "archive" {
  bucket = aws_s3_bucket.archive.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "archive" {
  count  = var.archive_expiration_days > 0 ? 1 : 0
  bucket = aws_s3_bucket.archive.id

  rule {
    id     = "expire-archive"
    status = "Enabled"

    filter {}

    expiration {
      days = var.archive_expiration_days
    }
  }
}

# Deny plain-HTTP access: the archive is only ever read and written over TLS.
resource "aws_s3_bucket_policy" "archive_tls_only" {
  bucket = aws_s3_bucket.archive.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyInsecureTransport"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.archive.arn, "${aws_s3_bucket.archive.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
}
