//! BIP324's official test vectors (tests/vectors, copied from the BIP's folder
//! in the bips repository) against the key derivation, packet cipher and
//! decoding our sessions use (`bitpunch::wire::bip324`), and against the
//! bip324 crate's derivation, which the interoperability tests pair with.

use std::collections::HashMap;
use std::path::PathBuf;

use bip324::SessionKeyMaterial;
use bitcoin::secp256k1::ellswift::{ElligatorSwift, ElligatorSwiftParty};
use bitcoin::secp256k1::{PublicKey, SecretKey};

fn vectors(name: &str) -> Vec<HashMap<String, String>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("test vectors missing at {}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            header
                .iter()
                .zip(line.split(','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn bytes<const N: usize>(hex_str: &str) -> [u8; N] {
    hex::decode(hex_str)
        .expect("hex")
        .try_into()
        .expect("length")
}

#[test]
fn session_ids_match_the_packet_encoding_vectors() {
    let rows = vectors("packet_encoding_test_vectors.csv");
    assert!(
        rows.len() >= 7,
        "expected the BIP's vectors, got {}",
        rows.len()
    );
    let mainnet = bitcoin::p2p::Magic::BITCOIN.to_bytes();
    for row in &rows {
        let ours = ElligatorSwift::from_array(bytes(&row["in_ellswift_ours"]));
        let theirs = ElligatorSwift::from_array(bytes(&row["in_ellswift_theirs"]));
        let secret = SecretKey::from_slice(&hex::decode(&row["in_priv_ours"]).unwrap()).unwrap();
        // ECDH input order is (initiator's key, responder's key).
        let (a, b, party) = if row["in_initiating"] == "1" {
            (ours, theirs, ElligatorSwiftParty::A)
        } else {
            (theirs, ours, ElligatorSwiftParty::B)
        };
        let keys = SessionKeyMaterial::from_ecdh(a, b, secret, party, mainnet).unwrap();
        assert_eq!(
            hex::encode(keys.session_id),
            row["out_session_id"],
            "vector {}",
            row["in_idx"]
        );
    }
}

/// Every row, ciphertexts included, through the code path sessions use:
/// derive the keys, skip `in_idx` empty packets, encrypt the row's
/// contents (with its AAD and ignore bit), compare; then decrypt it with the
/// peer's side of the same keys.
#[test]
fn every_packet_vector_through_the_session_cipher() {
    use bitpunch::wire::bip324::{OutboundCipher, Role, SessionKeys};
    let rows = vectors("packet_encoding_test_vectors.csv");
    let mainnet = bitcoin::p2p::Magic::BITCOIN.to_bytes();
    let mut compared = 0;
    for row in &rows {
        let idx: usize = row["in_idx"].parse().unwrap();
        let ours = ElligatorSwift::from_array(bytes(&row["in_ellswift_ours"]));
        let theirs = ElligatorSwift::from_array(bytes(&row["in_ellswift_theirs"]));
        let secret = SecretKey::from_slice(&hex::decode(&row["in_priv_ours"]).unwrap()).unwrap();
        let (role, peer_role, a, b) = if row["in_initiating"] == "1" {
            (Role::Initiator, Role::Responder, ours, theirs)
        } else {
            (Role::Responder, Role::Initiator, theirs, ours)
        };
        let keys = SessionKeys::derive(a, b, secret, role, mainnet);
        assert_eq!(
            hex::encode(keys.session_id),
            row["out_session_id"],
            "row {idx}"
        );
        let (sent_terminator, received_terminator) = keys.terminators(role);
        assert_eq!(
            hex::encode(sent_terminator),
            row["mid_send_garbage_terminator"]
        );
        assert_eq!(
            hex::encode(received_terminator),
            row["mid_recv_garbage_terminator"]
        );

        let (_, mut outbound) = keys.ciphers(role);
        let (mut peer_inbound, _) = keys.ciphers(peer_role);
        for _ in 0..idx {
            let mut skipped = Vec::new();
            outbound
                .encrypt_onto(&mut skipped, &[], false, &[])
                .unwrap();
            let len = peer_inbound.decrypt_length(skipped[..3].try_into().unwrap());
            assert_eq!(len, 0);
            assert!(!peer_inbound.open(&mut skipped[3..], &[]).unwrap().decoy);
        }
        let contents = hex::decode(&row["in_contents"])
            .unwrap()
            .repeat(row["in_multiply"].parse().unwrap());
        let aad = hex::decode(&row["in_aad"]).unwrap();
        let decoy = row["in_ignore"] == "1";
        // The way a session sends: begin, serialise into the buffer, seal.
        let mut packet = Vec::new();
        let start = OutboundCipher::begin(&mut packet);
        packet.extend_from_slice(&contents);
        outbound.seal(&mut packet, start, decoy, &aad).unwrap();
        let expected = &row["out_ciphertext"];
        let ends = &row["out_ciphertext_endswith"];
        if !expected.is_empty() {
            assert_eq!(&hex::encode(&packet), expected, "row {idx}");
        } else {
            assert!(hex::encode(&packet).ends_with(ends.as_str()), "row {idx}");
        }
        compared += 1;

        let len = peer_inbound.decrypt_length(packet[..3].try_into().unwrap());
        assert_eq!(len, contents.len());
        let opened = peer_inbound.open(&mut packet[3..], &aad).unwrap();
        assert_eq!(opened.decoy, decoy);
        assert!(
            packet[4..4 + len] == contents[..],
            "row {idx} decrypts back"
        );
    }
    assert_eq!(compared, rows.len());
}

#[test]
fn any_64_bytes_decode_to_the_listed_point() {
    // A BIP324 responder takes the first 64 bytes of any connection as a key;
    // these vectors are why a random-bytes peer cannot make that step fail.
    let rows = vectors("ellswift_decode_test_vectors.csv");
    assert!(!rows.is_empty());
    for row in &rows {
        let ell = ElligatorSwift::from_array(bytes(&row["ellswift"]));
        let (x, _parity) = PublicKey::from_ellswift(ell).x_only_public_key();
        assert_eq!(hex::encode(x.serialize()), row["x"], "{}", row["ellswift"]);
    }
}
