SELECT *
FROM 'anc/telemetry/+/+'
WHERE device_id = topic(3) AND kind = topic(4)
