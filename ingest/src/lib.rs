//! freshet-ingest: the MQTT gateway (embedded rumqttd), device auth, and the IoT-style rules engine that turns
//! publishes into stream records. The only crate that talks to rumqttd.
//!
//! ```text
//! client ──TCP/TLS──▶ connection (crate front link, rumqttd codecs) ──rules──▶ appender ──batches──▶ StreamStore
//!                        │  ▲ PUBACK after the records are durable
//!                        └──┴──▶ rumqttd Router (local link per connection) ──▶ MQTT subscribers
//! ```
//!
//! - [`rules`]: `SELECT ... FROM '<topic filter>' WHERE ...` rules, output records with lineage, error records.
//! - [`appender`]: batches bounded by count, bytes and age; bounded queues; retries; tickets.
//! - [`connection`]: one client connection; where acknowledgement and backpressure are decided.
//! - [`auth`]: Argon2 password hashes, per-user/per-client ACLs.
//! - [`websocket`]: MQTT over WebSocket.
//! - [`gateway`]: configuration, startup checks, listeners (TCP, TLS, WebSocket), [`gateway::start`] / [`gateway::run`].
//! - [`metrics`]: the counters and their `metrics` names.
//! - [`bench`]: the MQTT load generator of `freshet bench ingest`.
//!
//! # Acknowledgement and loss
//!
//! A QoS 1 PUBACK (QoS 2 PUBREC) is sent only after every record the publish produced (on target or error
//! streams) was appended durably (the store's `put_records` returned Ok, which for the embedded store means
//! fsynced). If the gateway crashes before that, the client never got a PUBACK and sends the publish again
//! (at-least-once). QoS 0 publishes are queued for the store and counted, never acknowledged by definition.
//!
//! rumqttd 0.20's own remote link cannot do this: its router queues the PUBACK the moment the publish enters its
//! in-memory log, and a local-link subscriber that falls behind the router's bounded segments has its cursor moved
//! forward with only a WARN ("Read cursor start jumped"). Reading publishes through a rumqttd subscription would
//! therefore make PUBACK mean "in memory" and would lose data under load. The gateway instead owns the client side
//! of each connection (parsing with rumqttd's public `protocol` codecs) and hands publishes to rumqttd's router
//! only for MQTT subscribers; the store path never passes through the router's log, so no cursor jump can lose a
//! record bound for the store. Memory is bounded by `max_inflight` per connection, `max_connections`, and the
//! appender's queue; when the store is slow, connections stop reading their sockets (TCP backpressure).
//! MQTT *subscribers* of QoS 0 in clean sessions get publishes from the gateway directly ([`fanout`]); all other
//! subscribers still read from rumqttd's in-memory log, with its usual limits.

pub mod appender;
pub mod auth;
pub mod bench;
pub mod codec;
pub mod connection;
pub mod error;
mod fanout;
pub mod gateway;
pub mod metrics;
pub mod rules;
mod sink;
pub mod websocket;

pub use auth::{AuthConfig, UserConfig, hash_password};
pub use error::{IngestError, Result};
pub use gateway::{GatewayConfig, GatewayHandle, ListenerConfig, TlsConfig, run, start};
pub use metrics::Stats;
pub use rules::{RuleConfig, RuleSet};
