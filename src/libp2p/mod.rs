//! The libp2p path: circuit relay v2 and a DCUtR-style exchange coordinate
//! the punch; the punched TCP connection becomes a BIP324 Bitcoin session.

pub mod exchange;
pub mod transport;
