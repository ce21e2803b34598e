//! bitpunch: two Bitcoin nodes behind NATs meet through a reachable third
//! party, punch a direct TCP connection, and speak BIP324 on it.
//!
//! Reading order for one session: [`address`] (what the user typed) →
//! [`net`] (the shared port and the accept loop that routes) → [`wire`]
//! (BIP324 or v1, then version/verack/ping) → [`report`] (the outcome record).
//! [`node`] ties the inbound side together. A punch: [`native`] or
//! [`libp2p`] coordinates it, [`punch`] carries it out and upgrades the
//! connection; beside Bitcoin Core, [`sidecar`] splices it instead. [`nat`]
//! is the node's own view of its NAT.

pub mod address;
pub mod clock;
pub mod config;
pub mod connect;
pub mod control;
pub mod data_dir;
pub mod demo;
pub mod fuzzing;
pub mod identity;
pub mod lab;
pub mod matrix;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod report;
pub mod scale;
pub mod scenario;

// The modules that read what strangers send (peers, relays, coordinators)
// and act on it: nothing reachable from the network may panic or overflow
// (docs/security.md). The same lints on each; CI's clippy run enforces
// them; tests may.
#[cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects,
        clippy::panic,
        clippy::unreachable
    )
)]
pub mod addrman;
#[cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects,
        clippy::panic,
        clippy::unreachable
    )
)]
pub mod libp2p;
#[cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects,
        clippy::panic,
        clippy::unreachable
    )
)]
pub mod nat;
#[cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects,
        clippy::panic,
        clippy::unreachable
    )
)]
pub mod native;
#[cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects,
        clippy::panic,
        clippy::unreachable
    )
)]
pub mod net;
#[cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects,
        clippy::panic,
        clippy::unreachable
    )
)]
pub mod peers;
#[cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects,
        clippy::panic,
        clippy::unreachable
    )
)]
pub mod punch;
#[cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects,
        clippy::panic,
        clippy::unreachable
    )
)]
pub mod sidecar;
#[cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects,
        clippy::panic,
        clippy::unreachable
    )
)]
pub mod wire;
