//! From a path (directory, file or block device) to the real disks under it.
//!
//! The walk: the path's mount in `/proc/self/mountinfo` (longest mount-point prefix; live,
//! `stat`'s `st_dev` is preferred because it is right even under bind mounts), its
//! `MAJ:MIN` in `/sys/dev/block`, then down the stack: a partition to its disk, a loop
//! device to the filesystem of its backing file, device-mapper and md to each of their
//! `slaves/`. What is left are the disks whose `queue/rotational` and discard limits decide
//! whether a lab is fast and whether freed blocks go back to the SSD.
//!
//! Everything is read through [`Sysroot`], so a fixture tree can describe any laptop.
//! Sysfs symlinks in such a tree must be relative (as the kernel's are) so they resolve
//! inside it.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use super::Sysroot;

/// Loop devices on files on loop devices, dm over md over partitions: deep enough for any
/// real stack, and a stop for a cyclic fixture.
const MAX_DEPTH: usize = 12;

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountEntry {
    pub major: u32,
    pub minor: u32,
    /// The mounted directory of the source filesystem (not `/` for bind mounts, btrfs
    /// subvolumes).
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Parse mountinfo (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE
/// SOURCE SUPEROPTS`. Lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if sep < 6 || fields.len() < sep + 3 {
        return None;
    }
    let (major, minor) = parse_devnum(fields[2])?;
    Some(MountEntry {
        major,
        minor,
        root: unescape_octal(fields[3]),
        mount_point: PathBuf::from(unescape_octal(fields[4])),
        fstype: unescape_octal(fields[sep + 1]),
        source: unescape_octal(fields[sep + 2]),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `"259:2"` → `(259, 2)`.
pub fn parse_devnum(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The mount holding `path`: the longest mount point that is a prefix of it (whole path
/// components), the later line winning a tie because it is mounted on top.
pub fn mount_for<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let mut best: Option<&MountEntry> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point) {
            let longer = best.is_none_or(|b| {
                m.mount_point.components().count() >= b.mount_point.components().count()
            });
            if longer {
                best = Some(m);
            }
        }
    }
    best
}

/// `a/./b/../c` → `a/c`, without touching the filesystem (a sysroot path cannot be
/// canonicalised against the host).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// One real disk at the bottom of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// Kernel name: `nvme0n1`, `sda`, `vda`.
    pub name: String,
    /// `MAJ:MIN`.
    pub dev: String,
    /// `queue/rotational`: true for spinning disks (and for many virtual disks, which
    /// report rotational by default).
    pub rotational: Option<bool>,
    /// `queue/discard_max_bytes`: 0 means the disk takes no discard (TRIM/UNMAP).
    pub discard_max_bytes: Option<u64>,
    pub discard_granularity: Option<u64>,
    /// `device/model`, trimmed.
    pub model: Option<String>,
    pub size_bytes: Option<u64>,
    /// The kernel driver of the disk's device (`nvme`, `sd`, `virtio_blk`, `uas`).
    pub driver: Option<String>,
}

impl Disk {
    pub fn supports_discard(&self) -> Option<bool> {
        self.discard_max_bytes.map(|b| b > 0)
    }

    /// Virtual disks say rotational unless the hypervisor says otherwise.
    pub fn is_virtual(&self) -> bool {
        matches!(
            self.driver.as_deref(),
            Some("virtio_blk" | "virtio_scsi" | "xen_blkfront" | "vmw_pvscsi" | "hv_storvsc")
        )
    }
}

impl fmt::Display for Disk {
    /// `nvme0n1 (SAMSUNG MZVL2512HCJQ-00B00, 512.1 GB)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(model) = &self.model {
            parts.push(model.clone());
        } else if let Some(driver) = &self.driver {
            parts.push(driver.clone());
        }
        if let Some(size) = self.size_bytes {
            parts.push(human_decimal(size));
        }
        if parts.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{} ({})", self.name, parts.join(", "))
        }
    }
}

/// Disk sizes the way disk labels print them: decimal units.
pub fn human_decimal(bytes: u64) -> String {
    let units = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (unit, factor) in units {
        if bytes as f64 >= factor {
            return format!("{:.1} {unit}", bytes as f64 / factor);
        }
    }
    format!("{bytes} B")
}

