//! Provisioning a lab: every VM at once, each VM's steps in profile order over SSH, with
//! the packstack answer file written into the controller first. A VM of a kickstart base
//! takes the lab's identity before anything else ([`apply_identity`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::fanout;
use crate::guest::connect::{CONNECT, key, remote_shell, target, unreachable_hint, wait_ssh};
use crate::guest::identity::{self, LabIdentity};
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
    if plan.provision.is_empty() {
        return Ok(out);
    }
    let key = key(profile)?;
    let lab = if identity::over_ssh(profile) {
        let mut lab = identity::of_lab(&profile.storage.dir, profile, plan)?;
        // The identity rewrites root's authorized_keys: the key lab logs in with stays.
        let body = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        if !key.public_line.is_empty()
            && !lab
                .login_keys
                .iter()
                .any(|k| body(k) == body(&key.public_line))
        {
            lab.login_keys.push(key.public_line.clone());
        }
        Some(lab)
    } else {
        None
    };
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
                if steps.is_empty() && lab.is_none() {
                    return Ok((vm.name.clone(), Vec::new()));
                }
                let t = target(lv, profile, &vm.name, &key)?;
                bar.set_message("waiting for SSH");
                wait_ssh(&t, deadline, &hint)?;
                let on_line = |step: &str, line: &str| {
                    let line: String = line.chars().take(100).collect();
                    bar.set_message(format!("{step}: {line}"));
                };
                let mut done = Vec::new();
                if let Some(lab) = &lab {
                    bar.set_message(identity::STEP);
                    done.push(apply_identity(&t, &profile.storage.dir, lab, &on_line)?);
                }
                if let Some(a) = &answers
                    && a.controller.to_string() == t.ip
                {
                    bar.set_message("packstack answer file");
                    let path = packstack::answer_file_path(profile)
                        .unwrap_or_else(|| "/root/lab-answers.txt".into());
                    remote_answer_file(&t, &path, &a.text)?;
                }
                let shell = || remote_shell(&t);
                done.extend(steps::run_steps(
                    &vm.name,
                    &steps,
                    &shell,
                    steps::DONE_DIR,
                    &on_line,
                )?);
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

/// The lab's identity on the VM `t` over SSH ([`identity::VmIdentity::script`], one
/// connection), as a step recorded like the others, with [`LabIdentity::step_digest`]: a
/// VM that has it already is left alone (no new host key is made for it), a new clone
/// takes it. The VM's new host key is signed by the lab's CA; lab's known_hosts file for
/// the VM trusts the CA beside the key pinned before, while the identity is applied, and
/// then the CA only. Keys are kept in `dir` (the profile's image directory).
pub fn apply_identity(
    t: &Target,
    dir: &Path,
    lab: &LabIdentity,
    on_line: &dyn Fn(&str, &str),
) -> Result<StepResult> {
    let started = Instant::now();
    let mut step = steps::Step {
        name: identity::STEP.into(),
        run: String::new(),
        timeout: identity::STEP_TIMEOUT,
        digest: lab.step_digest(&t.vm),
    };
    let recorded = steps::recorded(
        remote_shell(t),
        std::slice::from_ref(&step),
        steps::DONE_DIR,
    )
    .with_context(|| format!("{}: asking whether it has the lab's identity", t.vm))?;
    if recorded.first().is_some_and(|(_, done)| *done) {
        // Its host key is one the CA signed; only lab's known_hosts may lag behind.
        lab.trust_vm(dir, &t.vm)?;
        return Ok(StepResult {
            name: step.name,
            outcome: "skipped".into(),
            ms: started.elapsed().as_millis() as u64,
            tail: Vec::new(),
        });
    }
    let id = identity::new_vm_identity(dir, lab, &lab.profile, &t.vm)?;
    id.trust_also(dir, lab)?;
    step.run = id.script(lab);
    let shell = || remote_shell(t);
    let mut done = steps::run_steps(
        &t.vm,
        std::slice::from_ref(&step),
        &shell,
        steps::DONE_DIR,
        on_line,
    )?;
    id.trust(dir, lab)?;
    Ok(done.remove(0))
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
