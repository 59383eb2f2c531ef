//! `libvirt.*`: the daemon answers, its versions, and whether it may create bridges.

use serde::Serialize;

use super::{Check, CheckContext, Report};
use crate::libvirt::{Libvirt, START_HINT};

#[derive(Debug, Default, Serialize)]
struct LibvirtFacts {
    uri: String,
    connected: bool,
    error: Option<String>,
    libvirt_version: Option<String>,
    hypervisor_version: Option<String>,
    driver: Option<String>,
    can_create_bridges: Option<bool>,
}

pub fn check(ctx: &CheckContext<'_>, report: &mut Report) {
    if !ctx.sysroot.is_live() {
        report.push(Check::skip(
            "libvirt.connect",
            "needs the live machine (--sysroot given)",
        ));
        report.push(Check::skip(
            "libvirt.bridge",
            "needs the live machine (--sysroot given)",
        ));
        return;
    }
    let mut facts = LibvirtFacts {
        uri: ctx.connect.to_string(),
        ..LibvirtFacts::default()
    };
    let lv = match Libvirt::open(ctx.connect) {
        Ok(lv) => lv,
        Err(e) => {
            let msg = e.to_string();
            report.push(Check::fail(
                "libvirt.connect",
                msg.split("; start libvirt")
                    .next()
                    .unwrap_or(&msg)
                    .to_string(),
                START_HINT,
            ));
            report.push(Check::skip("libvirt.bridge", "libvirt is not reachable"));
            facts.error = Some(msg);
            report.fact("libvirt", facts);
            return;
        }
    };
    facts.connected = true;
    facts.driver = lv.driver().ok();
    match lv.versions() {
        Ok((lib, hyp)) => {
            report.push(Check::pass(
                "libvirt.connect",
                format!(
                    "{}: libvirt {lib}{}",
                    ctx.connect,
                    hyp.as_deref()
                        .map(|h| format!(
                            ", {} {h}",
                            facts.driver.as_deref().unwrap_or("hypervisor")
                        ))
                        .unwrap_or_default()
                ),
            ));
            facts.libvirt_version = Some(lib);
            facts.hypervisor_version = hyp;
        }
        Err(e) => report.push(Check::fail(
            "libvirt.connect",
            format!("{} answers but not its version: {e:#}", ctx.connect),
            START_HINT,
        )),
    }
    match lv.can_create_bridges() {
        Ok(()) => {
            report.push(Check::pass(
                "libvirt.bridge",
                format!(
                    "{} can create bridges for isolated lab networks",
                    ctx.connect
                ),
            ));
            facts.can_create_bridges = Some(true);
        }
        Err(msg) => {
            report.push(Check::fail(
                "libvirt.bridge",
                format!(
                    "{} cannot create a bridge: {}",
                    ctx.connect,
                    msg.trim().replace('\n', " ")
                ),
                bridge_fix(ctx.connect, &msg),
            ));
            facts.can_create_bridges = Some(false);
        }
    }
    report.fact("libvirt", facts);
}

/// The fix for a failed bridge probe, from what libvirt said.
fn bridge_fix(uri: &str, msg: &str) -> String {
    if msg.contains("iptables") || msg.contains("nft") {
        "install the firewall tool libvirt drives for every network: `apt install iptables` \
         (Fedora/CentOS: `dnf install iptables-nft`), then restart libvirtd"
            .into()
    } else if uri.contains("/session") {
        "session connections cannot create bridges: use `lab --connect qemu:///system ...` \
         (as root or a member of the libvirt group)"
            .into()
    } else {
        format!(
            "libvirt at {uri} refused to create a bridge: see libvirtd's log; lab needs a connection that may create bridges (qemu:///system as root or the libvirt group)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::bridge_fix;

    #[test]
    fn bridge_fixes_follow_the_cause() {
        let iptables = "internal error: Failed to apply firewall rules /usr/sbin/iptables -w: \
                        cannot execute binary /usr/sbin/iptables: No such file or directory";
        assert!(bridge_fix("qemu:///system", iptables).contains("apt install iptables"));
        assert!(
            bridge_fix("qemu:///session", "Operation not permitted")
                .contains("--connect qemu:///system")
        );
    }
}
