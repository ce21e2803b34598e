//! The NAT lab: network namespaces wired into a small internet, with NAT
//! routers whose behaviour nftables sets (`nat`), link delay and loss
//! (`shape`), and probes that check what the routers really do (`probe`).
//!
//! Topology: one "internet" namespace routes between point-to-point links.
//! Public hosts sit on 192.0.2.0/24 (one /30 each), NAT routers' public sides
//! on 203.0.113.0/24 (one /30 each), and each router has a LAN 10.<k>.0.0/24
//! on a bridge, with hosts behind it. Every packet between two attachments
//! crosses the internet namespace once, which is where delay and loss apply.
//! Nothing is routed outside the lab.
//!
//! Every namespace of a lab is named `bpl<pid>x<n>-<name>`; dropping the
//! `Lab` removes them all (also on panic), and `cleanup` removes what a
//! crashed run left, judging by the pid in the name.

pub mod nat;
pub mod netns;
pub mod network;
pub mod probe;
pub mod shape;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

pub use nat::{Filtering, Mapping, NatProfile, Unsolicited};
pub use netns::NsRuntime;
pub use shape::{DelayBackend, LinkShape};

const NS_PREFIX: &str = "bpl";
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why the lab cannot run here, if it cannot: not root, or tools missing.
/// Tests that need the lab skip loudly with this reason.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the NAT lab needs root (network namespaces, nftables)".into());
    }
    for tool in ["ip", "nft", "iptables-nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "`{tool}` is not installed (scripts/setup installs it)"
            ));
        }
    }
    None
}

/// A LAN's router address: the network's first.
fn gateway_of(network: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, _] = network.octets();
    Ipv4Addr::new(a, b, c, 1)
}

/// A host in the lab: public, or behind a router.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address: every lab is dual-stack, and IPv6 crosses the
    /// routers untranslated, through their stateful firewall
    /// (`NatProfile::firewall6`). `None` behind a carrier-grade NAT.
    pub ip6: Option<Ipv6Addr>,
    /// The internet-side interface of the link this host (or its router)
    /// hangs off, for shaping.
    pub link: String,
}

#[derive(Debug, Clone)]
pub struct Router {
    pub name: String,
    pub ns: String,
    pub public_ip: Ipv4Addr,
    pub lan: (Ipv4Addr, u8),
    /// The LAN's IPv6 /64 (the router is `::1` on it), when it has one.
    pub lan6: Option<Ipv6Addr>,
    /// Its WAN's IPv6 address, where the LAN's /64 is routed to.
    wan6: Option<Ipv6Addr>,
    pub profile: NatProfile,
    pub link: String,
    hosts: u8,
}

struct Link {
    /// The internet namespace's side.
    dev: String,
    /// The attached namespace and its side.
    far: (String, String),
    queue: u16,
    shape: LinkShape,
}

pub struct Lab {
    prefix: String,
    inet: String,
    namespaces: Vec<String>,
    links: Vec<Link>,
    publics: u8,
    routers: u8,
    /// Public hosts in 198.51.100.0/24, and at the top of 203.0.113.0/24.
    publics_elsewhere: [u8; 2],
    backend: Option<DelayBackend>,
    delayer: Option<shape::Delayer>,
    children: Vec<Child>,
}

impl Lab {
    pub fn new() -> Result<Lab> {
        if let Some(why) = unavailable_reason() {
            bail!(why);
        }
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NS_PREFIX}{}x{n}-", std::process::id());
        let mut lab = Lab {
            inet: format!("{prefix}inet"),
            prefix,
            namespaces: Vec::new(),
            links: Vec::new(),
            publics: 0,
            routers: 0,
            publics_elsewhere: [0, 0],
            backend: None,
            delayer: None,
            children: Vec::new(),
        };
        let inet = lab.inet.clone();
        lab.add_namespace(&inet)?;
        lab.sysctl(&inet, "net.ipv4.ip_forward=1")?;
        lab.sysctl(&inet, "net.ipv6.conf.all.forwarding=1")?;
        lab.apply_link_rules()?;
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn internet_ns(&self) -> &str {
        &self.inet
    }

