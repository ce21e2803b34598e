//! The router's per-IP and per-netgroup caps ([`crate::net::Admission`]) as
//! a libp2p behaviour, for the relay, which owns its listener and so has no
//! router in front of it. libp2p's `connection_limits` counts connections
//! but not where they come from: without this, one address could take
//! every pending slot.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use ::libp2p::core::transport::PortUse;
use ::libp2p::core::Endpoint;
use ::libp2p::multiaddr::Protocol;
use ::libp2p::swarm::behaviour::{ConnectionClosed, ListenFailure};
use ::libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use ::libp2p::{Multiaddr, PeerId};

use crate::net::admission::{Admission, AdmissionConfig, Ticket};

pub struct IpAdmission {
    admission: Admission,
    tickets: HashMap<ConnectionId, Ticket>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl IpAdmission {
    /// Per-IP and per-netgroup caps from `config`; the total is left to
    /// `connection_limits` (eviction needs a router to close streams).
    pub fn new(config: AdmissionConfig) -> Self {
        IpAdmission {
            admission: Admission::new(AdmissionConfig {
                max_inbound: usize::MAX,
                ..config
            }),
            tickets: HashMap::new(),
        }
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for IpAdmission {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote) else {
            return Ok(());
        };
        match self.admission.admit(ip, false) {
            Ok(ticket) => {
                self.tickets.insert(connection_id, ticket);
                Ok(())
            }
            Err(why) => Err(ConnectionDenied::new(Refused(why.to_string()))),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.tickets.remove(&connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
