//! Bitcoin P2P message encodings on top of the `bitcoin` crate's types.
//!
//! v1: the classic 24-byte header (magic, command, length, checksum) + payload.
//! v2 (BIP324): the packet contents are a 1-byte short id for the common
//! commands, or 0x00 followed by the 12-byte NUL-padded command, then the
//! payload. `bitcoin` 0.32 has no v2 codec, so it lives here.

use bitcoin::consensus::encode::{self, Decodable, Encodable};
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::p2p::message::{CommandString, NetworkMessage, RawNetworkMessage};
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
    let mut out = Vec::new();
    encode_v2_contents_onto(msg, &mut out);
    out
}

/// Appends a message's v2 contents (short id or long command, then the
/// payload) to `out`: the payload is serialised straight into the buffer
/// the packet is sealed in.
pub fn encode_v2_contents_onto(msg: &NetworkMessage, out: &mut Vec<u8>) {
    let command = msg.command();
    out.reserve(payload_size_hint(msg).saturating_add(1 + COMMAND_LEN));
    match short_id(command.as_ref()) {
        Some(id) => out.push(id),
        None => {
            out.push(0);
            out.extend_from_slice(&command_field(command.as_ref()));
        }
    }
    // Writing to a Vec cannot fail.
    let _ = msg.consensus_encode(out);
}

/// A command as its 12-byte field: the name, then NUL padding. Names
/// longer than 12 bytes (which a `CommandString` cannot hold) are cut.
fn command_field(name: &str) -> [u8; COMMAND_LEN] {
    let mut field = [0u8; COMMAND_LEN];
    for (slot, byte) in field.iter_mut().zip(name.bytes()) {
        *slot = byte;
    }
    field
}

/// The payload's size where it is large and known without serialising, so
/// that the buffer is allocated once; small messages grow it a few times.
fn payload_size_hint(msg: &NetworkMessage) -> usize {
    match msg {
        NetworkMessage::Unknown { payload, .. } => payload.len(),
        NetworkMessage::Block(block) => block.total_size(),
        NetworkMessage::Tx(tx) => tx.total_size(),
        _ => 0,
    }
}

/// What a v2 packet decoded to. BIP324 reserves the short ids past the table
/// for future use, and Bitcoin Core ignores messages it cannot name, so an
/// unknown short id is reported rather than treated as an error.
#[derive(Debug)]
pub enum V2Decoded {
    Message(NetworkMessage),
    UnknownShortId(u8),
}

/// A v2 packet's command and where its payload starts, the payload's size
/// checked; `Err(id)` for a short id BIP324 has not assigned.
fn split_v2_contents(contents: &[u8]) -> Result<Result<(&str, usize), u8>, WireError> {
    let (&first, rest) = contents
        .split_first()
        .ok_or_else(|| WireError::Malformed("empty v2 packet".into()))?;
    if first != 0 {
        let Some(name) = SHORT_IDS.get(usize::from(first.saturating_sub(1))) else {
            return Ok(Err(first));
        };
        check_payload_len(rest.len())?;
        return Ok(Ok((name, 1)));
    }
    let cmd: [u8; COMMAND_LEN] = field(rest, 0)
        .map_err(|_| WireError::Malformed("v2 packet too short for a long-form command".into()))?;
    check_command(&cmd)?;
    let name_len = cmd.iter().position(|&b| b == 0).unwrap_or(COMMAND_LEN);
    let name = rest
        .get(..name_len)
        .and_then(|n| std::str::from_utf8(n).ok())
        .ok_or_else(|| WireError::Malformed("command is not ASCII".into()))?;
    check_payload_len(rest.len().saturating_sub(COMMAND_LEN))?;
    Ok(Ok((name, 1 + COMMAND_LEN)))
}

