//! The one offline-trim engine: the filesystems of a disk image that nothing runs on are
//! found with one probe and fstrimmed, so the blocks their files freed go back to the host.
//! `lab trim` uses it on a stopped VM's clone and on a base no clone depends on; sealing a
//! freshly built base (`kickstart::seal`) uses it on the base.
//!
//! How, on a host without nbd (no module loading) and without udev:
//! - an image file is exported as a raw disk by qemu-storage-daemon over FUSE (a clone's
//!   backing file stays where it is, read only; QEMU's image lock refuses an image another
//!   program has open); QEMU turns the discards into zero clusters and holes in the file;
//! - a block device (a thin volume) is used as it is, its discards going down to the pool.
//!
//! `partx` reads the partition table; each region (a partition, or the whole disk when it
//! has no table) gets a device of its own ([`RegionDevice`]); `blkid -p` names what is on
//! it; each filesystem of [`OFFLINE_FILESYSTEMS`] is mounted under the work directory,
//! fstrimmed and unmounted. What is not trimmed (no filesystem, swap, LVM inside the guest,
//! another filesystem) is reported with why. Everything is taken down again before the
//! engine returns, also on failure, and what a killed run left in its work directory is
//! recognised and cleared by the next ([`clear_leftovers`]).
//!
//! The engine mounts on the machine lab runs on, so the mount table it reads is that
//! machine's: `/proc/self/mountinfo` of the live [`Sysroot`], never a `--sysroot` tree.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::host::Sysroot;
use crate::host::blockdev::{self, MountEntry};
use crate::runner::Cmd;
use crate::{names, ui};

/// Filesystems lab mounts and fstrims offline.
pub const OFFLINE_FILESYSTEMS: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "f2fs"];

/// The `part` of a filesystem on a disk without a partition table.
pub const WHOLE_DISK: &str = "whole disk";

/// The `fstype` of a region blkid finds nothing on.
const NO_TYPE: &str = "-";

/// One filesystem trimmed (or not) offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsTrim {
    /// `whole disk` or the partition number.
    pub part: String,
    pub fstype: String,
    /// Bytes fstrim said it trimmed; None when it was not trimmed.
    pub trimmed: Option<u64>,
    /// Why it was not trimmed; None when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl FsTrim {
    /// True when it was mounted and fstrimmed (fstrim's byte count may still be missing).
    pub fn was_trimmed(&self) -> bool {
        self.note.is_none()
    }

    /// What blkid found on the region (a filesystem, swap, an LVM PV), if anything.
    pub fn signature(&self) -> Option<&str> {
        (self.fstype != NO_TYPE).then_some(self.fstype.as_str())
    }
}

/// The runtime directory of one image's offline trim: the same for the same image, so a
/// run that was killed halfway leaves what the next run recognises and clears.
pub fn offline_workdir(runtime_dir: &Path, image: &Path) -> PathBuf {
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    runtime_dir.join(format!(
        "trim-{name}-{:08x}",
        names::fnv1a(image.as_os_str().as_encoded_bytes()) & 0xffff_ffff
    ))
}

/// [`offline_fstrim`] in a work directory of its own: what a killed run left in `work` is
/// cleared first, and `work` is removed afterwards (never while anything is mounted under
/// it).
pub fn offline_fstrim_in(image: &Path, format: &str, work: &Path) -> Result<Vec<FsTrim>> {
    clear_leftovers(work)?;
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let result = offline_fstrim(image, format, work);
    let removed = remove_workdir(work);
    let filesystems = result?;
    removed?;
    Ok(filesystems)
}

/// Trim the filesystems of a disk image that nothing runs on. An image file is exported
/// raw with qemu-storage-daemon over FUSE; a block device (a thin volume) is used as it is
/// and recorded in `work/block` for [`clear_leftovers`]. Each region of it (a partition, or
/// the whole disk) then gets a device of its own (see [`RegionDevice`]), and each
/// filesystem lab knows is mounted under `work` and fstrimmed. Everything is taken down
/// again before this returns, also on failure.
pub fn offline_fstrim(image: &Path, format: &str, work: &Path) -> Result<Vec<FsTrim>> {
    if is_block_device(image) {
        let record = work.join("block");
        std::fs::write(&record, image.as_os_str().as_encoded_bytes())
            .with_context(|| format!("writing {}", record.display()))?;
        return trim_regions(image, work)
            .with_context(|| format!("trimming {} offline", image.display()));
    }
    let export = work.join("export");
    std::fs::File::create(&export).with_context(|| format!("creating {}", export.display()))?;
    let daemon = StorageDaemon::start(image, format, &export, &work.join("qsd.pid"))?;
    match trim_regions(&export, work) {
        Ok(out) => {
            daemon.stop()?;
            Ok(out)
        }
        Err(e) => {
            // Only stopped when nothing is mounted on the export any more: a daemon killed
            // under a mounted filesystem would lose what the kernel has not written yet.
            if !mounted_under(work) {
                let _ = daemon.stop();
            } else {
                std::mem::forget(daemon);
            }
            Err(e).with_context(|| format!("trimming {} offline", image.display()))
        }
    }
}

