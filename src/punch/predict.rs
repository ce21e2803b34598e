//! Port prediction: where a node behind a symmetric NAT will be when it
//! punches. Such a NAT gives every new destination a new external port, so
//! the endpoint a coordinator or relay observed is useless to the peer; but
//! a NAT that allocates ports in sequence gives the next connection the
//! latest port plus its step. Just before punching, the node asks a probe
//! server where its latest connection appears (one TCP connection, crate::
//! nat) and tells the peer the next few ports; the peer dials each of them
//! once (docs/native-protocol.md, "Port prediction"). Without I/O.

use std::net::SocketAddr;

use crate::nat::{Allocation, MappingBehaviour, NatClass};

/// Ports predicted for one punch: enough for a few punch attempts (each
/// takes a new port on a symmetric NAT) and some traffic of other hosts
/// behind the same NAT in between. Each is one SYN of the peer's budget.
pub const PREDICTED_PORTS: usize = 8;

/// A step larger than this is not a sequence but chance.
const MAX_STEP: i32 = 64;

/// Whether a punch should first ask where our NAT puts new connections:
/// when we know we are behind a symmetric NAT, or, knowing nothing, when
/// the coordinator sees our shared port under another number (a port-
/// preserving NAT, the common home router, never pays for the probe).
pub fn worth_probing(local_port: u16, link_observed: SocketAddr, known: Option<&NatClass>) -> bool {
    match known {
        Some(class) => {
            class.mapping == MappingBehaviour::AddressAndPortDependent
                && class.allocation != Allocation::Random
        }
        None => link_observed.port() != local_port,
    }
}

/// The ports our next connections will likely get, from `link_observed`
/// (our shared port's mapping toward the coordinator, made long ago) and
/// `latest` (the probe's view of the connection just made). `None` when the
/// two show no symmetric sequential NAT: the same port (endpoint-
/// independent mapping: the observed endpoint is right), another address,
/// or ports too far apart for a sequence.
pub fn window(
    link_observed: SocketAddr,
    latest: SocketAddr,
    known: Option<&NatClass>,
) -> Option<Vec<u16>> {
    if latest.ip() != link_observed.ip() || latest.port() == link_observed.port() {
        return None;
    }
    let step = match known.map(|c| c.allocation) {
        Some(Allocation::Sequential(step)) => step,
        Some(Allocation::Random) => return None,
        // Unknown, or preserving (which a symmetric NAT cannot be for
        // the shared port): the distance since the link was made is some
        // number of steps; assume steps of one in its direction.
        Some(Allocation::Preserving) | None => {
            let distance = i32::from(latest.port()).wrapping_sub(i32::from(link_observed.port()));
            if distance.unsigned_abs()
                > MAX_STEP
                    .unsigned_abs()
                    .saturating_mul(PREDICTED_PORTS as u32)
            {
                return None;
            }
            distance.signum()
        }
    };
    if step == 0 || step.unsigned_abs() > MAX_STEP.unsigned_abs() {
        return None;
    }
    let ports: Vec<u16> = (1..=PREDICTED_PORTS as i32)
        .filter_map(|i| {
            u16::try_from(i32::from(latest.port()).checked_add(i.checked_mul(step)?)?).ok()
        })
        .filter(|p| *p != 0)
        .collect();
    (!ports.is_empty()).then_some(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn class(mapping: MappingBehaviour, allocation: Allocation) -> NatClass {
        NatClass {
            mapping,
            port_preserving: false,
            allocation,
            local_port: 8333,
            observed: vec![],
            fresh: vec![],
            caveat: None,
        }
    }

    #[test]
    fn port_preserving_nats_are_never_probed() {
        assert!(!worth_probing(8333, addr("203.0.113.5:8333"), None));
        assert!(worth_probing(8333, addr("203.0.113.5:40001"), None));
        let eim = class(
            MappingBehaviour::EndpointIndependent,
            Allocation::Sequential(1),
        );
        assert!(!worth_probing(8333, addr("203.0.113.5:40001"), Some(&eim)));
        let random = class(
            MappingBehaviour::AddressAndPortDependent,
            Allocation::Random,
        );
        assert!(!worth_probing(
            8333,
            addr("203.0.113.5:40001"),
            Some(&random)
        ));
        let seq = class(
            MappingBehaviour::AddressAndPortDependent,
            Allocation::Sequential(2),
        );
        assert!(worth_probing(8333, addr("203.0.113.5:8333"), Some(&seq)));
    }

    #[test]
    fn a_sequence_continues_from_the_latest_port() {
        let link = addr("203.0.113.5:40000");
        assert_eq!(
            window(link, addr("203.0.113.5:40003"), None),
            Some((40_004..40_012).collect())
        );
        let seq = class(
            MappingBehaviour::AddressAndPortDependent,
            Allocation::Sequential(2),
        );
        assert_eq!(
            window(link, addr("203.0.113.5:40003"), Some(&seq)),
            Some((1..=8).map(|i| 40_003 + 2 * i).collect())
        );
        // Downward sequences, and the end of the port range.
        assert_eq!(
            window(link, addr("203.0.113.5:39990"), None).unwrap()[0],
            39_989
        );
        assert_eq!(
            window(addr("203.0.113.5:65530"), addr("203.0.113.5:65533"), None),
            Some(vec![65_534, 65_535])
        );
    }

    #[test]
    fn no_prediction_without_a_sequence() {
        let link = addr("203.0.113.5:40000");
        // Endpoint-independent: the observed endpoint is already right.
        assert_eq!(window(link, link, None), None);
        // Another public address (address pooling): nothing to continue.
        assert_eq!(window(link, addr("203.0.113.6:40001"), None), None);
        // Far apart: random allocation.
        assert_eq!(window(link, addr("203.0.113.5:52000"), None), None);
        let random = class(
            MappingBehaviour::AddressAndPortDependent,
            Allocation::Random,
        );
        assert_eq!(window(link, addr("203.0.113.5:40001"), Some(&random)), None);
    }
}
