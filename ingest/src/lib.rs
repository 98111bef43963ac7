//! freshet-ingest: the MQTT gateway (embedded rumqttd), device auth, and the IoT-style rules engine that turns
//! publishes into stream records.
//!
//! Not built yet: this crate only holds its place in the workspace so the dependency direction
//! (`ingest` → `storage`, never the reverse) is checked from the start. See issue "MQTT gateway".
