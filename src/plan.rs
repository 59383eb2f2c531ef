//! The plan: a pure function of (profile, host facts, observed state) that lists every
//! action `lab up` would take, and every object it leaves alone, each with the reason.
//! `lab up --dry-run` prints it; `lab up` runs exactly it.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::names;
use crate::observe::{Observed, VolumeRole};
use crate::profile::{NetMode, Profile, StorageBackend, SubnetSpec};
use crate::size::ByteSize;
use crate::subnet::{self, SubnetAllocator, Taken};

/// What lab knows of the host when it plans.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    pub kvm: KvmVerdict,
    /// Networks the host's routes, addresses and VPNs use (libvirt networks are observed
    /// state: the planner adds all but the lab's own).
    pub taken: Vec<Taken>,
    /// Thin pools that exist, as (VG, pool).
    pub thin_pools: Vec<(String, String)>,
}

/// Whether guests get KVM, from the same probes as `lab check`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KvmVerdict {
    /// KVM really runs a standard guest.
    pub usable: bool,
    /// The KVM module's `nested` option is on and guests are offered vmx/svm.
    pub nested: bool,
    /// One line saying why, from the checks.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Create,
    Build,
    Clone,
    Define,
    Start,
    Keep,
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
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Object {
    Network,
    Base,
    Disk,
    Domain,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Object::Network => "network",
            Object::Base => "base",
            Object::Disk => "disk",
            Object::Domain => "domain",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub op: Op,
    pub object: Object,
    pub name: String,
    /// The VM this action is for, when it is for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    pub why: String,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub profile: String,
    pub network: NetworkPlan,
    pub storage: StoragePlan,
    pub vms: Vec<VmPlan>,
    /// What `lab up` changes, in order.
    pub actions: Vec<Action>,
    /// What already is as it should be, or is left alone on purpose.
    pub unchanged: Vec<Action>,
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

fn act(op: Op, object: Object, name: &str, vm: Option<&str>, why: impl Into<String>) -> Action {
    Action {
        op,
        object,
        name: name.to_string(),
        vm: vm.map(str::to_string),
        why: why.into(),
    }
}

/// Compute the plan. Pure: no I/O, no clock, no randomness.
pub fn plan(profile: &Profile, host: &HostFacts, observed: &Observed) -> Result<Plan, PlanError> {
    let p = profile.name.as_str();
    let at = |key: &str| profile.locate(key);
    let mut actions = Vec::new();
    let mut unchanged = Vec::new();
    let mut warnings = Vec::new();

    // Nothing with one of lab's names that lab did not make is ever touched.
    let net_name = names::network(p);
    let own_net = observed.network(&net_name);
    if let Some(n) = own_net
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

    // Subnet: the host's networks and every libvirt network but this lab's own.
    let own_subnets: Vec<Ipv4Net> = own_net.map(|n| n.subnets.clone()).unwrap_or_default();
    // The host's route to the lab's own bridge, and the bridge's address, are the lab.
    let mut taken: Vec<Taken> = host
        .taken
        .iter()
        .filter(|t| match &t.iface {
            Some(iface) => own_net.is_none() || *iface != bridge,
            None => !own_subnets.iter().any(|s| s.contains(&t.net.network())),
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
    let (subnet, why_subnet) = match profile.network.subnet {
        SubnetSpec::Fixed(net) => {
            let hits = subnet::collisions(net, &taken);
            if !hits.is_empty() {
                let with: Vec<String> = hits.iter().map(|t| t.to_string()).collect();
                return Err(PlanError(format!(
                    "{}: network.subnet: {net} collides with {}: choose another or \"auto\"",
                    at("network.subnet"),
                    with.join(", ")
                )));
            }
            (
                net,
                format!("{net} is set in the profile and collides with nothing"),
            )
        }
        SubnetSpec::Auto => {
            let alloc = SubnetAllocator::new(profile.network.auto_range)
                .allocate(p, own_subnets.first().copied(), &taken)
                .map_err(|e| {
                    PlanError(format!(
                        "{}: network.subnet: auto: {e}; set network.auto_range to another private range",
                        at("network.subnet")
                    ))
                })?;
            (alloc.subnet, alloc.reason)
        }
    };
    let instances = profile.instances();
    let gateway = subnet::gateway(subnet);
    let first_vm = names::vm_ip(subnet, 0).ok_or_else(|| subnet_too_small(profile, subnet))?;
    let last_vm = names::vm_ip(subnet, instances.len() - 1)
        .ok_or_else(|| subnet_too_small(profile, subnet))?;
    let broadcast = subnet.broadcast();
    let dhcp_start = Ipv4Addr::from(u32::from(last_vm) + 1);
    let dhcp_end = Ipv4Addr::from(u32::from(broadcast) - 1);
    let dhcp_range = if dhcp_start <= dhcp_end {
        (dhcp_start, dhcp_end)
    } else {
        (first_vm, last_vm)
    };
    let network = NetworkPlan {
        name: net_name.clone(),
        bridge: bridge.clone(),
        subnet,
        gateway,
        mode: profile.network.mode,
        domain: profile
            .network
            .domain
            .clone()
            .unwrap_or_else(|| format!("{p}.lab")),
        dhcp_range,
        why_subnet,
    };
    match own_net {
        None => actions.push(act(
            Op::Create,
            Object::Network,
            &net_name,
            None,
            format!(
                "{} network on bridge {bridge}, {subnet}",
                match profile.network.mode {
                    NetMode::Isolated => "isolated (no route out)",
                    NetMode::Nat => "NAT",
                }
            ),
        )),
        Some(n) if !n.subnets.contains(&subnet) => {
            return Err(PlanError(format!(
                "network {net_name} is on {} but the profile now wants {subnet}: run `lab down {cli}` first",
                n.subnets
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                cli = profile.cli_name()
            )));
        }
        Some(n) if !n.active => actions.push(act(
            Op::Start,
            Object::Network,
            &net_name,
            None,
            "defined but not active",
        )),
        Some(_) => unchanged.push(act(
            Op::Keep,
            Object::Network,
            &net_name,
            None,
            "exists and is active",
        )),
    }

    // Storage backend.
    let s = &profile.storage;
    let pool = match (&s.vg, &s.pool) {
        (Some(vg), Some(pool)) => Some((vg.clone(), pool.clone())),
        _ => None,
    };
    let pool_exists = pool.as_ref().is_some_and(|p| host.thin_pools.contains(p));
    let (backend, location, why_storage) = match (s.backend, &pool) {
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
    let volume = |name: String| match backend {
        Backend::LvmThin => name,
        Backend::Qcow2 => format!("{name}.qcow2"),
    };
    let base_name = volume(names::base_volume(p));
    let storage = StoragePlan {
        backend,
        location,
        base: base_name.clone(),
        why: why_storage,
    };
    let has_volume = |name: &str, role: VolumeRole| {
        observed.volumes.iter().any(|v| {
            v.name == name
                && v.role == Some(role)
                && v.sealed
                && v.owner.as_ref().is_some_and(|o| o.is(p))
        })
    };
    let foreign_volume = |name: &str| {
        observed
            .volumes
            .iter()
            .any(|v| v.name == name && !v.owner.as_ref().is_some_and(|o| o.is(p)))
    };
    if foreign_volume(&base_name) {
        return Err(PlanError(format!(
            "{base_name} exists in {} and is not lab's: lab will not touch it",
            storage.location
        )));
    }
    if let (true, Some(why)) = (
        has_volume(&base_name, VolumeRole::Base),
        &observed.base_out_of_date,
    ) {
        actions.push(act(
            Op::Build,
            Object::Base,
            &base_name,
            None,
            format!(
                "out of date ({why}): {}; VMs made before keep the old base until `lab reset`",
                base_source(profile)
            ),
        ));
    } else if has_volume(&base_name, VolumeRole::Base) {
        unchanged.push(act(
            Op::Keep,
            Object::Base,
            &base_name,
            None,
            "built and sealed",
        ));
    } else {
        actions.push(act(
            Op::Build,
            Object::Base,
            &base_name,
            None,
            base_source(profile),
        ));
    }

    // Acceleration.
    if !host.kvm.usable {
        warnings.push(format!(
            "KVM is unusable here ({}): every VM runs under TCG emulation, tens of times slower",
            host.kvm.reason
        ));
    }

    // VMs.
    let mut vms = Vec::new();
    for (index, (name, spec)) in instances.iter().enumerate() {
        let domain = names::domain(p, name);
        let disk_volume = volume(names::clone_volume(p, name));
        let (domain_type, cpu_mode) = if !host.kvm.usable {
            if spec.nested {
                warnings.push(format!(
                    "{name} wants nested KVM, but under TCG emulation it cannot run KVM itself: \
                     its own guests would be emulated again"
                ));
            }
            ("qemu", "maximum")
        } else if spec.nested {
            if !host.kvm.nested {
                warnings.push(format!(
                    "{name} wants nested KVM, but nesting is off on this host: \
                     `lab check --fix` turns it on"
                ));
            }
            ("kvm", "host-passthrough")
        } else {
            ("kvm", "host-model")
        };
        let ip = names::vm_ip(subnet, index).ok_or_else(|| subnet_too_small(profile, subnet))?;
        let vm = VmPlan {
            name: name.clone(),
            domain: domain.clone(),
            mac: names::mac(p, name),
            ip,
            vcpus: spec.vcpus,
            memory: spec.memory,
            disk: spec.disk.unwrap_or(profile.base.disk),
            disk_volume: disk_volume.clone(),
            role: spec.role.clone(),
            nested: spec.nested,
            domain_type: domain_type.to_string(),
            cpu_mode: cpu_mode.to_string(),
        };
        let observed_domain = observed.domain(&domain);
        if let Some(d) = observed_domain
            && !d.owner.as_ref().is_some_and(|o| o.is(p))
        {
            return Err(PlanError(format!(
                "libvirt domain {domain} exists and is not lab's (no lab ownership mark): \
                 lab will not touch it; rename the VM or the profile"
            )));
        }
        if foreign_volume(&disk_volume) {
            return Err(PlanError(format!(
                "{disk_volume} exists in {} and is not lab's: lab will not touch it",
                storage.location
            )));
        }
        let vm_ref = Some(name.as_str());
        if has_volume(&disk_volume, VolumeRole::Clone) {
            unchanged.push(act(
                Op::Keep,
                Object::Disk,
                &disk_volume,
                vm_ref,
                "clone exists",
            ));
        } else {
            actions.push(act(
                Op::Clone,
                Object::Disk,
                &disk_volume,
                vm_ref,
                match backend {
                    Backend::LvmThin => format!("thin snapshot of {base_name}, discards on"),
                    Backend::Qcow2 => format!("qcow2 overlay on {base_name}"),
                },
            ));
        }
        match observed_domain {
            None => {
                actions.push(act(
                    Op::Define,
                    Object::Domain,
                    &domain,
                    vm_ref,
                    format!(
                        "{} vCPU, {}, {ip}, {domain_type}/{cpu_mode}",
                        spec.vcpus, spec.memory
                    ),
                ));
                actions.push(act(Op::Start, Object::Domain, &domain, vm_ref, "new"));
            }
            Some(d) if !d.running => actions.push(act(
                Op::Start,
                Object::Domain,
                &domain,
                vm_ref,
                "defined but shut off",
            )),
            Some(_) => unchanged.push(act(Op::Keep, Object::Domain, &domain, vm_ref, "running")),
        }
        vms.push(vm);
    }

    // lab's VMs of this profile that the profile no longer names are left alone, and said.
    for d in &observed.domains {
        if d.owner.as_ref().is_some_and(|o| o.is(p)) && !vms.iter().any(|v| v.domain == d.name) {
            unchanged.push(act(
                Op::Keep,
                Object::Domain,
                &d.name,
                d.owner.as_ref().and_then(|o| o.vm.as_deref()),
                "lab's, but no longer in the profile: left alone (`lab down` removes it)",
            ));
        }
    }

    Ok(Plan {
        profile: p.to_string(),
        network,
        storage,
        vms,
        actions,
        unchanged,
        warnings,
    })
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
        return format!("import {}", image.display());
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
        for a in &plan.actions {
            out.push_str(&format!(
                "  {:<7} {:<8} {}  ({})\n",
                a.op, a.object, a.name, a.why
            ));
        }
    }
    if !plan.unchanged.is_empty() {
        out.push_str("\nLeaves alone:\n");
        for a in &plan.unchanged {
            out.push_str(&format!("  {:<8} {}  ({})\n", a.object, a.name, a.why));
        }
    }
    if !plan.warnings.is_empty() {
        out.push_str("\nWarnings:\n");
        for w in &plan.warnings {
            out.push_str(&format!("  {w}\n"));
        }
    }
    out
}

/// The image directory of a plan that uses qcow2.
pub fn image_dir(plan: &Plan) -> Option<PathBuf> {
    (plan.storage.backend == Backend::Qcow2).then(|| PathBuf::from(&plan.storage.location))
}
