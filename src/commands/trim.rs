//! `lab trim PROFILE [VM...]`: give the space the guests freed back to the host, and say
//! how much came back.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{GlobalArgs, TrimArgs};
use crate::error::exit;
use crate::host::Sysroot;
use crate::host::lvm::{self, LvmSource, ThinPool};
use crate::libvirt::Libvirt;
use crate::names;
use crate::observe::Observed;
use crate::profile::{Profile, StorageBackend};
use crate::storage::Storage;
use crate::storage::lvm_thin::LvmThinStorage;
use crate::storage::qcow2::Qcow2Storage;
use crate::trim::{self, TrimEnv, TrimReport};
use crate::ui;

pub fn trim(global: &GlobalArgs, args: &TrimArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let _lock = super::profile_lock(global, "trim", &profile.name, false)?;
    let mut observed = Observed::from_libvirt(&lv)?;
    let dir = &profile.storage.dir;
    observed
        .add_image_dir(dir)
        .with_context(|| format!("looking for lab's images in {}", dir.display()))?;
    // The profile's storage: its thin pool when that exists (and the profile does not
    // insist on qcow2), its image directory otherwise.
    let pool_before = thin_pool(&profile);
    let qcow2 = Qcow2Storage::new(dir);
    let thin = pool_before
        .as_ref()
        .map(|p| LvmThinStorage::new(&p.vg, &p.name));
    if let (Some(vg), Some(_)) = (&profile.storage.vg, &thin) {
        let rows = LvmSource::for_sysroot(&Sysroot::live())
            .vg_lvs(vg)
            .with_context(|| format!("reading the LVs of volume group {vg}"))?;
        observed.add_lvs(&rows);
    }
    let storage: &dyn Storage = match &thin {
        Some(t) => t,
        None => &qcow2,
    };
    let targets = trim::targets(&profile, &observed, storage, &lv, &args.vms)?;
    if targets.is_empty() {
        let empty = TrimReport {
            profile: profile.name.clone(),
            images: Vec::new(),
            chain: Vec::new(),
            given_back: 0,
            thin_pool: None,
            snapshots: Vec::new(),
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
        storage,
        qcow2: thin.is_none().then_some(&qcow2),
        in_use: &in_use,
        stop: args.stop,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        runtime_dir: names::runtime_dir(),
    };
    let mut report = trim::trim(&env, &targets);
    // Those being removed too: their layers hold space until the disks move off them.
    let root = names::snapshots_dir(&profile.storage.dir, &profile.name);
    report.snapshots = crate::snapshot::listed_in(&root, &profile.name)
        .into_iter()
        .filter(|l| args.vms.is_empty() || l.vms.iter().any(|vm| args.vms.contains(vm)))
        .collect();
    if let Some(before) = pool_before {
        let after = thin_pool(&profile);
        let (b, a) = (
            trim::pool_data_bytes(&before),
            after.as_ref().and_then(trim::pool_data_bytes),
        );
        report.thin_pool = Some(trim::PoolUse {
            pool: format!("{}/{}", before.vg, before.name),
            data_before: b,
            data_after: a,
            given_back: b.zip(a).map(|(b, a)| b.saturating_sub(a)).unwrap_or(0),
        });
        let issue = lvm::issue_discards(&Sysroot::live()).ok();
        report.chain.extend(trim::thin_links(
            after.as_ref().unwrap_or(&before),
            issue.as_ref(),
        ));
    }
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

/// The profile's thin pool, when it names one that exists.
fn thin_pool(profile: &Profile) -> Option<ThinPool> {
    let s = &profile.storage;
    let (Some(vg), Some(pool)) = (&s.vg, &s.pool) else {
        return None;
    };
    if s.backend == StorageBackend::Qcow2 {
        return None;
    }
    let found = LvmSource::for_sysroot(&Sysroot::live())
        .lvs(vg, pool)
        .ok()
        .and_then(|rows| ThinPool::find(&rows, vg, pool));
    if found.is_none() {
        ui::debug(format_args!("thin pool {vg}/{pool} not found"));
    }
    found
}
