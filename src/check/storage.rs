//! `storage.*`: is the storage the lab will live on fast, solid-state, and does it take
//! discards. The target is a path (followed down to its disks) or a volume group (measured
//! through its physical volumes).

use std::path::PathBuf;

use serde::Serialize;

use super::{Check, CheckContext, Report, Status, StorageTarget};
use crate::host::Sysroot;
use crate::host::blockdev::{self, BlockStack, Disk};
use crate::host::lvm::{LvmSource, PvRow};
use crate::host::throughput::{self, Throughput};
use crate::size::ByteSize;

/// Below this a lab's boots and package installs crawl (a SATA SSD does ~500 MB/s, an
/// NVMe SSD 2000 and more, a laptop hard disk 100).
pub const WARN_BELOW_MB_S: f64 = 200.0;
/// Below this several VMs installing packages at once is hopeless.
pub const FAIL_BELOW_MB_S: f64 = 50.0;

const SSD_FIX: &str = "put the lab on an SSD: find a directory on one with `lab check --storage /path/on/ssd`, then set [storage] dir = \"/path/on/ssd\" in the profile (qcow2), or vg = \"<a VG on an SSD>\" (lvm-thin)";
const TRIM_SSD_FIX: &str = "put the lab on an SSD that supports discard (TRIM): find a directory on one with `lab check --storage /path/on/ssd`, then set [storage] dir = \"/path/on/ssd\" in the profile (qcow2), or vg = \"<a VG on such an SSD>\" (lvm-thin)";

/// What the storage target turned out to be.
#[derive(Debug, Clone, Serialize)]
pub struct Located {
    /// In words: `/var/lib/lab/images (default image directory)`, `VG vg_lab (profile x)`.
    pub what: String,
    /// Said in the findings: an ancestor measured instead, a VG that fell back.
    pub notes: Vec<String>,
    pub stacks: Vec<BlockStack>,
    pub disks: Vec<Disk>,
    /// Physical volumes, when the target is a volume group.
    pub pvs: Vec<PvRow>,
    /// For a live probe: the device to read first, and where a scratch file may go.
    pub read_device: Option<PathBuf>,
    pub scratch_dir: Option<PathBuf>,
}

impl Located {
    /// Where the disks were found, for a finding: `under /var/lib (ext4 on nvme0n1p2) via
    /// nvme0n1p2 (partition of nvme0n1)`, or `on /dev/sdb1 via ...` for a device.
    fn place(&self) -> String {
        let parts: Vec<String> = self
            .stacks
            .iter()
            .map(|s| {
                let mut text = if s.block_device {
                    format!("on {}", s.requested.display())
                } else {
                    format!("under {}", s.describe_place())
                };
                if !s.layers.is_empty() {
                    text.push_str(&format!(" via {}", s.layers.join(", ")));
                }
                text
            })
            .collect();
        parts.join("; ")
    }

    /// Notes and unfollowable layers, as a suffix: `; /var/lib/lab/images does not exist
    /// yet, measured at /var/lib`.
    fn notes_suffix(&self) -> String {
        let mut all: Vec<String> = self.notes.clone();
        for s in &self.stacks {
            all.extend(s.notes.iter().cloned());
        }
        if all.is_empty() {
            String::new()
        } else {
            format!("; {}", all.join("; "))
        }
    }
}

/// Find the disks under `ctx.storage`.
pub fn locate(ctx: &CheckContext<'_>) -> Located {
    match &ctx.storage {
        StorageTarget::Path { path, origin } => locate_path(
            ctx.sysroot,
            path,
            format!("{} ({origin})", path.display()),
            Vec::new(),
        ),
        StorageTarget::VolumeGroup {
            vg,
            fallback,
            origin,
        } => {
            let source = LvmSource::for_sysroot(ctx.sysroot);
            let fall_back = |why: String| {
                let what = format!(
                    "{} (qcow2 fallback of VG {vg}, {origin})",
                    fallback.display()
                );
                locate_path(ctx.sysroot, fallback, what, vec![why])
            };
            match source.vg(vg) {
                Ok(Some(_)) => match source.pvs(vg) {
                    Ok(pvs) if !pvs.is_empty() => locate_pvs(ctx.sysroot, vg, origin, pvs),
                    Ok(_) => fall_back(format!(
                        "VG {vg} exists but its physical volumes are not known: measured the qcow2 fallback {}",
                        fallback.display()
                    )),
                    Err(e) => fall_back(format!(
                        "cannot list the physical volumes of VG {vg} ({e:#}): measured the qcow2 fallback {}",
                        fallback.display()
                    )),
                },
                Ok(None) => fall_back(format!(
                    "VG {vg} does not exist: measured the qcow2 fallback {} instead",
                    fallback.display()
                )),
                Err(e) => fall_back(format!(
                    "cannot query VG {vg} ({e:#}): measured the qcow2 fallback {} instead",
                    fallback.display()
                )),
            }
        }
    }
}

