//! The gateway's own delivery to MQTT subscribers, for the common case: QoS 0 and 1 subscriptions of clean
//! sessions.
//!
//! Every publish used to travel a second hop to MQTT subscribers: into rumqttd's router (a channel send, the
//! router thread waking up, its in-memory log, its per-subscriber cursors) and back out through the subscriber's
//! local link. For a *direct* subscription the publishing connection instead encodes the publish straight into
//! the subscriber's [`Outbox`] and wakes the subscriber's connection once per socket read, which writes the
//! outbox to its socket in one go.
//!
//! A subscription is direct when its session is clean (nothing outlives the connection), it asks for QoS 0 or 1,
//! it is not a shared subscription (`$share/...`) and it carries no subscription identifier. A publish is sent at
//! the lower of its own QoS and the highest of the client's matching subscriptions. MQTT 5's no-local,
//! retain-as-published and retain-handling options are honoured here. Everything else — QoS 2 subscriptions,
//! persistent sessions, shared subscriptions, subscription identifiers — stays with rumqttd's router, and a
//! publish is handed to the router only while some router subscription may exist (the count is conservative:
//! a persistent session's subscriptions are never taken off it) or when it is retained (the router keeps its
//! own retained messages for its subscribers).
//!
//! QoS 1 publishes take packet ids above the router's ([`ROUTER_PKID_MAX`]), so a connection with subscriptions
//! of both kinds sends each PUBACK to where its publish came from. At most the client's Receive Maximum (capped
//! by the gateway's `max_inflight`) of them wait for a PUBACK; the rest wait in the outbox, in order, for room.
//! Nothing is sent again: the session is clean, so what is unacknowledged when the connection ends ends with it.
//!
//! Retained messages for direct subscriptions are kept here, the last one per topic (an empty retained payload
//! clears the topic), and sent after the SUBACK, with the RETAIN flag set.
//!
//! A direct subscriber that does not read its socket (or acknowledge) fast enough is not allowed to hold the
//! publishers back or to grow without bound: once its outbox holds `subscriber_buffer_bytes` (sent or waiting for
//! the window), further publishes to it are dropped and counted in `freshet_ingest_subscriber_dropped_total`; the
//! durable path into the store is not affected. rumqttd's router, in the same situation, moves the subscriber's
//! read cursor forward with only a log line.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{Filter, Packet, Publish, PublishProperties, RetainForwardRule};
use tokio::sync::Notify;

use crate::codec::{Codec, Version};
use crate::metrics::Counters;
use crate::rules::topic_matches;

/// The highest packet id rumqttd's router gives the QoS 1/2 publishes it sends a connection: it counts them from 1
/// up to its inflight maximum and around again (rumqttd 0.20, `router/iobufs.rs`: `MAX_INFLIGHT` = 100). The
/// gateway's own QoS 1 publishes use the ids above it, so that one connection can have both kinds in flight and each
/// PUBACK goes back to whoever sent the publish.
pub(crate) const ROUTER_PKID_MAX: u16 = 100;

/// Where the publishes for one connection's direct subscriptions wait for its socket.
pub(crate) struct Outbox {
    conn: u64,
    codec: Codec,
    /// The client's maximum packet size (MQTT 5); larger publishes are not sent to it (the spec says discard).
    max_packet: usize,
    buffer_max: usize,
    /// QoS 1 publishes sent and not yet acknowledged, at most (the client's Receive Maximum, capped by the
    /// gateway's `max_inflight`).
    window: usize,
    state: Mutex<OutState>,
    notify: Notify,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct OutState {
    /// Encoded packets waiting for the socket.
    buf: BytesMut,
    /// Packet ids of QoS 1 publishes sent and not yet acknowledged.
    inflight: HashSet<u16>,
    last_pkid: u16,
    /// QoS 1 publishes waiting for room in the window, and their approximate size.
    waiting: VecDeque<(Publish, Option<PublishProperties>)>,
    waiting_bytes: usize,
}

impl OutState {
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = match self.last_pkid {
                u16::MAX | 0..ROUTER_PKID_MAX => ROUTER_PKID_MAX + 1,
                p => p + 1,
            };
            if !self.inflight.contains(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }
}

impl Outbox {
    pub(crate) fn conn(&self) -> u64 {
        self.conn
    }

    fn props(&self, props: Option<PublishProperties>) -> Option<PublishProperties> {
        match self.codec.version() {
            Version::V5 => props,
            Version::V4 => None,
        }
    }

