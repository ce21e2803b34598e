//! The NAT lab itself: each profile does what its name says, the physics of
//! TCP simultaneous open hold, delay and loss take effect, nothing is left.
//! These need root (CI runs as root); elsewhere they skip and say why.

mod common;

use std::time::Duration;

use bitpunch::lab::{self, probe, NatProfile};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use std::net::SocketAddr;

use bitpunch::lab::{Lab, LinkShape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Two hosts behind NATs of `profile`, 20 ms one-way on each NAT's link, try
/// a raw simultaneous open. Returns the error if it did not connect.
async fn raw_simultaneous_open(profile: &str) -> Result<(), String> {
    let profile: NatProfile = profile.parse().unwrap();
    let mut lab = Lab::new().unwrap();
    let echo = lab.add_public_host("echo").unwrap();
    let mut nat_a = lab.add_nat("nat-a", profile).unwrap();
    let mut nat_b = lab.add_nat("nat-b", profile).unwrap();
    let alice = lab.add_host_behind(&mut nat_a, "alice").unwrap();
    let bob = lab.add_host_behind(&mut nat_b, "bob").unwrap();
    lab.set_link_shape(&nat_a.link, LinkShape::delay_ms(20))
        .unwrap();
    lab.set_link_shape(&nat_b.link, LinkShape::delay_ms(20))
        .unwrap();

    let echo_rt = lab.runtime(&echo).unwrap();
    let alice_rt = lab.runtime(&alice).unwrap();
    let bob_rt = lab.runtime(&bob).unwrap();
    echo_rt.spawn(probe::echo_server());
    let echo_addr = SocketAddr::new(echo.ip.into(), probe::ECHO_PORT);
    // Ready when it accepts (checked from its own namespace: no NAT state).
    probe::wait_for_echo(&echo_rt, echo_addr).await.unwrap();

    let (port_a, port_b) = (40_001, 40_002);
    let seen_a = alice_rt
        .run(probe::observe(port_a, echo_addr))
        .await
        .unwrap();
    let seen_b = bob_rt.run(probe::observe(port_b, echo_addr)).await.unwrap();

    let attempt = Duration::from_secs(2);
    let spacing = Duration::from_millis(50);
    let a = alice_rt.spawn(probe::simultaneous_open(
        port_a, seen_b, 3, spacing, attempt,
    ));
    let b = bob_rt.spawn(probe::simultaneous_open(
        port_b, seen_a, 3, spacing, attempt,
    ));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let (mut a, mut b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            return Err(format!(
                "alice: {:?}, bob: {:?}",
                a.err().map(|e| e.to_string()),
                b.err().map(|e| e.to_string())
            ))
        }
    };
    // It is one connection, directly between the two NAT mappings.
    assert_eq!(a.peer_addr().unwrap(), seen_b);
    assert_eq!(b.peer_addr().unwrap(), seen_a);
    a.write_all(b"punched").await.unwrap();
    let mut buf = [0u8; 7];
    b.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"punched");
    Ok(())
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_open_works_through_endpoint_independent_nats_that_drop() {
    require_lab!();
    raw_simultaneous_open("home").await.unwrap();
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_open_works_through_endpoint_independent_nats_that_reset() {
    require_lab!();
    raw_simultaneous_open("home-rst").await.unwrap();
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_open_fails_between_random_symmetric_nats() {
    require_lab!();
    let err = raw_simultaneous_open("symmetric").await.unwrap_err();
    assert!(err.contains("after 3 attempts"), "{err}");
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_loss_take_effect() {
    require_lab!();
    let mut lab = Lab::new().unwrap();
    let server = lab.add_public_host("server").unwrap();
    let mut nat = lab.add_nat("nat", "home".parse().unwrap()).unwrap();
    let host = lab.add_host_behind(&mut nat, "host").unwrap();
    let server_rt = lab.runtime(&server).unwrap();
    let host_rt = lab.runtime(&host).unwrap();
    server_rt.spawn(probe::echo_server());
    let echo = SocketAddr::new(server.ip.into(), probe::ECHO_PORT);
    // Ready when it accepts, not after a guessed sleep.
    probe::wait_for_echo(&server_rt, echo).await.unwrap();

    async fn median_connect_ms(rt: &lab::NsRuntime, echo: SocketAddr) -> f64 {
        rt.run(async move {
            let mut samples = Vec::new();
            for _ in 0..7 {
                let start = std::time::Instant::now();
                tokio::net::TcpStream::connect(echo).await.unwrap();
                samples.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            samples.sort_by(f64::total_cmp);
            samples[samples.len() / 2]
        })
        .await
    }
    let baseline = median_connect_ms(&host_rt, echo).await;
    lab.set_link_shape(&nat.link, LinkShape::delay_ms(25))
        .unwrap();
    let delayed = median_connect_ms(&host_rt, echo).await;
    eprintln!(
        "connect RTT: {baseline:.2} ms without delay, {delayed:.2} ms with 25 ms each way ({:?})",
        lab.delay_backend()
    );
    // A TCP connect is one round trip: 2 x 25 ms across the shaped link.
    // The floor is physics; the ceilings are generous, because a busy
    // machine delays the userspace delayer too (it only ever adds).
    assert!(baseline < 25.0, "baseline {baseline}");
    assert!(
        delayed >= 49.0,
        "delayed {delayed}: the 25 ms each way did not take effect"
    );
    assert!(delayed < 200.0, "delayed {delayed}");

    // Loss: 20% of the datagrams that cross the link upwards.
    lab.set_link_shape(
        &nat.link,
        LinkShape {
            loss_percent: 20.0,
            ..Default::default()
        },
    )
    .unwrap();
    let sink = server_rt
        .run(async { tokio::net::UdpSocket::bind("0.0.0.0:9999").await.unwrap() })
        .await;
    let total = 2000u32;
    let counter = server_rt.spawn(async move {
        let mut received = 0u32;
        let mut buf = [0u8; 64];
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(1), sink.recv(&mut buf)).await
        {
            received += 1;
        }
        received
    });
    let target = SocketAddr::new(server.ip.into(), 9999);
    host_rt
        .run(async move {
            let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
            for i in 0..total {
                socket.send_to(&i.to_be_bytes(), target).await.unwrap();
                if i % 50 == 0 {
                    // Paced, so that only the lab drops packets, not a full buffer.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
        .await;
    let received = counter.await.unwrap();
    let loss = 100.0 * f64::from(total - received) / f64::from(total);
    eprintln!("loss: {received}/{total} received, {loss:.1}% lost (20% configured)");
    // Loss is random per datagram: 2,000 at 20% has a standard deviation of
    // 0.9 points, so 16..24 is ±4.5 sigma (a false failure about once in
    // 150,000 runs); the sender is paced so that nothing else drops.
    assert!((16.0..24.0).contains(&loss), "measured loss {loss}%");
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn a_lab_is_removed_even_when_its_test_panics() {
    require_lab!();
    let prefix = std::panic::catch_unwind(|| {
        let mut lab = Lab::new().unwrap();
        let mut nat = lab.add_nat("nat", "home".parse().unwrap()).unwrap();
        lab.add_host_behind(&mut nat, "host").unwrap();
        let prefix = lab.prefix().to_string();
        assert!(lab::netns::list()
            .unwrap()
            .iter()
            .any(|n| n.starts_with(&prefix)));
        std::panic::panic_any(prefix);
    })
    .unwrap_err()
    .downcast::<String>()
    .unwrap();
    let left: Vec<String> = lab::netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(prefix.as_str()))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn bitpunch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bitpunch"))
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn nat_check_all_finds_every_profile_as_configured() {
    require_lab!();
    let out = bitpunch()
        .args(["lab", "nat-check", "--all", "--json", "-q"])
        .output()
        .expect("run nat-check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect();
    assert_eq!(records.len(), NatProfile::all().len(), "{stdout}");
    let mismatches: Vec<_> = records
        .iter()
        .filter(|r| r["matches"] != true || r["profile"] != r["classified"])
        .collect();
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert!(out.status.success());
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn cleanup_removes_what_a_killed_run_left() {
    require_lab!();
    let mut up = bitpunch()
        .args([
            "lab",
            "up",
            "--nat",
            "home",
            "--nat",
            "symmetric",
            "--delay-ms",
            "5",
            "-q",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lab up");
    let mut line = String::new();
    // Kept open, so that the run is killed, not stopped by a broken pipe.
    let mut stdout = BufReader::new(up.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let info: serde_json::Value = serde_json::from_str(&line).expect("lab description");
    let prefix = info["prefix"].as_str().unwrap().to_string();
    let ours = || -> Vec<String> {
        lab::netns::list()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    };
    // inet, public, 2 routers, 2 hosts
    assert_eq!(ours().len(), 6, "{:?}", ours());
    up.kill().unwrap(); // SIGKILL: no chance to clean up
    up.wait().unwrap();
    assert_eq!(ours().len(), 6, "a killed run leaves its namespaces");

    let out = bitpunch().args(["lab", "cleanup", "-q"]).output().unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&prefix), "{said}");
    assert!(ours().is_empty(), "still there: {:?}", ours());
}
