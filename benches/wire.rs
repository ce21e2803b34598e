//! The cost of BIP324 in bitpunch's own I/O path: session throughput on
//! loopback against plain TCP and against the bare AEAD (ours and the
//! bip324 crate's), the handshake, and the v2 message codec. Figures go to docs/results.md; nothing is asserted.

use std::time::{Duration, Instant};

use bip324::{GarbageResult, Handshake, Initialized, PacketType, Role, VersionResult};
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::{CommandString, NetworkMessage};
use bitcoin::p2p::Magic;
use bitpunch::wire::codec::{decode_v2_contents, encode_v2_contents};
use bitpunch::wire::Channel;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (a, b) = (a.unwrap(), b.unwrap().0);
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

fn big_message() -> NetworkMessage {
    NetworkMessage::Unknown {
        command: CommandString::try_from_static("benchblob").unwrap(),
        payload: vec![0xab; MIB],
    }
}

/// 1 MiB each way at once, over BIP324 sessions on loopback TCP.
fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("throughput_1MiB_each_way");
    group.throughput(Throughput::Bytes(2 * MIB as u64));
    group.sample_size(20);

    let (mut a_read, mut a_write, mut b_read, mut b_write) = rt.block_on(async {
        let (a, b) = tcp_pair().await;
        let (a, b) = tokio::join!(
            Channel::v2(a, Magic::REGTEST, Role::Initiator, None),
            Channel::v2(b, Magic::REGTEST, Role::Responder, None)
        );
        let (ar, aw) = a.unwrap().into_split();
        let (br, bw) = b.unwrap().into_split();
        (ar, aw, br, bw)
    });
    let msg = big_message();
    group.bench_function("bip324_session", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let (w1, w2, r1, r2) = tokio::join!(
                        a_write.send(&msg),
                        b_write.send(&msg),
                        a_read.recv(),
                        b_read.recv()
                    );
                    w1.unwrap();
                    w2.unwrap();
                    r1.unwrap();
                    r2.unwrap();
                }
                start.elapsed()
            })
        })
    });

    let (mut a, mut b) = rt.block_on(tcp_pair());
    let payload = vec![0xab; MIB];
    group.bench_function("plain_tcp", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let (mut ar, mut aw) = a.split();
                let (mut br, mut bw) = b.split();
                let mut ab = vec![0u8; MIB];
                let mut ba = vec![0u8; MIB];
                let start = Instant::now();
                for _ in 0..iters {
                    let (w1, w2, r1, r2) = tokio::join!(
                        aw.write_all(&payload),
                        bw.write_all(&payload),
                        ar.read_exact(&mut ba),
                        br.read_exact(&mut ab)
                    );
                    w1.unwrap();
                    w2.unwrap();
                    r1.unwrap();
                    r2.unwrap();
                }
                start.elapsed()
            })
        })
    });

    // The AEAD alone: encrypt and decrypt 1 MiB twice (both directions'
    // work), no I/O, no framing.
    let ((mut a_in, mut a_out), (mut b_in, mut b_out)) =
        bitpunch::wire::bip324::cipher_pair(Magic::REGTEST.to_bytes());
    let mut buf = Vec::with_capacity(MIB + 64);
    group.bench_function("bare_aead", |bench| {
        bench.iter(|| {
            our_one_way(&mut a_out, &mut b_in, &payload, &mut buf);
            our_one_way(&mut b_out, &mut a_in, &payload, &mut buf);
        })
    });
    group.finish();

    // One direction, one operation, 1 MiB: the unit of Bitcoin Core's
    // FSCHACHA20POLY1305_1MB benchmark, for ours and the bip324 crate's.
    let mut group = c.benchmark_group("aead_1MiB");
    group.throughput(Throughput::Bytes(MIB as u64));
    let ((_, mut out), _) = bitpunch::wire::bip324::cipher_pair(Magic::REGTEST.to_bytes());
    group.bench_function("bitpunch_encrypt", |bench| {
        bench.iter(|| {
            buf.clear();
            out.encrypt_onto(&mut buf, &payload, false, &[]).unwrap();
        })
    });
    let ((_, mut out), (mut inb, _)) =
        bitpunch::wire::bip324::cipher_pair(Magic::REGTEST.to_bytes());
    group.bench_function("bitpunch_encrypt_decrypt", |bench| {
        bench.iter(|| our_one_way(&mut out, &mut inb, &payload, &mut buf))
    });
    // The primitive underneath, alone: RustCrypto's ChaCha20-Poly1305 in
    // place, no rekeying, no framing.
    {
        use chacha20poly1305::aead::AeadInPlace;
        use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
        let aead = ChaCha20Poly1305::new(&[7u8; 32].into());
        let mut data = payload.clone();
        group.bench_function("rustcrypto_chacha20poly1305_encrypt", |bench| {
            bench.iter(|| {
                aead.encrypt_in_place_detached(&[0u8; 12].into(), b"", &mut data)
                    .unwrap()
            })
        });
        use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]).unwrap());
        group.bench_function("ring_chacha20poly1305_encrypt", |bench| {
            bench.iter(|| {
                key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([0u8; 12]),
                    Aad::empty(),
                    &mut data,
                )
                .unwrap()
            })
        });
    }
    let (mut init, mut resp) = cipher_pair();
    group.bench_function("bip324_crate_encrypt_decrypt", |bench| {
        bench.iter(|| one_way(&mut init, &mut resp, &payload))
    });
    group.finish();
}

