//! The plan: a pure function of (profile, host facts, observed state) that lists every
//! action `lab up`, `lab reset` or `lab down` would take, and every object it leaves
//! alone, each with the reason. `--dry-run` prints it; the command runs exactly it
//! (`apply`). No I/O and no clock here: what the planner needs to know is observed or a
//! host fact ([`HostFacts::now`] included).
//!
//! `lab up`'s plan is made in steps, each a small function: the network, the boot files
//! (direct boot), storage and the base, acceleration, each VM, the VMs the profile dropped,
//! lab's libvirt pool (thin), provisioning, and the base's age.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;

pub use crate::host::kvm::KvmVerdict;
use crate::mark::VolumeRole;
use crate::names;
pub use crate::observe::HostFacts;
use crate::observe::Observed;
use crate::profile::{NetMode, Profile, StorageBackend, SubnetSpec, VmSpec};
use crate::size::ByteSize;
use crate::subnet::{self, SubnetAllocator, Taken};

/// The verb of an action, as `lab up --dry-run` prints it and `--json` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Create,
    Build,
    Clone,
    Define,
    Start,
    Keep,
    Write,
    Attach,
    Refresh,
    Run,
    Stop,
    Reclone,
    Remove,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Op::Create => "create",
            Op::Build => "build",
            Op::Clone => "clone",
            Op::Define => "define",
            Op::Start => "start",
            Op::Keep => "keep",
            Op::Write => "write",
            Op::Attach => "attach",
            Op::Refresh => "refresh",
            Op::Run => "run",
            Op::Stop => "stop",
            Op::Reclone => "reclone",
            Op::Remove => "remove",
        })
    }
}

/// The kind of object an action is about, as printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Object {
    Network,
    Base,
    Disk,
    Domain,
    /// The kernel and initramfs of direct-boot VMs.
    Boot,
    /// A VM's network interface on the host.
    Tap,
    /// A libvirt storage pool.
    Pool,
    /// A VM's provisioning steps.
    Steps,
    /// A file lab wrote beside its images.
    File,
    /// A VM's cloud-init seed (NoCloud `cidata` ISO).
    Seed,
    /// A published port (`[[forward]]`): lab's nftables rules.
    Forward,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Object::Network => "network",
            Object::Base => "base",
            Object::Disk => "disk",
            Object::Domain => "domain",
            Object::Boot => "boot",
            Object::Tap => "tap",
            Object::Pool => "pool",
            Object::Steps => "steps",
            Object::File => "file",
            Object::Seed => "seed",
            Object::Forward => "forward",
        })
    }
}

/// One thing lab does (or leaves alone on purpose), carrying what its executor needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Define and start the lab's libvirt network (from the plan's [`NetworkPlan`]).
    CreateNetwork { name: String },
    /// Start the lab's network, defined but inactive.
    StartNetwork { name: String },
    /// Build the profile's base and seal it.
    BuildBase { name: String },
    /// Clone VM `vm`'s disk `name` from the base.
    CloneDisk { vm: String, name: String },
    /// Define VM `vm`'s domain `name`.
    DefineDomain { vm: String, name: String },
    /// Start VM `vm`'s domain `name`.
    StartDomain { vm: String, name: String },
    /// Make the direct-boot kernel copy and initramfs (and lab's SSH key they carry).
    WriteBootFiles { kernel: String, initrd: String },
    /// Make VM `vm`'s cloud-init seed `path` with a new identity (machine-id, host key,
    /// instance-id; the same name and address).
    WriteSeed { vm: String, path: String },
    /// Put running VM `vm`'s interface `tap` back on `bridge`.
    ReattachTap {
        vm: String,
        tap: String,
        bridge: String,
    },
    /// Define (or start) lab's libvirt storage pool `name` over `/dev/VG`, and refresh it.
    DefinePool { vg: String, name: String },
    /// Have libvirt list `/dev/VG` again: lab made volumes in it.
    RefreshPool { vg: String, name: String },
    /// Run VM `vm`'s provisioning steps, in order (one done before with the same command
    /// is skipped).
    Provision { vm: String, steps: Vec<String> },
    /// Stop (power off) VM `vm`'s domain `name`.
    StopDomain { vm: String, name: String },
    /// Drop VM `vm`'s disk `name` and clone it again from the base (a new host key too).
    RecloneDisk { vm: String, name: String },
    /// Stop and undefine lab's domain `name` (of VM `vm`, when its mark names one).
    RemoveDomain { vm: Option<String>, name: String },
    /// Stop and undefine lab's network `name`.
    RemoveNetwork { name: String },
    /// Remove VM `vm`'s disk `name`, at `location` (`VG/LV` or an image's path).
    RemoveClone {
        vm: String,
        name: String,
        location: String,
    },
    /// Remove the profile's base `name`, at `location`.
    RemoveBase { name: String, location: String },
    /// Remove a file lab wrote (with its sidecars, for a boot file).
    RemoveFile { kind: FileKind, path: String },
    /// Publish VM `vm`'s port on the host: `name` is `HOST:PORT->VM:PORT`. The rules of
    /// an earlier half (`stale`) go in the same transaction.
    MakeForward {
        vm: String,
        name: String,
        mark: crate::forward::ForwardMark,
        table: String,
        bridge: String,
        stale: Vec<crate::forward::RuleRef>,
    },
    /// Remove a forward's rules (`vm`: the VM its mark names), and with the last, the
    /// profile's table `drop_table`.
    RemoveForward {
        vm: String,
        name: String,
        rules: Vec<crate::forward::RuleRef>,
        drop_table: Option<String>,
    },
    /// Nothing to do: the object is as it should be, or is left alone on purpose.
    Keep {
        object: Object,
        name: String,
        vm: Option<String>,
    },
}

impl Action {
    pub fn op(&self) -> Op {
        match self {
            Action::CreateNetwork { .. } | Action::MakeForward { .. } => Op::Create,
            Action::StartNetwork { .. } | Action::StartDomain { .. } => Op::Start,
            Action::BuildBase { .. } => Op::Build,
            Action::CloneDisk { .. } => Op::Clone,
            Action::DefineDomain { .. } | Action::DefinePool { .. } => Op::Define,
            Action::WriteBootFiles { .. } | Action::WriteSeed { .. } => Op::Write,
            Action::ReattachTap { .. } => Op::Attach,
            Action::RefreshPool { .. } => Op::Refresh,
            Action::Provision { .. } => Op::Run,
            Action::StopDomain { .. } => Op::Stop,
            Action::RecloneDisk { .. } => Op::Reclone,
            Action::RemoveDomain { .. }
            | Action::RemoveNetwork { .. }
            | Action::RemoveClone { .. }
            | Action::RemoveBase { .. }
            | Action::RemoveFile { .. }
            | Action::RemoveForward { .. } => Op::Remove,
            Action::Keep { .. } => Op::Keep,
        }
    }

    pub fn object(&self) -> Object {
        match self {
            Action::CreateNetwork { .. } | Action::StartNetwork { .. } => Object::Network,
            Action::BuildBase { .. } => Object::Base,
            Action::CloneDisk { .. } => Object::Disk,
            Action::DefineDomain { .. }
            | Action::StartDomain { .. }
            | Action::StopDomain { .. }
            | Action::RemoveDomain { .. } => Object::Domain,
            Action::RemoveNetwork { .. } => Object::Network,
            Action::RecloneDisk { .. } | Action::RemoveClone { .. } => Object::Disk,
            Action::RemoveBase { .. } => Object::Base,
            Action::RemoveFile { .. } => Object::File,
            Action::WriteBootFiles { .. } => Object::Boot,
            Action::WriteSeed { .. } => Object::Seed,
            Action::ReattachTap { .. } => Object::Tap,
            Action::DefinePool { .. } | Action::RefreshPool { .. } => Object::Pool,
            Action::Provision { .. } => Object::Steps,
            Action::MakeForward { .. } | Action::RemoveForward { .. } => Object::Forward,
            Action::Keep { object, .. } => *object,
        }
    }

