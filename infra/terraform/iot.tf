resource "aws_iot_policy" "device" {
  name = "${local.prefix}-device"
  policy = templatefile(local.device_policy_template, {
    region     = var.region
    account_id = local.account_id
  })
}

resource "aws_iot_thing_type" "anc_device" {
  name = "${local.prefix}-anc-device"

  properties {
    description = "Active-noise-cancelling device running ancsync"
  }
}

resource "aws_iot_thing" "device" {
  for_each = toset(var.thing_names)

  name            = each.value
  thing_type_name = aws_iot_thing_type.anc_device.name
}
