SELECT (SELECT count(*) FROM telemetry@v0) AS v0, (SELECT count(*) FROM "telemetry@v1") AS v1,
       (SELECT count(*) FROM telemetry) AS latest
