//! The kernels installed on a host, read from its sysroot: the one the smoke VMs boot.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Sysroot;

/// The host kernel lab boots smoke VMs with, and its modules directory, on the machine
/// `host` describes: the running kernel (`/proc/sys/kernel/osrelease`) when its image is in
/// /boot and its modules are installed, else the newest `/boot/vmlinuz-*` whose modules are
/// (a kernel a container or CI guest runs often has neither image nor modules on its disk).
pub fn host_kernel(host: &Sysroot) -> Result<(PathBuf, PathBuf)> {
    let release = host
        .read("/proc/sys/kernel/osrelease")
        .context("reading the running kernel's release from /proc/sys/kernel/osrelease")?;
    let release = release.trim();
    let boot = host.path("/boot");
    let modules_of = |version: &str| host.path("/lib/modules").join(version);
    let usable = |version: &str| {
        boot.join(format!("vmlinuz-{version}")).is_file()
            && modules_of(version).join("modules.dep").is_file()
    };
    if usable(release) {
        return Ok((boot.join(format!("vmlinuz-{release}")), modules_of(release)));
    }
    let mut images: Vec<String> = match fs::read_dir(&boot) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .map(str::to_string)
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", boot.display())),
    };
    images.sort_by(|a, b| version_cmp(a, b));
    if let Some(version) = images.iter().rev().find(|v| usable(v)) {
        return Ok((boot.join(format!("vmlinuz-{version}")), modules_of(version)));
    }
    let running = if boot.join(format!("vmlinuz-{release}")).is_file() {
        format!(
            "the running kernel {release} has no {}",
            modules_of(release).join("modules.dep").display()
        )
    } else {
        format!(
            "the running kernel {release} has no {}",
            boot.join(format!("vmlinuz-{release}")).display()
        )
    };
    let others = if images.is_empty() {
        format!("there is no other {}", boot.join("vmlinuz-*").display())
    } else {
        format!(
            "no other kernel in {} ({}) has its modules in {}",
            boot.display(),
            images.join(", "),
            host.path("/lib/modules").display()
        )
    };
    bail!(
        "no kernel to boot the smoke VMs with: {running}, and {others}: install \
         linux-image-amd64 (Debian, Ubuntu: linux-image-generic; Fedora: kernel-core)"
    )
}

/// Version order as `sort -V` has it: runs of digits compare as numbers, the rest as text
/// (6.1.0-9 < 6.1.0-56 < 6.10.0-1).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(&cb) {
        let ord = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn kernel_versions_sort_as_versions() {
        let mut v = vec![
            "6.10.0-1-amd64",
            "6.1.0-9-amd64",
            "6.1.0-56-amd64",
            "5.10.0-30-amd64",
            "6.1.0-56-amd64+debug",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            [
                "5.10.0-30-amd64",
                "6.1.0-9-amd64",
                "6.1.0-56-amd64",
                "6.1.0-56-amd64+debug",
                "6.10.0-1-amd64",
            ]
        );
    }

    fn fake_kernel(root: &Path, version: &str, modules: bool) {
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(root.join(format!("boot/vmlinuz-{version}")), "kernel").unwrap();
        if modules {
            let dir = root.join(format!("lib/modules/{version}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("modules.dep"), "").unwrap();
        }
    }

    /// `root` as a sysroot whose running kernel is `release`.
    fn running(root: &Path, release: &str) -> Sysroot {
        fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        fs::write(
            root.join("proc/sys/kernel/osrelease"),
            format!("{release}\n"),
        )
        .unwrap();
        Sysroot::at(root).unwrap()
    }

    #[test]
    fn the_running_kernel_is_preferred_when_it_is_complete() {
        let root = tempfile::tempdir().unwrap();
        fake_kernel(root.path(), "6.1.0-56-amd64", true);
        fake_kernel(root.path(), "6.1.0-9-amd64", true);
        let (kernel, modules) = host_kernel(&running(root.path(), "6.1.0-9-amd64")).unwrap();
        assert_eq!(kernel, root.path().join("boot/vmlinuz-6.1.0-9-amd64"));
        assert_eq!(modules, root.path().join("lib/modules/6.1.0-9-amd64"));
    }

    #[test]
    fn else_the_newest_kernel_with_modules_is_taken() {
        let root = tempfile::tempdir().unwrap();
        fake_kernel(root.path(), "6.1.0-9-amd64", true);
        fake_kernel(root.path(), "6.1.0-56-amd64", true);
        fake_kernel(root.path(), "6.10.0-1-amd64", false);
        // The running kernel's modules without its image (a container host's kernel).
        fs::create_dir_all(root.path().join("lib/modules/6.18.44-fc")).unwrap();
        let (kernel, modules) = host_kernel(&running(root.path(), "6.18.44-fc")).unwrap();
        assert_eq!(kernel, root.path().join("boot/vmlinuz-6.1.0-56-amd64"));
        assert_eq!(modules, root.path().join("lib/modules/6.1.0-56-amd64"));
    }

    #[test]
    fn no_usable_kernel_says_what_to_install() {
        let root = tempfile::tempdir().unwrap();
        let err = host_kernel(&running(root.path(), "6.18.44-fc")).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("vmlinuz-6.18.44-fc"), "{text}");
        assert!(text.contains("install linux-image-amd64"), "{text}");

        fake_kernel(root.path(), "6.1.0-56-amd64", false);
        let text = format!(
            "{:#}",
            host_kernel(&running(root.path(), "6.18.44-fc")).unwrap_err()
        );
        assert!(text.contains("(6.1.0-56-amd64) has its modules"), "{text}");

        fake_kernel(root.path(), "6.18.44-fc", false);
        let text = format!(
            "{:#}",
            host_kernel(&running(root.path(), "6.18.44-fc")).unwrap_err()
        );
        assert!(
            text.contains("6.18.44-fc has no") && text.contains("modules.dep"),
            "{text}"
        );
    }
}
