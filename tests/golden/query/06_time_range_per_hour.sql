SELECT date_trunc('hour', ts) AS hour, count(*) AS n, max(humidity) AS max_humidity
FROM telemetry
WHERE ts >= TIMESTAMP '2025-11-21T10:00:00Z' AND ts < TIMESTAMP '2025-11-21T14:00:00Z'
GROUP BY 1 ORDER BY 1
