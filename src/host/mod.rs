//! Facts about the host, read from a root directory so tests can hand in a fake laptop.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub mod blockdev;
pub mod cpu;
pub mod kernel;
pub mod kvm;
pub mod lvm;
pub mod net;
pub mod ports;
pub mod resources;
pub mod throughput;
pub mod tools;

/// Where file-based facts (`/proc`, `/sys`, `/etc`, `/dev/kvm`) are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysroot {
    root: PathBuf,
}

impl Default for Sysroot {
    fn default() -> Self {
        Sysroot::live()
    }
}

impl Sysroot {
    /// The machine lab runs on.
    pub fn live() -> Self {
        Sysroot {
            root: PathBuf::from("/"),
        }
    }

    /// A tree standing in for a machine; it must be an existing directory.
    pub fn at(dir: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(dir)
            .map_err(|e| crate::error::usage(format!("--sysroot {}: {e}", dir.display())))?;
        if !meta.is_dir() {
            return Err(crate::error::usage(format!(
                "--sysroot {}: not a directory",
                dir.display()
            )));
        }
        let root = dir
            .canonicalize()
            .with_context(|| format!("resolving --sysroot {}", dir.display()))?;
        Ok(Sysroot { root })
    }

    /// True when this is the real machine, so probes that need it (running a KVM guest,
    /// reading a disk, asking libvirt) may run.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path under this root of an absolute host path such as `/proc/cpuinfo`.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        let rel = abs.strip_prefix("/").unwrap_or(abs);
        self.root.join(rel)
    }

    pub fn read(&self, abs: impl AsRef<Path>) -> io::Result<String> {
        std::fs::read_to_string(self.path(abs))
    }

    /// The file's text, or None when it does not exist (any other error is None too: a
    /// fact that cannot be read is an unknown fact, never a crash).
    pub fn read_opt(&self, abs: impl AsRef<Path>) -> Option<String> {
        self.read(abs).ok()
    }

    /// A one-line file such as a sysfs attribute, trimmed.
    pub fn read_attr(&self, abs: impl AsRef<Path>) -> Option<String> {
        self.read_opt(abs).map(|s| s.trim().to_string())
    }

    pub fn exists(&self, abs: impl AsRef<Path>) -> bool {
        self.path(abs).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Sysroot::at(dir.path()).unwrap();
        assert!(!root.is_live());
        assert_eq!(
            root.path("/proc/cpuinfo"),
            dir.path().canonicalize().unwrap().join("proc/cpuinfo")
        );
        assert_eq!(root.read_opt("/proc/cpuinfo"), None);
    }

    #[test]
    fn a_missing_sysroot_is_a_usage_error() {
        let err = Sysroot::at(Path::new("/no/such/lab/sysroot")).unwrap_err();
        assert_eq!(crate::error::exit_status(&err), crate::error::exit::USAGE);
        assert!(err.to_string().contains("/no/such/lab/sysroot"));
    }
}
