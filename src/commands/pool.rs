//! `lab pool create PROFILE --size SIZE`: the thin pool a profile names, made on request.

use anyhow::Result;

use crate::cli::{GlobalArgs, PoolArgs, PoolCommand};
use crate::error::{exit, usage};
use crate::lock::Lock;
use crate::profile::Profile;
use crate::storage::lvm_thin::LvmThinStorage;
use crate::ui;

/// `lab pool create PROFILE --size SIZE`: the thin pool the profile names, made on request
/// (never as a side effect of `lab up`), with discards passed down to the SSD.
pub fn pool(global: &GlobalArgs, args: &PoolArgs) -> Result<u8> {
    let PoolCommand::Create { profile, size } = &args.command;
    let profile = Profile::load(profile)?;
    let (Some(vg), Some(pool)) = (&profile.storage.vg, &profile.storage.pool) else {
        return Err(usage(format!(
            "profile {} ({}): [storage] names no vg and pool to create",
            profile.name, profile.source
        )));
    };
    // A volume group is shared by every profile on it: the host-wide lock.
    let _lock = Lock::host(
        &format!("lab pool create {}", profile.name),
        &format!("to create thin pool {vg}/{pool}"),
        global.wait(),
    )?;
    let created = LvmThinStorage::new(vg, pool).create_pool(*size)?;
    if global.json {
        ui::print_json(&created)?;
    } else {
        println!("created thin pool {vg}/{pool} ({size}, discards passdown)");
    }
    Ok(exit::OK)
}