fn our_one_way(
    tx: &mut bitpunch::wire::bip324::OutboundCipher,
    rx: &mut bitpunch::wire::bip324::InboundCipher,
    payload: &[u8],
    buf: &mut Vec<u8>,
) {
    buf.clear();
    tx.encrypt_onto(buf, payload, false, &[]).unwrap();
    let n = rx.decrypt_length(buf[..3].try_into().unwrap());
    rx.open(&mut buf[3..], &[]).unwrap();
    assert_eq!(n, payload.len());
}

fn one_way(tx: &mut bip324::CipherSession, rx: &mut bip324::CipherSession, payload: &[u8]) {
    let packet = tx
        .outbound()
        .encrypt_to_vec(payload, PacketType::Genuine, None);
    let len: [u8; 3] = packet[..3].try_into().unwrap();
    let n = rx.inbound().decrypt_packet_len(len);
    let (_, plain) = rx
        .inbound()
        .decrypt_to_vec(&packet[3..3 + n], None)
        .unwrap();
    assert_eq!(plain.len(), payload.len() + 1);
}

/// Two ends of a BIP324 session, made by running the bip324 crate's
/// handshake state machines against each other in memory.
fn cipher_pair() -> (bip324::CipherSession, bip324::CipherSession) {
    let magic = Magic::REGTEST.to_bytes();
    let a = Handshake::<Initialized>::new(magic, Role::Initiator).unwrap();
    let b = Handshake::<Initialized>::new(magic, Role::Responder).unwrap();
    let (mut ka, mut kb) = ([0u8; 64], [0u8; 64]);
    let a = a.send_key(None, &mut ka).unwrap();
    let b = b.send_key(None, &mut kb).unwrap();
    let a = a.receive_key(kb).unwrap();
    let b = b.receive_key(ka).unwrap();
    let mut va = vec![0u8; Handshake::<bip324::ReceivedKey>::send_version_len(None)];
    let mut vb = va.clone();
    let a = a.send_version(&mut va, None).unwrap();
    let b = b.send_version(&mut vb, None).unwrap();
    let finish = |h: Handshake<bip324::SentVersion>, incoming: &[u8]| {
        let GarbageResult::FoundGarbage {
            mut handshake,
            consumed_bytes,
        } = h.receive_garbage(incoming).ok().unwrap()
        else {
            panic!("terminator")
        };
        let rest = &incoming[consumed_bytes..];
        let len = handshake
            .decrypt_packet_len(rest[..3].try_into().unwrap())
            .unwrap();
        let mut packet = rest[3..3 + len].to_vec();
        match handshake.receive_version(&mut packet).unwrap() {
            VersionResult::Complete { cipher } => cipher,
            VersionResult::Decoy(_) => panic!("no decoys sent"),
        }
    };
    (finish(a, &vb), finish(b, &va))
}

/// A whole handshake, both sides, over an in-memory pipe: the CPU cost of
/// BIP324's key exchange without network waits.
fn handshake(c: &mut Criterion) {
    let rt = runtime();
    c.bench_function("bip324_handshake_both_sides", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let (a, b) = tokio::io::duplex(4096);
                    let (a, b) = tokio::join!(
                        Channel::v2(a, Magic::REGTEST, Role::Initiator, None),
                        Channel::v2(b, Magic::REGTEST, Role::Responder, None)
                    );
                    assert_eq!(a.unwrap().session_id(), b.unwrap().session_id());
                }
                start.elapsed()
            })
        })
    });
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("v2_codec");
    let inv = NetworkMessage::Inv(
        (0..32)
            .map(|i| {
                bitcoin::p2p::message_blockdata::Inventory::WTx(bitcoin::Wtxid::from_byte_array(
                    [i; 32],
                ))
            })
            .collect(),
    );
    for (name, msg) in [
        ("ping", NetworkMessage::Ping(7)),
        ("verack", NetworkMessage::Verack),
        ("inv_32", inv),
    ] {
        let contents = encode_v2_contents(&msg);
        group.bench_with_input(BenchmarkId::new("encode", name), &msg, |b, m| {
            b.iter(|| encode_v2_contents(m))
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &contents, |b, c| {
            b.iter(|| decode_v2_contents(c).unwrap())
        });
    }
    group.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = quick();
    targets = throughput, handshake, codec
}
criterion_main!(benches);