    fn add_namespace(&mut self, ns: &str) -> Result<()> {
        netns::run("ip", &["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        netns::run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn sysctl(&self, ns: &str, setting: &str) -> Result<()> {
        netns::exec(ns, "sysctl", &["-qw", setting]).map(|_| ())
    }

    fn ip(&self, ns: &str, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        netns::run("ip", &all).map(|_| ())
    }

    /// An IPv6 address on `dev`, usable at once: `nodad` skips duplicate
    /// address detection, which would keep it tentative for a second or two.
    fn addr6(&self, ns: &str, addr: Ipv6Addr, dev: &str) -> Result<()> {
        let addr = format!("{addr}/64");
        self.ip(ns, &["-6", "addr", "add", &addr, "dev", dev, "nodad"])
    }

    /// An IPv6 route to `to` (`default`, or a prefix) through `via`.
    fn route6(&self, ns: &str, to: &str, via: Ipv6Addr) -> Result<()> {
        self.ip(ns, &["-6", "route", "add", to, "via", &via.to_string()])
    }

    /// A veth pair between two namespaces, both ends up.
    fn veth(&self, ns_a: &str, dev_a: &str, ns_b: &str, dev_b: &str) -> Result<()> {
        netns::run(
            "ip",
            &[
                "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b,
                "netns", ns_b,
            ],
        )?;
        self.ip(ns_a, &["link", "set", dev_a, "up"])?;
        self.ip(ns_b, &["link", "set", dev_b, "up"])
    }

    /// Connects `ns` to the internet over a /30 of `subnet` (third octet
    /// fixed) and an IPv6 /64 of its own; returns (internet-side dev, the
    /// namespace's IPv4 address, its IPv6 address).
    fn attach(
        &mut self,
        ns: &str,
        dev: &str,
        subnet: [u8; 3],
        slot: u8,
    ) -> Result<(String, Ipv4Addr, Ipv6Addr)> {
        let inet_dev = format!("l{}", self.links.len());
        let [a, b, c] = subnet;
        let gw = Ipv4Addr::new(a, b, c, slot * 4 + 1);
        let addr = Ipv4Addr::new(a, b, c, slot * 4 + 2);
        let inet = self.inet.clone();
        self.veth(&inet, &inet_dev, ns, dev)?;
        self.ip(
            &inet,
            &["addr", "add", &format!("{gw}/30"), "dev", &inet_dev],
        )?;
        self.ip(ns, &["addr", "add", &format!("{addr}/30"), "dev", dev])?;
        self.ip(ns, &["route", "add", "default", "via", &gw.to_string()])?;
        let link_index = self.links.len() as u16;
        let gw6 = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, link_index, 0, 0, 0, 1);
        let addr6 = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, link_index, 0, 0, 0, 2);
        self.addr6(&inet, gw6, &inet_dev)?;
        self.addr6(ns, addr6, dev)?;
        self.route6(ns, "default", gw6)?;
        self.links.push(Link {
            dev: inet_dev.clone(),
            far: (ns.to_string(), dev.to_string()),
            queue: link_index,
            shape: LinkShape::default(),
        });
        Ok((inet_dev, addr, addr6))
    }

    /// A host with a public address (relay, coordinator, echo server).
    pub fn add_public_host(&mut self, name: &str) -> Result<Host> {
        if self.publics >= 64 {
            bail!("the lab has room for 64 public hosts");
        }
        let host = self.public_host(name, [192, 0, 2], self.publics)?;
        self.publics += 1;
        Ok(host)
    }

    /// A public host in another /16 than [`Lab::add_public_host`]'s, for
    /// labs where address groups matter (Bitcoin groups IPv4 by /16):
    /// `network` 1 is 198.51.100.0/24, 2 the top of 203.0.113.0/24 (whose
    /// bottom the routers fill).
    pub fn add_public_host_in(&mut self, name: &str, network: u8) -> Result<Host> {
        let (subnet, slot) = match network {
            1 if self.publics_elsewhere[0] < 64 => ([198, 51, 100], self.publics_elsewhere[0]),
            2 if 63 - self.publics_elsewhere[1] >= self.routers => {
                ([203, 0, 113], 63 - self.publics_elsewhere[1])
            }
            _ => bail!("no room for another public host in network {network}"),
        };
        let host = self.public_host(name, subnet, slot)?;
        self.publics_elsewhere[usize::from(network - 1)] += 1;
        Ok(host)
    }

