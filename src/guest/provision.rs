//! Provisioning a lab: every VM at once, each VM's steps in profile order over SSH, with
//! the packstack answer file written into the controller first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::fanout;
use crate::guest::connect::{CONNECT, key, remote_shell, target, unreachable_hint, wait_ssh};
use crate::guest::kvm::kvm_failures;
use crate::guest::packstack;
use crate::guest::ssh::Target;
use crate::guest::steps::{self, StepResult};
use crate::libvirt::Libvirt;
use crate::profile::Profile;
use crate::ui;

/// Provisioning of a lab that is up: every VM at once, each VM's steps in order. Returns
/// each VM's step results; the first failing step of any VM is the error.
pub fn run(
    lv: &Libvirt,
    profile: &Profile,
    plan: &crate::plan::Plan,
    nested_kvm_on_host: bool,
    wait: Duration,
) -> Result<BTreeMap<String, Vec<StepResult>>> {
    let mut out = BTreeMap::new();
    if profile.provision.is_empty() {
        return Ok(out);
    }
    let key = key(profile)?;
    let hint = unreachable_hint(profile);
    let deadline = Instant::now() + wait;
    let answers = if packstack::is_packstack(profile) {
        // Whether KVM works in the computes is asked of the computes themselves.
        let kvm_in_vms = if nested_kvm_on_host {
            kvm_failures(lv, profile, plan, &key, deadline, &hint)?
        } else {
            Vec::new()
        };
        let a = packstack::answer_file_kept(
            profile,
            plan,
            nested_kvm_on_host,
            &kvm_in_vms,
            &crate::names::packstack_password(&profile.storage.dir, &profile.name),
        )?;
        ui::info(format_args!(
            "packstack: CONFIG_NOVA_LIBVIRT_VIRT_TYPE={}: {}",
            a.virt_type, a.why_virt_type
        ));
        Some(a)
    } else {
        None
    };
    let progress = crate::ui::VmProgress::new();
    // The VMs the plan provisions.
    let provisioned = fanout::all(
        plan.vms
            .iter()
            .filter(|vm| plan.provision.iter().any(|a| a.vm() == Some(&vm.name)))
            .map(|vm| (vm, progress.bar(&vm.name))),
        |(vm, _)| vm.name.clone(),
        |(vm, bar)| {
            let r = (|| {
                let steps = steps::steps_for(profile, &vm.name, vm.role.as_deref())?;
                if steps.is_empty() {
                    return Ok((vm.name.clone(), Vec::new()));
                }
                let t = target(lv, profile, &vm.name, &key)?;
                bar.set_message("waiting for SSH");
                wait_ssh(&t, deadline, &hint)?;
                if let Some(a) = &answers
                    && a.controller.to_string() == t.ip
                {
                    bar.set_message("packstack answer file");
                    let path = packstack::answer_file_path(profile)
                        .unwrap_or_else(|| "/root/lab-answers.txt".into());
                    remote_answer_file(&t, &path, &a.text)?;
                }
                let on_line = |step: &str, line: &str| {
                    let line: String = line.chars().take(100).collect();
                    bar.set_message(format!("{step}: {line}"));
                };
                let shell = || remote_shell(&t);
                let done = steps::run_steps(&vm.name, &steps, &shell, steps::DONE_DIR, &on_line)?;
                Ok((vm.name.clone(), done))
            })();
            match &r {
                Ok((_, steps)) => {
                    bar.finish_with_message(format!("provisioned: {}", summary(steps)))
                }
                Err(e) => bar.abandon_with_message(format!("failed: {e:#}")),
            }
            r
        },
    )?;
    out.extend(provisioned);
    Ok(out)
}

pub fn summary(steps: &[StepResult]) -> String {
    if steps.is_empty() {
        return "no steps".into();
    }
    let ran = steps.iter().filter(|s| s.outcome == "done").count();
    let skipped = steps.iter().filter(|s| s.outcome == "skipped").count();
    format!("{ran} run, {skipped} done before")
}

/// The answer file goes where the packstack step reads it, readable by root only (it
/// holds passwords), written whole or not at all. packstack rewrites the file it reads, so
/// lab writes it anew on every `lab up`.
pub fn remote_answer_file(t: &Target, path: &str, text: &str) -> Result<()> {
    let quoted = crate::runner::quote(path);
    let tmp = crate::runner::quote(&format!("{path}.new"));
    t.command(true, CONNECT)
        .arg(format!("umask 077 && cat >{tmp} && mv {tmp} {quoted}"))
        .stdin(text.as_bytes().to_vec())
        .timeout(Duration::from_secs(60))
        .run()
        .with_context(|| format!("{}: writing the packstack answer file {path}", t.vm))?;
    Ok(())
}
