//! Sealing a freshly installed base: "turn it off, then fstrim and partx". Every
//! filesystem in the image is trimmed offline by lab's one offline-trim engine
//! ([`crate::storage::fstrim`], the one `lab trim` uses), so the blocks the installer wrote
//! and freed (package downloads, the update's old files) stop taking space; a qcow2 image
//! is then rewritten without them (`qemu-img convert -O qcow2`, zeros skipped) and
//! `seal_base` makes it read-only. A raw base (a block device, as on a thin pool) is trimmed
//! in place, its discards going down to the pool.
//!
//! Filesystems trimmed: those of [`fstrim::OFFLINE_FILESYSTEMS`]. Others (swap, an LVM PV:
//! device-mapper is not available everywhere) are left as they are and named in the report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::runner::Cmd;
use crate::size::ByteSize;
use crate::storage::Volume;
use crate::storage::fstrim::{self, FsTrim};
use crate::storage::qcow2::allocated_bytes;

/// The engine's work directory in a build's scratch directory (its export, its mount
/// points): a build killed while sealing leaves it for the next build to clear.
pub const WORK_DIR: &str = "fstrim";

/// What sealing did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SealReport {
    /// "partition 1 (xfs): 1.2GiB (1288490188 bytes) trimmed", one per filesystem.
    pub trimmed: Vec<String>,
    /// Regions left alone and why.
    pub skipped: Vec<String>,
    /// Bytes the image held on the host before and after.
    pub allocated_before: u64,
    pub allocated_after: u64,
}

/// Trim every filesystem of the base being built, and compact a qcow2 image.
pub fn trim_and_compact(volume: &Volume, scratch: &Path) -> Result<SealReport> {
    match volume.format.as_str() {
        "qcow2" => trim_qcow2(&volume.path, scratch),
        "raw" => {
            let mut report = SealReport::default();
            trim_filesystems(&volume.path, "raw", scratch, &mut report)?;
            Ok(report)
        }
        other => bail!("{}: cannot seal a {other} image", volume.path.display()),
    }
}

fn trim_qcow2(image: &Path, scratch: &Path) -> Result<SealReport> {
    let mut report = SealReport {
        allocated_before: allocated_bytes(image)?,
        ..SealReport::default()
    };
    trim_filesystems(image, "qcow2", scratch, &mut report)?;
    // The trimmed clusters are zero clusters now: the new qcow2 leaves them out.
    let compacted = partial_beside(image, "compact");
    let result = Cmd::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "qcow2"])
        .arg(image)
        .arg(&compacted)
        .run()
        .with_context(|| format!("compacting {}", image.display()))
        .and_then(|_| {
            std::fs::rename(&compacted, image)
                .with_context(|| format!("replacing {} with its compacted copy", image.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&compacted);
    }
    result?;
    report.allocated_after = allocated_bytes(image)?;
    Ok(report)
}

/// `<dir>/.<name>.<what>-<pid>`: a temporary file on the image's filesystem.
fn partial_beside(image: &Path, what: &str) -> PathBuf {
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    image.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// Trim each filesystem of an image (`format`: qcow2, or raw for a block device) with the
/// offline-trim engine, working in `scratch`, and say in `report` what was trimmed and what
/// was left alone.
pub fn trim_filesystems(
    image: &Path,
    format: &str,
    scratch: &Path,
    report: &mut SealReport,
) -> Result<()> {
    let filesystems = fstrim::offline_fstrim_in(image, format, &scratch.join(WORK_DIR))?;
    for fs in &filesystems {
        note(fs, report);
    }
    Ok(())
}

/// One line of the report for one region.
fn note(fs: &FsTrim, report: &mut SealReport) {
    let what = if fs.part == fstrim::WHOLE_DISK {
        format!("the {}", fs.part)
    } else {
        fs.part.clone()
    };
    match (fs.was_trimmed(), fs.signature()) {
        (true, _) => report.trimmed.push(format!(
            "{what} ({}): {}",
            fs.fstype,
            match fs.trimmed {
                Some(n) => format!("{} ({n} bytes) trimmed", ByteSize(n)),
                None => "trimmed".to_string(),
            }
        )),
        (false, Some(t)) => report
            .skipped
            .push(format!("{what}: {t} is not a filesystem lab trims")),
        (false, None) => report.skipped.push(format!("{what}: no filesystem")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fstrim::{RegionDevice, regions};

    /// A raw image with an MBR partition table, an ext4 partition at 1 MiB that once held
    /// 8 MiB of data (deleted again) and a swap-like empty second partition: trimming gives
    /// the deleted data's space back and skips what is no filesystem.
    #[test]
    fn trimming_a_partitioned_image_frees_deleted_data() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.raw");
        let size: u64 = 64 << 20;
        let mut mbr = vec![0u8; 512];
        let entry = |start: u32, sectors: u32, kind: u8| {
            let mut e = [0u8; 16];
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&sectors.to_le_bytes());
            e
        };
        mbr[446..462].copy_from_slice(&entry(2048, 40 * 2048, 0x83));
        mbr[462..478].copy_from_slice(&entry(42 * 2048, 16 * 2048, 0x82));
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        std::fs::write(&image, &mbr).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        f.set_len(size).unwrap();
        drop(f);
        Cmd::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "offset=1048576,nodiscard"])
            .arg(&image)
            .arg("40M")
            .run()
            .unwrap();
        let data = dir.path().join("data");
        let noise: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&data, &noise).unwrap();
        let regions = regions(&image).unwrap();
        assert_eq!(regions.len(), 2, "{regions:?}");
        assert_eq!(regions[0].offset, 1 << 20);
        // Write the data through a loop device, then delete it: its blocks stay allocated
        // in the image until a trim.
        let dev = RegionDevice::attach(&image, regions[0], "lab-test").unwrap();
        let mnt = tempfile::tempdir().unwrap();
        Cmd::new("mount")
            .arg(dev.path())
            .arg(mnt.path())
            .run()
            .unwrap();
        std::fs::copy(&data, mnt.path().join("big")).unwrap();
        Cmd::new("sync").run().unwrap();
        std::fs::remove_file(mnt.path().join("big")).unwrap();
        Cmd::new("umount").arg(mnt.path()).run().unwrap();
        dev.detach().unwrap();
        let before = allocated_bytes(&image).unwrap();
        assert!(before >= 8 << 20, "{before}");

        let mut report = SealReport::default();
        trim_filesystems(&image, "raw", dir.path(), &mut report).unwrap();
        let after = allocated_bytes(&image).unwrap();
        assert!(after + (7 << 20) < before, "before {before}, after {after}");
        assert_eq!(report.trimmed.len(), 1, "{report:?}");
        assert!(
            report.trimmed[0].starts_with("partition 1 (ext4): "),
            "{report:?}"
        );
        assert_eq!(report.skipped, ["partition 2: no filesystem"]);
        // Nothing stays attached to the image.
        let attached = Cmd::new("losetup").args(["-j"]).arg(&image).run().unwrap();
        assert_eq!(attached.stdout.trim(), "");
    }
}