fn locate_path(
    sysroot: &Sysroot,
    path: &std::path::Path,
    what: String,
    mut notes: Vec<String>,
) -> Located {
    let stack = blockdev::resolve_path(sysroot, path);
    if !stack.exists() {
        notes.push(format!(
            "{} does not exist yet, measured at {}",
            stack.requested.display(),
            stack.measured_at.display()
        ));
    }
    let live = sysroot.is_live();
    Located {
        what,
        notes,
        disks: stack.disks.clone(),
        pvs: Vec::new(),
        read_device: if live { stack.device_node() } else { None },
        scratch_dir: if live { stack.scratch_dir() } else { None },
        stacks: vec![stack],
    }
}

fn locate_pvs(sysroot: &Sysroot, vg: &str, origin: &str, pvs: Vec<PvRow>) -> Located {
    let stacks: Vec<BlockStack> = pvs
        .iter()
        .map(|pv| blockdev::resolve_path(sysroot, std::path::Path::new(&pv.pv_name)))
        .collect();
    let names: Vec<&str> = pvs.iter().map(|p| p.pv_name.as_str()).collect();
    let mut notes = Vec::new();
    if pvs.len() > 1 {
        notes.push(format!(
            "throughput is measured on the first PV, {}",
            names[0]
        ));
    }
    Located {
        what: format!("VG {vg} ({origin}), PVs {}", names.join(", ")),
        notes,
        disks: blockdev::union_disks(&stacks),
        read_device: if sysroot.is_live() {
            pvs.first().map(|p| PathBuf::from(&p.pv_name))
        } else {
            None
        },
        // A PV holds no filesystem: a scratch file elsewhere would measure another disk.
        scratch_dir: None,
        stacks,
        pvs,
    }
}

/// The `storage` fact.
#[derive(Debug, Serialize)]
struct StorageFacts<'a> {
    #[serde(flatten)]
    located: &'a Located,
    throughput: Option<&'a Throughput>,
}

pub fn check(ctx: &CheckContext<'_>, report: &mut Report) {
    let located = locate(ctx);
    let (throughput_check, measured) = throughput_check(ctx, &located);
    report.push(throughput_check);
    report.push(media_check(&located));
    report.push(discard_check(&located));
    report.fact(
        "storage",
        StorageFacts {
            located: &located,
            throughput: measured.as_ref(),
        },
    );
}

/// `storage.throughput`: the sequential read rate, and what was read.
pub fn throughput_check(ctx: &CheckContext<'_>, located: &Located) -> (Check, Option<Throughput>) {
    const ID: &str = "storage.throughput";
    if !ctx.throughput {
        return (Check::skip(ID, "not measured (--no-throughput)"), None);
    }
    if !ctx.sysroot.is_live() {
        return (
            Check::skip(
                ID,
                "not measured under --sysroot: the probe reads this machine's disks",
            ),
            None,
        );
    }
    let t = match throughput::probe(
        located.read_device.as_deref(),
        located.scratch_dir.as_deref(),
        throughput::BUDGET,
    ) {
        Ok(t) => t,
        Err(e) => {
            let hint = if format!("{e:#}").contains("ermission denied") {
                "; run as root, or point --storage at a directory you can write"
            } else {
                ""
            };
            return (
                Check::skip(
                    ID,
                    format!("{}: could not measure: {e:#}{hint}", located.what),
                ),
                None,
            );
        }
    };
    (classify_throughput(located, &t), Some(t))
}

