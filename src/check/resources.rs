//! `resources.*`: RAM, CPUs and free disk against what the profile's VMs need.

use serde::Serialize;

use super::{Check, CheckContext, Report, StorageTarget};
use crate::host::resources::{self, Memory};
use crate::size::{ByteSize, GIB};

/// Memory the host keeps for itself beyond what the VMs take.
const HOST_RESERVE: u64 = GIB;

#[derive(Debug, Serialize)]
struct ResourceFacts {
    memory: Option<Memory>,
    cpus: Option<u64>,
    disk_free: Option<u64>,
    disk_path: Option<String>,
    needs: Option<crate::profile::Needs>,
}

fn size(b: u64) -> String {
    ByteSize(b).to_string()
}

pub fn check(ctx: &CheckContext<'_>, report: &mut Report) {
    let memory = resources::memory(ctx.sysroot);
    let cpus = resources::cpus(ctx.sysroot);
    // A VG that exists holds the thin pool, whose room lvm.thin-pool-fill judges; when it
    // does not exist the lab falls back to qcow2 images in the directory.
    let vg_exists = |vg: &str| {
        crate::host::lvm::LvmSource::for_sysroot(ctx.sysroot)
            .vg(vg)
            .is_ok_and(|v| v.is_some())
    };
    let (disk_path, disk_free) = match (&ctx.storage, ctx.sysroot.is_live()) {
        (StorageTarget::VolumeGroup { vg, .. }, true) if vg_exists(vg) => (None, None),
        (StorageTarget::Path { path, .. }, true)
        | (StorageTarget::VolumeGroup { fallback: path, .. }, true) => {
            let at = resources::nearest_existing(path);
            let free = resources::free_bytes(&at).ok();
            (Some(at.display().to_string()), free)
        }
        _ => (None, None),
    };
    let mut facts = ResourceFacts {
        memory,
        cpus,
        disk_free,
        disk_path: disk_path.clone(),
        needs: None,
    };
    let Some(profile) = ctx.profile else {
        for id in ["resources.memory", "resources.cpu", "resources.disk"] {
            report.push(Check::skip(
                id,
                "no --profile given: nothing to measure against",
            ));
        }
        report.fact("resources", facts);
        return;
    };
    let needs = profile.needs();
    facts.needs = Some(needs);
    let vms = format!("{} VM{}", needs.vms, if needs.vms == 1 { "" } else { "s" });

    report.push(match memory {
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

    report.push(match cpus {
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

    report.push(match (disk_free, &disk_path) {
        (Some(free), Some(at)) if free < profile.base.disk.bytes() => Check::fail(
            "resources.disk",
            format!(
                "{at} has {} free; the base image alone may grow to {}: short by {}",
                size(free),
                profile.base.disk,
                size(profile.base.disk.bytes() - free)
            ),
            "free space there, or point [storage] dir / --storage at a larger filesystem",
        ),
        (Some(free), Some(at)) if free < needs.disk => Check::warn(
            "resources.disk",
            format!(
                "{at} has {} free; base and {vms} fully written take {}: short by {} (clones are thin, so this bites only when they fill)",
                size(free),
                size(needs.disk),
                size(needs.disk - free)
            ),
            "free space there, or point [storage] dir / --storage at a larger filesystem",
        ),
        (Some(free), Some(at)) => Check::pass(
            "resources.disk",
            format!(
                "{at} has {} free; base and {vms} fully written take {}",
                size(free),
                size(needs.disk)
            ),
        ),
        _ => Check::skip(
            "resources.disk",
            if ctx.sysroot.is_live() {
                "the lab lives in a thin pool: its room is judged by lvm.thin-pool-fill"
            } else {
                "free disk needs the live machine (--sysroot given)"
            },
        ),
    });
    report.fact("resources", facts);
}
