//! The commands: each reads its arguments, does its work through the library, and prints.

pub mod base;
pub mod ready;
pub mod ssh;
pub mod trim;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::check::{self, CheckContext, StorageTarget};
use std::time::{Duration, Instant};

use crate::apply;
use crate::cli::{
    CheckArgs, DownArgs, GlobalArgs, PoolArgs, PoolCommand, ResetArgs, StatusArgs, UpArgs,
};
use crate::error::{exit, usage};
use crate::host::Sysroot;
use crate::host::net::NetFacts;
use crate::libvirt::Libvirt;
use crate::lock::HostLock;
use crate::observe::Observed;
use crate::plan::{self, HostFacts};
use crate::profile::{self, Profile, StorageBackend};
use crate::storage::Storage;
use crate::storage::lvm_thin::{self, LvmThinStorage};
use crate::storage::qcow2::Qcow2Storage;
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

/// Everything `lab up` looks at before planning, looked at once.
/// What exists of `profile`. Its LVs are read as the host's other facts are: from the live
/// LVM, or under `--sysroot` from the LVM report recorded there, never from the live
/// machine for a tree that stands for another.
fn observe(lv: &Libvirt, profile: &Profile, sysroot: &Sysroot) -> Result<Observed> {
    let mut observed = Observed::from_libvirt(lv)?;
    observed
        .add_image_dir(&profile.storage.dir)
        .with_context(|| {
            format!(
                "looking for lab's images in {}",
                profile.storage.dir.display()
            )
        })?;
    if let Some(vg) = &profile.storage.vg {
        // A VG that does not exist holds nothing of lab's; LVM that cannot answer is an
        // error only when the profile insists on a thin pool.
        match crate::host::lvm::LvmSource::for_sysroot(sysroot).vg_lvs(vg) {
            Ok(rows) => observed.add_lvs(&rows),
            Err(e) if profile.storage.backend == StorageBackend::LvmThin => {
                return Err(e.context(format!("reading the LVs of volume group {vg}")));
            }
            Err(e) => ui::debug(format_args!("LVs of {vg} not read: {e:#}")),
        }
    }
    // A kickstart base is rebuilt when what it was built from changed (never needing the
    // network to tell). Kickstart bases are qcow2 images beside the profile's images.
    if profile.base.kickstart.is_some() {
        let storage = Qcow2Storage::new(&profile.storage.dir);
        match crate::kickstart::build::rebuild_reason(profile, &storage) {
            Ok(why) => observed.base_out_of_date = why,
            // The build says why, if it comes to one.
            Err(e) => ui::debug(format_args!("whether the base is current: {e:#}")),
        }
        // When it was built, for the planner to tell its age.
        observed.base_built_at = storage
            .base_record(&profile.name)
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str::<crate::kickstart::BuildRecord>(&t).ok())
            .map(|r| r.built_at)
            .filter(|&b| b > 0);
    }
    let p = profile.name.as_str();
    // Interfaces of running lab domains that a restarted network left off its bridge.
    let running: Vec<String> = observed
        .domains
        .iter()
        .filter(|d| d.running && d.owner.as_ref().is_some_and(|o| o.is(p)))
        .map(|d| d.name.clone())
        .collect();
    for domain in running {
        for (tap, bridge) in lv.detached_interfaces(&domain, sysroot) {
            observed.detached_taps.push(crate::observe::DetachedTap {
                domain: domain.clone(),
                tap,
                bridge,
            });
        }
    }
    if apply::direct_boot(profile) {
        observed.boot_files_current =
            crate::directboot::boot_files_current(&profile.storage.dir, &profile.name, sysroot);
    }
    if let Some(vg) = &profile.storage.vg {
        match lvm_thin::lab_libvirt_pool(lv, vg) {
            Ok(Some(pool)) if pool.active => observed.storage_pools.push(pool.name),
            Ok(_) => {}
            Err(e) => ui::debug(format_args!("libvirt storage pools: {e:#}")),
        }
    }
    Ok(observed)
}

