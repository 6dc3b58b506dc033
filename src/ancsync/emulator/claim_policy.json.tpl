{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "ConnectWithAnyClientId",
      "Effect": "Allow",
      "Action": "iot:Connect",
      "Resource": "arn:aws:iot:${region}:${account_id}:client/*"
    },
    {
      "Sid": "ProvisioningRequestsAndReplies",
      "Effect": "Allow",
      "Action": ["iot:Publish", "iot:Receive"],
      "Resource": [
        "arn:aws:iot:${region}:${account_id}:topic/$aws/certificates/create/json*",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/certificates/create-from-csr/json*",
        "arn:aws:iot:${region}:${account_id}:topic/$aws/provisioning-templates/${template}/provision/json*"
      ]
    },
    {
      "Sid": "SubscribeProvisioningReplies",
      "Effect": "Allow",
      "Action": "iot:Subscribe",
      "Resource": [
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/certificates/create/json*",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/certificates/create-from-csr/json*",
        "arn:aws:iot:${region}:${account_id}:topicfilter/$aws/provisioning-templates/${template}/provision/json*"
      ]
    }
  ]
}
