//! `lab reset PROFILE [VM...] [--pristine] [--dry-run]`: VMs back to the `provisioned`
//! snapshot when `lab up` took one, else (and with --pristine) to a fresh clone of the base.

use anyhow::Result;

use std::time::Duration;

use crate::apply;
use crate::cli::{GlobalArgs, ResetArgs};
use crate::error::{exit, usage};
use crate::host::Sysroot;
use crate::libvirt::Libvirt;
use crate::plan;
use crate::profile::Profile;
use crate::snapshot::{PROVISIONED, Snapshots};
use crate::ui;

use super::vm_table;

/// `lab reset PROFILE [VM...] [--dry-run]`: each VM back to a fresh clone of the base, in
/// parallel.
pub fn reset(global: &GlobalArgs, args: &ResetArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let _lock = super::profile_lock(global, "reset", &profile.name, args.dry_run)?;
    super::snapshot::finish_interrupted(&lv, &profile, args.dry_run)?;
    let observed = crate::observe::lab(&lv, &profile, &Sysroot::live())?;
    let host = crate::observe::host_facts(&Sysroot::live(), &profile);
    let plan = plan::reset(&profile, &host, &observed, &args.vms).map_err(|e| usage(e.0))?;
    let snaps = Snapshots::new(&lv, &profile);
    // The snapshot's VMs trust lab's SSH key of the time: with that key gone, only fresh
    // clones (a new key in their seed) let lab in again.
    let key = crate::guest::ssh::lab_key_path(&profile.storage.dir, &profile.name);
    if !args.pristine && snaps.exists(PROVISIONED) && !key.exists() {
        ui::warn(format_args!(
            "lab's SSH key {} is gone, and the VMs of snapshot {PROVISIONED} only let the old \
             one in: back to fresh clones of the base instead",
            key.display()
        ));
    }
    if !args.pristine && snaps.exists(PROVISIONED) && key.exists() {
        // Provisioning is kept: back to the point `lab up` took once it succeeded.
        if args.dry_run {
            println!(
                "restore snapshot {PROVISIONED}: {} back to the point provisioning finished \
                 (--pristine: back to the base instead)",
                if args.vms.is_empty() {
                    "every VM".to_string()
                } else {
                    args.vms.join(", ")
                }
            );
            return Ok(exit::OK);
        }
        let t = snaps.restore(PROVISIONED, &args.vms)?;
        ui::info(format_args!(
            "back to snapshot {PROVISIONED}: {}",
            crate::snapshot::render_timings(&t, "stopped")
        ));
        if global.json {
            ui::print_json(&serde_json::json!({ "snapshot": PROVISIONED, "timings_ms": t }))?;
        } else {
            println!(
                "back to snapshot {PROVISIONED} in {:.2} s",
                t.total as f64 / 1000.0
            );
        }
        return Ok(exit::OK);
    }
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
    if args.pristine {
        // Their layers sat under the old clones: snapshots of the old disks are gone too.
        for name in snaps.remove_all()? {
            ui::info(format_args!("removed snapshot {name}"));
        }
    }
    if global.json {
        ui::print_json(&vms)?;
    } else {
        print!("{}", vm_table(&vms));
    }
    Ok(exit::OK)
}
