//! The gateway: listeners, delivery to MQTT subscribers (its own for QoS 0 in clean sessions, rumqttd's router
//! for the rest), the rules, the sink into the store (see
//! [`crate::sink`]), and their lifecycle.
//!
//! [`start`] checks everything that can be checked before a client connects, and fails with a clear error
//! otherwise: every rule parses, every stream exists (or is created when `create_missing_streams_shards > 0`),
//! the users' password hashes parse, TLS files load, and every listener's address can be bound (rumqttd's own
//! listeners only log a bind error; here a port in use is a startup failure). It returns a [`GatewayHandle`]
//! with the bound addresses, live [`Stats`], and `shutdown`.
//!
//! rumqttd's `Router` runs on its own OS thread, as rumqttd does; connections are tokio tasks (see
//! [`crate::connection`]). The router thread stays parked after shutdown (rumqttd offers no way to stop it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshet_storage::{RECORD_BYTES_MAX_DEFAULT, StoreError, StreamName, StreamStore};
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, Router, RouterConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;

use crate::appender::AppendConfig;
use crate::auth::{AuthConfig, Authenticator};
use crate::error::{IngestError, Result};
use crate::fanout::Fanout;
use crate::metrics::{Counters, Stats};
use crate::rules::{RuleConfig, RuleLimits, RuleSet};
use crate::sink::Sink;

/// `[gateway]` in `freshet.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// MQTT listeners (3.1.1 and 5 on each; the protocol is read from CONNECT).
    pub listeners: Vec<ListenerConfig>,
    /// Open client connections at most; more are closed at accept.
    pub max_connections: usize,
    /// Largest MQTT packet accepted, in bytes.
    pub max_packet_bytes: usize,
    /// QoS 1/2 publishes per connection awaiting durability before the gateway stops reading that socket
    /// (announced to MQTT 5 clients as Receive Maximum).
    pub max_inflight: u16,
    /// Time a new connection has to send CONNECT, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Largest payload the rules read; bigger payloads go to the error stream.
    pub payload_bytes_max: usize,
    /// Largest output record (data + partition key); bigger ones go to the error stream.
    pub record_bytes_max: usize,
    /// Default error stream of the rules.
    pub error_stream: String,
    /// Create streams the rules name that do not exist, with this many shards; 0 = fail at startup instead.
    pub create_missing_streams_shards: u32,
    pub auth: AuthConfig,
    pub rules: Vec<RuleConfig>,
    /// The batching appender, used when the store is not the embedded one (see [`crate::sink`]).
    pub append: AppendConfig,
    /// In-memory log of rumqttd's router (what MQTT *subscribers* read from).
    pub router: RouterLimits,
}

impl Default for GatewayConfig {
    /// The local default: anonymous MQTT on 127.0.0.1:1883, no rules.
    fn default() -> Self {
        Self {
            listeners: vec![ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 1883)))],
            max_connections: 10_000,
            max_packet_bytes: RECORD_BYTES_MAX_DEFAULT + 64 * 1024,
            max_inflight: 256,
            connect_timeout_ms: 10_000,
            payload_bytes_max: 256 * 1024,
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            error_stream: "ingest_errors".into(),
            create_missing_streams_shards: 1,
            auth: AuthConfig {
                allow_anonymous: true,
                ..AuthConfig::default()
            },
            rules: Vec::new(),
            append: AppendConfig::default(),
            router: RouterLimits::default(),
        }
    }
}

/// One listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `127.0.0.1:1883`; port 0 picks a free port (see [`GatewayHandle::local_addrs`]).
    pub addr: SocketAddr,
    /// MQTT over TLS when set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// MQTT over WebSocket (binary frames, subprotocol `mqtt`; any path); with `tls`, WebSocket over TLS.
    #[serde(default)]
    pub websocket: bool,
}

impl ListenerConfig {
    pub fn tcp(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            websocket: false,
        }
    }
}

/// PEM files of a TLS listener (rustls; TLS 1.2 and 1.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Delivery to MQTT subscribers: bounds of rumqttd's in-memory log per subscription filter, and of the
/// gateway's own direct delivery (see [`crate::fanout`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterLimits {
    pub segment_bytes_max: usize,
    pub segment_count_max: usize,
    /// Publishes forwarded to one QoS 0 subscriber per router sweep.
    pub outgoing_packets_max: u64,
    /// Bytes of publishes waiting for one direct subscriber's socket; beyond them its publishes are dropped
    /// and counted (`freshet_ingest_subscriber_dropped_total`).
    pub subscriber_buffer_bytes: usize,
}

