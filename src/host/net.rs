//! The IPv4 networks this host already uses: routes of every routing table, local
//! addresses, VPN interfaces, and the addresses of its DNS servers and HTTP(S) proxies.
//! Read from files (`/proc/net/fib_trie`, `/sys/class/net`, `/etc/resolv.conf`,
//! systemd-resolved's state in `/run`), so a test can describe any laptop (hotel Wi-Fi, a
//! corporate VPN) as a tree of files. Routes are the one fact no file holds for every
//! table: live they come from `ip -4 -j route show table all`; a sysroot records that
//! command's output in [`RECORDED_ROUTES`].

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::Sysroot;
use crate::runner::Cmd;

/// Where a sysroot keeps the output of [`ip_route_all`], since `/proc/net/route` shows the
/// main table only and policy routing (Tailscale's table 52, wg-quick's 51820, corporate
/// VPN clients) puts routes elsewhere. Without it, `/proc/net/route` is read.
pub const RECORDED_ROUTES: &str = "/lab-facts/ip-route-all.json";

/// The name `ip` gives the main table; routes without a `table` key are in it.
pub const MAIN_TABLE: &str = "main";

/// The command that lists the routes of every table.
pub fn ip_route_all() -> Cmd {
    Cmd::new("ip")
        .args(["-4", "-j", "route", "show", "table", "all"])
        .timeout(Duration::from_secs(10))
}

/// One route, from any routing table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub iface: String,
    pub dest: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// The routing table: "main", or another name or number from `ip`.
    pub table: String,
}

impl Route {
    pub fn in_main_table(&self) -> bool {
        self.table == MAIN_TABLE
    }
}

/// Where the routes were read from, and whether that saw every table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteSource {
    /// A command line or a file.
    pub from: String,
    /// False when only the main table could be read (`/proc/net/route`).
    pub all_tables: bool,
    /// Why every table could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_main_only: Option<String>,
}

/// A DNS server the host's resolver sends queries to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolver {
    pub addr: Ipv4Addr,
    /// The file that names it.
    pub source: String,
    /// The interface systemd-resolved uses it for, when it is a per-link server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// An HTTP(S) proxy configured by a literal IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proxy {
    pub addr: Ipv4Addr,
    /// The variable that sets it (`https_proxy`, ...).
    pub var: String,
    /// "lab's environment" or the file that sets it.
    pub source: String,
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
    /// The kernel's interface index, which systemd's per-link files are named by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

/// The bridge another hypervisor or container engine made, told by the name it gives its
/// bridges: "docker bridge docker0". Docker names a user-defined network's bridge `br-`
/// and the first 12 hex digits of the network's id, so a person's own `br-lan` is not
/// taken for docker's.
pub fn engine_bridge(name: &str) -> Option<String> {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let engine = if name == "docker0"
        || name
            .strip_prefix("br-")
            .is_some_and(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        "docker bridge"
    } else if numbered("podman") || numbered("cni-podman") {
        "podman bridge"
    } else if numbered("virbr") {
        "libvirt bridge"
    } else if name == "lxcbr0" {
        "LXC bridge"
    } else if name == "lxdbr0" {
        "LXD bridge"
    } else if name == "incusbr0" {
        "Incus bridge"
    } else if numbered("vboxnet") {
        "VirtualBox host-only network"
    } else if numbered("vmnet") {
        "VMware network"
    } else {
        return None;
    };
    Some(format!("{engine} {name}"))
}

/// The host's IPv4 network facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetFacts {
    pub routes: Vec<Route>,
    pub route_source: RouteSource,
    pub local_addrs: Vec<Ipv4Addr>,
    pub ifaces: Vec<Iface>,
    /// DNS servers, loopback ones (systemd-resolved's stub 127.0.0.53) left out: they never
    /// collide, the upstream servers behind them do.
    pub resolvers: Vec<Resolver>,
    pub proxies: Vec<Proxy>,
}

