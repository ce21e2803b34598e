//! The shared port (DESIGN.md decisions 1 and 2): one TCP port `L` that every
//! connection of the node leaves from, and one accept loop on it that routes
//! each inbound connection to whoever owns it.

pub mod admission;
pub mod routable;
pub mod router;
pub mod stream;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub use admission::{Admission, AdmissionConfig, NetGroup};
pub use router::{Inbound, Route, Router, StreamKind};

/// One TCP port, bound with `SO_REUSEADDR` + `SO_REUSEPORT` so that outbound
/// connections (and later, punch attempts) can leave from it while it listens.
pub struct SharedPort {
    /// Until the accept loop takes them.
    listeners: Vec<TcpListener>,
    local_addrs: Vec<SocketAddr>,
    port: u16,
    /// The address outbound connections bind to: the listen IP when it is a
    /// specific one, so that the source address matches what peers expect.
    bind_ip: Option<IpAddr>,
    /// Every punch SYN from this port is paid from here, whichever path
    /// asked (docs/security.md).
    budget: std::sync::Mutex<crate::punch::budget::PunchBudget>,
}

fn reusable_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // The v4 wildcard is bound separately; without this the v6 wildcard
        // would claim v4 too and the second bind would clash.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Fails when something already listens on `addr`'s port. `SO_REUSEPORT`
/// would otherwise let a second bitpunch bind the same port beside the
/// first and silently take half of its inbound connections. The probe sets
/// `SO_REUSEADDR` only: it binds past TIME_WAIT and past our own outbound
/// connections, but not past a listener.
fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "port {} is already in use by another listener (another bitpunch on this port? \
                 one process per shared port: stop it, or pick another --port)",
                addr.port()
            ),
        )),
        Err(e) => Err(e),
    }
}

/// A listener on `addr` with the reuse options, so that outbound connections
/// can share its port. Must be called inside a tokio runtime.
pub fn listen_reusable(addr: SocketAddr) -> io::Result<TcpListener> {
    ensure_port_free(addr)?;
    let socket = reusable_socket(addr)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl SharedPort {
    /// Binds `port` (0: the kernel picks one) on `ip`, or on both wildcards
    /// (IPv4 and IPv6, same port) when `ip` is `None`. IPv6 is skipped with a
    /// warning where the host has none.
    pub fn bind(ip: Option<IpAddr>, port: u16) -> io::Result<SharedPort> {
        match ip {
            Some(ip) => {
                let listener = listen_reusable(SocketAddr::new(ip, port))?;
                let port = listener.local_addr()?.port();
                Ok(SharedPort {
                    local_addrs: vec![listener.local_addr()?],
                    listeners: vec![listener],
                    port,
                    bind_ip: Some(ip),
                    budget: Default::default(),
                })
            }
            None => {
                let v4 = listen_reusable(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?;
                let port = v4.local_addr()?.port();
                let mut listeners = vec![v4];
                match listen_reusable(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)) {
                    Ok(v6) => listeners.push(v6),
                    Err(e) => {
                        tracing::warn!(port, error = %e, "no IPv6 listener on the shared port")
                    }
                }
                Ok(SharedPort {
                    local_addrs: listeners
                        .iter()
                        .filter_map(|l| l.local_addr().ok())
                        .collect(),
                    listeners,
                    port,
                    bind_ip: None,
                    budget: Default::default(),
                })
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Replaces the punch budget's limits (and its counts).
    pub fn set_punch_budget(&self, config: crate::punch::budget::BudgetConfig) {
        *self.lock_budget() = crate::punch::budget::PunchBudget::new(config);
    }

    fn lock_budget(&self) -> std::sync::MutexGuard<'_, crate::punch::budget::PunchBudget> {
        crate::clock::lock(&self.budget)
    }

    /// Pays for one punch SYN to `target` on behalf of `requester`.
    pub fn charge_syn(
        &self,
        requester: &str,
        target: IpAddr,
    ) -> Result<(), crate::punch::budget::BudgetRefusal> {
        self.lock_budget()
            .charge(std::time::Instant::now(), requester, target)
    }

    /// Pays for one birthday punch of `syns` SYNs (crate::punch::predict).
    pub fn charge_birthday(&self, syns: usize) -> Result<(), crate::punch::budget::BudgetRefusal> {
        self.lock_budget()
            .charge_birthday(std::time::Instant::now(), syns)
    }

    /// SYNs paid and refused so far.
    pub fn punch_syns(&self) -> (u64, u64) {
        let budget = self.lock_budget();
        (budget.spent, budget.refused)
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Whether this port is bound in `addr`'s address family, so that it
    /// can dial it (a dual-stack port is bound in both).
    pub fn has_family_of(&self, addr: SocketAddr) -> bool {
        self.local_addrs
            .iter()
            .any(|l| l.is_ipv4() == addr.is_ipv4())
    }

    /// Opens a TCP connection to `remote` from this port.
    pub async fn dial(&self, remote: SocketAddr) -> io::Result<TcpStream> {
        let local_ip = match (self.bind_ip, remote) {
            (Some(ip), _) => ip,
            (None, SocketAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.into(),
            (None, SocketAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
        };
        if local_ip.is_ipv4() != remote.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the shared port is bound to {local_ip}, which cannot reach {remote}"),
            ));
        }
        dial_from(SocketAddr::new(local_ip, self.port), remote).await
    }

    /// Opens a TCP connection to `remote` from a fresh ephemeral port, not
    /// the shared one: a birthday punch's new NAT mappings.
    pub async fn dial_fresh(&self, remote: SocketAddr) -> io::Result<TcpStream> {
        dial_from_ip(self.bind_ip, remote).await
    }

    /// Starts the accept loop: every inbound connection goes to `router`.
    /// The port keeps serving dials. The loop ends when the returned handle
    /// is aborted (or a second call finds no listeners left).
    pub fn spawn_accept_loop(
        &mut self,
        router: std::sync::Arc<Router>,
    ) -> tokio::task::JoinHandle<()> {
        let listeners = std::mem::take(&mut self.listeners);
        tokio::spawn(async move {
            let accepts = listeners.into_iter().map(|listener| {
                let router = router.clone();
                async move {
                    // Out of file descriptors (EMFILE, ENFILE) or buffers:
                    // back off, doubling up to a second, and say so once per
                    // episode instead of once per failed accept.
                    let mut backoff = ACCEPT_BACKOFF_MIN;
                    let mut failures = 0u64;
                    loop {
                        match listener.accept().await {
                            Ok((stream, remote)) => {
                                if failures > 0 {
                                    tracing::info!(failures, "accepting again");
                                    failures = 0;
                                    backoff = ACCEPT_BACKOFF_MIN;
                                }
                                router.clone().dispatch(stream, remote)
                            }
                            Err(e) => {
                                if failures == 0 {
                                    tracing::warn!(error = %e, "accept failed (out of file descriptors?); backing off");
                                }
                                failures = failures.saturating_add(1);
                                tokio::time::sleep(backoff).await;
                                backoff = backoff.saturating_mul(2).min(ACCEPT_BACKOFF_MAX);
                            }
                        }
                    }
                }
            });
            futures::future::join_all(accepts).await;
        })
    }
}

/// TCP keepalive for connections from the shared port: first probe after
/// 30 s idle, then every 10 s, given up after 3 (≈ 60 s in all).
pub fn keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3)
}

const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

fn fd_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

fn set_fd_limit(limit: libc::rlimit) -> io::Result<()> {
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises this process's soft limit on open files to its hard limit, as
/// Bitcoin Core does at start: every connection is a descriptor, and the
/// usual soft limit of 1024 is less than the caps allow. Returns the limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let limit = fd_limit()?;
    if limit.rlim_cur < limit.rlim_max {
        set_fd_limit(libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        })?;
    }
    Ok(limit.rlim_max.max(limit.rlim_cur))
}

