SELEC device_id FROM telemetry
