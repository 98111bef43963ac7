//! The gateway's own delivery to MQTT subscribers, for the common case: QoS 0 subscriptions of clean sessions.
//!
//! Every publish used to travel a second hop to MQTT subscribers: into rumqttd's router (a channel send, the
//! router thread waking up, its in-memory log, its per-subscriber cursors) and back out through the subscriber's
//! local link. For a *direct* subscription the publishing connection instead encodes the publish straight into
//! the subscriber's [`Outbox`] and wakes the subscriber's connection once per socket read, which writes the
//! outbox to its socket in one go.
//!
//! A subscription is direct when its session is clean (nothing outlives the connection), it asks for QoS 0, it
//! is not a shared subscription (`$share/...`) and it carries no subscription identifier. MQTT 5's no-local,
//! retain-as-published and retain-handling options are honoured here. Everything else — QoS 1 and 2 delivery,
//! persistent sessions, shared subscriptions, subscription identifiers — stays with rumqttd's router, and a
//! publish is handed to the router only while some router subscription may exist (the count is conservative:
//! a persistent session's subscriptions are never taken off it) or when it is retained (the router keeps its
//! own retained messages for its subscribers).
//!
//! Retained messages for direct subscriptions are kept here, the last one per topic (an empty retained payload
//! clears the topic), and sent after the SUBACK, with the RETAIN flag set.
//!
//! A direct subscriber that does not read its socket fast enough is not allowed to hold the publishers back or
//! to grow without bound: once its outbox holds `subscriber_buffer_bytes`, further publishes to it are dropped
//! (QoS 0 is "at most once") and counted in `freshet_ingest_subscriber_dropped_total`; the durable path into
//! the store is not affected. rumqttd's router, in the same situation, moves the subscriber's read cursor
//! forward with only a log line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{Filter, Packet, Publish, PublishProperties, RetainForwardRule};
use tokio::sync::Notify;

use crate::codec::{Codec, Version};
use crate::metrics::Counters;
use crate::rules::topic_matches;

/// Where the publishes for one connection's direct subscriptions wait for its socket.
pub(crate) struct Outbox {
    conn: u64,
    codec: Codec,
    /// The client's maximum packet size (MQTT 5); larger publishes are not sent to it (the spec says discard).
    max_packet: usize,
    buffer_max: usize,
    buf: Mutex<BytesMut>,
    notify: Notify,
}

impl Outbox {
    pub(crate) fn conn(&self) -> u64 {
        self.conn
    }

    /// Encode a publish into the outbox; false when it was dropped (outbox full, or too big for the client).
    fn push(&self, publish: Publish, props: Option<PublishProperties>) -> bool {
        let props = match self.codec.version() {
            Version::V5 => props,
            Version::V4 => None,
        };
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() >= self.buffer_max {
            return false;
        }
        let before = buf.len();
        match self.codec.write(Packet::Publish(publish, props), &mut buf) {
            Ok(n) if n <= self.max_packet => true,
            _ => {
                buf.truncate(before);
                false
            }
        }
    }