/// Makes room for `needed` open files in this process and the children it
/// starts: the soft limit, and the hard one too if it is lower (which only
/// root may raise). `lab scale` at 100,000 clients needs this on both ends.
pub fn ensure_fd_limit(needed: u64) -> io::Result<u64> {
    let limit = fd_limit()?;
    if limit.rlim_cur >= needed {
        return Ok(limit.rlim_cur);
    }
    set_fd_limit(libc::rlimit {
        rlim_cur: needed,
        rlim_max: limit.rlim_max.max(needed),
    })
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{needed} open files are needed but the limit is {} (hard {}), and raising it failed: {e}; run as root or raise `ulimit -Hn`",
                limit.rlim_cur, limit.rlim_max
            ),
        )
    })?;
    Ok(needed)
}

/// Opens a TCP connection to `remote` from an ephemeral port, on `ip` if
/// given (else wherever the route says).
pub async fn dial_from_ip(ip: Option<IpAddr>, remote: SocketAddr) -> io::Result<TcpStream> {
    let socket = match remote {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = ip {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(remote).await
}

/// The address this host sends from toward `destination`: the kernel's
/// route lookup for a UDP socket that is connected but never sends. Behind
/// a NAT, toward our own public address, this is our address on the LAN.
pub fn source_toward(destination: IpAddr) -> Option<IpAddr> {
    let any: IpAddr = match destination {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    socket.connect(SocketAddr::new(destination, 9)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// `connect()` from `local` with the reuse options set, so that it can share
/// `local`'s port with the listener and with other outbound connections.
///
/// IPv6 sockets are `IPV6_V6ONLY`: an IPv4-mapped destination
/// (`::ffff:10.0.0.1`) is refused by the kernel instead of silently
/// becoming an IPv4 connection to an address nobody checked as such.
pub async fn dial_from(local: SocketAddr, remote: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Links to relays and coordinators sit idle for long stretches: the
    // kernel probes them, so a peer that vanished (no FIN, no RST) is
    // noticed within about a minute even where no ping is due.
    let _ = socket.set_tcp_keepalive(&keepalive());
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(local)?;
    socket.connect(remote).await
}
