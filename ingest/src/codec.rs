//! MQTT framing for the gateway's connections, on top of rumqttd's own codecs (`rumqttd::protocol::v4::V4`,
//! `v5::V5`): protocol detection from the CONNECT packet, and a peek at a PUBLISH's QoS and packet id (rumqttd
//! keeps those fields crate-private, and the gateway needs them to answer with its own PUBACK).

use bytes::BytesMut;
use rumqttd::protocol::{self, DisconnectProperties, DisconnectReasonCode, Packet, Protocol};

/// The protocol a connection speaks, chosen from its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// Encoder/decoder of one connection.
#[derive(Clone, Debug)]
pub enum Codec {
    V4(protocol::v4::V4),
    V5(protocol::v5::V5),
}

impl Codec {
    pub fn new(version: Version) -> Self {
        match version {
            Version::V4 => Codec::V4(protocol::v4::V4),
            Version::V5 => Codec::V5(protocol::v5::V5),
        }
    }

    pub fn version(&self) -> Version {
        match self {
            Codec::V4(_) => Version::V4,
            Codec::V5(_) => Version::V5,
        }
    }

    /// Take one whole packet off the front of `buf`, or `Err(InsufficientBytes)`.
    pub fn read(&mut self, buf: &mut BytesMut, max_size: usize) -> Result<Packet, protocol::Error> {
        match self {
            Codec::V4(p) => p.read_mut(buf, max_size),
            Codec::V5(p) => p.read_mut(buf, max_size),
        }
    }

    pub fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, protocol::Error> {
        match self {
            Codec::V4(p) => p.write(packet, out),
            Codec::V5(p) => p.write(with_disconnect_properties(packet), out),
        }
    }

    /// Encode `publish` at QoS 1 with packet id `pkid` (rumqttd keeps a publish's QoS and packet id
    /// crate-private: it is encoded at QoS 0, then given the QoS bits and the packet id after its topic).
    pub fn write_qos1(
        &self,
        publish: protocol::Publish,
        props: Option<protocol::PublishProperties>,
        pkid: u16,
        out: &mut BytesMut,
    ) -> Result<usize, protocol::Error> {
        let start = out.len();
        let n = self.write(Packet::Publish(publish, props), out)?;
        let packet = &out[start..];
        let Some(Ok((remaining, header))) = fixed_header(packet) else {
            out.truncate(start);
            return Err(protocol::Error::MalformedPacket);
        };
        let topic_len = u16::from_be_bytes([packet[header], packet[header + 1]]) as usize;
        let remaining = remaining + 2;
        let mut varint = [0u8; 4];
        let varint_len = encode_remaining(remaining, &mut varint);
        let grow = varint_len - (header - 1);
        let (vh, id_at, end) = (start + header, start + header + 2 + topic_len, out.len());
        out.resize(end + 2 + grow, 0);
        out.copy_within(id_at..end, id_at + 2 + grow);
        out.copy_within(vh..id_at, vh + grow);
        out[id_at + grow..id_at + grow + 2].copy_from_slice(&pkid.to_be_bytes());
        out[start] |= 0b0000_0010;
        out[start + 1..start + 1 + varint_len].copy_from_slice(&varint[..varint_len]);
        Ok(n + 2 + grow)
    }
}

/// Encode an MQTT remaining length into `out`; returns how many bytes it took.
fn encode_remaining(mut len: usize, out: &mut [u8; 4]) -> usize {
    for (i, b) in out.iter_mut().enumerate() {
        *b = (len % 128) as u8;
        len /= 128;
        if len == 0 {
            return i + 1;
        }
        *b |= 0x80;
    }
    4
}

/// rumqttd 0.20 miscounts an MQTT 5 DISCONNECT with a reason code: without properties it writes `E0 01 <reason>
/// 00` (a remaining length of 1, then 2 bytes: a strict client reads a malformed packet), and with empty properties
/// `E0 00` (the reason is lost). With a reason string it counts and writes every byte, so every DISCONNECT with a
/// reason that the gateway sends carries one: the reason code's name.
fn with_disconnect_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Disconnect(d, None) if d.reason_code != DisconnectReasonCode::NormalDisconnection => {
            let reason = format!("{:?}", d.reason_code);
            Packet::Disconnect(
                d,
                Some(DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(reason),
                    user_properties: Vec::new(),
                    server_reference: None,
                }),
            )
        }
        other => other,
    }
}

/// What the front of the buffer says about the first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peek {
    /// Not enough bytes yet.
    Incomplete,
    /// Not an MQTT packet we can frame.
    Malformed,
    /// The protocol level of a CONNECT.
    Connect(u8),
    NotConnect,
}