    /// Encode a publish at `qos` (0 or 1; a QoS 1 one takes a packet id and a place in the window) into `out`,
    /// or into the outbox.
    fn encode(
        &self,
        state: &mut OutState,
        out: Option<&mut BytesMut>,
        publish: Publish,
        props: Option<PublishProperties>,
        qos: u8,
    ) -> bool {
        let props = self.props(props);
        let pkid = (qos > 0).then(|| state.next_pkid());
        let out = match out {
            Some(out) => out,
            None => &mut state.buf,
        };
        let before = out.len();
        let written = match pkid {
            None => self.codec.write(Packet::Publish(publish, props), out),
            Some(pkid) => self.codec.write_qos1(publish, props, pkid, out),
        };
        match written {
            Ok(n) if n <= self.max_packet => {
                if let Some(pkid) = pkid {
                    state.inflight.insert(pkid);
                }
                true
            }
            _ => {
                out.truncate(before);
                self.counters.subscriber_dropped();
                false
            }
        }
    }

    /// Send a publish at `qos`: encoded into the outbox, or, with `out`, straight into the connection's own
    /// output (a retained message right behind its SUBACK). A QoS 1 publish beyond the window waits for a PUBACK.
    /// False when it was dropped (and counted): the outbox is full, or it is too big for the client.
    fn push_to(
        &self,
        out: Option<&mut BytesMut>,
        publish: Publish,
        props: Option<PublishProperties>,
        qos: u8,
    ) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.buf.len() + state.waiting_bytes >= self.buffer_max {
            self.counters.subscriber_dropped();
            return false;
        }
        if qos > 0 && (state.inflight.len() >= self.window || !state.waiting.is_empty()) {
            state.waiting_bytes += publish.len() + 8;
            state.waiting.push_back((publish, props));
            return true;
        }
        self.encode(&mut state, out, publish, props, qos)
    }

    fn push(&self, publish: Publish, props: Option<PublishProperties>, qos: u8) -> bool {
        self.push_to(None, publish, props, qos)
    }

    /// Send a publish for this connection's own subscription into its output `out`, behind what is there.
    pub(crate) fn send_into(
        &self,
        out: &mut BytesMut,
        publish: Publish,
        props: Option<PublishProperties>,
        qos: u8,
    ) {
        self.push_to(Some(out), publish, props, qos);
    }

    /// The client acknowledged QoS 1 publish `pkid`: its place in the window goes to the next waiting publish.
    /// False when no such publish was in flight.
    pub(crate) fn acked(&self, pkid: u16) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.inflight.remove(&pkid) {
            return false;
        }
        while state.inflight.len() < self.window {
            let Some((publish, props)) = state.waiting.pop_front() else {
                break;
            };
            state.waiting_bytes -= publish.len() + 8;
            self.encode(&mut state, None, publish, props, 1);
        }
        true
    }

    /// Move whatever is waiting onto the end of `out` (without copying when `out` is empty).
    pub(crate) fn take_into(&self, out: &mut BytesMut) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if out.is_empty() {
            std::mem::swap(&mut state.buf, out);
        } else if !state.buf.is_empty() {
            out.extend_from_slice(&state.buf);
            state.buf.clear();
        }
    }

    /// Resolves once publishes were added since the last time it resolved (or since the outbox was made).
    pub(crate) async fn ready(&self) {
        self.notify.notified().await;
    }

    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }
}

struct Direct {
    filter: String,
    /// The subscription's QoS (0 or 1).
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    outbox: Arc<Outbox>,
}

/// The direct subscribers a publishing connection found for its last topic (see [`Fanout::deliver`]).
#[derive(Default)]
pub(crate) struct Targets {
    generation: u64,
    topic: Option<Bytes>,
    /// One entry per subscribing connection (overlapping subscriptions of one connection deliver once), with
    /// whether any of its matching subscriptions keeps the RETAIN flag, and the highest QoS among them.
    outboxes: Vec<(Arc<Outbox>, bool, u8)>,
}

/// A retained message kept for direct subscriptions.
struct Retained {
    topic: Bytes,
    qos: u8,
    payload: Bytes,
    props: Option<PublishProperties>,
}

