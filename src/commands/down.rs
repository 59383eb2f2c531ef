//! `lab down PROFILE [--purge] [--dry-run]`: remove what lab made for the profile, and only that.

use anyhow::Result;

use crate::apply;
use crate::cli::{DownArgs, GlobalArgs};
use crate::error::exit;
use crate::host::Sysroot;
use crate::libvirt::Libvirt;
use crate::plan;
use crate::profile::Profile;
use crate::ui;

/// `lab down PROFILE [--purge] [--dry-run]`: remove lab's domains, network and clones for
/// the profile (and with --purge its base and boot files); nothing without lab's mark is
/// touched.
pub fn down(global: &GlobalArgs, args: &DownArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let _lock = super::profile_lock(global, "down", &profile.name, args.dry_run)?;
    let mut observed = crate::observe::lab(&lv, &profile, &Sysroot::live())?;
    observed.files = crate::observe::lab_files(&profile, &observed);
    let plan = plan::down(&profile, &observed, args.purge);
    if args.dry_run {
        super::show_plan(global, &plan, plan::render_down)?;
        return Ok(exit::OK);
    }
    let mut removed = apply::down(&plan, &lv, &profile)?;
    // The snapshots go after the domains and clones: nothing is backed by a layer then.
    let root = crate::names::snapshots_dir(&profile.storage.dir, &profile.name);
    for name in crate::snapshot::Snapshots::remove_everything(&root, &profile.name)? {
        removed.push(format!("snapshot {name}"));
    }
    if global.json {
        ui::print_json(&removed)?;
    } else if removed.is_empty() {
        println!("{}: lab owns nothing of this profile", profile.name);
    } else {
        for r in &removed {
            println!("removed {r}");
        }
    }
    Ok(exit::OK)
}
