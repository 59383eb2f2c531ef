//! Whole-lab snapshots: one consistent point of every VM, memory and disk.
//!
//! libvirt 9.0 (Debian 12) reverts internal snapshots only, and qcow2 clones take external
//! ones, whose revert came in a later libvirt. So lab makes the point itself, with calls
//! every libvirt has: every VM paused at once (virDomainSuspend); each VM's memory saved to
//! a file of lab's (virDomainSaveFlags: the domain stops and QEMU closes its disk); the
//! clone, closed now, renamed into the snapshot's directory and made read-only (it is the
//! snapshot's disk layer), and a new empty overlay on it at the clone's path; every VM
//! restored from its memory, paused (virDomainRestoreFlags); all resumed at once. A running
//! qcow2 is never copied. `restore` is the second half again: a fresh overlay on the
//! snapshot's layer and the snapshot's memory.
//!
//! The directory `lab-P.snapshots/NAME/` holds `snapshot.json` (the mark, written first),
//! and per VM `VM.mem` and `VM.qcow2`. A killed `snapshot` is completed (or, before any
//! memory was saved, undone) and a killed `restore` done again by the next snapshot
//! command; a removed snapshot whose layer a running VM's disk still sits on keeps that
//! layer, marked `removing`, until the disk is replaced.
//!
//! On a thin pool only the disk half differs ([`Layers`]): while the domain is stopped by
//! the save, its clone LV gets a thin snapshot `lab-P-VM.NAME` (role `snapshot`, tagged
//! with the snapshot's name), which shares every block with it: nothing is copied. A
//! restore removes the clone and makes a new thin snapshot of that volume under the
//! clone's name, so the domain's XML stays the same. The clone never depends on the
//! snapshot volume, so removing one merges nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::error::usage;
use serde::{Deserialize, Serialize};

use crate::fanout;
use crate::libvirt::Libvirt;
use crate::mark::{Marker, Owner, VolumeRole};
use crate::names;
use crate::profile::Profile;
use crate::runner::Cmd;
use crate::storage::lvm_thin::LvmThinStorage;
use crate::storage::qcow2;

/// The snapshot `lab up` takes once provisioning succeeded, and `lab reset` goes back to.
pub const PROVISIONED: &str = "provisioned";

const RECORD: &str = "snapshot.json";
/// Present while a restore from this snapshot runs: the next command does it again.
const RESTORING: &str = "restoring";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Being taken (or killed while taken): completed by the next command.
    Taking,
    Complete,
    /// Removed, but a layer of it still under a running VM's disk.
    Removing,
}

/// `snapshot.json`: lab's mark on the directory and what the snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub owner: Owner,
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub state: State,
    /// The profile's VMs, each with `VM.mem` here, and its disk layer in `layers`.
    pub vms: Vec<String>,
    /// Where the disk half is (a record without it is of a qcow2 lab).
    #[serde(default)]
    pub layers: Layers,
}

/// The disk half of a snapshot, per storage backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Layers {
    /// `VM.qcow2` in the snapshot's directory: the clone as it was, read-only, under the
    /// VM's disk.
    #[default]
    Qcow2,
    /// A thin snapshot volume per VM (`lab-P-VM.NAME`) in thin pool `vg/pool`.
    Thin { vg: String, pool: String },
}

impl Layers {
    fn thin(&self) -> Option<LvmThinStorage> {
        match self {
            Layers::Qcow2 => None,
            Layers::Thin { vg, pool } => Some(LvmThinStorage::new(vg, pool)),
        }
    }
}

/// One snapshot as `--list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub name: String,
    pub created: u64,
    pub state: State,
    pub vms: Vec<String>,
    /// Bytes on disk: memory files and disk layers.
    pub bytes: u64,
    pub memory_bytes: u64,
    pub layer_bytes: u64,
}

/// How long each part took, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Every VM paused (the point), or stopped for a restore.
    pub pause: u64,
    /// Memory written (snapshot), disks laid (both), memory read back paused (both).
    pub save: u64,
    pub disks: u64,
    pub restore: u64,
    /// Every VM running again.
    pub resume: u64,
    /// Until every VM answers on its SSH port again.
    pub answer: u64,
    pub total: u64,
}

/// A profile's snapshots, in its image directory.
pub struct Snapshots<'a> {
    lv: &'a Libvirt,
    profile: &'a Profile,
    images: PathBuf,
    root: PathBuf,
}

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