    fn public_host(&mut self, name: &str, subnet: [u8; 3], slot: u8) -> Result<Host> {
        let ns = format!("{}{name}", self.prefix);
        self.add_namespace(&ns)?;
        let (link, ip, ip6) = self.attach(&ns, "eth0", subnet, slot)?;
        Ok(Host {
            name: name.into(),
            ns,
            ip,
            ip6: Some(ip6),
            link,
        })
    }

    /// A NAT router with `profile`, its public side on the internet; with
    /// `profile.behind_carrier`, its WAN on the LAN of a carrier-grade NAT
    /// ([`nat::CARRIER`]) that is on the internet instead.
    pub fn add_nat(&mut self, name: &str, profile: NatProfile) -> Result<Router> {
        if self.routers >= 64 - self.publics_elsewhere[1] {
            bail!("the lab has room for 64 routers and public hosts in 203.0.113.0/24");
        }
        if profile.behind_carrier {
            let mut carrier = self.add_nat(&format!("{name}-cgn"), nat::CARRIER)?;
            return self.add_nat_behind(&mut carrier, name, profile);
        }
        let ns = format!("{}{name}", self.prefix);
        self.add_namespace(&ns)?;
        let index = self.routers;
        let (link, public_ip, wan6) = self.attach(&ns, "wan", [203, 0, 113], index)?;
        self.routers += 1;
        // A carrier's subscribers are in the shared address space
        // (100.64.0.0/10, RFC 6598), a home's in a private one.
        let lan = if profile == nat::CARRIER {
            Ipv4Addr::new(100, 64, index, 0)
        } else {
            Ipv4Addr::new(10, index + 1, 0, 0)
        };
        let mut router =
            self.finish_router(name, public_ip, public_ip, (lan, 24), profile, link)?;
        // IPv6 is routed, not translated: the LAN gets a /64 of its own,
        // the internet a route to it, the router a stateful firewall (a
        // carrier routes its subscribers' IPv6 without one).
        let inet = self.inet.clone();
        self.route6(&inet, &format!("{}/64", lan6_of(index)), wan6)?;
        router.wan6 = Some(wan6);
        self.routed6(&mut router, index, profile != nat::CARRIER)?;
        Ok(router)
    }

    /// The router's LAN /64 (the router is `::1` on it), forwarding, and,
    /// with `firewall`, its profile's stateful IPv6 firewall.
    fn routed6(&mut self, router: &mut Router, index: u8, firewall: bool) -> Result<()> {
        let lan6 = lan6_of(index);
        let [a, b, c, d, ..] = lan6.segments();
        self.addr6(&router.ns, Ipv6Addr::new(a, b, c, d, 0, 0, 0, 1), "lan")?;
        self.sysctl(&router.ns, "net.ipv6.conf.all.forwarding=1")?;
        if firewall {
            let profile = router.profile;
            netns::run_with_input(
                "ip",
                &["netns", "exec", &router.ns, "nft", "-f", "-"],
                Some(&profile.firewall6("bitpunch_fw6")),
            )
            .with_context(|| format!("loading the {profile} IPv6 firewall"))?;
        }
        router.lan6 = Some(lan6);
        Ok(())
    }

    /// A NAT router whose WAN is a host on `upstream`'s LAN.
    fn add_nat_behind(
        &mut self,
        upstream: &mut Router,
        name: &str,
        profile: NatProfile,
    ) -> Result<Router> {
        let ns = format!("{}{name}", self.prefix);
        self.add_namespace(&ns)?;
        let wan_ip = self.plug_into(upstream, &ns, "wan")?;
        let index = self.routers;
        self.routers += 1;
        let lan = (Ipv4Addr::new(10, index + 1, 0, 0), 24);
        let link = upstream.link.clone();
        let mut router =
            self.finish_router(name, wan_ip, upstream.public_ip, lan, profile, link)?;
        // IPv6 through the carrier: routed to this router's WAN address on
        // the carrier's LAN, and on to this router's own /64.
        if let (Some(up6), Some(carrier_wan6)) = (upstream.lan6, upstream.wan6) {
            let wan6 = self.plug6(&ns, "wan", up6, wan_ip)?;
            let own = format!("{}/64", lan6_of(index));
            self.route6(&upstream.ns, &own, wan6)?;
            let inet = self.inet.clone();
            self.route6(&inet, &own, carrier_wan6)?;
            router.wan6 = Some(wan6);
            self.routed6(&mut router, index, true)?;
        }
        Ok(router)
    }

