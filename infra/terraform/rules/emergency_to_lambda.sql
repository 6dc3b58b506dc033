SELECT *, timestamp() AS received_at
FROM 'anc/devices/+/emergency'
WHERE is_emergency = true AND device_id = topic(3)
