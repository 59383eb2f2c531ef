//! `lab check`: every fact that decides whether this laptop can run a nested lab, each with
//! a stable id, a status, the measured finding and, for every warn or fail, the fix.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::host::Sysroot;
use crate::profile::Profile;
use crate::ui::{self, Stream, Style, Table};

pub mod kvm;
pub mod libvirt;
pub mod lvm;
pub mod network;
pub mod resources;
pub mod storage;
pub mod tools;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Skip,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }

    fn style(self) -> Style {
        match self {
            Status::Pass => Style::Green,
            Status::Warn => Style::Yellow,
            Status::Fail => Style::Red,
            Status::Skip => Style::Dim,
        }
    }
}

/// One finding. `fix` is set for every warn and fail: the command or config line to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub id: String,
    pub status: Status,
    pub summary: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(id: &str, summary: impl Into<String>) -> Self {
        Check::new(id, Status::Pass, summary, None)
    }

    pub fn skip(id: &str, summary: impl Into<String>) -> Self {
        Check::new(id, Status::Skip, summary, None)
    }

    pub fn warn(id: &str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Check::new(id, Status::Warn, summary, Some(fix.into()))
    }

    pub fn fail(id: &str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Check::new(id, Status::Fail, summary, Some(fix.into()))
    }

    fn new(id: &str, status: Status, summary: impl Into<String>, fix: Option<String>) -> Self {
        Check {
            id: id.to_string(),
            status,
            summary: summary.into(),
            fix,
        }
    }
}

/// Everything `lab check` found: the checks in order, and the raw facts behind them.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub facts: BTreeMap<String, serde_json::Value>,
}

impl Report {
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    pub fn fact(&mut self, key: &str, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.facts.insert(key.to_string(), value);
    }

    pub fn get(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The human table, with each fix on its own indented line below its check. With
    /// `only_failed`, just the failed checks and their fixes (`-q`).
    pub fn render(&self, stream: Stream, only_failed: bool) -> String {
        let shown: Vec<&Check> = self
            .checks
            .iter()
            .filter(|c| !only_failed || c.status == Status::Fail)
            .collect();
        if shown.is_empty() {
            return String::new();
        }
        let mut table = Table::new(["check", "status", "finding"]);
        for c in &shown {
            table.row(vec![
                (c.id.clone(), Style::Plain),
                (c.status.as_str().to_string(), c.status.style()),
                (c.summary.clone(), Style::Plain),
            ]);
        }
        let mut out = table.render(stream);
        let fixes: Vec<&&Check> = shown.iter().filter(|c| c.fix.is_some()).collect();
        if !fixes.is_empty() {
            out.push_str("\nTo fix:\n");
            for c in fixes {
                out.push_str(&format!(
                    "  {} {}\n",
                    ui::paint(stream, c.status.style(), &format!("{}:", c.id)),
                    c.fix
                        .as_deref()
                        .unwrap_or_default()
                        .replace('\n', "\n      ")
                ));
            }
        }
        if only_failed {
            return out;
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "\n{} passed, {} warned, {} failed, {} skipped\n",
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip)
        ));
        out
    }
}

/// Where the lab's storage lives, and how lab learned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StorageTarget {
    /// A directory (qcow2 images) or a block device, as given or derived.
    Path { path: PathBuf, origin: String },
    /// An LVM volume group (a thin pool's home): measured through its physical volumes.
    /// `fallback` is the qcow2 directory used when the VG does not exist (backend auto).
    VolumeGroup {
        vg: String,
        fallback: PathBuf,
        origin: String,
    },
}

/// Where a profile's lab is stored: its volume group when it names one (a thin pool's
/// home; `fallback` the directory used when that VG does not exist), else its directory.
pub fn storage_of_profile(p: &Profile) -> StorageTarget {
    let s = &p.storage;
    let origin = format!("profile {} [storage]", p.name);
    match (s.backend, &s.vg) {
        (crate::profile::StorageBackend::LvmThin, Some(vg))
        | (crate::profile::StorageBackend::Auto, Some(vg)) => StorageTarget::VolumeGroup {
            vg: vg.clone(),
            fallback: s.dir.clone(),
            origin,
        },
        _ => StorageTarget::Path {
            path: s.dir.clone(),
            origin,
        },
    }
}

/// What every check area is handed.
pub struct CheckContext<'a> {
    pub sysroot: &'a Sysroot,
    pub profile: Option<&'a Profile>,
    pub storage: StorageTarget,
    pub connect: &'a str,
    pub fix: bool,
    pub throughput: bool,
}

type Area = fn(&CheckContext<'_>, &mut Report);

/// The check areas, in the order they are reported.
const AREAS: [Area; 7] = [
    kvm::check,
    storage::check,
    lvm::check,
    libvirt::check,
    resources::check,
    network::check,
    tools::check,
];

/// Run every check area. The areas are independent and mostly wait (for QEMU, libvirt,
/// the disk), so they run at once; the report keeps their order.
pub fn run_all(ctx: &CheckContext<'_>) -> Report {
    let mut report = Report::default();
    report.fact("sysroot", ctx.sysroot.root());
    report.fact("storage_target", &ctx.storage);
    let parts: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = AREAS
            .iter()
            .map(|area| {
                s.spawn(move || {
                    let mut part = Report::default();
                    area(ctx, &mut part);
                    part
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a check area panicked"))
            .collect()
    });
    for part in parts {
        report.checks.extend(part.checks);
        report.facts.extend(part.facts);
    }
    // The profile's nested VMs against the KVM area's own nesting finding, so that the
    // host is probed once.
    if let Some(profile) = ctx.profile {
        let nesting = report
            .get("kvm.nested")
            .filter(|c| c.status != Status::Skip)
            .map(|c| resources::Nesting {
                works: c.status == Status::Pass,
                why: c.summary.clone(),
            });
        if let Some(c) = resources::judge_nesting(profile, nesting.as_ref()) {
            report.push(c);
        }
    }
    report
}