/// What lies under one path: the mount, the block device, the layers and the disks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlockStack {
    /// The path asked about.
    pub requested: PathBuf,
    /// The path actually looked up: the nearest existing ancestor when `requested` does
    /// not exist yet.
    pub measured_at: PathBuf,
    /// True when the path is itself a block device (a PV, `--storage /dev/sdb`).
    pub block_device: bool,
    pub mount_point: Option<PathBuf>,
    pub fstype: Option<String>,
    /// The block device the filesystem is on (or the device given), by kernel name.
    pub device: Option<String>,
    /// `MAJ:MIN` of `device`.
    pub dev: Option<String>,
    /// The layers from `device` down, in words: `nvme0n1p2 (partition of nvme0n1)`.
    pub layers: Vec<String>,
    pub disks: Vec<Disk>,
    /// What could not be followed, and why.
    pub notes: Vec<String>,
}

impl BlockStack {
    pub fn exists(&self) -> bool {
        self.requested == self.measured_at
    }

    /// `/var/lib (ext4 on nvme0n1p2)`.
    pub fn describe_place(&self) -> String {
        let at = self.measured_at.display();
        match (&self.fstype, &self.device) {
            (Some(fs), Some(dev)) => format!("{at} ({fs} on {dev})"),
            (None, Some(dev)) => format!("{at} (block device {dev})"),
            (Some(fs), None) => format!("{at} ({fs})"),
            (None, None) => at.to_string(),
        }
    }

    /// The `/dev` node to read for a live throughput probe: the path itself when it is a
    /// block device, else the filesystem's device.
    pub fn device_node(&self) -> Option<PathBuf> {
        if self.block_device {
            return Some(self.measured_at.clone());
        }
        self.device
            .as_ref()
            .map(|name| Path::new("/dev").join(name))
    }

    /// The directory a scratch file can go in: none for a block device.
    pub fn scratch_dir(&self) -> Option<PathBuf> {
        if self.block_device {
            None
        } else if self.measured_at.is_dir() {
            Some(self.measured_at.clone())
        } else {
            self.measured_at.parent().map(Path::to_path_buf)
        }
    }
}

/// The nearest ancestor of `path` (itself included) that exists on `sysroot`.
pub fn nearest_existing(sysroot: &Sysroot, path: &Path) -> PathBuf {
    let mut candidate = path.to_path_buf();
    loop {
        let exists = if sysroot.is_live() {
            candidate.exists()
        } else {
            sysroot.path(&candidate).exists()
        };
        if exists || !candidate.pop() {
            return if candidate.as_os_str().is_empty() {
                PathBuf::from("/")
            } else {
                candidate
            };
        }
    }
}

/// Follow `path` down to its disks. Never fails: what cannot be read becomes a note.
pub fn resolve_path(sysroot: &Sysroot, path: &Path) -> BlockStack {
    resolve_at_depth(sysroot, path, 0)
}

