//! Choosing the lab's subnet so it collides with nothing: not the LAN, not a VPN's routes,
//! not a libvirt network, not another lab.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::host::net::NetFacts;
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
        write!(f, "{} ({})", self.net, self.what)
    }
}

/// Routes shorter than this are defaults (0.0.0.0/0, a full-tunnel VPN's 0/1 + 128/1): the
/// lab's own, more specific route wins over them, so they are no collision.
const DEFAULT_LIKE_PREFIX: u8 = 8;

/// Every network the host's routes, addresses and VPN interfaces use.
pub fn taken_by_host(facts: &NetFacts) -> Vec<Taken> {
    let mut taken = Vec::new();
    for route in &facts.routes {
        if route.dest.prefix_len() < DEFAULT_LIKE_PREFIX || route.dest.addr().is_loopback() {
            continue;
        }
        let kind = facts.iface_kind(&route.iface);
        let what = if kind.is_vpn() {
            format!("VPN route via {} ({})", route.iface, kind_name(kind))
        } else {
            format!("route via {}", route.iface)
        };
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
    use crate::host::net::{Iface, IfaceKind, Route};

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
                },
                Route {
                    iface: "wlan0".into(),
                    dest: net("192.168.1.0/24"),
                    gateway: None,
                },
                Route {
                    iface: "tun0".into(),
                    dest: net("10.0.0.0/8"),
                    gateway: None,
                },
                Route {
                    iface: "tun0".into(),
                    dest: net("0.0.0.0/1"),
                    gateway: None,
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
                },
                Iface {
                    name: "tun0".into(),
                    kind: IfaceKind::Tun,
                },
            ],
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

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(overlaps(net("10.0.0.0/8"), net("10.1.2.0/24")));
        assert!(overlaps(net("10.1.2.0/24"), net("10.0.0.0/8")));
        assert!(!overlaps(net("10.1.2.0/24"), net("10.1.3.0/24")));
        assert_eq!(gateway(net("10.213.4.0/24")).to_string(), "10.213.4.1");
    }
}
