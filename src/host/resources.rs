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

#[cfg(test)]
mod tests {
    use super::*;

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