/// Decodes v2 contents. The payload is parsed where it lies; only a
/// command we do not know copies it (into `NetworkMessage::Unknown`).
pub fn decode_v2_contents(contents: &[u8]) -> Result<V2Decoded, WireError> {
    let (command, at) = match split_v2_contents(contents)? {
        Ok(found) => found,
        Err(id) => return Ok(V2Decoded::UnknownShortId(id)),
    };
    let payload = contents.get(at..).unwrap_or_default();
    match decode_payload(command, payload)? {
        Some(msg) => Ok(V2Decoded::Message(msg)),
        None => Ok(V2Decoded::Message(unknown(command, payload.to_vec())?)),
    }
}

/// [`decode_v2_contents`] of `packet[start..end]`, taking the buffer: a
/// command we do not know keeps its payload in this same allocation
/// (moved to the front), so no message is copied on its way in.
pub fn decode_v2_packet(
    mut packet: Vec<u8>,
    start: usize,
    end: usize,
) -> Result<V2Decoded, WireError> {
    let contents = packet
        .get(start..end)
        .ok_or_else(|| WireError::Malformed("packet shorter than its length".into()))?;
    let (command, at) = match split_v2_contents(contents)? {
        Ok(found) => found,
        Err(id) => return Ok(V2Decoded::UnknownShortId(id)),
    };
    let payload = contents.get(at..).unwrap_or_default();
    if let Some(msg) = decode_payload(command, payload)? {
        return Ok(V2Decoded::Message(msg));
    }
    let command = command.to_owned();
    packet.truncate(end);
    packet.drain(..start.saturating_add(at));
    Ok(V2Decoded::Message(unknown(&command, packet)?))
}

fn check_payload_len(len: usize) -> Result<(), WireError> {
    if len > MAX_PAYLOAD {
        return Err(WireError::Oversized {
            len,
            max: MAX_PAYLOAD,
        });
    }
    Ok(())
}

fn unknown(command: &str, payload: Vec<u8>) -> Result<NetworkMessage, WireError> {
    let command = CommandString::try_from(command.to_owned())
        .map_err(|e| WireError::Malformed(format!("command: {e}")))?;
    Ok(NetworkMessage::Unknown { command, payload })
}

