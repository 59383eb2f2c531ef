//! Choosing the lab's subnet so it collides with nothing: not the LAN, not a VPN's routes
//! (in any routing table), not the host's DNS servers or proxies, not a docker or libvirt
//! network, not another lab.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::host::net::{NetFacts, engine_bridge};
use crate::names::fnv1a;

/// A network already in use on this host, and by what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Taken {
    pub net: Ipv4Net,
    pub what: String,
    /// The interface a route goes through, when it is a route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
}

impl fmt::Display for Taken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One address (a DNS server, a proxy) reads as an address.
        if self.net.prefix_len() == 32 {
            write!(f, "{} ({})", self.net.addr(), self.what)
        } else {
            write!(f, "{} ({})", self.net, self.what)
        }
    }
}

/// Routes shorter than this are defaults (0.0.0.0/0, a full-tunnel VPN's 0/1 + 128/1): the
/// lab's own, more specific route wins over them, so they are no collision.
const DEFAULT_LIKE_PREFIX: u8 = 8;

/// Every network the host's routes (of every table it could read), addresses, VPN
/// interfaces and container bridges use, and the addresses of its DNS servers and
/// proxies: a lab subnet holding one of those would route its queries into the lab's
/// bridge, even when only a default or full-tunnel route reaches it today.
pub fn taken_by_host(facts: &NetFacts) -> Vec<Taken> {
    let mut taken = Vec::new();
    for route in &facts.routes {
        if route.dest.prefix_len() < DEFAULT_LIKE_PREFIX || route.dest.addr().is_loopback() {
            continue;
        }
        let kind = facts.iface_kind(&route.iface);
        let mut what = if let Some(bridge) = engine_bridge(&route.iface) {
            bridge
        } else if kind.is_vpn() {
            format!("VPN route via {} ({})", route.iface, kind_name(kind))
        } else {
            format!("route via {}", route.iface)
        };
        if !route.in_main_table() {
            what.push_str(&format!(" in routing table {}", route.table));
        }
        if taken
            .iter()
            .any(|t: &Taken| t.net == route.dest && t.what == what)
        {
            // The same route with another metric or gateway.
            continue;
        }
        taken.push(Taken {
            net: route.dest,
            what,
            iface: Some(route.iface.clone()),
        });
    }
    for addr in &facts.local_addrs {
        let net = Ipv4Net::from(*addr);
        if !taken.iter().any(|t| t.net.contains(addr)) {
            taken.push(Taken {
                net,
                what: format!("host address {addr}"),
                iface: None,
            });
        }
    }
    let addresses = facts
        .resolvers
        .iter()
        .map(|r| {
            let what = match &r.link {
                Some(link) => format!("DNS server of {link} in {}", r.source),
                None => format!("DNS server in {}", r.source),
            };
            (r.addr, what)
        })
        .chain(
            facts
                .proxies
                .iter()
                .map(|p| (p.addr, format!("proxy set by {} in {}", p.var, p.source))),
        );
    for (addr, what) in addresses {
        let net = Ipv4Net::from(addr);
        // Named once as an address (a host address, or a resolver that is also a proxy);
        // a route to it (Tailscale's 100.100.100.100) does not say it is the DNS server.
        if !taken.iter().any(|t| t.net == net && t.iface.is_none()) {
            taken.push(Taken {
                net,
                what,
                iface: None,
            });
        }
    }
    taken
}

fn kind_name(kind: crate::host::net::IfaceKind) -> &'static str {
    use crate::host::net::IfaceKind::*;
    match kind {
        Tun => "tun/tap",
        WireGuard => "WireGuard",
        Ppp => "PPP",
        Tunnel => "IP tunnel",
        _ => "interface",
    }
}

/// The subnets in `taken` that overlap `net`.
pub fn collisions(net: Ipv4Net, taken: &[Taken]) -> Vec<&Taken> {
    taken.iter().filter(|t| overlaps(net, t.net)).collect()
}

pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The subnet `auto` chose, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocation {
    pub subnet: Ipv4Net,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "no free /{prefix} left in {range}: every one collides with a route, address or network"
    )]
    Exhausted { range: Ipv4Net, prefix: u8 },
    #[error("auto range {range} is smaller than a /{prefix}")]
    RangeTooSmall { range: Ipv4Net, prefix: u8 },
}

/// Picks a /24 (by default) for a lab from a private range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetAllocator {
    pub range: Ipv4Net,
    pub prefix: u8,
}

impl SubnetAllocator {
    pub fn new(range: Ipv4Net) -> Self {
        SubnetAllocator { range, prefix: 24 }
    }

    /// Choose a subnet for `key` (the profile name). The lab's current subnet is kept while
    /// it is free; otherwise the first free subnet from a starting point derived from the
    /// key, so the same profile lands on the same subnet run after run, and different
    /// profiles spread out instead of all fighting over the first one.
    pub fn allocate(
        &self,
        key: &str,
        current: Option<Ipv4Net>,
        taken: &[Taken],
    ) -> Result<Allocation, AllocError> {
        if let Some(net) = current
            && collisions(net, taken).is_empty()
        {
            return Ok(Allocation {
                subnet: net,
                reason: format!("{net} is the subnet this lab already has, and it is still free"),
            });
        }
        let candidates: Vec<Ipv4Net> = self
            .range
            .subnets(self.prefix)
            .map_err(|_| AllocError::RangeTooSmall {
                range: self.range,
                prefix: self.prefix,
            })?
            .collect();
        if candidates.is_empty() {
            return Err(AllocError::RangeTooSmall {
                range: self.range,
                prefix: self.prefix,
            });
        }
        let start = (fnv1a(key.as_bytes()) % candidates.len() as u64) as usize;
        let preferred = candidates[start];
        for step in 0..candidates.len() {
            let net = candidates[(start + step) % candidates.len()];
            let hits = collisions(net, taken);
            if !hits.is_empty() {
                continue;
            }
            let reason = if step == 0 {
                format!(
                    "{net} is {key}'s preferred subnet in {} and collides with nothing",
                    self.range
                )
            } else {
                let blockers: Vec<String> = collisions(preferred, taken)
                    .iter()
                    .map(|t| t.to_string())
                    .collect();
                format!(
                    "{key}'s preferred subnet {preferred} is taken by {}; {net} is the next free one in {}",
                    blockers.join(", "),
                    self.range
                )
            };
            return Ok(Allocation {
                subnet: net,
                reason,
            });
        }
        Err(AllocError::Exhausted {
            range: self.range,
            prefix: self.prefix,
        })
    }
}

