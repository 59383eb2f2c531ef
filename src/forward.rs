//! Published ports (`[[forward]]`): the host's own NAT, in an nftables table of lab's per
//! profile (`names::forward_table`). A forward is two rules that carry the same comment,
//! lab's mark (profile, VM, port, the VM's address, the host address and port):
//! - `output`: a connection the host makes to `host_address:host_port` is sent to the VM
//!   (DNAT; a loopback address is only ever reached from the host itself, so the output
//!   hook is where such connections pass, never prerouting);
//! - `postrouting`: it leaves on the lab's bridge from the bridge's own address
//!   (masquerade), since the VM cannot answer 127.0.0.1.
//!
//! Linux drops packets from 127.0.0.0/8 on any interface but `lo` unless `route_localnet`
//! is set on it: lab sets it on the lab's own bridge only. Both rules go in one nft
//! transaction, so an interrupted `lab up` leaves a forward whole or absent.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::host::Sysroot;
use crate::profile::ForwardProto;
use crate::runner::Cmd;

/// The chain of a forward's DNAT rule.
pub const CHAIN_DNAT: &str = "output";
/// The chain of a forward's masquerade rule.
pub const CHAIN_MASQ: &str = "postrouting";

/// lab's mark on a forward's rules, written as their nft comment:
/// `lab PROFILE/VM:PORT VM_ADDRESS HOST_ADDRESS:HOST_PORT PROTO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardMark {
    pub profile: String,
    pub vm: String,
    pub port: u16,
    /// The VM's address the rules send to.
    pub target: Ipv4Addr,
    pub host_address: Ipv4Addr,
    pub host_port: u16,
    pub proto: ForwardProto,
}

impl ForwardMark {
    pub fn comment(&self) -> String {
        format!(
            "lab {}/{}:{} {} {}:{} {}",
            self.profile,
            self.vm,
            self.port,
            self.target,
            self.host_address,
            self.host_port,
            self.proto.as_str()
        )
    }

    /// The mark a comment carries; None when it is not lab's.
    pub fn parse(comment: &str) -> Option<ForwardMark> {
        let f: Vec<&str> = comment.split_whitespace().collect();
        let [tag, what, target, host, proto] = f.as_slice() else {
            return None;
        };
        if *tag != "lab" {
            return None;
        }
        let (profile, vm_port) = what.split_once('/')?;
        let (vm, port) = vm_port.rsplit_once(':')?;
        let (host_address, host_port) = host.rsplit_once(':')?;
        Some(ForwardMark {
            profile: profile.to_string(),
            vm: vm.to_string(),
            port: port.parse().ok()?,
            target: target.parse().ok()?,
            host_address: host_address.parse().ok()?,
            host_port: host_port.parse().ok()?,
            proto: match *proto {
                "tcp" => ForwardProto::Tcp,
                _ => return None,
            },
        })
    }

    /// How a forward is named in plans and reports: `127.0.0.1:8080->node1:80`.
    pub fn name(&self) -> String {
        format!(
            "{}:{}->{}:{}",
            self.host_address, self.host_port, self.vm, self.port
        )
    }
}

/// One rule of a lab table, with the mark its comment carries (None: not lab's comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedRule {
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub mark: Option<ForwardMark>,
}

/// A rule to delete, by where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub table: String,
    pub chain: String,
    pub handle: u64,
}

impl From<&ObservedRule> for RuleRef {
    fn from(r: &ObservedRule) -> RuleRef {
        RuleRef {
            table: r.table.clone(),
            chain: r.chain.clone(),
            handle: r.handle,
        }
    }
}

/// The `ip` tables named like lab's (`lab-...`) in `nft -j list tables` output.
pub fn parse_tables(json: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(json).context("reading nft's JSON")?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("table"))
        .filter(|t| t["family"] == "ip")
        .filter_map(|t| t["name"].as_str())
        .filter(|n| n.starts_with(&format!("{}-", crate::names::PREFIX)))
        .map(str::to_string)
        .collect())
}

