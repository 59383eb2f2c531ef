//! `network.subnet`: the lab's subnet must collide with no route (of any routing table),
//! address, VPN, DNS server, proxy, container bridge or libvirt network on this host.

use serde::Serialize;

use super::{Check, CheckContext, Report};
use crate::host::net::NetFacts;
use crate::libvirt::{Libvirt, NetworkInfo};
use crate::names;
use crate::profile::{self, SubnetSpec};
use crate::subnet::{self, SubnetAllocator, Taken};

#[derive(Debug, Serialize)]
struct NetworkFacts {
    host: NetFacts,
    taken: Vec<Taken>,
    libvirt_networks_read: bool,
}

/// Networks libvirt knows (active or not: a defined network comes back at next start).
pub fn libvirt_networks(uri: &str) -> Result<Vec<NetworkInfo>, String> {
    let lv = Libvirt::open(uri).map_err(|e| e.to_string())?;
    lv.networks().map_err(|e| format!("{e:#}"))
}

/// What `networks` take, less the lab's own network `own` (by name).
pub fn taken_by_libvirt(networks: &[NetworkInfo], own: &str) -> Vec<Taken> {
    networks
        .iter()
        .filter(|n| n.name != own)
        .cloned()
        .flat_map(|n| {
            let what = format!(
                "libvirt network {}{}",
                n.name,
                n.bridge
                    .as_deref()
                    .map(|b| format!(" on {b}"))
                    .unwrap_or_default()
            );
            n.subnets.into_iter().map(move |net| Taken {
                net,
                what: what.clone(),
                iface: None,
            })
        })
        .collect()
}

/// The host's networks less the lab's own: its bridge's route and address are the lab
/// itself, not a collision.
pub fn without_own(host: Vec<Taken>, own: Option<&NetworkInfo>) -> Vec<Taken> {
    let Some(own) = own else { return host };
    host.into_iter()
        .filter(|t| match &t.iface {
            Some(iface) => own.bridge.as_deref() != Some(iface.as_str()),
            None => !own.subnets.iter().any(|s| s.contains(&t.net.network())),
        })
        .collect()
}

pub fn check(ctx: &CheckContext<'_>, report: &mut Report) {
    let host = NetFacts::read(ctx.sysroot);
    let key = ctx.profile.map(|p| p.name.as_str()).unwrap_or("smoke");
    let own_name = names::network(key);
    let mut note = String::new();
    let networks = if ctx.sysroot.is_live() {
        match libvirt_networks(ctx.connect) {
            Ok(n) => Some(n),
            Err(_) => {
                note = "; libvirt networks not read (libvirt unreachable)".into();
                None
            }
        }
    } else {
        note = "; libvirt networks not read under --sysroot".into();
        None
    };
    let libvirt_read = networks.is_some();
    let networks = networks.unwrap_or_default();
    // The lab's own network, when it is up, is where the lab already is: not a collision.
    let own = networks
        .iter()
        .find(|n| n.name == own_name && n.bridge.as_deref() == Some(&names::bridge(key)));
    let mut taken = without_own(subnet::taken_by_host(&host), own);
    taken.extend(taken_by_libvirt(
        &networks,
        own.map_or("", |n| n.name.as_str()),
    ));
    if let Some(n) = own
        && let Some(net) = n.subnets.first()
    {
        note.push_str(&format!("; the lab's own network {} is on {net}", n.name));
    }
    let current = own.and_then(|n| n.subnets.first().copied());
    let vpns: Vec<&str> = host
        .ifaces
        .iter()
        .filter(|i| i.kind.is_vpn())
        .map(|i| i.name.as_str())
        .collect();
    if !vpns.is_empty() {
        note.push_str(&format!("; VPN interfaces seen: {}", vpns.join(", ")));
    }
    if let Some(why) = &host.route_source.why_main_only {
        // Policy routing (Tailscale, wg-quick, corporate VPNs) is then invisible.
        note.push_str(&format!(
            "; routes of the main table only ({}: {why})",
            host.route_source.from
        ));
    }

    let (spec, range, source) = match ctx.profile {
        Some(p) => (
            p.network.subnet,
            p.network.auto_range,
            format!("profile {} ({})", p.name, p.source),
        ),
        None => (
            SubnetSpec::Auto,
            profile::DEFAULT_AUTO_RANGE
                .parse()
                .expect("valid default range"),
            "the default profile".to_string(),
        ),
    };
    let allocator = SubnetAllocator::new(range);
    let check = match spec {
        SubnetSpec::Fixed(net) => {
            let hits = subnet::collisions(net, &taken);
            if hits.is_empty() {
                Check::pass(
                    "network.subnet",
                    format!(
                        "{net} of {source} collides with nothing ({}{note})",
                        in_use(taken.len())
                    ),
                )
            } else {
                let with: Vec<String> = hits.iter().map(|t| t.to_string()).collect();
                let suggestion = allocator
                    .allocate(key, current, &taken)
                    .map(|a| format!(" or a free one such as \"{}\"", a.subnet))
                    .unwrap_or_default();
                Check::fail(
                    "network.subnet",
                    format!("{net} of {source} collides with {}{note}", with.join(", ")),
                    format!("in [network] set subnet = \"auto\"{suggestion}"),
                )
            }
        }
        SubnetSpec::Auto => match allocator.allocate(key, current, &taken) {
            Ok(a) => Check::pass(
                "network.subnet",
                format!(
                    "auto for {source}: {} ({}{note})",
                    a.reason,
                    in_use(taken.len())
                ),
            ),
            Err(e) => Check::fail(
                "network.subnet",
                format!(
                    "auto for {source}: {e}{}{note}",
                    in_range(allocator.range, &taken)
                ),
                "in [network] set auto_range to another private range, e.g. \
                 auto_range = \"172.30.0.0/16\", or disconnect the VPN that routes it",
            ),
        },
    };
    report.push(check);
    report.fact(
        "network",
        NetworkFacts {
            host,
            taken,
            libvirt_networks_read: libvirt_read,
        },
    );
}

