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
}