/// The gateway (first host) of a lab subnet: the bridge's address.
pub fn gateway(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::net::{Iface, IfaceKind, Proxy, Resolver, Route};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn taken(s: &str, what: &str) -> Taken {
        Taken {
            net: net(s),
            what: what.into(),
            iface: None,
        }
    }

    #[test]
    fn host_facts_become_taken_networks_with_reasons() {
        let facts = NetFacts {
            routes: vec![
                Route {
                    iface: "wlan0".into(),
                    dest: net("0.0.0.0/0"),
                    gateway: Some("192.168.1.1".parse().unwrap()),
                    table: "main".into(),
                },
                Route {
                    iface: "wlan0".into(),
                    dest: net("192.168.1.0/24"),
                    gateway: None,
                    table: "main".into(),
                },
                Route {
                    iface: "tun0".into(),
                    dest: net("10.0.0.0/8"),
                    gateway: None,
                    table: "main".into(),
                },
                Route {
                    iface: "tun0".into(),
                    dest: net("0.0.0.0/1"),
                    gateway: None,
                    table: "main".into(),
                },
            ],
            local_addrs: vec![
                "192.168.1.7".parse().unwrap(),
                "100.64.3.2".parse().unwrap(),
            ],
            ifaces: vec![
                Iface {
                    name: "wlan0".into(),
                    kind: IfaceKind::Ethernet,
                    index: None,
                },
                Iface {
                    name: "tun0".into(),
                    kind: IfaceKind::Tun,
                    index: None,
                },
            ],
            ..NetFacts::default()
        };
        assert_eq!(
            taken_by_host(&facts),
            vec![
                Taken {
                    iface: Some("wlan0".into()),
                    ..taken("192.168.1.0/24", "route via wlan0")
                },
                Taken {
                    iface: Some("tun0".into()),
                    ..taken("10.0.0.0/8", "VPN route via tun0 (tun/tap)")
                },
                taken("100.64.3.2/32", "host address 100.64.3.2"),
            ]
        );
    }

    #[test]
    fn the_same_key_gets_the_same_subnet() {
        let alloc = SubnetAllocator::new(net("10.213.0.0/16"));
        let a = alloc.allocate("smoke", None, &[]).unwrap();
        let b = alloc.allocate("smoke", None, &[]).unwrap();
        assert_eq!(a, b);
        assert!(a.reason.contains("preferred"), "{}", a.reason);
        let other = alloc.allocate("packstack-aio", None, &[]).unwrap();
        assert_ne!(a.subnet, other.subnet);
    }

    #[test]
    fn a_taken_preferred_subnet_moves_on_and_says_why() {
        let alloc = SubnetAllocator::new(net("10.213.0.0/16"));
        let preferred = alloc.allocate("smoke", None, &[]).unwrap().subnet;
        let taken = vec![taken(
            &preferred.to_string(),
            "VPN route via wg0 (WireGuard)",
        )];
        let chosen = alloc.allocate("smoke", None, &taken).unwrap();
        assert_ne!(chosen.subnet, preferred);
        assert!(collisions(chosen.subnet, &taken).is_empty());
        assert!(chosen.reason.contains("wg0"), "{}", chosen.reason);
    }

    #[test]
    fn the_current_subnet_is_kept_while_free() {
        let alloc = SubnetAllocator::new(net("10.213.0.0/16"));
        let current = net("10.213.99.0/24");
        let a = alloc.allocate("smoke", Some(current), &[]).unwrap();
        assert_eq!(a.subnet, current);
        let busy = vec![taken("10.213.99.0/24", "route via eth1")];
        assert_ne!(
            alloc
                .allocate("smoke", Some(current), &busy)
                .unwrap()
                .subnet,
            current
        );
    }

    #[test]
    fn a_range_covered_by_a_vpn_is_exhausted() {
        let alloc = SubnetAllocator::new(net("10.213.0.0/22"));
        let err = alloc
            .allocate("smoke", None, &[taken("10.0.0.0/8", "VPN route via tun0")])
            .unwrap_err();
        assert_eq!(
            err,
            AllocError::Exhausted {
                range: net("10.213.0.0/22"),
                prefix: 24
            }
        );
        let tiny = SubnetAllocator::new(net("10.213.0.0/25"));
        assert!(matches!(
            tiny.allocate("x", None, &[]),
            Err(AllocError::RangeTooSmall { .. })
        ));
    }

    fn facts_with_resolver(addr: &str) -> NetFacts {
        NetFacts {
            resolvers: vec![Resolver {
                addr: addr.parse().unwrap(),
                source: "/etc/resolv.conf".into(),
                link: None,
            }],
            ..NetFacts::default()
        }
    }

    #[test]
    fn a_dns_server_reached_by_the_default_route_is_taken() {
        // This machine: its DNS server 10.255.255.53 is reached through the default route
        // only; a lab on 10.255.255.0/24 would cut its name resolution.
        let host = taken_by_host(&facts_with_resolver("10.255.255.53"));
        assert_eq!(
            host,
            [taken("10.255.255.53/32", "DNS server in /etc/resolv.conf")]
        );
        assert_eq!(
            host[0].to_string(),
            "10.255.255.53 (DNS server in /etc/resolv.conf)"
        );
        let only = SubnetAllocator::new(net("10.255.255.0/24"));
        assert_eq!(
            only.allocate("smoke", None, &host).unwrap_err(),
            AllocError::Exhausted {
                range: net("10.255.255.0/24"),
                prefix: 24
            }
        );
        // Nor is it kept as the lab's current subnet.
        let two = SubnetAllocator::new(net("10.255.254.0/23"));
        let chosen = two
            .allocate("smoke", Some(net("10.255.255.0/24")), &host)
            .unwrap();
        assert_eq!(chosen.subnet, net("10.255.254.0/24"));
        // "vpn-dns" prefers the second /24 of a /23: the reason names the DNS server.
        let chosen = two.allocate("vpn-dns", None, &host).unwrap();
        assert_eq!(chosen.subnet, net("10.255.254.0/24"));
        assert!(
            chosen.reason.contains(
                "10.255.255.0/24 is taken by 10.255.255.53 (DNS server in /etc/resolv.conf)"
            ),
            "{}",
            chosen.reason
        );
        // systemd-resolved's stub on loopback never collides (it is not read as a
        // resolver), and a resolver that is the host's own address is named once.
        let mut facts = facts_with_resolver("192.168.1.7");
        facts.local_addrs = vec!["192.168.1.7".parse().unwrap()];
        assert_eq!(taken_by_host(&facts).len(), 1);
    }

    #[test]
    fn routes_of_other_tables_bridges_and_proxies_say_what_they_are() {
        let route = |iface: &str, dest: &str, table: &str| Route {
            iface: iface.into(),
            dest: net(dest),
            gateway: None,
            table: table.into(),
        };
        let facts = NetFacts {
            routes: vec![
                route("tailscale0", "100.64.0.0/10", "52"),
                route("tailscale0", "100.100.100.100/32", "52"),
                route("wg0", "10.213.160.0/20", "51820"),
                route("docker0", "172.17.0.0/16", "main"),
                route("cni-podman0", "10.88.0.0/16", "main"),
            ],
            ifaces: vec![
                Iface {
                    name: "tailscale0".into(),
                    kind: IfaceKind::Tun,
                    index: Some(5),
                },
                Iface {
                    name: "wg0".into(),
                    kind: IfaceKind::WireGuard,
                    index: Some(6),
                },
            ],
            resolvers: vec![Resolver {
                addr: "100.100.100.100".parse().unwrap(),
                source: "/etc/resolv.conf".into(),
                link: None,
            }],
            proxies: vec![Proxy {
                addr: "10.77.0.8".parse().unwrap(),
                var: "https_proxy".into(),
                source: "/etc/environment".into(),
            }],
            ..NetFacts::default()
        };
        let found: Vec<String> = taken_by_host(&facts)
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(
            found,
            [
                "100.64.0.0/10 (VPN route via tailscale0 (tun/tap) in routing table 52)",
                "100.100.100.100 (VPN route via tailscale0 (tun/tap) in routing table 52)",
                "10.213.160.0/20 (VPN route via wg0 (WireGuard) in routing table 51820)",
                "172.17.0.0/16 (docker bridge docker0)",
                "10.88.0.0/16 (podman bridge cni-podman0)",
                "100.100.100.100 (DNS server in /etc/resolv.conf)",
                "10.77.0.8 (proxy set by https_proxy in /etc/environment)",
            ]
        );
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(overlaps(net("10.0.0.0/8"), net("10.1.2.0/24")));
        assert!(overlaps(net("10.1.2.0/24"), net("10.0.0.0/8")));
        assert!(!overlaps(net("10.1.2.0/24"), net("10.1.3.0/24")));
        assert_eq!(gateway(net("10.213.4.0/24")).to_string(), "10.213.4.1");
    }
}
