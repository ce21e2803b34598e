//! Bitcoin P2P message encodings on top of the `bitcoin` crate's types.
//!
//! v1: the classic 24-byte header (magic, command, length, checksum) + payload.
//! v2 (BIP324): the packet contents are a 1-byte short id for the common
//! commands, or 0x00 followed by the 12-byte NUL-padded command, then the
//! payload. `bitcoin` 0.32 has no v2 codec, so it lives here.

use bitcoin::consensus::encode::{self, Encodable};
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::Magic;

use super::error::WireError;

/// Bitcoin Core's MAX_PROTOCOL_MESSAGE_LENGTH: no message we accept is larger.
pub const MAX_PAYLOAD: usize = 4_000_000;
pub const V1_HEADER_LEN: usize = 24;
const COMMAND_LEN: usize = 12;

/// BIP324's short message ids; index + 1 is the id.
const SHORT_IDS: [&str; 28] = [
    "addr",
    "block",
    "blocktxn",
    "cmpctblock",
    "feefilter",
    "filteradd",
    "filterclear",
    "filterload",
    "getblocks",
    "getblocktxn",
    "getdata",
    "getheaders",
    "headers",
    "inv",
    "mempool",
    "merkleblock",
    "notfound",
    "ping",
    "pong",
    "sendcmpct",
    "tx",
    "getcfilters",
    "cfilter",
    "getcfheaders",
    "cfheaders",
    "getcfcheckpt",
    "cfcheckpt",
    "addrv2",
];

/// The largest v2 packet contents we accept: a long-form command plus the
/// largest payload.
pub const MAX_V2_CONTENTS: usize = 1 + COMMAND_LEN + MAX_PAYLOAD;

fn short_id(command: &str) -> Option<u8> {
    SHORT_IDS
        .iter()
        .position(|c| *c == command)
        .and_then(|i| u8::try_from(i.saturating_add(1)).ok())
}

/// A 12-byte command field: printable ASCII, then NUL padding only.
fn check_command(command: &[u8; COMMAND_LEN]) -> Result<(), WireError> {
    let name_len = command.iter().position(|&b| b == 0).unwrap_or(COMMAND_LEN);
    let (name, padding) = command.split_at(name_len);
    if name.is_empty()
        || !name.iter().all(|b| b.is_ascii_graphic())
        || padding.iter().any(|&b| b != 0)
    {
        return Err(WireError::Malformed(format!(
            "invalid command field {}",
            hex::encode(command)
        )));
    }
    Ok(())
}

fn payload_bytes(msg: &NetworkMessage) -> Vec<u8> {
    let mut payload = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = msg.consensus_encode(&mut payload);
    payload
}

/// `N` bytes of `bytes` from `at`: header fields, whose offsets are fixed.
fn field<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], WireError> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(|| WireError::Malformed(format!("no {N}-byte field at offset {at}")))
}

pub fn encode_v1(magic: Magic, msg: &NetworkMessage) -> Vec<u8> {
    encode::serialize(&RawNetworkMessage::new(magic, msg.clone()))
}

/// A parsed v1 header; the payload that follows is `len` bytes.
#[derive(Debug)]
pub struct V1Header {
    pub command: [u8; COMMAND_LEN],
    pub len: usize,
}

pub fn parse_v1_header(magic: Magic, header: &[u8; V1_HEADER_LEN]) -> Result<V1Header, WireError> {
    let got: [u8; 4] = field(header, 0)?;
    if got != magic.to_bytes() {
        return Err(WireError::WrongMagic {
            got: hex::encode(got),
            expected: hex::encode(magic.to_bytes()),
        });
    }
    let len = u32::from_le_bytes(field(header, 16)?) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::Oversized {
            len,
            max: MAX_PAYLOAD,
        });
    }
    let command = field(header, 4)?;
    check_command(&command)?;
    Ok(V1Header { command, len })
}

