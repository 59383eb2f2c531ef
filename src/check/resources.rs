//! `resources.*`: RAM, CPUs, free disk and nested KVM against what the profile's VMs
//! need: the fit `lab check --profile` fails on and `lab up` (its dry run too) warns about.

use serde::Serialize;

use super::{Check, CheckContext, Report, StorageTarget};
use crate::host::Sysroot;
use crate::host::resources::{self, Memory};
use crate::profile::Profile;
use crate::size::{ByteSize, GIB};

/// Memory the host keeps for itself beyond what the VMs take.
const HOST_RESERVE: u64 = GIB;

/// What the host has for a lab: the facts the fit is judged on, all read from the sysroot
/// (recorded reports under --sysroot: /proc/meminfo, the CPU list, `df`, `vgs`/`lvs`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Room {
    pub memory: Option<Memory>,
    pub cpus: Option<u64>,
    /// Free space where the lab's disks go; None with why in `disk_unknown`.
    pub disk: Option<DiskRoom>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub disk_unknown: String,
}

/// Free space where the lab's disks go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskRoom {
    /// What was measured: a directory (its filesystem), or "volume group vg_lab ...".
    pub at: String,
    pub free: u64,
}

/// Whether nested KVM works here, and the finding that says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nesting {
    pub works: bool,
    pub why: String,
}

#[derive(Debug, Serialize)]
struct ResourceFacts<'a> {
    #[serde(flatten)]
    room: &'a Room,
    needs: Option<crate::profile::Needs>,
}

fn size(b: u64) -> String {
    ByteSize(b).to_string()
}

/// The room on the host the sysroot describes, for a lab stored at `storage`. A volume
/// group that exists holds the lab's thin pool: its room is what the VG has unallocated
/// plus what its thin pool `pool` has unused; otherwise the lab's qcow2 images go in the
/// directory.
pub fn room(sysroot: &Sysroot, storage: &StorageTarget, pool: Option<&str>) -> Room {
    let mut room = Room {
        memory: resources::memory(sysroot),
        cpus: resources::cpus(sysroot),
        ..Room::default()
    };
    let path = match storage {
        StorageTarget::VolumeGroup { vg, fallback, .. } => {
            let lvm = crate::host::lvm::LvmSource::for_sysroot(sysroot);
            match (lvm.vg(vg), pool) {
                // As the plan does: the lab goes in the thin pool when it exists, else in
                // qcow2 images in the directory.
                (Ok(Some(row)), Some(pool)) => match pool_room(&lvm, &row, pool) {
                    Some(d) => {
                        room.disk = Some(d);
                        return room;
                    }
                    None => fallback,
                },
                (Ok(Some(row)), None) => {
                    match row.vg_free {
                        Some(free) => {
                            room.disk = Some(DiskRoom {
                                at: format!("volume group {vg}"),
                                free,
                            })
                        }
                        None => {
                            room.disk_unknown =
                                format!("volume group {vg}: {} gave no free space", lvm.label())
                        }
                    }
                    return room;
                }
                _ => fallback,
            }
        }
        StorageTarget::Path { path, .. } => path,
    };
    match resources::disk_free(sysroot, path) {
        Some((at, free)) => {
            room.disk = Some(DiskRoom {
                at: at.display().to_string(),
                free,
            })
        }
        None => {
            room.disk_unknown = format!(
                "free space under --sysroot comes from `df -P -B1` recorded in {}{}, which \
                 is missing or has no filesystem holding {}",
                sysroot.root().display(),
                resources::RECORDED_DF,
                path.display()
            )
        }
    }
    room
}

/// The room of thin pool `pool` in volume group `vg`: what the VG has unallocated (the
/// pool can grow into it) plus what the pool has unused. None when there is no such pool.
fn pool_room(
    lvm: &crate::host::lvm::LvmSource,
    vg: &crate::host::lvm::VgRow,
    pool: &str,
) -> Option<DiskRoom> {
    let rows = lvm.lvs(&vg.vg_name, pool).ok()?;
    let tp = crate::host::lvm::ThinPool::find(&rows, &vg.vg_name, pool)?;
    let used = tp.data_percent.unwrap_or(0.0).clamp(0.0, 100.0);
    let pool_free = (tp.size.unwrap_or(0) as f64 * (100.0 - used) / 100.0) as u64;
    let vg_free = vg.vg_free.unwrap_or(0);
    Some(DiskRoom {
        at: format!(
            "volume group {} ({} unallocated, thin pool {pool} {} unused)",
            vg.vg_name,
            size(vg_free),
            size(pool_free)
        ),
        free: vg_free + pool_free,
    })
}

pub fn check(ctx: &CheckContext<'_>, report: &mut Report) {
    let pool = ctx.profile.and_then(|p| p.storage.pool.as_deref());
    let room = room(ctx.sysroot, &ctx.storage, pool);
    let Some(profile) = ctx.profile else {
        for id in ["resources.memory", "resources.cpu", "resources.disk"] {
            report.push(Check::skip(
                id,
                "no --profile given: nothing to measure against",
            ));
        }
        report.fact(
            "resources",
            ResourceFacts {
                room: &room,
                needs: None,
            },
        );
        return;
    };
    for c in judge(profile, &room) {
        report.push(c);
    }
    report.fact(
        "resources",
        ResourceFacts {
            room: &room,
            needs: Some(profile.needs()),
        },
    );
}