/// Decode the remaining-length varint at `buf[1..]`: (length, bytes used by the fixed header).
fn fixed_header(buf: &[u8]) -> Option<Result<(usize, usize), ()>> {
    let mut len: usize = 0;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some(Ok((len, 2 + i)));
        }
    }
    Some(Err(()))
}

/// Look at the first packet: is it a CONNECT, and with which protocol level?
pub fn peek_connect(buf: &[u8]) -> Peek {
    let Some(&first) = buf.first() else {
        return Peek::Incomplete;
    };
    if first != 0x10 {
        return Peek::NotConnect;
    }
    let (_, header) = match fixed_header(buf) {
        None => return Peek::Incomplete,
        Some(Err(())) => return Peek::Malformed,
        Some(Ok(h)) => h,
    };
    let (Some(&hi), Some(&lo)) = (buf.get(header), buf.get(header + 1)) else {
        return Peek::Incomplete;
    };
    let name_len = u16::from_be_bytes([hi, lo]) as usize;
    if name_len > 6 {
        return Peek::Malformed;
    }
    match buf.get(header + 2 + name_len) {
        None => Peek::Incomplete,
        Some(&level) => Peek::Connect(level),
    }
}

/// QoS and packet id of a PUBLISH at the front of `buf` (call only once the whole packet is there).
pub fn peek_publish(buf: &[u8]) -> Option<(u8, u16)> {
    let first = *buf.first()?;
    if first >> 4 != 3 {
        return None;
    }
    let qos = (first >> 1) & 0b11;
    if qos == 0 {
        return Some((0, 0));
    }
    let (_, header) = fixed_header(buf)?.ok()?;
    let topic_len = u16::from_be_bytes([*buf.get(header)?, *buf.get(header + 1)?]) as usize;
    let at = header + 2 + topic_len;
    let pkid = u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]);
    Some((qos, pkid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks() {
        // CONNECT, MQTT 3.1.1: 10 len 00 04 'MQTT' 04 ...
        assert_eq!(
            peek_connect(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4]),
            Peek::Connect(4)
        );
        assert_eq!(peek_connect(&[0x10, 0x0c, 0, 4, b'M']), Peek::Incomplete);
        assert_eq!(peek_connect(&[0x30]), Peek::NotConnect);
        assert_eq!(
            peek_connect(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Peek::Malformed
        );
        // PUBLISH QoS 1, topic "a/b", pkid 7
        assert_eq!(
            peek_publish(&[0x32, 7, 0, 3, b'a', b'/', b'b', 0, 7]),
            Some((1, 7))
        );
        assert_eq!(peek_publish(&[0x30, 5, 0, 3, b'a', b'/', b'b']), Some((0, 0)));
    }

    /// A QoS 1 publish made by [`Codec::write_qos1`] decodes (by rumqttd) to the same topic, payload, retain flag
    /// and properties, with QoS 1 and the packet id, also where the packet id makes the remaining length's varint
    /// a byte longer (at 127 and 16,383 bytes).
    #[test]
    fn qos1_publishes_decode_back() {
        use bytes::Bytes;
        use protocol::{Publish, PublishProperties};
        for version in [Version::V4, Version::V5] {
            let mut codec = Codec::new(version);
            for payload_len in (0..2).chain(90..130).chain(16_330..16_390).chain([70_000]) {
                let props = (version == Version::V5).then(|| PublishProperties {
                    content_type: Some("application/json".into()),
                    ..Default::default()
                });
                let payload = Bytes::from(vec![b'x'; payload_len]);
                let publish = Publish::new(Bytes::from_static(b"a/topic"), payload.clone(), true);
                let mut out = BytesMut::from(&b"before"[..]);
                let n = codec.write_qos1(publish, props.clone(), 4242, &mut out).unwrap();
                assert_eq!(&out[..6], b"before");
                let mut packet = out.split_off(6);
                assert_eq!(packet.len(), n, "{version:?} {payload_len}");
                assert_eq!(peek_publish(&packet), Some((1, 4242)));
                match codec.read(&mut packet, 1 << 20).unwrap() {
                    Packet::Publish(p, got_props) => {
                        assert_eq!(&p.topic[..], b"a/topic");
                        assert_eq!(p.payload, payload);
                        assert!(p.retain);
                        assert_eq!(got_props, props);
                    }
                    other => panic!("{other:?}"),
                }
                assert!(packet.is_empty());
            }
        }
    }
}
