//! Published ports (`[[forward]]`): the host's own NAT, in an nftables table of lab's per
//! profile (`names::forward_table`). Every rule of a forward carries the same comment,
//! lab's mark (profile, VM, port, the VM's address, the host address and port). On a
//! loopback host address a forward is two rules:
//! - `output`: a connection the host makes to `host_address:host_port` is sent to the VM
//!   (DNAT; a loopback address is only ever reached from the host itself, so the output
//!   hook is where such connections pass, never prerouting);
//! - `postrouting`: it leaves on the lab's bridge from the bridge's own address
//!   (masquerade), since the VM cannot answer 127.0.0.1.
//!
//! On any other address (one of the host's, or `0.0.0.0`: every local address) other
//! machines connect too, so there are five more:
//! - `prerouting`: the same DNAT for connections arriving from outside (not those of the
//!   lab's own VMs, arriving on its bridge: they keep reaching the host itself);
//! - `forward` (lab's filter chain, before iptables'): on the bridge, packets to or from
//!   the VM's port that are not of a DNATed connection are dropped, so the accepts below
//!   let exactly the published flows through;
//! - `LIBVIRT_FWI` and `LIBVIRT_FWO` in iptables' `ip filter` table: an accept at the top
//!   of each, since libvirt rejects new connections into (and out of) its networks there
//!   and a reject in any base chain is final. iptables-nft reads these chains back
//!   (libvirt runs it), so these two rules use only what it can read: interface, address,
//!   port, comment (no `ct`, which it calls incompatible: that is why the DNAT condition
//!   sits in lab's own `forward` chain). libvirt inserts its rules above them when its
//!   networks restart: such a rule is observed as shadowed and put back on top.
//!
//! Linux drops packets from 127.0.0.0/8 on any interface but `lo` unless `route_localnet`
//! is set on it: lab sets it on the lab's own bridge only. All of a forward's rules go in
//! one nft transaction, so an interrupted `lab up` leaves a forward whole or absent.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::host::Sysroot;
use crate::profile::ForwardProto;
use crate::runner::Cmd;

/// The chain of a forward's DNAT rule for the host's own connections.
pub const CHAIN_DNAT: &str = "output";
/// The chain of a forward's DNAT rule for other machines' connections.
pub const CHAIN_PREROUTING: &str = "prerouting";
/// The chain of a forward's masquerade rule.
pub const CHAIN_MASQ: &str = "postrouting";
/// lab's filter chain dropping what is not a published flow.
pub const CHAIN_GUARD: &str = "forward";
/// iptables' table where libvirt keeps its chains (`nft list table ip filter`).
pub const LIBVIRT_TABLE: &str = "filter";
/// libvirt's chain for traffic into its networks.
pub const LIBVIRT_IN: &str = "LIBVIRT_FWI";
/// libvirt's chain for traffic out of its networks.
pub const LIBVIRT_OUT: &str = "LIBVIRT_FWO";

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

    /// Whether other machines can reach it (its host address is not a loopback one).
    pub fn open(&self) -> bool {
        !self.host_address.is_loopback()
    }

    /// Where each of its rules is, as (table, chain): `table` is lab's of the profile.
    pub fn places(&self, table: &str) -> Vec<(String, &'static str)> {
        let mut places = vec![
            (table.to_string(), CHAIN_DNAT),
            (table.to_string(), CHAIN_MASQ),
        ];
        if self.open() {
            places.extend([
                (table.to_string(), CHAIN_PREROUTING),
                (table.to_string(), CHAIN_GUARD),
                (table.to_string(), CHAIN_GUARD),
                (LIBVIRT_TABLE.to_string(), LIBVIRT_IN),
                (LIBVIRT_TABLE.to_string(), LIBVIRT_OUT),
            ]);
        }
        places
    }

    /// How a forward is named in plans and reports: `127.0.0.1:8080->node1:80`.
    pub fn name(&self) -> String {
        format!(
            "{}:{}->{}:{}",
            self.host_address, self.host_port, self.vm, self.port
        )
    }
}

/// One rule of a lab table, or one of lab's in libvirt's chains, with the mark its comment
/// carries (None: not lab's comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedRule {
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub mark: Option<ForwardMark>,
    /// A rule not lab's comes before it in its chain (libvirt put its own back on top):
    /// it decides nothing then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadowed: bool,
}

impl ObservedRule {
    /// Whether it is a rule of `profile`'s forwards (`table`: lab's table of it): anything
    /// in that table, lab's marked rules of the profile in libvirt's chains.
    pub fn of_profile(&self, profile: &str, table: &str) -> bool {
        self.table == table
            || (self.table == LIBVIRT_TABLE
                && self.mark.as_ref().is_some_and(|m| m.profile == profile))
    }
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
                shadowed: false,
            })
        })
        .collect())
}

