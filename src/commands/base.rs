//! `lab base`: a profile's rendered kickstart, and the bases lab builds from kickstarts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::cli::{BaseArgs, BaseCommand, GlobalArgs};
use crate::error::{exit, usage};
use crate::kickstart::{self, BuildRecord};
use crate::libvirt::Libvirt;
use crate::mark::{Marker, VolumeRole};
use crate::plan::{days_ago, stale_since};
use crate::profile::{self, Profile, StorageBackend};
use crate::size::ByteSize;
use crate::storage::Storage;
use crate::storage::qcow2::{self, Qcow2Storage};
use crate::ui::{self, Stream, Style, Table};

pub fn base(global: &GlobalArgs, args: &BaseArgs) -> Result<u8> {
    match &args.command {
        BaseCommand::Kickstart { profile, validate } => print_kickstart(global, profile, *validate),
        BaseCommand::Build {
            profile,
            force,
            timeout,
        } => build(global, profile, *force, Duration::from_secs(*timeout)),
        BaseCommand::List { profile } => list(global, profile.as_deref()),
        BaseCommand::Rm { profile } => remove(global, profile),
    }
}

/// A profile whose base comes from a kickstart; any other is a usage error.
fn kickstart_profile(arg: &str) -> Result<Profile> {
    let profile = Profile::load(arg)?;
    if profile.base.kickstart.is_none() {
        return Err(usage(format!(
            "profile {} makes its base without a kickstart ({}): `lab up {}` makes it",
            profile.name,
            profile.locate("base"),
            profile.cli_name()
        )));
    }
    Ok(profile)
}

/// The storage a profile's base lives in.
fn storage_of(profile: &Profile) -> Result<Qcow2Storage> {
    if profile.storage.backend == StorageBackend::LvmThin {
        bail!(
            "profile {}: this version of lab keeps bases as qcow2 images only; set [storage] \
             backend = \"qcow2\"",
            profile.name
        );
    }
    Ok(Qcow2Storage::new(&profile.storage.dir))
}

#[derive(Serialize)]
struct KickstartOut<'a> {
    profile: &'a str,
    template: &'a str,
    ssh_keys_from: &'a str,
    kickstart: &'a str,
    validated: bool,
}

fn print_kickstart(global: &GlobalArgs, arg: &str, validate: bool) -> Result<u8> {
    let profile = kickstart_profile(arg)?;
    let inputs = kickstart::inputs_for(&profile, crate::dirs::user_home().as_deref())?;
    let rendered = kickstart::render_full(&profile, &inputs)?;
    if validate {
        kickstart::validate(&profile, &rendered.text)?;
        ui::info(format_args!(
            "{}: the kickstart passes ksvalidator",
            profile.name
        ));
    }
    if global.json {
        ui::print_json(&KickstartOut {
            profile: &profile.name,
            template: &rendered.template,
            ssh_keys_from: &inputs.ssh_keys_from,
            kickstart: &rendered.text,
            validated: validate,
        })?;
    } else {
        print!("{}", rendered.text);
    }
    Ok(exit::OK)
}

#[derive(Serialize)]
struct BuildOut {
    profile: String,
    built: bool,
    reason: Option<String>,
    record: Option<BuildRecord>,
}

fn build(global: &GlobalArgs, arg: &str, force: bool, timeout: Duration) -> Result<u8> {
    let profile = Profile::load(arg)?;
    let from_image = profile.base.image.is_some();
    if !from_image {
        kickstart_profile(arg)?;
    }
    let storage = storage_of(&profile)?;
    let _lock = super::profile_lock(global, "base build", &profile.name, false)?;
    let current = if from_image {
        crate::cloud::base::rebuild_reason(&profile, &storage)?
    } else {
        kickstart::build::rebuild_reason(&profile, &storage)?
    };
    let reason = match current {
        Some(r) => Some(r),
        None if force => Some("--force".into()),
        None => None,
    };
    let built = match &reason {
        None => {
            ui::info(format_args!(
                "{}: the base is current (nothing it was built from changed)",
                profile.name
            ));
            false
        }
        Some(why) => {
            ui::info(format_args!("{}: building the base: {why}", profile.name));
            if from_image {
                // The checksum file is fetched again: a newer `latest` image comes in.
                crate::cloud::base::import_with(&storage, &profile, global.wait())?;
            } else {
                let lv = Libvirt::open(&global.connect)?;
                let kvm = crate::check::kvm::verdict_cached(&crate::host::Sysroot::live()).usable;
                kickstart::build_base(&lv, &storage, &profile, &profile.storage.dir, timeout, kvm)?
            };
            true
        }
    };
    let record = storage
        .base_record(&profile.name)?
        .and_then(|t| serde_json::from_str(&t).ok());
    if global.json {
        ui::print_json(&BuildOut {
            profile: profile.name.clone(),
            built,
            reason,
            record,
        })?;
    } else if let Some(base) = storage.base(&profile.name)? {
        println!("{}", base.path.display());
    }
    Ok(exit::OK)
}

