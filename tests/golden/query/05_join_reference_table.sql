SELECT d.site, count(*) AS n, round(avg(t.temp), 6) AS avg_temp
FROM telemetry t JOIN devices d ON t.device_id = d.device_id
GROUP BY d.site ORDER BY d.site