/// The interfaces a rule of nft's JSON matches by name (`iifname`/`oifname` equal to).
fn rule_interfaces(rule: &serde_json::Value) -> Vec<String> {
    rule["expr"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("match"))
        .filter(|m| m["op"] == "==")
        .filter(|m| {
            matches!(
                m["left"]["meta"]["key"].as_str(),
                Some("iifname" | "oifname")
            )
        })
        .filter_map(|m| m["right"].as_str().map(str::to_string))
        .collect()
}

/// lab's rules in one of libvirt's chains (`nft -j list chain ip filter NAME` output, in
/// the chain's order). One is shadowed when a rule not lab's comes before it that can
/// match its packets: one on the same interface (libvirt's reject for the lab's bridge,
/// put back on top when the network restarted) or on none. Rules of other networks
/// above it (libvirt inserts every network's on top) match other interfaces only.
pub fn parse_libvirt_chain(json: &str) -> Result<Vec<ObservedRule>> {
    let v: serde_json::Value = serde_json::from_str(json).context("reading nft's JSON")?;
    let rules: Vec<&serde_json::Value> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .collect();
    let mut foreign_above: Vec<Vec<String>> = Vec::new();
    let mut mine = Vec::new();
    for (r, json) in parse_rules(json)?.into_iter().zip(rules) {
        let interfaces = rule_interfaces(json);
        if r.mark.is_none() {
            foreign_above.push(interfaces);
            continue;
        }
        let shadowed = foreign_above
            .iter()
            .any(|other| other.is_empty() || other.iter().any(|i| interfaces.contains(i)));
        mine.push(ObservedRule { shadowed, ..r });
    }
    Ok(mine)
}

fn nft() -> Cmd {
    Cmd::new("nft")
}