    /// Gives `ns`'s `dev`, plugged into a LAN at IPv4 `ip`, the address with
    /// the same last number in the LAN's /64 `lan6`, and the router (`::1`)
    /// as its IPv6 default route.
    fn plug6(&mut self, ns: &str, dev: &str, lan6: Ipv6Addr, ip: Ipv4Addr) -> Result<Ipv6Addr> {
        let [a, b, c, d, ..] = lan6.segments();
        let ip6 = Ipv6Addr::new(a, b, c, d, 0, 0, 0, u16::from(ip.octets()[3]));
        self.addr6(ns, ip6, dev)?;
        self.route6(ns, "default", Ipv6Addr::new(a, b, c, d, 0, 0, 0, 1))?;
        Ok(ip6)
    }

    /// The router's LAN bridge, forwarding and its NAT rules (on `wan_ip`,
    /// its own WAN address); `public_ip` is where the internet sees it.
    fn finish_router(
        &mut self,
        name: &str,
        wan_ip: Ipv4Addr,
        public_ip: Ipv4Addr,
        lan: (Ipv4Addr, u8),
        profile: NatProfile,
        link: String,
    ) -> Result<Router> {
        let ns = &format!("{}{name}", self.prefix);
        self.ip(ns, &["link", "add", "lan", "type", "bridge"])?;
        self.ip(ns, &["link", "set", "lan", "up"])?;
        let gateway = gateway_of(lan.0);
        self.ip(
            ns,
            &["addr", "add", &format!("{gateway}/{}", lan.1), "dev", "lan"],
        )?;
        self.sysctl(ns, "net.ipv4.ip_forward=1")?;
        let ruleset = profile.ruleset("bitpunch_nat", wan_ip, lan);
        netns::run_with_input(
            "ip",
            &["netns", "exec", ns, "nft", "-f", "-"],
            Some(&ruleset),
        )
        .with_context(|| format!("loading the {profile} ruleset"))?;
        Ok(Router {
            name: name.into(),
            ns: ns.to_string(),
            public_ip,
            lan,
            lan6: None,
            wan6: None,
            profile,
            link,
            hosts: 0,
        })
    }