/// The profile's VMs against the room: `resources.memory`, `resources.cpu`,
/// `resources.disk`, each with the numbers. A fail is what makes the lab not run (or not
/// all of it); a warn is what makes it slow or run out later.
pub fn judge(profile: &Profile, room: &Room) -> Vec<Check> {
    let mut checks = Vec::new();
    let needs = profile.needs();
    let vms = format!("{} VM{}", needs.vms, if needs.vms == 1 { "" } else { "s" });
    let memory = room.memory;
    let cpus = room.cpus;

    checks.push(match memory {
        None => Check::skip("resources.memory", "/proc/meminfo unreadable"),
        Some(m) if needs.memory + HOST_RESERVE > m.total => Check::fail(
            "resources.memory",
            format!(
                "{} needs {} for {vms} plus {} for the host; the host has {}: short by {}",
                profile.name,
                size(needs.memory),
                size(HOST_RESERVE),
                size(m.total),
                size(needs.memory + HOST_RESERVE - m.total)
            ),
            format!("lower the VMs' memory in {} or add RAM", profile.source),
        ),
        Some(m) if needs.memory > m.available => Check::warn(
            "resources.memory",
            format!(
                "{} needs {} for {vms}; {} of {} is available now: short by {}",
                profile.name,
                size(needs.memory),
                size(m.available),
                size(m.total),
                size(needs.memory - m.available)
            ),
            "close other programs or VMs before `lab up`",
        ),
        Some(m) => Check::pass(
            "resources.memory",
            format!(
                "{} needs {} for {vms}; {} of {} available",
                profile.name,
                size(needs.memory),
                size(m.available),
                size(m.total)
            ),
        ),
    });

    checks.push(match cpus {
        None => Check::skip("resources.cpu", "CPU count unreadable"),
        Some(n) if needs.max_vcpus > n => Check::fail(
            "resources.cpu",
            format!(
                "a VM of {} wants {} vCPUs; the host has {n} CPUs: short by {}",
                profile.name,
                needs.max_vcpus,
                needs.max_vcpus - n
            ),
            format!(
                "lower that VM's vcpus to {n} or fewer in {}",
                profile.source
            ),
        ),
        Some(n) if needs.vcpus > n => Check::warn(
            "resources.cpu",
            format!(
                "{} wants {} vCPUs in all on {n} CPUs: overcommitted by {}, expect a slow demo",
                profile.name,
                needs.vcpus,
                needs.vcpus - n
            ),
            format!("lower the VMs' vcpus in {} to {n} in all", profile.source),
        ),
        Some(n) => Check::pass(
            "resources.cpu",
            format!(
                "{} wants {} vCPUs in all; the host has {n} CPUs",
                profile.name, needs.vcpus
            ),
        ),
    });

    checks.push(match &room.disk {
        Some(d) if d.free < profile.base.disk.bytes() => Check::fail(
            "resources.disk",
            format!(
                "{} has {} free; the base image alone may grow to {}: short by {}",
                d.at,
                size(d.free),
                profile.base.disk,
                size(profile.base.disk.bytes() - d.free)
            ),
            DISK_FIX,
        ),
        Some(d) if d.free < needs.disk => Check::warn(
            "resources.disk",
            format!(
                "{} has {} free; base and {vms} fully written take {}: short by {} (clones are thin, so this bites only when they fill)",
                d.at,
                size(d.free),
                size(needs.disk),
                size(needs.disk - d.free)
            ),
            DISK_FIX,
        ),
        Some(d) => Check::pass(
            "resources.disk",
            format!(
                "{} has {} free; base and {vms} fully written take {}",
                d.at,
                size(d.free),
                size(needs.disk)
            ),
        ),
        None => Check::skip("resources.disk", room.disk_unknown.clone()),
    });
    checks
}

const DISK_FIX: &str = "free space there, or point [storage] dir / --storage at a larger filesystem \
     (or grow the volume group)";

/// `resources.nested`: the profile's VMs with `nested = true` run KVM inside (Nova's
/// instances, for packstack); without nested KVM on the host they cannot, and packstack's
/// Nova falls back to emulating every instance. None when no VM asks for it.
pub fn judge_nesting(profile: &Profile, nesting: Option<&Nesting>) -> Option<Check> {
    let nested: Vec<String> = profile
        .instances()
        .into_iter()
        .filter(|(_, vm)| vm.nested)
        .map(|(name, _)| name)
        .collect();
    if nested.is_empty() {
        return None;
    }
    let which = format!(
        "{} of {} {} nested KVM",
        nested.join(", "),
        profile.name,
        if nested.len() == 1 { "needs" } else { "need" }
    );
    Some(match nesting {
        None => Check::skip(
            "resources.nested",
            format!("{which}; whether it works here is unknown"),
        ),
        Some(n) if n.works => Check::pass("resources.nested", format!("{which}; {}", n.why)),
        Some(n) => Check::fail(
            "resources.nested",
            format!(
                "{which}, and it does not work here ({}): their VMs would be emulated, \
                 minutes for what takes seconds",
                n.why
            ),
            "lab check --fix turns nested KVM on (kvm_intel/kvm_amd nested=1), or set \
             nested = false on those VMs",
        ),
    })
}

/// What `lab up` warns about before a run: every resource the profile is short of, with
/// the numbers, judged as `lab check --profile` judges (which fails on the same).
pub fn shortfalls(profile: &Profile, sysroot: &Sysroot, nesting: &Nesting) -> Vec<Check> {
    let storage = super::storage_of_profile(profile);
    let room = room(sysroot, &storage, profile.storage.pool.as_deref());
    judge(profile, &room)
        .into_iter()
        .chain(judge_nesting(profile, Some(nesting)))
        .filter(|c| matches!(c.status, super::Status::Warn | super::Status::Fail))
        .collect()
}