    /// Move whatever is waiting onto the end of `out` (without copying when `out` is empty).
    pub(crate) fn take_into(&self, out: &mut BytesMut) {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if out.is_empty() {
            std::mem::swap(&mut *buf, out);
        } else if !buf.is_empty() {
            out.extend_from_slice(&buf);
            buf.clear();
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
    /// whether any of its matching subscriptions keeps the RETAIN flag.
    outboxes: Vec<(Arc<Outbox>, bool)>,
}

/// A retained message kept for direct subscriptions.
struct Retained {
    topic: Bytes,
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

    /// A new connection's outbox (registered only when it subscribes).
    pub(crate) fn outbox(&self, codec: Codec, max_packet: Option<u32>) -> Arc<Outbox> {
        Arc::new(Outbox {
            conn: self.next_conn.fetch_add(1, Ordering::Relaxed),
            codec,
            max_packet: max_packet.map_or(usize::MAX, |m| m as usize),
            buffer_max: self.buffer_max,
            buf: Mutex::new(BytesMut::new()),
            notify: Notify::new(),
        })
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Whether `filter` (already checked valid and allowed) may be a direct subscription of a connection.
    pub(crate) fn eligible(clean_session: bool, filter: &Filter, subscription_id: Option<usize>) -> bool {
        clean_session
            && filter.qos == rumqttd::protocol::QoS::AtMostOnce
            && subscription_id.is_none()
            && !filter.path.starts_with("$share/")
    }

    /// Add or replace a direct subscription; returns whether the connection already had one on this filter.
    pub(crate) fn subscribe(&self, outbox: &Arc<Outbox>, filter: &Filter) -> bool {
        let entry = Direct {
            filter: filter.path.clone(),
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
                    payload: payload.clone(),
                    props: props.cloned(),
                },
            );
        }
    }

    /// The retained messages matching `filter`, as publishes with the RETAIN flag set.
    pub(crate) fn retained_for(&self, filter: &str) -> Vec<(Publish, Option<PublishProperties>)> {
        let retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<_> = retained
            .iter()
            .filter(|(topic, _)| topic_matches(filter, topic))
            .map(|(_, r)| {
                (
                    Publish::new(r.topic.clone(), r.payload.clone(), true),
                    r.props.clone(),
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

    /// Encode a publish from connection `from` into the outbox of every direct subscriber of `topic`, and
    /// remember each outbox written to in `touched` (the caller wakes them once it has handled its read).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver(
        &self,
        targets: &mut Targets,
        from: u64,
        topic: &Bytes,
        topic_str: &str,
        payload: &Bytes,
        retain: bool,
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
                    .find(|(o, _)| Arc::ptr_eq(o, &d.outbox))
                {
                    Some((_, keep)) => *keep |= d.retain_as_published,
                    None => targets.outboxes.push((d.outbox.clone(), d.retain_as_published)),
                }
            }
            targets.generation = generation;
            targets.topic = Some(topic.clone());
        }
        for (outbox, keep_retain) in &targets.outboxes {
            let publish = Publish::new(topic.clone(), payload.clone(), retain && *keep_retain);
            if !outbox.push(publish, props.cloned()) {
                self.counters.subscriber_dropped();
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

    fn publish(
        fanout: &Fanout,
        targets: &mut Targets,
        from: u64,
        topic: &str,
        payload: &str,
        retain: bool,
    ) -> Vec<Arc<Outbox>> {
        let mut touched = Vec::new();
        let t = Bytes::copy_from_slice(topic.as_bytes());
        let p = Bytes::copy_from_slice(payload.as_bytes());
        fanout.deliver(targets, from, &t, topic, &p, retain, None, &mut touched);
        touched
    }

    fn drain(outbox: &Outbox) -> Vec<(String, Vec<u8>, bool)> {
        let mut out = BytesMut::new();
        outbox.take_into(&mut out);
        decode_all(&mut outbox.codec.clone(), out)
    }

    #[test]
    fn publishes_reach_matching_subscribers_once_and_follow_subscription_changes() {
        let fanout = Fanout::new(1 << 20, Arc::new(Counters::default()));
        let a = fanout.outbox(Codec::new(Version::V4), None);
        let b = fanout.outbox(Codec::new(Version::V5), None);
        assert!(!fanout.subscribe(&a, &filter("d/+/t")));
        assert!(!fanout.subscribe(&a, &filter("d/#")));
        assert!(
            fanout.subscribe(&a, &filter("d/#")),
            "a second subscribe replaces"
        );
        fanout.subscribe(&b, &filter("d/x/t"));
        let mut targets = Targets::default();
        let touched = publish(&fanout, &mut targets, 99, "d/x/t", "1", false);
        assert_eq!(touched.len(), 2);
        publish(&fanout, &mut targets, 99, "d/y/t", "2", true);
        publish(&fanout, &mut targets, 99, "e/y/t", "3", false);
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
        publish(&fanout, &mut targets, 99, "d/x/t", "4", false);
        assert_eq!(drain(&a), vec![("d/x/t".to_string(), b"4".to_vec(), false)]);
        fanout.remove(a.conn());
        publish(&fanout, &mut targets, 99, "d/x/t", "5", false);
        assert!(drain(&a).is_empty());
        assert_eq!(drain(&b).len(), 2);
    }

    #[test]
    fn no_local_retain_as_published_and_retained_messages() {
        let fanout = Fanout::new(1 << 20, Arc::new(Counters::default()));
        let a = fanout.outbox(Codec::new(Version::V5), None);
        let mut f = filter("d/#");
        f.nolocal = true;
        f.preserve_retain = true;
        fanout.subscribe(&a, &f);
        let mut targets = Targets::default();
        publish(&fanout, &mut targets, a.conn(), "d/1", "own", false);
        let mut other = Targets::default();
        publish(&fanout, &mut other, 7, "d/1", "kept", true);
        assert_eq!(drain(&a), vec![("d/1".to_string(), b"kept".to_vec(), true)]);

        let t = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        fanout.retain(&t("d/1"), "d/1", &t("one"), None);
        fanout.retain(&t("d/2"), "d/2", &t("two"), None);
        fanout.retain(&t("e/3"), "e/3", &t("three"), None);
        fanout.retain(&t("d/2"), "d/2", &Bytes::new(), None); // cleared
        let found: Vec<_> = fanout
            .retained_for("d/+")
            .into_iter()
            .map(|(p, _)| (p.topic, p.payload, p.retain))
            .collect();
        assert_eq!(found, vec![(t("d/1"), t("one"), true)]);
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
        let small = fanout.outbox(Codec::new(Version::V5), Some(40));
        let big = fanout.outbox(Codec::new(Version::V4), None);
        fanout.subscribe(&small, &filter("#"));
        fanout.subscribe(&big, &filter("#"));
        let mut targets = Targets::default();
        let payload = "x".repeat(30);
        for _ in 0..5 {
            publish(&fanout, &mut targets, 1, "t", &payload, false);
        }
        // Each packet is 35-36 bytes, within the small client's maximum of 40; an outbox refuses once it holds
        // 100 bytes or more, so each takes three and drops two.
        assert_eq!(drain(&small).len(), 3);
        assert_eq!(drain(&big).len(), 3);
        assert_eq!(counters.snapshot().subscriber_dropped, 4);
        let long = "y".repeat(60);
        publish(&fanout, &mut targets, 1, "t", &long, false);
        assert!(drain(&small).is_empty(), "over the client's maximum packet size");
        assert_eq!(drain(&big).len(), 1);
        assert_eq!(counters.snapshot().subscriber_dropped, 5);
    }
}