fn classify_throughput(located: &Located, t: &Throughput) -> Check {
    const ID: &str = "storage.throughput";
    let mut summary = format!("{}: {}", located.what, t.describe());
    if let Some(why) = &t.device_error {
        summary.push_str(&format!("; {why}, so a scratch file was measured instead"));
    }
    summary.push_str(&located.notes_suffix());
    match throughput_status(t.mb_per_s) {
        Status::Fail => Check::fail(
            ID,
            format!(
                "{summary}; under {FAIL_BELOW_MB_S:.0} MB/s several VMs cannot install at once"
            ),
            SSD_FIX,
        ),
        Status::Warn => Check::warn(
            ID,
            format!("{summary}; under {WARN_BELOW_MB_S:.0} MB/s VMs boot and install slowly"),
            SSD_FIX,
        ),
        _ => Check::pass(ID, summary),
    }
}

pub fn throughput_status(mb_per_s: f64) -> Status {
    if mb_per_s < FAIL_BELOW_MB_S {
        Status::Fail
    } else if mb_per_s < WARN_BELOW_MB_S {
        Status::Warn
    } else {
        Status::Pass
    }
}

fn disk_list(disks: &[&Disk]) -> String {
    disks
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `storage.media`: solid-state or rotational.
pub fn media_check(located: &Located) -> Check {
    const ID: &str = "storage.media";
    if located.disks.is_empty() {
        return Check::skip(
            ID,
            format!(
                "{}: no disk found {}{}",
                located.what,
                located.place(),
                located.notes_suffix()
            ),
        );
    }
    let rotational: Vec<&Disk> = located
        .disks
        .iter()
        .filter(|d| d.rotational == Some(true))
        .collect();
    let unknown: Vec<&Disk> = located
        .disks
        .iter()
        .filter(|d| d.rotational.is_none())
        .collect();
    let solid: Vec<&Disk> = located
        .disks
        .iter()
        .filter(|d| d.rotational == Some(false))
        .collect();
    let mut summary = format!("{}: ", located.what);
    if !rotational.is_empty() {
        summary.push_str(&format!("rotational: {}", disk_list(&rotational)));
        if !solid.is_empty() {
            summary.push_str(&format!("; solid-state: {}", disk_list(&solid)));
        }
        summary.push_str(&format!(" {}", located.place()));
        let mut fix = SSD_FIX.to_string();
        if rotational.iter().any(|d| d.is_virtual()) {
            summary.push_str(
                "; a virtual disk reports rotational unless the hypervisor says it is solid-state",
            );
            fix.push_str(
                "; on a VM whose host disk is an SSD, mark the disk solid-state (libvirt: <target ... rotation_rate='1'/> on a SCSI or SATA disk)",
            );
        }
        summary.push_str(&located.notes_suffix());
        return Check::warn(ID, summary, fix);
    }
    if !unknown.is_empty() {
        summary.push_str(&format!(
            "cannot tell whether {} is rotational (no queue/rotational) {}{}",
            disk_list(&unknown),
            located.place(),
            located.notes_suffix()
        ));
        return Check::skip(ID, summary);
    }
    summary.push_str(&format!(
        "solid-state: {} {}{}",
        disk_list(&solid),
        located.place(),
        located.notes_suffix()
    ));
    Check::pass(ID, summary)
}

/// `storage.discard`: do the disks take discard (TRIM/UNMAP).
pub fn discard_check(located: &Located) -> Check {
    const ID: &str = "storage.discard";
    if located.disks.is_empty() {
        return Check::skip(
            ID,
            format!(
                "{}: no disk found {}{}",
                located.what,
                located.place(),
                located.notes_suffix()
            ),
        );
    }
    let without: Vec<&Disk> = located
        .disks
        .iter()
        .filter(|d| d.supports_discard() == Some(false))
        .collect();
    let with: Vec<&Disk> = located
        .disks
        .iter()
        .filter(|d| d.supports_discard() == Some(true))
        .collect();
    let unknown: Vec<&Disk> = located
        .disks
        .iter()
        .filter(|d| d.supports_discard().is_none())
        .collect();
    if !without.is_empty() {
        let consequence = if without.iter().all(|d| d.rotational == Some(true)) {
            "as hard disks do: blocks the lab frees are never handed back, which costs a hard disk nothing but would cost an SSD its speed (see storage.media)"
        } else {
            "blocks the lab frees (deleted VMs, lab trim) never return to the SSD, which then slows down and wears as if full"
        };
        let mut summary = format!(
            "{}: {} takes no discard (queue/discard_max_bytes = 0): {consequence}",
            located.what,
            disk_list(&without)
        );
        if !with.is_empty() {
            summary.push_str(&format!("; {} does take discard", disk_list(&with)));
        }
        summary.push_str(&format!(" {}{}", located.place(), located.notes_suffix()));
        return Check::warn(ID, summary, discard_fix(&without));
    }
    if !unknown.is_empty() {
        return Check::skip(
            ID,
            format!(
                "{}: cannot tell whether {} takes discard (no queue/discard_max_bytes) {}{}",
                located.what,
                disk_list(&unknown),
                located.place(),
                located.notes_suffix()
            ),
        );
    }
    let detail: Vec<String> = with
        .iter()
        .map(|d| {
            format!(
                "{} (up to {} per request, granularity {})",
                d.name,
                ByteSize(d.discard_max_bytes.unwrap_or(0)),
                ByteSize(d.discard_granularity.unwrap_or(0))
            )
        })
        .collect();
    Check::pass(
        ID,
        format!(
            "{}: discard supported by {} {}{}",
            located.what,
            detail.join(", "),
            located.place(),
            located.notes_suffix()
        ),
    )
}

/// The fix depends on why discard is missing: a hypervisor that does not pass it, a USB
/// bridge that hides it, or a disk that has none.
fn discard_fix(disks: &[&Disk]) -> String {
    let mut fixes = Vec::new();
    for d in disks {
        let fix = if d.is_virtual() {
            format!(
                "{}: give the VM's disk discard in the hypervisor (libvirt: <driver name='qemu' discard='unmap'/> on the disk)",
                d.name
            )
        } else if matches!(d.driver.as_deref(), Some("uas" | "usb-storage")) {
            format!(
                "{0}: its USB bridge hides TRIM; if the SSD supports it: echo unmap | sudo tee /sys/block/{0}/device/scsi_disk/*/provisioning_mode",
                d.name
            )
        } else if d.rotational == Some(true) {
            format!("{}: {SSD_FIX}", d.name)
        } else {
            format!("{}: {TRIM_SSD_FIX}", d.name)
        };
        if !fixes.contains(&fix) {
            fixes.push(fix);
        }
    }
    fixes.join("\n")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::check::Status;
    use crate::host::throughput::Method;

    fn sysroot(name: &str) -> Sysroot {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts")
            .join(name);
        Sysroot::at(&dir).unwrap()
    }

    fn path(p: &str) -> StorageTarget {
        StorageTarget::Path {
            path: p.into(),
            origin: "--storage".into(),
        }
    }

    fn vg(name: &str) -> StorageTarget {
        StorageTarget::VolumeGroup {
            vg: name.into(),
            fallback: "/var/lib/lab/images".into(),
            origin: "profile t [storage]".into(),
        }
    }

    fn run(root: &Sysroot, storage: StorageTarget, throughput: bool) -> Report {
        let ctx = CheckContext {
            sysroot: root,
            profile: None,
            storage,
            connect: "test:///default",
            fix: false,
            throughput,
        };
        let mut report = Report::default();
        check(&ctx, &mut report);
        report
    }

    fn status(report: &Report, id: &str) -> Status {
        report.get(id).unwrap_or_else(|| panic!("no {id}")).status
    }

    #[test]
    fn ids_come_in_order_and_every_warn_or_fail_has_a_fix() {
        for (fixture, target) in [
            ("storage-ssd", path("/var/lib/lab/images")),
            ("storage-hdd", path("/srv/lab")),
            ("storage-loop-on-ssd", path("/var/lib/lab/images")),
            ("storage-dm-two-disks", path("/home/alice/lab")),
            ("lvm-pool-50", vg("vg_lab")),
        ] {
            let report = run(&sysroot(fixture), target, false);
            let ids: Vec<&str> = report.checks.iter().map(|c| c.id.as_str()).collect();
            assert_eq!(
                ids,
                ["storage.throughput", "storage.media", "storage.discard"]
            );
            for c in &report.checks {
                if matches!(c.status, Status::Warn | Status::Fail) {
                    assert!(c.fix.as_deref().is_some_and(|f| !f.is_empty()), "{c:?}");
                }
            }
            assert!(report.facts.contains_key("storage"));
        }
    }

    #[test]
    fn ssd_passes_and_says_the_directory_does_not_exist_yet() {
        let report = run(&sysroot("storage-ssd"), path("/var/lib/lab/images"), false);
        assert_eq!(status(&report, "storage.media"), Status::Pass);
        assert_eq!(status(&report, "storage.discard"), Status::Pass);
        let media = &report.get("storage.media").unwrap().summary;
        assert!(
            media.contains("solid-state: nvme0n1 (SAMSUNG MZVL2512HCJQ-00B00"),
            "{media}"
        );
        assert!(
            media.contains("/var/lib/lab/images does not exist yet, measured at /var/lib"),
            "{media}"
        );
        let throughput = report.get("storage.throughput").unwrap();
        assert_eq!(throughput.status, Status::Skip);
        assert!(throughput.summary.contains("--no-throughput"));
    }

    #[test]
    fn throughput_is_never_probed_under_a_sysroot() {
        let report = run(&sysroot("storage-ssd"), path("/var/lib"), true);
        let c = report.get("storage.throughput").unwrap();
        assert_eq!(c.status, Status::Skip);
        assert!(c.summary.contains("--sysroot"), "{}", c.summary);
    }

    #[test]
    fn hdd_warns_on_media_and_discard() {
        let report = run(&sysroot("storage-hdd"), path("/srv/lab"), false);
        let media = report.get("storage.media").unwrap();
        assert_eq!(media.status, Status::Warn);
        assert!(
            media.summary.contains("rotational: sda (ST1000LM035-1RK1"),
            "{}",
            media.summary
        );
        assert!(
            media
                .fix
                .as_deref()
                .unwrap()
                .contains("put the lab on an SSD")
        );
        let discard = report.get("storage.discard").unwrap();
        assert_eq!(discard.status, Status::Warn);
        assert!(
            discard.summary.contains("discard_max_bytes = 0"),
            "{}",
            discard.summary
        );
        assert!(discard.fix.as_deref().unwrap().starts_with("sda: "));
    }

    #[test]
    fn a_loop_device_on_an_ssd_counts_as_the_ssd() {
        let report = run(
            &sysroot("storage-loop-on-ssd"),
            path("/var/lib/lab/images"),
            false,
        );
        let media = report.get("storage.media").unwrap();
        assert_eq!(media.status, Status::Pass, "{}", media.summary);
        assert!(
            media
                .summary
                .contains("loop0 (loop device on /home/alice/lab-disk.img)")
        );
        assert_eq!(status(&report, "storage.discard"), Status::Pass);
    }

    #[test]
    fn dm_over_an_ssd_and_a_hdd_warns_and_names_the_hdd() {
        let report = run(
            &sysroot("storage-dm-two-disks"),
            path("/home/alice/lab"),
            false,
        );
        let media = report.get("storage.media").unwrap();
        assert_eq!(media.status, Status::Warn);
        assert!(
            media
                .summary
                .contains("rotational: sdb (WDC WD20EZAZ-00GGJB0"),
            "{}",
            media.summary
        );
        assert!(
            media.summary.contains("solid-state: sda"),
            "{}",
            media.summary
        );
        let discard = report.get("storage.discard").unwrap();
        assert_eq!(discard.status, Status::Warn);
        assert!(discard.summary.contains("sdb (WDC"), "{}", discard.summary);
        assert!(
            discard.summary.contains("does take discard"),
            "{}",
            discard.summary
        );
        // The same machine's root LV is on the SSD only.
        let report = run(&sysroot("storage-dm-two-disks"), path("/"), false);
        assert_eq!(status(&report, "storage.media"), Status::Pass);
    }

    #[test]
    fn a_volume_group_is_measured_through_its_pvs() {
        let report = run(&sysroot("lvm-pool-50"), vg("vg_lab"), false);
        let media = report.get("storage.media").unwrap();
        assert_eq!(media.status, Status::Pass);
        assert!(media.summary.contains("VG vg_lab"), "{}", media.summary);
        assert!(
            media
                .summary
                .contains("on /dev/nvme0n1p3 via nvme0n1p3 (partition of nvme0n1)"),
            "{}",
            media.summary
        );
        let facts = &report.facts["storage"];
        assert_eq!(facts["pvs"][0]["pv_name"], "/dev/nvme0n1p3");
        assert_eq!(facts["disks"][0]["name"], "nvme0n1");
    }

    #[test]
    fn a_missing_volume_group_falls_back_to_its_directory_and_says_so() {
        let report = run(&sysroot("lvm-no-vg"), vg("vg_lab"), false);
        let media = report.get("storage.media").unwrap();
        assert_eq!(media.status, Status::Pass);
        assert!(
            media.summary.contains(
                "VG vg_lab does not exist: measured the qcow2 fallback /var/lib/lab/images"
            ),
            "{}",
            media.summary
        );
    }

    #[test]
    fn memory_is_not_a_disk() {
        let report = run(&sysroot("storage-ssd"), path("/tmp"), false);
        for id in ["storage.media", "storage.discard"] {
            let c = report.get(id).unwrap();
            assert_eq!(c.status, Status::Skip);
            assert!(
                c.summary.contains("tmpfs at /tmp is memory"),
                "{}",
                c.summary
            );
        }
    }

    fn disk(name: &str, rotational: bool, driver: &str) -> Disk {
        Disk {
            name: name.into(),
            dev: "8:0".into(),
            rotational: Some(rotational),
            discard_max_bytes: Some(0),
            discard_granularity: Some(0),
            model: None,
            size_bytes: None,
            driver: Some(driver.into()),
        }
    }

    #[test]
    fn the_discard_fix_depends_on_why_discard_is_missing() {
        let fix = |d: Disk| discard_fix(&[&d]);
        assert!(fix(disk("vdb", true, "virtio_blk")).contains("discard='unmap'"));
        assert!(
            fix(disk("sdc", false, "uas"))
                .contains("/sys/block/sdc/device/scsi_disk/*/provisioning_mode")
        );
        assert_eq!(
            fix(disk("sda", false, "sd")),
            format!("sda: {TRIM_SSD_FIX}")
        );
        assert_eq!(fix(disk("sdb", true, "sd")), format!("sdb: {SSD_FIX}"));
    }

    #[test]
    fn throughput_thresholds() {
        assert_eq!(throughput_status(49.9), Status::Fail);
        assert_eq!(throughput_status(50.0), Status::Warn);
        assert_eq!(throughput_status(199.9), Status::Warn);
        assert_eq!(throughput_status(200.0), Status::Pass);
        assert_eq!(throughput_status(3000.0), Status::Pass);
    }

    fn measured(mb_per_s: f64) -> Throughput {
        Throughput {
            mb_per_s,
            bytes_read: 300_000_000,
            read_seconds: 3.0,
            method: Method::ScratchDirect,
            source: "/srv/lab/.lab-throughput-1.tmp".into(),
            device_error: Some("/dev/sda2 could not be read: Permission denied".into()),
            scratch_bytes: Some(512 << 20),
            write_mb_per_s: Some(90.0),
            probe_seconds: 3.1,
        }
    }

    #[test]
    fn a_slow_figure_says_what_was_measured_and_how_to_fix_it() {
        let located = locate(&CheckContext {
            sysroot: &sysroot("storage-hdd"),
            profile: None,
            storage: path("/srv/lab"),
            connect: "test:///default",
            fix: false,
            throughput: false,
        });
        let c = classify_throughput(&located, &measured(98.0));
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.summary.contains(
                "98 MB/s sequential read of a 512MiB scratch file in /srv/lab (O_DIRECT)"
            ),
            "{}",
            c.summary
        );
        assert!(
            c.summary
                .contains("/dev/sda2 could not be read: Permission denied"),
            "{}",
            c.summary
        );
        assert_eq!(c.fix.as_deref(), Some(SSD_FIX));
        assert_eq!(
            classify_throughput(&located, &measured(20.0)).status,
            Status::Fail
        );
        assert_eq!(
            classify_throughput(&located, &measured(520.0)).status,
            Status::Pass
        );
    }
}