fn resolve_at_depth(sysroot: &Sysroot, path: &Path, depth: usize) -> BlockStack {
    let requested = if path.is_absolute() {
        normalize(path)
    } else if sysroot.is_live() {
        std::path::absolute(path)
            .map(|p| normalize(&p))
            .unwrap_or_else(|_| normalize(path))
    } else {
        normalize(path)
    };
    // A block device named directly (--storage /dev/sdb, a PV). A fixture tree has no
    // device nodes, so in a sysroot the name alone is looked up in /sys.
    if !sysroot.is_live()
        && let Some(devnum) = block_device_number(sysroot, &requested)
    {
        let mut stack = BlockStack {
            requested: requested.clone(),
            measured_at: requested,
            block_device: true,
            ..BlockStack::default()
        };
        walk_from_devnum(sysroot, devnum, depth, &mut stack);
        return stack;
    }
    let existing = nearest_existing(sysroot, &requested);
    let lookup = if sysroot.is_live() {
        existing.canonicalize().unwrap_or_else(|_| existing.clone())
    } else {
        existing.clone()
    };
    let mut stack = BlockStack {
        requested: requested.clone(),
        measured_at: lookup.clone(),
        ..BlockStack::default()
    };
    if depth > MAX_DEPTH {
        stack.notes.push(format!(
            "stopped following {} after {MAX_DEPTH} layers",
            requested.display()
        ));
        return stack;
    }

    if let Some(devnum) = block_device_number(sysroot, &lookup) {
        stack.block_device = true;
        walk_from_devnum(sysroot, devnum, depth, &mut stack);
        return stack;
    }

    let mounts = match sysroot.read("/proc/self/mountinfo") {
        Ok(text) => parse_mountinfo(&text),
        Err(e) => {
            stack
                .notes
                .push(format!("cannot read /proc/self/mountinfo: {e}"));
            Vec::new()
        }
    };
    let mount = mount_for(&mounts, &lookup).cloned();
    if let Some(m) = &mount {
        stack.mount_point = Some(m.mount_point.clone());
        stack.fstype = Some(m.fstype.clone());
    }

    let mut candidates: Vec<(u32, u32)> = Vec::new();
    if sysroot.is_live()
        && let Some(devnum) = live_st_dev(&lookup)
    {
        candidates.push(devnum);
    }
    if let Some(m) = &mount {
        candidates.push((m.major, m.minor));
        if m.source.starts_with("/dev/")
            && let Some(devnum) = block_device_number(sysroot, Path::new(&m.source))
        {
            candidates.push(devnum);
        }
    }
    match candidates
        .into_iter()
        .find(|&d| sys_dev_dir(sysroot, d).is_some())
    {
        Some(devnum) => walk_from_devnum(sysroot, devnum, depth, &mut stack),
        None => match &mount {
            Some(m) => stack.notes.push(not_a_block_device(m)),
            None => stack.notes.push(format!(
                "no mount in /proc/self/mountinfo holds {}",
                lookup.display()
            )),
        },
    }
    stack
}

fn not_a_block_device(m: &MountEntry) -> String {
    let what = match m.fstype.as_str() {
        "tmpfs" | "ramfs" => "memory, not a disk".to_string(),
        "nfs" | "nfs4" | "cifs" | "smb3" | "sshfs" | "fuse.sshfs" | "9p" | "virtiofs" => {
            "a network or host share, not a local disk".to_string()
        }
        "overlay" => "an overlay whose layers lab cannot follow".to_string(),
        _ if m.major != 0 => format!(
            "on device {}:{} ({}), which has no /sys/dev/block entry to follow",
            m.major, m.minor, m.source
        ),
        _ => format!("not on a block device lab can find (source {})", m.source),
    };
    format!("{} at {} is {what}", m.fstype, m.mount_point.display())
}

fn live_st_dev(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    Some((libc::major(dev), libc::minor(dev)))
}

/// The device number when `path` names a block device: live by `stat`, in a sysroot by
/// its name (`/dev/sdb1`, `/dev/mapper/vg-lv`, `/dev/vg/lv`) looked up in `/sys`.
pub fn block_device_number(sysroot: &Sysroot, path: &Path) -> Option<(u32, u32)> {
    if sysroot.is_live() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = std::fs::metadata(path).ok()?;
        return if meta.file_type().is_block_device() {
            let rdev = meta.rdev();
            Some((libc::major(rdev), libc::minor(rdev)))
        } else {
            None
        };
    }
    let rel = path.strip_prefix("/dev").ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let dm_name = match parts.as_slice() {
        [name] => return parse_devnum(&sysroot.read_attr(format!("/sys/class/block/{name}/dev"))?),
        [mapper, name] if mapper == "mapper" => name.clone(),
        // /dev/VG/LV is /dev/mapper/VG-LV with dashes inside names doubled.
        [vg, lv] => format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--")),
        _ => return None,
    };
    let entries = std::fs::read_dir(sysroot.path("/sys/block")).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if sysroot
            .read_attr(format!("/sys/block/{name}/dm/name"))
            .as_deref()
            == Some(&dm_name)
        {
            return parse_devnum(&sysroot.read_attr(format!("/sys/block/{name}/dev"))?);
        }
    }
    None
}

