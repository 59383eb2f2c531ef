//! `lab trim`: the space the guests freed, given back to the host, and measured.
//!
//! - A running VM: fstrim inside the guest, asked of its qemu guest agent
//!   (`virDomainFSTrim`). The guest's discards go down virtio-blk (`discard='unmap'`) into
//!   the qcow2 clone, and QEMU punches holes in the clone's file.
//! - A stopped VM, and a base that no clone depends on: offline, by lab's one offline-trim
//!   engine ([`crate::storage::fstrim`]). qemu-storage-daemon exports the image as a raw
//!   disk over FUSE (a clone's backing file stays where it is, read only), each partition
//!   of it (read with `partx`) gets a loop device, and each filesystem on it is mounted and
//!   fstrimmed; QEMU turns the discards into zero clusters and holes. A clone is then
//!   compacted keeping its backing file (`qemu-img convert -B`).
//! - Before and after, the image's allocation on the host is read (its blocks, not its
//!   length): the difference is what `lab trim` reports as given back.
//!
//! Along the way lab checks the chain the discards travel and names the link that breaks
//! it: a domain disk without `discard='unmap'`, no guest agent, a host filesystem that
//! cannot punch holes, a host disk without discard, a thin pool whose discards stop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::host::Sysroot;
use crate::host::blockdev;
use crate::host::lvm::{IssueDiscards, PoolDiscards, ThinPool};
use crate::libvirt::Libvirt;
use crate::libvirt::read::DomainDef;
use crate::mark::VolumeRole;
use crate::observe::Observed;
use crate::profile::Profile;
use crate::size::ByteSize;
use crate::storage::fstrim::{self, FsTrim};
use crate::storage::qcow2::{self, Qcow2Storage};
use crate::storage::{InUse, Storage, user_of};
use crate::{names, ui};

/// The name of the guest agent's virtio serial channel.
pub const AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// Host filesystems that give a file's freed clusters back (hole punching).
const HOLE_PUNCHING: &[&str] = &[
    "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "ocfs2", "gfs2", "zfs", "bcachefs",
];

/// What a disk image is in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Clone,
    Base,
}

/// How an image was trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// fstrim inside the running guest, through its guest agent.
    GuestAgent,
    /// fstrim of the image's filesystems on the host while nothing runs on it.
    Offline,
    None,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::GuestAgent => "guest agent",
            Method::Offline => "offline",
            Method::None => "-",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Trimmed,
    /// On purpose: a base clones depend on, something that is not lab's.
    LeftAlone,
    /// Could not be trimmed as things are (no guest agent, a broken discard chain): the
    /// message says what to change.
    NotTrimmed,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Trimmed => "trimmed",
            Outcome::LeftAlone => "left alone",
            Outcome::NotTrimmed => "not trimmed",
            Outcome::Failed => "failed",
        }
    }
}

/// One link of the chain discards travel from the guest's filesystem down to the SSD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// `domain-disk`, `guest-agent`, `host-filesystem`, `host-disk`, `thin-pool`,
    /// `lvm-issue-discards`.
    pub link: String,
    pub status: LinkStatus,
    pub finding: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkStatus {
    Ok,
    /// Space comes back to the host, but the layer below (the SSD) is not told.
    Weak,
    /// Discards stop here: nothing is given back through this link.
    Broken,
    Unknown,
}

impl Link {
    fn new(link: &str, status: LinkStatus, finding: String, fix: Option<String>) -> Link {
        Link {
            link: link.to_string(),
            status,
            finding,
            fix,
        }
    }
}

/// The result for one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageTrim {
    /// The VM's name, or `base`.
    pub name: String,
    pub kind: Kind,
    pub domain: Option<String>,
    pub image: String,
    /// `running`, `shut off`, or `no domain`.
    pub state: String,
    pub method: Method,
    pub outcome: Outcome,
    /// The image's allocation on the host, in bytes.
    pub allocated_before: Option<u64>,
    pub allocated_after: Option<u64>,
    pub given_back: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<FsTrim>,
    /// `lab trim --stop` shut the VM down for an offline trim and started it again.
    pub restarted: bool,
    pub chain: Vec<Link>,
    pub message: Option<String>,
    pub ms: u64,
}

/// `lab trim` as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrimReport {
    pub profile: String,
    pub images: Vec<ImageTrim>,
    /// The links under every image: host filesystem and disk, thin pool.
    pub chain: Vec<Link>,
    /// Bytes given back on the host, all images together.
    pub given_back: u64,
    /// For a profile on an LVM thin pool: the pool's data in use before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thin_pool: Option<PoolUse>,
    /// The profile's snapshots: what they hold a trim cannot give back (a snapshot's
    /// layers are read-only, under the clones; its memory files are whole).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<crate::snapshot::Listed>,
    pub ms: u64,
}

/// A thin pool's data in use around a trim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolUse {
    pub pool: String,
    pub data_before: Option<u64>,
    pub data_after: Option<u64>,
    pub given_back: u64,
}

