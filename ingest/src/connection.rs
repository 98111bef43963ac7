//! One client connection: the gateway's own "front link" in place of rumqttd's remote link.
//!
//! rumqttd's remote link answers a QoS 1 PUBLISH with PUBACK as soon as the router has it in memory, and gives
//! no hook in between. This link reads and writes the socket itself with rumqttd's codecs, so that:
//!
//! - a QoS 1 PUBACK (QoS 2 PUBREC) is written only once every record the publish produced — on target streams
//!   or error streams — is durable in the store: the records of one socket read are submitted to the
//!   [`Sink`](crate::sink::Sink) together, and the run's [`Durable`] future resolves once they are written and
//!   synced; acknowledgements go out in the order the publishes came in, as MQTT requires;
//! - at most `max_inflight` publishes per connection await durability; beyond that the link stops reading the
//!   socket, so a fast publisher is slowed by TCP backpressure instead of buffered without bound;
//! - authentication and topic ACLs (publish and subscribe) are checked here ([`crate::auth`]);
//! - a publish is also delivered to MQTT subscribers: to QoS 0 and 1 subscriptions of clean sessions by the
//!   gateway itself ([`crate::fanout`]), written into the subscriber's outbox (a PUBACK for one of those, told
//!   apart by its packet id, frees a place in the subscriber's window); to every other subscription through
//!   rumqttd's router (as QoS 0 from the router's point of view), whose SUBSCRIBE, UNSUBSCRIBE and
//!   acknowledgements of its outgoing publishes travel through a rumqttd local link. The gateway answers
//!   UNSUBSCRIBE itself (rumqttd 0.20 sends one UNSUBACK per filter it removed, none for a filter it did not have).
//!
//! Answers to bad input: a malformed packet or one over `max_packet_bytes` closes the connection (MQTT 5:
//! after a DISCONNECT with reason 0x81 Malformed Packet / 0x95 Packet Too Large); a publish the ACL refuses is
//! answered with PUBACK 0x87 Not Authorized (MQTT 5) or closes the connection (MQTT 3.1.1 has no way to say no);
//! a publish whose records could not be made durable gets PUBACK 0x80 Unspecified Error (MQTT 5) or closes the
//! connection without PUBACK (3.1.1), so the client sends it again. Keep-alive 0 is accepted (the spec allows it).
//! The will message is published (through the rules and to subscribers) when the connection ends without DISCONNECT.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use freshet_storage::PUT_RECORDS_MAX;
use futures::FutureExt;
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Packet, PingResp, PubAck,
    PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, Publish, PublishProperties, SubAck,
    Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use crate::auth::{Identity, Refusal};
use crate::codec::{self, Codec, Peek, Version};
use crate::fanout::{Fanout, Outbox, ROUTER_PKID_MAX, Targets};
use crate::gateway::Shared;
use crate::rules::{Applied, Message, TopicCache};
use crate::sink::{Durable, Outcomes, Records};

/// Why a connection ends.
#[derive(Debug)]
enum Close {
    /// Client sent DISCONNECT.
    Graceful,
    /// Anything else (error, timeout, protocol violation, shutdown); the will fires.
    Abrupt(String),
}

/// A publish waiting for its records to be durable before it is acknowledged.
struct Pending {
    pkid: u16,
    qos: u8,
    /// The run its records were submitted in (see [`Conn::batches`]), and their positions in it; an empty range
    /// when the publish produced no record.
    batch: u64,
    records: Range<usize>,
    denied: bool,
}

/// A submitted run of records (one socket read's), not yet durable.
struct Batch {
    serial: u64,
    durable: Durable,
}