fn write_record(dir: &Path, record: &Record) -> Result<()> {
    let path = dir.join(RECORD);
    let tmp = dir.join(format!(".{RECORD}.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(record)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

fn set_read_only(path: &Path, read_only: bool) -> Result<()> {
    let mut perms = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(read_only);
    std::fs::set_permissions(path, perms)
        .with_context(|| format!("changing the mode of {}", path.display()))
}

fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The image `path` is backed by, absolute.
fn backing_of(path: &Path) -> Option<PathBuf> {
    let i = qcow2::info(path).ok()?;
    let b = PathBuf::from(i.full_backing_filename.or(i.backing_filename)?);
    let b = if b.is_relative() {
        path.parent()?.join(b)
    } else {
        b
    };
    Some(b.canonicalize().unwrap_or(b))
}

impl<'a> Snapshots<'a> {
    pub fn new(lv: &'a Libvirt, profile: &'a Profile) -> Snapshots<'a> {
        let images = profile.storage.dir.clone();
        Snapshots {
            lv,
            profile,
            root: names::snapshots_dir(&images, &profile.name),
            images,
        }
    }

    /// Where the snapshots are: gone with `lab down`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn clone_path(&self, vm: &str) -> PathBuf {
        self.images.join(format!(
            "{}.qcow2",
            names::clone_volume(&self.profile.name, vm)
        ))
    }

    fn vms(&self) -> Vec<String> {
        self.profile
            .instances()
            .into_iter()
            .map(|(vm, _)| vm)
            .collect()
    }

    /// The record of snapshot `name`, when it is lab's and this profile's.
    pub fn record(&self, name: &str) -> Option<Record> {
        read_record(&self.dir(name)).filter(|r| r.owner.is(&self.profile.name) && r.name == name)
    }

    /// Every snapshot directory of the profile with lab's record, oldest first.
    pub fn records(&self) -> Vec<Record> {
        records_in(&self.root, &self.profile.name)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    /// Whether anything of snapshot `name` is there, complete or not (one being removed
    /// keeps its name until its layers are merged).
    pub fn is_taken(&self, name: &str) -> bool {
        self.dir(name).exists()
    }

    /// Whether a complete snapshot `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.record(name)
            .is_some_and(|r| r.state == State::Complete)
    }

    pub fn list(&self) -> Vec<Listed> {
        listed_in(&self.root, &self.profile.name)
            .into_iter()
            .filter(|l| l.state != State::Removing)
            .collect()
    }

    /// Whether an interrupted snapshot, restore or removal waits to be finished: what
    /// `recover` would do something about.
    pub fn interrupted(&self) -> bool {
        self.records().iter().any(|r| match r.state {
            State::Taking | State::Removing => true,
            State::Complete => self.dir(&r.name).join(RESTORING).exists(),
        })
    }

    /// `recover`, when there is something to recover: for the commands that change a lab
    /// (`lab up`, `lab reset`, `lab start`, `lab stop`), before they look at its VMs, so a
    /// VM an interrupted snapshot left stopped with its memory saved is brought back as it
    /// was, not booted afresh.
    pub fn recover_interrupted(&self) -> Result<()> {
        if self.interrupted() {
            self.recover()?;
        }
        Ok(())
    }

    /// Refuse a VM whose domain is missing.
    fn require_domains(&self, vms: &[String], verb: &str) -> Result<()> {
        let p = &self.profile.name;
        for vm in vms {
            let domain = names::domain(p, vm);
            if !self.lv.domain_exists(&domain) {
                return Err(usage(format!(
                    "{vm} is not up (no domain {domain}): {verb} needs every VM of the lab; \
                     run `lab up {}` first",
                    self.profile.cli_name()
                )));
            }
        }
        Ok(())
    }

    /// Refuse a VM whose disk is not lab's clone, or missing.
    fn require_disks(&self, vms: &[String], verb: &str, layers: &Layers) -> Result<()> {
        let p = &self.profile.name;
        if let Some(thin) = layers.thin() {
            for vm in vms {
                if crate::storage::Storage::clone_volume(&thin, p, vm)?.is_none() {
                    return Err(usage(format!(
                        "{vm}'s disk {}/{} is missing or not lab's: {verb} leaves the lab as \
                         it is",
                        thin.vg(),
                        names::clone_volume(p, vm)
                    )));
                }
            }
            return Ok(());
        }
        for vm in vms {
            let clone = self.clone_path(vm);
            if Marker::read(&clone).is_none_or(|m| m.role != VolumeRole::Clone || !m.owner.is(p)) {
                return Err(usage(format!(
                    "{vm}'s disk {} is missing or not lab's: {verb} leaves the lab as it is",
                    clone.display()
                )));
            }
        }
        Ok(())
    }

    /// `lab snapshot PROFILE NAME`: see the module's documentation.
    pub fn take(&self, name: &str) -> Result<Timings> {
        if !names::snapshot_name_ok(name) {
            return Err(usage(format!(
                "snapshot name {name:?} is not a plain word (letters, digits, - and _, \
                 starting with a letter or digit, 40 at most)"
            )));
        }
        self.recover()?;
        if self.dir(name).exists() {
            return Err(usage(format!(
                "snapshot {name} of {} exists already: remove it first (lab snapshot {} {name} --rm)",
                self.profile.name,
                self.profile.cli_name()
            )));
        }
        let vms = self.vms();
        self.require_domains(&vms, "a snapshot")?;
        let p = &self.profile.name;
        for vm in &vms {
            let domain = names::domain(p, vm);
            if !self.lv.domain_running(&domain) || self.lv.domain_paused(&domain) {
                return Err(usage(format!(
                    "{vm} is not running (domain {domain}): a snapshot is of a lab that is up; \
                     `lab start {}` first",
                    self.profile.cli_name()
                )));
            }
        }
        let layers = self.layers_now()?;
        self.require_disks(&vms, "a snapshot", &layers)?;
        self.require_room(&layers, vms.len())?;
        let total = Instant::now();
        // The mark goes first: whatever an interruption leaves is recognisably lab's, and
        // the next command completes it.
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write_record(
            &dir,
            &Record {
                owner: Owner {
                    profile: p.clone(),
                    vm: None,
                },
                name: name.to_string(),
                created: crate::observe::now_secs(),
                state: State::Taking,
                vms: vms.clone(),
                layers,
            },
        )?;
        let mut t = Timings::default();
        let at = Instant::now();
        let paused = fanout::each(
            vms.iter(),
            |vm| vm.to_string(),
            |vm| self.lv.suspend_domain(&names::domain(p, vm)),
        );
        if let Err(e) = fanout::all_or_errors(paused) {
            // Nothing saved yet: undone, and said why.
            self.undo_taking(name, &vms)?;
            return Err(e).context("pausing the lab's VMs");
        }
        t.pause = ms(at);
        self.complete(name, &vms, &mut t)?;
        t.total = ms(total);
        Ok(t)
    }

    /// A snapshot killed before any memory was saved: its VMs resumed, its directory gone.
    fn undo_taking(&self, name: &str, vms: &[String]) -> Result<()> {
        for vm in vms {
            let domain = names::domain(&self.profile.name, vm);
            if self.lv.domain_paused(&domain) {
                self.lv.resume_domain(&domain)?;
            }
        }
        let dir = self.dir(name);
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        let _ = std::fs::remove_dir(&self.root);
        Ok(())
    }

    /// From every VM paused (or already saved) to the snapshot complete and every VM
    /// running: each step is skipped when a killed run did it already.
    fn complete(&self, name: &str, vms: &[String], t: &mut Timings) -> Result<()> {
        let p = &self.profile.name;
        let dir = self.dir(name);
        let at = Instant::now();
        fanout::all(
            vms.iter(),
            |vm| vm.to_string(),
            |vm| {
                let domain = names::domain(p, vm);
                let mem = dir.join(format!("{vm}.mem"));
                let partial = dir.join(format!("{vm}.mem.partial"));
                if !mem.exists() {
                    if self.lv.domain_running(&domain) {
                        let _ = std::fs::remove_file(&partial);
                        self.lv.save_domain_to(&domain, &partial)?;
                    }
                    // Renamed once whole: a memory file is never one half-written.
                    std::fs::rename(&partial, &mem).with_context(|| {
                        format!("{vm}: its memory {} is missing", partial.display())
                    })?;
                }
                Ok(())
            },
        )?;
        t.save = ms(at);
        let at = Instant::now();
        let layers = self
            .record(name)
            .context("the snapshot's record is gone")?
            .layers;
        fanout::all(
            vms.iter(),
            |vm| vm.to_string(),
            |vm| self.freeze_disk(&layers, name, vm),
        )?;
        t.disks = ms(at);
        let at = Instant::now();
        self.restore_memory(&dir, vms)?;
        t.restore = ms(at);
        let at = Instant::now();
        self.resume_all(vms)?;
        t.resume = ms(at);
        let at = Instant::now();
        self.wait_answering(vms)?;
        t.answer = ms(at);
        let mut record = self.record(name).context("the snapshot's record is gone")?;
        record.state = State::Complete;
        write_record(&dir, &record)
    }

    /// Where the profile's disks are now, as `lab up` plans them: the disk half of a new
    /// snapshot goes with them.
    fn layers_now(&self) -> Result<Layers> {
        if self.profile.storage.backend == crate::profile::StorageBackend::Qcow2 {
            return Ok(Layers::Qcow2);
        }
        let host = crate::observe::host_facts(&crate::host::Sysroot::live(), self.profile);
        let storage = crate::plan::storage_step(self.profile, &host).map_err(|e| usage(e.0))?;
        Ok(match storage.backend {
            crate::plan::Backend::Qcow2 => Layers::Qcow2,
            crate::plan::Backend::LvmThin => {
                let (vg, pool) = storage
                    .location
                    .split_once('/')
                    .with_context(|| format!("thin pool {} is not VG/POOL", storage.location))?;
                Layers::Thin {
                    vg: vg.to_string(),
                    pool: pool.to_string(),
                }
            }
        })
    }

    /// On a thin pool, the pool's fill limit is judged before any VM is paused: a thin
    /// snapshot copies nothing, but from then on every block a VM writes is a new block
    /// of the pool, as for a new clone. Said either way.
    fn require_room(&self, layers: &Layers, disks: usize) -> Result<()> {
        let Some(thin) = layers.thin() else {
            return Ok(());
        };
        let pool = thin.snapshot_room()?;
        crate::ui::info(format_args!(
            "thin pool {}/{} at {:.1}% data: {disks} thin snapshot{} of the VMs' disks, no \
             data copied; what the VMs write from now on takes new blocks of the pool",
            thin.vg(),
            thin.pool_name(),
            pool.data_percent.unwrap_or(0.0),
            if disks == 1 { "" } else { "s" }
        ));
        Ok(())
    }

    /// A VM's disk kept as the snapshot's layer while its domain is stopped: the qcow2
    /// clone, closed, becomes the read-only layer under a new empty overlay; a thin clone
    /// gets a thin snapshot volume. Skipped where a killed run did it already.
    fn freeze_disk(&self, layers: &Layers, name: &str, vm: &str) -> Result<()> {
        if let Some(thin) = layers.thin() {
            return thin.take_snapshot_volume(&self.profile.name, vm, name);
        }
        let clone = self.clone_path(vm);
        let layer = self.dir(name).join(format!("{vm}.qcow2"));
        if !layer.exists() {
            // The domain is stopped: its clone is closed and becomes the layer.
            std::fs::rename(&clone, &layer)
                .with_context(|| format!("moving {} to {}", clone.display(), layer.display()))?;
        }
        set_read_only(&layer, true)?;
        if !clone.exists() {
            self.overlay(&layer, &clone)?;
        }
        Ok(())
    }

    /// A VM's disk laid again on the snapshot's layer, its domain stopped: a new overlay
    /// on the qcow2 layer, or a new thin snapshot of the snapshot volume, at the clone's
    /// path.
    fn lay_disk(&self, layers: &Layers, name: &str, vm: &str) -> Result<()> {
        if let Some(thin) = layers.thin() {
            return thin.lay_clone_from_snapshot(&self.profile.name, vm, name);
        }
        let clone = self.clone_path(vm);
        remove_if_there(&clone)?;
        self.overlay(&self.dir(name).join(format!("{vm}.qcow2")), &clone)
    }

    /// Refuse a restore from a snapshot that lacks a VM's memory or disk layer.
    fn require_whole(&self, record: &Record, vms: &[String]) -> Result<()> {
        let dir = self.dir(&record.name);
        let thin_volumes = match record.layers.thin() {
            Some(thin) => Some(
                thin.snapshot_volumes(&self.profile.name, Some(&record.name))?
                    .into_iter()
                    .map(|r| r.lv_name)
                    .collect::<Vec<_>>(),
            ),
            None => None,
        };
        for vm in vms {
            let mem = dir.join(format!("{vm}.mem"));
            let layer = match &thin_volumes {
                Some(names) => {
                    let lv = names::snapshot_volume(&self.profile.name, vm, &record.name);
                    (!names.contains(&lv)).then(|| format!("thin snapshot volume {lv}"))
                }
                None => {
                    let layer = dir.join(format!("{vm}.qcow2"));
                    (!layer.exists()).then(|| layer.display().to_string())
                }
            };
            let missing = if mem.exists() {
                layer
            } else {
                Some(mem.display().to_string())
            };
            if let Some(missing) = missing {
                bail!("snapshot {} is damaged: {missing} is missing", record.name);
            }
        }
        Ok(())
    }

    /// A new empty overlay at `clone` on `layer`, written aside and renamed into place.
    fn overlay(&self, layer: &Path, clone: &Path) -> Result<()> {
        let name = clone.file_name().unwrap_or_default().to_string_lossy();
        let partial = self
            .images
            .join(format!(".{name}.{}.partial", std::process::id()));
        let made = Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(layer)
            .arg(&partial)
            .run();
        if let Err(e) = made {
            let _ = std::fs::remove_file(&partial);
            return Err(e).with_context(|| format!("laying a new disk on {}", layer.display()));
        }
        std::fs::rename(&partial, clone)
            .with_context(|| format!("moving {} to {}", partial.display(), clone.display()))
    }

    /// Every VM not running started from its memory in `dir`, paused.
    fn restore_memory(&self, dir: &Path, vms: &[String]) -> Result<()> {
        let p = &self.profile.name;
        fanout::all(
            vms.iter(),
            |vm| vm.to_string(),
            |vm| {
                let domain = names::domain(p, vm);
                if !self.lv.domain_running(&domain) {
                    self.lv
                        .restore_domain_from(&domain, &dir.join(format!("{vm}.mem")))?;
                }
                Ok(())
            },
        )?;
        Ok(())
    }

    /// Every paused VM resumed, one right after the other.
    fn resume_all(&self, vms: &[String]) -> Result<()> {
        let p = &self.profile.name;
        let resumed = fanout::each(
            vms.iter(),
            |vm| vm.to_string(),
            |vm| {
                let domain = names::domain(p, vm);
                if self.lv.domain_paused(&domain) {
                    self.lv.resume_domain(&domain)?;
                }
                Ok(())
            },
        );
        fanout::all_or_errors(resumed).map(|_| ())
    }

    /// A resumed VM keeps its lease, which says nothing of whether it runs again (an
    /// emulated guest catches up on its timers first): wait until each answers on the SSH
    /// port, as `lab start` does, at most two minutes.
    fn wait_answering(&self, vms: &[String]) -> Result<()> {
        let p = &self.profile.name;
        fanout::all(
            vms.iter(),
            |vm| vm.to_string(),
            |vm| {
                let (domain, mac) = (names::domain(p, vm), names::mac(p, vm));
                crate::guest::connect::wait_resumed(
                    vm,
                    || self.lv.lease(&domain, &mac),
                    Duration::from_secs(120),
                )
            },
        )?;
        Ok(())
    }

    /// `lab restore PROFILE NAME` (all VMs) or `lab reset` to a snapshot (`vms`): each VM
    /// stopped, a fresh overlay on the snapshot's layer, the snapshot's memory restored
    /// paused, all resumed at once.
    pub fn restore(&self, name: &str, vms: &[String]) -> Result<Timings> {
        self.recover()?;
        let Some(record) = self.record(name).filter(|r| r.state == State::Complete) else {
            return Err(usage(self.unknown(name)));
        };
        let vms: Vec<String> = if vms.is_empty() {
            record.vms.clone()
        } else {
            vms.to_vec()
        };
        if let Some(vm) = vms.iter().find(|vm| !record.vms.contains(vm)) {
            return Err(usage(format!(
                "snapshot {name} holds no VM {vm}: it holds {}",
                record.vms.join(", ")
            )));
        }
        self.require_domains(&vms, "a restore")?;
        self.require_disks(&vms, "a restore", &record.layers)?;
        self.require_whole(&record, &vms)?;
        let dir = self.dir(name);
        // The mark goes first: a killed restore is done again by the next command.
        std::fs::write(dir.join(RESTORING), vms.join("\n"))
            .with_context(|| format!("writing {}", dir.join(RESTORING).display()))?;
        let t = self.restore_marked(name, &vms)?;
        self.prune()?;
        Ok(t)
    }

    fn restore_marked(&self, name: &str, vms: &[String]) -> Result<Timings> {
        let p = &self.profile.name;
        let dir = self.dir(name);
        let layers = self
            .record(name)
            .context("the snapshot's record is gone")?
            .layers;
        let total = Instant::now();
        let mut t = Timings::default();
        let at = Instant::now();
        fanout::all(
            vms.iter(),
            |vm| vm.to_string(),
            |vm| {
                let domain = names::domain(p, vm);
                self.lv.stop_domain(&domain)?;
                // Memory lab stop saved belongs to the disk that goes now.
                self.lv.discard_saved(&domain)
            },
        )?;
        t.pause = ms(at);
        let at = Instant::now();
        fanout::all(
            vms.iter(),
            |vm| vm.to_string(),
            |vm| {
                self.lay_disk(&layers, name, vm)?;
                crate::guest::ssh::forget_host(&self.images, &names::domain(p, vm))
            },
        )?;
        t.disks = ms(at);
        let at = Instant::now();
        self.restore_memory(&dir, vms)?;
        t.restore = ms(at);
        let at = Instant::now();
        self.resume_all(vms)?;
        t.resume = ms(at);
        let at = Instant::now();
        self.wait_answering(vms)?;
        t.answer = ms(at);
        remove_if_there(&dir.join(RESTORING))?;
        t.total = ms(total);
        Ok(t)
    }

    fn unknown(&self, name: &str) -> String {
        let known: Vec<String> = self.list().into_iter().map(|l| l.name).collect();
        format!(
            "{} has no snapshot {name:?}: {}",
            self.profile.name,
            if known.is_empty() {
                "it has none".to_string()
            } else {
                format!("its snapshots are {}", known.join(", "))
            }
        )
    }

    /// What an interrupted snapshot, restore or removal left, completed or cleaned.
    pub fn recover(&self) -> Result<()> {
        for r in self.records() {
            let dir = self.dir(&r.name);
            match r.state {
                State::Taking => {
                    let saved = r.vms.iter().any(|vm| {
                        dir.join(format!("{vm}.mem")).exists()
                            || dir.join(format!("{vm}.mem.partial")).exists()
                    });
                    if saved {
                        crate::ui::warn(format_args!(
                            "snapshot {} was interrupted: completing it",
                            r.name
                        ));
                        self.wait_saves(&r)?;
                        self.complete(&r.name, &r.vms, &mut Timings::default())?;
                    } else {
                        crate::ui::warn(format_args!(
                            "snapshot {} was interrupted before any memory was saved: undone",
                            r.name
                        ));
                        self.undo_taking(&r.name, &r.vms)?;
                    }
                }
                State::Complete => {
                    let marked = dir.join(RESTORING);
                    if let Ok(text) = std::fs::read_to_string(&marked) {
                        let vms: Vec<String> = text.lines().map(str::to_string).collect();
                        crate::ui::warn(format_args!(
                            "a restore of snapshot {} was interrupted: restoring again",
                            r.name
                        ));
                        self.restore_marked(&r.name, &vms)?;
                    }
                }
                State::Removing => {}
            }
        }
        self.prune()
    }

    /// A save libvirt still runs after lab was killed is waited for, as `lab stop` waits
    /// for a managed save (at most 5 minutes, then an error naming what libvirt still
    /// does); one that went nowhere is thrown away, to be made again.
    fn wait_saves(&self, r: &Record) -> Result<()> {
        let dir = self.dir(&r.name);
        for vm in &r.vms {
            let partial = dir.join(format!("{vm}.mem.partial"));
            if !partial.exists() || dir.join(format!("{vm}.mem")).exists() {
                continue;
            }
            let domain = names::domain(&self.profile.name, vm);
            self.lv.wait_settled(&domain, Duration::from_secs(300))?;
            // Still running: that save went nowhere, and is made again.
            if self.lv.domain_running(&domain) {
                std::fs::remove_file(&partial)
                    .with_context(|| format!("removing {}", partial.display()))?;
            }
        }
        Ok(())
    }

    /// `lab snapshot PROFILE NAME --rm`: its memory goes; each disk layer is merged into
    /// the images backed by it (`qemu-img rebase` onto the layer's own backing file, which
    /// copies what the layer held) and then removed. A layer under a running VM's disk
    /// (anywhere in its backing chain) cannot be merged under it: it stays (the record
    /// says `removing`) until that disk is replaced.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.recover()?;
        let Some(mut record) = self.record(name).filter(|r| r.state == State::Complete) else {
            return Err(usage(self.unknown(name)));
        };
        // The mark goes first: a killed removal is finished by the next command.
        record.state = State::Removing;
        write_record(&self.dir(name), &record)?;
        self.prune()
    }

    /// Every snapshot of the profile removed (`lab reset --pristine`).
    pub fn remove_all(&self) -> Result<Vec<String>> {
        self.recover()?;
        let mut removed = Vec::new();
        for mut r in self.records() {
            if r.state == State::Complete {
                r.state = State::Removing;
                write_record(&self.dir(&r.name), &r)?;
                removed.push(r.name);
            }
        }
        self.prune()?;
        Ok(removed)
    }

    /// Removals carried as far as they go: what no image is backed by any more goes.
    pub fn prune(&self) -> Result<()> {
        let in_use = self.lv.disks_in_use()?;
        // Newest first: a layer removed with the one under it is not merged into it first.
        for r in self.records().into_iter().rev() {
            if r.state != State::Removing {
                continue;
            }
            let dir = self.dir(&r.name);
            if let Some(thin) = r.layers.thin() {
                // No disk depends on a thin snapshot volume: it goes at once.
                thin.remove_snapshot_volumes(&self.profile.name, Some(&r.name))?;
            }
            for vm in &r.vms {
                remove_if_there(&dir.join(format!("{vm}.mem")))?;
                remove_if_there(&dir.join(format!("{vm}.mem.partial")))?;
                let layer = dir.join(format!("{vm}.qcow2"));
                if layer.exists() {
                    self.merge_away(&layer, &in_use)?;
                }
            }
            let left = r
                .vms
                .iter()
                .any(|vm| dir.join(format!("{vm}.qcow2")).exists());
            if !left {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        let _ = std::fs::remove_dir(&self.root);
        Ok(())
    }

    /// The images of the profile that may be backed by a layer: the clones and the
    /// layers of every snapshot.
    fn layered_images(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.vms().iter().map(|vm| self.clone_path(vm)).collect();
        for r in self.records() {
            let dir = self.dir(&r.name);
            out.extend(r.vms.iter().map(|vm| dir.join(format!("{vm}.qcow2"))));
        }
        out.retain(|p| p.exists());
        out
    }

    /// Merge `layer` into each image backed by it, then remove it; left in place when an
    /// image backed by it is open in a running domain.
    fn merge_away(&self, layer: &Path, in_use: &[crate::storage::InUse]) -> Result<()> {
        let canonical = layer.canonicalize().unwrap_or_else(|_| layer.to_path_buf());
        let children: Vec<PathBuf> = self
            .layered_images()
            .into_iter()
            .filter(|i| backing_of(i).as_deref() == Some(canonical.as_path()))
            .collect();
        // QEMU holds a running disk's whole backing chain open: an image anywhere in it
        // cannot be rebased under it.
        let mut open: Vec<crate::storage::InUse> = Vec::new();
        for u in in_use {
            let mut at = Some(u.path.canonicalize().unwrap_or_else(|_| u.path.clone()));
            while let Some(path) = at {
                at = backing_of(&path);
                open.push(crate::storage::InUse {
                    domain: u.domain.clone(),
                    path,
                });
            }
        }
        if let Some(held) = children
            .iter()
            .find_map(|c| crate::storage::user_of(c, &open))
        {
            crate::ui::debug(format_args!(
                "{} stays: running domain {} has {} open on it",
                layer.display(),
                held.domain,
                held.path.display()
            ));
            return Ok(());
        }
        let parent = backing_of(layer)
            .with_context(|| format!("{} has no backing file", layer.display()))?;
        for child in &children {
            let read_only = std::fs::metadata(child)?.permissions().readonly();
            set_read_only(child, false)?;
            // Safe mode: what the child reads through the layer is copied into it first.
            let merged = Cmd::new("qemu-img")
                .args(["rebase", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&parent)
                .arg(child)
                .run()
                .with_context(|| format!("merging {} into {}", layer.display(), child.display()));
            if read_only {
                set_read_only(child, true)?;
            }
            merged?;
        }
        set_read_only(layer, false)?;
        std::fs::remove_file(layer).with_context(|| format!("removing {}", layer.display()))
    }

    /// Every snapshot directory gone, for `lab down` (its clones and domains are gone
    /// first, so nothing is backed by a layer any more), with its thin snapshot volumes.
    pub fn remove_everything(root: &Path, profile: &str) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if read_record(&entry.path()).is_some_and(|r| r.owner.is(profile)) {
                remove_snapshot_dir(&entry.path())?;
                removed.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let _ = std::fs::remove_dir(root);
        Ok(removed)
    }
}

/// A snapshot's directory removed (one already gone is fine), with the thin snapshot
/// volumes its record names: on a thin pool the disk half is not in the directory.
pub fn remove_snapshot_dir(dir: &Path) -> Result<()> {
    if let Some(r) = read_record(dir)
        && let Some(thin) = r.layers.thin()
    {
        thin.remove_snapshot_volumes(&r.owner.profile, Some(&r.name))?;
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Every snapshot of `profile` under `root` with lab's record (also those being taken or
/// removed), oldest first, with what each holds on disk. It only reads (files, and `lvs`
/// for a thin pool's snapshot): `lab status` and `lab down --dry-run` list snapshots with
/// it.
pub fn listed_in(root: &Path, profile: &str) -> Vec<Listed> {
    records_in(root, profile)
        .into_iter()
        .map(|(dir, r)| {
            let size = |ext: &str| -> u64 {
                r.vms
                    .iter()
                    .map(|vm| qcow2::allocated_bytes(&dir.join(format!("{vm}.{ext}"))))
                    .filter_map(Result::ok)
                    .sum()
            };
            let memory_bytes = size("mem");
            // A thin snapshot's volumes: the pool data they map, as lvs reads it.
            let layer_bytes = match r.layers.thin() {
                Some(thin) => thin.snapshot_bytes(profile, &r.name).unwrap_or(0),
                None => size("qcow2"),
            };
            Listed {
                name: r.name,
                created: r.created,
                state: r.state,
                vms: r.vms,
                bytes: memory_bytes + layer_bytes,
                memory_bytes,
                layer_bytes,
            }
        })
        .collect()
}

/// The record in a snapshot's directory, when it holds one lab can read.
fn read_record(dir: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every snapshot directory under `root` whose record is `profile`'s and names it, with
/// that record, oldest first.
fn records_in(root: &Path, profile: &str) -> Vec<(PathBuf, Record)> {
    let mut out: Vec<(PathBuf, Record)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let r = read_record(&dir)?;
            (r.owner.is(profile) && r.name == e.file_name().to_string_lossy()).then_some((dir, r))
        })
        .collect();
    out.sort_by(|(_, a), (_, b)| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    out
}

/// What a snapshot holds, in a few words: "3 VMs, 120MiB of memory and 40MiB of disk
/// layers".
pub fn describe(l: &Listed) -> String {
    let b = |n: u64| crate::size::ByteSize(n).to_string();
    format!(
        "{} VM{}, {} of memory and {} of disk layers{}",
        l.vms.len(),
        if l.vms.len() == 1 { "" } else { "s" },
        b(l.memory_bytes),
        b(l.layer_bytes),
        match l.state {
            State::Complete => "",
            State::Taking => ", interrupted while taken",
            State::Removing => ", being removed",
        }
    )
}

/// Timings as one line for people.
pub fn render_timings(t: &Timings, stopped: &str) -> String {
    let s = |ms: u64| format!("{:.2} s", ms as f64 / 1000.0);
    format!(
        "{stopped} {}, memory saved {}, disks {}, memory read back {}, resumed {}, answering {}; \
         total {}",
        s(t.pause),
        s(t.save),
        s(t.disks),
        s(t.restore),
        s(t.resume),
        s(t.answer),
        s(t.total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_says_where_its_disk_half_is_and_older_ones_are_qcow2() {
        let older = r#"{"owner":{"profile":"demo"},"name":"one","created":1,
            "state":"complete","vms":["web1"]}"#;
        let r: Record = serde_json::from_str(older).unwrap();
        assert_eq!(r.layers, Layers::Qcow2);
        assert!(r.layers.thin().is_none());
        let thin = Record {
            layers: Layers::Thin {
                vg: "vg_lab".into(),
                pool: "lab-pool".into(),
            },
            ..r
        };
        let text = serde_json::to_string(&thin).unwrap();
        assert!(
            text.contains(r#""layers":{"kind":"thin","vg":"vg_lab","pool":"lab-pool"}"#),
            "{text}"
        );
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back, thin);
        let storage = back.layers.thin().unwrap();
        assert_eq!((storage.vg(), storage.pool_name()), ("vg_lab", "lab-pool"));
    }
}
