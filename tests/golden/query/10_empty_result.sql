SELECT device_id, temp FROM telemetry WHERE device_id = 'no-such-device'