/// Runs a connection may have submitted and not yet seen resolve before it stops reading its socket.
const BATCHES_MAX: usize = 1024;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Serve one accepted connection until it ends.
pub(crate) async fn serve<S>(stream: S, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let connect_timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    let connect = tokio::time::timeout(connect_timeout, read_connect(&mut rd, &mut buf, &shared)).await;
    let (codec, packet) = match connect {
        Err(_) => {
            shared.counters.refused("connect_timeout");
            return;
        }
        Ok(Err(ConnectFailure::Close(reason))) => {
            tracing::debug!(reason, "connection closed before CONNECT");
            shared.counters.refused("protocol");
            return;
        }
        Ok(Err(ConnectFailure::Answer(codec, code))) => {
            shared.counters.refused("protocol");
            let _ = write_packet(
                &mut wr,
                &codec,
                Packet::ConnAck(
                    ConnAck {
                        session_present: false,
                        code,
                    },
                    None,
                ),
            )
            .await;
            return;
        }
        Ok(Ok(ok)) => ok,
    };
    let Packet::Connect(connect, connect_props, will, _will_props, login) = packet else {
        return;
    };
    let v5 = codec.version() == Version::V5;
    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    if client_id.is_empty() {
        if !connect.clean_session {
            let _ = write_packet(
                &mut wr,
                &codec,
                connack(ConnectReturnCode::ClientIdentifierNotValid),
            )
            .await;
            shared.counters.refused("client_id");
            return;
        }
        client_id = format!("freshet-{}", uuid::Uuid::new_v4().simple());
        assigned = Some(client_id.clone());
    }

    // Argon2 is slow on purpose: verify off the async workers.
    let auth = shared.auth.clone();
    let login_pair = login.map(|l| (l.username, l.password));
    let cid = client_id.clone();
    let identity = tokio::task::spawn_blocking(move || {
        auth.authenticate(&cid, login_pair.as_ref().map(|(u, p)| (u.as_str(), p.as_str())))
    })
    .await;
    let identity = match identity {
        Ok(Ok(identity)) => identity,
        Ok(Err(refusal)) => {
            let code = match (refusal, v5) {
                (Refusal::BadCredentials, _) => ConnectReturnCode::BadUserNamePassword,
                (Refusal::NotAuthorized, _) => ConnectReturnCode::NotAuthorized,
            };
            shared.counters.refused("auth");
            tracing::info!(client_id, ?refusal, "connection refused");
            let _ = write_packet(&mut wr, &codec, connack(code)).await;
            return;
        }
        Err(_) => return,
    };

    // Session takeover: the older connection with this client id is told to go, and waited for (bounded).
    let (kick_tx, kick_rx) = oneshot::channel();
    let (done_tx, _done_rx) = watch::channel(false);
    let serial = shared
        .takeover
        .register(&client_id, kick_tx, done_tx.subscribe())
        .await;

    let links = shared.links.clone();
    let cid = client_id.clone();
    let clean = connect.clean_session;
    let link = tokio::task::spawn_blocking(move || links(&cid, clean)).await;
    let (link_tx, link_rx, notification) = match link {
        Ok(Ok(l)) => l,
        other => {
            tracing::error!(client_id, error = ?other.err(), "router refused the link");
            shared.counters.refused("router");
            let code = if v5 {
                ConnectReturnCode::ServerUnavailable
            } else {
                ConnectReturnCode::ServiceUnavailable
            };
            let _ = write_packet(&mut wr, &codec, connack(code)).await;
            shared.takeover.unregister(&client_id, serial);
            let _ = done_tx.send(true);
            return;
        }
    };
    let mut ack = match Option::<Packet>::from(notification) {
        Some(Packet::ConnAck(ack, props)) => Packet::ConnAck(ack, props),
        _ => connack(ConnectReturnCode::Success),
    };
    if let Packet::ConnAck(_, props) = &mut ack {
        if v5 {
            let mut p = props.take().unwrap_or_default();
            p.receive_max = Some(shared.config.max_inflight.max(1));
            p.max_packet_size = u32::try_from(shared.config.max_packet_bytes).ok();
            p.topic_alias_max = Some(TOPIC_ALIASES_MAX);
            p.assigned_client_identifier = assigned;
            *props = Some(p);
        } else {
            *props = None;
        }
    }
    shared.counters.connection_opened();
    let connect_props = connect_props.filter(|_| v5);
    let max_packet = connect_props.as_ref().and_then(|p| p.max_packet_size);
    // QoS 1 publishes this client gets from the gateway's own delivery wait for its PUBACK, at most its Receive
    // Maximum of them (MQTT 5) and never more than the gateway's own `max_inflight`.
    let window = connect_props
        .as_ref()
        .and_then(|p| p.receive_maximum)
        .unwrap_or(u16::MAX)
        .min(shared.config.max_inflight);
    let outbox = shared.fanout.outbox(codec.clone(), max_packet, window);
    let mut conn = Conn {
        shared: shared.clone(),
        codec,
        identity,
        link_tx,
        link_rx,
        pending: VecDeque::new(),
        sub_splices: HashMap::new(),
        aliases: HashMap::new(),
        out: BytesMut::with_capacity(8 * 1024),
        router_unwoken: false,
        records: Records::default(),
        batches: VecDeque::new(),
        next_batch: 0,
        arrival_ms: None,
        topic_cache: TopicCache::default(),
        applied: Applied::default(),
        outbox,
        targets: Targets::default(),
        touched: Vec::new(),
        clean,
        router_filters: HashSet::new(),
    };
    let result = match write_packet(&mut wr, &conn.codec, ack).await {
        Ok(()) => {
            conn.run(
                &mut rd,
                &mut wr,
                &mut buf,
                connect.keep_alive,
                &mut shutdown,
                kick_rx,
            )
            .await
        }
        Err(e) => Close::Abrupt(e),
    };
    match &result {
        Close::Graceful => tracing::debug!(client_id, "connection closed by DISCONNECT"),
        Close::Abrupt(reason) => tracing::debug!(client_id, reason, "connection closed"),
    }
    if let (Close::Abrupt(_), Some(will)) = (&result, will) {
        conn.fire_will(will).await;
    }
    // Whatever was submitted is seen through (and counted), acknowledged or not.
    conn.settle_batches().await;
    shared.fanout.remove(conn.outbox.conn());
    if conn.clean {
        shared.fanout.router_removed(conn.router_filters.len());
    }
    // Tell the router this connection is gone (its Disconnect handling frees the session state).
    let _ = conn
        .link_tx
        .send(Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ))
        .await;
    let _ = wr.shutdown().await;
    shared.counters.connection_closed();
    shared.takeover.unregister(&client_id, serial);
    let _ = done_tx.send(true);
}