/// The storage a plan chose.
fn storage_for(plan: &plan::Plan) -> Result<Box<dyn Storage>> {
    match plan.storage.backend {
        plan::Backend::Qcow2 => Ok(Box::new(Qcow2Storage::new(&plan.storage.location))),
        plan::Backend::LvmThin => {
            let (vg, pool) =
                plan.storage.location.split_once('/').with_context(|| {
                    format!("thin pool {} is not VG/POOL", plan.storage.location)
                })?;
            Ok(Box::new(LvmThinStorage::new(vg, pool)))
        }
    }
}

#[derive(Serialize)]
struct UpReport<'a> {
    profile: &'a str,
    network: &'a plan::NetworkPlan,
    vms: Vec<apply::VmState>,
    /// Each VM's provisioning steps: done now, or skipped (done before).
    provision: std::collections::BTreeMap<String, Vec<crate::guest::steps::StepResult>>,
    warnings: &'a [String],
    timings_ms: Timings,
}

#[derive(Serialize, Default)]
struct Timings {
    observe_and_plan: u64,
    #[serde(flatten)]
    lab: apply::LabTimings,
    provision: u64,
    total: u64,
}

/// `lab up PROFILE [--dry-run]`: observe, plan, apply.
pub fn up(global: &GlobalArgs, args: &UpArgs) -> Result<u8> {
    let started = Instant::now();
    let profile = Profile::load(&args.profile)?;
    let sysroot = match &args.sysroot {
        Some(dir) => Sysroot::at(dir)?,
        None => Sysroot::live(),
    };
    let lv = Libvirt::open(&global.connect)?;
    let _lock = if args.dry_run {
        None
    } else {
        Some(HostLock::acquire(&format!("lab up {}", profile.name))?)
    };
    let observed = observe(&lv, &profile, &sysroot)?;
    let host = gather_host_facts(&sysroot, &profile);
    let options = plan::UpOptions {
        provision: !args.no_provision,
    };
    let plan = plan::up(&profile, &host, &observed, options).map_err(|e| usage(e.0))?;
    let planned = started.elapsed();
    if args.dry_run {
        if global.json {
            ui::print_json(&plan)?;
        } else {
            print!("{}", plan::render(&plan));
        }
        return Ok(exit::OK);
    }
    for w in &plan.warnings {
        ui::warn(format_args!("{w}"));
    }
    if plan.is_empty() {
        ui::info(format_args!(
            "{}: nothing to do, the lab is up",
            profile.name
        ));
    } else {
        ui::info(format_args!(
            "{}: {} step{} to do",
            profile.name,
            plan.actions.len(),
            if plan.actions.len() == 1 { "" } else { "s" }
        ));
    }
    let storage = storage_for(&plan)?;
    let env = apply::Env {
        lv: &lv,
        storage: storage.as_ref(),
        profile: &profile,
        dir: profile.storage.dir.clone(),
        ready_timeout: Duration::from_secs(args.timeout),
    };
    let (vms, lab_timings) = apply::apply(&plan, &env)?;
    let t = Instant::now();
    let provision = if plan.provision.is_empty() {
        Default::default()
    } else {
        crate::guest::provision::run(
            &lv,
            &profile,
            &plan,
            host.kvm.usable && host.kvm.nested,
            Duration::from_secs(args.timeout),
        )?
    };
    let report = UpReport {
        profile: &profile.name,
        network: &plan.network,
        vms,
        provision,
        warnings: &plan.warnings,
        timings_ms: Timings {
            observe_and_plan: planned.as_millis() as u64,
            lab: lab_timings,
            provision: t.elapsed().as_millis() as u64,
            total: started.elapsed().as_millis() as u64,
        },
    };
    if global.json {
        ui::print_json(&report)?;
    } else {
        print!("{}", vm_table(&report.vms));
        println!(
            "network {} on {} ({}), {}",
            plan.network.name,
            plan.network.bridge,
            plan.network.subnet,
            match plan.network.mode {
                crate::profile::NetMode::Isolated => "isolated",
                crate::profile::NetMode::Nat => "NAT",
            }
        );
        let ssh = crate::guest::ssh::key_for(
            &profile,
            &profile.storage.dir,
            crate::dirs::user_home().as_deref(),
        );
        match (ssh, report.vms.first()) {
            (Ok(_), Some(vm)) => println!(
                "log in: lab ssh {} {}   (or any VM; ready? lab ready {})",
                args.profile, vm.name, args.profile
            ),
            (Err(e), _) => ui::debug(format_args!("no lab ssh for {}: {e:#}", profile.name)),
            _ => {}
        }
    }
    Ok(exit::OK)
}

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
    let _lock = HostLock::acquire(&format!("lab pool create {vg}/{pool}"))?;
    let created = LvmThinStorage::new(vg, pool).create_pool(*size)?;
    if global.json {
        ui::print_json(&created)?;
    } else {
        println!("created thin pool {vg}/{pool} ({size}, discards passdown)");
    }
    Ok(exit::OK)
}

