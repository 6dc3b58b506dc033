SELECT device_id, kind, msg_id, seq, sent_at, records,
       timestamp() AS received_at,
       floor(timestamp() / 1000) + ${ttl_seconds} AS expires_at
FROM 'anc/telemetry/+/+'
WHERE device_id = topic(3) AND kind = topic(4)
