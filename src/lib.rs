//! bitpunch: two Bitcoin nodes behind NATs meet through a reachable third
//! party, punch a direct TCP connection, and speak BIP324 on it.
//!
//! Reading order for one session: [`address`] (what the user typed) →
//! [`net`] (the shared port and the accept loop that routes) → [`wire`]
//! (BIP324 or v1, then version/verack/ping) → [`report`] (the outcome record).
//! [`node`] ties the inbound side together.

pub mod address;
pub mod clock;
pub mod demo;
pub mod fuzzing;
pub mod identity;
pub mod lab;
pub mod libp2p;
pub mod matrix;
pub mod native;
pub mod net;
pub mod node;
pub mod punch;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod wire;