    /// The name of the object acted on.
    pub fn name(&self) -> &str {
        match self {
            Action::CreateNetwork { name }
            | Action::StartNetwork { name }
            | Action::BuildBase { name }
            | Action::CloneDisk { name, .. }
            | Action::DefineDomain { name, .. }
            | Action::StartDomain { name, .. }
            | Action::DefinePool { name, .. }
            | Action::RefreshPool { name, .. }
            | Action::StopDomain { name, .. }
            | Action::RecloneDisk { name, .. }
            | Action::RemoveDomain { name, .. }
            | Action::RemoveNetwork { name }
            | Action::MakeForward { name, .. }
            | Action::RemoveForward { name, .. }
            | Action::Keep { name, .. } => name,
            Action::RemoveClone { location, .. } | Action::RemoveBase { location, .. } => location,
            Action::RemoveFile { path, .. } | Action::WriteSeed { path, .. } => path,
            Action::WriteBootFiles { initrd, .. } => initrd,
            Action::ReattachTap { tap, .. } => tap,
            Action::Provision { vm, .. } => vm,
        }
    }

    /// The VM this action is for, when it is for one.
    pub fn vm(&self) -> Option<&str> {
        match self {
            Action::CreateNetwork { .. }
            | Action::StartNetwork { .. }
            | Action::BuildBase { .. }
            | Action::WriteBootFiles { .. }
            | Action::DefinePool { .. }
            | Action::RefreshPool { .. }
            | Action::RemoveNetwork { .. }
            | Action::RemoveBase { .. }
            | Action::RemoveFile { .. } => None,
            Action::CloneDisk { vm, .. }
            | Action::DefineDomain { vm, .. }
            | Action::StartDomain { vm, .. }
            | Action::WriteSeed { vm, .. }
            | Action::ReattachTap { vm, .. }
            | Action::Provision { vm, .. }
            | Action::StopDomain { vm, .. }
            | Action::RecloneDisk { vm, .. }
            | Action::MakeForward { vm, .. }
            | Action::RemoveForward { vm, .. }
            | Action::RemoveClone { vm, .. } => Some(vm),
            Action::RemoveDomain { vm, .. } => vm.as_deref(),
            Action::Keep { vm, .. } => vm.as_deref(),
        }
    }
}

/// The files `lab down` removes besides volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    /// A VM's serial console log.
    ConsoleLog,
    /// A VM's known_hosts file.
    KnownHosts,
    /// A VM's cloud-init seed.
    Seed,
    /// A host key, certificate, host CA or peer key pair lab made for the lab's VMs.
    Identity,
    /// The packstack password lab made up for the lab.
    PackstackPassword,
    /// Half of lab's SSH key pair for the profile (with --purge).
    SshKey,
    /// An unfinished image an interrupted run left.
    Unfinished,
    /// A direct-boot kernel or initramfs, with its digest, inputs and mark (with --purge).
    BootFile,
    /// lab's mark beside a file that is gone.
    OrphanMark,
    /// The directory of unfinished images, empty once they are gone.
    UnfinishedDir,
    /// A snapshot's directory (`lab snapshot`): its memory files and disk layers.
    Snapshot,
}

impl FileKind {
    fn describe(self) -> &'static str {
        match self {
            FileKind::ConsoleLog => "a VM's console log",
            FileKind::KnownHosts => "a VM's host key, as lab's ssh knew it",
            FileKind::Seed => "a VM's cloud-init seed",
            FileKind::Identity => "an identity lab made for the lab's VMs (host key, CA, peer key)",
            FileKind::PackstackPassword => {
                "the packstack password lab made up: it belongs to the OpenStack in the VMs"
            }
            FileKind::SshKey => "lab's SSH key for the profile (--purge)",
            FileKind::Unfinished => "unfinished, left by an interrupted run",
            FileKind::BootFile => "a boot file lab made, with its digest and inputs (--purge)",
            FileKind::OrphanMark => "lab's mark of a file that is gone",
            FileKind::UnfinishedDir => "the directory of unfinished images, left empty",
            FileKind::Snapshot => "a snapshot of the lab: memory and disk layers",
        }
    }
}

/// An action with the reason lab takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub action: Action,
    pub why: String,
}

impl Planned {
    pub fn new(action: Action, why: impl Into<String>) -> Planned {
        Planned {
            action,
            why: why.into(),
        }
    }

    pub fn op(&self) -> Op {
        self.action.op()
    }

    pub fn object(&self) -> Object {
        self.action.object()
    }

    pub fn name(&self) -> &str {
        self.action.name()
    }

    pub fn vm(&self) -> Option<&str> {
        self.action.vm()
    }
}

