//! `lab trim PROFILE [VM...]`: give the space the guests freed back to the host, and say
//! how much came back.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{GlobalArgs, TrimArgs};
use crate::error::exit;
use crate::host::Sysroot;
use crate::host::lvm::{self, LvmSource, ThinPool};
use crate::libvirt::Libvirt;
use crate::lock::HostLock;
use crate::profile::{Profile, StorageBackend};
use crate::state::Observed;
use crate::storage::qcow2::Qcow2Storage;
use crate::trim::{self, TrimEnv, TrimReport};
use crate::ui;

pub fn trim(global: &GlobalArgs, args: &TrimArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let _lock = HostLock::acquire(&format!("lab trim {}", profile.name))?;
    let mut observed = Observed::from_libvirt(&lv)?;
    let dir = &profile.storage.dir;
    observed
        .add_image_dir(dir)
        .with_context(|| format!("looking for lab's images in {}", dir.display()))?;
    let storage = Qcow2Storage::new(dir);
    let targets = trim::targets(&profile, &observed, &storage, &lv, &args.vms)?;
    if targets.is_empty() {
        let empty = TrimReport {
            profile: profile.name.clone(),
            images: Vec::new(),
            chain: Vec::new(),
            given_back: 0,
            ms: 0,
        };
        if global.json {
            ui::print_json(&empty)?;
        }
        ui::info(format_args!(
            "{}",
            trim::nothing_to_trim(&profile, &args.vms)
        ));
        return Ok(exit::OK);
    }
    let in_use = lv.disks_in_use()?;
    let env = TrimEnv {
        lv: &lv,
        profile: &profile,
        storage: &storage,
        in_use: &in_use,
        stop: args.stop,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        runtime_dir: trim::runtime_dir(),
    };
    let mut report = trim::trim(&env, &targets);
    report.chain.extend(thin_pool_links(&profile));
    if global.json {
        ui::print_json(&report)?;
    } else {
        print!("{}", trim::render(&report));
    }
    Ok(if report.complete() {
        exit::OK
    } else {
        exit::FAILURE
    })
}

/// The thin pool's links, for a profile that names one and where it exists.
fn thin_pool_links(profile: &Profile) -> Vec<trim::Link> {
    let s = &profile.storage;
    let (Some(vg), Some(pool)) = (&s.vg, &s.pool) else {
        return Vec::new();
    };
    if s.backend == StorageBackend::Qcow2 {
        return Vec::new();
    }
    let sysroot = Sysroot::live();
    let found = LvmSource::for_sysroot(&sysroot)
        .lvs(vg, pool)
        .ok()
        .and_then(|rows| ThinPool::find(&rows, vg, pool));
    let Some(found) = found else {
        ui::debug(format_args!(
            "thin pool {vg}/{pool} not found: no pool links"
        ));
        return Vec::new();
    };
    let issue = lvm::issue_discards(&sysroot).ok();
    trim::thin_links(&found, issue.as_ref())
}