/// Decodes a whole v1 message (header + payload), checking the checksum.
pub fn decode_v1(bytes: &[u8]) -> Result<NetworkMessage, WireError> {
    let raw: RawNetworkMessage =
        encode::deserialize(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok(raw.into_payload())
}

pub fn encode_v2_contents(msg: &NetworkMessage) -> Vec<u8> {
    let command = msg.command();
    let payload = payload_bytes(msg);
    let mut out = Vec::with_capacity(payload.len().saturating_add(1 + COMMAND_LEN));
    match short_id(command.as_ref()) {
        Some(id) => out.push(id),
        None => {
            out.push(0);
            // A CommandString holds at most 12 ASCII bytes.
            let name = command.as_ref().as_bytes();
            out.extend(name.iter().copied().take(COMMAND_LEN));
            out.resize(
                out.len()
                    .saturating_add(COMMAND_LEN.saturating_sub(name.len())),
                0,
            );
        }
    }
    out.extend_from_slice(&payload);
    out
}

/// What a v2 packet decoded to. BIP324 reserves the short ids past the table
/// for future use, and Bitcoin Core ignores messages it cannot name, so an
/// unknown short id is reported rather than treated as an error.
#[derive(Debug)]
pub enum V2Decoded {
    Message(NetworkMessage),
    UnknownShortId(u8),
}

pub fn decode_v2_contents(magic: Magic, contents: &[u8]) -> Result<V2Decoded, WireError> {
    let (&first, rest) = contents
        .split_first()
        .ok_or_else(|| WireError::Malformed("empty v2 packet".into()))?;
    let (command, payload): ([u8; COMMAND_LEN], &[u8]) = if first == 0 {
        if rest.len() < COMMAND_LEN {
            return Err(WireError::Malformed(
                "v2 packet too short for a long-form command".into(),
            ));
        }
        let cmd: [u8; COMMAND_LEN] = field(rest, 0)?;
        check_command(&cmd)?;
        (cmd, rest.get(COMMAND_LEN..).unwrap_or_default())
    } else {
        let Some(name) = SHORT_IDS.get(usize::from(first.saturating_sub(1))) else {
            return Ok(V2Decoded::UnknownShortId(first));
        };
        let mut cmd = [0u8; COMMAND_LEN];
        for (slot, byte) in cmd.iter_mut().zip(name.bytes()) {
            *slot = byte;
        }
        (cmd, rest)
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::Oversized {
            len: payload.len(),
            max: MAX_PAYLOAD,
        });
    }
    // The bitcoin crate decodes payloads only as part of a v1 message, so frame
    // the payload as one; its decoder then also validates the command string.
    let mut framed = Vec::with_capacity(payload.len().saturating_add(V1_HEADER_LEN));
    framed.extend_from_slice(&magic.to_bytes());
    framed.extend_from_slice(&command);
    framed.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    framed.extend(
        sha256d::Hash::hash(payload)
            .to_byte_array()
            .into_iter()
            .take(4),
    );
    framed.extend_from_slice(payload);
    decode_v1(&framed).map(V2Decoded::Message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::p2p::message_network::VersionMessage;
    use bitcoin::p2p::{Address, ServiceFlags};

    fn sample_messages() -> Vec<NetworkMessage> {
        let addr: std::net::SocketAddr = "192.0.2.7:8333".parse().unwrap();
        vec![
            NetworkMessage::Version(VersionMessage::new(
                ServiceFlags::NONE,
                1_700_000_000,
                Address::new(&addr, ServiceFlags::NONE),
                Address::new(&addr, ServiceFlags::NONE),
                42,
                "/bitpunch:test/".into(),
                7,
            )),
            NetworkMessage::Verack,
            NetworkMessage::Ping(0xdead_beef),
            NetworkMessage::Pong(1),
            NetworkMessage::SendAddrV2,
            NetworkMessage::WtxidRelay,
            NetworkMessage::FeeFilter(1000),
        ]
    }

    #[test]
    fn v2_round_trip_uses_short_ids_from_the_bip_table() {
        let magic = Magic::REGTEST;
        for msg in sample_messages() {
            let contents = encode_v2_contents(&msg);
            match decode_v2_contents(magic, &contents).unwrap() {
                V2Decoded::Message(back) => assert_eq!(back, msg),
                other => panic!("{other:?}"),
            }
        }
        // ping is short id 18, pong 19, feefilter 5 (BIP324 table).
        assert_eq!(encode_v2_contents(&NetworkMessage::Ping(1))[0], 18);
        assert_eq!(encode_v2_contents(&NetworkMessage::Pong(1))[0], 19);
        assert_eq!(encode_v2_contents(&NetworkMessage::FeeFilter(1))[0], 5);
        // version and verack have no short id: 0x00 + "version" padded to 12.
        let verack = encode_v2_contents(&NetworkMessage::Verack);
        assert_eq!(&verack[..], b"\x00verack\x00\x00\x00\x00\x00\x00");
    }

    #[test]
    fn v1_round_trip_and_limits() {
        let magic = Magic::SIGNET;
        for msg in sample_messages() {
            let bytes = encode_v1(magic, &msg);
            let header: [u8; 24] = bytes[..24].try_into().unwrap();
            let parsed = parse_v1_header(magic, &header).unwrap();
            assert_eq!(parsed.len, bytes.len() - 24);
            assert_eq!(decode_v1(&bytes).unwrap(), msg);
        }
        let mut oversized = encode_v1(magic, &NetworkMessage::Verack);
        oversized[16..20].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let header: [u8; 24] = oversized[..24].try_into().unwrap();
        assert!(matches!(
            parse_v1_header(magic, &header),
            Err(WireError::Oversized { .. })
        ));
        assert!(matches!(
            parse_v1_header(Magic::BITCOIN, &header),
            Err(WireError::WrongMagic { .. })
        ));
    }

    #[test]
    fn malformed_v2_contents_are_errors_not_panics() {
        let magic = Magic::REGTEST;
        assert!(decode_v2_contents(magic, &[]).is_err());
        assert!(decode_v2_contents(magic, &[0, b'v']).is_err());
        // ping needs an 8-byte nonce.
        assert!(decode_v2_contents(magic, &[18, 1, 2]).is_err());
        // command with bytes after the NUL padding
        let mut bad = vec![0u8];
        bad.extend_from_slice(b"ver\0ack\0\0\0\0\0");
        assert!(decode_v2_contents(magic, &bad).is_err());
        assert!(matches!(
            decode_v2_contents(magic, &[200]).unwrap(),
            V2Decoded::UnknownShortId(200)
        ));
    }
}