impl TrimReport {
    /// True when every image was trimmed or left alone on purpose.
    pub fn complete(&self) -> bool {
        self.images
            .iter()
            .all(|i| matches!(i.outcome, Outcome::Trimmed | Outcome::LeftAlone))
    }
}

/// An image `lab trim` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub kind: Kind,
    /// The VM's domain when it exists and is lab's.
    pub domain: Option<String>,
    pub running: bool,
    pub image: PathBuf,
    /// A block device (a thin volume), not an image file.
    pub block: bool,
    /// Set when lab must leave the image alone, and why.
    pub refuse: Option<String>,
}

/// The images of `profile` that `lab trim` works on: the named VMs' clones (all VMs' when
/// `vms` is empty), and then also the base. A VM that is not up is left out; a VM named
/// that the profile does not have is an error.
pub fn targets(
    profile: &Profile,
    observed: &Observed,
    storage: &dyn Storage,
    lv: &Libvirt,
    vms: &[String],
) -> Result<Vec<Target>> {
    let p = profile.name.as_str();
    let all: Vec<String> = profile.instances().into_iter().map(|(n, _)| n).collect();
    for name in vms {
        profile.require_vm(name)?;
    }
    let wanted: Vec<&String> = if vms.is_empty() {
        all.iter().collect()
    } else {
        all.iter().filter(|n| vms.contains(n)).collect()
    };
    let mut out = Vec::new();
    for vm in wanted {
        let domain = names::domain(p, vm);
        let clone_volume = storage.clone_volume(p, vm)?;
        let block = clone_volume.as_ref().is_some_and(|v| v.format == "raw");
        let clone = clone_volume.map(|v| v.path);
        match observed.domain(&domain) {
            Some(d) if d.owner.as_ref().is_some_and(|o| o.is(p)) => {
                let disk = lv
                    .domain_disks(&domain)
                    .into_iter()
                    .next()
                    .map(PathBuf::from);
                let refuse = match (&disk, &clone) {
                    (Some(disk), Some(clone)) if same_file(disk, clone) => None,
                    (Some(disk), _) => Some(format!(
                        "domain {domain} writes to {}, which is not lab's clone of {vm}: left alone",
                        disk.display()
                    )),
                    (None, _) => Some(format!("domain {domain} has no disk: nothing to trim")),
                };
                // Its saved memory holds the guest's view of the disk (page cache,
                // filesystem state): trimming under it would corrupt what resumes.
                let refuse = refuse.or_else(|| {
                    d.saved.then(|| {
                        format!(
                            "stopped with its memory saved (lab stop): left alone, as an \
                             offline trim under the saved guest would corrupt it; lab start \
                             {p} {vm} and trim it running"
                        )
                    })
                });
                out.push(Target {
                    name: vm.clone(),
                    kind: Kind::Clone,
                    domain: Some(domain),
                    running: d.running,
                    image: disk.or(clone).unwrap_or_default(),
                    block,
                    refuse,
                });
            }
            Some(_) => out.push(Target {
                name: vm.clone(),
                kind: Kind::Clone,
                domain: None,
                running: false,
                image: clone.unwrap_or_default(),
                block,
                refuse: Some(format!(
                    "domain {domain} is not lab's (no lab mark): it and its disk are left alone"
                )),
            }),
            None => {
                if let Some(clone) = clone {
                    out.push(Target {
                        name: vm.clone(),
                        kind: Kind::Clone,
                        domain: None,
                        running: false,
                        image: clone,
                        block,
                        refuse: None,
                    });
                }
            }
        }
    }
    if vms.is_empty()
        && let Some(base) = storage.base(p)?
    {
        let clones: Vec<String> = observed
            .volumes
            .iter()
            .filter(|v| v.role == Some(VolumeRole::Clone))
            .filter(|v| v.owner.as_ref().is_some_and(|o| o.is(p)))
            .filter_map(|v| v.owner.as_ref().and_then(|o| o.vm.clone()))
            .collect();
        let block = base.format == "raw";
        out.push(Target {
            name: "base".into(),
            kind: Kind::Base,
            domain: None,
            running: false,
            image: base.path,
            block,
            refuse: if block {
                // Sealed read-only, and trimmed when it was sealed: nothing to give back.
                Some(format!(
                    "a thin base is read-only once sealed, and was trimmed when it was sealed: \
                     left alone{}",
                    if clones.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " ({} clone{} read from it)",
                            clones.len(),
                            if clones.len() == 1 { "" } else { "s" }
                        )
                    }
                ))
            } else {
                (!clones.is_empty()).then(|| {
                    format!(
                        "{} clone{} ({}) read from it: a base is trimmed only when no clone \
                     depends on it (`lab down {cli}` removes the clones and keeps the base)",
                        clones.len(),
                        if clones.len() == 1 { "" } else { "s" },
                        clones.join(", "),
                        cli = profile.cli_name()
                    )
                })
            },
        });
    }
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || (a.canonicalize().ok().is_some() && a.canonicalize().ok() == b.canonicalize().ok())
}