/// The proxy variables lab honours, as curl and most tools spell them.
const PROXY_VARS: [&str; 6] = [
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

impl NetFacts {
    pub fn read(root: &Sysroot) -> NetFacts {
        let ifaces = read_ifaces(root);
        let (routes, route_source) = read_routes(root);
        NetFacts {
            routes,
            route_source,
            local_addrs: root
                .read_opt("/proc/net/fib_trie")
                .map(|t| parse_fib_trie_local(&t))
                .unwrap_or_default(),
            resolvers: read_resolvers(root, &ifaces),
            proxies: read_proxies(root),
            ifaces,
        }
    }

    pub fn iface_kind(&self, name: &str) -> IfaceKind {
        self.ifaces
            .iter()
            .find(|i| i.name == name)
            .map_or(IfaceKind::Other, |i| i.kind)
    }
}

/// Every table through `ip` on the live host, the recorded file under a sysroot; the main
/// table from `/proc/net/route` when neither can be had.
fn read_routes(root: &Sysroot) -> (Vec<Route>, RouteSource) {
    let why = if root.is_live() {
        let cmd = ip_route_all();
        match cmd.run() {
            Ok(out) => match parse_ip_routes(&out.stdout) {
                Ok(routes) => {
                    return (
                        routes,
                        RouteSource {
                            from: cmd.cmdline(),
                            all_tables: true,
                            why_main_only: None,
                        },
                    );
                }
                Err(e) => format!("`{}` printed what lab cannot read: {e}", cmd.cmdline()),
            },
            Err(e) if e.is_not_found() => "ip (iproute2) is not installed".to_string(),
            Err(e) => e.to_string(),
        }
    } else {
        match root.read_opt(RECORDED_ROUTES) {
            Some(text) => match parse_ip_routes(&text) {
                Ok(routes) => {
                    return (
                        routes,
                        RouteSource {
                            from: RECORDED_ROUTES.to_string(),
                            all_tables: true,
                            why_main_only: None,
                        },
                    );
                }
                Err(e) => format!("{RECORDED_ROUTES} of the sysroot: {e}"),
            },
            None => format!("the sysroot has no {RECORDED_ROUTES}"),
        }
    };
    (
        root.read_opt("/proc/net/route")
            .map(|t| parse_route_table(&t))
            .unwrap_or_default(),
        RouteSource {
            from: "/proc/net/route".to_string(),
            all_tables: false,
            why_main_only: Some(why),
        },
    )
}

/// One entry of `ip -j route`: only the keys lab needs.
#[derive(Deserialize)]
struct IpRoute {
    #[serde(rename = "type")]
    kind: Option<String>,
    dst: String,
    gateway: Option<String>,
    dev: Option<String>,
    table: Option<String>,
    #[serde(default)]
    nexthops: Vec<IpNexthop>,
}

#[derive(Deserialize)]
struct IpNexthop {
    gateway: Option<String>,
    dev: Option<String>,
}

/// `ip -j route show table all` (with or without `-4`): the unicast IPv4 routes of every
/// table but `local` (the host's own and broadcast addresses, which the FIB trie gives).
/// Other types are left out: `throw` and `unreachable` send no packet anywhere, `local`,
/// `broadcast` and `multicast` are not networks behind an interface.
pub fn parse_ip_routes(json: &str) -> Result<Vec<Route>, serde_json::Error> {
    let entries: Vec<IpRoute> = serde_json::from_str(json)?;
    let mut routes = Vec::new();
    for e in entries {
        if !matches!(e.kind.as_deref(), None | Some("unicast")) {
            continue;
        }
        let table = e.table.unwrap_or_else(|| MAIN_TABLE.to_string());
        if table == "local" {
            continue;
        }
        let dest: Ipv4Net = if e.dst == "default" {
            Ipv4Net::default()
        } else if let Ok(net) = e.dst.parse::<Ipv4Net>() {
            net.trunc()
        } else if let Ok(addr) = e.dst.parse::<Ipv4Addr>() {
            Ipv4Net::from(addr)
        } else {
            // IPv6, or something newer than lab knows.
            continue;
        };
        let first_hop = e.nexthops.into_iter().next();
        let Some(iface) = e
            .dev
            .or_else(|| first_hop.as_ref().and_then(|h| h.dev.clone()))
        else {
            continue;
        };
        let gateway = e
            .gateway
            .or_else(|| first_hop.and_then(|h| h.gateway))
            .and_then(|g| g.parse().ok());
        routes.push(Route {
            iface,
            dest,
            gateway,
            table,
        });
    }
    Ok(routes)
}

/// `nameserver` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// The servers in a systemd state file of one link: `SERVERS=` in systemd-resolved's
/// `/run/systemd/resolve/netif/IFINDEX`, `DNS=` in networkd's `/run/systemd/netif/links/
/// IFINDEX`. A server may be written `ADDR:PORT%IFINDEX#NAME`; IPv6 ones are skipped.
pub fn parse_link_dns(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("SERVERS=")
                .or_else(|| l.strip_prefix("DNS="))
        })
        .flat_map(str::split_whitespace)
        .filter_map(|w| {
            let end = w
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(w.len());
            let rest = &w[end..];
            // "1.2.3.4", "1.2.3.4:53", "1.2.3.4%3", "1.2.3.4#dns.example"; not "::1" or
            // "fd00::1".
            (end > 0 && (rest.is_empty() || rest.starts_with([':', '%', '#'])))
                .then(|| w[..end].parse().ok())
                .flatten()
        })
        .collect()
}

