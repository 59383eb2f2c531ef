//! `lab up PROFILE [--dry-run]`: observe, plan, apply, provision, report.

use anyhow::Result;
use serde::Serialize;

use std::time::{Duration, Instant};

use crate::apply;
use crate::cli::{GlobalArgs, UpArgs};
use crate::error::{exit, usage};
use crate::host::Sysroot;
use crate::libvirt::Libvirt;
use crate::lock::Lock;
use crate::plan;
use crate::profile::Profile;
use crate::ui;

use super::vm_table;

#[derive(Serialize)]
struct UpReport<'a> {
    profile: &'a str,
    network: &'a plan::NetworkPlan,
    vms: Vec<apply::VmState>,
    /// Each VM's provisioning steps: done now, or skipped (done before).
    provision: std::collections::BTreeMap<String, Vec<crate::guest::steps::StepResult>>,
    /// The ports published on the host (`[[forward]]`).
    forwards: Vec<crate::profile::Forward>,
    warnings: &'a [String],
    timings_ms: Timings,
}

#[derive(Serialize, Default)]
struct Timings {
    observe_and_plan: u64,
    #[serde(flatten)]
    lab: apply::LabTimings,
    provision: u64,
    total: u64,
}

/// `lab up PROFILE [--dry-run]`: observe, plan, apply.
pub fn up(global: &GlobalArgs, args: &UpArgs) -> Result<u8> {
    let started = Instant::now();
    let profile = Profile::load(&args.profile)?;
    let sysroot = match &args.sysroot {
        Some(dir) => Sysroot::at(dir)?,
        None => Sysroot::live(),
    };
    let lv = Libvirt::open(&global.connect)?;
    // The profile's lock for the whole command (base build and provisioning included).
    let _profile_lock = super::profile_lock(global, "up", &profile.name, args.dry_run)?;
    // An interrupted snapshot first: the VMs it paused belong to its point, not to be
    // resumed one by one.
    super::snapshot::finish_interrupted(&lv, &profile, args.dry_run)?;
    if !args.dry_run {
        super::start::settle_vms(&lv, &profile)?;
    }
    // The host's facts before the host-wide lock (the KVM verdict may boot QEMU): what that
    // lock is about, the networks of other labs, is in libvirt's observation below.
    let host = crate::observe::host_facts(&sysroot, &profile);
    // The host-wide lock from observing until the network exists, so that two labs coming
    // up at once never choose the same subnet. The plan made under it stays true once it
    // is let go: other commands touch other profiles' objects only.
    let host_lock = if args.dry_run {
        None
    } else {
        let purpose = format!(
            "to choose a subnet and create network {}",
            crate::names::network(&profile.name)
        );
        Some(Lock::host(
            &format!("lab up {}", profile.name),
            &purpose,
            global.wait(),
        )?)
    };
    let observed = crate::observe::lab(&lv, &profile, &sysroot)?;
    let options = plan::UpOptions {
        provision: !args.no_provision,
    };
    let mut plan = plan::up(&profile, &host, &observed, options).map_err(|e| usage(e.0))?;
    // What the laptop is short of for this profile, told before a run that may take hours
    // (packstack): the same judgement `lab check --profile` fails on.
    let nesting = crate::check::resources::Nesting {
        works: host.kvm.usable && host.kvm.nested,
        why: if !host.kvm.usable {
            format!("KVM itself does not: {}", host.kvm.reason)
        } else if host.kvm.nested {
            "nested KVM works here".to_string()
        } else {
            "the KVM module's nested parameter is off; lab check says more".to_string()
        },
    };
    for c in crate::check::resources::shortfalls(&profile, &sysroot, &nesting) {
        plan.warnings.push(format!(
            "{}: {} (lab check --profile fails on this; fix: {})",
            c.id,
            c.summary,
            c.fix.unwrap_or_default()
        ));
    }
    let planned = started.elapsed();
    if args.dry_run {
        super::show_plan(global, &plan, plan::render)?;
        return Ok(exit::OK);
    }
    for w in &plan.warnings {
        ui::warn(format_args!("{w}"));
    }
    if plan.is_empty() {
        ui::info(format_args!(
            "{}: nothing to do, the lab is up",
            profile.name
        ));
    } else {
        ui::info(format_args!(
            "{}: {} step{} to do",
            profile.name,
            plan.actions.len(),
            if plan.actions.len() == 1 { "" } else { "s" }
        ));
    }
    let storage = apply::storage_for(&plan)?;
    let env = apply::Env {
        wait: global.wait(),
        ..apply::Env::new(
            &lv,
            storage.as_ref(),
            &profile,
            Duration::from_secs(args.timeout),
        )
    };
    let (vms, lab_timings) = apply::apply(&plan, &env, host_lock)?;
    let t = Instant::now();
    let provision = if plan.provision.is_empty() {
        Default::default()
    } else {
        crate::guest::provision::run(
            &lv,
            &profile,
            &plan,
            host.kvm.usable && host.kvm.nested,
            Duration::from_secs(args.timeout),
        )?
    };
    // A successful provisioning is kept as a snapshot `lab reset` goes back to.
    let provisioned = !plan.provision.is_empty() && !profile.provision.is_empty();
    if provisioned {
        let snaps = crate::snapshot::Snapshots::new(&lv, &profile);
        if snaps.is_taken(crate::snapshot::PROVISIONED)
            && !snaps.exists(crate::snapshot::PROVISIONED)
        {
            // Removed (lab reset --pristine) while its layers are still under running
            // VMs: its name is free only once they are merged.
            ui::warn(format_args!(
                "snapshot {} is still being removed (its layers are under running VMs): not \
                 taken again; lab reset makes fresh clones until the next lab up takes it",
                crate::snapshot::PROVISIONED
            ));
        } else if !snaps.exists(crate::snapshot::PROVISIONED) {
            let t = snaps.take(crate::snapshot::PROVISIONED)?;
            ui::info(format_args!(
                "snapshot {}: {}",
                crate::snapshot::PROVISIONED,
                crate::snapshot::render_timings(&t, "paused")
            ));
        }
    }
    let report = UpReport {
        profile: &profile.name,
        network: &plan.network,
        vms,
        provision,
        forwards: profile.forwards(),
        warnings: &plan.warnings,
        timings_ms: Timings {
            observe_and_plan: planned.as_millis() as u64,
            lab: lab_timings,
            provision: t.elapsed().as_millis() as u64,
            total: started.elapsed().as_millis() as u64,
        },
    };
    if global.json {
        ui::print_json(&report)?;
    } else {
        print!("{}", vm_table(&report.vms));
        println!(
            "network {} on {} ({}), {}",
            plan.network.name,
            plan.network.bridge,
            plan.network.subnet,
            match plan.network.mode {
                crate::profile::NetMode::Isolated => "isolated",
                crate::profile::NetMode::Nat => "NAT",
            }
        );
        for f in &report.forwards {
            println!(
                "published {}:{} -> {}:{} ({})",
                f.host_address,
                f.host_port,
                f.vm,
                f.port,
                f.proto.as_str()
            );
        }
        let ssh = crate::guest::ssh::key_for(
            &profile,
            &profile.storage.dir,
            crate::dirs::user_home().as_deref(),
        );
        match (ssh, report.vms.first()) {
            (Ok(_), Some(vm)) => println!(
                "log in: lab ssh {} {}   (or any VM; ready? lab ready {})",
                args.profile, vm.name, args.profile
            ),
            (Err(e), _) => ui::debug(format_args!("no lab ssh for {}: {e:#}", profile.name)),
            _ => {}
        }
    }
    Ok(exit::OK)
}
