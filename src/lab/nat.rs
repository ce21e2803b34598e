//! NAT behaviours (RFC 4787 terms) and the nftables ruleset that gives each of
//! them to a Linux router namespace. See docs/nat-lab.md for the reasoning.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How the router picks the external endpoint of an outbound connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// Endpoint-independent, external port = internal port (plain
    /// `masquerade`: the kernel keeps the source port while tuples are unique).
    EimPreserving,
    /// Endpoint-independent, but the external port differs from the internal
    /// one: a hash of the internal endpoint picks it, so every destination
    /// sees the same external port.
    EimRandomPort,
    /// Address-and-port-dependent ("symmetric"), each new connection takes the
    /// next port of a counter.
    SymmetricSequential,
    /// Address-and-port-dependent, each new connection a random port
    /// (`masquerade random`).
    SymmetricRandom,
}

/// Which inbound connections to a mapped port the router lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Anyone may connect to a mapped port ("full cone").
    EndpointIndependent,
    /// Only addresses the internal endpoint has sent to, from any port.
    AddressDependent,
    /// Only the exact endpoints it has sent to (Linux conntrack's own rule).
    AddressAndPortDependent,
}

/// What the router does with an inbound SYN that matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unsolicited {
    Drop,
    Rst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NatProfile {
    pub mapping: Mapping,
    pub filtering: Filtering,
    pub unsolicited: Unsolicited,
    pub hairpin: bool,
    /// The router's own WAN is inside a carrier-grade NAT ([`CARRIER`], on
    /// 100.64.0.0/10): two NATs between the host and the internet.
    #[serde(default)]
    pub behind_carrier: bool,
}

/// The carrier-grade NAT a `/cgn` profile sits behind: endpoint-
/// independent mapping as RFC 6888 requires, ports of its own choosing (a
/// subscriber's port is never kept), and port-dependent filtering.
pub const CARRIER: NatProfile = NatProfile::new(
    Mapping::EimRandomPort,
    Filtering::AddressAndPortDependent,
    Unsolicited::Drop,
);

impl Mapping {
    pub const ALL: [Mapping; 4] = [
        Mapping::EimPreserving,
        Mapping::EimRandomPort,
        Mapping::SymmetricSequential,
        Mapping::SymmetricRandom,
    ];

    pub fn short(self) -> &'static str {
        match self {
            Mapping::EimPreserving => "eim",
            Mapping::EimRandomPort => "eim-rp",
            Mapping::SymmetricSequential => "sym-seq",
            Mapping::SymmetricRandom => "sym-rand",
        }
    }

    pub fn is_endpoint_independent(self) -> bool {
        matches!(self, Mapping::EimPreserving | Mapping::EimRandomPort)
    }
}

impl Filtering {
    pub const ALL: [Filtering; 3] = [
        Filtering::EndpointIndependent,
        Filtering::AddressDependent,
        Filtering::AddressAndPortDependent,
    ];

    pub fn short(self) -> &'static str {
        match self {
            Filtering::EndpointIndependent => "eif",
            Filtering::AddressDependent => "adf",
            Filtering::AddressAndPortDependent => "apdf",
        }
    }
}

impl Unsolicited {
    pub const ALL: [Unsolicited; 2] = [Unsolicited::Drop, Unsolicited::Rst];

    pub fn short(self) -> &'static str {
        match self {
            Unsolicited::Drop => "drop",
            Unsolicited::Rst => "rst",
        }
    }
}

/// Named presets, in the words people use for home routers.
pub const PRESETS: [(&str, NatProfile); 9] = [
    (
        "home",
        NatProfile::new(
            Mapping::EimPreserving,
            Filtering::AddressAndPortDependent,
            Unsolicited::Drop,
        ),
    ),
    (
        "home-rst",
        NatProfile::new(
            Mapping::EimPreserving,
            Filtering::AddressAndPortDependent,
            Unsolicited::Rst,
        ),
    ),
    (
        "full-cone",
        NatProfile::new(
            Mapping::EimPreserving,
            Filtering::EndpointIndependent,
            Unsolicited::Drop,
        ),
    ),
    (
        "restricted-cone",
        NatProfile::new(
            Mapping::EimPreserving,
            Filtering::AddressDependent,
            Unsolicited::Drop,
        ),
    ),
    (
        "port-restricted-rp",
        NatProfile::new(
            Mapping::EimRandomPort,
            Filtering::AddressAndPortDependent,
            Unsolicited::Drop,
        ),
    ),
    (
        "symmetric",
        NatProfile::new(
            Mapping::SymmetricRandom,
            Filtering::AddressAndPortDependent,
            Unsolicited::Drop,
        ),
    ),
    (
        "symmetric-seq",
        NatProfile::new(
            Mapping::SymmetricSequential,
            Filtering::AddressAndPortDependent,
            Unsolicited::Drop,
        ),
    ),
    (
        "symmetric-rst",
        NatProfile::new(
            Mapping::SymmetricRandom,
            Filtering::AddressAndPortDependent,
            Unsolicited::Rst,
        ),
    ),
    // A home router behind the carrier's NAT (double NAT).
    (
        "cgn",
        NatProfile::new(
            Mapping::EimPreserving,
            Filtering::AddressAndPortDependent,
            Unsolicited::Drop,
        )
        .with_carrier(true),
    ),
];