/// The rules of `nft -j list table ip NAME` output.
pub fn parse_rules(json: &str) -> Result<Vec<ObservedRule>> {
    let v: serde_json::Value = serde_json::from_str(json).context("reading nft's JSON")?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .filter_map(|r| {
            Some(ObservedRule {
                table: r["table"].as_str()?.to_string(),
                chain: r["chain"].as_str()?.to_string(),
                handle: r["handle"].as_u64()?,
                mark: r["comment"].as_str().and_then(ForwardMark::parse),
            })
        })
        .collect())
}

fn nft() -> Cmd {
    Cmd::new("nft")
}

/// Every rule of lab's forward tables on the host (those of every profile: a host port is
/// the host's, whichever lab holds it). Without nft, there are none: lab makes them with it.
pub fn observe() -> Result<Vec<ObservedRule>> {
    let tables = match nft().args(["-j", "list", "tables", "ip"]).run() {
        Ok(out) => parse_tables(&out.stdout)?,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e).context("listing nftables tables"),
    };
    let mut rules = Vec::new();
    for t in tables {
        let out = nft()
            .args(["-j", "list", "table", "ip", &t])
            .capture()
            .with_context(|| format!("listing nftables table ip {t}"))?;
        // Gone since it was listed: another lab's down.
        if !out.success() {
            continue;
        }
        rules.extend(parse_rules(&out.stdout)?);
    }
    Ok(rules)
}

/// `/proc/sys/net/ipv4/conf/BRIDGE/route_localnet`.
fn route_localnet_path(bridge: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet")
}

/// Whether the bridge routes loopback addresses (false when it does not exist).
pub fn route_localnet(sysroot: &Sysroot, bridge: &str) -> bool {
    sysroot
        .read_opt(route_localnet_path(bridge))
        .is_some_and(|v| v.trim() == "1")
}

/// The nft script that makes a forward: lab's table and chains when missing, the rules of
/// an earlier half (`stale`) deleted, the two rules added. One transaction.
pub fn make_script(table: &str, bridge: &str, mark: &ForwardMark, stale: &[RuleRef]) -> String {
    let comment = mark.comment();
    let proto = mark.proto.as_str();
    let mut s = format!(
        "add table ip {table} {{ comment \"lab: published ports of profile {}\" ; }}\n\
         add chain ip {table} {CHAIN_DNAT} {{ type nat hook output priority -100 ; policy accept ; }}\n\
         add chain ip {table} {CHAIN_MASQ} {{ type nat hook postrouting priority 100 ; policy accept ; }}\n",
        mark.profile
    );
    for r in stale {
        s.push_str(&format!(
            "delete rule ip {} {} handle {}\n",
            r.table, r.chain, r.handle
        ));
    }
    s.push_str(&format!(
        "add rule ip {table} {CHAIN_DNAT} ip daddr {} {proto} dport {} dnat to {}:{} comment \"{comment}\"\n",
        mark.host_address, mark.host_port, mark.target, mark.port
    ));
    s.push_str(&format!(
        "add rule ip {table} {CHAIN_MASQ} oifname \"{bridge}\" ip saddr 127.0.0.0/8 ip daddr {} {proto} dport {} masquerade comment \"{comment}\"\n",
        mark.target, mark.port
    ));
    s
}

/// Make a forward: checked free once more (the plan is a moment old), the bridge let
/// route loopback addresses, then the rules in one transaction.
pub fn make(table: &str, bridge: &str, mark: &ForwardMark, stale: &[RuleRef]) -> Result<()> {
    let live = Sysroot::live();
    if let Some(l) = crate::host::ports::listeners_on(&live, &[mark.host_port])
        .into_iter()
        .find(|l| l.catches(mark.host_address, mark.host_port))
    {
        bail!(
            "not publishing {}: since the plan, {l} took the port; the forward was not made",
            mark.name()
        );
    }
    let path = live.path(route_localnet_path(bridge));
    std::fs::write(&path, "1\n").with_context(|| {
        format!(
            "letting bridge {bridge} route loopback ({})",
            path.display()
        )
    })?;
    nft()
        .args(["-f", "-"])
        .stdin(make_script(table, bridge, mark, stale))
        .run()
        .with_context(|| format!("adding the nftables rules of forward {}", mark.name()))?;
    Ok(())
}