/// Direct subscriptions, retained messages, and whether rumqttd's router still has to see publishes.
pub(crate) struct Fanout {
    direct: RwLock<Vec<Direct>>,
    /// Bumped on every change of `direct`, so that a connection's [`Targets`] notices.
    generation: AtomicU64,
    retained: Mutex<HashMap<String, Retained>>,
    router_subscriptions: AtomicUsize,
    next_conn: AtomicU64,
    buffer_max: usize,
    counters: Arc<Counters>,
}

impl Fanout {
    pub(crate) fn new(buffer_max: usize, counters: Arc<Counters>) -> Self {
        Self {
            direct: RwLock::new(Vec::new()),
            generation: AtomicU64::new(1),
            retained: Mutex::new(HashMap::new()),
            router_subscriptions: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            buffer_max: buffer_max.max(1),
            counters,
        }
    }

    /// A new connection's outbox (registered only when it subscribes); `window` bounds its QoS 1 publishes in
    /// flight.
    pub(crate) fn outbox(&self, codec: Codec, max_packet: Option<u32>, window: u16) -> Arc<Outbox> {
        Arc::new(Outbox {
            conn: self.next_conn.fetch_add(1, Ordering::Relaxed),
            codec,
            max_packet: max_packet.map_or(usize::MAX, |m| m as usize),
            buffer_max: self.buffer_max,
            window: usize::from(window.max(1)),
            state: Mutex::new(OutState::default()),
            notify: Notify::new(),
            counters: self.counters.clone(),
        })
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Whether `filter` (already checked valid and allowed) may be a direct subscription of a connection.
    pub(crate) fn eligible(clean_session: bool, filter: &Filter, subscription_id: Option<usize>) -> bool {
        clean_session
            && filter.qos != rumqttd::protocol::QoS::ExactlyOnce
            && subscription_id.is_none()
            && !filter.path.starts_with("$share/")
    }

    /// Add or replace a direct subscription; returns whether the connection already had one on this filter.
    pub(crate) fn subscribe(&self, outbox: &Arc<Outbox>, filter: &Filter) -> bool {
        let entry = Direct {
            filter: filter.path.clone(),
            qos: filter.qos as u8,
            no_local: filter.nolocal,
            retain_as_published: filter.preserve_retain,
            outbox: outbox.clone(),
        };
        let mut direct = self.direct.write().unwrap_or_else(|e| e.into_inner());
        let existing = direct
            .iter_mut()
            .find(|d| d.outbox.conn == outbox.conn && d.filter == filter.path);
        let existed = match existing {
            Some(d) => {
                *d = entry;
                true
            }
            None => {
                direct.push(entry);
                false
            }
        };
        self.changed();
        existed
    }

    /// Remove a connection's direct subscription on `filter`; returns whether it had one.
    pub(crate) fn unsubscribe(&self, conn: u64, filter: &str) -> bool {
        let mut direct = self.direct.write().unwrap_or_else(|e| e.into_inner());
        let before = direct.len();
        direct.retain(|d| !(d.outbox.conn == conn && d.filter == filter));
        let removed = direct.len() != before;
        if removed {
            self.changed();
        }
        removed
    }

    /// Remove every direct subscription of a connection (it ended).
    pub(crate) fn remove(&self, conn: u64) {
        let mut direct = self.direct.write().unwrap_or_else(|e| e.into_inner());
        let before = direct.len();
        direct.retain(|d| d.outbox.conn != conn);
        if direct.len() != before {
            self.changed();
        }
    }

    /// Whether rumqttd's router may have a subscription a publish must reach.
    pub(crate) fn router_in_use(&self) -> bool {
        self.router_subscriptions.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn router_added(&self, n: usize) {
        self.router_subscriptions.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn router_removed(&self, n: usize) {
        let _ = self
            .router_subscriptions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(n))
            });
    }

    /// Keep (or, with an empty payload, clear) the retained message of `topic`.
    pub(crate) fn retain(
        &self,
        topic: &Bytes,
        topic_str: &str,
        payload: &Bytes,
        qos: u8,
        props: Option<&PublishProperties>,
    ) {
        let mut retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        if payload.is_empty() {
            retained.remove(topic_str);
        } else {
            retained.insert(
                topic_str.to_string(),
                Retained {
                    topic: topic.clone(),
                    qos,
                    payload: payload.clone(),
                    props: props.cloned(),
                },
            );
        }
    }

