//! The lower bound of each path: the fewest one-way delays that the
//! protocol needs between "connect requested" and "verack received" (for
//! stock DCUtR: the first ping answered on the direct connection), counted
//! message by message in docs/results.md. A measured median divided by it
//! says how close a path comes to the physical limit.
//!
//! `d_a`: one-way delay between Alice (who connects) and the public hosts,
//! `d_b`: the same for Bob; the relay and coordinator have no delay of their
//! own. Alice to Bob, directly or through the relay: `D = d_a + d_b`.

use crate::scenario::PathKind;

/// The bound in the same unit as `d_a` and `d_b`.
pub fn lower_bound(path: PathKind, d_a: f64, d_b: f64) -> f64 {
    lower_bound_with_direct(path, d_a, d_b, d_a + d_b)
}

/// The same when the punched connection takes another way than the
/// coordination: `direct` one-way between Alice and Bob (0 behind one
/// router), while everything relayed still crosses both links.
pub fn lower_bound_with_direct(path: PathKind, d_a: f64, d_b: f64, direct: f64) -> f64 {
    let relayed = d_a + d_b;
    let d = direct;
    match path {
        // TCP, BIP324 and version/verack with the coordinator (6 d_a);
        // register → challenge, prove + connect pipelined → orders (3 d_a);
        // wait until the farther node has its order; simultaneous open
        // (2 D); keys cross, then terminator + version cross, verack (3 D).
        PathKind::Native => 9.0 * d_a + d_a.max(d_b) + 5.0 * d,
        // TCP + Noise with the relay and the circuit (HOP/STOP) to Bob
        // (6 d_a + 2 d_b); Noise over the circuit (3 R, R = d_a + d_b, the
        // relayed one-way time); CONNECT, CONNECT, SYNC and B's RTT/2 wait
        // (3 R); simultaneous open (2 D); BIP324 and version/verack (3 D).
        PathKind::Libp2p => 6.0 * d_a + 2.0 * d_b + 6.0 * relayed + 5.0 * d,
        // The same up to the dial (6 d_a + 2 d_b + 6 R); simultaneous open
        // (2 D); Noise XX with the ping stream pipelined in its last message
        // (2 D), ping and pong (2 D) on the dialer's side.
        PathKind::StockDcutr => 6.0 * d_a + 2.0 * d_b + 6.0 * relayed + 6.0 * d,
    }
}

/// The native path from a node that is registered already (`bitpunch
/// connect` through a running node): the coordinator session is open, so
/// only `hpconnect` → both orders (d_a), the farther node's order
/// (max(d_a, d_b)) and the same 5 D after the dial remain.
pub fn native_through_node(d_a: f64, d_b: f64) -> f64 {
    d_a + d_a.max(d_b) + 5.0 * (d_a + d_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases() {
        // 20 ms on each side: native 180 + 20 + 200 = 400.
        assert_eq!(lower_bound(PathKind::Native, 20.0, 20.0), 400.0);
        // libp2p: 120 + 40 + 440 = 600; stock: 120 + 40 + 480 = 640.
        assert_eq!(lower_bound(PathKind::Libp2p, 20.0, 20.0), 600.0);
        assert_eq!(lower_bound(PathKind::StockDcutr, 20.0, 20.0), 640.0);
        // Asymmetric: Alice 10 ms, Bob 30 ms. Native: 90 + 30 + 200 = 320.
        assert_eq!(lower_bound(PathKind::Native, 10.0, 30.0), 320.0);
        // libp2p: 60 + 60 + 440 = 560.
        assert_eq!(lower_bound(PathKind::Libp2p, 10.0, 30.0), 560.0);
        // Through a running node: 20 + 20 + 200 = 240; 10 + 30 + 200 = 240.
        assert_eq!(native_through_node(20.0, 20.0), 240.0);
        assert_eq!(native_through_node(10.0, 30.0), 240.0);
        // No delay at all: no bound.
        for p in PathKind::ALL {
            assert_eq!(lower_bound(p, 0.0, 0.0), 0.0);
        }
    }
}