fn vm_table(vms: &[apply::VmState]) -> String {
    let mut t = Table::new(["vm", "ip", "state", "console"]);
    for v in vms {
        t.row(vec![
            (v.name.clone(), Style::Plain),
            (v.ip.clone().unwrap_or_else(|| "-".into()), Style::Plain),
            (
                v.state.clone(),
                if v.state == "running" {
                    Style::Green
                } else {
                    Style::Yellow
                },
            ),
            (v.console.clone(), Style::Plain),
        ]);
    }
    t.render(Stream::Stdout)
}

#[derive(Serialize)]
struct StatusVm {
    name: String,
    domain: String,
    state: String,
    ip: Option<String>,
    disk: Option<String>,
    disk_allocated: Option<u64>,
}

#[derive(Serialize)]
struct StatusLab {
    profile: String,
    network: Option<String>,
    network_active: bool,
    vms: Vec<StatusVm>,
}

/// `lab status [PROFILE]`: what lab owns, grouped by profile.
pub fn status(global: &GlobalArgs, args: &StatusArgs) -> Result<u8> {
    let lv = Libvirt::open(&global.connect)?;
    let observed = Observed::from_libvirt(&lv)?;
    let mut labs: std::collections::BTreeMap<String, StatusLab> = Default::default();
    let wanted = |p: &str| args.profile.as_deref().is_none_or(|w| w == p);
    for n in &observed.networks {
        if let Some(o) = n.owner.as_ref().filter(|o| wanted(&o.profile)) {
            let lab = labs.entry(o.profile.clone()).or_insert_with(|| StatusLab {
                profile: o.profile.clone(),
                network: None,
                network_active: false,
                vms: vec![],
            });
            lab.network = Some(n.name.clone());
            lab.network_active = n.active;
        }
    }
    for d in &observed.domains {
        let Some(o) = d.owner.as_ref().filter(|o| wanted(&o.profile)) else {
            continue;
        };
        let lab = labs.entry(o.profile.clone()).or_insert_with(|| StatusLab {
            profile: o.profile.clone(),
            network: None,
            network_active: false,
            vms: vec![],
        });
        let vm = o.vm.clone().unwrap_or_else(|| d.name.clone());
        let disk = lv.domain_disks(&d.name).into_iter().next();
        let mac = crate::names::mac(&o.profile, &vm);
        lab.vms.push(StatusVm {
            ip: if d.running {
                lv.lease(&d.name, &mac).map(|ip| ip.to_string())
            } else {
                None
            },
            disk_allocated: disk.as_deref().and_then(disk_allocated),
            disk,
            state: if d.running { "running" } else { "shut off" }.into(),
            domain: d.name.clone(),
            name: vm,
        });
    }
    let mut labs: Vec<StatusLab> = labs.into_values().collect();
    for lab in &mut labs {
        lab.vms.sort_by(|a, b| a.name.cmp(&b.name));
    }
    if global.json {
        ui::print_json(&labs)?;
        return Ok(exit::OK);
    }
    if labs.is_empty() {
        ui::info(format_args!(
            "lab owns nothing{} on {}",
            args.profile
                .as_deref()
                .map(|p| format!(" for profile {p}"))
                .unwrap_or_default(),
            global.connect
        ));
        return Ok(exit::OK);
    }
    for lab in &labs {
        println!(
            "{}: network {} ({})",
            lab.profile,
            lab.network.as_deref().unwrap_or("-"),
            if lab.network_active {
                "active"
            } else {
                "inactive"
            }
        );
        let mut t = Table::new(["vm", "state", "ip", "disk use", "disk"]);
        for v in &lab.vms {
            t.row(vec![
                (v.name.clone(), Style::Plain),
                (
                    v.state.clone(),
                    if v.state == "running" {
                        Style::Green
                    } else {
                        Style::Yellow
                    },
                ),
                (v.ip.clone().unwrap_or_else(|| "-".into()), Style::Plain),
                (
                    v.disk_allocated
                        .map(|b| crate::size::ByteSize(b).to_string())
                        .unwrap_or_else(|| "-".into()),
                    Style::Plain,
                ),
                (v.disk.clone().unwrap_or_else(|| "-".into()), Style::Plain),
            ]);
        }
        print!("{}", t.render(Stream::Stdout));
    }
    Ok(exit::OK)
}

