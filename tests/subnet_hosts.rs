//! The subnet a lab takes on laptops that run policy routing, VPN-pushed DNS servers,
//! systemd-resolved and container engines: `lab check`'s `network.subnet` finding and the
//! subnet `lab up --dry-run` plans, for each of the `tests/fixtures/hosts/net-*` trees.
//!
//! Each tree holds `lab-facts/ip-route-all.json`, the output of `ip -4 -j route show table
//! all` on such a laptop (every routing table; `/proc/net/route` beside it shows the main
//! table only, as the kernel does):
//! - `net-wg-table-51820`: wg-quick with `Table = 51820`, a corporate 10.213.160.0/20 there;
//! - `net-tailscale`: Tailscale's table 52 (100.64.0.0/10, 100.100.100.100, a subnet
//!   router's 10.213.166.0/24) and MagicDNS in /etc/resolv.conf;
//! - `net-vpn-full-tunnel-dns`: OpenVPN's 0/1 + 128/1, a pushed DNS server 10.77.7.53 and
//!   a proxy 10.77.7.80 in /etc/environment, both reached through the tunnel's default;
//! - `net-resolved-per-link`: systemd-resolved's stub in /etc/resolv.conf, the VPN link
//!   corp0's servers in /run/systemd/resolve/netif/7;
//! - `net-docker-bridge`: docker0, a compose network's br-…, podman's cni-podman0.
//!
//! `lab up --dry-run` talks to libvirt's test driver, which needs no daemon.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

fn sysroot(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hosts")
        .join(name)
        .display()
        .to_string()
}

/// A one-VM profile `name` with `[network]` lines `network`, in `dir`.
fn profile(dir: &Path, name: &str, network: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\n[network]\n{network}\n[base]\nkernel = \"host\"\n\
             initrd = \"busybox\"\n[[vm]]\nname = \"a\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// `lab check --json`, with `--sysroot` when one is given: (exit status, report). Other
/// areas fail under these sysroots (no /proc/cpuinfo): the status is 3 whenever
/// `network.subnet` fails, and tells nothing when it passes.
fn check(root: Option<&str>, profile: Option<&str>) -> (i32, Value) {
    let mut cmd = Command::cargo_bin("lab").unwrap();
    cmd.args(["check", "--json", "--no-throughput"])
        .env_remove("LAB_CONNECT");
    if let Some(root) = root {
        cmd.args(["--sysroot", root]);
    }
    if let Some(p) = profile {
        cmd.args(["--profile", p]);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}"));
    (out.status.code().unwrap(), report)
}

/// The `network.subnet` finding: (status, summary, fix).
fn subnet_finding(report: &Value) -> (String, String, String) {
    let c = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "network.subnet")
        .unwrap_or_else(|| panic!("no network.subnet in {report:#}"));
    let text = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (text("status"), text("summary"), text("fix"))
}

/// Every taken network of the report as "NET WHAT".
fn taken(report: &Value) -> Vec<String> {
    report["facts"]["network"]["taken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} {}",
                t["net"].as_str().unwrap(),
                t["what"].as_str().unwrap()
            )
        })
        .collect()
}

/// `lab up PROFILE --dry-run --json --sysroot ROOT`: the planned subnet, or the refusal.
fn planned_subnet(root: &str, profile: &str) -> Result<String, String> {
    let out = Command::cargo_bin("lab")
        .unwrap()
        .args(["up", profile, "--dry-run", "--json", "--sysroot", root])
        .env("LAB_CONNECT", "test:///default")
        .output()
        .unwrap();
    if out.status.code() == Some(0) {
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        Ok(plan["network"]["subnet"].as_str().unwrap().to_string())
    } else {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        Err(String::from_utf8(out.stderr).unwrap())
    }
}

#[test]
fn wireguard_routes_in_table_51820_are_stepped_around() {
    let root = sysroot("net-wg-table-51820");
    let (_, report) = check(Some(&root), None);
    assert_eq!(
        report["facts"]["network"]["host"]["route_source"]["all_tables"],
        true
    );
    let (status, s, _) = subnet_finding(&report);
    assert_eq!(status, "pass", "{s}");
    assert!(
        s.contains(
            "smoke's preferred subnet 10.213.166.0/24 is taken by 10.213.160.0/20 \
             (VPN route via wg0 (WireGuard) in routing table 51820); \
             10.213.176.0/24 is the next free one"
        ),
        "{s}"
    );
    assert_eq!(planned_subnet(&root, "smoke").unwrap(), "10.213.176.0/24");

    let dir = tempfile::tempdir().unwrap();
    let fixed = profile(dir.path(), "on-wg", "subnet = \"10.213.166.0/24\"");
    let (code, report) = check(Some(&root), Some(&fixed));
    assert_eq!(code, 3);
    let (status, s, fix) = subnet_finding(&report);
    assert_eq!(status, "fail");
    assert!(
        s.contains(
            "10.213.166.0/24 of profile on-wg (",
        ) && s.contains(
            "collides with 10.213.160.0/20 (VPN route via wg0 (WireGuard) in routing table 51820)"
        ),
        "{s}"
    );
    assert!(fix.contains("subnet = \"auto\""), "{fix}");
    let refused = planned_subnet(&root, &fixed).unwrap_err();
    assert!(refused.contains("in routing table 51820"), "{refused}");
}