    /// A veth from `router`'s LAN bridge to `dev` in `ns`, with the next
    /// LAN address and a default route through the router.
    fn plug_into(&mut self, router: &mut Router, ns: &str, dev: &str) -> Result<Ipv4Addr> {
        if router.hosts >= 200 {
            bail!("a LAN has room for 200 hosts");
        }
        let port_dev = format!("h{}", router.hosts);
        self.veth(&router.ns, &port_dev, ns, dev)?;
        self.ip(&router.ns, &["link", "set", &port_dev, "master", "lan"])?;
        let [a, b, c, _] = router.lan.0.octets();
        let ip = Ipv4Addr::new(a, b, c, 10 + router.hosts);
        router.hosts += 1;
        self.ip(
            ns,
            &["addr", "add", &format!("{ip}/{}", router.lan.1), "dev", dev],
        )?;
        self.ip(
            ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &gateway_of(router.lan.0).to_string(),
            ],
        )?;
        Ok(ip)
    }

    /// A host on `router`'s LAN.
    pub fn add_host_behind(&mut self, router: &mut Router, name: &str) -> Result<Host> {
        let ns = format!("{}{name}", self.prefix);
        self.add_namespace(&ns)?;
        let ip = self.plug_into(router, &ns, "eth0")?;
        let ip6 = match router.lan6 {
            Some(lan6) => Some(self.plug6(&ns, "eth0", lan6, ip)?),
            None => None,
        };
        Ok(Host {
            name: name.into(),
            ns,
            ip,
            ip6,
            link: router.link.clone(),
        })
    }

    /// Shapes the internet link `link` (a `Host::link` or `Router::link`) in
    /// both directions.
    pub fn set_link_shape(&mut self, link: &str, shape: LinkShape) -> Result<()> {
        let index = self
            .links
            .iter()
            .position(|l| l.dev == link)
            .with_context(|| format!("no link {link} in this lab"))?;
        self.links[index].shape = shape;
        let backend = *self.backend.get_or_insert_with(|| {
            if shape::netem_available(&self.inet) {
                DelayBackend::Netem
            } else {
                DelayBackend::Nfqueue
            }
        });
        match backend {
            DelayBackend::Netem => {
                // netem shapes egress: the internet side delays packets going
                // down the link, the far side packets coming up it.
                let args = shape::netem_args(link, &shape);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                netns::exec(&self.inet, args[0], &args[1..])?;
                let far = self.links[index].far.clone();
                let far_args = shape::netem_args(&far.1, &shape);
                let far_args: Vec<&str> = far_args.iter().map(String::as_str).collect();
                netns::exec(&far.0, far_args[0], &far_args[1..])?;
            }
            DelayBackend::Nfqueue => {
                if self.delayer.is_none() {
                    let queues: Vec<u16> = (0..64 * 2).collect();
                    self.delayer = Some(shape::Delayer::start(&self.inet, &queues)?);
                }
                let delayer = self.delayer.as_ref().expect("started above");
                delayer.set_shape(self.links[index].queue, shape);
                self.apply_link_rules()?;
            }
        }
        Ok(())
    }

    pub fn delay_backend(&self) -> Option<DelayBackend> {
        self.backend
    }

    fn apply_link_rules(&self) -> Result<()> {
        let links: Vec<(String, u16, LinkShape)> = self
            .links
            .iter()
            .map(|l| (l.dev.clone(), l.queue, l.shape))
            .collect();
        // Replace atomically: delete and re-create the table in one transaction.
        let script = format!(
            "table inet bitpunch_links\ndelete table inet bitpunch_links\n{}",
            shape::loss_rules(&links)
        );
        netns::run_with_input(
            "ip",
            &["netns", "exec", &self.inet, "nft", "-f", "-"],
            Some(&script),
        )?;
        if self.backend == Some(DelayBackend::Nfqueue) {
            // The delayer holds packets of either family; each family's
            // packets are queued by its own table.
            for restore in ["iptables-nft-restore", "ip6tables-nft-restore"] {
                netns::run_with_input(
                    "ip",
                    &["netns", "exec", &self.inet, restore],
                    Some(&shape::queue_rules(&links)),
                )?;
            }
        }
        Ok(())
    }

    /// Runs `program` inside `host`'s namespace; killed when the lab drops.
    pub fn spawn(&mut self, host: &Host, program: &str, args: &[&str]) -> Result<&mut Child> {
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {program} in {}", host.ns))?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }

    /// [`Lab::spawn`], with the program's stderr (its log) into `log`.
    pub fn spawn_logged(
        &mut self,
        host: &Host,
        program: &str,
        args: &[&str],
        log: &std::path::Path,
    ) -> Result<&mut Child> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {program} in {}", host.ns))?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }

    pub fn runtime(&self, host: &Host) -> Result<NsRuntime> {
        NsRuntime::start(&host.ns)
    }

    /// Runs an nftables script (`nft -f -`) in namespace `ns`, one of this
    /// lab's: tests add their attackers, black holes and counters this way.
    /// What it creates lives in the namespace and goes with the lab.
    pub fn nft(&self, ns: &str, script: &str) -> Result<String> {
        if !ns.starts_with(&self.prefix) {
            bail!("{ns} is not a namespace of this lab");
        }
        netns::run_with_input("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script))
            .with_context(|| format!("nft in {ns}"))
    }

    /// The packet count of the named nftables counter in table `ip TABLE`
    /// of namespace `ns`.
    pub fn nft_counter(&self, ns: &str, table: &str, counter: &str) -> Result<u64> {
        let out = netns::exec(ns, "nft", &["list", "counter", "ip", table, counter])?;
        let packets = out
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .with_context(|| format!("no packet count in {out:?}"))?;
        packets
            .parse()
            .with_context(|| format!("packet count {packets:?}"))
    }
}

/// The topology every punch comparison uses: a relay and a coordinator on
/// public hosts, Alice behind one NAT, Bob behind another.
pub struct TwoNats {
    pub relay: Host,
    pub coordinator: Host,
    pub nat_alice: Router,
    pub nat_bob: Router,
    pub alice: Host,
    pub bob: Host,
}

impl Lab {
    /// A lab with the `TwoNats` topology; `shape` on both NATs' links.
    pub fn two_nats(
        nat_alice: NatProfile,
        nat_bob: NatProfile,
        shape: LinkShape,
    ) -> Result<(Lab, TwoNats)> {
        Self::two_nats_shaped(nat_alice, nat_bob, shape, shape)
    }

    /// The same with each NAT's link shaped on its own (asymmetric paths).
    pub fn two_nats_shaped(
        nat_alice: NatProfile,
        nat_bob: NatProfile,
        shape_alice: LinkShape,
        shape_bob: LinkShape,
    ) -> Result<(Lab, TwoNats)> {
        let mut lab = Lab::new()?;
        let relay = lab.add_public_host("relay")?;
        let coordinator = lab.add_public_host("coord")?;
        let mut router_a = lab.add_nat("nat-a", nat_alice)?;
        let mut router_b = lab.add_nat("nat-b", nat_bob)?;
        let alice = lab.add_host_behind(&mut router_a, "alice")?;
        let bob = lab.add_host_behind(&mut router_b, "bob")?;
        if !shape_alice.is_neutral() || !shape_bob.is_neutral() {
            lab.set_link_shape(&router_a.link, shape_alice)?;
            lab.set_link_shape(&router_b.link, shape_bob)?;
        }
        let topology = TwoNats {
            relay,
            coordinator,
            nat_alice: router_a,
            nat_bob: router_b,
            alice,
            bob,
        };
        Ok((lab, topology))
    }

    /// Alice and Bob on one LAN behind one NAT (`nat_alice` and `nat_bob`
    /// are the same router): their only public candidate is the NAT's own
    /// address, which reaches the other only where the router hairpins
    /// (the profile's `/hairpin`). `shape` on the NAT's internet link.
    pub fn one_nat(nat: NatProfile, shape: LinkShape) -> Result<(Lab, TwoNats)> {
        let mut lab = Lab::new()?;
        let relay = lab.add_public_host("relay")?;
        let coordinator = lab.add_public_host("coord")?;
        let mut router = lab.add_nat("nat", nat)?;
        let alice = lab.add_host_behind(&mut router, "alice")?;
        let bob = lab.add_host_behind(&mut router, "bob")?;
        if !shape.is_neutral() {
            lab.set_link_shape(&router.link, shape)?;
        }
        let topology = TwoNats {
            relay,
            coordinator,
            nat_alice: router.clone(),
            nat_bob: router,
            alice,
            bob,
        };
        Ok((lab, topology))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.delayer = None;
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// Kills what runs in `ns`, then deletes it (its veths and nftables tables go
/// with it).
fn remove_namespace(ns: &str) {
    if let Ok(pids) = netns::run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Err(e) = netns::run("ip", &["netns", "del", ns]) {
        tracing::warn!(%ns, error = %e, "could not remove lab namespace");
    }
}

/// The pid encoded in a lab namespace name, if it is one of ours.
fn owner_pid(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix(NS_PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _) = rest.split_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes lab namespaces left by runs that are no longer alive (or all of
/// them with `all`). Never touches a namespace that is not named like ours.
pub fn cleanup(all: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for ns in netns::list()? {
        let Some(pid) = owner_pid(&ns) else { continue };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists() && pid != 0;
        if all || !alive {
            remove_namespace(&ns);
            removed.push(ns);
        }
    }
    Ok(removed)
}

/// The IPv6 /64 of router `index`'s LAN.
fn lan6_of(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, u16::from(index) + 1, 0, 0, 0, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_are_claimed() {
        assert_eq!(owner_pid("bpl1234x0-inet"), Some(1234));
        assert_eq!(owner_pid("bpl1234x17-alice"), Some(1234));
        assert_eq!(owner_pid("bpl1234-inet"), None);
        assert_eq!(owner_pid("bplxx0-inet"), None);
        assert_eq!(owner_pid("docker-1234x0-a"), None);
        assert_eq!(owner_pid("bpl12x-a"), None);
    }
}