/// The resolvers in `/etc/resolv.conf`, then systemd-resolved's per-link servers (naming
/// the link), then every upstream server it knows (`/run/systemd/resolve/resolv.conf`):
/// each address once, with the first place that names it.
fn read_resolvers(root: &Sysroot, ifaces: &[Iface]) -> Vec<Resolver> {
    let mut found: Vec<Resolver> = Vec::new();
    let mut add = |addr: Ipv4Addr, source: String, link: Option<String>| {
        if !addr.is_loopback() && !addr.is_unspecified() && !found.iter().any(|r| r.addr == addr) {
            found.push(Resolver { addr, source, link });
        }
    };
    if let Some(text) = root.read_opt("/etc/resolv.conf") {
        for addr in parse_resolv_conf(&text) {
            add(addr, "/etc/resolv.conf".into(), None);
        }
    }
    for dir in ["/run/systemd/resolve/netif", "/run/systemd/netif/links"] {
        for (index, path) in numbered_files(root, dir) {
            let Some(text) = root.read_opt(&path) else {
                continue;
            };
            let link = ifaces
                .iter()
                .find(|i| i.index == Some(index))
                .map_or_else(|| format!("link {index}"), |i| i.name.clone());
            for addr in parse_link_dns(&text) {
                add(addr, path.clone(), Some(link.clone()));
            }
        }
    }
    if let Some(text) = root.read_opt("/run/systemd/resolve/resolv.conf") {
        for addr in parse_resolv_conf(&text) {
            add(addr, "/run/systemd/resolve/resolv.conf".into(), None);
        }
    }
    found
}

/// The files of `dir` named by an interface index, in index order, as absolute host paths.
fn numbered_files(root: &Sysroot, dir: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir(root.path(dir)) else {
        return Vec::new();
    };
    let mut files: Vec<(u32, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let index = name.parse().ok()?;
            Some((index, format!("{dir}/{name}")))
        })
        .collect();
    files.sort();
    files
}

/// The address of a proxy URL (`http://user:pw@10.1.2.3:3128/`, `10.1.2.3:8080`), when it
/// is a literal IPv4 address; a host name is None: it resolves elsewhere, or through the
/// DNS servers lab already counts.
pub fn proxy_addr(url: &str) -> Option<Ipv4Addr> {
    let url = url.trim();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host_port.split(':').next()?;
    host.parse().ok()
}

/// `KEY=value` lines of a pam_env-style file such as `/etc/environment` (quotes and a
/// leading `export` allowed).
pub fn parse_environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// The proxies set by literal IPv4 address in `vars`, found in `source`.
pub fn proxies_in<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    source: &str,
) -> Vec<Proxy> {
    vars.into_iter()
        .filter(|(k, _)| PROXY_VARS.contains(k))
        .filter_map(|(k, v)| {
            let addr = proxy_addr(v)?;
            (!addr.is_loopback() && !addr.is_unspecified()).then(|| Proxy {
                addr,
                var: k.to_string(),
                source: source.to_string(),
            })
        })
        .collect()
}

