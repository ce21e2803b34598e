//! Port prediction: where a node behind a symmetric NAT will be when it
//! punches. Such a NAT gives every new destination a new external port, so
//! the endpoint a coordinator or relay observed is useless to the peer; but
//! a NAT that allocates ports in sequence gives the next connection the
//! latest port plus its step. Just before punching, the node asks a probe
//! server where its latest connection appears (one TCP connection, crate::
//! nat; a second from a fresh port beside it when the node does not know
//! its NAT: the two show the step, or that there is none) and tells the
//! peer the next few ports; the peer dials each of them once
//! (docs/native-protocol.md, "Port prediction").
//!
//! A NAT that allocates at random cannot be predicted, only met by chance:
//! the birthday punch. The node behind it opens [`BIRTHDAY_PORTS`]
//! connections toward the peer's one endpoint from fresh local ports (each
//! a new mapping at a random port of its NAT) and tells the peer as many
//! random ports to dial once each; one of the peer's SYNs lands on one of
//! the mappings with probability about 1 - exp(-k²/N) (k = 256 of the
//! N = 64,512 ports a Linux NAT draws from: 64 %). It needs a peer whose
//! own mapping is endpoint-independent (its SYNs must all come from the
//! endpoint the mappings point at). Without I/O.

use std::net::SocketAddr;

use crate::nat::{Allocation, MappingBehaviour, NatClass};

/// Ports predicted for one punch: enough for a few punch attempts (each
/// takes a new port on a symmetric NAT) and some traffic of other hosts
/// behind the same NAT in between. Each is one SYN of the peer's budget.
pub const PREDICTED_PORTS: usize = 8;

/// Mappings a birthday punch opens, and guesses the peer dials: 256 each
/// give even odds with room to spare against a NAT drawing from all
/// 64,512 unprivileged ports (1 - exp(-256²/64,512) ≈ 64 %), for 256 SYNs
/// on each side, once per punch and paid from the budget's birthday
/// allowance. Fewer is a poor bargain (128: 22 %).
pub const BIRTHDAY_PORTS: usize = 256;

/// More ports than this, told by the peer to dial once each, are a
/// birthday's guesses (paid whole from the birthday allowance), not a
/// sequence's prediction (paid SYN by SYN).
pub const MAX_SEQUENCE_PORTS: usize = 2 * PREDICTED_PORTS;

/// The ports a Linux NAT draws from for a connection from an
/// unprivileged port (the kernel's range when none is configured).
const NAT_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

/// What our punch does about a NAT that gives each destination its own
/// port, and what it tells the peer to dial once each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnPorts {
    /// A sequential NAT: the ports the punch will likely get next.
    Predicted(Vec<u16>),
    /// A random NAT: the punch opens [`BIRTHDAY_PORTS`] mappings toward
    /// the peer, and the peer guesses at these ports.
    Birthday(Vec<u16>),
}

impl OwnPorts {
    /// The ports a sequence predicted, for records (a birthday's guesses
    /// are counted, not listed).
    pub fn predicted(own: &Option<OwnPorts>) -> Vec<u16> {
        match own {
            Some(OwnPorts::Predicted(ports)) => ports.clone(),
            _ => Vec::new(),
        }
    }

    /// The ports the peer dials once each.
    pub fn ports(&self) -> &[u16] {
        match self {
            OwnPorts::Predicted(ports) | OwnPorts::Birthday(ports) => ports,
        }
    }
}

/// A NAT we already know to map each destination apart, at random: no
/// probe tells more, a birthday is the only way through.
pub fn known_random(link_observed: SocketAddr, known: Option<&NatClass>) -> bool {
    link_observed.is_ipv4()
        && known.is_some_and(|c| {
            c.mapping != MappingBehaviour::EndpointIndependent && c.allocation == Allocation::Random
        })
}