/// What the host holds for a VM's disk: an image file's blocks, or a thin volume's data in
/// use (read from LVM: a block device's own size says nothing of that).
fn disk_allocated(path: &str) -> Option<u64> {
    match thin_volume_of(path) {
        Some((vg, lv)) => LvmThinStorage::new(vg, "")
            .usage(&crate::storage::Volume {
                name: lv.to_string(),
                path: path.into(),
                format: "raw".into(),
            })
            .ok()
            .map(|u| u.allocated),
        None => crate::storage::qcow2::allocated_bytes(std::path::Path::new(path)).ok(),
    }
}

/// `/dev/VG/LV` (or `/dev/mapper/...` is not ours): the VG and LV of a disk path.
fn thin_volume_of(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/dev/")?;
    let (vg, lv) = rest.split_once('/')?;
    (!vg.is_empty() && vg != "mapper" && !lv.is_empty() && !lv.contains('/')).then_some((vg, lv))
}

/// `lab reset PROFILE [VM...] [--dry-run]`: each VM back to a fresh clone of the base, in
/// parallel.
pub fn reset(global: &GlobalArgs, args: &ResetArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let _lock = if args.dry_run {
        None
    } else {
        Some(HostLock::acquire(&format!("lab reset {}", profile.name))?)
    };
    let observed = observe(&lv, &profile, &Sysroot::live())?;
    let host = gather_host_facts(&Sysroot::live(), &profile);
    let plan = plan::reset(&profile, &host, &observed, &args.vms).map_err(|e| usage(e.0))?;
    if args.dry_run {
        if global.json {
            ui::print_json(&plan)?;
        } else {
            print!("{}", plan::render(&plan));
        }
        return Ok(exit::OK);
    }
    let storage = storage_for(&plan)?;
    let env = apply::Env {
        lv: &lv,
        storage: storage.as_ref(),
        profile: &profile,
        dir: profile.storage.dir.clone(),
        ready_timeout: Duration::from_secs(args.timeout),
    };
    let vms = apply::reset(&plan, &env)?;
    if global.json {
        ui::print_json(&vms)?;
    } else {
        print!("{}", vm_table(&vms));
    }
    Ok(exit::OK)
}