/// Remove rules of lab's, in one transaction; `then_table`: the table too, when these
/// were its last rules (the profile's table, under the profile's lock).
pub fn remove(rules: &[RuleRef], then_table: Option<&str>) -> Result<()> {
    let mut s = String::new();
    for r in rules {
        s.push_str(&format!(
            "delete rule ip {} {} handle {}\n",
            r.table, r.chain, r.handle
        ));
    }
    if let Some(t) = then_table {
        s.push_str(&format!("delete table ip {t}\n"));
    }
    if s.is_empty() {
        return Ok(());
    }
    nft()
        .args(["-f", "-"])
        .stdin(s)
        .run()
        .context("removing lab's nftables rules")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark() -> ForwardMark {
        ForwardMark {
            profile: "fwtest".into(),
            vm: "node1".into(),
            port: 8080,
            target: Ipv4Addr::new(10, 99, 0, 11),
            host_address: Ipv4Addr::LOCALHOST,
            host_port: 18080,
            proto: ForwardProto::Tcp,
        }
    }

    #[test]
    fn a_mark_reads_back_from_its_comment() {
        let m = mark();
        assert_eq!(
            m.comment(),
            "lab fwtest/node1:8080 10.99.0.11 127.0.0.1:18080 tcp"
        );
        assert_eq!(ForwardMark::parse(&m.comment()), Some(m.clone()));
        assert_eq!(m.name(), "127.0.0.1:18080->node1:8080");
        assert_eq!(ForwardMark::parse("someone else's rule"), None);
        assert_eq!(
            ForwardMark::parse("lab fwtest/node1:8080 10.99.0.11 127.0.0.1:18080 sctp"),
            None
        );
    }

    #[test]
    fn rules_are_read_from_nft_json_with_their_marks() {
        // `nft -j list table ip lab-fwtest` after nft -f of make_script (nftables 1.0.6).
        let json = include_str!("../tests/fixtures/nft/list-table.json");
        let rules = parse_rules(json).unwrap();
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!((rules[0].chain.as_str(), rules[0].handle), (CHAIN_DNAT, 3));
        assert_eq!(rules[1].chain, CHAIN_MASQ);
        assert!(rules.iter().all(|r| r.mark.as_ref() == Some(&mark())));
        let tables = r#"{"nftables": [{"metainfo": {}}, {"table": {"family": "ip", "name": "filter", "handle": 1}}, {"table": {"family": "ip", "name": "lab-fwtest", "handle": 7}}]}"#;
        assert_eq!(parse_tables(tables).unwrap(), ["lab-fwtest"]);
    }

    #[test]
    fn the_script_makes_both_rules_in_one_transaction() {
        let stale = [RuleRef {
            table: "lab-fwtest".into(),
            chain: CHAIN_DNAT.into(),
            handle: 9,
        }];
        let s = make_script("lab-fwtest", "lab-fwtest", &mark(), &stale);
        assert!(
            s.contains("delete rule ip lab-fwtest output handle 9\n"),
            "{s}"
        );
        assert!(
            s.contains("ip daddr 127.0.0.1 tcp dport 18080 dnat to 10.99.0.11:8080"),
            "{s}"
        );
        assert!(s.contains("oifname \"lab-fwtest\" ip saddr 127.0.0.0/8 ip daddr 10.99.0.11 tcp dport 8080 masquerade"), "{s}");
        assert_eq!(s.matches(&mark().comment()).count(), 2, "{s}");
    }
}