impl Default for RouterLimits {
    fn default() -> Self {
        Self {
            segment_bytes_max: 1024 * 1024,
            segment_count_max: 10,
            outgoing_packets_max: 200,
            subscriber_buffer_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Makes a rumqttd local link for a client id (blocking: it waits for the router's answer).
type LinkFactory =
    Arc<dyn Fn(&str, bool) -> std::result::Result<(LinkTx, LinkRx, Notification), String> + Send + Sync>;

/// A live connection: its serial, the sender that tells it to go, and a flag it raises when gone.
type LiveConnection = (u64, oneshot::Sender<()>, watch::Receiver<bool>);

/// Connections with the same client id: the newer one takes over the session.
#[derive(Default)]
pub(crate) struct Takeover {
    next: Mutex<u64>,
    live: Mutex<HashMap<String, LiveConnection>>,
}

impl Takeover {
    /// Register a connection; an older one with the same client id is told to go and awaited (up to 2 s).
    pub(crate) async fn register(
        &self,
        client_id: &str,
        kick: oneshot::Sender<()>,
        done: watch::Receiver<bool>,
    ) -> u64 {
        let serial = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        let old = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client_id.to_string(), (serial, kick, done));
        if let Some((_, old_kick, mut old_done)) = old {
            let _ = old_kick.send(());
            let _ = tokio::time::timeout(Duration::from_secs(2), old_done.wait_for(|d| *d)).await;
        }
        serial
    }

    pub(crate) fn unregister(&self, client_id: &str, serial: u64) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.get(client_id).is_some_and(|(s, _, _)| *s == serial) {
            live.remove(client_id);
        }
    }
}

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) rules: RuleSet,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) sink: Sink,
    pub(crate) counters: Arc<Counters>,
    pub(crate) links: LinkFactory,
    pub(crate) fanout: Fanout,
    pub(crate) takeover: Takeover,
}

/// A running gateway.
pub struct GatewayHandle {
    addrs: Vec<SocketAddr>,
    counters: Arc<Counters>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shared: Option<Arc<Shared>>,
    batcher: Option<tokio::task::JoinHandle<()>>,
    connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl GatewayHandle {
    /// The bound address of each listener, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Stop accepting, close connections (acknowledging what became durable, after waiting for what they had
    /// queued), write out the appender's queue when there is one, and return.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        while self.tasks.join_next().await.is_some() {}
        {
            let mut conns = self.connections.lock().await;
            while conns.join_next().await.is_some() {}
        }
        self.shared.take();
        if let Some(b) = self.batcher.take() {
            let _ = b.await;
        }
    }
}