/// fstrim each filesystem of a raw disk (a file or a block device), region by region.
fn trim_regions(disk: &Path, work: &Path) -> Result<Vec<FsTrim>> {
    let mut out = Vec::new();
    for (i, region) in regions(disk)?.into_iter().enumerate() {
        let part = if region.number == 0 {
            WHOLE_DISK.to_string()
        } else {
            format!("partition {}", region.number)
        };
        let dev = RegionDevice::attach(disk, region, &region_tag(disk))?;
        let trimmed = trim_filesystem(&part, dev.path(), &work.join(format!("mnt{i}")));
        let detached = dev.detach();
        out.push(trimmed?);
        detached?;
    }
    Ok(out)
}

/// Mount one filesystem, fstrim it, unmount it.
fn trim_filesystem(part: &str, node: &Path, mnt: &Path) -> Result<FsTrim> {
    let fstype = probe_fstype(node)?;
    let skip = |note: &str| FsTrim {
        part: part.to_string(),
        fstype: fstype.clone().unwrap_or_else(|| NO_TYPE.into()),
        trimmed: None,
        note: Some(note.to_string()),
    };
    let Some(fs) = fstype.as_deref() else {
        return Ok(skip("no filesystem"));
    };
    if fs == "LVM2_member" {
        return Ok(skip(
            "LVM inside the guest: not opened on the host (trim it running, through its guest agent)",
        ));
    }
    if fs == "swap" {
        return Ok(skip("swap"));
    }
    if !OFFLINE_FILESYSTEMS.contains(&fs) {
        return Ok(skip(&format!("{fs}: not trimmed offline")));
    }
    std::fs::create_dir_all(mnt).with_context(|| format!("creating {}", mnt.display()))?;
    // Nothing on the guest's filesystem is to run or be opened as a device on the host.
    let mut options = vec!["nodev", "nosuid", "noexec", "noatime"];
    if fs == "xfs" {
        // Every clone of one base, and two builds of one template, carry the same
        // filesystem UUID.
        options.push("nouuid");
    }
    Cmd::new("mount")
        .args(["-t", fs, "-o", &options.join(",")])
        .arg(node)
        .arg(mnt)
        .run()
        .with_context(|| format!("mounting the {fs} filesystem of {part}"))?;
    let trimmed = Cmd::new("fstrim").arg("-v").arg(mnt).run();
    let unmounted = unmount(mnt);
    let trimmed = trimmed.with_context(|| format!("fstrim of the {fs} filesystem of {part}"))?;
    unmounted?;
    Ok(FsTrim {
        part: part.to_string(),
        fstype: fs.to_string(),
        trimmed: parse_fstrim(&trimmed.stdout),
        note: None,
    })
}

