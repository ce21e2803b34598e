//! Our BIP324 transport against an implementation we did not write, the
//! bip324 crate's, on loopback TCP: each side in each role, the crate
//! sending garbage and decoys, and enough messages both ways to cross the
//! ciphers' rekeying (every 224 packets) several times.

use bip324::futures::Protocol;
use bip324::io::Payload;
use bip324::Role;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::Magic;
use bitpunch::wire::codec::{decode_v2_contents, encode_v2_contents, V2Decoded};
use bitpunch::wire::Channel;
use tokio::net::{TcpListener, TcpStream};

const MESSAGES: u64 = 500;

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

fn other(role: Role) -> Role {
    match role {
        Role::Initiator => Role::Responder,
        Role::Responder => Role::Initiator,
    }
}

async fn talk(ours_role: Role) {
    let magic = Magic::REGTEST;
    let (ours, theirs) = pair().await;
    let (their_read, their_write) = theirs.into_split();
    let crate_side = Protocol::new(
        magic.to_bytes(),
        other(ours_role),
        Some(vec![0x5a; 1000]),
        Some(vec![vec![1, 2, 3], vec![]]),
        their_read,
        their_write,
    );
    let (channel, protocol) = tokio::join!(Channel::v2(ours, magic, ours_role, None), crate_side);
    let (mut our_read, mut our_write) = channel.expect("our handshake").into_split();
    let (mut their_read, mut their_write) = protocol.expect("the crate's handshake").into_split();

    let ours_send = async {
        for i in 0..MESSAGES {
            our_write.send(&NetworkMessage::Ping(i)).await.unwrap();
        }
    };
    let theirs_receive = async {
        for i in 0..MESSAGES {
            let payload = their_read.read().await.unwrap();
            match decode_v2_contents(payload.contents()).unwrap() {
                V2Decoded::Message(m) => assert_eq!(m, NetworkMessage::Ping(i)),
                other => panic!("{other:?}"),
            }
        }
    };
    let theirs_send = async {
        for i in 0..MESSAGES {
            if i % 7 == 0 {
                their_write
                    .write(&Payload::decoy(vec![0; 40]))
                    .await
                    .unwrap();
            }
            let contents = encode_v2_contents(&NetworkMessage::Pong(i));
            their_write
                .write(&Payload::genuine(contents))
                .await
                .unwrap();
        }
    };
    let ours_receive = async {
        for i in 0..MESSAGES {
            let got = our_read.recv().await.unwrap();
            assert_eq!(got, Some(NetworkMessage::Pong(i)));
        }
    };
    tokio::join!(ours_send, theirs_receive, theirs_send, ours_receive);
}

#[tokio::test]
async fn our_initiator_talks_to_the_bip324_crates_responder() {
    talk(Role::Initiator).await;
}

#[tokio::test]
async fn the_bip324_crates_initiator_talks_to_our_responder() {
    talk(Role::Responder).await;
}