/// Start the gateway (see the module docs for what is checked first).
pub async fn start(config: GatewayConfig, store: Arc<dyn StreamStore>) -> Result<GatewayHandle> {
    if config.listeners.is_empty() {
        return Err(IngestError::Config("no listeners".into()));
    }
    if config.max_packet_bytes < 1024 || config.max_inflight == 0 || config.max_connections == 0 {
        return Err(IngestError::Config(
            "max_packet_bytes must be >= 1024, max_inflight and max_connections > 0".into(),
        ));
    }
    let error_stream = StreamName::new(config.error_stream.clone())
        .map_err(|e| IngestError::Config(format!("error_stream: {e}")))?;
    let rules = RuleSet::new(
        &config.rules,
        &error_stream,
        RuleLimits {
            payload_bytes_max: config.payload_bytes_max,
            record_bytes_max: config.record_bytes_max,
        },
    )?;
    let auth = Arc::new(Authenticator::new(&config.auth)?);
    let mut streams = rules.streams();
    if !streams.contains(&error_stream) {
        streams.push(error_stream.clone());
    }
    for stream in &streams {
        match store.describe_stream(stream).await {
            Ok(_) => {}
            Err(StoreError::StreamNotFound(_)) if config.create_missing_streams_shards > 0 => {
                match store
                    .create_stream(stream, config.create_missing_streams_shards)
                    .await
                {
                    Ok(()) | Err(StoreError::StreamExists(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(StoreError::StreamNotFound(_)) => {
                return Err(IngestError::Config(format!(
                    "stream {stream} (named by a rule) does not exist"
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }

    let mut bound = Vec::new();
    for l in &config.listeners {
        let tls = match &l.tls {
            Some(t) => Some(tls_acceptor(t)?),
            None => None,
        };
        let listener = TcpListener::bind(l.addr)
            .await
            .map_err(|source| IngestError::Bind { addr: l.addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| IngestError::Bind { addr: l.addr, source })?;
        bound.push((listener, addr, tls, l.websocket));
    }

    let router = Router::new(
        0,
        RouterConfig {
            max_connections: config.max_connections + 16,
            max_outgoing_packet_count: config.router.outgoing_packets_max.max(1),
            max_segment_size: config.router.segment_bytes_max.max(1024),
            max_segment_count: config.router.segment_count_max.max(1),
            ..RouterConfig::default()
        },
    );
    let router_tx = router.spawn();
    let links: LinkFactory = Arc::new(move |client_id: &str, clean: bool| {
        LinkBuilder::new(client_id, router_tx.clone())
            .clean_session(clean)
            .build()
            .map_err(|e: LinkError| e.to_string())
    });

    let counters = Arc::new(Counters::default());
    let fanout = Fanout::new(config.router.subscriber_buffer_bytes, counters.clone());
    let (sink, batcher) = Sink::new(store, config.append.clone(), counters.clone(), &streams);
    let max_connections = config.max_connections;
    let shared = Arc::new(Shared {
        config,
        rules,
        auth,
        sink,
        counters: counters.clone(),
        links,
        fanout,
        takeover: Takeover::default(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(max_connections));
    let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
    let mut tasks = JoinSet::new();
    let mut addrs = Vec::new();
    for (listener, addr, tls, websocket) in bound {
        addrs.push(addr);
        tasks.spawn(accept_loop(
            listener,
            tls,
            websocket,
            shared.clone(),
            permits.clone(),
            shutdown_rx.clone(),
            connections.clone(),
        ));
    }
    tracing::info!(
        ?addrs,
        rules = shared.rules.rules().len(),
        "MQTT gateway listening"
    );
    Ok(GatewayHandle {
        addrs,
        counters,
        shutdown_tx,
        tasks,
        shared: Some(shared),
        batcher,
        connections,
    })
}

/// Run until `shutdown` resolves, then shut down cleanly.
pub async fn run(
    config: GatewayConfig,
    store: Arc<dyn StreamStore>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let handle = start(config, store).await?;
    shutdown.await;
    handle.shutdown().await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    websocket: bool,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: log and go on after a pause.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.counters.refused("max_connections");
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let mut conns = connections.lock().await;
        // Reap finished connections so the set stays as small as the live ones.
        while conns.try_join_next().is_some() {}
        conns.spawn(async move {
            let _permit = permit;
            let timeout = Duration::from_millis(shared.config.connect_timeout_ms);
            match tls {
                None => serve_maybe_ws(socket, websocket, shared, shutdown).await,
                Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => serve_maybe_ws(stream, websocket, shared, shutdown).await,
                    Ok(Err(e)) => {
                        shared.counters.refused("tls");
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => shared.counters.refused("tls"),
                },
            }
        });
    }
}

/// Serve a connection, after a WebSocket handshake when the listener is a WebSocket one.
async fn serve_maybe_ws<S>(stream: S, websocket: bool, shared: Arc<Shared>, shutdown: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if !websocket {
        return crate::connection::serve(stream, shared, shutdown).await;
    }
    let timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    let limit = shared.config.max_packet_bytes + 1024;
    match tokio::time::timeout(timeout, crate::websocket::accept(stream, limit)).await {
        Ok(Ok(pipe)) => crate::connection::serve(pipe, shared, shutdown).await,
        Ok(Err(e)) => {
            shared.counters.refused("websocket");
            tracing::info!(error = %e, "WebSocket handshake failed");
        }
        Err(_) => shared.counters.refused("websocket"),
    }
}

fn tls_acceptor(config: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| IngestError::Tls(format!("certificates in {}: {e}", config.cert_path.display())))?;
    if certs.is_empty() {
        return Err(IngestError::Tls(format!(
            "no certificate in {}",
            config.cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_path)
        .map_err(|e| IngestError::Tls(format!("private key in {}: {e}", config.key_path.display())))?;
    let server =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| IngestError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| IngestError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}