const TOPIC_ALIASES_MAX: u16 = 64;

/// Forwarded publishes are gathered for one write up to about this many bytes.
const ROUTER_WRITE_BYTES: usize = 64 * 1024;

enum ConnectFailure {
    Close(String),
    Answer(Codec, ConnectReturnCode),
}

async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<(Codec, Packet), ConnectFailure> {
    loop {
        match codec::peek_connect(buf) {
            Peek::Incomplete => {}
            Peek::Malformed | Peek::NotConnect => {
                return Err(ConnectFailure::Close("first packet is not a CONNECT".into()));
            }
            Peek::Connect(level) => {
                let mut codec = match level {
                    5 => Codec::new(Version::V5),
                    4 => Codec::new(Version::V4),
                    _ => {
                        return Err(ConnectFailure::Answer(
                            Codec::new(Version::V4),
                            ConnectReturnCode::RefusedProtocolVersion,
                        ));
                    }
                };
                match codec.read(buf, shared.config.max_packet_bytes) {
                    Ok(p @ Packet::Connect(..)) => return Ok((codec, p)),
                    Ok(_) => return Err(ConnectFailure::Close("first packet is not a CONNECT".into())),
                    Err(protocol::Error::InsufficientBytes(_)) => {}
                    Err(e) => return Err(ConnectFailure::Close(format!("bad CONNECT: {e}"))),
                }
            }
        }
        if buf.len() > shared.config.max_packet_bytes {
            return Err(ConnectFailure::Close("CONNECT over the packet size limit".into()));
        }
        let n = rd
            .read_buf(buf)
            .await
            .map_err(|e| ConnectFailure::Close(e.to_string()))?;
        if n == 0 {
            return Err(ConnectFailure::Close("closed before CONNECT".into()));
        }
    }
}

fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

async fn write_packet<W: AsyncWrite + Unpin>(
    wr: &mut W,
    codec: &Codec,
    packet: Packet,
) -> Result<(), String> {
    let mut out = BytesMut::new();
    codec.write(packet, &mut out).map_err(|e| e.to_string())?;
    wr.write_all(&out).await.map_err(|e| e.to_string())
}

struct Conn {
    shared: Arc<Shared>,
    codec: Codec,
    identity: Identity,
    link_tx: LinkTx,
    link_rx: LinkRx,
    pending: VecDeque<Pending>,
    /// SUBSCRIBE packet id → what is decided here of a SUBSCRIBE that also went to the router.
    sub_splices: HashMap<u16, Splice>,
    /// MQTT 5 topic aliases set by the client.
    aliases: HashMap<u16, Bytes>,
    out: BytesMut,
    /// Publishes put in the router link's buffer without waking the router yet (see [`Conn::wake_router`]).
    router_unwoken: bool,
    /// Records of this read's publishes, submitted together when the read is handled.
    records: Records,
    /// Submitted runs not yet resolved, oldest first; they are awaited in this order.
    batches: VecDeque<Batch>,
    /// The serial the records now gathering will be submitted as.
    next_batch: u64,
    /// The arrival time of the publishes of the read being handled (one clock read per read, not per publish).
    arrival_ms: Option<i64>,
    /// The rules' work that depends only on the topic, the client and the arrival time, kept between publishes.
    topic_cache: TopicCache,
    /// The rules' outputs for one publish (kept for its room).
    applied: Applied,
    /// Publishes for this connection's direct subscriptions (see [`crate::fanout`]).
    outbox: Arc<Outbox>,
    /// The direct subscribers of the last topic this connection published to.
    targets: Targets,
    /// Outboxes this read's publishes were written into, woken once the read is handled.
    touched: Vec<Arc<Outbox>>,
    /// A clean session: its subscriptions end with the connection.
    clean: bool,
    /// Filters this connection subscribed to through the router.
    router_filters: HashSet<String>,
}

/// The part of a SUBACK decided by the gateway, for a SUBSCRIBE whose other filters went to the router.
struct Splice {
    /// Per filter, in order: `Some` decided here (refused, or a direct subscription), `None` the router's.
    codes: Vec<Option<SubscribeReasonCode>>,
    /// Retained messages for the direct subscriptions (with the QoS to send them at), sent after the SUBACK.
    retained: Vec<(Publish, Option<PublishProperties>, u8)>,
}