fn remove(global: &GlobalArgs, arg: &str) -> Result<u8> {
    let profile = Profile::load(arg)?;
    let storage = storage_of(&profile)?;
    let _lock = super::profile_lock(global, "base rm", &profile.name, false)?;
    let existed =
        storage.base(&profile.name)?.is_some() || !storage.generations(&profile.name).is_empty();
    storage.remove_base(&profile.name)?;
    if global.json {
        ui::print_json(&serde_json::json!({ "profile": profile.name, "removed": existed }))?;
    } else if existed {
        println!("removed the base of {}", profile.name);
    } else {
        println!("{}: there is no base to remove", profile.name);
    }
    Ok(exit::OK)
}

/// One base in `lab base list`.
#[derive(Debug, Serialize)]
struct BaseEntry {
    profile: String,
    path: String,
    /// The generation file the name points at (a base lab built), or the file itself.
    image: String,
    sealed: bool,
    virtual_size: Option<u64>,
    allocated: Option<u64>,
    clones: usize,
    /// Older builds kept because clones still use them.
    old_generations: usize,
    record: Option<BuildRecord>,
    /// When it was built (seconds since the epoch): its build record, else the image's
    /// modification time.
    built_at: Option<u64>,
    /// "current", "out of date: ...", or "unknown" (no record or no profile to compare);
    /// a current base older than [`crate::plan::STALE_DAYS`] says so ("update the base regularly").
    status: String,
}

fn list(global: &GlobalArgs, only: Option<&str>) -> Result<u8> {
    let wanted = only.map(Profile::load).transpose()?;
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut profiles: Vec<Profile> = Vec::new();
    match &wanted {
        Some(p) => {
            dirs.insert(p.storage.dir.clone());
            profiles.push(p.clone());
        }
        None => {
            dirs.insert(PathBuf::from(profile::DEFAULT_IMAGE_DIR));
            for p in findable_profiles() {
                dirs.insert(p.storage.dir.clone());
                profiles.push(p);
            }
        }
    }
    let now = crate::observe::now_secs();
    let mut entries = Vec::new();
    for dir in &dirs {
        for (name, path) in bases_in(dir) {
            if wanted.as_ref().is_some_and(|p| p.name != name) {
                continue;
            }
            let known = profiles
                .iter()
                .find(|p| p.name == name && p.storage.dir == *dir);
            entries.push(describe(dir, &name, &path, known, now));
        }
    }
    if global.json {
        ui::print_json(&entries)?;
        return Ok(exit::OK);
    }
    if entries.is_empty() {
        ui::info(format_args!(
            "no bases of lab's in {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(exit::OK);
    }
    let mut t = Table::new([
        "profile", "state", "size", "on disk", "clones", "built", "status", "image",
    ]);
    for e in &entries {
        let status_style = if e.status == "current" {
            Style::Green
        } else if e.status.starts_with("out of date") || e.status.starts_with("current, but") {
            Style::Yellow
        } else {
            Style::Plain
        };
        t.row(vec![
            (e.profile.clone(), Style::Plain),
            (
                if e.sealed { "sealed" } else { "unfinished" }.into(),
                if e.sealed {
                    Style::Plain
                } else {
                    Style::Yellow
                },
            ),
            (
                e.virtual_size
                    .map_or("-".into(), |b| ByteSize(b).to_string()),
                Style::Plain,
            ),
            (
                e.allocated.map_or("-".into(), |b| ByteSize(b).to_string()),
                Style::Plain,
            ),
            (
                if e.old_generations > 0 {
                    format!("{} (+{} old)", e.clones, e.old_generations)
                } else {
                    e.clones.to_string()
                },
                Style::Plain,
            ),
            (
                e.built_at.map_or("-".into(), |b| days_ago(b, now)),
                Style::Plain,
            ),
            (e.status.clone(), status_style),
            (e.image.clone(), Style::Plain),
        ]);
    }
    print!("{}", t.render(Stream::Stdout));
    Ok(exit::OK)
}

/// Every profile lab finds that loads (search directories, then built-in), first of
/// each name.
fn findable_profiles() -> Vec<Profile> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for dir in profile::search_dirs() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = read
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for f in files {
            if let Ok(p) = Profile::load_from(&f.display().to_string(), &[])
                && seen.insert(p.name.clone())
            {
                out.push(p);
            }
        }
    }
    for (name, text) in profile::BUILT_IN {
        if !seen.contains(*name)
            && let Ok(p) = Profile::parse(text, profile::ProfileSource::BuiltIn)
        {
            seen.insert(p.name.clone());
            out.push(p);
        }
    }
    out
}