fn unmount(mnt: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..10 {
        match Cmd::new("umount").arg(mnt).run() {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last.expect("tried")).with_context(|| format!("unmounting {}", mnt.display()))
}

/// The one filesystem probe: the type blkid finds on a device (a filesystem, `swap`,
/// `LVM2_member`...); None when it finds none.
fn probe_fstype(node: &Path) -> Result<Option<String>> {
    let out = Cmd::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(node)
        .capture()
        .context("probing a filesystem with blkid")?;
    // blkid exits 2 when it finds nothing.
    if out.code == Some(2) {
        return Ok(None);
    }
    if !out.success() {
        bail!("blkid -p {} failed: {}", node.display(), out.stderr.trim());
    }
    let t = out.stdout.trim();
    Ok((!t.is_empty()).then(|| t.to_string()))
}

/// `fstrim -v` prints `/mnt: 229.9 MiB (241067008 bytes) trimmed`: the byte count.
pub fn parse_fstrim(stdout: &str) -> Option<u64> {
    let open = stdout.rfind('(')?;
    let rest = &stdout[open + 1..];
    let (n, _) = rest.split_once(" bytes)")?;
    n.trim().parse().ok()
}

/// The mounts of the machine lab runs on (empty when the table cannot be read).
fn live_mounts() -> Vec<MountEntry> {
    Sysroot::live()
        .read_opt("/proc/self/mountinfo")
        .map(|text| blockdev::parse_mountinfo(&text))
        .unwrap_or_default()
}

/// True when something is mounted at or under `dir`.
fn mounted_under(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    live_mounts()
        .iter()
        .any(|m| m.mount_point.starts_with(&dir))
}

/// qemu-storage-daemon exporting one image as a raw disk over FUSE, writable, discards
/// passed down to the image file. QEMU takes its image lock: an image another program
/// has open (a VM lab does not know of, qemu-img, qemu-nbd) is refused before anything
/// changes.
struct StorageDaemon {
    pid: i32,
    image: PathBuf,
    export: PathBuf,
}

impl StorageDaemon {
    fn start(image: &Path, format: &str, export: &Path, pidfile: &Path) -> Result<StorageDaemon> {
        let file = serde_json::json!({
            "driver": "file", "node-name": "lab-file", "filename": image,
            "discard": "unmap", "aio": "threads",
        });
        let disk = serde_json::json!({
            "driver": format, "node-name": "lab-disk", "file": "lab-file", "discard": "unmap",
        });
        let fuse = serde_json::json!({
            "type": "fuse", "id": "lab-export", "node-name": "lab-disk",
            "mountpoint": export, "writable": true,
        });
        let out = Cmd::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(file.to_string())
            .arg("--blockdev")
            .arg(disk.to_string())
            .arg("--export")
            .arg(fuse.to_string())
            .arg("--pidfile")
            .arg(pidfile)
            .arg("--daemonize")
            .run();
        if let Err(e) = out {
            if e.is_not_found() {
                bail!(
                    "qemu-storage-daemon is not installed: install qemu-system-common \
                     (Fedora: qemu-img)"
                );
            }
            let text = e.to_string();
            if text.contains("lock") {
                bail!(
                    "{} is open in another program (its QEMU image lock is held: a VM lab \
                     does not know of, qemu-img, qemu-nbd...): left alone, nothing changed",
                    image.display()
                );
            }
            if !Path::new("/dev/fuse").exists() {
                return Err(e).with_context(|| {
                    format!(
                        "exporting {} over FUSE: there is no /dev/fuse (`modprobe fuse`)",
                        image.display()
                    )
                });
            }
            return Err(e).with_context(|| format!("exporting {}", image.display()));
        }
        let pid = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .with_context(|| format!("reading {}", pidfile.display()))?;
        Ok(StorageDaemon {
            pid,
            image: image.to_path_buf(),
            export: export.to_path_buf(),
        })
    }

    /// SIGTERM (QEMU flushes the image and removes the export), then wait for the end.
    fn stop(self) -> Result<()> {
        stop_process(self.pid, Duration::from_secs(30))
            .with_context(|| format!("stopping the export of {}", self.image.display()))?;
        unmount_dead_export(&self.export)
    }
}

/// A FUSE export whose daemon is gone can stay mounted ("transport endpoint is not
/// connected"); with no daemon behind it nothing is in flight, and it is unmounted.
fn unmount_dead_export(export: &Path) -> Result<()> {
    let mounted = live_mounts().iter().any(|m| m.mount_point == export);
    if mounted {
        ui::debug(format_args!(
            "lab: {} is still mounted with its daemon gone",
            export.display()
        ));
        unmount(export)?;
    }
    Ok(())
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn stop_process(pid: i32, patience: Duration) -> Result<()> {
    // SAFETY: plain kill(2) on a pid lab read from the daemon's own pid file.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + patience;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            bail!("process {pid} did not end within {} s", patience.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Take down what a killed offline trim left in `work`: its mounts, its loop devices and
/// its qemu-storage-daemon, in that order; then the directory.
pub fn clear_leftovers(work: &Path) -> Result<()> {
    if !work.exists() {
        return Ok(());
    }
    ui::debug(format_args!(
        "lab: clearing what an interrupted trim left in {}",
        work.display()
    ));
    for entry in std::fs::read_dir(work)?.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with("mnt") && mounted_under(&path) {
            unmount(&path)?;
        }
    }
    let export = work.join("export");
    // The loop device stands on the export, or on the block device recorded in `block`.
    let backing = match std::fs::read(work.join("block")) {
        Ok(bytes) if !bytes.is_empty() => Some(PathBuf::from(
            <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes),
        )),
        _ => export.exists().then(|| export.clone()),
    };
    // Partition mappings of a block device (see RegionDevice).
    if let Ok(bytes) = std::fs::read(work.join("block"))
        && !bytes.is_empty()
    {
        let device =
            PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes));
        for name in mappings_with_prefix(&region_tag(&device)) {
            remove_mapping(&name);
        }
    }
    if let Some(backing) = &backing
        && let Ok(out) = Cmd::new("losetup")
            .args(["--noheadings", "--output", "NAME", "--associated"])
            .arg(backing)
            .run()
    {
        for dev in out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            Cmd::new("losetup")
                .args(["-d", dev])
                .run()
                .with_context(|| format!("detaching {dev}, left by an interrupted trim"))?;
        }
    }
    if let Some(pid) = std::fs::read_to_string(work.join("qsd.pid"))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    {
        let cmdline =
            std::fs::read(Sysroot::live().path(format!("/proc/{pid}/cmdline"))).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("qemu-storage-daemon")
            && cmdline.contains(&export.display().to_string())
        {
            stop_process(pid, Duration::from_secs(30))?;
        }
    }
    // The daemon is gone (stopped above, or died): no export can still be served.
    unmount_dead_export(&export)?;
    remove_workdir(work)
}

