//! Sealing a freshly installed base: "turn it off, then fstrim and partx". Every
//! filesystem in the image is trimmed offline, so the blocks the installer wrote and freed
//! (package downloads, the update's old files) stop taking space, then a qcow2 image is
//! rewritten without them (`qemu-img convert -O qcow2`, zeros skipped) and `seal_base`
//! makes it read-only.
//!
//! How, on a host without nbd (no module loading) and without udev: the qcow2 image is
//! converted to a sparse raw file beside the build; `partx` reads its partition table; each
//! partition gets a loop device of its own (`losetup --offset --sizelimit`, so no partition
//! device nodes are needed), is mounted (nodev,nosuid,noexec), `fstrim`med, unmounted and
//! detached. fstrim on a loop device punches holes in the raw file; converting that back to
//! qcow2 leaves them out. A raw base (a block device, as on a thin pool) is trimmed in
//! place, its discards going down to the pool: the whole device itself, or each partition
//! through a device-mapper linear mapping (see [`RegionDevice`]: a loop device on a thin
//! volume takes no discard).
//!
//! Filesystems trimmed: ext2/3/4, xfs, btrfs, vfat. Others (swap, an LVM PV: device-mapper
//! is not available everywhere) are left as they are and named in the report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::runner::Cmd;
use crate::storage::Volume;
use crate::storage::qcow2::allocated_bytes;
use crate::ui;

/// Filesystem types lab mounts to trim.
const TRIMMABLE: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"];

/// What sealing did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SealReport {
    /// "partition 1 (xfs): 1.2 GiB trimmed", one per filesystem.
    pub trimmed: Vec<String>,
    /// Regions left alone and why.
    pub skipped: Vec<String>,
    /// Bytes the image held on the host before and after.
    pub allocated_before: u64,
    pub allocated_after: u64,
}

/// One region of an image: a partition, or the whole image when it has no table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Partition number; 0 for the whole image.
    pub number: u32,
    pub offset: u64,
    pub size: u64,
}

