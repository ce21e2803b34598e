//! Which addresses a node may fire SYNs at because someone else named them:
//! only globally reachable unicast ones, from the IANA IPv4 and IPv6
//! Special-Purpose Address Registries ("Globally Reachable: False" and the
//! ranges that embed an IPv4 address: IPv4-mapped, NAT64, 6to4), checked
//! after unmapping IPv4-mapped IPv6 addresses.
//!
//! One deliberate exception: the documentation ranges (192.0.2.0/24,
//! 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) pass, because the NAT
//! lab uses them as its internet. They are unrouted on the real internet, so
//! a SYN to them reaches nobody.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::admission::unmapped;

/// Why an address is refused as a punch target, for logs and records.
pub fn unroutable_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // Judged as the IPv4 address it carries, and dialed as such.
            Some(v4) => v4_reason(v4),
            None => v6_reason(v6),
        },
    }
}

/// An address on a node's own network behind a NAT: private IPv4
/// (RFC 1918), shared (RFC 6598, inside a carrier's NAT), link-local, or
/// IPv6 unique-local and link-local. Never loopback or a public address.
pub fn is_own_network(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

pub fn is_routable(ip: IpAddr) -> bool {
    unroutable_reason(ip).is_none()
}

/// `addr` as it should be dialed (IPv4-mapped IPv6 unmapped), if routable.
pub fn routable_target(addr: SocketAddr) -> Result<SocketAddr, &'static str> {
    let ip = unmapped(addr.ip());
    match unroutable_reason(ip) {
        Some(why) => Err(why),
        None if addr.port() == 0 => Err("port 0"),
        None => Ok(SocketAddr::new(ip, addr.port())),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32u32.saturating_sub(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = u128::MAX
        .checked_shl(128u32.saturating_sub(len))
        .unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
        ([10, 0, 0, 0], 8, "private (10.0.0.0/8)"),
        (
            [100, 64, 0, 0],
            10,
            "shared address space, carrier-grade NAT (100.64.0.0/10)",
        ),
        ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
        ([169, 254, 0, 0], 16, "link-local (169.254.0.0/16)"),
        ([172, 16, 0, 0], 12, "private (172.16.0.0/12)"),
        (
            [192, 0, 0, 0],
            24,
            "IETF protocol assignments (192.0.0.0/24)",
        ),
        ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
        ([192, 168, 0, 0], 16, "private (192.168.0.0/16)"),
        ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
        ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
        ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4)"),
    ];
    RANGES
        .iter()
        .find(|(net, len, _)| in_v4(ip, *net, *len))
        .map(|(_, _, why)| *why)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let ranges: [(Ipv6Addr, u32, &'static str); 14] = [
        (Ipv6Addr::UNSPECIFIED, 128, "unspecified (::)"),
        (Ipv6Addr::LOCALHOST, 128, "loopback (::1)"),
        (
            Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
            96,
            "IPv4-compatible (::/96, deprecated)",
        ),
        (
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
            96,
            "NAT64 (64:ff9b::/96): would reach an IPv4 address",
        ),
        (
            Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
            48,
            "local-use NAT64 (64:ff9b:1::/48)",
        ),
        (
            Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
            64,
            "discard-only (100::/64)",
        ),
        (
            Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
            32,
            "Teredo (2001::/32): would reach an IPv4 address",
        ),
        (
            Ipv6Addr::new(0x2001, 0x0002, 0, 0, 0, 0, 0, 0),
            48,
            "benchmarking (2001:2::/48)",
        ),
        (
            Ipv6Addr::new(0x2001, 0x0010, 0, 0, 0, 0, 0, 0),
            28,
            "ORCHID (2001:10::/28)",
        ),
        (
            Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
            16,
            "6to4 (2002::/16): would reach an IPv4 address",
        ),
        (
            Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
            16,
            "SRv6 SIDs (5f00::/16)",
        ),
        (
            Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
            7,
            "unique local (fc00::/7)",
        ),
        (
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
            10,
            "link-local (fe80::/10)",
        ),
        (
            Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
            "multicast (ff00::/8)",
        ),
    ];
    ranges
        .iter()
        .find(|(net, len, _)| in_v6(ip, *net, *len))
        .map(|(_, _, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapped_loopback_private_and_reserved_are_refused() {
        for bad in [
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "127.0.0.1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "0.1.2.3",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "2001:0:4136:e378::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "100::1",
        ] {
            assert!(!is_routable(ip(bad)), "{bad} passed");
        }
    }

    #[test]
    fn public_and_documentation_addresses_pass_and_mapped_ones_unmap() {
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "203.0.113.7",
            "198.51.100.2",
            "192.0.2.9",
            "2a00:1450::1",
            "2001:db8::7",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_routable(ip(good)), "{good} refused");
        }
        assert_eq!(
            routable_target("[::ffff:203.0.113.5]:4001".parse().unwrap()),
            Ok("203.0.113.5:4001".parse().unwrap())
        );
        assert!(routable_target("203.0.113.5:0".parse().unwrap()).is_err());
    }
}