/// What `trim` needs.
pub struct TrimEnv<'a> {
    pub lv: &'a Libvirt,
    pub profile: &'a Profile,
    /// The profile's storage: thin volumes or qcow2 images.
    pub storage: &'a dyn Storage,
    /// The qcow2 backend, when that is the profile's storage: clones are compacted.
    pub qcow2: Option<&'a Qcow2Storage>,
    /// Images running domains write to, lab's and everyone else's.
    pub in_use: &'a [InUse],
    /// Shut down a running VM whose guest agent does not answer, trim it offline, and
    /// start it again.
    pub stop: bool,
    /// How long such a VM may take to shut down before it is powered off.
    pub shutdown_timeout: Duration,
    /// Where lab keeps what an offline trim needs while it runs (export, mount points).
    pub runtime_dir: PathBuf,
}

/// Trim every target, all at once, and report.
pub fn trim(env: &TrimEnv<'_>, targets: &[Target]) -> TrimReport {
    let started = Instant::now();
    let chain = host_links(&Sysroot::live(), &env.profile.storage.dir);
    // trim_one reports its failures in its row: only a panic comes back as an error.
    let images: Vec<ImageTrim> =
        crate::fanout::each(targets, |t| t.name.clone(), |t| Ok(trim_one(env, t)))
            .into_iter()
            .zip(targets)
            .map(|(r, t)| {
                r.unwrap_or_else(|_| {
                    let mut r = blank(t, Method::None);
                    r.outcome = Outcome::Failed;
                    r.message = Some("lab's trim of this image panicked".into());
                    r
                })
            })
            .collect();
    TrimReport {
        profile: env.profile.name.clone(),
        given_back: images.iter().map(|i| i.given_back).sum(),
        images,
        chain,
        thin_pool: None,
        snapshots: Vec::new(),
        ms: started.elapsed().as_millis() as u64,
    }
}

fn blank(t: &Target, method: Method) -> ImageTrim {
    ImageTrim {
        name: t.name.clone(),
        kind: t.kind,
        domain: t.domain.clone(),
        image: t.image.display().to_string(),
        state: match (t.kind, &t.domain, t.running) {
            (Kind::Base, _, _) => "-",
            (_, Some(_), true) => "running",
            (_, Some(_), false) => "shut off",
            (_, None, _) => "no domain",
        }
        .into(),
        method,
        outcome: Outcome::Trimmed,
        allocated_before: None,
        allocated_after: None,
        given_back: 0,
        filesystems: Vec::new(),
        restarted: false,
        chain: Vec::new(),
        message: None,
        ms: 0,
    }
}

/// What the host holds for a target: an image file's blocks, a thin volume's data in use.
fn allocated(env: &TrimEnv<'_>, t: &Target) -> Option<u64> {
    if !t.block {
        return qcow2::allocated_bytes(&t.image).ok();
    }
    let name = t.image.file_name()?.to_string_lossy().into_owned();
    let volume = crate::storage::Volume {
        name,
        path: t.image.clone(),
        format: "raw".into(),
    };
    env.storage.usage(&volume).ok().map(|u| u.allocated)
}

fn trim_one(env: &TrimEnv<'_>, t: &Target) -> ImageTrim {
    let started = Instant::now();
    let mut r = blank(t, Method::None);
    if let Some(why) = &t.refuse {
        r.outcome = Outcome::LeftAlone;
        r.message = Some(why.clone());
        r.allocated_before = allocated(env, t);
        r.allocated_after = r.allocated_before;
        return r;
    }
    // libvirt's XML always parses; were it not to, the links would say that no disk and
    // no agent channel were found in it.
    let def = t
        .domain
        .as_deref()
        .and_then(|d| domain_xml(env.lv, d))
        .map(|xml| DomainDef::from_xml(&xml).unwrap_or_default());
    if let Some(def) = &def {
        r.chain.push(domain_disk_link(
            def,
            &t.image,
            t.domain.as_deref().unwrap_or(""),
        ));
        if t.running {
            r.chain
                .push(agent_link(def, t.domain.as_deref().unwrap_or("")));
        }
    }
    r.allocated_before = allocated(env, t);
    let result = if t.running {
        trim_running(env, t, &mut r)
    } else {
        trim_offline(env, t, &mut r)
    };
    if let Err(e) = result {
        r.outcome = Outcome::Failed;
        r.message = Some(format!("{e:#}"));
    }
    r.allocated_after = allocated(env, t);
    if r.outcome == Outcome::Trimmed
        && let (Some(b), Some(a)) = (r.allocated_before, r.allocated_after)
    {
        r.given_back = b.saturating_sub(a);
    }
    r.ms = started.elapsed().as_millis() as u64;
    r
}

fn domain_xml(lv: &Libvirt, domain: &str) -> Option<String> {
    lv.connect()
        .lookup_domain_by_name(domain)
        .ok()?
        .xml_desc(0)
        .ok()
}

