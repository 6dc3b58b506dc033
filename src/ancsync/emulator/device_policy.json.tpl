{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "ConnectAsOwnThing",
      "Effect": "Allow",
      "Action": "iot:Connect",
      "Resource": "arn:aws:iot:${region}:${account_id}:client/$${iot:Connection.Thing.ThingName}"
    },
    {
      "Sid": "PublishOwnTopics",
      "Effect": "Allow",
      "Action": "iot:Publish",
      "Resource": [
        "arn:aws:iot:${region}:${account_id}:topic/anc/devices/$${iot:Connection.Thing.ThingName}/status",
        "arn:aws:iot:${region}:${account_id}:topic/anc/devices/$${iot:Connection.Thing.ThingName}/emergency",
        "arn:aws:iot:${region}:${account_id}:topic/anc/telemetry/$${iot:Connection.Thing.ThingName}/anc",
        "arn:aws:iot:${region}:${account_id}:topic/anc/telemetry/$${iot:Connection.Thing.ThingName}/audio",
        "arn:aws:iot:${region}:${account_id}:topic/anc/telemetry/$${iot:Connection.Thing.ThingName}/system",
        "arn:aws:iot:${region}:${account_id}:topic/anc/telemetry/$${iot:Connection.Thing.ThingName}/errors",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/shadow/get",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/shadow/update",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/shadow/delete",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/shadow/name/*/get",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/shadow/name/*/update",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/shadow/name/*/delete",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/get",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/start-next",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/*/get",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/*/update"
      ]
    },
    {
      "Sid": "RetainOwnStatus",
      "Effect": "Allow",
      "Action": "iot:RetainPublish",
      "Resource": "arn:aws:iot:${region}:${account_id}:topic/anc/devices/$${iot:Connection.Thing.ThingName}/status"
    },
    {
      "Sid": "SubscribeOwnTopics",
      "Effect": "Allow",
      "Action": "iot:Subscribe",
      "Resource": [
        "arn:aws:iot:${region}:${account_id}:topicfilter/anc/devices/$${iot:Connection.Thing.ThingName}/commands",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/things/$${iot:Connection.Thing.ThingName}/shadow/*",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/notify",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/notify-next",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/get/*",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/start-next/*",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/*/get/*",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/*/update/*"
      ]
    },
    {
      "Sid": "ReceiveOwnTopics",
      "Effect": "Allow",
      "Action": "iot:Receive",
      "Resource": [
        "arn:aws:iot:${region}:${account_id}:topic/anc/devices/$${iot:Connection.Thing.ThingName}/commands",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/shadow/*",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/notify",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/notify-next",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/get/*",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/start-next/*",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/*/get/*",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/things/$${iot:Connection.Thing.ThingName}/jobs/*/update/*"
      ]
    },
    {
      "Sid": "RotateOwnCertificate",
      "Effect": "Allow",
      "Action": ["iot:Publish", "iot:Receive"],
      "Resource": [
        "arn:aws:iot:${region}:${account_id}:topic/$aws/certificates/create/json*",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/certificates/create-from-csr/json*",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/provisioning-templates/*/provision/json*"
      ]
    },
    {
      "Sid": "SubscribeCertificateRotationReplies",
      "Effect": "Allow",
      "Action": "iot:Subscribe",
      "Resource": [
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/certificates/create/json*",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/certificates/create-from-csr/json*",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/provisioning-templates/*/provision/json*"
      ]
    }
  ]
}
