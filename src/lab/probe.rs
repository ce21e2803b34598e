//! Checks of the lab itself: a STUN-like TCP echo that tells a client the
//! source endpoint it sees, and a classifier that finds a NAT's mapping and
//! filtering behaviour from a host behind it (RFC 4787 / RFC 5780 tests,
//! over TCP).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use super::nat::{Filtering, Mapping, NatProfile, Unsolicited};
use super::{Host, NsRuntime};
use crate::net::dial_from;

/// First of the echo ports; the classifier uses `ECHO_PORTS` of them.
pub const ECHO_PORT: u16 = 3478;
pub const ECHO_PORTS: u16 = 8;

/// Serves the echo on `ECHO_PORT..ECHO_PORT + ECHO_PORTS`: each connection
/// gets one line, `ip:port`, its source as seen here, and is closed (the
/// coordinators' NAT probes, [`crate::nat`]).
pub async fn echo_server() -> Result<()> {
    let mut listeners = Vec::new();
    for port in ECHO_PORT..ECHO_PORT + ECHO_PORTS {
        listeners.push(
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .await
                .with_context(|| format!("echo port {port}"))?,
        );
    }
    futures::future::join_all(listeners.into_iter().map(crate::nat::serve_probes)).await;
    Ok(())
}

/// Connects from `local_port` to an echo server and returns the endpoint the
/// server saw: our NAT mapping towards it.
pub async fn observe(local_port: u16, server: SocketAddr) -> Result<SocketAddr> {
    let local = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), local_port);
    crate::nat::observe(local, server, Duration::from_secs(5)).await
}

/// What the classifier found.
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    /// In the profile notation (`eim/apdf/drop`), or a description of a
    /// behaviour that no lab profile has.
    pub classified: String,
    pub mapping: Option<Mapping>,
    pub filtering: Filtering,
    pub unsolicited: Unsolicited,
    pub hairpin: Option<bool>,
    pub local_port: u16,
    /// External endpoints seen by: server 1, server 2, server 1 on another port.
    pub external: Vec<SocketAddr>,
    /// External ports of successive connections to new destinations.
    pub port_sequence: Vec<u16>,
}

impl Classification {
    pub fn matches(&self, profile: &NatProfile) -> bool {
        self.mapping == Some(profile.effective_mapping())
            && self.filtering == profile.filtering
            && self.unsolicited == profile.unsolicited
            && self.hairpin.is_none_or(|h| h == profile.hairpin)
    }
}

/// The places the classifier works from.
pub struct Vantage<'a> {
    /// The host behind the NAT under test, and a runtime in it.
    pub inside: (&'a Host, &'a NsRuntime),
    /// A second host behind the same NAT, for hairpinning.
    pub neighbour: Option<(&'a Host, &'a NsRuntime)>,
    /// Two echo servers on different addresses.
    pub echo1: (&'a Host, &'a NsRuntime),
    pub echo2: &'a Host,
    /// A public host the inside never talks to.
    pub stranger: (&'a Host, &'a NsRuntime),
    pub nat_public_ip: Ipv4Addr,
    /// How long an inbound probe may take to arrive before it counts as
    /// filtered.
    pub probe_timeout: Duration,
}

/// Does a connection from `from` (its runtime) to `target` reach `listener`?
///
/// Only a connection whose source passes `from_prober` counts. A probe that was late
/// (its handshake completed just after an earlier timeout) waits in the
/// listener's backlog and would otherwise be taken for the next probe's
/// answer: under load that made an endpoint-independent NAT look
/// address-dependent (`nat_check_all_finds_every_profile_as_configured`
/// failed 2 runs in 6). Connections from anyone else are dropped.
async fn reaches(
    from: &NsRuntime,
    listener: &TcpListener,
    target: SocketAddr,
    timeout: Duration,
    from_prober: impl Fn(IpAddr) -> bool,
) -> bool {
    let dial = from.spawn(async move {
        let _ = tokio::time::timeout(timeout, TcpStream::connect(target)).await;
    });
    let deadline = tokio::time::Instant::now() + timeout;
    let mut arrived = false;
    while let Ok(Ok((_, peer))) = tokio::time::timeout_at(deadline, listener.accept()).await {
        if from_prober(peer.ip()) {
            arrived = true;
            break;
        }
        tracing::debug!(%peer, "ignoring a late connection from an earlier probe");
    }
    let _ = dial.await;
    arrived
}

