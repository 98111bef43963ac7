SELECT count(*) AS rows, count(temp) AS temps, count(DISTINCT device_id) AS devices FROM telemetry
