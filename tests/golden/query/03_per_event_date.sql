SELECT event_date, count(*) AS n, min(ts) AS first, max(ts) AS last FROM telemetry GROUP BY event_date ORDER BY event_date
