# Fleet provisioning by claim: the devices leave the factory with one shared claim certificate
# (made and attached to the claim policy out of band, e.g. `aws iot create-keys-and-certificate`
# + `aws iot attach-policy --policy-name <claim_policy_name>`), and get their own identity on
# first boot through this template (`ancsync provision --claim`, `provision_by_claim`).

locals {
  # The same file the emulator's claim certificate is checked against.
  claim_policy_template = "${path.module}/../../src/ancsync/emulator/claim_policy.json.tpl"
  fleet_template_name   = "${local.prefix}-fleet"
}

resource "aws_iot_policy" "claim" {
  name = "${local.prefix}-claim"
  policy = templatefile(local.claim_policy_template, {
    region     = var.region
    account_id = local.account_id
    template   = local.fleet_template_name
  })
}

# What RegisterThing does on the template's behalf: create the thing, activate the certificate,
# attach the device policy. Assumed by IoT only, from this account.
resource "aws_iam_role" "provisioning" {
  name               = "${local.prefix}-fleet-provisioning"
  assume_role_policy = data.aws_iam_policy_document.iot_assume.json
}

resource "aws_iam_role_policy_attachment" "provisioning" {
  role       = aws_iam_role.provisioning.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSIoTThingsRegistration"
}

resource "aws_iot_provisioning_template" "fleet" {
  name                  = local.fleet_template_name
  description           = "ANC devices: thing anc-<SerialNumber> with the device policy"
  provisioning_role_arn = aws_iam_role.provisioning.arn
  enabled               = true
  type                  = "FLEET_PROVISIONING"

  template_body = jsonencode({
    Parameters = {
      SerialNumber                = { Type = "String" }
      Model                       = { Type = "String", Default = "anc-1" }
      "AWS::IoT::Certificate::Id" = { Type = "String" }
    }
    Resources = {
      thing = {
        Type = "AWS::IoT::Thing"
        Properties = {
          ThingName        = { "Fn::Join" = ["", ["anc-", { Ref = "SerialNumber" }]] }
          ThingTypeName    = aws_iot_thing_type.anc_device.name
          AttributePayload = { model = { Ref = "Model" } }
        }
        OverrideSettings = {
          AttributePayload = "MERGE"
          ThingTypeName    = "REPLACE"
          ThingGroups      = "DO_NOTHING"
        }
      }
      certificate = {
        Type = "AWS::IoT::Certificate"
        Properties = {
          CertificateId = { Ref = "AWS::IoT::Certificate::Id" }
          Status        = "Active"
        }
        OverrideSettings = { Status = "REPLACE" }
      }
      policy = {
        Type       = "AWS::IoT::Policy"
        Properties = { PolicyName = aws_iot_policy.device.name }
      }
    }
  })
}
