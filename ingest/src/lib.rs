//! freshet-ingest: the MQTT gateway (embedded rumqttd), device auth, and the IoT-style rules engine that turns
//! publishes into stream records.
//!
//! - [`rules`]: `SELECT ... FROM '<topic filter>' WHERE ...` rules, output records with lineage, error records.

pub mod error;
pub mod rules;

pub use error::{IngestError, Result};
pub use rules::{RuleConfig, RuleSet};