/// What the probes' views of our newest mappings say our punch should
/// do: continue a sequence, or, when the ports show none (on the same
/// public IPv4 address: a pool of addresses or IPv6 is another matter), a
/// birthday. `None` when the mapping is endpoint-independent.
///
/// `shared` is where a probe from the shared port appears. `fresh`, made
/// from a fresh port right after it when our NAT's class is unknown, is
/// the next mapping: a sequential NAT puts it a step away, a random one
/// anywhere. Without it, the distance from the link's old mapping has to
/// decide, and a random NAT lands within a sequence's reach of it about
/// one time in sixty (that is how a CI run once took one for a sequence).
pub fn after_probe(
    link_observed: SocketAddr,
    shared: SocketAddr,
    fresh: Option<SocketAddr>,
    known: Option<&NatClass>,
) -> Option<OwnPorts> {
    if shared.ip() != link_observed.ip() || shared.port() == link_observed.port() {
        return None;
    }
    let birthday = || {
        link_observed
            .is_ipv4()
            .then(|| OwnPorts::Birthday(birthday_guesses(&mut rand::thread_rng())))
    };
    match (known, fresh) {
        (None, Some(fresh)) => {
            if fresh.ip() != shared.ip() {
                return None;
            }
            // Two u16s: the difference always fits.
            let step = i32::from(fresh.port()).wrapping_sub(i32::from(shared.port()));
            if step == 0 || step.unsigned_abs() > MAX_STEP.unsigned_abs() {
                return birthday();
            }
            sequence(fresh.port(), step).map(OwnPorts::Predicted)
        }
        _ => match window(link_observed, shared, known) {
            Some(ports) => Some(OwnPorts::Predicted(ports)),
            None => birthday(),
        },
    }
}

/// [`BIRTHDAY_PORTS`] distinct ports, uniformly from the NAT's range: where
/// the peer guesses our mappings are.
pub fn birthday_guesses(rng: &mut impl rand::Rng) -> Vec<u16> {
    let first = *NAT_PORTS.start();
    let size = NAT_PORTS.len();
    rand::seq::index::sample(rng, size, BIRTHDAY_PORTS)
        .into_iter()
        .filter_map(|i| u16::try_from(i).ok()?.checked_add(first))
        .collect()
}

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
    sequence(latest.port(), step)
}