/// Remove an offline trim's directory, never while anything is mounted under it: a
/// recursive removal would go on into the guest's filesystem.
fn remove_workdir(work: &Path) -> Result<()> {
    if mounted_under(work) {
        bail!(
            "{} still has something mounted under it (a guest filesystem or the export): \
             left as it is; unmount it (`umount -R {}`) and run lab trim again",
            work.display(),
            work.display()
        );
    }
    match std::fs::remove_dir_all(work) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", work.display()))
        }
        _ => Ok(()),
    }
}

/// One region of an image: a partition, or the whole image when it has no table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Partition number; 0 for the whole image.
    pub number: u32,
    pub offset: u64,
    pub size: u64,
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
fn parse_partx(text: &str) -> Result<Vec<Region>> {
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

/// The device-mapper names of the mappings lab makes for `image`'s partitions start with
/// this: `lab-trim-<hash of the path>`, so what a killed run left is found again.
fn region_tag(image: &Path) -> String {
    format!(
        "lab-trim-{:08x}",
        crate::names::fnv1a(image.as_os_str().as_encoded_bytes()) & 0xffff_ffff
    )
}

fn is_block_device(path: &Path) -> bool {
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
fn remove_mapping(name: &str) {
    let _ = Cmd::new("dmsetup")
        .args(["remove", "--noudevsync", name])
        .capture();
    let _ = std::fs::remove_file(Path::new("/dev/mapper").join(name));
}

/// The device-mapper devices whose names start with `prefix` (`dmsetup ls`).
fn mappings_with_prefix(prefix: &str) -> Vec<String> {
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

    #[test]
    fn fstrim_output_gives_the_bytes() {
        assert_eq!(
            parse_fstrim("/tmp/x/mnt0: 229.9 MiB (241067008 bytes) trimmed\n"),
            Some(241_067_008)
        );
        assert_eq!(parse_fstrim("/m (1): 0 B (0 bytes) trimmed"), Some(0));
        assert_eq!(parse_fstrim("nonsense"), None);
    }

    #[test]
    fn a_workdir_with_something_mounted_is_never_removed() {
        // As root (CI, setup-host.sh): a tmpfs stands for a guest filesystem left mounted.
        let work = tempfile::tempdir().unwrap();
        let mnt = work.path().join("mnt0");
        std::fs::create_dir(&mnt).unwrap();
        Cmd::new("mount")
            .args(["-t", "tmpfs", "lab-test", mnt.to_str().unwrap()])
            .run()
            .expect("mounting a tmpfs (tests run as root)");
        std::fs::write(mnt.join("guest-file"), "precious").unwrap();
        let err = remove_workdir(work.path()).unwrap_err();
        let kept = std::fs::read_to_string(mnt.join("guest-file"));
        Cmd::new("umount").arg(&mnt).run().unwrap();
        assert!(
            format!("{err:#}").contains("still has something mounted"),
            "{err:#}"
        );
        assert_eq!(kept.unwrap(), "precious");
        // Nothing mounted: removed, and clearing it again is no error.
        remove_workdir(work.path()).unwrap();
        assert!(!work.path().exists());
        clear_leftovers(work.path()).unwrap();
    }

    #[test]
    fn an_offline_workdir_is_the_same_for_the_same_image() {
        let a = offline_workdir(Path::new("/run/lab"), Path::new("/img/lab-t-node1.qcow2"));
        assert_eq!(
            a,
            offline_workdir(Path::new("/run/lab"), Path::new("/img/lab-t-node1.qcow2"))
        );
        assert!(a.starts_with("/run/lab"));
        assert!(a.to_string_lossy().contains("trim-lab-t-node1.qcow2-"));
        assert_ne!(
            a,
            offline_workdir(Path::new("/run/lab"), Path::new("/other/lab-t-node1.qcow2"))
        );
    }
}