impl NatProfile {
    pub const fn new(mapping: Mapping, filtering: Filtering, unsolicited: Unsolicited) -> Self {
        NatProfile {
            mapping,
            filtering,
            unsolicited,
            hairpin: false,
            behind_carrier: false,
        }
    }

    pub const fn with_hairpin(self, hairpin: bool) -> Self {
        NatProfile {
            mapping: self.mapping,
            filtering: self.filtering,
            unsolicited: self.unsolicited,
            hairpin,
            behind_carrier: self.behind_carrier,
        }
    }

    /// The mapping a host behind this router sees from the internet: with
    /// a carrier NAT in front, the two combined (symmetric if either is;
    /// port-preserving only if both are).
    pub fn effective_mapping(&self) -> Mapping {
        if !self.behind_carrier {
            return self.mapping;
        }
        let outer = CARRIER.mapping;
        match (self.mapping, outer) {
            (inner, _) if !inner.is_endpoint_independent() => inner,
            (_, outer) if !outer.is_endpoint_independent() => outer,
            (Mapping::EimPreserving, Mapping::EimPreserving) => Mapping::EimPreserving,
            _ => Mapping::EimRandomPort,
        }
    }

    pub const fn with_carrier(self, behind_carrier: bool) -> Self {
        NatProfile {
            mapping: self.mapping,
            filtering: self.filtering,
            unsolicited: self.unsolicited,
            hairpin: self.hairpin,
            behind_carrier,
        }
    }

    /// Every combination of mapping, filtering and unsolicited-SYN handling,
    /// without hairpinning, then the same with it.
    pub fn all() -> Vec<NatProfile> {
        let mut all = Vec::new();
        for hairpin in [false, true] {
            for m in Mapping::ALL {
                for f in Filtering::ALL {
                    for u in Unsolicited::ALL {
                        all.push(NatProfile::new(m, f, u).with_hairpin(hairpin));
                    }
                }
            }
        }
        all
    }

    /// The router's IPv6 firewall: IPv6 is routed, not translated, so what
    /// a home router does to it is stateful filtering (RFC 6092): replies
    /// and connections the inside opened pass; an unsolicited inbound SYN
    /// is dropped or refused with an RST, as the profile's `unsolicited`
    /// says. A profile with endpoint-independent filtering ("full cone")
    /// lets everything in.
    pub fn firewall6(&self, table: &str) -> String {
        let mut r = format!(
            "table ip6 {table} {{\n  chain forward {{ type filter hook forward priority filter; policy accept;\n"
        );
        if self.filtering != Filtering::EndpointIndependent {
            r.push_str("    iifname \"wan\" ct state established,related accept\n");
            r.push_str(match self.unsolicited {
                Unsolicited::Drop => "    iifname \"wan\" ct state new drop\n",
                Unsolicited::Rst => {
                    "    iifname \"wan\" meta l4proto tcp ct state new reject with tcp reset\n    iifname \"wan\" ct state new drop\n"
                }
            });
        }
        r.push_str("  }\n}\n");
        r
    }