/// Proxies in lab's own environment (live only: under a sysroot it describes another
/// machine, whose environment lab cannot see) and in the root's `/etc/environment`.
fn read_proxies(root: &Sysroot) -> Vec<Proxy> {
    let mut found = Vec::new();
    if root.is_live() {
        let env: Vec<(String, String)> = std::env::vars().collect();
        found.extend(proxies_in(
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "lab's environment",
        ));
    }
    if let Some(text) = root.read_opt("/etc/environment") {
        let vars = parse_environment_file(&text);
        found.extend(proxies_in(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "/etc/environment",
        ));
    }
    found
}

/// `/proc/net/route` (the main table only): hex, little-endian addresses; the header line
/// is skipped.
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
            table: MAIN_TABLE.to_string(),
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
            let index = root
                .read_attr(format!("{base}/ifindex"))
                .or_else(|| {
                    uevent
                        .lines()
                        .find_map(|l| l.strip_prefix("IFINDEX="))
                        .map(str::to_string)
                })
                .and_then(|i| i.trim().parse().ok());
            Iface { name, kind, index }
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
                    table: "main".into(),
                },
                Route {
                    iface: "eth0".into(),
                    dest: "192.0.2.0/24".parse().unwrap(),
                    gateway: None,
                    table: "main".into(),
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

    // `ip -4 -j route show table all` on a development machine (main and local tables),
    // then Tailscale's table 52 and a multipath route as `ip` prints them.
    const IP_ROUTES: &str = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},{"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},{"type":"local","dst":"192.0.2.2","dev":"eth0","table":"local","protocol":"kernel","scope":"host","prefsrc":"192.0.2.2","flags":[]},{"type":"broadcast","dst":"192.0.2.255","dev":"eth0","table":"local","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},{"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
    {"dst":"100.64.0.0/10","dev":"tailscale0","table":"52","flags":[]},{"dst":"100.100.100.100","dev":"tailscale0","table":"52","flags":[]},{"type":"throw","dst":"127.0.0.0/8","table":"52","flags":[]},
    {"dst":"10.50.0.0/16","table":"corp","flags":[],"nexthops":[{"gateway":"10.8.0.1","dev":"tun0","weight":1,"flags":[]},{"gateway":"10.9.0.1","dev":"tun1","weight":1,"flags":[]}]},
    {"dst":"fd00::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"}]"#;

    #[test]
    fn ip_routes_of_every_table_are_read_and_local_ones_left_out() {
        let routes = parse_ip_routes(IP_ROUTES).unwrap();
        let found: Vec<String> = routes
            .iter()
            .map(|r| format!("{} {} {} {:?}", r.table, r.dest, r.iface, r.gateway))
            .collect();
        assert_eq!(
            found,
            [
                "main 0.0.0.0/0 eth0 Some(192.0.2.1)",
                "main 192.0.2.0/24 eth0 None",
                "52 100.64.0.0/10 tailscale0 None",
                "52 100.100.100.100/32 tailscale0 None",
                "corp 10.50.0.0/16 tun0 Some(10.8.0.1)",
            ]
        );
        assert!(routes[0].in_main_table() && !routes[2].in_main_table());
        assert!(parse_ip_routes("Error: ipv4: FIB table does not exist.").is_err());
        assert_eq!(parse_ip_routes("[]").unwrap(), []);
    }

    #[test]
    fn a_sysroot_without_recorded_routes_reads_the_main_table_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/net")).unwrap();
        std::fs::write(dir.path().join("proc/net/route"), ROUTE).unwrap();
        let root = Sysroot::at(dir.path()).unwrap();
        let facts = NetFacts::read(&root);
        assert_eq!(facts.routes.len(), 2);
        assert!(!facts.route_source.all_tables);
        assert_eq!(facts.route_source.from, "/proc/net/route");
        assert!(
            facts
                .route_source
                .why_main_only
                .as_deref()
                .unwrap()
                .contains(RECORDED_ROUTES)
        );

        std::fs::create_dir_all(dir.path().join("lab-facts")).unwrap();
        std::fs::write(dir.path().join("lab-facts/ip-route-all.json"), IP_ROUTES).unwrap();
        let facts = NetFacts::read(&root);
        assert_eq!(facts.routes.len(), 5);
        assert!(facts.route_source.all_tables);
        assert_eq!(facts.route_source.from, RECORDED_ROUTES);
    }

    #[test]
    fn resolvers_come_from_resolv_conf_and_systemd_resolved_without_loopback() {
        assert_eq!(
            parse_resolv_conf(
                "# Generated by NetworkManager\nsearch corp.example\nnameserver 10.255.255.53\n\
                 nameserver fd00::53\nnameserver 127.0.0.53\noptions edns0\n"
            ),
            [
                "10.255.255.53".parse::<Ipv4Addr>().unwrap(),
                "127.0.0.53".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_link_dns(
                "# This is private data. Do not parse.\nLLMNR=yes\n\
                 SERVERS=10.40.1.10:53%7#dns.corp.example 10.40.1.11 fd00::53 2001:db8::1\n\
                 DOMAINS=corp.example\n"
            ),
            [
                "10.40.1.10".parse::<Ipv4Addr>().unwrap(),
                "10.40.1.11".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_link_dns("DNS=192.168.1.1\nNTP=\n"),
            ["192.168.1.1".parse::<Ipv4Addr>().unwrap()]
        );

        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("etc/resolv.conf", "nameserver 127.0.0.53\n");
        write("sys/class/net/corp0/ifindex", "7\n");
        write("run/systemd/resolve/netif/7", "SERVERS=10.40.1.10\n");
        write(
            "run/systemd/resolve/resolv.conf",
            "nameserver 192.168.1.1\nnameserver 10.40.1.10\n",
        );
        let facts = NetFacts::read(&Sysroot::at(dir.path()).unwrap());
        let found: Vec<String> = facts
            .resolvers
            .iter()
            .map(|r| format!("{} {} {:?}", r.addr, r.source, r.link))
            .collect();
        assert_eq!(
            found,
            [
                "10.40.1.10 /run/systemd/resolve/netif/7 Some(\"corp0\")",
                "192.168.1.1 /run/systemd/resolve/resolv.conf None",
            ]
        );
    }

    #[test]
    fn proxies_count_only_when_set_by_ipv4_address() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().ok();
        assert_eq!(proxy_addr("http://10.1.2.3:3128/"), ip("10.1.2.3"));
        assert_eq!(proxy_addr("10.1.2.3:8080"), ip("10.1.2.3"));
        assert_eq!(proxy_addr("socks5://u:p@w@10.1.2.4:1080"), ip("10.1.2.4"));
        assert_eq!(proxy_addr("http://proxy.corp.example:3128"), None);
        assert_eq!(proxy_addr("http://[fd00::1]:3128"), None);
        assert_eq!(proxy_addr(""), None);
        let vars = parse_environment_file(
            "# proxies\nPATH=\"/usr/bin\"\nexport https_proxy=\"http://10.77.0.8:3128\"\n\
             http_proxy='http://127.0.0.1:3128'\nno_proxy=10.0.0.0/8\nHTTP_PROXY=http://proxy:80\n",
        );
        let proxies = proxies_in(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "/etc/environment",
        );
        assert_eq!(
            proxies,
            [Proxy {
                addr: "10.77.0.8".parse().unwrap(),
                var: "https_proxy".into(),
                source: "/etc/environment".into(),
            }]
        );
    }

    #[test]
    fn container_and_hypervisor_bridges_are_told_by_name() {
        let named = |n: &str| engine_bridge(n);
        assert_eq!(named("docker0").as_deref(), Some("docker bridge docker0"));
        assert_eq!(
            named("br-3f2a9c1d7e6b").as_deref(),
            Some("docker bridge br-3f2a9c1d7e6b")
        );
        assert_eq!(
            named("cni-podman0").as_deref(),
            Some("podman bridge cni-podman0")
        );
        assert_eq!(named("podman1").as_deref(), Some("podman bridge podman1"));
        assert_eq!(named("virbr0").as_deref(), Some("libvirt bridge virbr0"));
        assert_eq!(named("br-lan"), None);
        assert_eq!(named("wlan0"), None);
        assert_eq!(named("podman"), None);
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
