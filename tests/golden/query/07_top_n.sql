SELECT device_id, ts, temp FROM telemetry WHERE temp IS NOT NULL ORDER BY temp DESC, ts ASC LIMIT 5
