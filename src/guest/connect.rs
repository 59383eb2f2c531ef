//! Reaching a lab VM over SSH: its address from libvirt's lease, lab's key for the
//! profile, waiting until it answers, and what to say when it does not.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::error::usage;
use crate::guest::ssh::{self, Key, Target, Unanswered};
use crate::host::Sysroot;
use crate::libvirt::Libvirt;
use crate::names;
use crate::profile::Profile;
use crate::runner::Cmd;

/// How long one SSH connection attempt may take.
pub const CONNECT: Duration = Duration::from_secs(10);

/// The VM `vm` of `profile` as something to log in to: it must be lab's, running, and
/// have an address.
pub fn target(lv: &Libvirt, profile: &Profile, vm: &str, key: &Key) -> Result<Target> {
    let (domain, ip) = locate(lv, profile, vm)?;
    Ok(Target {
        vm: vm.to_string(),
        known_hosts: ssh::known_hosts_path(&profile.storage.dir, &domain),
        domain,
        ip,
        key: key.private.clone(),
    })
}

/// The domain and address of VM `vm`; an error when the profile has no such VM, it is not
/// running, it is cut off from its network, or it has no lease yet.
pub fn locate(lv: &Libvirt, profile: &Profile, vm: &str) -> Result<(String, String)> {
    let p = &profile.name;
    profile.require_vm(vm)?;
    let domain = names::domain(p, vm);
    let cli = profile.cli_name();
    if !lv.domain_running(&domain) {
        bail!(usage(format!(
            "{vm} of {p} is not running (domain {domain}): `lab up {cli}` first"
        )));
    }
    if let Some((tap, bridge)) = lv
        .detached_interfaces(&domain, &Sysroot::live())
        .into_iter()
        .next()
    {
        bail!(
            "{vm} of {p} is cut off: its interface {tap} is off bridge {bridge} (the network \
             was restarted under the running VM); `lab up {cli}` puts it back"
        );
    }
    let mac = names::mac(p, vm);
    let Some(ip) = lv.lease(&domain, &mac) else {
        bail!(
            "{vm} of {p} has no IP yet (no DHCP lease for {mac} on network {}): it is still \
             booting, or its network is down; `lab status {cli}` shows it",
            names::network(p)
        );
    };
    Ok((domain, ip.to_string()))
}

pub fn key(profile: &Profile) -> Result<Key> {
    ssh::key_for(
        profile,
        &profile.storage.dir,
        crate::dirs::user_home().as_deref(),
    )
}

/// What to say when ssh itself failed (exit status 255) to reach a VM.
pub fn unreachable_hint(profile: &Profile) -> String {
    if profile.direct_boot()
        && crate::directboot::host_ssh_server()
            .ok()
            .flatten()
            .is_none()
    {
        format!(
            "; the {} VMs carry an SSH server only when the host has dropbear when they are \
             made: install dropbear-bin, then `lab down {cli} --purge && lab up {cli}`",
            profile.name,
            cli = profile.cli_name()
        )
    } else {
        String::new()
    }
}

/// Wait until the VM answers over SSH, or `deadline`; the last error in the failure.
pub fn wait_ssh(t: &Target, deadline: Instant, hint: &str) -> Result<()> {
    loop {
        let e = match t.probe(Duration::from_secs(5), Duration::from_secs(15)) {
            Ok(()) => return Ok(()),
            // Waiting longer would only show the same key again.
            Err(Unanswered::HostKey(refused)) => bail!("{refused}"),
            Err(Unanswered::Other(e)) => e,
        };
        if Instant::now() >= deadline {
            bail!("{}: no SSH answer at {} in time: {e}{hint}", t.vm, t.ip);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The shell a step runs in: `sh -s` in the VM, reading the script lab sends.
pub fn remote_shell(t: &Target) -> Cmd {
    t.command(true, CONNECT).arg("sh -s")
}

/// Wait until `vm` answers on its SSH port: its address (as `ip` finds it, `None` while it
/// has no lease), then a TCP connection. What a VM resumed from saved memory is waited for:
/// its lease was kept, which says nothing of whether it runs again.
pub fn wait_resumed(
    vm: &str,
    ip: impl Fn() -> Option<std::net::Ipv4Addr>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(ip) = ip()
            && std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from((ip, 22)),
                Duration::from_secs(2),
            )
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{vm}: resumed, but nothing answers on its SSH port within {} s: see its \
                 console log",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