#[test]
fn tailscale_table_52_and_magic_dns_are_taken() {
    let root = sysroot("net-tailscale");
    let (_, report) = check(Some(&root), None);
    let (status, s, _) = subnet_finding(&report);
    assert_eq!(status, "pass", "{s}");
    assert!(
        s.contains(
            "preferred subnet 10.213.166.0/24 is taken by 10.213.166.0/24 \
             (VPN route via tailscale0 (tun/tap) in routing table 52)"
        ),
        "{s}"
    );
    assert!(s.contains("10.213.167.0/24 is the next free one"), "{s}");
    // The throw route and the local table are no networks; the /32 address is covered.
    assert_eq!(
        taken(&report),
        [
            "192.168.1.0/24 route via wlan0",
            "10.213.166.0/24 VPN route via tailscale0 (tun/tap) in routing table 52",
            "100.64.0.0/10 VPN route via tailscale0 (tun/tap) in routing table 52",
            "100.100.100.100/32 VPN route via tailscale0 (tun/tap) in routing table 52",
            "100.100.100.100/32 DNS server in /etc/resolv.conf",
        ]
    );
    assert_eq!(planned_subnet(&root, "smoke").unwrap(), "10.213.167.0/24");

    let dir = tempfile::tempdir().unwrap();
    let fixed = profile(dir.path(), "cgnat", "subnet = \"100.100.100.0/24\"");
    let (code, report) = check(Some(&root), Some(&fixed));
    assert_eq!(code, 3);
    let (status, s, _) = subnet_finding(&report);
    assert_eq!(status, "fail");
    assert!(
        s.contains("100.64.0.0/10 (VPN route via tailscale0 (tun/tap) in routing table 52)"),
        "{s}"
    );
    assert!(
        s.contains("100.100.100.100 (DNS server in /etc/resolv.conf)"),
        "{s}"
    );
}

#[test]
fn a_full_tunnel_vpns_dns_server_and_proxy_in_10_x_are_taken() {
    let root = sysroot("net-vpn-full-tunnel-dns");
    let dir = tempfile::tempdir().unwrap();
    // "vpn-dns" prefers the second /24 of its range, where the VPN's DNS server is.
    let auto = profile(dir.path(), "vpn-dns", "auto_range = \"10.77.6.0/23\"");
    let (_, report) = check(Some(&root), Some(&auto));
    let (status, s, _) = subnet_finding(&report);
    assert_eq!(status, "pass", "{s}");
    assert!(
        s.contains(
            "vpn-dns's preferred subnet 10.77.7.0/24 is taken by \
             10.77.7.53 (DNS server in /etc/resolv.conf), \
             10.77.7.80 (proxy set by https_proxy in /etc/environment); \
             10.77.6.0/24 is the next free one in 10.77.6.0/23"
        ),
        "{s}"
    );
    // The tunnel's 0/1 and 128/1 are defaults, no collision; the proxy by name is not read.
    let nets = taken(&report);
    assert!(!nets.iter().any(|t| t.contains("/1 ")), "{nets:?}");
    assert!(!nets.iter().any(|t| t.contains("http_proxy")), "{nets:?}");
    assert_eq!(planned_subnet(&root, &auto).unwrap(), "10.77.6.0/24");

    let fixed = profile(dir.path(), "on-dns", "subnet = \"10.77.7.0/24\"");
    let (code, report) = check(Some(&root), Some(&fixed));
    assert_eq!(code, 3);
    let (status, s, _) = subnet_finding(&report);
    assert_eq!(status, "fail");
    assert!(
        s.contains("collides with 10.77.7.53 (DNS server in /etc/resolv.conf)"),
        "{s}"
    );
    let refused = planned_subnet(&root, &fixed).unwrap_err();
    assert!(
        refused.contains("10.77.7.53 (DNS server in /etc/resolv.conf)"),
        "{refused}"
    );

    // A range with no room left names what holds it.
    let full = profile(dir.path(), "no-room", "auto_range = \"10.77.7.0/24\"");
    let (code, report) = check(Some(&root), Some(&full));
    assert_eq!(code, 3);
    let (status, s, fix) = subnet_finding(&report);
    assert_eq!(status, "fail");
    assert!(
        s.contains("no free /24 left in 10.77.7.0/24")
            && s.contains("10.77.7.0/24 holds 10.77.7.53 (DNS server in /etc/resolv.conf)"),
        "{s}"
    );
    assert!(fix.contains("auto_range"), "{fix}");
}