/// `lab down PROFILE [--purge] [--dry-run]`: remove lab's domains, network and clones for
/// the profile (and with --purge its base and boot files); nothing without lab's mark is
/// touched.
pub fn down(global: &GlobalArgs, args: &DownArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let _lock = if args.dry_run {
        None
    } else {
        Some(HostLock::acquire(&format!("lab down {}", profile.name))?)
    };
    let mut observed = observe(&lv, &profile, &Sysroot::live())?;
    observed.files = lab_files(&profile, &observed);
    let plan = plan::down(&profile, &observed, args.purge);
    if args.dry_run {
        if global.json {
            ui::print_json(&plan)?;
        } else {
            print!("{}", plan::render_down(&plan));
        }
        return Ok(exit::OK);
    }
    let removed = apply::down(&plan, &lv, &profile)?;
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

/// The files lab wrote for `profile` beside its images: console logs and host keys of its
/// VMs (and of lab's domains of the profile it no longer names), the packstack password,
/// lab's SSH key, unfinished images, and lab's marker files with what they mark.
fn lab_files(profile: &Profile, observed: &Observed) -> crate::observe::LabFiles {
    use crate::observe::{MarkFile, Marker};
    let p = profile.name.as_str();
    let dir = &profile.storage.dir;
    let mut domains: Vec<String> = profile
        .instances()
        .into_iter()
        .map(|(vm, _)| crate::names::domain(p, &vm))
        .collect();
    for d in &observed.domains {
        if d.owner.as_ref().is_some_and(|o| o.is(p)) && !domains.contains(&d.name) {
            domains.push(d.name.clone());
        }
    }
    let existing = |paths: Vec<std::path::PathBuf>| -> Vec<std::path::PathBuf> {
        paths.into_iter().filter(|f| f.exists()).collect()
    };
    let key = crate::guest::ssh::lab_key_path(dir, p);
    let mut marks = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let mark = entry.path();
        let Some(target) = mark
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".lab"))
            .map(|t| dir.join(t))
        else {
            continue;
        };
        let Some(marker) = Marker::read(&target) else {
            continue;
        };
        if marker.owner.is(p) {
            marks.push(MarkFile {
                target_exists: target.exists(),
                mark,
                target,
                role: marker.role,
            });
        }
    }
    marks.sort_by(|a, b| a.mark.cmp(&b.mark));
    let qcow2 = Qcow2Storage::new(dir);
    let unfinished = qcow2.partial(p);
    crate::observe::LabFiles {
        console_logs: existing(domains.iter().map(|d| apply::console_log(dir, d)).collect()),
        known_hosts: existing(
            domains
                .iter()
                .map(|d| crate::guest::ssh::known_hosts_path(dir, d))
                .collect(),
        ),
        packstack_password: Some(crate::guest::packstack::password_path(dir, p))
            .filter(|f| f.exists()),
        ssh_key: existing(vec![crate::guest::ssh::pub_path(&key), key]),
        unfinished_dir: Some(qcow2.partial_dir()).filter(|d| {
            std::fs::read_dir(d)
                .is_ok_and(|entries| entries.flatten().all(|e| unfinished.contains(&e.path())))
        }),
        unfinished,
        marks,
    }
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
        kvm: crate::check::kvm::verdict_cached(sysroot),
        taken: subnet::taken_by_host(&net),
        thin_pools,
        now: crate::commands::base::now_secs(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_path_under_dev_vg_is_a_volume() {
        assert_eq!(
            thin_volume_of("/dev/vg_lab/lab-demo-web1"),
            Some(("vg_lab", "lab-demo-web1"))
        );
        assert_eq!(thin_volume_of("/dev/mapper/vg_lab-lab--demo--web1"), None);
        assert_eq!(
            thin_volume_of("/var/lib/lab/images/lab-demo-web1.qcow2"),
            None
        );
        assert_eq!(thin_volume_of("/dev/vda"), None);
    }
}
