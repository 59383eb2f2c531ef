//! Memory, CPUs and free disk: what a profile's VMs will ask of this host.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Sysroot;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
}

/// `/proc/meminfo` values are in KiB.
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kib * 1024)
        })
    };
    let total = field("MemTotal")?;
    Some(Memory {
        total,
        available: field("MemAvailable").unwrap_or(total),
    })
}

pub fn memory(root: &Sysroot) -> Option<Memory> {
    parse_meminfo(&root.read_opt("/proc/meminfo")?)
}

/// Online CPUs from `/sys/devices/system/cpu/online` ("0-3,6"), else processors in
/// `/proc/cpuinfo`.
pub fn cpus(root: &Sysroot) -> Option<u64> {
    if let Some(list) = root.read_attr("/sys/devices/system/cpu/online")
        && let Some(n) = count_cpu_list(&list)
    {
        return Some(n);
    }
    let cpuinfo = root.read_opt("/proc/cpuinfo")?;
    let n = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor") && l.contains(':'))
        .count() as u64;
    (n > 0).then_some(n)
}

pub fn count_cpu_list(list: &str) -> Option<u64> {
    let mut n = 0u64;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                n += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<u64>().ok()?;
                n += 1;
            }
        }
    }
    (n > 0).then_some(n)
}

/// The path itself when it exists, else its nearest existing ancestor.
pub fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// Bytes free for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// One filesystem of `df -P -B1`: where it is mounted and the bytes free for an
/// unprivileged writer (df's "Available").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfRow {
    pub mount: PathBuf,
    pub available: u64,
}

/// `df -P -B1` output: the POSIX format, one filesystem a line (a long device name does not
/// wrap under -P), sizes in bytes. The mount point is the last field and may hold spaces,
/// so the line is split from the left: device, size, used, available, capacity, mount.
pub fn parse_df(text: &str) -> Vec<DfRow> {
    text.lines()
        .skip_while(|l| !l.starts_with("Filesystem"))
        .skip(1)
        .filter_map(|l| {
            let mut rest = l.trim_start();
            let mut fields = Vec::new();
            for _ in 0..5 {
                let end = rest.find(char::is_whitespace)?;
                fields.push(&rest[..end]);
                rest = rest[end..].trim_start();
            }
            let available = fields[3].parse().ok()?;
            (!rest.is_empty()).then(|| DfRow {
                mount: PathBuf::from(rest),
                available,
            })
        })
        .collect()
}

/// Under a sysroot, free space comes from the output of `df -P -B1` recorded in this file
/// (beside the recorded LVM reports): the host's filesystems cannot be measured from files.
pub const RECORDED_DF: &str = "/.lab-recorded/df";

/// The free space for `path` on the host the sysroot describes: the filesystem holding
/// its nearest existing directory (live: statvfs), or the recorded df row with the longest
/// mount point above it. Returns the directory or mount point measured, and its free bytes.
pub fn disk_free(root: &Sysroot, path: &Path) -> Option<(PathBuf, u64)> {
    if root.is_live() {
        let at = nearest_existing(path);
        let free = free_bytes(&at).ok()?;
        return Some((at, free));
    }
    let rows = parse_df(&root.read_opt(RECORDED_DF)?);
    rows.into_iter()
        .filter(|r| path.starts_with(&r.mount))
        .max_by_key(|r| r.mount.components().count())
        .map(|r| (r.mount, r.available))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `df -P -B1` output of a Debian 12 laptop (a long device name, a mount point
    /// with a space).
    const DF: &str =
        "Filesystem                      1-blocks        Used   Available Capacity Mounted on
udev                         16693612544           0 16693612544       0% /dev
tmpfs                         3343699968     2191360  3341508608       1% /run
/dev/mapper/vg_laptop-root  105089261568 41243004928 58462707712      42% /
/dev/nvme0n1p2                 493201408   121692160   345812992      27% /boot
/dev/mapper/vg_laptop-lab   536608768000 15011758080 494301204480      3% /var/lib/lab
/dev/sdb1                    31000000000  1000000000 30000000000       4% /media/usb stick
";

    #[test]
    fn df_output_is_read_by_mount_point() {
        let rows = parse_df(DF);
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[2].mount, PathBuf::from("/"));
        assert_eq!(rows[2].available, 58462707712);
        assert_eq!(rows[5].mount, PathBuf::from("/media/usb stick"));
        assert_eq!(rows[5].available, 30000000000);
        assert!(parse_df("df: /nowhere: No such file or directory\n").is_empty());
    }

    #[test]
    fn recorded_free_space_is_the_deepest_mount_holding_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".lab-recorded")).unwrap();
        std::fs::write(dir.path().join(".lab-recorded/df"), DF).unwrap();
        let root = Sysroot::at(dir.path()).unwrap();
        assert_eq!(
            disk_free(&root, Path::new("/var/lib/lab/images")),
            Some((PathBuf::from("/var/lib/lab"), 494301204480))
        );
        assert_eq!(
            disk_free(&root, Path::new("/srv/lab")),
            Some((PathBuf::from("/"), 58462707712))
        );
        let bare = tempfile::tempdir().unwrap();
        assert_eq!(
            disk_free(&Sysroot::at(bare.path()).unwrap(), Path::new("/")),
            None
        );
    }

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       24598784 kB\nMemFree:        23000000 kB\nMemAvailable:   23823104 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(Memory {
                total: 24598784 * 1024,
                available: 23823104 * 1024
            })
        );
        assert_eq!(parse_meminfo("nothing here"), None);
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("garbage"), None);
    }

    #[test]
    fn free_space_is_measured_at_the_nearest_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/c");
        assert_eq!(nearest_existing(&missing), dir.path());
        assert!(free_bytes(&nearest_existing(&missing)).unwrap() > 0);
    }
}