/// `{"op", "object", "name", "vm"?, "why", "steps"?}`: the shape scripts read from
/// `--json`.
impl Serialize for Planned {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let vm = self.vm();
        let steps = match &self.action {
            Action::Provision { steps, .. } => Some(steps),
            Action::CreateNetwork { .. }
            | Action::StartNetwork { .. }
            | Action::BuildBase { .. }
            | Action::CloneDisk { .. }
            | Action::DefineDomain { .. }
            | Action::StartDomain { .. }
            | Action::WriteBootFiles { .. }
            | Action::WriteSeed { .. }
            | Action::ReattachTap { .. }
            | Action::DefinePool { .. }
            | Action::RefreshPool { .. }
            | Action::StopDomain { .. }
            | Action::RecloneDisk { .. }
            | Action::RemoveDomain { .. }
            | Action::RemoveNetwork { .. }
            | Action::RemoveClone { .. }
            | Action::RemoveBase { .. }
            | Action::RemoveFile { .. }
            | Action::MakeForward { .. }
            | Action::RemoveForward { .. }
            | Action::Keep { .. } => None,
        };
        let mut st = s.serialize_struct("Action", 6)?;
        st.serialize_field("op", &self.op())?;
        st.serialize_field("object", &self.object())?;
        st.serialize_field("name", self.name())?;
        match vm {
            Some(vm) => st.serialize_field("vm", vm)?,
            None => st.skip_field("vm")?,
        }
        st.serialize_field("why", &self.why)?;
        match steps {
            Some(steps) => st.serialize_field("steps", steps)?,
            None => st.skip_field("steps")?,
        }
        st.end()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkPlan {
    pub name: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mode: NetMode,
    pub domain: String,
    /// Addresses handed to anything that is not a lab VM.
    pub dhcp_range: (Ipv4Addr, Ipv4Addr),
    pub why_subnet: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    LvmThin,
    Qcow2,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoragePlan {
    pub backend: Backend,
    /// "VG/POOL" for thin, the image directory for qcow2.
    pub location: String,
    pub base: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmPlan {
    pub name: String,
    pub domain: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub vcpus: u32,
    pub memory: ByteSize,
    pub disk: ByteSize,
    pub disk_volume: String,
    pub role: Option<String>,
    pub nested: bool,
    /// libvirt domain type: "kvm" or "qemu" (TCG emulation).
    pub domain_type: String,
    /// libvirt CPU mode: host-passthrough, host-model or maximum.
    pub cpu_mode: String,
    /// A display (`[[vm]] graphics`), on the host's loopback; none when headless.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graphics: Option<crate::profile::GraphicsKind>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub profile: String,
    pub network: NetworkPlan,
    pub storage: StoragePlan,
    pub vms: Vec<VmPlan>,
    /// What `lab up` changes, in order.
    pub actions: Vec<Planned>,
    /// What already is as it should be, or is left alone on purpose.
    pub unchanged: Vec<Planned>,
    /// Run in the VMs once all are ready: the provisioning steps of each VM. A step done
    /// before with the same command is skipped, so on a lab already provisioned these
    /// change nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub provision: Vec<Planned>,
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// A plan that cannot be made: refused before anything is touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// What the steps of the planner add up: actions, what is left alone, warnings.
#[derive(Debug, Default)]
struct Lists {
    actions: Vec<Planned>,
    unchanged: Vec<Planned>,
    warnings: Vec<String>,
}

impl Lists {
    fn act(&mut self, action: Action, why: impl Into<String>) {
        self.actions.push(Planned::new(action, why));
    }

    fn keep(&mut self, object: Object, name: &str, vm: Option<&str>, why: impl Into<String>) {
        self.unchanged.push(Planned::new(
            Action::Keep {
                object,
                name: name.to_string(),
                vm: vm.map(str::to_string),
            },
            why,
        ));
    }
}

/// What `lab up` was asked besides the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpOptions {
    /// Run the profile's provisioning steps (`--no-provision` says no).
    pub provision: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions { provision: true }
    }
}

/// The plan of `lab up` with provisioning. Pure: no I/O, no clock, no randomness.
pub fn plan(profile: &Profile, host: &HostFacts, observed: &Observed) -> Result<Plan, PlanError> {
    up(profile, host, observed, UpOptions::default())
}

/// The plan of `lab up`. Pure: no I/O, no clock, no randomness.
pub fn up(
    profile: &Profile,
    host: &HostFacts,
    observed: &Observed,
    options: UpOptions,
) -> Result<Plan, PlanError> {
    let mut out = Lists::default();
    let network = network_step(profile, host, observed, &mut out)?;
    boot_files_step(profile, observed, &mut out);
    let storage = storage_step(profile, host)?;
    base_step(profile, &storage, observed, &mut out)?;
    acceleration_warnings(host, &mut out);
    let mut vms = Vec::new();
    for (index, (name, spec)) in profile.instances().iter().enumerate() {
        vms.push(vm_step(
            profile, host, observed, &network, &storage, index, name, spec, &mut out,
        )?);
    }
    dropped_vms_step(profile, observed, &vms, &mut out);
    pool_step(profile, &storage, observed, &mut out);
    forward_step(profile, host, observed, &network, &vms, &mut out)?;
    stale_base_warning(profile, observed, host.now, &mut out);
    let provision = if options.provision {
        provision_step(profile, &network, &vms)
    } else {
        Vec::new()
    };
    Ok(Plan {
        profile: profile.name.clone(),
        network,
        storage,
        vms,
        actions: out.actions,
        unchanged: out.unchanged,
        provision,
        warnings: out.warnings,
    })
}

/// Published ports: each `[[forward]]` kept when lab's rules for it are all there with the
/// VM's address, none below libvirt's (and the bridge routes loopback), else made once the
/// VM is ready; refused when the host port is someone else's, or the host address is not
/// the host's. lab's rules the profile no longer asks for go.
fn forward_step(
    profile: &Profile,
    host: &HostFacts,
    observed: &Observed,
    network: &NetworkPlan,
    vms: &[VmPlan],
    out: &mut Lists,
) -> Result<(), PlanError> {
    use crate::forward::{ForwardMark, RuleRef};
    let p = profile.name.as_str();
    let table = names::forward_table(p);
    let mine = |r: &&crate::forward::ObservedRule| r.of_profile(p, &table);
    let mut wanted = Vec::new();
    for f in profile.forwards() {
        let Some(vm) = vms.iter().find(|v| v.name == f.vm) else {
            continue;
        };
        let mark = ForwardMark {
            profile: p.to_string(),
            vm: f.vm.clone(),
            port: f.port,
            target: vm.ip,
            host_address: f.host_address,
            host_port: f.host_port,
            proto: f.proto,
        };
        let name = mark.name();
        let a = f.host_address;
        if !a.is_loopback() && !a.is_unspecified() && !host.addresses.contains(&a) {
            return Err(PlanError(format!(
                "{}: forward {name}: {a} is not an address of this host (its addresses: {}); \
                 nothing was made: publish on one of them, 0.0.0.0 (all) or 127.0.0.1",
                profile.locate(&forward_key(profile, &f, "host_address")),
                if host.addresses.is_empty() {
                    "none read".to_string()
                } else {
                    host.addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        // Another lab's forward on the same port and an address it catches.
        let overlaps = |b: std::net::Ipv4Addr| b == a || b.is_unspecified() || a.is_unspecified();
        if let Some(other) = observed.forwards.iter().filter(|r| !mine(r)).find_map(|r| {
            r.mark
                .as_ref()
                .filter(|m| m.host_port == f.host_port && overlaps(m.host_address))
        }) {
            return Err(PlanError(format!(
                "{}: forward {name}: {}:{} is published by lab profile {} (to its VM {}); \
                 nothing was made",
                profile.locate(&forward_key(profile, &f, "host_port")),
                other.host_address,
                f.host_port,
                other.profile,
                other.vm
            )));
        }
        // This profile's rules for the same published port (whatever VM address they send to).
        let same_port: Vec<&crate::forward::ObservedRule> = observed
            .forwards
            .iter()
            .filter(mine)
            .filter(|r| {
                r.mark.as_ref().is_some_and(|m| {
                    m.host_port == f.host_port
                        && m.host_address == f.host_address
                        && m.vm == f.vm
                        && m.port == f.port
                })
            })
            .collect();
        let places = mark.places(&table);
        let in_place = |place: &(String, &str)| {
            same_port
                .iter()
                .filter(|r| {
                    (&r.table, r.chain.as_str()) == (&place.0, place.1)
                        && r.mark.as_ref() == Some(&mark)
                        && !r.shadowed
                })
                .count()
                == places.iter().filter(|q| *q == place).count()
        };
        let missing: Vec<&(String, &str)> = places.iter().filter(|q| !in_place(q)).collect();
        wanted.push(mark.comment());
        let whole = missing.is_empty() && same_port.len() == places.len();
        if whole && observed.route_localnet {
            out.keep(Object::Forward, &name, Some(&f.vm), "published");
            continue;
        }
        // Not there: taken by someone else is refused before anything is made.
        if same_port.is_empty()
            && let Some(l) = host
                .listeners
                .iter()
                .find(|l| l.catches(f.host_address, f.host_port))
        {
            return Err(PlanError(format!(
                "{}: forward {name}: port {}:{} is taken by {l}; nothing was made: stop it \
                 or publish another host_port",
                profile.locate(&forward_key(profile, &f, "host_port")),
                f.host_address,
                f.host_port
            )));
        }
        let why = if whole {
            "the lab's bridge does not route loopback (its network was made again)".to_string()
        } else if same_port.is_empty() {
            format!(
                "{}:{} on the host reaches {}:{} ({}), once the VM is ready",
                f.host_address, f.host_port, f.vm, f.port, vm.ip
            )
        } else if !missing.is_empty()
            && missing.iter().all(|q| q.0 == crate::forward::LIBVIRT_TABLE)
        {
            "its accept in libvirt's chains is gone or below libvirt's rules (libvirt \
             rewrote them): put back on top"
                .to_string()
        } else {
            "half made (an interrupted run) or to another address: made again".to_string()
        };
        out.act(
            Action::MakeForward {
                vm: f.vm.clone(),
                name,
                mark,
                table: table.clone(),
                bridge: network.bridge.clone(),
                stale: same_port.iter().map(|r| RuleRef::from(*r)).collect(),
            },
            why,
        );
    }
    // lab's rules of this profile that no forward of it asks for (and were not replaced
    // above): dropped VMs, edited forwards.
    let replaced: Vec<RuleRef> = out
        .actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::MakeForward { stale, .. } => Some(stale.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let unwanted: Vec<&crate::forward::ObservedRule> = observed
        .forwards
        .iter()
        .filter(mine)
        .filter(|r| !replaced.contains(&RuleRef::from(*r)))
        .filter(|r| {
            r.mark
                .as_ref()
                .is_some_and(|m| !wanted.contains(&m.comment()))
        })
        .collect();
    remove_forwards(
        &unwanted,
        None,
        "no [[forward]] of the profile asks for it",
        out,
    );
    Ok(())
}

/// The key path of a forward's `field` in the profile, for its line.
fn forward_key(profile: &Profile, f: &crate::profile::Forward, field: &str) -> String {
    let i = profile
        .forwards
        .iter()
        .position(|s| s.vm == f.vm && s.host_port == i64::from(f.host_port))
        .unwrap_or(0);
    format!("forward[{i}].{field}")
}

/// RemoveForward actions for `rules`, one per mark (rules without lab's comment in lab's
/// table together); `drop_table` on the last.
fn remove_forwards(
    rules: &[&crate::forward::ObservedRule],
    drop_table: Option<String>,
    why: &str,
    out: &mut Lists,
) {
    let mut groups: Vec<(String, String, Vec<crate::forward::RuleRef>)> = Vec::new();
    for r in rules {
        let (name, vm) = match &r.mark {
            Some(m) => (m.name(), m.vm.clone()),
            None => (format!("{} (unmarked)", r.table), String::new()),
        };
        match groups.iter_mut().find(|g| g.0 == name) {
            Some(g) => g.2.push((*r).into()),
            None => groups.push((name, vm, vec![(*r).into()])),
        }
    }
    let n = groups.len();
    for (i, (name, vm, rules)) in groups.into_iter().enumerate() {
        out.act(
            Action::RemoveForward {
                vm,
                name,
                rules,
                drop_table: if i + 1 == n { drop_table.clone() } else { None },
            },
            why,
        );
    }
}

/// A base older than this many days is due for a rebuild that patches it.
pub const STALE_DAYS: u64 = 30;

/// How long ago `then` (seconds since the epoch) was, in days, as people say it.
pub fn days_ago(then: u64, now: u64) -> String {
    match now.saturating_sub(then) / 86_400 {
        0 => "today".into(),
        1 => "1 day ago".into(),
        n => format!("{n} days ago"),
    }
}

/// How long ago a base built at `built_at` was built, when that is more than
/// [`STALE_DAYS`] ago.
pub fn stale_since(built_at: Option<u64>, now: u64) -> Option<String> {
    built_at
        .filter(|&b| now.saturating_sub(b) / 86_400 > STALE_DAYS)
        .map(|b| days_ago(b, now))
}

/// A kickstart base that is current but was built more than [`STALE_DAYS`] ago is due
/// for patching ("update the base regularly"): a warning. One out of date is rebuilt
/// anyway, and says so in its action.
fn stale_base_warning(profile: &Profile, observed: &Observed, now: u64, out: &mut Lists) {
    if profile.base.kickstart.is_none() || observed.base_out_of_date.is_some() {
        return;
    }
    if let Some(ago) = stale_since(observed.base_built_at.filter(|&b| b > 0), now) {
        out.warnings.push(format!(
            "the base of {} was built {ago}: `lab base build {} --force` patches it (VMs made \
             before keep the old base until `lab reset`)",
            profile.name,
            profile.cli_name()
        ));
    }
}

/// The direct-boot kernel and initramfs: made when missing or when what they are made of
/// changed (the host's kernel, busybox, the SSH server or agent, lab's key).
fn boot_files_step(profile: &Profile, observed: &Observed, out: &mut Lists) {
    if !profile.direct_boot() {
        return;
    }
    let dir = &profile.storage.dir;
    let file = |path: PathBuf| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let kernel = file(crate::directboot::kernel_path(dir, &profile.name));
    let initrd = file(crate::directboot::initrd_path(dir, &profile.name));
    if observed.boot_files_current {
        out.keep(
            Object::Boot,
            &initrd,
            None,
            format!("{kernel} and {initrd} are current"),
        );
    } else {
        out.act(
            Action::WriteBootFiles {
                kernel: kernel.clone(),
                initrd,
            },
            format!(
                "copy of the host's kernel as {kernel} and the initramfs lab makes, in {}: \
                 missing, or what they are made of changed",
                dir.display()
            ),
        );
    }
}

/// With a thin pool, lab's libvirt storage pool over the VG, so `virsh vol-list` and
/// virt-manager show lab's volumes: defined when missing, refreshed when lab makes volumes.
fn pool_step(profile: &Profile, storage: &StoragePlan, observed: &Observed, out: &mut Lists) {
    if storage.backend != Backend::LvmThin {
        return;
    }
    let Some(vg) = profile.storage.vg.clone() else {
        return;
    };
    let name = names::storage_pool(&vg);
    let makes_volumes = out.actions.iter().any(|a| match &a.action {
        Action::BuildBase { .. } | Action::CloneDisk { .. } | Action::RecloneDisk { .. } => true,
        Action::CreateNetwork { .. }
        | Action::StartNetwork { .. }
        | Action::DefineDomain { .. }
        | Action::StartDomain { .. }
        | Action::WriteBootFiles { .. }
        | Action::WriteSeed { .. }
        | Action::ReattachTap { .. }
        | Action::DefinePool { .. }
        | Action::RefreshPool { .. }
        | Action::Provision { .. }
        | Action::StopDomain { .. }
        | Action::RemoveDomain { .. }
        | Action::RemoveNetwork { .. }
        | Action::RemoveClone { .. }
        | Action::RemoveBase { .. }
        | Action::RemoveFile { .. }
        | Action::MakeForward { .. }
        | Action::RemoveForward { .. }
        | Action::Keep { .. } => false,
    });
    if !observed.storage_pools.contains(&name) {
        out.act(
            Action::DefinePool {
                vg: vg.clone(),
                name,
            },
            format!(
                "libvirt storage pool over {} so virsh vol-list and virt-manager show lab's \
                 volumes (a failure here is a warning)",
                names::vg_dir(&vg)
            ),
        );
    } else if makes_volumes {
        out.act(
            Action::RefreshPool {
                vg: vg.clone(),
                name,
            },
            format!(
                "libvirt lists {} again, with the new volumes",
                names::vg_dir(&vg)
            ),
        );
    } else {
        out.keep(Object::Pool, &name, None, "defined and active");
    }
}

/// Each VM's provisioning steps, in profile order: a step with neither `role` nor `vm`
/// runs everywhere (as [`crate::guest::steps::steps_for`] selects them). A VM of a
/// kickstart base takes the lab's identity first ([`crate::guest::identity::STEP`]), with
/// or without steps of its own.
fn provision_step(profile: &Profile, network: &NetworkPlan, vms: &[VmPlan]) -> Vec<Planned> {
    let identity = crate::guest::identity::over_ssh(profile);
    vms.iter()
        .filter_map(|vm| {
            let own: Vec<String> = profile
                .provision
                .iter()
                .filter(|s| s.role.is_none() || s.role == vm.role)
                .filter(|s| s.vm.as_deref().is_none_or(|v| v == vm.name))
                .map(|s| s.name.clone())
                .collect();
            let mut steps = Vec::new();
            let mut why = Vec::new();
            if identity {
                steps.push(crate::guest::identity::STEP.to_string());
                why.push(format!(
                    "{} first ({}.{}, /etc/hosts of the lab's {} VM{}, a fresh machine-id, a \
                     host key signed by the lab's CA, root's lab peer key: a clone of the base \
                     has none)",
                    crate::guest::identity::STEP,
                    vm.name,
                    network.domain,
                    vms.len(),
                    if vms.len() == 1 { "" } else { "s" }
                ));
            }
            if !own.is_empty() {
                why.push(own.join(", "));
            }
            steps.extend(own);
            (!steps.is_empty()).then(|| {
                why.push("a step done before with the same command is skipped".into());
                Planned::new(
                    Action::Provision {
                        vm: vm.name.clone(),
                        steps,
                    },
                    why.join("; "),
                )
            })
        })
        .collect()
}

/// Nothing with one of lab's names that lab did not make is ever touched: the lab's
/// network name and bridge must be free or lab's.
fn refuse_foreign_network(profile: &Profile, observed: &Observed) -> Result<(), PlanError> {
    let p = profile.name.as_str();
    let net_name = names::network(p);
    if let Some(n) = observed.network(&net_name)
        && !n.owner.as_ref().is_some_and(|o| o.is(p))
    {
        return Err(PlanError(format!(
            "libvirt network {net_name} exists and is not lab's (no lab ownership mark): \
             lab will not touch it; rename the profile or remove that network yourself"
        )));
    }
    let bridge = names::bridge(p);
    if let Some(other) = observed
        .networks
        .iter()
        .find(|n| n.name != net_name && n.bridge.as_deref() == Some(bridge.as_str()))
    {
        return Err(PlanError(format!(
            "bridge {bridge} is already used by libvirt network {}: rename the profile",
            other.name
        )));
    }
    Ok(())
}

/// The networks the lab's subnet must not collide with: the host's and every libvirt
/// network but this lab's own (the host's route to the lab's own bridge, and the bridge's
/// address, are the lab).
fn taken_subnets(profile: &Profile, host: &HostFacts, observed: &Observed) -> Vec<Taken> {
    let net_name = names::network(&profile.name);
    let bridge = names::bridge(&profile.name);
    let own_net = observed.network(&net_name);
    let own_subnets: Vec<Ipv4Net> = own_net.map(|n| n.subnets.clone()).unwrap_or_default();
    let mut taken: Vec<Taken> = host
        .taken
        .iter()
        .filter(|t| match &t.iface {
            Some(iface) => own_net.is_none() || *iface != bridge,
            // The lab bridge's own address is the lab's; a DNS server or proxy that a VPN
            // put inside the lab's subnet is not, and collides.
            None => !own_subnets
                .iter()
                .any(|s| t.net.prefix_len() == 32 && t.net.addr() == subnet::gateway(*s)),
        })
        .cloned()
        .collect();
    for n in observed.networks.iter().filter(|n| n.name != net_name) {
        let what = match &n.bridge {
            Some(b) => format!("libvirt network {} on {b}", n.name),
            None => format!("libvirt network {}", n.name),
        };
        taken.extend(n.subnets.iter().map(|net| Taken {
            net: *net,
            what: what.clone(),
            iface: None,
        }));
    }
    taken
}

/// The profile's fixed subnet when it collides with nothing, else the allocator's choice;
/// with why.
fn choose_subnet(
    profile: &Profile,
    own: Option<Ipv4Net>,
    taken: &[Taken],
) -> Result<(Ipv4Net, String), PlanError> {
    let at = |key: &str| profile.locate(key);
    match profile.network.subnet {
        SubnetSpec::Fixed(net) => {
            let hits = subnet::collisions(net, taken);
            if !hits.is_empty() {
                let with: Vec<String> = hits.iter().map(|t| t.to_string()).collect();
                return Err(PlanError(format!(
                    "{}: network.subnet: {net} collides with {}: choose another or \"auto\"",
                    at("network.subnet"),
                    with.join(", ")
                )));
            }
            Ok((
                net,
                format!("{net} is set in the profile and collides with nothing"),
            ))
        }
        SubnetSpec::Auto => {
            let alloc = SubnetAllocator::new(profile.network.auto_range)
                .allocate(&profile.name, own, taken)
                .map_err(|e| {
                    PlanError(format!(
                        "{}: network.subnet: auto: {e}; set network.auto_range to another private range",
                        at("network.subnet")
                    ))
                })?;
            Ok((alloc.subnet, alloc.reason))
        }
    }
}

/// The lab's network: its subnet, addresses, and whether it is to be created or started.
fn network_step(
    profile: &Profile,
    host: &HostFacts,
    observed: &Observed,
    out: &mut Lists,
) -> Result<NetworkPlan, PlanError> {
    let p = profile.name.as_str();
    refuse_foreign_network(profile, observed)?;
    let net_name = names::network(p);
    let bridge = names::bridge(p);
    let own_net = observed.network(&net_name);
    let taken = taken_subnets(profile, host, observed);
    let own_first = own_net.and_then(|n| n.subnets.first().copied());
    let (subnet, why_subnet) = choose_subnet(profile, own_first, &taken)?;
    let instances = profile.instances().len();
    let first_vm = names::vm_ip(subnet, 0).ok_or_else(|| subnet_too_small(profile, subnet))?;
    let last_vm =
        names::vm_ip(subnet, instances - 1).ok_or_else(|| subnet_too_small(profile, subnet))?;
    let dhcp_start = Ipv4Addr::from(u32::from(last_vm) + 1);
    let dhcp_end = Ipv4Addr::from(u32::from(subnet.broadcast()) - 1);
    let dhcp_range = if dhcp_start <= dhcp_end {
        (dhcp_start, dhcp_end)
    } else {
        (first_vm, last_vm)
    };
    // A bridge of the lab's name that no libvirt network owns (a libvirtd that crashed, a
    // network undefined behind its back) makes libvirt fail with "File exists".
    if own_net.is_none_or(|n| !n.active) && host.interfaces.contains(&bridge) {
        return Err(PlanError(format!(
            "bridge {bridge} exists on this host but no active libvirt network owns it (left \
             by a libvirtd that stopped without taking it down): remove it with `ip link \
             delete {bridge}` and run `lab up {}` again",
            profile.cli_name()
        )));
    }
    match own_net {
        None => out.act(
            Action::CreateNetwork {
                name: net_name.clone(),
            },
            format!(
                "{} network on bridge {bridge}, {subnet}",
                match profile.network.mode {
                    NetMode::Isolated => "isolated (no route out)",
                    NetMode::Nat => "NAT",
                }
            ),
        ),
        Some(n) if !n.subnets.contains(&subnet) => {
            // Why it moved: what now sits in the network's subnet (a VPN that came up, the
            // DNS server it pushed).
            let now_taken: Vec<String> = n
                .subnets
                .iter()
                .flat_map(|s| subnet::collisions(*s, &taken))
                .map(|t| t.to_string())
                .collect();
            let why = if now_taken.is_empty() {
                String::new()
            } else {
                format!(" (it collides with {})", now_taken.join(", "))
            };
            return Err(PlanError(format!(
                "network {net_name} is on {}{why} but the profile now wants {subnet}: run `lab down {cli}` first",
                n.subnets
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                cli = profile.cli_name()
            )));
        }
        Some(n) if !n.active => out.act(
            Action::StartNetwork {
                name: net_name.clone(),
            },
            "defined but not active",
        ),
        Some(_) => out.keep(Object::Network, &net_name, None, "exists and is active"),
    }
    Ok(NetworkPlan {
        name: net_name,
        bridge,
        subnet,
        gateway: subnet::gateway(subnet),
        mode: profile.network.mode,
        domain: profile.domain(),
        dhcp_range,
        why_subnet,
    })
}

/// The storage backend: a thin pool when the profile names one that exists (or insists
/// on it), else qcow2 overlays in the image directory.
pub(crate) fn storage_step(profile: &Profile, host: &HostFacts) -> Result<StoragePlan, PlanError> {
    let at = |key: &str| profile.locate(key);
    let s = &profile.storage;
    let pool = match (&s.vg, &s.pool) {
        (Some(vg), Some(pool)) => Some((vg.clone(), pool.clone())),
        _ => None,
    };
    let pool_exists = pool.as_ref().is_some_and(|p| host.thin_pools.contains(p));
    let (backend, location, why) = match (s.backend, &pool) {
        (StorageBackend::LvmThin, Some((vg, pl))) if pool_exists => (
            Backend::LvmThin,
            format!("{vg}/{pl}"),
            format!("thin pool {vg}/{pl} (storage.backend = \"lvm-thin\")"),
        ),
        (StorageBackend::LvmThin, Some((vg, pl))) => {
            return Err(PlanError(format!(
                "{}: storage.pool: thin pool {vg}/{pl} does not exist: create it \
                 (lvcreate --type thin-pool -L SIZE -n {pl} {vg}) or set storage.backend = \"qcow2\"",
                at("storage.pool")
            )));
        }
        (StorageBackend::Auto, Some((vg, pl))) if pool_exists => (
            Backend::LvmThin,
            format!("{vg}/{pl}"),
            format!("thin pool {vg}/{pl} exists (storage.backend = \"auto\")"),
        ),
        (StorageBackend::Auto, Some((vg, pl))) => (
            Backend::Qcow2,
            s.dir.display().to_string(),
            format!(
                "no thin pool {vg}/{pl} on this host: qcow2 overlays in {} (storage.backend = \"auto\")",
                s.dir.display()
            ),
        ),
        (StorageBackend::Auto, None) => (
            Backend::Qcow2,
            s.dir.display().to_string(),
            format!(
                "no thin pool named in the profile: qcow2 overlays in {}",
                s.dir.display()
            ),
        ),
        (StorageBackend::Qcow2, _) => (
            Backend::Qcow2,
            s.dir.display().to_string(),
            format!(
                "qcow2 overlays in {} (storage.backend = \"qcow2\")",
                s.dir.display()
            ),
        ),
        (StorageBackend::LvmThin, None) => {
            return Err(PlanError(format!(
                "{}: storage.backend: lvm-thin needs storage.vg and storage.pool",
                at("storage.backend")
            )));
        }
    };
    Ok(StoragePlan {
        backend,
        location,
        base: volume_name(backend, names::base_volume(&profile.name)),
        why,
    })
}

/// A volume's name on a backend: an LV's name, or an image file's.
fn volume_name(backend: Backend, name: String) -> String {
    match backend {
        Backend::LvmThin => name,
        Backend::Qcow2 => format!("{name}.qcow2"),
    }
}

/// A sealed volume of lab's for this profile, in the role given.
fn has_volume(observed: &Observed, profile: &str, name: &str, role: VolumeRole) -> bool {
    observed.volumes.iter().any(|v| {
        v.name == name
            && v.role == Some(role)
            && v.sealed
            && v.owner.as_ref().is_some_and(|o| o.is(profile))
    })
}

/// Refused: a volume with one of lab's names that is not this profile's.
fn refuse_foreign_volume(
    observed: &Observed,
    profile: &str,
    name: &str,
    storage: &StoragePlan,
) -> Result<(), PlanError> {
    if observed
        .volumes
        .iter()
        .any(|v| v.name == name && !v.owner.as_ref().is_some_and(|o| o.is(profile)))
    {
        return Err(PlanError(format!(
            "{name} exists in {} and is not lab's: lab will not touch it",
            storage.location
        )));
    }
    Ok(())
}

/// The base: built when missing, unsealed (an interrupted build) or out of date.
fn base_step(
    profile: &Profile,
    storage: &StoragePlan,
    observed: &Observed,
    out: &mut Lists,
) -> Result<(), PlanError> {
    let p = profile.name.as_str();
    let base_name = &storage.base;
    refuse_foreign_volume(observed, p, base_name, storage)?;
    let build = Action::BuildBase {
        name: base_name.clone(),
    };
    match (
        has_volume(observed, p, base_name, VolumeRole::Base),
        &observed.base_out_of_date,
    ) {
        (true, Some(why)) => out.act(
            build,
            format!(
                "out of date ({why}): {}; VMs made before keep the old base until `lab reset`",
                base_source(profile)
            ),
        ),
        (true, None) => out.keep(Object::Base, base_name, None, "built and sealed"),
        (false, _) => out.act(build, base_source(profile)),
    }
    Ok(())
}

/// Without usable KVM every VM is emulated: said once.
fn acceleration_warnings(host: &HostFacts, out: &mut Lists) {
    if !host.kvm.usable {
        out.warnings.push(format!(
            "KVM is unusable here ({}): every VM runs under TCG emulation, tens of times slower",
            host.kvm.reason
        ));
    }
}

/// The libvirt domain type and CPU mode of a VM, with a warning when it wants nesting the
/// host cannot give.
fn acceleration_of(
    host: &HostFacts,
    name: &str,
    nested: bool,
    out: &mut Lists,
) -> (&'static str, &'static str) {
    if !host.kvm.usable {
        if nested {
            out.warnings.push(format!(
                "{name} wants nested KVM, but under TCG emulation it cannot run KVM itself: \
                 its own guests would be emulated again"
            ));
        }
        ("qemu", "maximum")
    } else if nested {
        if !host.kvm.nested {
            out.warnings.push(format!(
                "{name} wants nested KVM, but nesting is off on this host: \
                 `lab check --fix` turns it on"
            ));
        }
        ("kvm", "host-passthrough")
    } else {
        ("kvm", "host-model")
    }
}

/// One VM: its addresses and hardware, and its disk and domain made or started as needed.
#[allow(clippy::too_many_arguments)]
fn vm_step(
    profile: &Profile,
    host: &HostFacts,
    observed: &Observed,
    network: &NetworkPlan,
    storage: &StoragePlan,
    index: usize,
    name: &str,
    spec: &VmSpec,
    out: &mut Lists,
) -> Result<VmPlan, PlanError> {
    let p = profile.name.as_str();
    let domain = names::domain(p, name);
    let disk_volume = volume_name(storage.backend, names::clone_volume(p, name));
    let (domain_type, cpu_mode) = acceleration_of(host, name, spec.nested, out);
    let ip = names::vm_ip(network.subnet, index)
        .ok_or_else(|| subnet_too_small(profile, network.subnet))?;
    let observed_domain = observed.domain(&domain);
    if let Some(d) = observed_domain
        && !d.owner.as_ref().is_some_and(|o| o.is(p))
    {
        return Err(PlanError(format!(
            "libvirt domain {domain} exists and is not lab's (no lab ownership mark): \
             lab will not touch it; rename the VM or the profile"
        )));
    }
    refuse_foreign_volume(observed, p, &disk_volume, storage)?;
    let vm = name.to_string();
    let cloned = !has_volume(observed, p, &disk_volume, VolumeRole::Clone);
    if !cloned {
        out.keep(Object::Disk, &disk_volume, Some(name), "clone exists");
    } else {
        out.act(
            Action::CloneDisk {
                vm: vm.clone(),
                name: disk_volume.clone(),
            },
            match storage.backend {
                Backend::LvmThin => format!("thin snapshot of {}, discards on", storage.base),
                Backend::Qcow2 => format!("qcow2 overlay on {}", storage.base),
            },
        );
    }
    seed_step(profile, observed, network, name, &domain, cloned, out);
    match observed_domain {
        None => {
            out.act(
                Action::DefineDomain {
                    vm: vm.clone(),
                    name: domain.clone(),
                },
                format!(
                    "{} vCPU, {}, {ip}, {domain_type}/{cpu_mode}",
                    spec.vcpus, spec.memory
                ),
            );
            out.act(
                Action::StartDomain {
                    vm: vm.clone(),
                    name: domain.clone(),
                },
                "new",
            );
        }
        Some(d) if !d.running => out.act(
            Action::StartDomain {
                vm: vm.clone(),
                name: domain.clone(),
            },
            if d.saved {
                "stopped with its memory saved (lab stop): resumed where it was"
            } else {
                "defined but shut off"
            },
        ),
        Some(_) => {
            out.keep(Object::Domain, &domain, Some(name), "running");
            reattach_step(observed, name, &domain, out);
        }
    }
    Ok(VmPlan {
        name: vm,
        domain,
        mac: names::mac(p, name),
        ip,
        vcpus: spec.vcpus,
        memory: spec.memory,
        disk: spec.disk.unwrap_or(profile.base.disk),
        disk_volume,
        role: spec.role.clone(),
        nested: spec.nested,
        domain_type: domain_type.to_string(),
        cpu_mode: cpu_mode.to_string(),
        graphics: spec.graphics,
    })
}

/// A running VM whose network was stopped and started again under it is off the new
/// bridge, cut off: its interfaces are put back.
/// A cloud-init VM's NoCloud seed: made with each new disk (a new identity: machine-id,
/// host key, instance-id), and when it is missing.
fn seed_step(
    profile: &Profile,
    observed: &Observed,
    network: &NetworkPlan,
    vm: &str,
    domain: &str,
    cloned: bool,
    out: &mut Lists,
) {
    if !profile.base.cloud_init {
        return;
    }
    let path = crate::cloud::seed::seed_path(&profile.storage.dir, domain)
        .display()
        .to_string();
    let seeded = observed.seeded.iter().any(|v| v == vm);
    let why = match (cloned, seeded) {
        (false, true) => {
            out.keep(Object::Seed, &path, Some(vm), "exists, as the disk does");
            return;
        }
        (true, _) => format!(
            "NoCloud seed: {vm}.{} with the lab's /etc/hosts and keys, a fresh machine-id and \
             host key, growpart{}",
            network.domain,
            if profile.base.user_data.is_some() {
                ", the profile's user-data"
            } else {
                ""
            }
        ),
        (false, false) => {
            "missing: made anew, with a new identity (machine-id, host key) at the next boot"
                .to_string()
        }
    };
    out.act(
        Action::WriteSeed {
            vm: vm.to_string(),
            path,
        },
        why,
    );
}

fn reattach_step(observed: &Observed, vm: &str, domain: &str, out: &mut Lists) {
    for t in observed.detached_taps.iter().filter(|t| t.domain == domain) {
        out.act(
            Action::ReattachTap {
                vm: vm.to_string(),
                tap: t.tap.clone(),
                bridge: t.bridge.clone(),
            },
            format!(
                "off bridge {} (the network was restarted under the running VM): put back",
                t.bridge
            ),
        );
    }
}

/// lab's VMs of this profile that the profile no longer names are left alone, and said.
fn dropped_vms_step(profile: &Profile, observed: &Observed, vms: &[VmPlan], out: &mut Lists) {
    let p = profile.name.as_str();
    for d in &observed.domains {
        if d.owner.as_ref().is_some_and(|o| o.is(p)) && !vms.iter().any(|v| v.domain == d.name) {
            out.keep(
                Object::Domain,
                &d.name,
                d.owner.as_ref().and_then(|o| o.vm.as_deref()),
                "lab's, but no longer in the profile: left alone (`lab down` removes it)",
            );
        }
    }
}

fn subnet_too_small(profile: &Profile, subnet: Ipv4Net) -> PlanError {
    PlanError(format!(
        "{}: network.subnet: {subnet} is too small for {} VMs (lab gives VMs .10 upwards)",
        profile.locate("network.subnet"),
        profile.instances().len()
    ))
}

/// How the base will be made, in words.
fn base_source(profile: &Profile) -> String {
    let b = &profile.base;
    if let Some(image) = &b.image {
        return format!("import {image}");
    }
    if let Some(ks) = &b.kickstart {
        return format!(
            "install from kickstart {ks} via {}",
            b.install.as_deref().unwrap_or("(no install source)")
        );
    }
    let kernel = match b.kernel.as_deref() {
        Some("host") | None => "the host's kernel".to_string(),
        Some(k) => k.to_string(),
    };
    let initrd = match b.initrd.as_deref() {
        Some("busybox") | None => "a busybox initramfs lab makes".to_string(),
        Some(i) => i.to_string(),
    };
    format!(
        "direct boot: {kernel} and {initrd}, with a {} data disk",
        b.disk
    )
}

/// The plan of `lab start`: the part of `up` that starts what is there (the network, the
/// named VMs: all when `vms` is empty), resuming VMs `lab stop` saved. Anything more that
/// `up` would do for them (a disk to clone, a domain to define, a base to build) is refused
/// with what it is, naming `lab up`; no provisioning runs. Pure.
pub fn start(up: Plan, vms: &[String]) -> Result<Plan, PlanError> {
    let chosen = |vm: &str| vms.is_empty() || vms.iter().any(|v| v == vm);
    for name in vms {
        if !up.vms.iter().any(|v| &v.name == name) {
            return Err(PlanError(format!(
                "profile {} has no VM {name}",
                up.profile
            )));
        }
    }
    let mut actions = Vec::new();
    let mut missing = Vec::new();
    for a in up.actions {
        match (&a.action, a.action.vm()) {
            (Action::StartNetwork { .. }, _) => actions.push(a),
            (
                Action::StartDomain { .. }
                | Action::ReattachTap { .. }
                | Action::MakeForward { .. }
                | Action::RemoveForward { .. },
                Some(vm),
            ) => {
                if chosen(vm) {
                    actions.push(a);
                }
            }
            (_, Some(vm)) if !chosen(vm) => {}
            _ => missing.push(format!("{} {} ({})", a.op(), a.name(), a.why)),
        }
    }
    if !missing.is_empty() {
        return Err(PlanError(format!(
            "{}: not all there to start; `lab up {}` makes it:\n  {}",
            up.profile,
            up.profile,
            missing.join("\n  ")
        )));
    }
    Ok(Plan {
        vms: up.vms.into_iter().filter(|v| chosen(&v.name)).collect(),
        actions,
        provision: Vec::new(),
        ..up
    })
}

/// The plan of `lab reset`: each target VM (all of the profile's when `vms` is empty)
/// stopped, its disk dropped and cloned again from the base, started. Pure.
pub fn reset(
    profile: &Profile,
    host: &HostFacts,
    observed: &Observed,
    vms: &[String],
) -> Result<Plan, PlanError> {
    let up = up(profile, host, observed, UpOptions { provision: false })?;
    let targets = reset_targets(profile, observed, &up, vms)?;
    let mut out = Lists::default();
    boot_files_step(profile, observed, &mut out);
    for vm in &targets {
        if observed.domain(&vm.domain).is_some_and(|d| d.running) {
            out.act(
                Action::StopDomain {
                    vm: vm.name.clone(),
                    name: vm.domain.clone(),
                },
                "running: powered off, its disk is dropped",
            );
        }
    }
    for vm in &targets {
        out.act(
            Action::RecloneDisk {
                vm: vm.name.clone(),
                name: vm.disk_volume.clone(),
            },
            format!("dropped and cloned again from {}", up.storage.base),
        );
        if profile.base.cloud_init {
            out.act(
                Action::WriteSeed {
                    vm: vm.name.clone(),
                    path: crate::cloud::seed::seed_path(&profile.storage.dir, &vm.domain)
                        .display()
                        .to_string(),
                },
                "a new identity (machine-id, host key, instance-id): the same name and address",
            );
        }
        out.act(
            Action::StartDomain {
                vm: vm.name.clone(),
                name: vm.domain.clone(),
            },
            "on its fresh disk",
        );
    }
    for vm in up
        .vms
        .iter()
        .filter(|v| !targets.iter().any(|t| t.name == v.name))
    {
        out.keep(Object::Domain, &vm.domain, Some(&vm.name), "not reset");
    }
    Ok(Plan {
        actions: out.actions,
        unchanged: out.unchanged,
        provision: Vec::new(),
        ..up
    })
}

/// The VMs `lab reset` was asked for: each must be the profile's and up.
fn reset_targets(
    profile: &Profile,
    observed: &Observed,
    up: &Plan,
    vms: &[String],
) -> Result<Vec<VmPlan>, PlanError> {
    let mut targets = Vec::new();
    if vms.is_empty() {
        targets.extend(up.vms.iter().cloned());
    }
    for name in vms {
        match up.vms.iter().find(|v| &v.name == name) {
            Some(v) => targets.push(v.clone()),
            None => {
                return Err(PlanError(format!(
                    "profile {} has no VM {name:?}: its VMs are {}",
                    profile.name,
                    up.vms
                        .iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    for v in &targets {
        if observed.domain(&v.domain).is_none() {
            return Err(PlanError(format!(
                "{} is not up (no domain {}): run `lab up {}` first",
                v.name,
                v.domain,
                profile.cli_name()
            )));
        }
    }
    Ok(targets)
}

/// What `lab down` removes: only what carries lab's mark for the profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownPlan {
    pub profile: String,
    pub purge: bool,
    /// In order: domains, network, clones, base, files.
    pub actions: Vec<Planned>,
    /// What stays (without --purge: the base, boot files and lab's SSH key).
    pub unchanged: Vec<Planned>,
}

impl DownPlan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// The plan of `lab down` (with `purge`, the base, boot files and SSH key too). Pure; it
/// cannot be refused: whatever the profile says now, lab's own objects can go.
pub fn down(profile: &Profile, observed: &Observed, purge: bool) -> DownPlan {
    let mut out = Lists::default();
    down_forwards_step(profile, observed, &mut out);
    down_libvirt_step(profile, observed, &mut out);
    down_volumes_step(profile, observed, purge, &mut out);
    down_files_step(observed, purge, &mut out);
    DownPlan {
        profile: profile.name.clone(),
        purge,
        actions: out.actions,
        unchanged: out.unchanged,
    }
}

/// The profile's published ports first (their rules send to the VMs about to go), with
/// lab's table of the profile.
fn down_forwards_step(profile: &Profile, observed: &Observed, out: &mut Lists) {
    let table = names::forward_table(&profile.name);
    let rules: Vec<&crate::forward::ObservedRule> = observed
        .forwards
        .iter()
        .filter(|r| r.of_profile(&profile.name, &table))
        .collect();
    if rules.is_empty() {
        return;
    }
    // A table named like lab's whose rules do not all carry lab's mark is not lab's (its
    // rules in libvirt's chains all do: only marked ones are read there).
    if rules.iter().any(|r| r.mark.is_none()) {
        out.keep(
            Object::Forward,
            &table,
            None,
            "nftables table with rules not lab's: left alone",
        );
        return;
    }
    // The table goes with the last rule, when it is still there (a hand may have deleted
    // it and left lab's rules in libvirt's chains).
    let drop_table = rules
        .iter()
        .any(|r| r.table == table)
        .then(|| table.clone());
    remove_forwards(&rules, drop_table, "lab's published port", out);
}

/// lab's domains of the profile (also those it no longer names), then its network.
fn down_libvirt_step(profile: &Profile, observed: &Observed, out: &mut Lists) {
    let p = profile.name.as_str();
    let mut domains: Vec<_> = observed.domains.iter().collect();
    domains.sort_by(|a, b| a.name.cmp(&b.name));
    for d in domains {
        if let Some(owner) = d.owner.as_ref().filter(|o| o.is(p)) {
            out.act(
                Action::RemoveDomain {
                    vm: owner.vm.clone(),
                    name: d.name.clone(),
                },
                if d.running {
                    "lab's, running: powered off and undefined"
                } else {
                    "lab's: undefined"
                },
            );
        }
    }
    let net = names::network(p);
    if let Some(n) = observed.network(&net)
        && n.owner.as_ref().is_some_and(|o| o.is(p))
    {
        out.act(
            Action::RemoveNetwork { name: net },
            "lab's network of the profile",
        );
    }
}

/// Clones first: a base is only removed (with --purge) once nothing is backed by it.
fn down_volumes_step(profile: &Profile, observed: &Observed, purge: bool, out: &mut Lists) {
    let p = profile.name.as_str();
    let ours: Vec<_> = observed
        .volumes
        .iter()
        .filter(|v| v.owner.as_ref().is_some_and(|o| o.is(p)))
        .collect();
    for v in &ours {
        if let (Some(VolumeRole::Clone), Some(vm)) =
            (v.role, v.owner.as_ref().and_then(|o| o.vm.as_ref()))
        {
            out.act(
                Action::RemoveClone {
                    vm: vm.clone(),
                    name: v.name.clone(),
                    location: v.location.clone(),
                },
                format!("{vm}'s disk"),
            );
        }
    }
    // The base by its name (a qcow2 base's builds, `.gN`, go with it), else any of lab's.
    let base_name = names::base_volume(p);
    let bases = || ours.iter().filter(|v| v.role == Some(VolumeRole::Base));
    let base = bases()
        .find(|v| v.name == base_name || v.name == format!("{base_name}.qcow2"))
        .or_else(|| bases().next());
    if let Some(base) = base {
        if purge {
            out.act(
                Action::RemoveBase {
                    name: base.name.clone(),
                    location: base.location.clone(),
                },
                "the profile's base (--purge)",
            );
        } else {
            out.keep(
                Object::Base,
                &base.location,
                None,
                "kept for the next `lab up` (--purge removes it)",
            );
        }
    }
}

/// Files lab wrote beside its images: console logs, host keys, the packstack password,
/// unfinished images, marks of files that are gone; with --purge its key and boot files.
fn down_files_step(observed: &Observed, purge: bool, out: &mut Lists) {
    let f = &observed.files;
    let mut remove = |kind: FileKind, path: &Path| {
        out.act(
            Action::RemoveFile {
                kind,
                path: path.display().to_string(),
            },
            kind.describe(),
        )
    };
    for path in &f.console_logs {
        remove(FileKind::ConsoleLog, path);
    }
    for path in &f.known_hosts {
        remove(FileKind::KnownHosts, path);
    }
    for path in &f.seeds {
        remove(FileKind::Seed, path);
    }
    for path in &f.identity {
        remove(FileKind::Identity, path);
    }
    if let Some(path) = &f.packstack_password {
        remove(FileKind::PackstackPassword, path);
    }
    if purge {
        for path in &f.ssh_key {
            remove(FileKind::SshKey, path);
        }
    }
    for path in &f.unfinished {
        remove(FileKind::Unfinished, path);
    }
    if let Some(dir) = &f.unfinished_dir {
        remove(FileKind::UnfinishedDir, dir);
    }
    let mut marks: Vec<_> = f.marks.iter().collect();
    marks.sort_by(|a, b| a.target.cmp(&b.target));
    for m in &marks {
        match (m.role, m.target_exists) {
            (VolumeRole::Boot, true) if purge => remove(FileKind::BootFile, &m.target),
            (_, false) => remove(FileKind::OrphanMark, &m.mark),
            (
                VolumeRole::Boot | VolumeRole::Base | VolumeRole::Clone | VolumeRole::Snapshot,
                true,
            ) => {}
        }
    }
    if !purge {
        for path in &f.ssh_key {
            out.keep(
                Object::File,
                &path.display().to_string(),
                None,
                "lab's SSH key for the profile (--purge removes it)",
            );
        }
        for m in marks
            .iter()
            .filter(|m| m.role == VolumeRole::Boot && m.target_exists)
        {
            out.keep(
                Object::File,
                &m.target.display().to_string(),
                None,
                "a boot file lab made (--purge removes it)",
            );
        }
    }
    // After the clones (the volumes step): nothing is backed by their layers then.
    for l in &f.snapshots {
        out.act(
            Action::RemoveFile {
                kind: FileKind::Snapshot,
                path: f.snapshots_root.join(&l.name).display().to_string(),
            },
            format!("snapshot {}: {}", l.name, crate::snapshot::describe(l)),
        );
    }
}

/// One line per action: verb, object, name, and why.
fn action_lines(out: &mut String, actions: &[Planned]) {
    for a in actions {
        out.push_str(&format!(
            "  {:<7} {:<8} {}  ({})\n",
            a.op(),
            a.object(),
            a.name(),
            a.why
        ));
    }
}

/// One line per object left alone: object, name, and why.
fn kept_lines(out: &mut String, unchanged: &[Planned]) {
    if !unchanged.is_empty() {
        out.push_str("\nLeaves alone:\n");
        for a in unchanged {
            out.push_str(&format!("  {:<8} {}  ({})\n", a.object(), a.name(), a.why));
        }
    }
}

/// The plan for people: one line per action, the reasons, the warnings.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "network {} on {}: {}\n",
        plan.network.name, plan.network.bridge, plan.network.why_subnet
    ));
    out.push_str(&format!(
        "storage {}: {}\n",
        plan.storage.location, plan.storage.why
    ));
    if plan.actions.is_empty() {
        out.push_str("\nNothing to do: the lab is up as the profile describes.\n");
    } else {
        out.push_str("\nWill do:\n");
        action_lines(&mut out, &plan.actions);
    }
    if !plan.provision.is_empty() {
        out.push_str("\nThen in the VMs:\n");
        action_lines(&mut out, &plan.provision);
    }
    kept_lines(&mut out, &plan.unchanged);
    if !plan.warnings.is_empty() {
        out.push_str("\nWarnings:\n");
        for w in &plan.warnings {
            out.push_str(&format!("  {w}\n"));
        }
    }
    out
}

/// The plan of `lab down` for people, as [`render`] prints `lab up`'s.
pub fn render_down(plan: &DownPlan) -> String {
    let mut out = String::new();
    if plan.actions.is_empty() {
        out.push_str(&format!(
            "Nothing to do: lab owns nothing of profile {} to remove.\n",
            plan.profile
        ));
    } else {
        out.push_str("Will do:\n");
        action_lines(&mut out, &plan.actions);
    }
    kept_lines(&mut out, &plan.unchanged);
    out
}

/// The image directory of a plan that uses qcow2.
pub fn image_dir(plan: &Plan) -> Option<PathBuf> {
    (plan.storage.backend == Backend::Qcow2).then(|| PathBuf::from(&plan.storage.location))
}