#[test]
fn systemd_resolved_per_link_servers_are_taken_and_its_stub_is_not() {
    let root = sysroot("net-resolved-per-link");
    let dir = tempfile::tempdir().unwrap();
    let auto = profile(dir.path(), "resolved", "auto_range = \"10.40.0.0/23\"");
    let (_, report) = check(Some(&root), Some(&auto));
    let (status, s, _) = subnet_finding(&report);
    assert_eq!(status, "pass", "{s}");
    assert!(
        s.contains(
            "resolved's preferred subnet 10.40.1.0/24 is taken by \
             10.40.1.10 (DNS server of corp0 in /run/systemd/resolve/netif/7), \
             10.40.1.11 (DNS server of corp0 in /run/systemd/resolve/netif/7); \
             10.40.0.0/24 is the next free one"
        ),
        "{s}"
    );
    let resolvers: Vec<&str> = report["facts"]["network"]["host"]["resolvers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["addr"].as_str().unwrap())
        .collect();
    assert_eq!(resolvers, ["10.40.1.10", "10.40.1.11", "192.168.1.1"]);
    assert_eq!(planned_subnet(&root, &auto).unwrap(), "10.40.0.0/24");

    let fixed = profile(dir.path(), "on-corp-dns", "subnet = \"10.40.1.0/24\"");
    let (code, report) = check(Some(&root), Some(&fixed));
    assert_eq!(code, 3);
    let (status, s, _) = subnet_finding(&report);
    assert_eq!(status, "fail");
    assert!(
        s.contains(
            "collides with 10.40.1.10 (DNS server of corp0 in /run/systemd/resolve/netif/7)"
        ),
        "{s}"
    );
}

#[test]
fn docker_and_podman_bridges_are_named_as_such() {
    let root = sysroot("net-docker-bridge");
    let dir = tempfile::tempdir().unwrap();
    // "docker" prefers 172.17.173.0/24 in 172.16.0.0/15: docker0's network.
    let auto = profile(dir.path(), "docker", "auto_range = \"172.16.0.0/15\"");
    let (_, report) = check(Some(&root), Some(&auto));
    let (status, s, _) = subnet_finding(&report);
    assert_eq!(status, "pass", "{s}");
    assert!(
        s.contains(
            "docker's preferred subnet 172.17.173.0/24 is taken by \
             172.17.0.0/16 (docker bridge docker0); 172.16.0.0/24 is the next free one"
        ),
        "{s}"
    );
    let nets = taken(&report);
    assert!(
        nets.contains(&"172.18.0.0/16 docker bridge br-3f2a9c1d7e6b".to_string()),
        "{nets:?}"
    );
    assert_eq!(planned_subnet(&root, &auto).unwrap(), "172.16.0.0/24");

    let fixed = profile(dir.path(), "on-podman", "subnet = \"10.88.0.0/24\"");
    let (code, report) = check(Some(&root), Some(&fixed));
    assert_eq!(code, 3);
    let (status, s, _) = subnet_finding(&report);
    assert_eq!(status, "fail");
    assert!(
        s.contains("collides with 10.88.0.0/16 (podman bridge cni-podman0)"),
        "{s}"
    );
    let refused = planned_subnet(&root, &fixed).unwrap_err();
    assert!(refused.contains("podman bridge cni-podman0"), "{refused}");
}

/// This machine: its DNS server (10.255.255.53 on the development and CI machines) is
/// reached through the default route only, and still counts as taken.
#[test]
fn this_machines_dns_servers_are_taken() {
    let servers: Vec<String> = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(|a| a.trim().to_string())
        .filter(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| !a.is_loopback())
        })
        .collect();
    let (_, report) = check(None, None);
    let nets = taken(&report);
    for server in &servers {
        assert!(
            nets.iter().any(|t| t.starts_with(&format!("{server}/32 "))),
            "{server} of /etc/resolv.conf not taken: {nets:?}"
        );
    }
    let ip_works = std::process::Command::new("ip")
        .args(["-4", "-j", "route", "show", "table", "all"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ip_works {
        assert_eq!(
            report["facts"]["network"]["host"]["route_source"]["all_tables"], true,
            "{:#}",
            report["facts"]["network"]["host"]["route_source"]
        );
    }
}
