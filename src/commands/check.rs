//! `lab check`: whether this laptop can run a nested lab, and what to fix.

use anyhow::Result;

use crate::check::{self, CheckContext, StorageTarget};

use crate::cli::{CheckArgs, GlobalArgs};
use crate::error::exit;
use crate::host::Sysroot;
use crate::profile::{self, Profile};
use crate::ui::{self, Stream};

pub fn check(global: &GlobalArgs, args: &CheckArgs) -> Result<u8> {
    let sysroot = match &args.sysroot {
        Some(dir) => Sysroot::at(dir)?,
        None => Sysroot::live(),
    };
    let profile = args.profile.as_deref().map(Profile::load).transpose()?;
    let storage = storage_target(args, profile.as_ref(), &sysroot)?;
    let ctx = CheckContext {
        sysroot: &sysroot,
        profile: profile.as_ref(),
        storage,
        connect: &global.connect,
        fix: args.fix,
        throughput: !args.no_throughput,
    };
    let report = check::run_all(&ctx);
    if global.json {
        ui::print_json(&report)?;
    } else {
        print!("{}", report.render(Stream::Stdout, ui::verbosity() < 0));
    }
    Ok(if report.failed() {
        exit::CHECK_FAILED
    } else {
        exit::OK
    })
}

/// `--storage`, else the profile's storage, else the default image directory.
fn storage_target(
    args: &CheckArgs,
    profile: Option<&Profile>,
    sysroot: &Sysroot,
) -> Result<StorageTarget> {
    if let Some(path) = &args.storage {
        // A live path: under a sysroot it is looked up in the sysroot's mount table.
        let on_disk = if sysroot.is_live() {
            path.clone()
        } else {
            sysroot.path(path)
        };
        if !on_disk.exists() {
            profile::require_existing("--storage", path)?;
        }
        return Ok(StorageTarget::Path {
            path: path.clone(),
            origin: "--storage".into(),
        });
    }
    if let Some(p) = profile {
        return Ok(check::storage_of_profile(p));
    }
    Ok(StorageTarget::Path {
        path: profile::DEFAULT_IMAGE_DIR.into(),
        origin: "default image directory".into(),
    })
}
