//! The IPv4 networks this host already uses: routes, local addresses, VPN interfaces.
//! Read from `/proc/net/route`, `/proc/net/fib_trie` and `/sys/class/net`, so a test can
//! describe any laptop (hotel Wi-Fi, a corporate VPN) as a tree of files.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::Sysroot;

/// One route from the main table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub iface: String,
    pub dest: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
}

/// What kind of interface carries a network, as far as collisions are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IfaceKind {
    Loopback,
    Ethernet,
    Bridge,
    /// tun/tap: OpenVPN, OpenConnect, vpnc, Tailscale and friends.
    Tun,
    WireGuard,
    Ppp,
    /// ipip, gre, sit, vti: IPsec and other tunnels.
    Tunnel,
    Other,
}

impl IfaceKind {
    pub fn is_vpn(self) -> bool {
        matches!(
            self,
            IfaceKind::Tun | IfaceKind::WireGuard | IfaceKind::Ppp | IfaceKind::Tunnel
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Iface {
    pub name: String,
    pub kind: IfaceKind,
}

/// The host's IPv4 network facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetFacts {
    pub routes: Vec<Route>,
    pub local_addrs: Vec<Ipv4Addr>,
    pub ifaces: Vec<Iface>,
}

impl NetFacts {
    pub fn read(root: &Sysroot) -> NetFacts {
        NetFacts {
            routes: root
                .read_opt("/proc/net/route")
                .map(|t| parse_route_table(&t))
                .unwrap_or_default(),
            local_addrs: root
                .read_opt("/proc/net/fib_trie")
                .map(|t| parse_fib_trie_local(&t))
                .unwrap_or_default(),
            ifaces: read_ifaces(root),
        }
    }

    pub fn iface_kind(&self, name: &str) -> IfaceKind {
        self.ifaces
            .iter()
            .find(|i| i.name == name)
            .map_or(IfaceKind::Other, |i| i.kind)
    }
}

/// `/proc/net/route`: hex, little-endian addresses; the header line is skipped.
pub fn parse_route_table(text: &str) -> Vec<Route> {
    let mut routes = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 8 {
            continue;
        }
        let (Some(dest), Some(gw), Some(mask)) =
            (hex_addr(cols[1]), hex_addr(cols[2]), hex_addr(cols[7]))
        else {
            continue;
        };
        let prefix = u32::from(mask).count_ones() as u8;
        let Ok(net) = Ipv4Net::new(dest, prefix) else {
            continue;
        };
        routes.push(Route {
            iface: cols[0].to_string(),
            dest: net.trunc(),
            gateway: (!gw.is_unspecified()).then_some(gw),
        });
    }
    routes
}

fn hex_addr(hex: &str) -> Option<Ipv4Addr> {
    let raw = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(raw.to_le_bytes()))
}

/// The host's own addresses: the `/32 host LOCAL` leaves of the kernel's FIB trie. They
/// include addresses that have no prefix route (noprefixroute, /32 VPN addresses).
pub fn parse_fib_trie_local(text: &str) -> Vec<Ipv4Addr> {
    let mut addrs: Vec<Ipv4Addr> = Vec::new();
    let mut last_leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("|-- ") {
            last_leaf = rest.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL")
            && let Some(addr) = last_leaf
            && !addr.is_loopback()
            && !addrs.contains(&addr)
        {
            addrs.push(addr);
        }
    }
    addrs
}

/// Where interface `dev` is enslaved, from `/sys/class/net/DEV/master`: None when there is
/// no such interface, `Some(None)` when it is on no bridge, else the bridge's name.
pub fn master_of(root: &Sysroot, dev: &str) -> Option<Option<String>> {
    let base = root.path("/sys/class/net").join(dev);
    if !base.exists() {
        return None;
    }
    Some(
        std::fs::read_link(base.join("master"))
            .ok()
            .and_then(|target| Some(target.file_name()?.to_string_lossy().into_owned())),
    )
}

fn read_ifaces(root: &Sysroot) -> Vec<Iface> {
    let Ok(entries) = std::fs::read_dir(root.path("/sys/class/net")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let base = format!("/sys/class/net/{name}");
            let uevent = root.read_opt(format!("{base}/uevent")).unwrap_or_default();
            let devtype = uevent
                .lines()
                .find_map(|l| l.strip_prefix("DEVTYPE="))
                .unwrap_or("");
            let arphrd: u32 = root
                .read_attr(format!("{base}/type"))
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let kind = classify_iface(
                devtype,
                arphrd,
                root.exists(format!("{base}/tun_flags")),
                root.exists(format!("{base}/bridge")),
            );
            Iface { name, kind }
        })
        .collect()
}

/// Classify by what the kernel says, not by name: a VPN may call its device anything.
fn classify_iface(devtype: &str, arphrd: u32, has_tun_flags: bool, is_bridge: bool) -> IfaceKind {
    match devtype {
        "wireguard" => return IfaceKind::WireGuard,
        "bridge" => return IfaceKind::Bridge,
        _ => {}
    }
    if is_bridge {
        return IfaceKind::Bridge;
    }
    if has_tun_flags {
        return IfaceKind::Tun;
    }
    // ARPHRD_* from <linux/if_arp.h>.
    match arphrd {
        772 => IfaceKind::Loopback,
        1 => IfaceKind::Ethernet,
        512 => IfaceKind::Ppp,
        768 | 769 | 776 | 778 | 823 => IfaceKind::Tunnel,
        65534 => IfaceKind::Tun,
        _ => IfaceKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_s_bridge_comes_from_its_master_link() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("sys/class/net");
        std::fs::create_dir_all(net.join("vnet0")).unwrap();
        std::fs::create_dir_all(net.join("vnet1")).unwrap();
        std::os::unix::fs::symlink("../lab-smoke", net.join("vnet0/master")).unwrap();
        let root = Sysroot::at(dir.path()).unwrap();
        assert_eq!(master_of(&root, "vnet0"), Some(Some("lab-smoke".into())));
        assert_eq!(master_of(&root, "vnet1"), Some(None));
        assert_eq!(master_of(&root, "vnet9"), None);
    }

    // Captured from a development machine.
    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn route_table_is_decoded() {
        let routes = parse_route_table(ROUTE);
        assert_eq!(
            routes,
            vec![
                Route {
                    iface: "eth0".into(),
                    dest: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some("192.0.2.1".parse().unwrap()),
                },
                Route {
                    iface: "eth0".into(),
                    dest: "192.0.2.0/24".parse().unwrap(),
                    gateway: None,
                },
            ]
        );
    }

    #[test]
    fn fib_trie_gives_local_addresses_without_loopback() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/net/fib_trie-dev-machine.txt"
        ))
        .unwrap();
        assert_eq!(
            parse_fib_trie_local(&text),
            vec!["192.0.2.2".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn interfaces_are_classified_by_kernel_facts() {
        assert_eq!(
            classify_iface("wireguard", 65534, false, false),
            IfaceKind::WireGuard
        );
        assert_eq!(classify_iface("", 65534, true, false), IfaceKind::Tun);
        assert_eq!(classify_iface("", 1, true, false), IfaceKind::Tun); // tap
        assert_eq!(classify_iface("", 1, false, false), IfaceKind::Ethernet);
        assert_eq!(classify_iface("bridge", 1, false, true), IfaceKind::Bridge);
        assert_eq!(classify_iface("", 512, false, false), IfaceKind::Ppp);
        assert_eq!(classify_iface("", 768, false, false), IfaceKind::Tunnel);
        assert!(IfaceKind::WireGuard.is_vpn() && !IfaceKind::Bridge.is_vpn());
    }
}
