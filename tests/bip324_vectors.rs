//! BIP324's official test vectors (tests/vectors, copied from the BIP's folder
//! in the bips repository) against the key derivation and decoding our sessions
//! use. Packet ciphertexts are covered by the bip324 crate's own tests of the
//! same vectors (its `test_vector_1..7`); here we check that the public API our
//! handshake goes through derives the session ids the BIP lists.

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