impl Conn {
    fn v5(&self) -> bool {
        self.codec.version() == Version::V5
    }

    async fn run<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        buf: &mut BytesMut,
        keep_alive_s: u16,
        shutdown: &mut watch::Receiver<bool>,
        mut kick: oneshot::Receiver<()>,
    ) -> Close
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let inflight_max = usize::from(self.shared.config.max_inflight.max(1));
        // MQTT: the server closes a connection silent for 1.5 keep-alive periods; 0 turns this off.
        let keep_alive = (keep_alive_s > 0).then(|| Duration::from_millis(u64::from(keep_alive_s) * 1500));
        let mut last_read = tokio::time::Instant::now();
        loop {
            // Packets already buffered are handled before reading more, as far as the inflight bound allows.
            if self.pending.len() < inflight_max
                && !buf.is_empty()
                && let Err(close) = self.parse(buf, inflight_max).await
            {
                self.flush(wr).await.ok();
                return close;
            }
            self.outbox.take_into(&mut self.out);
            if let Err(e) = self.flush(wr).await {
                return Close::Abrupt(e);
            }
            let can_read = self.pending.len() < inflight_max && self.batches.len() < BATCHES_MAX;
            let deadline = keep_alive.map(|k| last_read + k);
            tokio::select! {
                _ = shutdown.changed() => {
                    self.disconnect_v5(DisconnectReasonCode::ServerShuttingDown);
                    // Acknowledge what is already durable-bound before leaving.
                    while let Some(batch) = self.batches.pop_front() {
                        let outcomes = batch.durable.await;
                        if self.ack_ready(batch.serial, &outcomes).is_err() {
                            break;
                        }
                    }
                    let _ = self.flush(wr).await;
                    return Close::Abrupt("server shutting down".into());
                }
                _ = &mut kick => {
                    self.disconnect_v5(DisconnectReasonCode::SessionTakenOver);
                    let _ = self.flush(wr).await;
                    return Close::Abrupt("session taken over".into());
                }
                outcomes = front_durable(&mut self.batches), if !self.batches.is_empty() => {
                    // One group commit settles many runs at once: acknowledge every settled one in order now, so
                    // the acknowledgements leave in one write instead of one loop turn (and one syscall) each.
                    let mut outcomes = Some(outcomes);
                    while let Some(o) = outcomes.take() {
                        let Some(batch) = self.batches.pop_front() else { break };
                        if let Err(close) = self.ack_ready(batch.serial, &o) {
                            let _ = self.flush(wr).await;
                            return close;
                        }
                        outcomes = self
                            .batches
                            .front_mut()
                            .and_then(|b| b.durable.as_mut().now_or_never());
                    }
                }
                read = rd.read_buf(buf), if can_read => {
                    match read {
                        Ok(0) => return Close::Abrupt("closed by the client".into()),
                        Ok(_) => last_read = tokio::time::Instant::now(),
                        Err(e) => return Close::Abrupt(e.to_string()),
                    }
                    if buf.len() > self.shared.config.max_packet_bytes + 16 * 1024 {
                        // A packet bigger than the limit is refused by the codec on parse; this only guards memory.
                    }
                }
                () = self.outbox.ready() => {
                    // Let the connections that are ready to run now add theirs first, so that one write takes
                    // them all (a loaded gateway made ~15 % fewer socket writes this way; an idle one loses
                    // nothing, the task runs again at once).
                    tokio::task::yield_now().await;
                    self.outbox.take_into(&mut self.out)
                }
                notification = self.link_rx.next() => {
                    match notification {
                        Ok(Some(n)) => {
                            let handled = match self.handle_router(n).await {
                                Ok(()) => self.drain_router().await,
                                Err(close) => Err(close),
                            };
                            if let Err(close) = handled {
                                let _ = self.flush(wr).await;
                                return close;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => return Close::Abrupt(format!("router link: {e}")),
                    }
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    self.disconnect_v5(DisconnectReasonCode::KeepAliveTimeout);
                    let _ = self.flush(wr).await;
                    return Close::Abrupt("keep-alive timeout".into());
                }
            }
        }
    }

    fn queue(&mut self, packet: Packet) {
        if let Err(e) = self.codec.write(packet, &mut self.out) {
            tracing::error!(error = %e, "cannot encode a packet for the client");
        }
    }

    fn disconnect_v5(&mut self, reason_code: DisconnectReasonCode) {
        if self.v5() {
            self.queue(Packet::Disconnect(Disconnect { reason_code }, None));
        }
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = wr.write_all(&self.out).await.map_err(|e| e.to_string());
        self.out.clear();
        r
    }

    /// Handle every whole packet in `buf` (up to the inflight bound); their records go to the appender together,
    /// and the router is woken once for all the publishes it forwards. Both happen even when a packet ends the
    /// connection, so the publishes before it are not lost.
    async fn parse(&mut self, buf: &mut BytesMut, inflight_max: usize) -> Result<(), Close> {
        self.arrival_ms = None;
        let parsed = self.parse_packets(buf, inflight_max).await;
        let sent = self.submit().await;
        let woken = self.wake_router().await;
        self.wake_subscribers();
        // Publishes without records (denied, or matched by no rule) at the front need no wait.
        let acked = self.ack_ready(u64::MAX, &Outcomes::default());
        parsed.and(sent).and(woken).and(acked)
    }

    /// Submit the records gathered from this read's publishes (waits while the store's queues are full: the
    /// connection reads no more meanwhile, which is the backpressure its client feels).
    async fn submit(&mut self) -> Result<(), Close> {
        if self.records.is_empty() {
            return Ok(());
        }
        let durable = self
            .shared
            .sink
            .submit(&mut self.records)
            .await
            .map_err(|e| Close::Abrupt(format!("appender: {e}")))?;
        self.batches.push_back(Batch {
            serial: self.next_batch,
            durable,
        });
        self.next_batch += 1;
        Ok(())
    }

    /// Acknowledge, in order, the publishes at the front that can be: those without records, and those of the
    /// run `serial`, which has resolved to `outcomes`.
    fn ack_ready(&mut self, serial: u64, outcomes: &Outcomes) -> Result<(), Close> {
        while let Some(front) = self.pending.front() {
            let failure = if front.records.is_empty() {
                None
            } else if front.batch == serial {
                outcomes.failure_in(front.records.clone()).map(str::to_string)
            } else {
                break;
            };
            self.ack_front(failure)?;
        }
        Ok(())
    }

    /// Wait for every submitted run (used when the connection ends).
    async fn settle_batches(&mut self) {
        while let Some(batch) = self.batches.pop_front() {
            batch.durable.await;
        }
    }

    async fn parse_packets(&mut self, buf: &mut BytesMut, inflight_max: usize) -> Result<(), Close> {
        while self.pending.len() < inflight_max && !buf.is_empty() {
            let ids = codec::peek_publish(buf);
            match self.codec.read(buf, self.shared.config.max_packet_bytes) {
                // Most packets need no waiting: handled without making the future of `handle_client`, whose state
                // (nearly 2 KiB) was copied twice for every publish; a publish is taken straight out of the read
                // (a `Packet` is ~400 bytes, each move of it a copy).
                Ok(Packet::Publish(publish, props)) => {
                    let (qos, pkid) = ids.unwrap_or((0, 0));
                    self.publish(publish, props, qos, pkid)?;
                    // A read of many small publishes goes to the store in runs of at most a put's size.
                    if self.records.len()
                        >= self
                            .shared
                            .config
                            .append
                            .batch_records_max
                            .clamp(1, PUT_RECORDS_MAX)
                    {
                        self.submit().await?;
                    }
                }
                Ok(packet) => {
                    if let Some(packet) = self.handle_now(packet)? {
                        self.handle_client(packet).await?;
                    }
                }
                Err(protocol::Error::InsufficientBytes(_)) => return Ok(()),
                Err(e @ (protocol::Error::PayloadSizeLimitExceeded(_) | protocol::Error::PayloadTooLong)) => {
                    self.disconnect_v5(DisconnectReasonCode::PacketTooLarge);
                    return Err(Close::Abrupt(format!("packet too large: {e}")));
                }
                Err(e) => {
                    self.disconnect_v5(DisconnectReasonCode::MalformedPacket);
                    return Err(Close::Abrupt(format!("malformed packet: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Handle a client's packet (other than PUBLISH, see [`Conn::parse_packets`]) if that needs no waiting; give
    /// it back if it does (see [`Conn::handle_client`]).
    fn handle_now(&mut self, packet: Packet) -> Result<Option<Packet>, Close> {
        match packet {
            Packet::PubRel(pubrel, _) => self.queue(Packet::PubComp(
                PubComp {
                    pkid: pubrel.pkid,
                    reason: PubCompReason::Success,
                },
                None,
            )),
            // The gateway's own QoS 1 publishes have packet ids above the router's (see `ROUTER_PKID_MAX`).
            Packet::PubAck(ack, _) if ack.pkid > ROUTER_PKID_MAX => {
                if !self.outbox.acked(ack.pkid) {
                    tracing::debug!(
                        client_id = self.identity.client_id,
                        pkid = ack.pkid,
                        "PUBACK for no publish in flight"
                    );
                }
            }
            Packet::PingReq(_) => self.queue(Packet::PingResp(PingResp)),
            Packet::Disconnect(..) => return Err(Close::Graceful),
            other => return Ok(Some(other)),
        }
        Ok(None)
    }

    /// Handle a client's packet that may wait (for the router link).
    async fn handle_client(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            p @ (Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..)) => self.send_router(p).await,
            Packet::Unsubscribe(unsub, _) => self.unsubscribe(unsub).await,
            Packet::Subscribe(sub, props) => self.subscribe(sub, props).await,
            other => {
                self.disconnect_v5(DisconnectReasonCode::ProtocolError);
                Err(Close::Abrupt(format!(
                    "unexpected packet from a client: {other:?}"
                )))
            }
        }
    }

    /// Queue a publish for MQTT subscribers in the router link's buffer. The router drains the whole buffer
    /// on each wake-up, so one wake-up per read (not one per publish, each a channel send and often a thread
    /// wake-up) is enough; [`Conn::parse`] calls [`Conn::wake_router`] when it is done.
    fn stage_router(&mut self, packet: Packet) {
        self.link_tx.buffer().push_back(packet);
        self.router_unwoken = true;
    }

    /// Wake the router for the staged publishes: rumqttd wakes it only together with a packet, so the last
    /// staged one is taken back and sent. If the router already drained them (another packet woke it), there is
    /// nothing left to wake it for.
    async fn wake_router(&mut self) -> Result<(), Close> {
        if !std::mem::take(&mut self.router_unwoken) {
            return Ok(());
        }
        let last = self.link_tx.buffer().pop_back();
        match last {
            Some(packet) => self.send_router(packet).await,
            None => Ok(()),
        }
    }

    /// Wake the direct subscribers this read's publishes were written for.
    fn wake_subscribers(&mut self) {
        for outbox in self.touched.drain(..) {
            outbox.wake();
        }
    }

    /// Deliver a publish to MQTT subscribers: the direct ones now, the router's (if any may exist, or when it is
    /// retained, so that the router keeps it for its subscribers) staged for the router.
    fn forward(
        &mut self,
        topic: &Bytes,
        topic_str: &str,
        payload: &Bytes,
        retain: bool,
        qos: u8,
        props: Option<PublishProperties>,
    ) {
        let fanout = &self.shared.fanout;
        fanout.deliver(
            &mut self.targets,
            self.outbox.conn(),
            topic,
            topic_str,
            payload,
            retain,
            qos,
            props.as_ref(),
            &mut self.touched,
        );
        if retain {
            fanout.retain(topic, topic_str, payload, qos, props.as_ref());
        }
        if retain || fanout.router_in_use() {
            let publish = Publish::new(topic.clone(), payload.clone(), retain);
            self.stage_router(Packet::Publish(publish, props));
        }
    }

    async fn send_router(&mut self, packet: Packet) -> Result<(), Close> {
        self.link_tx
            .send(packet)
            .await
            .map(|_| ())
            .map_err(|e| Close::Abrupt(format!("router link: {e}")))
    }

    fn publish(
        &mut self,
        mut publish: Publish,
        props: Option<PublishProperties>,
        qos: u8,
        pkid: u16,
    ) -> Result<(), Close> {
        let mut topic = std::mem::take(&mut publish.topic);
        let mut props = props;
        if let Some(alias) = props.as_mut().and_then(|p| p.topic_alias.take()) {
            if alias == 0 || alias > TOPIC_ALIASES_MAX {
                self.disconnect_v5(DisconnectReasonCode::TopicAliasInvalid);
                return Err(Close::Abrupt(format!("topic alias {alias} out of range")));
            }
            if topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => topic = t.clone(),
                    None => {
                        self.disconnect_v5(DisconnectReasonCode::ProtocolError);
                        return Err(Close::Abrupt(format!("unknown topic alias {alias}")));
                    }
                }
            } else {
                self.aliases.insert(alias, topic.clone());
            }
        }
        let Ok(topic_str) = std::str::from_utf8(&topic) else {
            self.disconnect_v5(DisconnectReasonCode::TopicNameInvalid);
            return Err(Close::Abrupt("topic is not UTF-8".into()));
        };
        if topic_str.is_empty() || topic_str.contains(['+', '#', '\0']) {
            self.disconnect_v5(DisconnectReasonCode::TopicNameInvalid);
            return Err(Close::Abrupt(format!("invalid topic name {topic_str:?}")));
        }
        self.shared.counters.received();
        if !self.identity.may_publish(topic_str) {
            self.shared.counters.denied();
            tracing::info!(
                client_id = self.identity.client_id,
                topic = topic_str,
                "publish refused by the ACL"
            );
            if !self.v5() {
                return Err(Close::Abrupt(format!("publish to {topic_str} not authorized")));
            }
            if qos > 0 {
                self.pending.push_back(Pending {
                    pkid,
                    qos,
                    batch: self.next_batch,
                    records: 0..0,
                    denied: true,
                });
            }
            return Ok(());
        }
        let records = self.route(topic_str, &publish.payload);
        self.forward(
            &topic,
            topic_str,
            &publish.payload,
            publish.retain,
            qos.min(1),
            props,
        );
        if qos > 0 {
            self.pending.push_back(Pending {
                pkid,
                qos,
                batch: self.next_batch,
                records,
                denied: false,
            });
        }
        Ok(())
    }

    /// Apply the rules and gather the records; returns their positions among the records being gathered.
    fn route(&mut self, topic: &str, payload: &Bytes) -> Range<usize> {
        let message = Message {
            topic,
            client_id: &self.identity.client_id,
            arrival_ms: *self.arrival_ms.get_or_insert_with(now_ms),
            payload,
        };
        let applied = &mut self.applied;
        self.shared
            .rules
            .apply_into(&message, &mut self.topic_cache, applied);
        if applied.matched == 0 {
            self.shared.counters.unmatched();
        } else {
            self.shared.counters.matched();
        }
        if applied.outputs.iter().any(|o| o.failure.is_some()) {
            self.shared.counters.failed();
        }
        let start = self.records.len();
        for out in applied.outputs.drain(..) {
            self.records.push(out.stream, out.record);
        }
        start..self.records.len()
    }

    /// Acknowledge the front publish, whose records are durable or, with `failure`, are not.
    fn ack_front(&mut self, failure: Option<String>) -> Result<(), Close> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        if let (Some(failure), false) = (&failure, self.v5()) {
            // MQTT 3.1.1 cannot say "failed": no PUBACK, close, and the client sends it again.
            return Err(Close::Abrupt(format!(
                "publish {} could not be made durable: {failure}",
                p.pkid
            )));
        }
        let v5 = self.v5();
        if p.qos == 1 {
            let reason = match (&failure, p.denied) {
                (_, true) => PubAckReason::NotAuthorized,
                (Some(_), _) => PubAckReason::UnspecifiedError,
                _ => PubAckReason::Success,
            };
            let reason = if v5 { reason } else { PubAckReason::Success };
            self.queue(Packet::PubAck(PubAck { pkid: p.pkid, reason }, None));
        } else {
            let reason = match (&failure, p.denied) {
                (_, true) => PubRecReason::NotAuthorized,
                (Some(_), _) => PubRecReason::UnspecifiedError,
                _ => PubRecReason::Success,
            };
            let reason = if v5 { reason } else { PubRecReason::Success };
            self.queue(Packet::PubRec(PubRec { pkid: p.pkid, reason }, None));
        }
        Ok(())
    }

    async fn subscribe(
        &mut self,
        sub: Subscribe,
        props: Option<protocol::SubscribeProperties>,
    ) -> Result<(), Close> {
        let v5 = self.v5();
        let subscription_id = props.as_ref().and_then(|p| p.id);
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut retained = Vec::new();
        let mut allowed = Vec::new();
        for f in sub.filters {
            if !protocol::valid_filter(&f.path) {
                codes.push(Some(if v5 {
                    SubscribeReasonCode::TopicFilterInvalid
                } else {
                    SubscribeReasonCode::Failure
                }));
            } else if !self.identity.may_subscribe(&f.path) {
                tracing::info!(
                    client_id = self.identity.client_id,
                    filter = f.path,
                    "subscribe refused by the ACL"
                );
                codes.push(Some(if v5 {
                    SubscribeReasonCode::NotAuthorized
                } else {
                    SubscribeReasonCode::Failure
                }));
            } else if Fanout::eligible(self.clean, &f, subscription_id)
                && !self.router_filters.contains(&f.path)
            {
                let existed = self.shared.fanout.subscribe(&self.outbox, &f);
                let qos = f.qos as u8;
                if Fanout::sends_retained(&f, existed) {
                    let found = self.shared.fanout.retained_for(&f.path);
                    retained.extend(found.into_iter().map(|(p, props, q)| (p, props, q.min(qos))));
                }
                codes.push(Some(if qos == 0 {
                    SubscribeReasonCode::QoS0
                } else {
                    SubscribeReasonCode::QoS1
                }));
            } else {
                // Through the router from now on (a direct subscription on the same filter is replaced).
                self.shared.fanout.unsubscribe(self.outbox.conn(), &f.path);
                if self.router_filters.insert(f.path.clone()) {
                    self.shared.fanout.router_added(1);
                }
                codes.push(None);
                allowed.push(f);
            }
        }
        if allowed.is_empty() {
            let return_codes = codes.into_iter().flatten().collect();
            self.queue(Packet::SubAck(
                SubAck {
                    pkid: sub.pkid,
                    return_codes,
                },
                None,
            ));
            self.queue_retained(retained);
            return Ok(());
        }
        if codes.iter().any(Option::is_some) {
            self.sub_splices.insert(sub.pkid, Splice { codes, retained });
        }
        self.send_router(Packet::Subscribe(
            Subscribe {
                pkid: sub.pkid,
                filters: allowed,
            },
            props,
        ))
        .await
    }

    /// Send the retained messages for direct subscriptions, right behind what is queued (their SUBACK).
    fn queue_retained(&mut self, retained: Vec<(Publish, Option<PublishProperties>, u8)>) {
        for (publish, props, qos) in retained {
            self.outbox.send_into(&mut self.out, publish, props, qos);
        }
    }

    /// Answered here for every filter: direct subscriptions end here, the router is told about the rest.
    async fn unsubscribe(&mut self, unsub: Unsubscribe) -> Result<(), Close> {
        let mut reasons = Vec::with_capacity(unsub.filters.len());
        let mut to_router = Vec::new();
        for filter in unsub.filters {
            let direct = self.shared.fanout.unsubscribe(self.outbox.conn(), &filter);
            let routed = self.router_filters.remove(&filter);
            if routed && self.clean {
                self.shared.fanout.router_removed(1);
            }
            // A resumed session's router subscriptions from an earlier connection are not known here.
            let known = direct || routed || !self.clean;
            reasons.push(if known {
                UnsubAckReason::Success
            } else {
                UnsubAckReason::NoSubscriptionExisted
            });
            if routed || !self.clean {
                to_router.push(filter);
            }
        }
        self.queue(Packet::UnsubAck(
            UnsubAck {
                pkid: unsub.pkid,
                reasons,
            },
            None,
        ));
        if to_router.is_empty() {
            return Ok(());
        }
        self.send_router(Packet::Unsubscribe(
            Unsubscribe {
                pkid: unsub.pkid,
                filters: to_router,
            },
            None,
        ))
        .await
    }

    /// Handle what the router has already handed over without waiting, so that a subscriber gets a run of
    /// forwarded publishes in one write rather than one write (and one loop turn) each.
    async fn drain_router(&mut self) -> Result<(), Close> {
        while self.out.len() < ROUTER_WRITE_BYTES {
            match self.link_rx.next().now_or_never() {
                Some(Ok(Some(n))) => self.handle_router(n).await?,
                Some(Ok(None)) | None => break,
                Some(Err(e)) => return Err(Close::Abrupt(format!("router link: {e}"))),
            }
        }
        Ok(())
    }

    async fn handle_router(&mut self, n: Notification) -> Result<(), Close> {
        if let Notification::Unschedule = n {
            return self
                .link_rx
                .wake()
                .await
                .map_err(|e| Close::Abrupt(format!("router link: {e}")));
        }
        match Option::<Packet>::from(n) {
            Some(Packet::SubAck(mut ack, props)) => {
                let splice = self.sub_splices.remove(&ack.pkid);
                let mut retained = Vec::new();
                if let Some(Splice { codes, retained: r }) = splice {
                    let mut from_router = ack.return_codes.into_iter();
                    ack.return_codes = codes
                        .into_iter()
                        .map(|c| {
                            c.or_else(|| from_router.next())
                                .unwrap_or(SubscribeReasonCode::Failure)
                        })
                        .collect();
                    retained = r;
                }
                let props = if self.v5() { props } else { None };
                self.queue(Packet::SubAck(ack, props));
                self.queue_retained(retained);
            }
            // Answered by the gateway (see [`Conn::unsubscribe`]).
            Some(Packet::UnsubAck(..)) => {}
            Some(Packet::Disconnect(d, props)) => {
                if self.v5() {
                    self.queue(Packet::Disconnect(d, props));
                }
                return Err(Close::Abrupt("disconnected by the router".into()));
            }
            // The router only acknowledges QoS > 0 publishes, and this link gives it QoS 0 only.
            Some(Packet::PubAck(..)) => {}
            Some(Packet::Publish(p, props)) => {
                let props = if self.v5() { props } else { None };
                self.queue(Packet::Publish(p, props));
            }
            Some(p) => self.queue(p),
            None => {}
        }
        Ok(())
    }

    async fn fire_will(&mut self, will: LastWill) {
        self.arrival_ms = None; // the will arrives now, not with the last read
        let LastWill {
            topic,
            message,
            retain,
            qos,
        } = will;
        let Ok(topic_str) = std::str::from_utf8(&topic) else {
            return;
        };
        let topic_str = topic_str.to_string();
        self.shared.counters.received();
        if !self.identity.may_publish(&topic_str) {
            self.shared.counters.denied();
            return;
        }
        self.route(&topic_str, &message);
        let _ = self.submit().await;
        self.forward(&topic, &topic_str, &message, retain, (qos as u8).min(1), None);
        let _ = self.wake_router().await;
        self.wake_subscribers();
    }
}

/// The outcome of the oldest submitted run, once it has resolved (cancel-safe: the run stays in the queue until
/// the caller takes it out).
async fn front_durable(batches: &mut VecDeque<Batch>) -> Outcomes {
    match batches.front_mut() {
        Some(batch) => batch.durable.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d).await;
    }
}