/// Every rule of lab's forward tables on the host (those of every profile: a host port is
/// the host's, whichever lab holds it), and lab's in libvirt's chains. Without nft, there
/// are none: lab makes them with it.
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
    for chain in [LIBVIRT_IN, LIBVIRT_OUT] {
        let out = nft()
            .args(["-j", "list", "chain", "ip", LIBVIRT_TABLE, chain])
            .capture()
            .with_context(|| format!("listing nftables chain ip {LIBVIRT_TABLE} {chain}"))?;
        // No libvirt network has run since boot: nothing of lab's there either.
        if !out.success() {
            continue;
        }
        rules.extend(parse_libvirt_chain(&out.stdout)?);
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
/// an earlier half (`stale`) deleted, the forward's rules added (`ForwardMark::places`).
/// One transaction.
pub fn make_script(table: &str, bridge: &str, mark: &ForwardMark, stale: &[RuleRef]) -> String {
    let comment = mark.comment();
    let proto = mark.proto.as_str();
    let (vm, port) = (mark.target, mark.port);
    let mut s = format!(
        "add table ip {table} {{ comment \"lab: published ports of profile {}\" ; }}\n\
         add chain ip {table} {CHAIN_DNAT} {{ type nat hook output priority -100 ; policy accept ; }}\n\
         add chain ip {table} {CHAIN_MASQ} {{ type nat hook postrouting priority 100 ; policy accept ; }}\n",
        mark.profile
    );
    if mark.open() {
        // The guard runs before iptables' filter chains (priority 0).
        s.push_str(&format!(
            "add chain ip {table} {CHAIN_PREROUTING} {{ type nat hook prerouting priority -100 ; policy accept ; }}\n\
             add chain ip {table} {CHAIN_GUARD} {{ type filter hook forward priority -10 ; policy accept ; }}\n"
        ));
    }
    for r in stale {
        s.push_str(&format!(
            "delete rule ip {} {} handle {}\n",
            r.table, r.chain, r.handle
        ));
    }
    // 0.0.0.0: whichever address of the host's the connection is to.
    let published = if mark.host_address.is_unspecified() {
        format!("fib daddr type local {proto} dport {}", mark.host_port)
    } else {
        format!(
            "ip daddr {} {proto} dport {}",
            mark.host_address, mark.host_port
        )
    };
    let dnat = format!("{published} dnat to {vm}:{port} comment \"{comment}\"");
    s.push_str(&format!("add rule ip {table} {CHAIN_DNAT} {dnat}\n"));
    let from = if mark.open() {
        "ct status dnat"
    } else {
        "ip saddr 127.0.0.0/8"
    };
    s.push_str(&format!(
        "add rule ip {table} {CHAIN_MASQ} oifname \"{bridge}\" {from} ip daddr {vm} {proto} dport {port} masquerade comment \"{comment}\"\n"
    ));
    if mark.open() {
        let to_vm = format!("oifname \"{bridge}\" ip daddr {vm} {proto} dport {port}");
        let from_vm = format!("iifname \"{bridge}\" ip saddr {vm} {proto} sport {port}");
        s.push_str(&format!(
            "add rule ip {table} {CHAIN_PREROUTING} iifname != \"{bridge}\" {dnat}\n\
             add rule ip {table} {CHAIN_GUARD} {to_vm} ct status & dnat == 0 drop comment \"{comment}\"\n\
             add rule ip {table} {CHAIN_GUARD} {from_vm} ct status & dnat == 0 drop comment \"{comment}\"\n\
             insert rule ip {LIBVIRT_TABLE} {LIBVIRT_IN} {to_vm} accept comment \"{comment}\"\n\
             insert rule ip {LIBVIRT_TABLE} {LIBVIRT_OUT} {from_vm} accept comment \"{comment}\"\n"
        ));
    }
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
    fn rules_of_lab_in_libvirts_chains_are_shadowed_by_a_reject_on_their_bridge_only() {
        // `nft -j list chain ip filter LIBVIRT_FWI` (libvirt 9.0, iptables-nft 1.8.9): lab's
        // accept for bridge lab-fwtest inserted on top, then another network started (its
        // reject for lanprobe0 on top) ...
        let above = include_str!("../tests/fixtures/nft/libvirt-fwi-other-network-above.json");
        let open = ForwardMark {
            host_address: Ipv4Addr::UNSPECIFIED,
            ..mark()
        };
        let rules = parse_libvirt_chain(above).unwrap();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0].mark.as_ref(), Some(&open));
        assert_eq!(rules[0].chain, LIBVIRT_IN);
        assert!(!rules[0].shadowed);
        // ... then the lab's network restarted: libvirt's reject for lab-fwtest on top.
        let shadowed = include_str!("../tests/fixtures/nft/libvirt-fwi-shadowed.json");
        let rules = parse_libvirt_chain(shadowed).unwrap();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert!(rules[0].shadowed);
    }

    #[test]
    fn an_open_forward_adds_prerouting_a_guard_and_libvirts_accepts() {
        let open = ForwardMark {
            host_address: Ipv4Addr::UNSPECIFIED,
            ..mark()
        };
        let s = make_script("lab-fwtest", "lab-fwtest", &open, &[]);
        assert_eq!(s.matches(&open.comment()).count(), 7, "{s}");
        assert_eq!(open.places("lab-fwtest").len(), 7);
        for line in [
            "add rule ip lab-fwtest output fib daddr type local tcp dport 18080 dnat to 10.99.0.11:8080",
            "add rule ip lab-fwtest prerouting iifname != \"lab-fwtest\" fib daddr type local tcp dport 18080 dnat to 10.99.0.11:8080",
            "add rule ip lab-fwtest postrouting oifname \"lab-fwtest\" ct status dnat ip daddr 10.99.0.11 tcp dport 8080 masquerade",
            "add rule ip lab-fwtest forward oifname \"lab-fwtest\" ip daddr 10.99.0.11 tcp dport 8080 ct status & dnat == 0 drop",
            "add rule ip lab-fwtest forward iifname \"lab-fwtest\" ip saddr 10.99.0.11 tcp sport 8080 ct status & dnat == 0 drop",
            "insert rule ip filter LIBVIRT_FWI oifname \"lab-fwtest\" ip daddr 10.99.0.11 tcp dport 8080 accept",
            "insert rule ip filter LIBVIRT_FWO iifname \"lab-fwtest\" ip saddr 10.99.0.11 tcp sport 8080 accept",
        ] {
            assert!(s.contains(line), "{line}\n{s}");
        }
        // One address of the host's: that address only.
        let lan = ForwardMark {
            host_address: Ipv4Addr::new(192, 168, 1, 7),
            ..mark()
        };
        let s = make_script("lab-fwtest", "lab-fwtest", &lan, &[]);
        assert!(
            s.contains(
                "prerouting iifname != \"lab-fwtest\" ip daddr 192.168.1.7 tcp dport 18080 dnat"
            ),
            "{s}"
        );
        // Loopback: the two rules, nothing in libvirt's chains.
        let s = make_script("lab-fwtest", "lab-fwtest", &mark(), &[]);
        assert!(
            !s.contains("prerouting") && !s.contains(LIBVIRT_TABLE),
            "{s}"
        );
        assert_eq!(mark().places("lab-fwtest").len(), 2);
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