/// lab's bases in a directory: `lab-<profile>-base.qcow2` with lab's base marker.
fn bases_in(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = read
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_name()?.to_str()?.to_string();
            let profile = name
                .strip_prefix("lab-")?
                .strip_suffix("-base.qcow2")?
                .to_string();
            let marker = Marker::read(&path)?;
            (marker.role == VolumeRole::Base && marker.owner.is(&profile))
                .then_some((profile, path))
        })
        .collect();
    out.sort();
    out
}

fn describe(dir: &Path, name: &str, path: &Path, profile: Option<&Profile>, now: u64) -> BaseEntry {
    let storage = Qcow2Storage::new(dir);
    let image = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let info = qcow2::info(&image).ok();
    let sealed = std::fs::metadata(&image).is_ok_and(|m| m.permissions().readonly());
    let clones = storage
        .observe()
        .map(|vols| {
            vols.iter()
                .filter(|v| {
                    v.role == Some(VolumeRole::Clone)
                        && v.owner.as_ref().is_some_and(|o| o.is(name))
                })
                .count()
        })
        .unwrap_or(0);
    let old_generations = storage
        .generations(name)
        .iter()
        .filter(|(_, g)| g.canonicalize().ok().as_ref() != Some(&image))
        .count();
    let record: Option<BuildRecord> = storage
        .base_record(name)
        .ok()
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok());
    let built_at = record
        .as_ref()
        .map(|r| r.built_at)
        .filter(|&b| b > 0)
        .or_else(|| {
            std::fs::metadata(&image)
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        });
    let status = match (profile, &record, sealed) {
        (_, _, false) => "unfinished: `lab base build` builds it again".to_string(),
        (Some(p), Some(_), true) if p.base.kickstart.is_some() => {
            match kickstart::build::rebuild_reason(p, &storage) {
                Ok(None) => stale_status(built_at, now, &p.cli_name()),
                Ok(Some(why)) => format!("out of date: {why}"),
                Err(e) => format!("unknown: {e:#}"),
            }
        }
        (_, None, true) => "not built from a kickstart".into(),
        (None, Some(_), true) => "unknown: no profile of that name found".into(),
        (Some(_), Some(_), true) => "unknown: the profile no longer uses a kickstart".into(),
    };
    BaseEntry {
        profile: name.to_string(),
        path: path.display().to_string(),
        image: image.display().to_string(),
        sealed,
        virtual_size: info.as_ref().map(|i| i.virtual_size),
        allocated: qcow2::allocated_bytes(&image).ok(),
        clones,
        old_generations,
        record,
        built_at,
        status,
    }
}

/// "current", or for a base built more than [`crate::plan::STALE_DAYS`] ago, how to patch it.
fn stale_status(built_at: Option<u64>, now: u64, cli: &str) -> String {
    match stale_since(built_at, now) {
        Some(ago) => format!("current, but built {ago}: `lab base build {cli} --force` patches it"),
        None => "current".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_is_due_for_patching_after_thirty_days() {
        let day = 86_400;
        let now = 1_800_000_000;
        assert_eq!(days_ago(now - 3600, now), "today");
        assert_eq!(days_ago(now - day, now), "1 day ago");
        assert_eq!(days_ago(now - 12 * day - 5, now), "12 days ago");
        // A clock that went back is not a negative age.
        assert_eq!(days_ago(now + day, now), "today");
        assert_eq!(stale_status(Some(now - 30 * day), now, "demo"), "current");
        assert_eq!(stale_status(None, now, "demo"), "current");
        assert_eq!(
            stale_status(Some(now - 31 * day), now, "./demo.toml"),
            "current, but built 31 days ago: `lab base build ./demo.toml --force` patches it"
        );
    }
}
