//! libp2p on the shared port (DESIGN.md decision 2): a transport whose dials
//! leave from the node's port `L` and whose inbound connections are the ones
//! the shared accept loop recognised by their multistream-select header.
//! libp2p's own TCP transport would open a listener of its own on `L` and
//! swallow the peer's half of a punch.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use ::libp2p::core::Transport;
use ::libp2p::multiaddr::Protocol;
use ::libp2p::Multiaddr;
use futures::future::{BoxFuture, Ready};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use crate::net::router::Inbound;
use crate::net::stream::{ByteCounters, Counted, Rewound};
use crate::net::SharedPort;

/// What libp2p gets: the TCP stream (with any bytes routing read put back),
/// counted twice: per connection, and for all of libp2p together.
pub type Libp2pStream = Compat<Counted<Rewound<Counted<tokio::net::TcpStream>>>>;

pub struct SharedPortTransport {
    port: Arc<SharedPort>,
    inbound: mpsc::Receiver<Inbound>,
    listener: Option<ListenerId>,
    events: VecDeque<TransportEvent<Ready<Result<Libp2pStream, io::Error>>, io::Error>>,
    counters: Arc<ByteCounters>,
}

pub fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut iter = addr.iter();
    let ip: IpAddr = match iter.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let Protocol::Tcp(port) = iter.next()? else {
        return None;
    };
    // Only a trailing /p2p/<id> may follow; anything else (a circuit, say)
    // is for another transport.
    match iter.next() {
        None | Some(Protocol::P2p(_)) if iter.next().is_none() => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

pub fn multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(match addr.ip() {
            IpAddr::V4(ip) => Protocol::Ip4(ip),
            IpAddr::V6(ip) => Protocol::Ip6(ip),
        })
        .with(Protocol::Tcp(addr.port()))
}

impl SharedPortTransport {
    /// `inbound`: the router's libp2p route for this port.
    pub fn new(
        port: Arc<SharedPort>,
        inbound: mpsc::Receiver<Inbound>,
        counters: Arc<ByteCounters>,
    ) -> Self {
        SharedPortTransport {
            port,
            inbound,
            listener: None,
            events: VecDeque::new(),
            counters,
        }
    }
}

impl Transport for SharedPortTransport {
    type Output = Libp2pStream;
    type Error = io::Error;
    type ListenerUpgrade = Ready<Result<Libp2pStream, io::Error>>;
    type Dial = BoxFuture<'static, Result<Libp2pStream, io::Error>>;

    /// "Listening" means taking the accept loop's libp2p connections; the
    /// address must be the shared port's (or port 0 for "whatever it is").
    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        let Some(requested) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        if requested.port() != 0 && requested.port() != self.port.port() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        if self.listener.is_some() {
            return Err(TransportError::Other(io::Error::new(
                io::ErrorKind::AddrInUse,
                "the shared port is already listened on",
            )));
        }
        self.listener = Some(id);
        for local in self.port.local_addrs() {
            self.events.push_back(TransportEvent::NewAddress {
                listener_id: id,
                listen_addr: multiaddr(*local),
            });
        }
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        if self.listener != Some(id) {
            return false;
        }
        self.listener = None;
        self.events.push_back(TransportEvent::ListenerClosed {
            listener_id: id,
            reason: Ok(()),
        });
        true
    }

    /// Dials from the shared port, whatever `opts` asks: reusing `L` is the
    /// point, and in a hole punch both sides dial anyway.
    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        let Some(remote) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let port = self.port.clone();
        let counters = self.counters.clone();
        Ok(async move {
            let stream = port.dial(remote).await?;
            let _ = stream.set_nodelay(true);
            Ok(
                Counted::with_counters(Rewound::new(Vec::new(), Counted::new(stream)), counters)
                    .compat(),
            )
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        let Some(listener_id) = self.listener else {
            return Poll::Pending;
        };
        match self.inbound.poll_recv(cx) {
            Poll::Ready(Some(inbound)) => {
                let stream = Counted::with_counters(inbound.stream, self.counters.clone()).compat();
                Poll::Ready(TransportEvent::Incoming {
                    listener_id,
                    upgrade: futures::future::ready(Ok(stream)),
                    local_addr: multiaddr(inbound.local),
                    send_back_addr: multiaddr(inbound.remote),
                })
            }
            Poll::Ready(None) => {
                self.listener = None;
                Poll::Ready(TransportEvent::ListenerClosed {
                    listener_id,
                    reason: Ok(()),
                })
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiaddrs_to_sockets_and_back() {
        let a: Multiaddr = "/ip4/203.0.113.2/tcp/4001".parse().unwrap();
        assert_eq!(socket_addr(&a), Some("203.0.113.2:4001".parse().unwrap()));
        assert_eq!(multiaddr(socket_addr(&a).unwrap()), a);
        let with_id: Multiaddr =
            "/ip6/::1/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
                .parse()
                .unwrap();
        assert_eq!(socket_addr(&with_id), Some("[::1]:1".parse().unwrap()));
        let circuit: Multiaddr = "/ip4/203.0.113.2/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit"
            .parse()
            .unwrap();
        assert_eq!(socket_addr(&circuit), None);
        assert_eq!(socket_addr(&"/ip4/1.2.3.4/udp/1".parse().unwrap()), None);
    }
}
