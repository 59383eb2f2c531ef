//! `lab reset PROFILE [VM...] [--dry-run]`: VMs back to a fresh clone of the base.

use anyhow::Result;

use std::time::Duration;

use crate::apply;
use crate::cli::{GlobalArgs, ResetArgs};
use crate::error::{exit, usage};
use crate::host::Sysroot;
use crate::libvirt::Libvirt;
use crate::plan;
use crate::profile::Profile;
use crate::ui;

use super::vm_table;

/// `lab reset PROFILE [VM...] [--dry-run]`: each VM back to a fresh clone of the base, in
/// parallel.
pub fn reset(global: &GlobalArgs, args: &ResetArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let _lock = super::profile_lock(global, "reset", &profile.name, args.dry_run)?;
    let observed = crate::observe::lab(&lv, &profile, &Sysroot::live())?;
    let host = crate::observe::host_facts(&Sysroot::live(), &profile);
    let plan = plan::reset(&profile, &host, &observed, &args.vms).map_err(|e| usage(e.0))?;
    if args.dry_run {
        super::show_plan(global, &plan, plan::render)?;
        return Ok(exit::OK);
    }
    let storage = apply::storage_for(&plan)?;
    let env = apply::Env::new(
        &lv,
        storage.as_ref(),
        &profile,
        Duration::from_secs(args.timeout),
    );
    let vms = apply::reset(&plan, &env)?;
    if global.json {
        ui::print_json(&vms)?;
    } else {
        print!("{}", vm_table(&vms));
    }
    Ok(exit::OK)
}
