SELECT count(*) FROM telemetry@v9