/// `/sys/dev/block/MAJ:MIN`, resolved to its real directory, when it stays inside the
/// sysroot.
fn sys_dev_dir(sysroot: &Sysroot, (major, minor): (u32, u32)) -> Option<PathBuf> {
    let link = sysroot.path(format!("/sys/dev/block/{major}:{minor}"));
    inside(sysroot, link.canonicalize().ok()?)
}

fn inside(sysroot: &Sysroot, dir: PathBuf) -> Option<PathBuf> {
    if dir.starts_with(sysroot.root()) && dir.is_dir() {
        Some(dir)
    } else {
        None
    }
}

fn attr(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

fn attr_u64(dir: &Path, name: &str) -> Option<u64> {
    attr(dir, name)?.parse().ok()
}

fn kernel_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn walk_from_devnum(sysroot: &Sysroot, devnum: (u32, u32), depth: usize, stack: &mut BlockStack) {
    let (major, minor) = devnum;
    stack.dev = Some(format!("{major}:{minor}"));
    match sys_dev_dir(sysroot, devnum) {
        Some(dir) => {
            stack.device = Some(kernel_name(&dir));
            walk(sysroot, &dir, depth, stack);
        }
        None => stack.notes.push(format!(
            "no /sys/dev/block/{major}:{minor}: cannot follow the device"
        )),
    }
}

/// One layer of the stack at sysfs directory `dir`.
fn walk(sysroot: &Sysroot, dir: &Path, depth: usize, stack: &mut BlockStack) {
    let name = kernel_name(dir);
    if depth > MAX_DEPTH {
        stack
            .notes
            .push(format!("stopped at {name}: more than {MAX_DEPTH} layers"));
        return;
    }
    if dir.join("partition").exists() {
        let parent = dir.parent().map(Path::to_path_buf);
        match parent.and_then(|p| inside(sysroot, p)) {
            Some(parent) => {
                stack
                    .layers
                    .push(format!("{name} (partition of {})", kernel_name(&parent)));
                walk(sysroot, &parent, depth + 1, stack);
            }
            None => stack
                .notes
                .push(format!("{name} is a partition of a disk lab cannot find")),
        }
        return;
    }
    if dir.join("loop").is_dir() {
        match attr(dir, "loop/backing_file") {
            Some(file) => {
                // The kernel marks a backing file removed after losetup with " (deleted)".
                let file = file.strip_suffix(" (deleted)").unwrap_or(&file).to_string();
                stack.layers.push(format!("{name} (loop device on {file})"));
                let below = resolve_at_depth(sysroot, Path::new(&file), depth + 1);
                absorb(stack, below);
            }
            None => stack
                .notes
                .push(format!("{name} is a loop device with no backing file")),
        }
        return;
    }
    let slaves = list_dir(&dir.join("slaves"));
    if !slaves.is_empty() {
        let kind = if let Some(dm) = attr(dir, "dm/name") {
            format!("device-mapper {dm}")
        } else if let Some(level) = attr(dir, "md/level") {
            format!("md {level}")
        } else {
            "stacked device".to_string()
        };
        stack
            .layers
            .push(format!("{name} ({kind} over {})", slaves.join(", ")));
        for slave in slaves {
            let by_name = sysroot
                .path(format!("/sys/class/block/{slave}"))
                .canonicalize()
                .ok()
                .and_then(|d| inside(sysroot, d));
            let by_link = || {
                dir.join("slaves")
                    .join(&slave)
                    .canonicalize()
                    .ok()
                    .and_then(|d| inside(sysroot, d))
            };
            match by_name.or_else(by_link) {
                Some(slave_dir) => walk(sysroot, &slave_dir, depth + 1, stack),
                None => stack
                    .notes
                    .push(format!("{name}: cannot find its slave {slave} in /sys")),
            }
        }
        return;
    }
    if attr(dir, "dev").is_some_and(|d| d.starts_with("7:")) {
        // Loop devices are major 7; one without loop/ has no file bound to it.
        stack
            .notes
            .push(format!("{name} is a loop device with no backing file"));
        return;
    }
    let disk = read_disk(dir);
    if !stack
        .disks
        .iter()
        .any(|d| d.dev == disk.dev && d.name == disk.name)
    {
        stack.disks.push(disk);
    }
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Merge what a loop device's backing file sits on into the loop device's stack.
fn absorb(stack: &mut BlockStack, below: BlockStack) {
    let place = below.describe_place();
    if below.disks.is_empty() && below.layers.is_empty() {
        stack.layers.push(format!("backing file in {place}"));
    } else {
        stack.layers.push(format!("backing file in {place}"));
        stack.layers.extend(below.layers);
    }
    stack.notes.extend(below.notes);
    for disk in below.disks {
        if !stack
            .disks
            .iter()
            .any(|d| d.dev == disk.dev && d.name == disk.name)
        {
            stack.disks.push(disk);
        }
    }
}

fn read_disk(dir: &Path) -> Disk {
    let driver = attr(dir, "device/uevent").and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("DRIVER=").map(str::to_string))
    });
    Disk {
        name: kernel_name(dir),
        dev: attr(dir, "dev").unwrap_or_default(),
        rotational: attr(dir, "queue/rotational").map(|v| v == "1"),
        discard_max_bytes: attr_u64(dir, "queue/discard_max_bytes"),
        discard_granularity: attr_u64(dir, "queue/discard_granularity"),
        model: attr(dir, "device/model").filter(|m| !m.is_empty()),
        size_bytes: attr_u64(dir, "size").map(|sectors| sectors * 512),
        driver,
    }
}

