//! The commands: each reads its arguments, does its work through the library, and prints.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::check::{self, CheckContext, StorageTarget};
use crate::cli::{CheckArgs, GlobalArgs, UpArgs};
use crate::error::{exit, usage};
use crate::host::Sysroot;
use crate::host::net::NetFacts;
use crate::libvirt::Libvirt;
use crate::plan::{self, HostFacts};
use crate::profile::{self, Profile, StorageBackend};
use crate::state::Observed;
use crate::subnet;
use crate::ui::{self, Stream, Style, Table};

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
        let s = &p.storage;
        let origin = format!("profile {} [storage]", p.name);
        match (s.backend, &s.vg) {
            (StorageBackend::LvmThin, Some(vg)) | (StorageBackend::Auto, Some(vg)) => {
                return Ok(StorageTarget::VolumeGroup {
                    vg: vg.clone(),
                    fallback: s.dir.clone(),
                    origin,
                });
            }
            _ => {
                return Ok(StorageTarget::Path {
                    path: s.dir.clone(),
                    origin,
                });
            }
        }
    }
    Ok(StorageTarget::Path {
        path: profile::DEFAULT_IMAGE_DIR.into(),
        origin: "default image directory".into(),
    })
}

/// `lab up PROFILE [--dry-run]`: observe, plan, and (later) apply.
pub fn up(global: &GlobalArgs, args: &UpArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let sysroot = match &args.sysroot {
        Some(dir) => Sysroot::at(dir)?,
        None => Sysroot::live(),
    };
    let lv = Libvirt::open(&global.connect)?;
    let mut observed = Observed::from_libvirt(&lv)?;
    observed
        .add_image_dir(&profile.storage.dir)
        .with_context(|| {
            format!(
                "looking for lab's images in {}",
                profile.storage.dir.display()
            )
        })?;
    let host = gather_host_facts(&sysroot, &profile);
    let plan = plan::plan(&profile, &host, &observed).map_err(|e| usage(e.0))?;
    if global.json {
        ui::print_json(&plan)?;
    } else if ui::verbosity() >= 0 {
        print!("{}", plan::render(&plan));
    }
    if args.dry_run {
        return Ok(exit::OK);
    }
    anyhow::bail!(
        "this version of lab plans labs but does not apply plans yet: run `lab up {} --dry-run`",
        args.profile
    )
}

/// What the planner needs to know of the host.
pub fn gather_host_facts(sysroot: &Sysroot, profile: &Profile) -> HostFacts {
    let net = NetFacts::read(sysroot);
    let mut thin_pools = Vec::new();
    if let (Some(vg), Some(pool)) = (&profile.storage.vg, &profile.storage.pool)
        && thin_pool_exists(sysroot, vg, pool)
    {
        thin_pools.push((vg.clone(), pool.clone()));
    }
    HostFacts {
        kvm: crate::check::kvm::verdict(sysroot),
        taken: subnet::taken_by_host(&net),
        thin_pools,
    }
}

#[derive(Serialize)]
struct ProfileEntry {
    name: String,
    description: String,
    source: String,
    /// A profile of the same name found earlier in the search order hides this one.
    shadowed: bool,
    error: Option<String>,
}

/// `lab profiles`: every profile lab can find, in search order.
pub fn profiles(global: &GlobalArgs) -> Result<u8> {
    let mut entries: Vec<ProfileEntry> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for dir in profile::search_dirs() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = read
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for path in files {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let loaded = Profile::load_from(&path.display().to_string(), &[]);
            entries.push(ProfileEntry {
                shadowed: !seen.insert(name.clone()),
                description: loaded
                    .as_ref()
                    .map(|p| p.description.clone())
                    .unwrap_or_default(),
                error: loaded.err().map(|e| e.to_string()),
                source: path.display().to_string(),
                name,
            });
        }
    }
    for (name, text) in profile::BUILT_IN {
        let loaded = Profile::parse(text, profile::ProfileSource::BuiltIn);
        entries.push(ProfileEntry {
            name: name.to_string(),
            description: loaded
                .as_ref()
                .map(|p| p.description.clone())
                .unwrap_or_default(),
            source: "built-in".into(),
            shadowed: !seen.insert(name.to_string()),
            error: loaded.err().map(|e| e.to_string()),
        });
    }
    if global.json {
        ui::print_json(&entries)?;
        return Ok(exit::OK);
    }
    let mut table = Table::new(["profile", "from", "description"]);
    for e in &entries {
        let note = match (&e.error, e.shadowed) {
            (Some(err), _) => format!("BROKEN: {err}"),
            (None, true) => format!("(hidden by an earlier one) {}", e.description),
            (None, false) => e.description.clone(),
        };
        let style = if e.error.is_some() {
            Style::Red
        } else if e.shadowed {
            Style::Dim
        } else {
            Style::Plain
        };
        table.row(vec![
            (e.name.clone(), style),
            (e.source.clone(), style),
            (note, style),
        ]);
    }
    print!("{}", table.render(Stream::Stdout));
    Ok(exit::OK)
}

/// Whether `vg/pool` is a thin pool on the host the sysroot describes.
fn thin_pool_exists(sysroot: &Sysroot, vg: &str, pool: &str) -> bool {
    let source = crate::host::lvm::LvmSource::for_sysroot(sysroot);
    source
        .lvs(vg, pool)
        .is_ok_and(|rows| crate::host::lvm::ThinPool::find(&rows, vg, pool).is_some())
}
