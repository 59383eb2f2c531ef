//! `network.subnet`: the lab's subnet must collide with no route, address, VPN or libvirt
//! network on this host.

use serde::Serialize;

use super::{Check, CheckContext, Report};
use crate::host::net::NetFacts;
use crate::libvirt::Libvirt;
use crate::profile::{self, SubnetSpec};
use crate::subnet::{self, SubnetAllocator, Taken};

#[derive(Debug, Serialize)]
struct NetworkFacts {
    host: NetFacts,
    taken: Vec<Taken>,
    libvirt_networks_read: bool,
}

/// Networks libvirt knows (active or not: a defined network comes back at next start).
pub fn taken_by_libvirt(uri: &str) -> Result<Vec<Taken>, String> {
    let lv = Libvirt::open(uri).map_err(|e| e.to_string())?;
    let nets = lv.networks().map_err(|e| format!("{e:#}"))?;
    Ok(nets
        .into_iter()
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
        .collect())
}

pub fn check(ctx: &CheckContext<'_>, report: &mut Report) {
    let host = NetFacts::read(ctx.sysroot);
    let mut taken = subnet::taken_by_host(&host);
    let mut note = String::new();
    let libvirt_read = if ctx.sysroot.is_live() {
        match taken_by_libvirt(ctx.connect) {
            Ok(t) => {
                taken.extend(t);
                true
            }
            Err(_) => {
                note = "; libvirt networks not read (libvirt unreachable)".into();
                false
            }
        }
    } else {
        note = "; libvirt networks not read under --sysroot".into();
        false
    };
    let vpns: Vec<&str> = host
        .ifaces
        .iter()
        .filter(|i| i.kind.is_vpn())
        .map(|i| i.name.as_str())
        .collect();
    if !vpns.is_empty() {
        note.push_str(&format!("; VPN interfaces seen: {}", vpns.join(", ")));
    }

    let (key, spec, range, source) = match ctx.profile {
        Some(p) => (
            p.name.as_str(),
            p.network.subnet,
            p.network.auto_range,
            format!("profile {} ({})", p.name, p.source),
        ),
        None => (
            "smoke",
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
                    .allocate(key, None, &taken)
                    .map(|a| format!(" or a free one such as \"{}\"", a.subnet))
                    .unwrap_or_default();
                Check::fail(
                    "network.subnet",
                    format!("{net} of {source} collides with {}{note}", with.join(", ")),
                    format!("in [network] set subnet = \"auto\"{suggestion}"),
                )
            }
        }
        SubnetSpec::Auto => match allocator.allocate(key, None, &taken) {
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
                format!("auto for {source}: {e}{note}"),
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

fn in_use(n: usize) -> String {
    match n {
        1 => "1 network in use".into(),
        n => format!("{n} networks in use"),
    }
}