pub async fn classify(v: Vantage<'_>) -> Result<Classification> {
    let (_inside, inside_rt) = v.inside;
    let e1 = SocketAddr::new(v.echo1.0.ip.into(), ECHO_PORT);
    let e2 = SocketAddr::new(v.echo2.ip.into(), ECHO_PORT);

    // A listener on the local port keeps the port ours and receives the
    // filtering probes; outbound connections share it via SO_REUSEPORT.
    let listener = inside_rt
        .run(async {
            crate::net::listen_reusable(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0))
        })
        .await?;
    let local_port = listener.local_addr()?.port();

    let observe_from = |server: SocketAddr| inside_rt.run(observe(local_port, server));
    let x1 = observe_from(e1).await?;
    let x2 = observe_from(e2).await?;
    let x3 = observe_from(SocketAddr::new(e1.ip(), ECHO_PORT + 1)).await?;
    let mut port_sequence = vec![x3.port()];
    for port in ECHO_PORT + 2..ECHO_PORT + ECHO_PORTS {
        port_sequence.push(observe_from(SocketAddr::new(e1.ip(), port)).await?.port());
    }

    let mapping_desc;
    let mapping = if x1 == x2 && x1 == x3 {
        mapping_desc = None;
        Some(if x1.port() == local_port {
            Mapping::EimPreserving
        } else {
            Mapping::EimRandomPort
        })
    } else if x1 == x3 {
        mapping_desc = Some("address-dependent mapping");
        None
    } else {
        mapping_desc = None;
        let sequential = port_sequence
            .windows(2)
            .all(|w| (1..=8).contains(&w[1].wrapping_sub(w[0])));
        Some(if sequential {
            Mapping::SymmetricSequential
        } else {
            Mapping::SymmetricRandom
        })
    };

    // The listener lives in the inside namespace (it was created there) and
    // can be polled from any runtime while the inside one runs.
    let timeout = v.probe_timeout;
    let stranger_rt = v.stranger.1;
    let stranger_ip = IpAddr::V4(v.stranger.0.ip);
    let from_stranger = reaches(stranger_rt, &listener, x1, timeout, |ip| ip == stranger_ip).await;
    // The same address as echo 1 but a port the inside never sent to.
    let echo1_ip = IpAddr::V4(v.echo1.0.ip);
    let from_known_address = reaches(v.echo1.1, &listener, x1, timeout, |ip| ip == echo1_ip).await;
    let filtering = match (from_stranger, from_known_address) {
        (true, _) => Filtering::EndpointIndependent,
        (false, true) => Filtering::AddressDependent,
        (false, false) => Filtering::AddressAndPortDependent,
    };

    // An unmapped port on the router: RST or silence?
    let unmapped = SocketAddr::new(v.nat_public_ip.into(), 9);
    let answer = stranger_rt
        .run(async move { tokio::time::timeout(timeout, TcpStream::connect(unmapped)).await })
        .await;
    let unsolicited = match answer {
        Err(_) => Unsolicited::Drop,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Unsolicited::Rst,
        Ok(Err(e)) => bail!("unsolicited probe failed oddly: {e}"),
        Ok(Ok(_)) => bail!("something answered on port 9 of the router"),
    };

    let hairpin = match v.neighbour {
        // Hairpinned, the neighbour's SYN arrives from whatever source the
        // NAT rewrites it to (the lab's: the router's LAN address); only
        // the earlier probers' late connections are not the answer.
        Some((_, rt)) => Some(
            reaches(rt, &listener, x1, timeout, |ip| {
                ip != stranger_ip && ip != echo1_ip
            })
            .await,
        ),
        None => None,
    };

    let classified = match mapping {
        Some(m) => {
            let mut p = NatProfile::new(m, filtering, unsolicited);
            p.hairpin = hairpin.unwrap_or(false);
            let mut s = p.to_string();
            if hairpin.is_none() {
                s.push_str("/hairpin-unknown");
            }
            s
        }
        None => format!(
            "{}/{}/{}",
            mapping_desc.unwrap_or("unknown mapping"),
            filtering.short(),
            unsolicited.short()
        ),
    };
    Ok(Classification {
        classified,
        mapping,
        filtering,
        unsolicited,
        hairpin,
        local_port,
        external: vec![x1, x2, x3],
        port_sequence,
    })
}