    /// The nftables ruleset for a router whose public address is `public_ip`
    /// on interface `wan` and whose LAN is `lan` on interface `lan`.
    pub fn ruleset(&self, table: &str, public_ip: Ipv4Addr, lan: (Ipv4Addr, u8)) -> String {
        let (lan_net, lan_len) = lan;
        let mut r = String::new();
        let mut line = |s: &str| {
            r.push_str(s);
            r.push('\n');
        };
        line(&format!("table ip {table} {{"));
        // Every mapping the router holds: external port -> internal endpoint.
        // Filled after source NAT from conntrack's original tuple, so it is
        // right whatever the mapping policy chose.
        line("  map mappings { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 5m; }");
        // (external port, remote address) pairs the inside has sent to.
        line(
            "  set contacted { type inet_service . ipv4_addr; flags dynamic,timeout; timeout 5m; }",
        );

        line("  chain prerouting { type nat hook prerouting priority dstnat; policy accept;");
        match self.filtering {
            Filtering::EndpointIndependent => line(&format!(
                "    iifname \"wan\" ip daddr {public_ip} dnat ip to tcp dport map @mappings"
            )),
            Filtering::AddressDependent => line(&format!(
                "    iifname \"wan\" ip daddr {public_ip} tcp dport . ip saddr @contacted dnat ip to tcp dport map @mappings"
            )),
            // conntrack alone lets in replies from the exact endpoint.
            Filtering::AddressAndPortDependent => {}
        }
        if self.hairpin {
            line(&format!(
                "    iifname \"lan\" ip daddr {public_ip} dnat ip to tcp dport map @mappings"
            ));
        }
        line("  }");

        line("  chain postrouting { type nat hook postrouting priority srcnat; policy accept;");
        if self.hairpin {
            // The hairpinned packet must come from the sender's public
            // endpoint (RFC 4787 REQ-9), as an outside peer would see it:
            // `masquerade` here would give it the router's LAN address.
            line(&format!(
                "    oifname \"lan\" ip saddr {lan_net}/{lan_len} ct status dnat snat ip to {public_ip}"
            ));
        }
        match self.mapping {
            Mapping::EimPreserving => line("    oifname \"wan\" masquerade"),
            Mapping::EimRandomPort => {
                // A map from the hash to a port keeps the port in range and in
                // the right byte order; the hash of the internal endpoint makes
                // the choice the same for every destination.
                line(&format!(
                    "    oifname \"wan\" meta l4proto tcp snat ip to {public_ip} : jhash ip saddr . tcp sport mod {n} seed 0x{seed:x} map {{ {map} }}",
                    n = PORT_POOL,
                    seed = 0x5eed_u32,
                    map = port_map(PORT_BASE_EIM)
                ));
                line("    oifname \"wan\" masquerade");
            }
            Mapping::SymmetricSequential => {
                line(&format!(
                    "    oifname \"wan\" meta l4proto tcp snat ip to {public_ip} : numgen inc mod {n} map {{ {map} }}",
                    n = PORT_POOL,
                    map = port_map(PORT_BASE_SEQ)
                ));
                line("    oifname \"wan\" masquerade");
            }
            Mapping::SymmetricRandom => line("    oifname \"wan\" masquerade random"),
        }
        line("  }");

        line("  chain record { type filter hook postrouting priority srcnat + 100; policy accept;");
        line("    oifname \"wan\" meta l4proto tcp ct direction original update @mappings { tcp sport : ct original ip saddr . ct original proto-src }");
        line("    oifname \"wan\" meta l4proto tcp ct direction original update @contacted { tcp sport . ip daddr }");
        line("  }");

        // Anything new from outside that no rule above translated is unsolicited.
        line("  chain input { type filter hook input priority filter; policy accept;");
        if self.unsolicited == Unsolicited::Drop {
            line("    iifname \"wan\" meta l4proto tcp ct state new drop");
        }
        line("  }");
        line("  chain forward { type filter hook forward priority filter; policy accept;");
        line("    iifname \"wan\" ct state new ct status & dnat == 0 drop");
        line("  }");
        line("}");
        r
    }
}

/// Ports the lab's own-choice mappings draw from. A mapping here is a hash
/// (or a counter) onto the pool with no fallback, unlike a real NAT's
/// allocator: a new connection whose port is still held by an earlier one
/// toward the same destination (120 s in TIME_WAIT) is dropped. With 512
/// ports that hit the NAT probes of busy `/cgn` cells (a probe in 10 or so
/// unanswered, its punch's round a second late); with 8,192 a collision
/// needs hundreds of recent connections to one server.
const PORT_POOL: u16 = 8192;
const PORT_BASE_EIM: u16 = 20000;
const PORT_BASE_SEQ: u16 = 40000;

fn port_map(base: u16) -> String {
    (0..PORT_POOL)
        .map(|i| format!("{i} : {}", base + i))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for NatProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.mapping.short(),
            self.filtering.short(),
            self.unsolicited.short()
        )?;
        if self.hairpin {
            f.write_str("/hairpin")?;
        }
        if self.behind_carrier {
            f.write_str("/cgn")?;
        }
        Ok(())
    }
}

impl FromStr for NatProfile {
    type Err = String;