/// The disks of several stacks, each once.
pub fn union_disks<'a>(stacks: impl IntoIterator<Item = &'a BlockStack>) -> Vec<Disk> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for stack in stacks {
        for disk in &stack.disks {
            if seen.insert((disk.name.clone(), disk.dev.clone())) {
                out.push(disk.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's mountinfo, as read on the development VM.
    const REAL_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334492k,nr_inodes=3083623,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
29 26 0:26 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k
";

    #[test]
    fn parses_real_mountinfo() {
        let mounts = parse_mountinfo(REAL_MOUNTINFO);
        assert_eq!(mounts.len(), 8);
        let root = &mounts[5];
        assert_eq!((root.major, root.minor), (254, 0));
        assert_eq!(root.mount_point, Path::new("/"));
        assert_eq!(root.fstype, "ext4");
        assert_eq!(root.source, "/dev/vda");
    }

    #[test]
    fn longest_prefix_wins_and_later_mounts_cover_earlier_ones() {
        let mounts = parse_mountinfo(REAL_MOUNTINFO);
        let m = mount_for(&mounts, Path::new("/var/lib/lab/images")).unwrap();
        assert_eq!(m.mount_point, Path::new("/"));
        let m = mount_for(&mounts, Path::new("/dev/shm/x")).unwrap();
        assert_eq!((m.major, m.minor), (0, 27), "the later /dev/shm is on top");
        // Whole components only: /devices is not under /dev.
        let m = mount_for(&mounts, Path::new("/devices")).unwrap();
        assert_eq!(m.mount_point, Path::new("/"));
    }

    #[test]
    fn octal_escapes_in_mount_points_are_decoded() {
        let line = "40 27 8:17 / /media/My\\040Disk rw - ext4 /dev/sdb1 rw\n";
        let mounts = parse_mountinfo(line);
        assert_eq!(mounts[0].mount_point, Path::new("/media/My Disk"));
        assert_eq!(unescape_octal("a\\134b"), "a\\b");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn optional_fields_before_the_separator_are_skipped() {
        let line = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue";
        let m = parse_mountinfo(line).remove(0);
        assert_eq!(m.root, "/mnt1");
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert!(parse_mountinfo("garbage line\n").is_empty());
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c/")), Path::new("/a/c"));
        assert_eq!(normalize(Path::new("/../..")), Path::new("/"));
    }

    #[test]
    fn live_root_resolves_to_a_disk() {
        // Every machine lab runs on has its root on something; here it is /dev/vda.
        let stack = resolve_path(&Sysroot::live(), Path::new("/"));
        assert!(stack.mount_point.is_some(), "{stack:?}");
        if stack.fstype.as_deref() != Some("overlay") && stack.fstype.as_deref() != Some("tmpfs") {
            assert!(!stack.disks.is_empty(), "{stack:?}");
            assert!(stack.disks[0].rotational.is_some(), "{stack:?}");
        }
    }

    fn fixture(name: &str) -> Sysroot {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts")
            .join(name);
        Sysroot::at(&dir).unwrap()
    }

    fn names(disks: &[Disk]) -> Vec<&str> {
        disks.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn ssd_partition_leads_to_the_nvme_disk() {
        let stack = resolve_path(&fixture("storage-ssd"), Path::new("/var/lib/lab/images"));
        assert_eq!(stack.requested, Path::new("/var/lib/lab/images"));
        assert_eq!(stack.measured_at, Path::new("/var/lib"));
        assert!(!stack.exists());
        assert_eq!(stack.mount_point.as_deref(), Some(Path::new("/")));
        assert_eq!(stack.device.as_deref(), Some("nvme0n1p2"));
        assert_eq!(stack.dev.as_deref(), Some("259:2"));
        assert_eq!(stack.layers, ["nvme0n1p2 (partition of nvme0n1)"]);
        let disk = &stack.disks[0];
        assert_eq!(names(&stack.disks), ["nvme0n1"]);
        assert_eq!(disk.rotational, Some(false));
        assert_eq!(disk.discard_max_bytes, Some(2_199_023_255_040));
        assert_eq!(disk.discard_granularity, Some(512));
        assert_eq!(disk.model.as_deref(), Some("SAMSUNG MZVL2512HCJQ-00B00"));
        assert_eq!(disk.size_bytes, Some(1_000_215_216 * 512));
        assert!(stack.notes.is_empty(), "{:?}", stack.notes);
    }

    #[test]
    fn hdd_has_no_discard() {
        let stack = resolve_path(&fixture("storage-hdd"), Path::new("/srv/lab"));
        assert!(stack.exists());
        let disk = &stack.disks[0];
        assert_eq!(names(&stack.disks), ["sda"]);
        assert_eq!(disk.rotational, Some(true));
        assert_eq!(disk.supports_discard(), Some(false));
        assert_eq!(disk.driver.as_deref(), Some("sd"));
        assert_eq!(disk.model.as_deref(), Some("ST1000LM035-1RK1"));
    }

    #[test]
    fn a_loop_device_is_followed_to_the_disk_under_its_backing_file() {
        let stack = resolve_path(
            &fixture("storage-loop-on-ssd"),
            Path::new("/var/lib/lab/images"),
        );
        assert_eq!(stack.device.as_deref(), Some("loop0"));
        assert_eq!(
            stack.mount_point.as_deref(),
            Some(Path::new("/var/lib/lab"))
        );
        assert_eq!(
            stack.layers,
            [
                "loop0 (loop device on /home/alice/lab-disk.img)",
                "backing file in /home/alice/lab-disk.img (ext4 on nvme0n1p3)",
                "nvme0n1p3 (partition of nvme0n1)",
            ]
        );
        // The loop device itself says rotational; the disk that holds its file does not.
        assert_eq!(names(&stack.disks), ["nvme0n1"]);
        assert_eq!(stack.disks[0].rotational, Some(false));
    }

    #[test]
    fn device_mapper_over_two_disks_reports_both() {
        let root = fixture("storage-dm-two-disks");
        let stack = resolve_path(&root, Path::new("/home/alice/lab"));
        assert_eq!(stack.device.as_deref(), Some("dm-1"));
        assert_eq!(
            stack.layers[0],
            "dm-1 (device-mapper vg0-home over sda2, sdb1)"
        );
        assert_eq!(names(&stack.disks), ["sda", "sdb"]);
        assert_eq!(stack.disks[0].rotational, Some(false));
        assert_eq!(stack.disks[1].rotational, Some(true));
        let root_fs = resolve_path(&root, Path::new("/"));
        assert_eq!(names(&root_fs.disks), ["sda"]);
    }

    #[test]
    fn device_names_are_found_in_a_sysroot_without_device_nodes() {
        let root = fixture("storage-dm-two-disks");
        let num = |p: &str| block_device_number(&root, Path::new(p));
        assert_eq!(num("/dev/mapper/vg0-home"), Some((253, 1)));
        assert_eq!(num("/dev/vg0/root"), Some((253, 0)));
        assert_eq!(num("/dev/sdb1"), Some((8, 17)));
        assert_eq!(num("/dev/sdz"), None);
        assert_eq!(num("/home/alice"), None);
        let pv = resolve_path(&root, Path::new("/dev/sdb1"));
        assert!(pv.block_device);
        assert_eq!(pv.device.as_deref(), Some("sdb1"));
        assert_eq!(names(&pv.disks), ["sdb"]);
        assert_eq!(pv.device_node().as_deref(), Some(Path::new("/dev/sdb1")));
        assert_eq!(pv.scratch_dir(), None);
    }

    #[test]
    fn tmpfs_has_no_disk_and_says_why() {
        let stack = resolve_path(&fixture("storage-ssd"), Path::new("/tmp"));
        assert!(stack.disks.is_empty());
        assert_eq!(stack.fstype.as_deref(), Some("tmpfs"));
        assert!(
            stack.notes[0].contains("memory, not a disk"),
            "{:?}",
            stack.notes
        );
    }

    #[test]
    fn a_loop_device_backed_by_itself_stops_instead_of_recursing_forever() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let loop_dir = root.join("sys/devices/virtual/block/loop0");
        std::fs::create_dir_all(loop_dir.join("loop")).unwrap();
        std::fs::write(loop_dir.join("dev"), "7:0\n").unwrap();
        std::fs::write(loop_dir.join("loop/backing_file"), "/data/disk.img\n").unwrap();
        std::fs::create_dir_all(root.join("sys/dev/block")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/virtual/block/loop0",
            root.join("sys/dev/block/7:0"),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        std::fs::write(
            root.join("proc/self/mountinfo"),
            "1 0 7:0 / /data rw - ext4 /dev/loop0 rw\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        let stack = resolve_path(&Sysroot::at(root).unwrap(), Path::new("/data"));
        assert!(stack.disks.is_empty());
        assert!(
            stack.notes.iter().any(|n| n.contains("stopped")),
            "{:?}",
            stack.notes
        );
    }

    #[test]
    fn an_unbound_loop_device_is_no_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let loop_dir = root.join("sys/devices/virtual/block/loop3");
        std::fs::create_dir_all(loop_dir.join("queue")).unwrap();
        std::fs::write(loop_dir.join("dev"), "7:3\n").unwrap();
        std::fs::write(loop_dir.join("queue/rotational"), "1\n").unwrap();
        std::fs::create_dir_all(root.join("sys/class/block")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/virtual/block/loop3",
            root.join("sys/class/block/loop3"),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("sys/dev/block")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/virtual/block/loop3",
            root.join("sys/dev/block/7:3"),
        )
        .unwrap();
        let stack = resolve_path(&Sysroot::at(root).unwrap(), Path::new("/dev/loop3"));
        assert!(stack.block_device);
        assert!(stack.disks.is_empty(), "{stack:?}");
        assert_eq!(stack.notes, ["loop3 is a loop device with no backing file"]);
    }

    #[test]
    fn a_sysroot_without_mountinfo_is_a_note_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let stack = resolve_path(&Sysroot::at(dir.path()).unwrap(), Path::new("/var/lib/lab"));
        assert!(stack.disks.is_empty());
        assert_eq!(stack.measured_at, Path::new("/"));
        assert!(
            stack.notes.iter().any(|n| n.contains("mountinfo")),
            "{:?}",
            stack.notes
        );
    }

    #[test]
    fn human_decimal_sizes() {
        assert_eq!(human_decimal(512_110_190_592), "512.1 GB");
        assert_eq!(human_decimal(1_000_204_886_016), "1.0 TB");
        assert_eq!(human_decimal(12), "12 B");
    }
}