/// The payload of a command the bitcoin crate knows, decoded the way its
/// v1 decoder does (same types, same limits, no bytes left over), but from
/// the slice: no v1 frame, no checksum. `None` for other commands.
fn decode_payload(command: &str, payload: &[u8]) -> Result<Option<NetworkMessage>, WireError> {
    fn parse<T: Decodable>(mut payload: &[u8]) -> Result<(T, usize), encode::Error> {
        let value = T::consensus_decode_from_finite_reader(&mut payload)?;
        Ok((value, payload.len()))
    }
    let malformed = |e: encode::Error| WireError::Malformed(format!("{command}: {e}"));
    let (msg, left) = match command {
        "version" => parse(payload).map(|(m, l)| (NetworkMessage::Version(m), l)),
        "verack" => Ok((NetworkMessage::Verack, payload.len())),
        "addr" => parse(payload).map(|(m, l)| (NetworkMessage::Addr(m), l)),
        "inv" => parse(payload).map(|(m, l)| (NetworkMessage::Inv(m), l)),
        "getdata" => parse(payload).map(|(m, l)| (NetworkMessage::GetData(m), l)),
        "notfound" => parse(payload).map(|(m, l)| (NetworkMessage::NotFound(m), l)),
        "getblocks" => parse(payload).map(|(m, l)| (NetworkMessage::GetBlocks(m), l)),
        "getheaders" => parse(payload).map(|(m, l)| (NetworkMessage::GetHeaders(m), l)),
        "mempool" => Ok((NetworkMessage::MemPool, payload.len())),
        "block" => parse(payload).map(|(m, l)| (NetworkMessage::Block(m), l)),
        "headers" => decode_headers(payload).map(|(m, l)| (NetworkMessage::Headers(m), l)),
        "sendheaders" => Ok((NetworkMessage::SendHeaders, payload.len())),
        "getaddr" => Ok((NetworkMessage::GetAddr, payload.len())),
        "ping" => parse(payload).map(|(m, l)| (NetworkMessage::Ping(m), l)),
        "pong" => parse(payload).map(|(m, l)| (NetworkMessage::Pong(m), l)),
        "merkleblock" => parse(payload).map(|(m, l)| (NetworkMessage::MerkleBlock(m), l)),
        "filterload" => parse(payload).map(|(m, l)| (NetworkMessage::FilterLoad(m), l)),
        "filteradd" => parse(payload).map(|(m, l)| (NetworkMessage::FilterAdd(m), l)),
        "filterclear" => Ok((NetworkMessage::FilterClear, payload.len())),
        "tx" => parse(payload).map(|(m, l)| (NetworkMessage::Tx(m), l)),
        "getcfilters" => parse(payload).map(|(m, l)| (NetworkMessage::GetCFilters(m), l)),
        "cfilter" => parse(payload).map(|(m, l)| (NetworkMessage::CFilter(m), l)),
        "getcfheaders" => parse(payload).map(|(m, l)| (NetworkMessage::GetCFHeaders(m), l)),
        "cfheaders" => parse(payload).map(|(m, l)| (NetworkMessage::CFHeaders(m), l)),
        "getcfcheckpt" => parse(payload).map(|(m, l)| (NetworkMessage::GetCFCheckpt(m), l)),
        "cfcheckpt" => parse(payload).map(|(m, l)| (NetworkMessage::CFCheckpt(m), l)),
        "reject" => parse(payload).map(|(m, l)| (NetworkMessage::Reject(m), l)),
        "alert" => parse(payload).map(|(m, l)| (NetworkMessage::Alert(m), l)),
        "feefilter" => parse::<i64>(payload).and_then(|(fee, l)| {
            // Core's MoneyRange, as the bitcoin crate's decoder checks it.
            let max = bitcoin::Amount::MAX_MONEY.to_sat();
            if fee < 0 || u64::try_from(fee).map_or(true, |f| f > max) {
                return Err(encode::Error::ParseFailed("feefilter value out of range"));
            }
            Ok((NetworkMessage::FeeFilter(fee), l))
        }),
        "sendcmpct" => parse(payload).map(|(m, l)| (NetworkMessage::SendCmpct(m), l)),
        "cmpctblock" => parse(payload).map(|(m, l)| (NetworkMessage::CmpctBlock(m), l)),
        "getblocktxn" => parse(payload).map(|(m, l)| (NetworkMessage::GetBlockTxn(m), l)),
        "blocktxn" => parse(payload).map(|(m, l)| (NetworkMessage::BlockTxn(m), l)),
        "wtxidrelay" => Ok((NetworkMessage::WtxidRelay, payload.len())),
        "addrv2" => parse(payload).map(|(m, l)| (NetworkMessage::AddrV2(m), l)),
        "sendaddrv2" => Ok((NetworkMessage::SendAddrV2, payload.len())),
        _ => return Ok(None),
    }
    .map_err(malformed)?;
    if left != 0 {
        return Err(WireError::Malformed(format!(
            "{command}: {left} bytes after the payload"
        )));
    }
    Ok(Some(msg))
}

/// `headers`: a count, then each header followed by a zero transaction
/// count (the bitcoin crate keeps its decoder for this private).
fn decode_headers(
    mut payload: &[u8],
) -> Result<(Vec<bitcoin::block::Header>, usize), encode::Error> {
    let count = encode::VarInt::consensus_decode_from_finite_reader(&mut payload)?.0;
    // Allocate by what arrives, not by the announced count: every header
    // needs 81 bytes of payload.
    let possible = payload.len() / 81;
    let mut headers = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(possible));
    for _ in 0..count {
        headers.push(bitcoin::block::Header::consensus_decode_from_finite_reader(
            &mut payload,
        )?);
        if u8::consensus_decode_from_finite_reader(&mut payload)? != 0 {
            return Err(encode::Error::ParseFailed(
                "Headers message should not contain transactions",
            ));
        }
    }
    Ok((headers, payload.len()))
}