    /// A preset name (`home`, `symmetric`…) or `MAPPING/FILTERING/UNSOLICITED`
    /// with the short names (`eim/apdf/drop`), then `/hairpin` and `/cgn`
    /// (behind a carrier-grade NAT) as wanted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, carrier) = match s.strip_suffix("/cgn").or_else(|| s.strip_suffix("+cgn")) {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        let (base, hairpin) = match rest
            .strip_suffix("/hairpin")
            .or_else(|| rest.strip_suffix("+hairpin"))
        {
            Some(base) => (base, true),
            None => (rest, false),
        };
        if let Some((_, p)) = PRESETS.iter().find(|(name, _)| *name == base) {
            return Ok(p
                .with_hairpin(hairpin || p.hairpin)
                .with_carrier(carrier || p.behind_carrier));
        }
        let parts: Vec<&str> = base.split('/').collect();
        let fail = || {
            format!(
                "unknown NAT profile {s:?}: use a preset ({}) or MAPPING/FILTERING/UNSOLICITED[/hairpin][/cgn] \
                 with MAPPING in eim, eim-rp, sym-seq, sym-rand; FILTERING in eif, adf, apdf; \
                 UNSOLICITED in drop, rst",
                PRESETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )
        };
        let [m, f, u] = parts[..] else {
            return Err(fail());
        };
        let mapping = Mapping::ALL
            .into_iter()
            .find(|x| x.short() == m)
            .ok_or_else(fail)?;
        let filtering = Filtering::ALL
            .into_iter()
            .find(|x| x.short() == f)
            .ok_or_else(fail)?;
        let unsolicited = Unsolicited::ALL
            .into_iter()
            .find(|x| x.short() == u)
            .ok_or_else(fail)?;
        Ok(NatProfile::new(mapping, filtering, unsolicited)
            .with_hairpin(hairpin)
            .with_carrier(carrier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in NatProfile::all() {
            assert_eq!(p.to_string().parse::<NatProfile>().unwrap(), p);
        }
        assert_eq!(
            "home".parse::<NatProfile>().unwrap(),
            NatProfile::new(
                Mapping::EimPreserving,
                Filtering::AddressAndPortDependent,
                Unsolicited::Drop
            )
        );
        assert!("home/hairpin".parse::<NatProfile>().unwrap().hairpin);
        let cgn: NatProfile = "cgn".parse().unwrap();
        assert!(cgn.behind_carrier && !cgn.hairpin);
        assert_eq!(cgn.to_string(), "eim/apdf/drop/cgn");
        assert_eq!(cgn.effective_mapping(), Mapping::EimRandomPort);
        let sym_behind: NatProfile = "symmetric-seq/cgn".parse().unwrap();
        assert_eq!(sym_behind.effective_mapping(), Mapping::SymmetricSequential);
        assert_eq!(cgn.to_string().parse::<NatProfile>().unwrap(), cgn);
        assert_eq!(
            "home/hairpin/cgn".parse::<NatProfile>().unwrap(),
            cgn.with_hairpin(true)
        );
        let err = "cone".parse::<NatProfile>().unwrap_err();
        assert!(err.contains("preset") && err.contains("eim-rp"), "{err}");
        assert_eq!(NatProfile::all().len(), 48);
    }

    #[test]
    fn rulesets_differ_where_the_behaviours_do() {
        let ip = Ipv4Addr::new(203, 0, 113, 2);
        let lan = (Ipv4Addr::new(10, 1, 0, 0), 24);
        let rules = |p: NatProfile| p.ruleset("t", ip, lan);
        let home = rules("home".parse().unwrap());
        assert!(!home.contains("dnat ip to"), "conntrack alone filters APDF");
        assert!(home.contains("ct state new drop"));
        assert!(!rules("home-rst".parse().unwrap()).contains("ct state new drop"));
        assert!(
            rules("full-cone".parse().unwrap()).contains("203.0.113.2 dnat ip to tcp dport map")
        );
        assert!(rules("restricted-cone".parse().unwrap()).contains("@contacted dnat"));
        assert!(rules("symmetric".parse().unwrap()).contains("masquerade random"));
        assert!(rules("symmetric-seq".parse().unwrap()).contains("numgen inc"));
        assert!(rules("home/hairpin".parse().unwrap()).contains("iifname \"lan\""));
        let home: NatProfile = "home".parse().unwrap();
        assert!(home.firewall6("f").contains("ct state new drop"));
        let home_rst: NatProfile = "home-rst".parse().unwrap();
        assert!(home_rst.firewall6("f").contains("reject with tcp reset"));
        let open: NatProfile = "full-cone".parse().unwrap();
        assert!(!open.firewall6("f").contains("ct state"));
    }
}