fn trim_running(env: &TrimEnv<'_>, t: &Target, r: &mut ImageTrim) -> Result<()> {
    let domain = t.domain.as_deref().unwrap_or_default();
    let broken = r
        .chain
        .iter()
        .find(|l| l.link == "domain-disk" && l.status == LinkStatus::Broken);
    let agent = if let Some(link) = broken {
        Err(format!(
            "{}; {}",
            link.finding,
            link.fix.clone().unwrap_or_default()
        ))
    } else {
        r.method = Method::GuestAgent;
        ui::debug(format_args!(
            "lab: fstrim in {domain} through its guest agent"
        ));
        guest_fstrim(env.lv, domain)
    };
    let why = match agent {
        Ok(()) => {
            r.outcome = Outcome::Trimmed;
            return Ok(());
        }
        Err(why) => why,
    };
    if !env.stop {
        r.method = Method::None;
        r.outcome = Outcome::NotTrimmed;
        r.message = Some(format!(
            "{} is running and cannot be trimmed from inside: {why}. Install and start \
             qemu-guest-agent in the guest, or run `lab trim {} {} --stop` to shut it down, \
             trim it offline and start it again",
            t.name,
            env.profile.cli_name(),
            t.name
        ));
        return Ok(());
    }
    ui::info(format_args!(
        "{}: no trim from inside ({why}); shutting it down for an offline trim (--stop)",
        t.name
    ));
    let forced = shut_down(env.lv, domain, env.shutdown_timeout)?;
    let stopped = Target {
        running: false,
        ..t.clone()
    };
    // The image is no longer in use by its own domain once it is down.
    let in_use: Vec<InUse> = env
        .in_use
        .iter()
        .filter(|u| u.domain != domain)
        .cloned()
        .collect();
    let offline = trim_offline(
        &TrimEnv {
            in_use: &in_use,
            lv: env.lv,
            profile: env.profile,
            storage: env.storage,
            qcow2: env.qcow2,
            stop: env.stop,
            shutdown_timeout: env.shutdown_timeout,
            runtime_dir: env.runtime_dir.clone(),
        },
        &stopped,
        r,
    );
    let console = crate::libvirt::console::console_log(&env.profile.storage.dir, domain);
    let started =
        crate::libvirt::console::empty(&console).and_then(|()| env.lv.start_domain(domain));
    r.restarted = started.is_ok();
    let note = format!(
        "shut down{} for an offline trim ({why}), {}",
        if forced {
            " (powered off: it did not shut down in time)"
        } else {
            ""
        },
        match &started {
            Ok(()) => "started again".to_string(),
            Err(e) => format!("NOT started again: {e:#}"),
        }
    );
    r.message = Some(match r.message.take() {
        Some(m) => format!("{note}; {m}"),
        None => note,
    });
    offline?;
    started
}

/// Ask the guest agent of a running domain to fstrim every mounted filesystem; the error
/// is libvirt's message (no agent channel, agent not connected, a failure in the guest).
pub fn guest_fstrim(lv: &Libvirt, domain: &str) -> Result<(), String> {
    let dom = lv
        .connect()
        .lookup_domain_by_name(domain)
        .map_err(|e| e.message().to_string())?;
    // virt 0.5 does not wrap virDomainFSTrim. SAFETY: `dom` is a live handle for the whole
    // call; a null mount point asks for every mounted filesystem.
    let rc = unsafe { virt::sys::virDomainFSTrim(dom.as_ptr(), std::ptr::null(), 0, 0) };
    if rc < 0 {
        return Err(virt::error::Error::last_error().message().to_string());
    }
    Ok(())
}