/// Trim every filesystem of the base being built, and compact a qcow2 image.
pub fn trim_and_compact(volume: &Volume, scratch: &Path) -> Result<SealReport> {
    match volume.format.as_str() {
        "qcow2" => trim_qcow2(&volume.path, scratch),
        "raw" => {
            let mut report = SealReport::default();
            trim_image(&volume.path, scratch, &mut report)?;
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
    let raw = scratch.join("seal.raw");
    let compacted = partial_beside(image, "compact");
    let result = (|| -> Result<()> {
        Cmd::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(image)
            .arg(&raw)
            .run()
            .with_context(|| format!("converting {} to raw for trimming", image.display()))?;
        trim_image(&raw, scratch, &mut report)?;
        // Holes and zeros of the raw file are left out of the new qcow2.
        Cmd::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&compacted)
            .run()
            .with_context(|| format!("compacting {}", image.display()))?;
        std::fs::rename(&compacted, image)
            .with_context(|| format!("replacing {} with its compacted copy", image.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&compacted);
    result?;
    report.allocated_after = allocated_bytes(image)?;
    Ok(report)
}

/// `<dir>/.<name>.<what>-<pid>`: a temporary file on the image's filesystem.
fn partial_beside(image: &Path, what: &str) -> PathBuf {
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    image.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// Trim each filesystem of a raw image file or block device.
pub fn trim_image(image: &Path, scratch: &Path, report: &mut SealReport) -> Result<()> {
    for region in regions(image)? {
        let what = if region.number == 0 {
            "the whole disk".to_string()
        } else {
            format!("partition {}", region.number)
        };
        let device = RegionDevice::attach(image, region, &region_tag(image))?;
        let fstype = filesystem_type(device.path())?;
        match fstype.as_deref() {
            Some(t) if TRIMMABLE.contains(&t) => {
                let trimmed = trim_filesystem(device.path(), t, scratch)
                    .with_context(|| format!("trimming {what} ({t}) of {}", image.display()))?;
                report.trimmed.push(format!("{what} ({t}): {trimmed}"));
            }
            Some(t) => report
                .skipped
                .push(format!("{what}: {t} is not a filesystem lab trims")),
            None => report.skipped.push(format!("{what}: no filesystem")),
        }
        device.detach()?;
    }
    Ok(())
}

/// The partitions of an image (`partx`), or the whole image when it has no table.
pub fn regions(image: &Path) -> Result<Vec<Region>> {
    let out = Cmd::new("partx")
        .args(["-g", "-b", "-o", "NR,START,SIZE"])
        .arg(image)
        .capture()
        .context("reading the partition table (partx, from util-linux)")?;
    let size = image_size(image)?;
    if !out.success() {
        // "failed to read partition table": a filesystem on the whole disk.
        return Ok(vec![Region {
            number: 0,
            offset: 0,
            size,
        }]);
    }
    let regions = parse_partx(&out.stdout)?;
    if regions.is_empty() {
        return Ok(vec![Region {
            number: 0,
            offset: 0,
            size,
        }]);
    }
    Ok(regions)
}

/// `partx -g -b -o NR,START,SIZE` lines: number, start sector (512 bytes), size in bytes.
pub fn parse_partx(text: &str) -> Result<Vec<Region>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| -> Result<u64> {
                f.get(i)
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("partx printed {l:?}"))
            };
            Ok(Region {
                number: num(0)? as u32,
                offset: num(1)? * 512,
                size: num(2)?,
            })
        })
        .collect()
}

fn image_size(image: &Path) -> Result<u64> {
    let meta = std::fs::metadata(image).with_context(|| format!("reading {}", image.display()))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let out = Cmd::new("blockdev")
        .arg("--getsize64")
        .arg(image)
        .run()
        .with_context(|| format!("reading the size of {}", image.display()))?;
    out.stdout
        .trim()
        .parse()
        .with_context(|| format!("blockdev printed {:?}", out.stdout))
}

/// The filesystem (or other signature) type on a device, as blkid names it.
fn filesystem_type(device: &Path) -> Result<Option<String>> {
    let out = Cmd::new("blkid")
        .args(["-p", "-s", "TYPE", "-o", "value"])
        .arg(device)
        .capture()
        .context("probing a filesystem (blkid, from util-linux)")?;
    let t = out.stdout.trim();
    Ok((out.success() && !t.is_empty()).then(|| t.to_string()))
}

/// Mount, fstrim, unmount; returns fstrim's word on how much it trimmed.
fn trim_filesystem(device: &Path, fstype: &str, scratch: &Path) -> Result<String> {
    let mnt = tempfile::Builder::new()
        .prefix("mnt-")
        .tempdir_in(scratch)
        .context("creating a mount point")?;
    let mut options = String::from("nodev,nosuid,noexec");
    if fstype == "xfs" {
        // Two builds of one template share a filesystem UUID.
        options.push_str(",nouuid");
    }
    Cmd::new("mount")
        .args(["-t", fstype, "-o", &options])
        .arg(device)
        .arg(mnt.path())
        .run()
        .with_context(|| format!("mounting {} ({fstype})", device.display()))?;
    let trimmed = Cmd::new("fstrim").arg("-v").arg(mnt.path()).run();
    let unmounted = Cmd::new("umount").arg(mnt.path()).run();
    let trimmed = trimmed.context("fstrim")?;
    unmounted.with_context(|| format!("unmounting {}", mnt.path().display()))?;
    // "/mnt: 1.2 GiB (1288490188 bytes) trimmed"
    let words = trimmed.stdout.trim();
    Ok(words
        .split_once(": ")
        .map_or(words, |(_, rest)| rest)
        .to_string())
}

/// The device-mapper names of the mappings lab makes for `image`'s partitions start with
/// this: `lab-trim-<hash of the path>`, so what a killed run left is found again.
pub fn region_tag(image: &Path) -> String {
    format!(
        "lab-trim-{:08x}",
        crate::names::fnv1a(image.as_os_str().as_encoded_bytes()) & 0xffff_ffff
    )
}

pub fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// A device standing for one region of an image, taken down when dropped:
/// - a file: a loop device over the region (`--offset --sizelimit`);
/// - a block device (a thin volume): the device itself for the whole disk, a device-mapper
///   `linear` mapping for a partition. Never a loop device there: a loop device on a block
///   device takes discards only when that device takes write-zeroes, which dm-thin does
///   not (measured: fstrim says "the discard operation is not supported"); a linear
///   mapping passes discards through to the pool.
pub enum RegionDevice {
    Loop(LoopDevice),
    Whole(PathBuf),
    Linear(LinearMapping),
}

impl RegionDevice {
    /// `tag` names linear mappings (`TAG-pN`): see [`region_tag`].
    pub fn attach(image: &Path, region: Region, tag: &str) -> Result<RegionDevice> {
        if !is_block_device(image) {
            return Ok(RegionDevice::Loop(LoopDevice::attach(image, region)?));
        }
        if region.number == 0 {
            return Ok(RegionDevice::Whole(image.to_path_buf()));
        }
        Ok(RegionDevice::Linear(LinearMapping::create(
            image,
            region,
            &format!("{tag}-p{}", region.number),
        )?))
    }

    pub fn path(&self) -> &Path {
        match self {
            RegionDevice::Loop(l) => &l.path,
            RegionDevice::Whole(p) => p,
            RegionDevice::Linear(m) => &m.path,
        }
    }

    pub fn detach(self) -> Result<()> {
        match self {
            RegionDevice::Loop(l) => l.detach(),
            RegionDevice::Whole(_) => Ok(()),
            RegionDevice::Linear(m) => m.remove(),
        }
    }
}

/// A device-mapper linear mapping of one partition of a block device, removed when
/// dropped. Made without udev's help (`--noudevsync`, then `mknodes`), so it works where
/// no udev runs.
pub struct LinearMapping {
    name: String,
    path: PathBuf,
    made: bool,
}

impl LinearMapping {
    fn create(device: &Path, region: Region, name: &str) -> Result<LinearMapping> {
        if !region.offset.is_multiple_of(512) || !region.size.is_multiple_of(512) {
            bail!(
                "partition {} of {} is not in whole sectors",
                region.number,
                device.display()
            );
        }
        // A mapping of this name left by a killed run is taken down first.
        remove_mapping(name);
        let table = format!(
            "0 {} linear {} {}",
            region.size / 512,
            device.display(),
            region.offset / 512
        );
        Cmd::new("dmsetup")
            .args(["create", "--noudevsync", name, "--table", &table])
            .run()
            .with_context(|| {
                format!(
                    "mapping partition {} of {} (dmsetup, from lvm2)",
                    region.number,
                    device.display()
                )
            })?;
        let mut mapping = LinearMapping {
            name: name.to_string(),
            path: Path::new("/dev/mapper").join(name),
            made: true,
        };
        let _ = Cmd::new("dmsetup")
            .args(["mknodes", "--noudevsync", name])
            .run();
        if !mapping.path.exists() {
            let err = anyhow::anyhow!("{} did not appear", mapping.path.display());
            mapping.made = false;
            remove_mapping(name);
            return Err(err);
        }
        ui::debug(format_args!(
            "{} is partition {} of {}",
            mapping.path.display(),
            region.number,
            device.display()
        ));
        Ok(mapping)
    }

    fn remove(mut self) -> Result<()> {
        self.made = false;
        let mut last = None;
        // A filesystem just unmounted may hold the mapping a moment longer.
        for _ in 0..10 {
            match Cmd::new("dmsetup")
                .args(["remove", "--noudevsync", &self.name])
                .run()
            {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(anyhow::Error::new(last.expect("tried")))
            .with_context(|| format!("removing the mapping {}", self.name))
    }
}

impl Drop for LinearMapping {
    fn drop(&mut self) {
        if self.made {
            remove_mapping(&self.name);
        }
    }
}

/// Remove a device-mapper device by name, if there is one; errors are ignored.
pub fn remove_mapping(name: &str) {
    let _ = Cmd::new("dmsetup")
        .args(["remove", "--noudevsync", name])
        .capture();
    let _ = std::fs::remove_file(Path::new("/dev/mapper").join(name));
}

/// The device-mapper devices whose names start with `prefix` (`dmsetup ls`).
pub fn mappings_with_prefix(prefix: &str) -> Vec<String> {
    Cmd::new("dmsetup")
        .args(["ls"])
        .capture()
        .map(|c| {
            c.stdout
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(prefix))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A loop device over one region of an image, detached when dropped.
pub struct LoopDevice {
    path: PathBuf,
    attached: bool,
}

impl LoopDevice {
    fn attach(image: &Path, region: Region) -> Result<LoopDevice> {
        let out = Cmd::new("losetup")
            .args(["--find", "--show", "--offset"])
            .arg(region.offset.to_string())
            .arg("--sizelimit")
            .arg(region.size.to_string())
            .arg(image)
            .run()
            .with_context(|| {
                format!(
                    "attaching a loop device to {} (needs root and a kernel with loop devices)",
                    image.display()
                )
            })?;
        let path = PathBuf::from(out.stdout.trim());
        ui::debug(format_args!(
            "{} is {} at offset {}",
            path.display(),
            image.display(),
            region.offset
        ));
        Ok(LoopDevice {
            path,
            attached: true,
        })
    }

    fn detach(mut self) -> Result<()> {
        self.attached = false;
        Cmd::new("losetup")
            .arg("-d")
            .arg(&self.path)
            .run()
            .with_context(|| format!("detaching {}", self.path.display()))?;
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.attached {
            let _ = Cmd::new("losetup").arg("-d").arg(&self.path).run();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partx_output_gives_offsets_in_bytes() {
        // `partx -g -b -o NR,START,SIZE` on a GPT image with /boot and /.
        let text = "      1    2048 1073741824\n      2 2099200 41940975616\n";
        assert_eq!(
            parse_partx(text).unwrap(),
            [
                Region {
                    number: 1,
                    offset: 2048 * 512,
                    size: 1 << 30
                },
                Region {
                    number: 2,
                    offset: 2_099_200 * 512,
                    size: 41_940_975_616
                }
            ]
        );
        assert!(parse_partx("garbage\n").is_err());
    }

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
        let dev = LoopDevice::attach(&image, regions[0]).unwrap();
        let mnt = tempfile::tempdir().unwrap();
        Cmd::new("mount")
            .arg(&dev.path)
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
        trim_image(&image, dir.path(), &mut report).unwrap();
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
