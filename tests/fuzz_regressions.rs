//! Every fuzz target's body, run on stable: over the committed seeds
//! (fuzz/seeds/TARGET/), over every crash a campaign ever found
//! (fuzz/regressions/TARGET/, each one a bug that was fixed), and over a
//! few thousand deterministic pseudo-random inputs. The nightly fuzzers
//! (fuzz/, `scripts/fuzz`) run the same functions for millions of inputs.

use std::path::{Path, PathBuf};

use bitpunch::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_past_crash_runs_clean() {
    let mut ran = 0;
    for (name, target) in TARGETS {
        for kind in ["seeds", "regressions"] {
            for file in files_in(&fuzz_dir().join(kind).join(name)) {
                let data = std::fs::read(&file).unwrap();
                let result = std::panic::catch_unwind(|| target(&data));
                assert!(result.is_ok(), "{name} panics on {}", file.display());
                ran += 1;
            }
        }
    }
    // The decoders have seeds from real sessions; an empty tree means the
    // files went missing, not that all is well.
    assert!(ran >= 20, "only {ran} seed and regression files found");
}

#[test]
fn every_target_survives_pseudo_random_inputs() {
    // xorshift: deterministic, so a failure here reproduces.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (name, target) in TARGETS {
        for round in 0..1500 {
            let len = (next() % 600) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let result = std::panic::catch_unwind(|| target(&data));
            assert!(
                result.is_ok(),
                "{name} panics on pseudo-random input {round}: {}",
                hex::encode(&data)
            );
        }
    }
}

#[test]
fn every_target_has_a_fuzzer_and_seeds_where_it_decodes() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no fuzz/fuzz_targets/{name}.rs"
        );
    }
}

/// Writes the decoders' seeds from real encodings. Run after changing an
/// encoding: `cargo test --test fuzz_regressions -- --ignored write_seeds`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_seeds() {
    use bitcoin::p2p::message::NetworkMessage;
    use bitcoin::p2p::message_network::VersionMessage;
    use bitcoin::p2p::{Address, Magic, ServiceFlags};
    use bitpunch::identity::{NodeId, NodeKey};
    use bitpunch::libp2p::exchange::ExchangeMessage;
    use bitpunch::native::messages::{FailReason, NativeMessage, PunchResult, PunchRole, COMMANDS};
    use bitpunch::wire::codec;

    let magic = Magic::REGTEST;
    let addr: std::net::SocketAddr = "203.0.113.7:18444".parse().unwrap();
    let key = NodeKey::from_secret(&[3; 32]).unwrap();
    let native = vec![
        NativeMessage::Hello {
            version: 1,
            features: 0,
        },
        NativeMessage::Coordinator {
            version: 1,
            features: 0,
            key: key.public().serialize(),
            signature: [5; 64],
        },
        NativeMessage::Register {
            key: key.public().serialize(),
        },
        NativeMessage::Challenge { nonce: [9; 32] },
        NativeMessage::Prove { signature: [3; 64] },
        NativeMessage::Registered {
            id: key.id(),
            observed: addr,
        },
        NativeMessage::Connect {
            request: 7,
            target: NodeId([4; 12]),
        },
        NativeMessage::Punch {
            request: 7,
            role: PunchRole::Responder,
            peer_key: key.public().serialize(),
            peer: "[2001:db8::7]:8333".parse().unwrap(),
            delay_ms: 40,
        },
        NativeMessage::Fail {
            request: 7,
            reason: FailReason::UnknownPeer,
        },
        NativeMessage::Result {
            request: 7,
            result: PunchResult::Connected,
        },
        NativeMessage::Auth {
            request: 7,
            signature: [8; 64],
        },
    ];
    let mut messages = vec![
        NetworkMessage::Version(VersionMessage::new(
            ServiceFlags::NONE,
            1_700_000_000,
            Address::new(&addr, ServiceFlags::NONE),
            Address::new(&addr, ServiceFlags::NONE),
            42,
            "/Satoshi:29.0.0/".into(),
            900_000,
        )),
        NetworkMessage::Verack,
        NetworkMessage::SendAddrV2,
        NetworkMessage::WtxidRelay,
        NetworkMessage::Ping(0xdead_beef),
        NetworkMessage::Pong(1),
        NetworkMessage::FeeFilter(1000),
    ];
    messages.extend(native.iter().map(NativeMessage::to_network));

    let write = |target: &str, name: String, bytes: &[u8]| {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let mut stream = Vec::new();
    for (i, msg) in messages.iter().enumerate() {
        let v1 = codec::encode_v1(magic, msg);
        write("v1_message", format!("{i:02}-{}", msg.cmd()), &v1);
        write(
            "v2_contents",
            format!("{i:02}-{}", msg.cmd()),
            &codec::encode_v2_contents(msg),
        );
        stream.extend_from_slice(&v1);
    }
    write("channel_v1", "session".into(), &stream);
    write("sniff", "v1".into(), &stream[..16]);
    write("sniff", "multistream".into(), b"\x13/multistream/1.0.0\n");
    write("sniff", "bip324-key".into(), &[0x42; 64]);
    for msg in &native {
        let index = COMMANDS.iter().position(|c| *c == msg.command()).unwrap() as u8;
        let mut bytes = vec![index];
        bytes.extend(msg.encode());
        write("native_message", msg.command().into(), &bytes);
    }
    let connect = ExchangeMessage::Connect(vec![
        "/ip4/203.0.113.2/tcp/4001".parse().unwrap(),
        "/ip6/2001:db8::2/tcp/4001".parse().unwrap(),
    ]);
    for (name, msg) in [("connect", connect), ("sync", ExchangeMessage::Sync)] {
        let body = msg.encode();
        let mut framed = vec![body.len() as u8];
        framed.extend(body);
        write("exchange_message", name.into(), &framed);
    }
    let libp2p_key = libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32]).unwrap();
    let NetworkMessage::Unknown { payload, .. } = bitpunch::libp2p::punch::encode_auth(
        &libp2p_key,
        &[9u8; 32],
        bitpunch::wire::SessionRole::Initiator,
    ) else {
        panic!("bpauth is an Unknown message")
    };
    write("auth_proof", "genuine".into(), &payload);
}