/// One side of a raw TCP simultaneous open: `connect()` from `local_port` to
/// `remote` until it succeeds, `attempts` times at most, `spacing` apart.
/// An RST from the far NAT (its SYN had not left yet) refuses an attempt.
pub async fn simultaneous_open(
    local_port: u16,
    remote: SocketAddr,
    attempts: u32,
    spacing: Duration,
    attempt_timeout: Duration,
) -> Result<TcpStream> {
    let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, local_port));
    let mut last = None;
    for _ in 0..attempts {
        match tokio::time::timeout(attempt_timeout, dial_from(local, remote)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => last = Some("timed out".into()),
        }
        tokio::time::sleep(spacing).await;
    }
    bail!(
        "no connection to {remote} after {attempts} attempts (last: {})",
        last.unwrap_or_default()
    )
}

/// One line of `bitpunch lab nat-check`.
#[derive(Debug, Clone, Serialize)]
pub struct NatCheck {
    pub profile: String,
    pub classified: String,
    pub matches: bool,
    /// The first classification disagreed and this one came from a second
    /// lab with a longer probe timeout (see [`check_profile_twice`]).
    pub rechecked: bool,
    pub details: Classification,
}

/// [`check_profile`], and once more with five times the probe timeout if
/// the NAT did not classify as configured. A probe that is slow is
/// indistinguishable from one that is filtered except by time: on a loaded
/// 2-core CI machine an endpoint-independent NAT once classified as
/// port-dependent within 400 ms. A NAT that is really misconfigured
/// mismatches twice; the second verdict stands.
pub async fn check_profile_twice(profile: NatProfile, probe_timeout: Duration) -> Result<NatCheck> {
    let first = check_profile(profile, probe_timeout).await?;
    if first.matches {
        return Ok(first);
    }
    tracing::info!(%profile, classified = %first.classified, "mismatch; checking again with a longer probe timeout");
    let mut second = check_profile(profile, probe_timeout.saturating_mul(5)).await?;
    second.rechecked = true;
    Ok(second)
}

/// Builds a lab with one NAT of `profile`, two hosts behind it and three
/// public hosts, classifies the NAT from inside, and tears the lab down.
pub async fn check_profile(profile: NatProfile, probe_timeout: Duration) -> Result<NatCheck> {
    let mut lab = super::Lab::new()?;
    let echo1 = lab.add_public_host("echo1")?;
    let echo2 = lab.add_public_host("echo2")?;
    let stranger = lab.add_public_host("stranger")?;
    let mut router = lab.add_nat("nat", profile)?;
    let inside = lab.add_host_behind(&mut router, "inside")?;
    let neighbour = lab.add_host_behind(&mut router, "neighbour")?;

    let echo1_rt = lab.runtime(&echo1)?;
    let echo2_rt = lab.runtime(&echo2)?;
    let stranger_rt = lab.runtime(&stranger)?;
    let inside_rt = lab.runtime(&inside)?;
    let neighbour_rt = lab.runtime(&neighbour)?;
    // Listening before anyone dials: bind in place, serve in the background.
    echo1_rt.spawn(echo_server());
    echo2_rt.spawn(echo_server());
    wait_for_echo(&inside_rt, SocketAddr::new(echo1.ip.into(), ECHO_PORT)).await?;
    wait_for_echo(
        &inside_rt,
        SocketAddr::new(echo2.ip.into(), ECHO_PORT + ECHO_PORTS - 1),
    )
    .await?;

    let details = classify(Vantage {
        inside: (&inside, &inside_rt),
        neighbour: Some((&neighbour, &neighbour_rt)),
        echo1: (&echo1, &echo1_rt),
        echo2: &echo2,
        stranger: (&stranger, &stranger_rt),
        nat_public_ip: router.public_ip,
        probe_timeout,
    })
    .await?;
    Ok(NatCheck {
        profile: profile.to_string(),
        classified: details.classified.clone(),
        matches: details.matches(&profile),
        rechecked: false,
        details,
    })
}

/// Waits until the echo server at `addr` accepts, from a namespace that can
/// reach it without creating NAT state that matters (a fresh local port).
pub async fn wait_for_echo(rt: &NsRuntime, addr: SocketAddr) -> Result<()> {
    for _ in 0..100 {
        let ok = rt
            .run(async move { TcpStream::connect(addr).await.is_ok() })
            .await;
        if ok {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("echo server {addr} never came up")
}
