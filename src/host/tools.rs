//! The external programs a lab needs, and their versions.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Sysroot;
use crate::runner::Cmd;

/// Where system tools live when they are not in `PATH` (sbin is often missing from a
/// user's `PATH`).
const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];

/// A program's path, for running it on this machine: `PATH` first, then the system
/// directories; only an executable file counts.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `name` is installed on the machine `sysroot` describes: live, by
/// [`find_program`]; in a sysroot, by a file of that name in its system directories.
pub fn installed(sysroot: &Sysroot, name: &str) -> Option<PathBuf> {
    if sysroot.is_live() {
        return find_program(name);
    }
    SYSTEM_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| sysroot.path(p).is_file())
}

/// A program lab runs, with the packages that provide it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub debian: &'static str,
    pub fedora: &'static str,
    pub why: &'static str,
}

pub const TOOLS: &[Tool] = &[
    Tool {
        program: "qemu-system-x86_64",
        debian: "qemu-system-x86",
        fedora: "qemu-kvm",
        why: "runs the VMs",
    },
    Tool {
        program: "qemu-img",
        debian: "qemu-utils",
        fedora: "qemu-img",
        why: "makes qcow2 images and clones",
    },
    Tool {
        program: "dnsmasq",
        debian: "dnsmasq-base",
        fedora: "dnsmasq",
        why: "serves DHCP and DNS on lab networks, started by libvirt",
    },
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolVersion {
    pub program: String,
    pub version: Option<String>,
    pub first_line: Option<String>,
    pub error: Option<String>,
}

/// Run `PROGRAM --version` and pick the word after "version".
pub fn probe(program: &str) -> ToolVersion {
    match Cmd::new(program).arg("--version").run() {
        Ok(out) => {
            let first = out
                .stdout
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            ToolVersion {
                program: program.into(),
                version: version_from(&first),
                first_line: Some(first),
                error: None,
            }
        }
        Err(e) => ToolVersion {
            program: program.into(),
            version: None,
            first_line: None,
            error: Some(if e.is_not_found() {
                "not installed".into()
            } else {
                e.to_string()
            }),
        },
    }
}

/// "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)" -> "7.2.22".
pub fn version_from(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case("version") {
            return words.next().map(|v| v.trim_end_matches(',').to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_real_first_lines() {
        // First lines printed by the Debian 12 packages.
        assert_eq!(
            version_from("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some("7.2.22".into())
        );
        assert_eq!(
            version_from("qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some("7.2.22".into())
        );
        assert_eq!(
            version_from("Dnsmasq version 2.90  Copyright (c) 2000-2024 Simon Kelley"),
            Some("2.90".into())
        );
        assert_eq!(version_from("no number here"), None);
    }

    #[test]
    fn a_missing_program_says_not_installed() {
        let v = probe("lab-no-such-tool");
        assert_eq!(v.error.as_deref(), Some("not installed"));
        assert_eq!(v.version, None);
    }
}
