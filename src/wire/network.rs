//! The Bitcoin networks a session can speak on: each fixes the message-start
//! magic (which also keys BIP324's HKDF) and the default P2P port.

use std::fmt;
use std::str::FromStr;

use bitcoin::p2p::Magic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Mainnet,
    Testnet4,
    Signet,
    Regtest,
}

impl Network {
    pub const ALL: [Network; 4] = [
        Network::Mainnet,
        Network::Testnet4,
        Network::Signet,
        Network::Regtest,
    ];

    pub fn magic(self) -> Magic {
        match self {
            Network::Mainnet => Magic::BITCOIN,
            Network::Testnet4 => Magic::TESTNET4,
            Network::Signet => Magic::SIGNET,
            Network::Regtest => Magic::REGTEST,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Network::Mainnet => 8333,
            Network::Testnet4 => 48333,
            Network::Signet => 38333,
            Network::Regtest => 18444,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet4 => "testnet4",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mainnet" | "main" | "bitcoin" => Ok(Network::Mainnet),
            "testnet4" => Ok(Network::Testnet4),
            "signet" => Ok(Network::Signet),
            "regtest" => Ok(Network::Regtest),
            other => Err(format!(
                "unknown network {other:?}; expected one of mainnet, testnet4, signet, regtest"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_magics_are_distinct() {
        for n in Network::ALL {
            assert_eq!(n.name().parse::<Network>().unwrap(), n);
        }
        let magics: std::collections::HashSet<_> =
            Network::ALL.iter().map(|n| n.magic().to_bytes()).collect();
        assert_eq!(magics.len(), Network::ALL.len());
        assert_eq!(
            Network::Regtest.magic().to_bytes(),
            [0xfa, 0xbf, 0xb5, 0xda]
        );
        assert!("testnet3".parse::<Network>().is_err());
    }
}
