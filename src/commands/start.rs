//! `lab start PROFILE [VM...]`: the lab's network and VMs started again, VMs that `lab stop`
//! saved resumed where they were; waits until each is ready. It starts what is there and
//! makes nothing: a VM whose disk or domain is missing is `lab up`'s work.

use std::time::Duration;

use anyhow::Result;

use crate::apply;
use crate::cli::{GlobalArgs, StartArgs};
use crate::error::{exit, usage};
use crate::host::Sysroot;
use crate::libvirt::Libvirt;
use crate::lock::Lock;
use crate::plan;
use crate::profile::Profile;
use crate::{fanout, names, ui};

use super::vm_table;

pub fn start(global: &GlobalArgs, args: &StartArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let _lock = super::profile_lock(global, "start", &profile.name, false)?;
    // An interrupted snapshot first: the VMs it paused belong to its point, not to be
    // resumed one by one.
    super::snapshot::finish_interrupted(&lv, &profile, false)?;
    settle_vms(&lv, &profile)?;
    let sysroot = Sysroot::live();
    let host = crate::observe::host_facts(&sysroot, &profile);
    // The network may have to be started (the laptop rebooted): the subnet is looked at
    // under the host-wide lock, as by lab up.
    let host_lock = Lock::host(
        &format!("lab start {}", profile.name),
        &format!("to start network {}", crate::names::network(&profile.name)),
        global.wait(),
    )?;
    let observed = crate::observe::lab(&lv, &profile, &sysroot)?;
    let up = plan::up(
        &profile,
        &host,
        &observed,
        plan::UpOptions { provision: false },
    )
    .map_err(|e| usage(e.0))?;
    let plan = plan::start(up, &args.vms).map_err(|e| usage(e.0))?;
    if plan.is_empty() {
        ui::info(format_args!("{}: nothing to start", profile.name));
    }
    let storage = apply::storage_for(&plan)?;
    let env = apply::Env::new(
        &lv,
        storage.as_ref(),
        &profile,
        Duration::from_secs(args.timeout),
    );
    let (vms, _) = apply::apply(&plan, &env, Some(host_lock))?;
    if global.json {
        ui::print_json(&vms)?;
    } else {
        print!("{}", vm_table(&vms));
    }
    Ok(exit::OK)
}

/// How long a save or a start that libvirtd goes on with (its lab killed) is waited for.
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a killed `lab stop` or `lab start` left of the profile's VMs, finished before they
/// are looked at: a save or a start from saved memory goes on in libvirtd after its lab
/// died, and is waited for (the domain shows paused meanwhile, and would be planned as
/// running); a VM of the lab's left paused is resumed. Domains without lab's mark are
/// not touched.
pub(super) fn settle_vms(lv: &Libvirt, profile: &Profile) -> Result<()> {
    let p = profile.name.as_str();
    let domains = profile
        .instances()
        .into_iter()
        .map(|(vm, _)| (names::domain(p, &vm), vm))
        .filter(|(domain, _)| {
            lv.connect()
                .lookup_domain_by_name(domain)
                .ok()
                .and_then(|d| crate::observe::observe_domain(&d).ok().flatten())
                .is_some_and(|d| d.owner.is_some_and(|o| o.is(p)))
        });
    fanout::all(
        domains,
        |(_, vm)| vm.clone(),
        |(domain, vm)| {
            lv.wait_settled(&domain, SETTLE_TIMEOUT)?;
            if lv.domain_pause(&domain).is_some() {
                lv.resume_domain(&domain)?;
                ui::warn(format_args!(
                    "{vm} was paused (left so by an interrupted command, or by hand): resumed"
                ));
            }
            Ok(())
        },
    )?;
    Ok(())
}