/// The ports after `latest` in steps of `step`, in the order the peer
/// should dial them.
fn sequence(latest: u16, step: i32) -> Option<Vec<u16>> {
    // The punch's first connection (to the peer's observed endpoint) takes
    // the first port, its dials to the peer's predicted ports the ports
    // after it, in order. A peer behind another sequential NAT dials our
    // ports in the order given, each from its own next port: listing the
    // second port first pairs our k-th connection with its k-th (both dial
    // each other's observed endpoint first, then each other's list). The
    // first port, for a peer with one port, comes last.
    let order = (2..=PREDICTED_PORTS as i32).chain(std::iter::once(1));
    let ports: Vec<u16> = order
        .filter_map(|i| u16::try_from(i32::from(latest).checked_add(i.checked_mul(step)?)?).ok())
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
        // The second port first: the first goes to the peer's observed
        // endpoint; it comes last, for a peer with one port.
        assert_eq!(
            window(link, addr("203.0.113.5:40003"), None),
            Some((40_005..40_012).chain([40_004]).collect())
        );
        let seq = class(
            MappingBehaviour::AddressAndPortDependent,
            Allocation::Sequential(2),
        );
        assert_eq!(
            window(link, addr("203.0.113.5:40003"), Some(&seq)),
            Some((2..=8).chain([1]).map(|i| 40_003 + 2 * i).collect())
        );
        // Downward sequences, and the end of the port range.
        assert_eq!(
            window(link, addr("203.0.113.5:39990"), None).unwrap()[0],
            39_988
        );
        assert_eq!(
            window(addr("203.0.113.5:65530"), addr("203.0.113.5:65533"), None),
            Some(vec![65_535, 65_534])
        );
    }

    #[test]
    fn a_random_nat_gets_a_birthday_and_its_guesses_are_distinct_unprivileged_ports() {
        let link = addr("203.0.113.5:40000");
        let Some(OwnPorts::Birthday(guesses)) =
            after_probe(link, addr("203.0.113.5:52000"), None, None)
        else {
            panic!("no birthday for a random NAT");
        };
        assert_eq!(guesses.len(), BIRTHDAY_PORTS);
        let distinct: std::collections::HashSet<u16> = guesses.iter().copied().collect();
        assert_eq!(distinct.len(), BIRTHDAY_PORTS);
        assert!(guesses.iter().all(|p| *p >= 1024));
        // A sequence is still predicted, an endpoint-independent mapping
        // needs nothing, and neither does an address pool or IPv6.
        assert!(matches!(
            after_probe(link, addr("203.0.113.5:40002"), None, None),
            Some(OwnPorts::Predicted(_))
        ));
        assert_eq!(after_probe(link, link, None, None), None);
        assert_eq!(
            after_probe(link, addr("203.0.113.6:52000"), None, None),
            None
        );
        let v6 = addr("[2001:db8::5]:40000");
        assert_eq!(
            after_probe(v6, addr("[2001:db8::5]:52000"), None, None),
            None
        );
        // Known random: no probe needed; known sequential or
        // endpoint-independent: never a birthday.
        let random = class(
            MappingBehaviour::AddressAndPortDependent,
            Allocation::Random,
        );
        assert!(known_random(link, Some(&random)));
        assert!(!known_random(v6, Some(&random)));
        let eim = class(MappingBehaviour::EndpointIndependent, Allocation::Random);
        assert!(!known_random(link, Some(&eim)));
        assert!(!known_random(link, None));
    }

    #[test]
    fn a_second_probe_from_a_fresh_port_tells_a_sequence_from_chance() {
        let link = addr("203.0.113.5:12000");
        // A random NAT whose shared-port probe happens to land near the
        // link's old mapping: alone it looks like a sequence; the fresh
        // probe, far from it, shows chance.
        let near = addr("203.0.113.5:12336");
        assert!(matches!(
            after_probe(link, near, None, None),
            Some(OwnPorts::Predicted(_))
        ));
        assert!(matches!(
            after_probe(link, near, Some(addr("203.0.113.5:50111")), None),
            Some(OwnPorts::Birthday(_))
        ));
        // A busy sequential NAT, thousands of mappings since the link was
        // made: alone it looks random; the fresh probe gives the sequence
        // and its step, and the window continues from the fresh mapping.
        let far = addr("203.0.113.5:30000");
        assert!(matches!(
            after_probe(link, far, None, None),
            Some(OwnPorts::Birthday(_))
        ));
        assert_eq!(
            after_probe(link, far, Some(addr("203.0.113.5:30002")), None),
            Some(OwnPorts::Predicted(
                (2..=8).chain([1]).map(|i| 30_002 + 2 * i).collect()
            ))
        );
        assert_eq!(
            after_probe(link, far, Some(addr("203.0.113.5:29999")), None).map(|o| o.ports()[0]),
            Some(29_997)
        );
        // The fresh probe at another address (a pool), or on the same
        // port: nothing to continue, nothing to guess at.
        assert_eq!(
            after_probe(link, far, Some(addr("203.0.113.6:30001")), None),
            None
        );
        assert!(matches!(
            after_probe(link, far, Some(far), None),
            Some(OwnPorts::Birthday(_))
        ));
        // An endpoint-independent mapping needs neither probe's opinion.
        assert_eq!(
            after_probe(link, link, Some(addr("203.0.113.5:30001")), None),
            None
        );
    }

    #[test]
    fn birthday_guesses_spread_over_the_whole_range() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let guesses = birthday_guesses(&mut rng);
        let high = guesses.iter().filter(|p| **p > 33_000).count();
        // Half the range is above 33,000: 128 expected, far from 0 or 256.
        assert!((80..=176).contains(&high), "{high} of 256 high");
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