    /// The retained messages matching `filter`, as publishes with the RETAIN flag set, and their QoS.
    pub(crate) fn retained_for(&self, filter: &str) -> Vec<(Publish, Option<PublishProperties>, u8)> {
        let retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<_> = retained
            .iter()
            .filter(|(topic, _)| topic_matches(filter, topic))
            .map(|(_, r)| {
                (
                    Publish::new(r.topic.clone(), r.payload.clone(), true),
                    r.props.clone(),
                    r.qos,
                )
            })
            .collect();
        found.sort_by(|a, b| a.0.topic.cmp(&b.0.topic));
        found
    }

    /// Whether a direct subscription with this filter and retain handling gets the retained messages now.
    pub(crate) fn sends_retained(filter: &Filter, existed: bool) -> bool {
        match filter.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => true,
            RetainForwardRule::OnNewSubscribe => !existed,
            RetainForwardRule::Never => false,
        }
    }

    /// Encode a publish (of QoS `qos`) from connection `from` into the outbox of every direct subscriber of
    /// `topic`, at the lower of `qos` and the subscription's, and remember each outbox written to in `touched`
    /// (the caller wakes them once it has handled its read).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver(
        &self,
        targets: &mut Targets,
        from: u64,
        topic: &Bytes,
        topic_str: &str,
        payload: &Bytes,
        retain: bool,
        qos: u8,
        props: Option<&PublishProperties>,
        touched: &mut Vec<Arc<Outbox>>,
    ) {
        let generation = self.generation.load(Ordering::Acquire);
        if targets.generation != generation || targets.topic.as_ref() != Some(topic) {
            targets.outboxes.clear();
            let direct = self.direct.read().unwrap_or_else(|e| e.into_inner());
            for d in direct.iter() {
                if (d.no_local && d.outbox.conn == from) || !topic_matches(&d.filter, topic_str) {
                    continue;
                }
                match targets
                    .outboxes
                    .iter_mut()
                    .find(|(o, _, _)| Arc::ptr_eq(o, &d.outbox))
                {
                    Some((_, keep, max_qos)) => {
                        *keep |= d.retain_as_published;
                        *max_qos = (*max_qos).max(d.qos);
                    }
                    None => targets
                        .outboxes
                        .push((d.outbox.clone(), d.retain_as_published, d.qos)),
                }
            }
            targets.generation = generation;
            targets.topic = Some(topic.clone());
        }
        for (outbox, keep_retain, max_qos) in &targets.outboxes {
            let publish = Publish::new(topic.clone(), payload.clone(), retain && *keep_retain);
            if !outbox.push(publish, props.cloned(), qos.min(*max_qos)) {
                continue;
            }
            if !touched.iter().any(|t| Arc::ptr_eq(t, outbox)) {
                touched.push(outbox.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::QoS;

    fn filter(path: &str) -> Filter {
        Filter {
            path: path.into(),
            qos: QoS::AtMostOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        }
    }

    fn decode_all(codec: &mut Codec, mut bytes: BytesMut) -> Vec<(String, Vec<u8>, bool)> {
        let mut got = Vec::new();
        while !bytes.is_empty() {
            match codec.read(&mut bytes, usize::MAX).unwrap() {
                Packet::Publish(p, _) => got.push((
                    String::from_utf8(p.topic.to_vec()).unwrap(),
                    p.payload.to_vec(),
                    p.retain,
                )),
                other => panic!("not a publish: {other:?}"),
            }
        }
        got
    }

    /// Deliver a publish of QoS `qos` from connection `from`; the outboxes written to.
    fn publish(
        fanout: &Fanout,
        targets: &mut Targets,
        from: u64,
        topic: &str,
        payload: &str,
        retain: bool,
        qos: u8,
    ) -> Vec<Arc<Outbox>> {
        let mut touched = Vec::new();
        let t = Bytes::copy_from_slice(topic.as_bytes());
        let p = Bytes::copy_from_slice(payload.as_bytes());
        fanout.deliver(targets, from, &t, topic, &p, retain, qos, None, &mut touched);
        touched
    }

    /// Payload, QoS and packet id of each publish waiting in `outbox`.
    fn drain_ids(outbox: &Outbox) -> Vec<(String, u8, u16)> {
        let mut bytes = BytesMut::new();
        outbox.take_into(&mut bytes);
        let mut codec = outbox.codec.clone();
        let mut got = Vec::new();
        while !bytes.is_empty() {
            let (qos, pkid) = crate::codec::peek_publish(&bytes).unwrap();
            match codec.read(&mut bytes, usize::MAX).unwrap() {
                Packet::Publish(p, _) => {
                    got.push((String::from_utf8(p.payload.to_vec()).unwrap(), qos, pkid))
                }
                other => panic!("not a publish: {other:?}"),
            }
        }
        got
    }

    fn drain(outbox: &Outbox) -> Vec<(String, Vec<u8>, bool)> {
        let mut out = BytesMut::new();
        outbox.take_into(&mut out);
        decode_all(&mut outbox.codec.clone(), out)
    }

    #[test]
    fn publishes_reach_matching_subscribers_once_and_follow_subscription_changes() {
        let fanout = Fanout::new(1 << 20, Arc::new(Counters::default()));
        let a = fanout.outbox(Codec::new(Version::V4), None, 256);
        let b = fanout.outbox(Codec::new(Version::V5), None, 256);
        assert!(!fanout.subscribe(&a, &filter("d/+/t")));
        assert!(!fanout.subscribe(&a, &filter("d/#")));
        assert!(
            fanout.subscribe(&a, &filter("d/#")),
            "a second subscribe replaces"
        );
        fanout.subscribe(&b, &filter("d/x/t"));
        let mut targets = Targets::default();
        let touched = publish(&fanout, &mut targets, 99, "d/x/t", "1", false, 0);
        assert_eq!(touched.len(), 2);
        publish(&fanout, &mut targets, 99, "d/y/t", "2", true, 0);
        publish(&fanout, &mut targets, 99, "e/y/t", "3", false, 0);
        // Overlapping subscriptions deliver once; RETAIN is cleared for established subscriptions.
        let a_got = drain(&a);
        assert_eq!(
            a_got,
            vec![
                ("d/x/t".to_string(), b"1".to_vec(), false),
                ("d/y/t".to_string(), b"2".to_vec(), false)
            ]
        );
        assert_eq!(drain(&b), vec![("d/x/t".to_string(), b"1".to_vec(), false)]);
        assert!(drain(&a).is_empty(), "taken once");

        // The same cached topic notices an unsubscribe and a connection's end.
        assert!(fanout.unsubscribe(a.conn(), "d/#"));
        assert!(!fanout.unsubscribe(a.conn(), "d/#"));
        publish(&fanout, &mut targets, 99, "d/x/t", "4", false, 0);
        assert_eq!(drain(&a), vec![("d/x/t".to_string(), b"4".to_vec(), false)]);
        fanout.remove(a.conn());
        publish(&fanout, &mut targets, 99, "d/x/t", "5", false, 0);
        assert!(drain(&a).is_empty());
        assert_eq!(drain(&b).len(), 2);
    }

    #[test]
    fn no_local_retain_as_published_and_retained_messages() {
        let fanout = Fanout::new(1 << 20, Arc::new(Counters::default()));
        let a = fanout.outbox(Codec::new(Version::V5), None, 256);
        let mut f = filter("d/#");
        f.nolocal = true;
        f.preserve_retain = true;
        fanout.subscribe(&a, &f);
        let mut targets = Targets::default();
        publish(&fanout, &mut targets, a.conn(), "d/1", "own", false, 0);
        let mut other = Targets::default();
        publish(&fanout, &mut other, 7, "d/1", "kept", true, 0);
        assert_eq!(drain(&a), vec![("d/1".to_string(), b"kept".to_vec(), true)]);

        let t = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        fanout.retain(&t("d/1"), "d/1", &t("one"), 1, None);
        fanout.retain(&t("d/2"), "d/2", &t("two"), 0, None);
        fanout.retain(&t("e/3"), "e/3", &t("three"), 0, None);
        fanout.retain(&t("d/2"), "d/2", &Bytes::new(), 0, None); // cleared
        let found: Vec<_> = fanout
            .retained_for("d/+")
            .into_iter()
            .map(|(p, _, qos)| (p.topic, p.payload, p.retain, qos))
            .collect();
        assert_eq!(found, vec![(t("d/1"), t("one"), true, 1)]);
        let mut never = filter("d/#");
        never.retain_forward_rule = RetainForwardRule::Never;
        assert!(!Fanout::sends_retained(&never, false));
        never.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
        assert!(Fanout::sends_retained(&never, false));
        assert!(!Fanout::sends_retained(&never, true));
    }

    #[test]
    fn a_full_outbox_drops_and_counts_and_a_too_big_packet_is_not_sent() {
        let counters = Arc::new(Counters::default());
        let fanout = Fanout::new(100, counters.clone());
        let small = fanout.outbox(Codec::new(Version::V5), Some(40), 256);
        let big = fanout.outbox(Codec::new(Version::V4), None, 256);
        fanout.subscribe(&small, &filter("#"));
        fanout.subscribe(&big, &filter("#"));
        let mut targets = Targets::default();
        let payload = "x".repeat(30);
        for _ in 0..5 {
            publish(&fanout, &mut targets, 1, "t", &payload, false, 0);
        }
        // Each packet is 35-36 bytes, within the small client's maximum of 40; an outbox refuses once it holds
        // 100 bytes or more, so each takes three and drops two.
        assert_eq!(drain(&small).len(), 3);
        assert_eq!(drain(&big).len(), 3);
        assert_eq!(counters.snapshot().subscriber_dropped, 4);
        let long = "y".repeat(60);
        publish(&fanout, &mut targets, 1, "t", &long, false, 0);
        assert!(drain(&small).is_empty(), "over the client's maximum packet size");
        assert_eq!(drain(&big).len(), 1);
        assert_eq!(counters.snapshot().subscriber_dropped, 5);
    }

    #[test]
    fn qos1_publishes_take_packet_ids_above_the_routers_and_wait_for_room_in_the_window() {
        let counters = Arc::new(Counters::default());
        let fanout = Fanout::new(1 << 20, counters.clone());
        let one = fanout.outbox(Codec::new(Version::V4), None, 2);
        let zero = fanout.outbox(Codec::new(Version::V5), None, 2);
        let mut f = filter("d/#");
        f.qos = QoS::AtLeastOnce;
        fanout.subscribe(&one, &f);
        fanout.subscribe(&zero, &filter("d/#"));
        let mut targets = Targets::default();
        for i in 0..4 {
            publish(&fanout, &mut targets, 9, "d/1", &i.to_string(), false, 1);
        }
        publish(&fanout, &mut targets, 9, "d/1", "q0", false, 0);
        let m = |p: &str, qos, pkid| (p.to_string(), qos, pkid);
        // Two fill the window; a QoS 0 publish does not wait behind the others.
        assert_eq!(
            drain_ids(&one),
            vec![m("0", 1, 101), m("1", 1, 102), m("q0", 0, 0)]
        );
        // A QoS 0 subscription gets everything at QoS 0.
        let qos: Vec<_> = drain_ids(&zero).into_iter().map(|(_, q, _)| q).collect();
        assert_eq!(qos, vec![0; 5]);
        assert!(!one.acked(5), "an id of the router's");
        assert!(!one.acked(999), "never sent");
        assert!(one.acked(102), "acknowledged out of order");
        assert_eq!(drain_ids(&one), vec![m("2", 1, 103)]);
        assert!(!one.acked(102), "only once");
        assert!(one.acked(101));
        assert_eq!(drain_ids(&one), vec![m("3", 1, 104)]);
        assert!(drain_ids(&one).is_empty());
        assert_eq!(counters.snapshot().subscriber_dropped, 0);

        // What waits for the window counts against the outbox's bound: 39 bytes sent, then two of 43 waiting;
        // the fourth and fifth find 125 bytes held and are dropped.
        let small = Fanout::new(100, counters.clone());
        let slow = small.outbox(Codec::new(Version::V4), None, 1);
        small.subscribe(&slow, &f);
        let mut targets = Targets::default();
        let payload = "x".repeat(30);
        for _ in 0..5 {
            publish(&small, &mut targets, 9, "d/t", &payload, false, 1);
        }
        assert_eq!(counters.snapshot().subscriber_dropped, 2);
        let mut got = Vec::new();
        for _ in 0..4 {
            let sent = drain_ids(&slow);
            if let Some((_, _, pkid)) = sent.last() {
                assert!(slow.acked(*pkid));
            }
            got.extend(sent);
        }
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn packet_ids_wrap_above_the_routers_and_skip_those_in_flight() {
        let mut fresh = OutState::default();
        assert_eq!(fresh.next_pkid(), ROUTER_PKID_MAX + 1);
        let mut state = OutState {
            last_pkid: u16::MAX - 1,
            ..Default::default()
        };
        state.inflight.insert(ROUTER_PKID_MAX + 1);
        assert_eq!(state.next_pkid(), u16::MAX);
        assert_eq!(state.next_pkid(), ROUTER_PKID_MAX + 2);
    }
}
