SELECT device_id, count(*) AS n, round(avg(temp), 6) AS avg_temp, min(temp) AS min_temp, max(temp) AS max_temp,
       sum(humidity) AS humidity_sum
FROM telemetry GROUP BY device_id ORDER BY device_id