/// The bitcoin crate's own v1 decoder applied to v2 contents framed as a v1
/// message: the reference that [`decode_v2_contents`] is tested against.
#[doc(hidden)]
pub fn decode_v2_contents_by_reframing(
    magic: Magic,
    contents: &[u8],
) -> Result<V2Decoded, WireError> {
    let (command, at) = match split_v2_contents(contents)? {
        Ok(found) => found,
        Err(id) => return Ok(V2Decoded::UnknownShortId(id)),
    };
    let payload = contents.get(at..).unwrap_or_default();
    let field = command_field(command);
    let mut framed = Vec::with_capacity(payload.len().saturating_add(V1_HEADER_LEN));
    framed.extend_from_slice(&magic.to_bytes());
    framed.extend_from_slice(&field);
    framed.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
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
        for msg in sample_messages() {
            let contents = encode_v2_contents(&msg);
            match decode_v2_contents(&contents).unwrap() {
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
        assert!(decode_v2_contents(&[]).is_err());
        assert!(decode_v2_contents(&[0, b'v']).is_err());
        // ping needs an 8-byte nonce.
        assert!(decode_v2_contents(&[18, 1, 2]).is_err());
        // command with bytes after the NUL padding
        let mut bad = vec![0u8];
        bad.extend_from_slice(b"ver\0ack\0\0\0\0\0");
        assert!(decode_v2_contents(&bad).is_err());
        assert!(matches!(
            decode_v2_contents(&[200]).unwrap(),
            V2Decoded::UnknownShortId(200)
        ));
    }

    fn same(a: &Result<V2Decoded, WireError>, b: &Result<V2Decoded, WireError>) -> bool {
        match (a, b) {
            (Ok(V2Decoded::Message(x)), Ok(V2Decoded::Message(y))) => x == y,
            (Ok(V2Decoded::UnknownShortId(x)), Ok(V2Decoded::UnknownShortId(y))) => x == y,
            (Err(_), Err(_)) => true,
            _ => false,
        }
    }

    #[test]
    fn direct_decoding_agrees_with_the_bitcoin_crates_v1_decoder_on_real_messages() {
        let mut messages = sample_messages();
        messages.push(NetworkMessage::Unknown {
            command: CommandString::try_from_static("benchblob").unwrap(),
            payload: vec![7; 3000],
        });
        messages.push(NetworkMessage::Headers(vec![
            bitcoin::constants::genesis_block(bitcoin::Network::Regtest).header;
            3
        ]));
        messages.push(NetworkMessage::Block(bitcoin::constants::genesis_block(
            bitcoin::Network::Bitcoin,
        )));
        for msg in messages {
            let contents = encode_v2_contents(&msg);
            let direct = decode_v2_contents(&contents);
            let reference = decode_v2_contents_by_reframing(Magic::REGTEST, &contents);
            assert!(same(&direct, &reference), "{msg:?}");
            let mut framed = vec![0xee; 5];
            framed.extend_from_slice(&contents);
            framed.extend_from_slice(&[0xdd; 16]);
            let owned = decode_v2_packet(framed, 5, 5 + contents.len());
            assert!(same(&owned, &direct), "{msg:?}");
            assert!(matches!(direct, Ok(V2Decoded::Message(ref m)) if *m == msg));
        }
    }

    proptest::proptest! {
        /// Any contents: both decoders accept the same, to the same message.
        #[test]
        fn direct_decoding_agrees_with_reframing_on_any_contents(
            id in proptest::prop_oneof![0u8..=30, proptest::strategy::Just(0u8)],
            command in proptest::sample::select(vec![
                "version", "verack", "addr", "headers", "feefilter", "alert",
                "getcfilters", "reject", "sendcmpct", "cmpctblock", "tx", "junk",
            ]),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let mut contents = vec![id];
            if id == 0 {
                let mut field = [0u8; COMMAND_LEN];
                field[..command.len()].copy_from_slice(command.as_bytes());
                contents.extend_from_slice(&field);
            }
            contents.extend_from_slice(&payload);
            let direct = decode_v2_contents(&contents);
            let reference = decode_v2_contents_by_reframing(Magic::REGTEST, &contents);
            proptest::prop_assert!(same(&direct, &reference), "{:?} vs {:?}", direct, reference);
        }
    }
}