/// ACPI shutdown, then power off when the domain is still running after `timeout`.
/// Returns true when it had to be powered off.
fn shut_down(lv: &Libvirt, domain: &str, timeout: Duration) -> Result<bool> {
    let dom = lv
        .connect()
        .lookup_domain_by_name(domain)
        .map_err(|e| anyhow::anyhow!("looking up domain {domain}: {}", e.message()))?;
    if dom.shutdown().is_ok() {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !dom.is_active().unwrap_or(false) {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    if dom.is_active().unwrap_or(false) {
        dom.destroy()
            .map_err(|e| anyhow::anyhow!("powering off domain {domain}: {}", e.message()))?;
    }
    Ok(true)
}

fn trim_offline(env: &TrimEnv<'_>, t: &Target, r: &mut ImageTrim) -> Result<()> {
    r.method = Method::Offline;
    if let Some(u) = user_of(&t.image, env.in_use) {
        let whose = if u.domain.starts_with(&format!("{}-", names::PREFIX)) {
            ""
        } else {
            ", which is not lab's"
        };
        r.method = Method::None;
        r.outcome = Outcome::LeftAlone;
        r.message = Some(format!(
            "{} is in use by running domain {}{whose}: left alone",
            t.image.display(),
            u.domain
        ));
        return Ok(());
    }
    let work = fstrim::offline_workdir(&env.runtime_dir, &t.image);
    let format = if t.block { "raw" } else { "qcow2" };
    r.filesystems = fstrim::offline_fstrim_in(&t.image, format, &work)?;
    match (t.kind, env.qcow2) {
        (_, None) => {}
        (Kind::Clone, Some(q)) => {
            ui::debug(format_args!("lab: compact {}", t.image.display()));
            q.compact(&env.profile.name, &t.name, env.in_use)?;
        }
        (_, Some(_)) => qcow2::check(&t.image)?,
    }
    if r.filesystems.iter().all(|f| f.trimmed.is_none()) {
        r.outcome = Outcome::NotTrimmed;
        r.message = Some(format!(
            "no filesystem lab can trim offline on it ({}): start it and trim it through its \
             guest agent",
            r.filesystems
                .iter()
                .map(|f| format!("{}: {}", f.part, f.note.as_deref().unwrap_or(&f.fstype)))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    } else {
        r.outcome = Outcome::Trimmed;
    }
    Ok(())
}

/// Does the domain's disk on `image` pass the guest's discards down?
pub fn domain_disk_link(def: &DomainDef, image: &Path, domain: &str) -> Link {
    let disks = def.disk_discards();
    let disk = disks
        .iter()
        .find(|(s, _)| same_file(Path::new(s), image))
        .or(disks.first());
    match disk.map(|(_, d)| d.as_deref()) {
        Some(Some("unmap")) => Link::new(
            "domain-disk",
            LinkStatus::Ok,
            format!("domain {domain}: its disk passes discards down (discard='unmap')"),
            None,
        ),
        Some(other) => Link::new(
            "domain-disk",
            LinkStatus::Broken,
            format!(
                "domain {domain}: its disk has {}: the guest's discards stop at QEMU",
                match other {
                    Some(v) => format!("discard='{v}'"),
                    None => "no discard attribute (QEMU ignores discards)".to_string(),
                }
            ),
            Some(format!(
                "`virsh edit {domain}`: put discard='unmap' on the disk's <driver/>, then \
                 restart it (lab defines its domains with it: `lab down` and `lab up` do it)"
            )),
        ),
        None => Link::new(
            "domain-disk",
            LinkStatus::Unknown,
            format!("domain {domain}: no disk found in its definition"),
            None,
        ),
    }
}

/// Is there a guest agent to ask, and is it connected?
pub fn agent_link(def: &DomainDef, domain: &str) -> Link {
    match def.channel_state(AGENT_CHANNEL) {
        Some("connected") => Link::new(
            "guest-agent",
            LinkStatus::Ok,
            format!("domain {domain}: its guest agent is connected"),
            None,
        ),
        Some(state) => Link::new(
            "guest-agent",
            LinkStatus::Broken,
            format!(
                "domain {domain}: its guest agent channel is {}: no agent runs in the guest",
                if state.is_empty() {
                    "not connected"
                } else {
                    state
                }
            ),
            Some(
                "install and start qemu-guest-agent in the guest, or trim it offline: \
                 `lab trim PROFILE VM --stop`"
                    .into(),
            ),
        ),
        None => Link::new(
            "guest-agent",
            LinkStatus::Broken,
            format!("domain {domain}: it has no guest agent channel ({AGENT_CHANNEL})"),
            Some(format!(
                "add <channel type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/></channel> \
                 (lab's domains have it), or trim it offline: `lab trim PROFILE VM --stop`"
            )),
        ),
    }
}

/// The links under the image directory: its filesystem gives clusters back, its disk
/// takes discards.
pub fn host_links(sysroot: &Sysroot, dir: &Path) -> Vec<Link> {
    let stack = blockdev::resolve_path(sysroot, dir);
    let mounted_with_discard = match (sysroot.read_opt("/proc/self/mountinfo"), &stack.mount_point)
    {
        (Some(text), Some(mp)) => mounted_with_discard(&text, mp),
        _ => None,
    };
    stack_links(&stack, mounted_with_discard)
}

/// Whether the filesystem mounted at `mount_point` (the last such line of mountinfo) has
/// the `discard` option, among its mount or its superblock options.
pub fn mounted_with_discard(mountinfo: &str, mount_point: &Path) -> Option<bool> {
    let mut found = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if sep < 6 || fields.len() < sep + 4 || Path::new(fields[4]) != mount_point {
            continue;
        }
        let has = |opts: &str| opts.split(',').any(|o| o == "discard");
        found = Some(has(fields[5]) || has(fields[sep + 3]));
    }
    found
}

/// [`host_links`] from what lies under the directory.
pub fn stack_links(stack: &blockdev::BlockStack, mounted_with_discard: Option<bool>) -> Vec<Link> {
    let place = stack.describe_place();
    let mut links = Vec::new();
    links.push(match stack.fstype.as_deref() {
        Some(fs) if HOLE_PUNCHING.contains(&fs) => Link::new(
            "host-filesystem",
            LinkStatus::Ok,
            format!("{place}: {fs} gives a file's freed clusters back (hole punching)"),
            None,
        ),
        Some(fs) => Link::new(
            "host-filesystem",
            LinkStatus::Unknown,
            format!("{place}: lab does not know whether {fs} punches holes in files"),
            Some("keep the images on ext4, XFS or btrfs".into()),
        ),
        None => Link::new(
            "host-filesystem",
            LinkStatus::Unknown,
            format!("{place}: filesystem not found"),
            None,
        ),
    });
    let without: Vec<String> = stack
        .disks
        .iter()
        .filter(|d| d.supports_discard() == Some(false))
        .map(|d| d.to_string())
        .collect();
    let with: Vec<String> = stack
        .disks
        .iter()
        .filter(|d| d.supports_discard() == Some(true))
        .map(|d| d.to_string())
        .collect();
    links.push(if !without.is_empty() {
        Link::new(
            "host-disk",
            LinkStatus::Weak,
            format!(
                "{}: takes no discard: the host filesystem gets the space back, the disk is \
                 never told",
                without.join(", ")
            ),
            Some(
                "keep the lab on an SSD that takes discard (`lab check --storage DIR` tells)"
                    .into(),
            ),
        )
    } else if with.is_empty() {
        Link::new(
            "host-disk",
            LinkStatus::Unknown,
            format!("{place}: cannot tell whether its disk takes discard"),
            None,
        )
    } else if mounted_with_discard == Some(false) {
        Link::new(
            "host-disk",
            LinkStatus::Ok,
            format!(
                "{} takes discard; {} is mounted without `discard`, so the disk hears of the \
                 freed space at the host's next fstrim",
                with.join(", "),
                stack
                    .mount_point
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display()
            ),
            Some(
                "enable the host's periodic fstrim (`systemctl enable --now fstrim.timer`)".into(),
            ),
        )
    } else {
        Link::new(
            "host-disk",
            LinkStatus::Ok,
            format!("{} takes discard", with.join(", ")),
            None,
        )
    });
    links
}

/// The links of an LVM thin pool: the pool's discard mode, and `issue_discards`.
pub fn thin_links(pool: &ThinPool, issue: Option<&IssueDiscards>) -> Vec<Link> {
    let name = format!("{}/{}", pool.vg, pool.name);
    let mut links = vec![match &pool.discards {
        PoolDiscards::Passdown => Link::new(
            "thin-pool",
            LinkStatus::Ok,
            format!("thin pool {name}: discards free pool blocks and pass down to the disk"),
            None,
        ),
        PoolDiscards::Nopassdown => Link::new(
            "thin-pool",
            LinkStatus::Weak,
            format!(
                "thin pool {name}: discards=nopassdown: the pool gets its blocks back, the \
                 disk is never told"
            ),
            Some(format!("lvchange --discards passdown {name}")),
        ),
        PoolDiscards::Ignore => Link::new(
            "thin-pool",
            LinkStatus::Broken,
            format!(
                "thin pool {name}: discards=ignore: deleted data keeps its pool blocks, \
                 nothing is given back"
            ),
            Some(format!(
                "lvchange --discards passdown {name} (the pool must be inactive to leave ignore)"
            )),
        ),
        PoolDiscards::Unknown(v) => Link::new(
            "thin-pool",
            LinkStatus::Unknown,
            format!("thin pool {name}: discard mode {v:?}"),
            None,
        ),
    }];
    links.push(match issue {
        Some(i) if i.value != 0 => Link::new(
            "lvm-issue-discards",
            LinkStatus::Ok,
            "devices/issue_discards = 1: space of removed LVs is discarded on the disk".into(),
            None,
        ),
        Some(_) => Link::new(
            "lvm-issue-discards",
            LinkStatus::Weak,
            "devices/issue_discards = 0: the space of a removed or shrunk LV is not \
             discarded on the disk"
                .into(),
            Some("`lab check --fix` sets issue_discards = 1 in /etc/lvm/lvmlocal.conf".into()),
        ),
        None => Link::new(
            "lvm-issue-discards",
            LinkStatus::Unknown,
            "devices/issue_discards could not be read".into(),
            None,
        ),
    });
    links
}

/// Thin pool data in use, in bytes (size times `data_percent`).
pub fn pool_data_bytes(pool: &ThinPool) -> Option<u64> {
    Some((pool.size? as f64 * pool.data_percent? / 100.0).round() as u64)
}

/// The table `lab trim` prints.
/// What the profile's snapshots hold that a trim leaves, and how to free it.
fn render_snapshots(profile: &str, snapshots: &[crate::snapshot::Listed]) -> String {
    if snapshots.is_empty() {
        return String::new();
    }
    let total: u64 = snapshots.iter().map(|l| l.bytes).sum();
    let mut out = format!(
        "snapshots hold {} more, which a trim cannot give back (their disk layers are \
         read-only under the clones, trimmed only above them; memory files are whole): \
         `lab snapshot {profile} NAME --rm` frees one\n",
        ByteSize(total)
    );
    for l in snapshots {
        out.push_str(&format!(
            "  snapshot {}: {}\n",
            l.name,
            crate::snapshot::describe(l)
        ));
    }
    out
}

pub fn render(report: &TrimReport) -> String {
    use crate::ui::{Stream, Style, Table};
    let bytes = |b: Option<u64>| b.map(|b| ByteSize(b).to_string()).unwrap_or("-".into());
    let mut t = Table::new([
        "image",
        "state",
        "how",
        "before",
        "after",
        "given back",
        "result",
    ]);
    for i in &report.images {
        let style = match i.outcome {
            Outcome::Trimmed => Style::Green,
            Outcome::LeftAlone => Style::Dim,
            Outcome::NotTrimmed => Style::Yellow,
            Outcome::Failed => Style::Red,
        };
        t.row(vec![
            (i.name.clone(), Style::Plain),
            (i.state.clone(), Style::Plain),
            (i.method.as_str().into(), Style::Plain),
            (bytes(i.allocated_before), Style::Plain),
            (bytes(i.allocated_after), Style::Plain),
            (ByteSize(i.given_back).to_string(), Style::Bold),
            (i.outcome.as_str().into(), style),
        ]);
    }
    let mut out = t.render(Stream::Stdout);
    out.push_str(&format!(
        "given back on the host: {} ({} bytes) in {:.1} s\n",
        ByteSize(report.given_back),
        report.given_back,
        report.ms as f64 / 1000.0
    ));
    if let Some(p) = &report.thin_pool {
        out.push_str(&format!(
            "thin pool {}: data in use {} -> {}, {} given back\n",
            p.pool,
            bytes(p.data_before),
            bytes(p.data_after),
            ByteSize(p.given_back)
        ));
    }
    for i in &report.images {
        if let Some(m) = &i.message {
            out.push_str(&format!("{}: {m}\n", i.name));
        }
    }
    out.push_str(&render_snapshots(&report.profile, &report.snapshots));
    let links = report
        .chain
        .iter()
        .chain(report.images.iter().flat_map(|i| i.chain.iter()));
    for l in links.filter(|l| l.status != LinkStatus::Ok || l.fix.is_some()) {
        out.push_str(&format!(
            "discard chain, {} ({}): {}{}\n",
            l.link,
            match l.status {
                LinkStatus::Ok => "ok",
                LinkStatus::Weak => "weak",
                LinkStatus::Broken => "broken",
                LinkStatus::Unknown => "unknown",
            },
            l.finding,
            l.fix
                .as_deref()
                .map(|f| format!("; fix: {f}"))
                .unwrap_or_default()
        ));
    }
    out
}

/// What `lab trim` says when the profile has no image to trim.
pub fn nothing_to_trim(profile: &Profile, vms: &[String]) -> String {
    let p = &profile.name;
    let cli = profile.cli_name();
    if vms.is_empty() {
        format!(
            "{p}: nothing to trim: lab owns no VM disk and no base of this profile in {} \
             (`lab up {cli}` makes them)",
            profile.storage.dir.display()
        )
    } else {
        format!(
            "{p}: nothing to trim: {} {} not up (`lab up {cli}`)",
            vms.join(", "),
            if vms.len() == 1 { "is" } else { "are" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "<domain type='qemu'><name>lab-t-node1</name><devices>
  <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/iso/x.iso'/></disk>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2' discard='unmap'/>
    <source file='/img/lab-t-node1.qcow2' index='1'/>
    <backingStore type='file' index='2'><format type='qcow2'/><source file='/img/lab-t-base.qcow2'/></backingStore>
    <target dev='vda' bus='virtio'/>
  </disk>
  <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/data'/></disk>
  <channel type='unix'>
    <source mode='bind' path='/run/libvirt/qemu/channel/1-lab-t-node1/org.qemu.guest_agent.0'/>
    <target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>
    <address type='virtio-serial' controller='0' bus='0' port='1'/>
  </channel>
</devices></domain>";

    #[test]
    fn each_disk_says_whether_it_passes_discards_down() {
        let def = DomainDef::from_xml(DOMAIN).unwrap();
        assert_eq!(
            def.disk_discards(),
            [
                (
                    "/img/lab-t-node1.qcow2".to_string(),
                    Some("unmap".to_string())
                ),
                ("/dev/vg/data".to_string(), None),
            ]
        );
        let ok = domain_disk_link(&def, Path::new("/img/lab-t-node1.qcow2"), "lab-t-node1");
        assert_eq!(ok.status, LinkStatus::Ok, "{ok:?}");
        let broken = domain_disk_link(&def, Path::new("/dev/vg/data"), "lab-t-node1");
        assert_eq!(broken.status, LinkStatus::Broken);
        assert!(
            broken.finding.contains("no discard attribute"),
            "{broken:?}"
        );
        assert!(broken.fix.unwrap().contains("discard='unmap'"));
        let ignore = DOMAIN.replace("discard='unmap'", "discard='ignore'");
        let ignore = DomainDef::from_xml(&ignore).unwrap();
        let link = domain_disk_link(&ignore, Path::new("/img/lab-t-node1.qcow2"), "d");
        assert_eq!(link.status, LinkStatus::Broken);
        assert!(link.finding.contains("discard='ignore'"), "{link:?}");
    }

    #[test]
    fn the_agent_channel_state_is_read() {
        let def = DomainDef::from_xml(DOMAIN).unwrap();
        assert_eq!(def.channel_state(AGENT_CHANNEL), Some("disconnected"));
        let on = DOMAIN.replace("state='disconnected'", "state='connected'");
        let on = DomainDef::from_xml(&on).unwrap();
        assert_eq!(agent_link(&on, "d").status, LinkStatus::Ok);
        let off = agent_link(&def, "d");
        assert_eq!(off.status, LinkStatus::Broken);
        assert!(off.finding.contains("disconnected"), "{off:?}");
        let none = "<domain><devices><channel type='pty'><target type='virtio' \
                    name='org.example.other'/></channel></devices></domain>";
        let none = DomainDef::from_xml(none).unwrap();
        assert_eq!(none.channel_state(AGENT_CHANNEL), None);
        assert!(
            agent_link(&none, "d")
                .finding
                .contains("no guest agent channel")
        );
    }

    fn pool(discards: &str) -> ThinPool {
        let rows = crate::host::lvm::parse_lvs(include_str!(
            "../tests/fixtures/lvm/guest-lvs-pool-50.json"
        ))
        .unwrap();
        let row = rows.iter().find(|r| r.segtype == "thin-pool").unwrap();
        let mut p = ThinPool::find(&rows, &row.vg_name, &row.lv_name).unwrap();
        p.discards = PoolDiscards::parse(discards);
        p
    }

    #[test]
    fn thin_pool_links_name_where_discards_stop() {
        let on = IssueDiscards {
            value: 1,
            config_dir: "/etc/lvm".into(),
            built_in_default: false,
        };
        let off = IssueDiscards {
            value: 0,
            ..on.clone()
        };
        let links = thin_links(&pool("passdown"), Some(&on));
        assert!(
            links.iter().all(|l| l.status == LinkStatus::Ok),
            "{links:?}"
        );
        let ignore = thin_links(&pool("ignore"), Some(&off));
        assert_eq!(ignore[0].status, LinkStatus::Broken);
        assert!(ignore[0].finding.contains("discards=ignore"));
        assert!(
            ignore[0]
                .fix
                .as_deref()
                .unwrap()
                .contains("--discards passdown")
        );
        assert_eq!(ignore[1].status, LinkStatus::Weak);
        assert!(
            ignore[1]
                .fix
                .as_deref()
                .unwrap()
                .contains("lab check --fix")
        );
        let nopass = thin_links(&pool("nopassdown"), None);
        assert_eq!(nopass[0].status, LinkStatus::Weak);
        assert_eq!(nopass[1].status, LinkStatus::Unknown);
        let p = pool("passdown");
        let used = pool_data_bytes(&p).unwrap();
        let expect = p.size.unwrap() as f64 * p.data_percent.unwrap() / 100.0;
        assert!((used as f64 - expect).abs() < 1.0);
    }

    #[test]
    fn host_links_name_a_disk_without_discard() {
        let disk = |max| blockdev::Disk {
            name: "sda".into(),
            dev: "8:0".into(),
            rotational: Some(false),
            discard_max_bytes: Some(max),
            discard_granularity: Some(512),
            model: None,
            size_bytes: None,
            driver: None,
        };
        let mut stack = blockdev::BlockStack {
            requested: "/var/lib/lab/images".into(),
            measured_at: "/var/lib/lab/images".into(),
            mount_point: Some("/".into()),
            fstype: Some("ext4".into()),
            device: Some("sda1".into()),
            disks: vec![disk(0)],
            ..Default::default()
        };
        let links = stack_links(&stack, Some(true));
        assert_eq!(links[0].status, LinkStatus::Ok);
        assert_eq!(links[1].status, LinkStatus::Weak);
        assert!(links[1].finding.contains("takes no discard"), "{links:?}");
        stack.disks = vec![disk(1 << 30)];
        let links = stack_links(&stack, Some(false));
        assert_eq!(links[1].status, LinkStatus::Ok);
        assert!(links[1].fix.as_deref().unwrap().contains("fstrim.timer"));
        stack.fstype = Some("nfs4".into());
        assert_eq!(stack_links(&stack, None)[0].status, LinkStatus::Unknown);
    }

    #[test]
    fn the_discard_mount_option_is_found() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict\n\
                    40 27 7:0 / /srv rw,noatime shared:5 - xfs /dev/loop0 rw,attr2\n";
        assert_eq!(mounted_with_discard(text, Path::new("/")), Some(true));
        assert_eq!(mounted_with_discard(text, Path::new("/srv")), Some(false));
        assert_eq!(mounted_with_discard(text, Path::new("/nope")), None);
    }
}
