SELECT status, count(*) AS n, count(*) FILTER (WHERE temp IS NULL) AS null_temps, median(humidity) AS median_humidity
FROM telemetry GROUP BY status ORDER BY status