/// What takes the auto range, so a refusal names it.
fn in_range(range: ipnet::Ipv4Net, taken: &[Taken]) -> String {
    const SHOWN: usize = 5;
    let hits = subnet::collisions(range, taken);
    if hits.is_empty() {
        return String::new();
    }
    let mut named: Vec<String> = hits.iter().take(SHOWN).map(|t| t.to_string()).collect();
    if hits.len() > SHOWN {
        named.push(format!("{} more", hits.len() - SHOWN));
    }
    format!(" ({range} holds {})", named.join(", "))
}

fn in_use(n: usize) -> String {
    match n {
        1 => "1 network in use".into(),
        n => format!("{n} networks in use"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(net: &str, iface: Option<&str>) -> Taken {
        Taken {
            net: net.parse().unwrap(),
            what: format!("route {net}"),
            iface: iface.map(str::to_string),
        }
    }

    #[test]
    fn the_labs_own_network_is_no_collision_and_others_are() {
        let own = NetworkInfo {
            name: names::network("smoke"),
            bridge: Some(names::bridge("smoke")),
            subnets: vec!["10.213.166.0/24".parse().unwrap()],
            active: true,
        };
        let other = NetworkInfo {
            name: "default".into(),
            bridge: Some("virbr0".into()),
            subnets: vec!["192.168.122.0/24".parse().unwrap()],
            active: true,
        };
        let host = vec![
            // The kernel's route to the lab's bridge, and the bridge's address.
            taken("10.213.166.0/24", Some(&names::bridge("smoke"))),
            taken("10.213.166.1/32", None),
            // The LAN.
            taken("192.168.1.0/24", Some("wlan0")),
        ];
        let nets = vec![own.clone(), other];
        let mut t = without_own(host.clone(), Some(&own));
        t.extend(taken_by_libvirt(&nets, &own.name));
        let found: Vec<String> = t.iter().map(|t| t.net.to_string()).collect();
        assert_eq!(found, ["192.168.1.0/24", "192.168.122.0/24"]);
        // Without the lab up, everything counts.
        let mut t = without_own(host, None);
        t.extend(taken_by_libvirt(&nets, ""));
        assert_eq!(t.len(), 5);
    }
}
