//! Whether KVM works inside a VM: asked of the VM itself over SSH, for `lab ready` and
//! for the packstack answer file's choice of `CONFIG_NOVA_LIBVIRT_VIRT_TYPE`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::fanout;
use crate::guest::connect::{remote_shell, target, wait_ssh};
use crate::guest::packstack;
use crate::guest::ssh::Key;
use crate::libvirt::Libvirt;
use crate::profile::Profile;

/// Inside a VM that should nest: is /dev/kvm there and usable, and does the CPU show
/// vmx/svm. One line: `ok ...` or `no ...`.
pub const KVM_PROBE: &str = r#"if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
    echo "no: the CPU shows no vmx/svm flag: the VM's CPU does not expose virtualisation"
elif [ ! -c /dev/kvm ]; then
    echo "no: /dev/kvm is missing (is kvm_intel or kvm_amd loaded in the VM?)"
elif ! { exec 3<>/dev/kvm; } 2>/dev/null; then
    echo "no: /dev/kvm cannot be opened for reading and writing"
else
    echo "ok: /dev/kvm usable, $(grep -owE 'vmx|svm' /proc/cpuinfo | head -n 1) exposed"
fi
"#;

/// The packstack compute VMs (the controller of an all-in-one) that should nest but in
/// which /dev/kvm does not work, with why: probed over SSH, all at once.
pub fn kvm_failures(
    lv: &Libvirt,
    profile: &Profile,
    plan: &crate::plan::Plan,
    key: &Key,
    deadline: Instant,
    hint: &str,
) -> Result<Vec<(String, String)>> {
    let mut computes: Vec<&crate::plan::VmPlan> = plan
        .vms
        .iter()
        .filter(|v| v.role.as_deref() == Some(packstack::COMPUTE_ROLE))
        .collect();
    if computes.is_empty() {
        computes = plan
            .vms
            .iter()
            .filter(|v| {
                v.role
                    .as_deref()
                    .is_some_and(|r| packstack::CONTROLLER_ROLES.contains(&r))
            })
            .collect();
    }
    let probed = fanout::all(
        computes
            .into_iter()
            .filter(|vm| vm.nested && vm.domain_type == "kvm"),
        |vm| vm.name.clone(),
        |vm| {
            let t = target(lv, profile, &vm.name, key)?;
            wait_ssh(&t, deadline, hint)?;
            let line = remote_shell(&t)
                .stdin(KVM_PROBE)
                .timeout(Duration::from_secs(60))
                .run()
                .with_context(|| format!("{}: probing /dev/kvm", vm.name))?
                .stdout;
            let line = line.trim();
            Ok(match line.strip_prefix("ok: ") {
                Some(_) => None,
                None => Some((
                    vm.name.clone(),
                    line.strip_prefix("no: ").unwrap_or(line).to_string(),
                )),
            })
        },
    )?;
    Ok(probed.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Cmd;

    #[test]
    fn the_kvm_probe_says_what_is_missing() {
        // Run here, where /dev/kvm exists but the CPU flags do not show vmx/svm (or do):
        // whatever this machine is, the probe answers with one verdict line.
        let out = Cmd::new("sh")
            .arg("-s")
            .stdin(KVM_PROBE)
            .run()
            .unwrap()
            .stdout;
        let line = out.trim();
        assert!(
            line.starts_with("ok: ") || line.starts_with("no: "),
            "{line}"
        );
        assert_eq!(out.lines().count(), 1, "{out}");
    }
}
