//! Carrying out a plan: network, base, then every VM at once (clone, define, start), then
//! waiting until each is ready. Every step is observable afterwards (lab's marks are put
//! down first), so a run that is interrupted anywhere is completed by the next `lab up` and
//! removed by `lab down`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::directboot;
use crate::fanout;
use crate::guest::identity::LabIdentity;
use crate::libvirt::console::{console_log, console_tail};
use crate::libvirt::xml::{self, DirectBoot};
use crate::libvirt::{Libvirt, define, preflight_dir};
use crate::plan;
use crate::plan::{Action, DownPlan, FileKind, Plan, Planned, VmPlan};
use crate::profile::Profile;
use crate::storage::lvm_thin::LvmThinStorage;
use crate::storage::qcow2::Qcow2Storage;
use crate::storage::{InUse, Storage, Volume};
use crate::ui::{self, VmProgress};

/// Everything `apply` works with.
pub struct Env<'a> {
    pub lv: &'a Libvirt,
    pub storage: &'a dyn Storage,
    pub profile: &'a Profile,
    /// Where boot files and console logs live.
    pub dir: PathBuf,
    /// How long a VM may take from start to ready.
    pub ready_timeout: Duration,
    /// Whether to wait for another lab fetching the same image into the cache
    /// (`--no-wait`: fail at once, naming it).
    pub wait: crate::lock::Wait,
}

impl<'a> Env<'a> {
    /// The executor's surroundings for `profile`: its storage, its image directory, and
    /// how long a VM may take to be ready.
    pub fn new(
        lv: &'a Libvirt,
        storage: &'a dyn Storage,
        profile: &'a Profile,
        ready_timeout: Duration,
    ) -> Env<'a> {
        Env {
            lv,
            storage,
            profile,
            dir: profile.storage.dir.clone(),
            ready_timeout,
            wait: crate::lock::Wait::Wait,
        }
    }
}

/// One VM after `lab up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmState {
    pub name: String,
    pub domain: String,
    pub ip: Option<String>,
    pub state: String,
    pub console: String,
    /// Milliseconds this run spent on each step of the VM (0: nothing to do).
    pub timings_ms: VmTimings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VmTimings {
    pub disk: u64,
    /// Making the cloud-init seed (a new identity).
    pub seed: u64,
    pub define: u64,
    pub start: u64,
    /// From start to the VM's DHCP lease (and, direct boot, its ready line).
    pub ready: u64,
    /// From the lease to cloud-init finished (cloud-init VMs).
    pub cloud_init: u64,
}

/// Milliseconds spent on the lab-wide steps of `apply`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LabTimings {
    pub network: u64,
    pub boot_files: u64,
    pub base: u64,
    pub vms: u64,
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// The kernel, initrd and command line a direct-boot VM gets.
fn boot_for(
    env: &Env<'_>,
    boot: Option<&directboot::BootFiles>,
    vm: &VmPlan,
) -> Option<DirectBoot> {
    boot.map(|b| DirectBoot {
        kernel: b.kernel.display().to_string(),
        initrd: b.initrd.display().to_string(),
        cmdline: directboot::vm_cmdline(b, &env.profile.name, &vm.name),
    })
}

fn step(what: &Planned) {
    ui::debug(format_args!(
        "lab: {} {} {}",
        what.op(),
        what.object(),
        what.name()
    ));
}

fn done(what: &Planned) {
    ui::debug(format_args!(
        "lab: done {} {} {}",
        what.op(),
        what.object(),
        what.name()
    ));
}

/// When, in a run of `lab up`, an action is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase<'a> {
    /// First: domains need the network to start.
    Network,
    /// Before the base and the domains that boot from them.
    BootFiles,
    Base,
    /// `lab reset`: every target VM stopped before any disk is dropped.
    Stop,
    /// In the VM's own thread, all VMs at once.
    Vm(&'a str),
    /// Once every VM is ready.
    Pool,
    /// Published ports, once their VMs are ready.
    Forward,
    /// After `apply`, by the provisioning of `lab up`.
    Provision,
    /// `lab down`'s removals, by [`down`].
    Down,
    /// Not carried out: what is left alone.
    Never,
}

fn phase(a: &Action) -> Phase<'_> {
    match a {
        Action::CreateNetwork { .. } | Action::StartNetwork { .. } => Phase::Network,
        Action::WriteBootFiles { .. } => Phase::BootFiles,
        Action::BuildBase { .. } => Phase::Base,
        Action::CloneDisk { vm, .. }
        | Action::WriteSeed { vm, .. }
        | Action::DefineDomain { vm, .. }
        | Action::StartDomain { vm, .. }
        | Action::ReattachTap { vm, .. }
        | Action::RecloneDisk { vm, .. } => Phase::Vm(vm),
        Action::StopDomain { .. } => Phase::Stop,
        Action::DefinePool { .. } | Action::RefreshPool { .. } => Phase::Pool,
        Action::MakeForward { .. } | Action::RemoveForward { .. } => Phase::Forward,
        Action::Provision { .. } => Phase::Provision,
        Action::RemoveDomain { .. }
        | Action::RemoveNetwork { .. }
        | Action::RemoveClone { .. }
        | Action::RemoveBase { .. }
        | Action::RemoveFile { .. } => Phase::Down,
        Action::Keep { .. } => Phase::Never,
    }
}

/// Carry out one action of the lab as a whole (network, boot files, base, storage pool).
fn run_lab_action(
    a: &Planned,
    plan: &Plan,
    env: &Env<'_>,
    boot: &mut Option<directboot::BootFiles>,
) -> Result<()> {
    step(a);
    match &a.action {
        Action::CreateNetwork { name } => {
            // The host may have changed since the plan (a VPN came up, pushing routes or
            // a DNS server): look again, right before the network takes the subnet.
            let now = crate::host::net::NetFacts::read(&crate::host::Sysroot::live());
            still_free(
                name,
                plan.network.subnet,
                &crate::subnet::taken_by_host(&now),
            )?;
            let doc = xml::to_xml(&define::network_for(plan));
            env.lv.define_network(name, &doc)?;
        }
        Action::StartNetwork { name } => env.lv.start_network(name)?,
        Action::WriteBootFiles { .. } => {
            std::fs::create_dir_all(&env.dir)
                .with_context(|| format!("creating {}", env.dir.display()))?;
            *boot = Some(directboot::prepare_boot_files(&env.dir, &env.profile.name)?);
        }
        Action::BuildBase { .. } => {
            build_base(env, plan.vms.iter().any(|v| v.domain_type == "kvm"))?;
        }
        // The pool only shows lab's volumes to virsh and virt-manager: a failure costs the
        // presenter nothing but that view, and is a warning.
        Action::DefinePool { vg, .. } => {
            let shown = crate::storage::lvm_thin::define_libvirt_pool(env.lv, vg)
                .and_then(|_| crate::storage::lvm_thin::refresh_libvirt_pool(env.lv, vg));
            if let Err(e) = shown {
                ui::warn(format_args!("libvirt storage pool for VG {vg}: {e:#}"));
            }
        }
        Action::RefreshPool { vg, .. } => {
            if let Err(e) = crate::storage::lvm_thin::refresh_libvirt_pool(env.lv, vg) {
                ui::warn(format_args!("libvirt storage pool for VG {vg}: {e:#}"));
            }
        }
        Action::StopDomain { name, .. } => env.lv.stop_domain(name)?,
        Action::MakeForward {
            mark,
            table,
            bridge,
            stale,
            ..
        } => crate::forward::make(table, bridge, mark, stale)?,
        Action::RemoveForward {
            rules, drop_table, ..
        } => crate::forward::remove(rules, drop_table.as_deref())?,
        Action::RemoveDomain { .. }
        | Action::RemoveNetwork { .. }
        | Action::RemoveClone { .. }
        | Action::RemoveBase { .. }
        | Action::RemoveFile { .. } => bail!("{} {}: an action of lab down", a.op(), a.name()),
        Action::CloneDisk { .. }
        | Action::RecloneDisk { .. }
        | Action::WriteSeed { .. }
        | Action::DefineDomain { .. }
        | Action::StartDomain { .. }
        | Action::ReattachTap { .. } => {
            bail!("{} {}: a VM's action, run in its thread", a.op(), a.name())
        }
        Action::Provision { .. } => bail!("provisioning runs once the VMs are ready"),
        Action::Keep { .. } => {}
    }
    done(a);
    Ok(())
}

/// Carry out `plan`. Returns the state of every VM of the plan once ready. `host_lock`, the
/// host-wide lock the plan was made under, is let go once the network exists.
pub fn apply(
    plan: &Plan,
    env: &Env<'_>,
    host_lock: Option<crate::lock::Lock>,
) -> Result<(Vec<VmState>, LabTimings)> {
    preflight(env)?;
    let mut timings = LabTimings::default();
    let mut boot = None;
    timings.network = lab_phase(plan, env, Phase::Network, &mut boot)?;
    drop(host_lock);
    timings.boot_files = lab_phase(plan, env, Phase::BootFiles, &mut boot)?;
    let boot = boot_files(env, boot);
    timings.base = lab_phase(plan, env, Phase::Base, &mut None)?;
    let t = Instant::now();
    let vms: Vec<&VmPlan> = plan.vms.iter().collect();
    let identity = lab_identity(plan, env)?;
    let states = bring_up_all(
        plan,
        env,
        &vms,
        boot.as_ref(),
        identity.as_ref(),
        Some(&VmProgress::new()),
    )?;
    timings.vms = ms(t);
    lab_phase(plan, env, Phase::Pool, &mut None)?;
    lab_phase(plan, env, Phase::Forward, &mut None)?;
    Ok((states, timings))
}

/// What must hold before anything is made: a directory QEMU can reach, and (direct boot)
/// what the boot files are made of.
fn preflight(env: &Env<'_>) -> Result<()> {
    preflight_dir(&env.dir)?;
    if env.profile.direct_boot() {
        directboot::preflight()?;
    }
    Ok(())
}

/// Carry out the lab-wide actions of phase `ph`, in order; the milliseconds it took.
fn lab_phase(
    plan: &Plan,
    env: &Env<'_>,
    ph: Phase<'_>,
    boot: &mut Option<directboot::BootFiles>,
) -> Result<u64> {
    let t = Instant::now();
    for a in plan.actions.iter().filter(|a| phase(&a.action) == ph) {
        run_lab_action(a, plan, env, boot)?;
    }
    Ok(ms(t))
}

/// The boot files of a direct-boot profile: as written now, or as the plan found them.
fn boot_files(
    env: &Env<'_>,
    written: Option<directboot::BootFiles>,
) -> Option<directboot::BootFiles> {
    match written {
        Some(b) => Some(b),
        None if env.profile.direct_boot() => {
            Some(directboot::existing_boot_files(&env.dir, &env.profile.name))
        }
        None => None,
    }
}

/// What every VM of a cloud-init lab shares (its hosts, the peer key pair, the host CA,
/// the keys that log in to root), when the plan writes a seed.
fn lab_identity(plan: &Plan, env: &Env<'_>) -> Result<Option<LabIdentity>> {
    let writes_seed = plan
        .actions
        .iter()
        .any(|a| matches!(a.action, Action::WriteSeed { .. }));
    if !writes_seed {
        return Ok(None);
    }
    Ok(Some(crate::guest::identity::of_lab(
        &env.dir,
        env.profile,
        plan,
    )?))
}

/// Every VM of `vms` at once: its actions of the plan, then waiting until it is ready.
fn bring_up_all(
    plan: &Plan,
    env: &Env<'_>,
    vms: &[&VmPlan],
    boot: Option<&directboot::BootFiles>,
    identity: Option<&LabIdentity>,
    progress: Option<&VmProgress>,
) -> Result<Vec<VmState>> {
    let in_use = env.lv.disks_in_use()?;
    fanout::all(
        vms.iter().map(|vm| {
            let bar = progress.map_or_else(ProgressBar::hidden, |p| p.bar(&vm.name));
            (*vm, bar)
        }),
        |(vm, _)| vm.name.clone(),
        |(vm, bar)| {
            let r = bring_up(plan, env, vm, boot, identity, &in_use, &bar);
            match &r {
                Ok(st) => {
                    bar.finish_with_message(format!("ready at {}", st.ip.as_deref().unwrap_or("?")))
                }
                Err(e) => bar.abandon_with_message(format!("failed: {e:#}")),
            }
            r
        },
    )
}

/// How long an installer may run before lab gives up on it and removes what it made.
const KICKSTART_BUILD_TIMEOUT: Duration = Duration::from_secs(7200);

/// Build the base the profile describes, seal it.
/// `kvm`: whether the plan runs the lab's guests under KVM (an installer runs likewise).
fn build_base(env: &Env<'_>, kvm: bool) -> Result<Volume> {
    let p = env.profile;
    let base = if p.direct_boot() {
        let work = tempfile::Builder::new()
            .prefix("lab-base-")
            .tempdir_in(std::env::temp_dir())
            .context("creating a scratch directory for the base")?;
        let raw = directboot::build_base_image(work.path(), &p.name, p.base.disk)?;
        env.storage.import_base(&p.name, &raw)?
    } else if p.base.image.is_some() {
        // Downloaded (or found) and verified in the image cache first: what is imported
        // is only ever a whole, verified image. Sealed and recorded there.
        return Ok(crate::cloud::base::import_with(env.storage, p, env.wait)?.0);
    } else {
        // An installer run: it builds, trims, compacts and seals the base itself.
        crate::kickstart::build_base(
            env.lv,
            env.storage,
            p,
            &env.dir,
            KICKSTART_BUILD_TIMEOUT,
            kvm,
        )?;
        return env
            .storage
            .base(&p.name)?
            .with_context(|| format!("the kickstart build of {} left no sealed base", p.name));
    };
    env.storage.seal_base(&p.name)?;
    Ok(base)
}

/// One VM: clone, define, start as the plan says, then wait until it is ready.
#[allow(clippy::too_many_arguments)]
fn bring_up(
    plan: &Plan,
    env: &Env<'_>,
    vm: &VmPlan,
    boot: Option<&directboot::BootFiles>,
    identity: Option<&LabIdentity>,
    in_use: &[InUse],
    bar: &ProgressBar,
) -> Result<VmState> {
    let console = console_log(&env.dir, &vm.domain);
    let seed = env
        .profile
        .base
        .cloud_init
        .then(|| crate::cloud::seed::seed_path(&env.dir, &vm.domain));
    let mine = |a: &&Planned| phase(&a.action) == Phase::Vm(vm.name.as_str());
    let mut disk: Option<Volume> = None;
    let mut timings = VmTimings::default();
    // Resumed from memory saved by `lab stop`: it does not boot, so no ready line comes.
    // One already running from memory (resumed by a lab start killed before it waited)
    // is waited for too.
    let mut resumed = env.lv.domain_resumed(&vm.domain);
    for a in plan.actions.iter().filter(mine) {
        step(a);
        bar.set_message(format!("{} {}", a.op(), a.object()));
        let t = Instant::now();
        match &a.action {
            Action::CloneDisk { .. } => {
                disk = Some(env.storage.clone_base_sized(
                    &env.profile.name,
                    &vm.name,
                    Some(vm.disk),
                    in_use,
                )?);
                // A new disk, a new host key.
                crate::guest::ssh::forget_host(&env.dir, &vm.domain)?;
                timings.disk = ms(t);
            }
            Action::WriteSeed { path, .. } => {
                let lab = identity.context("a seed to write, but no identity of the lab")?;
                write_seed(env, vm, lab, Path::new(path))?;
                timings.seed = ms(t);
            }
            Action::DefineDomain { name, .. } => {
                let disk = match &disk {
                    Some(d) => d.clone(),
                    None => env
                        .storage
                        .clone_volume(&env.profile.name, &vm.name)?
                        .with_context(|| format!("{}: its disk is missing", vm.name))?,
                };
                let doc = xml::to_xml(&define::domain_for(
                    plan,
                    vm,
                    &disk,
                    boot_for(env, boot, vm).as_ref(),
                    seed.as_deref(),
                    &console,
                ));
                env.lv.define_domain(name, &doc)?;
                timings.define = ms(t);
            }
            Action::StartDomain { name, .. } => {
                if disk.is_none() {
                    // An existing clone: a thin snapshot is activated here (-K), as after a
                    // reboot; a qcow2 overlay is just found.
                    env.storage.clone_volume(&env.profile.name, &vm.name)?;
                }
                resumed = env.lv.domain_saved(name);
                if !resumed {
                    // A boot's console starts empty, so an earlier boot's ready line is
                    // never read as this one's.
                    crate::libvirt::console::empty(&console)?;
                }
                env.lv.start_domain(name)?;
                timings.start = ms(t);
            }
            // A running VM whose network was stopped and started again under it is off
            // the new bridge, cut off: its interface is put back, and that is said.
            Action::ReattachTap { tap, bridge, .. } => {
                env.lv.reattach(tap, bridge)?;
                ui::warn(format_args!(
                    "{}: its interface {tap} was off bridge {bridge} (the network was \
                     restarted under the running VM): put back",
                    vm.name
                ));
            }
            Action::RecloneDisk { .. } => {
                // Memory saved by lab stop belongs to the old disk: never resumed on the new.
                env.lv.discard_saved(&vm.domain)?;
                env.storage
                    .remove_clone(&env.profile.name, &vm.name, in_use)?;
                disk = Some(env.storage.clone_base_sized(
                    &env.profile.name,
                    &vm.name,
                    Some(vm.disk),
                    in_use,
                )?);
                crate::guest::ssh::forget_host(&env.dir, &vm.domain)?;
                timings.disk = ms(t);
            }
            Action::CreateNetwork { .. }
            | Action::StartNetwork { .. }
            | Action::WriteBootFiles { .. }
            | Action::BuildBase { .. }
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
            | Action::Keep { .. } => {
                bail!("{} {}: not an action of VM {}", a.op(), a.name(), vm.name)
            }
        }
        done(a);
    }
    bar.set_message("waiting until ready");
    let state = ready_state(env, vm, boot.is_some() && !resumed, timings)?;
    if resumed {
        let ip = state.ip.as_deref().and_then(|ip| ip.parse().ok());
        crate::guest::connect::wait_resumed(&vm.name, || ip, env.ready_timeout)?;
    }
    Ok(state)
}

/// A new identity for `vm` (machine-id, host key signed by the lab's CA, instance-id) and
/// the NoCloud seed that carries it, with the profile's user-data merged in. The host key
/// is pinned for lab's ssh through the CA, so a reset VM is trusted at once.
fn write_seed(env: &Env<'_>, vm: &VmPlan, lab: &LabIdentity, path: &Path) -> Result<()> {
    let p = env.profile;
    crate::guest::ssh::forget_host(&env.dir, &vm.domain)?;
    let id = crate::guest::identity::new_vm_identity(&env.dir, lab, &p.name, &vm.name)?;
    let vm_user_data = p
        .instances()
        .into_iter()
        .find(|(name, _)| *name == vm.name)
        .and_then(|(_, spec)| spec.user_data.as_deref());
    crate::cloud::seed::write_seed(
        path,
        lab,
        &id,
        p.base.user_data.as_deref(),
        vm_user_data,
        crate::guest::ssh::USER,
    )
    .with_context(|| {
        format!(
            "{}: writing its cloud-init seed {}",
            vm.name,
            path.display()
        )
    })?;
    id.trust(&env.dir, lab)
}

/// Wait until `vm` is ready and say how it is, with the time each step took.
fn ready_state(
    env: &Env<'_>,
    vm: &VmPlan,
    direct_boot: bool,
    mut timings: VmTimings,
) -> Result<VmState> {
    let console = console_log(&env.dir, &vm.domain);
    let t = Instant::now();
    let deadline = t + env.ready_timeout;
    let ip = wait_ready(env, vm, &console, direct_boot)?;
    timings.ready = ms(t);
    if env.profile.base.cloud_init {
        let t = Instant::now();
        let target = crate::guest::ssh::Target {
            vm: vm.name.clone(),
            domain: vm.domain.clone(),
            ip: ip.clone(),
            key: crate::guest::ssh::lab_key_path(&env.dir, &env.profile.name),
            known_hosts: crate::guest::ssh::known_hosts_path(&env.dir, &vm.domain),
        };
        crate::guest::cloud_init::wait_done(&target, deadline)?;
        timings.cloud_init = ms(t);
    }
    Ok(VmState {
        name: vm.name.clone(),
        domain: vm.domain.clone(),
        ip: Some(ip),
        state: "running".into(),
        console: console.display().to_string(),
        timings_ms: timings,
    })
}

/// Ready: a DHCP lease for the VM's MAC, and for direct-boot VMs their ready line on the
/// console. A time-out names the VM, what it waited for and the console's last lines.
fn wait_ready(env: &Env<'_>, vm: &VmPlan, console: &Path, needs_line: bool) -> Result<String> {
    let deadline = Instant::now() + env.ready_timeout;
    loop {
        if !env.lv.domain_running(&vm.domain) {
            bail!(
                "{}: domain {} stopped while booting{}",
                vm.name,
                vm.domain,
                console_tail(console)
            );
        }
        let lease = env.lv.lease(&vm.domain, &vm.mac);
        let line = if needs_line {
            std::fs::read_to_string(console)
                .ok()
                .and_then(|t| directboot::parse_ready(&t, &vm.name))
        } else {
            None
        };
        if let Some(ip) = lease
            && (!needs_line || line.is_some())
        {
            if let Some(r) = &line
                && !r.disk
            {
                bail!(
                    "{}: the guest is up but could not use its disk{}",
                    vm.name,
                    console_tail(console)
                );
            }
            return Ok(ip.to_string());
        }
        if Instant::now() >= deadline {
            let waited = match (lease, needs_line) {
                (None, _) => format!("a DHCP lease for {} on {}", vm.mac, vm.ip),
                (Some(_), _) => "its ready line on the console".to_string(),
            };
            // A cloud image renders its network from the seed: without cloud-init (or
            // with one that ignores a NoCloud seed) it never asks for a lease.
            let hint = if lease.is_none() && env.profile.base.cloud_init {
                " (cloud_init = true: an image without cloud-init, or whose cloud-init \
                 ignores a NoCloud seed, never configures its network)"
            } else {
                ""
            };
            bail!(
                "{}: not ready after {} s: waited for {waited}{hint}{}",
                vm.name,
                env.ready_timeout.as_secs(),
                console_tail(console)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `lab reset`: carry out a plan of [`crate::plan::reset`]. Boot files first (a failure
/// there leaves the VMs as they were), then every target VM stopped, then each at once:
/// its clone dropped and made again from the base, started, and waited for.
pub fn reset(plan: &Plan, env: &Env<'_>) -> Result<Vec<VmState>> {
    preflight(env)?;
    let mut boot = None;
    lab_phase(plan, env, Phase::BootFiles, &mut boot)?;
    let boot = boot_files(env, boot);
    lab_phase(plan, env, Phase::Stop, &mut None)?;
    let targets: Vec<&VmPlan> = plan
        .vms
        .iter()
        .filter(|vm| {
            plan.actions
                .iter()
                .any(|a| phase(&a.action) == Phase::Vm(vm.name.as_str()))
        })
        .collect();
    let identity = lab_identity(plan, env)?;
    bring_up_all(plan, env, &targets, boot.as_ref(), identity.as_ref(), None)
}

/// `lab down`: carry out a plan of [`crate::plan::down`]; what was removed, as
/// `KIND NAME` lines (console logs, host keys and marks go unsaid).
pub fn down(plan: &DownPlan, lv: &Libvirt, profile: &Profile) -> Result<Vec<String>> {
    let p = profile.name.as_str();
    let qcow2 = crate::storage::qcow2::Qcow2Storage::new(&profile.storage.dir);
    let thin = match (&profile.storage.vg, &profile.storage.pool) {
        (Some(vg), Some(pool)) => Some(crate::storage::lvm_thin::LvmThinStorage::new(vg, pool)),
        _ => None,
    };
    // A thin volume's location is VG/LV; an image's is its path.
    let storage_of = |location: &str| -> &dyn Storage {
        match &thin {
            Some(t) if !location.starts_with('/') => t,
            _ => &qcow2,
        }
    };
    // What running domains hold, read once the plan's domains are gone (they come first).
    let mut in_use: Option<Vec<InUse>> = None;
    let mut removed = Vec::new();
    for a in &plan.actions {
        step(a);
        let said = match &a.action {
            Action::RemoveDomain { name, .. } => {
                lv.remove_domain(name)?;
                ui::debug(format_args!("lab: removed domain {name}"));
                Some(format!("domain {name}"))
            }
            Action::RemoveNetwork { name } => {
                lv.remove_network(name)?;
                Some(format!("network {name}"))
            }
            Action::RemoveClone { vm, location, .. } => {
                let in_use = match &in_use {
                    Some(u) => u,
                    None => in_use.insert(lv.disks_in_use()?),
                };
                storage_of(location).remove_clone(p, vm, in_use)?;
                Some(format!("disk {location}"))
            }
            Action::RemoveBase { location, .. } => {
                storage_of(location).remove_base(p)?;
                Some(format!("base {location}"))
            }
            Action::RemoveFile { kind, path } => remove_file(*kind, Path::new(path))?,
            Action::RemoveForward {
                rules,
                drop_table,
                name,
                ..
            } => {
                crate::forward::remove(rules, drop_table.as_deref())?;
                Some(format!("forward {name}"))
            }
            Action::CreateNetwork { .. }
            | Action::MakeForward { .. }
            | Action::StartNetwork { .. }
            | Action::WriteBootFiles { .. }
            | Action::WriteSeed { .. }
            | Action::BuildBase { .. }
            | Action::CloneDisk { .. }
            | Action::DefineDomain { .. }
            | Action::StartDomain { .. }
            | Action::ReattachTap { .. }
            | Action::DefinePool { .. }
            | Action::RefreshPool { .. }
            | Action::Provision { .. }
            | Action::StopDomain { .. }
            | Action::RecloneDisk { .. } => {
                bail!("{} {}: not an action of lab down", a.op(), a.name())
            }
            Action::Keep { .. } => None,
        };
        removed.extend(said);
        done(a);
    }
    Ok(removed)
}

/// Remove one file of lab's (one already gone is fine); what to report of it.
fn remove_file(kind: FileKind, path: &Path) -> Result<Option<String>> {
    let gone = |p: &Path| match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    };
    if kind == FileKind::Snapshot {
        crate::snapshot::remove_snapshot_dir(path)?;
        return Ok(path
            .file_name()
            .map(|n| format!("snapshot {}", n.to_string_lossy())));
    }
    if kind == FileKind::UnfinishedDir {
        // Only if empty: something that came since is left alone.
        let _ = std::fs::remove_dir(path);
        return Ok(None);
    }
    gone(path)?;
    let shown = path.display();
    Ok(match kind {
        FileKind::ConsoleLog
        | FileKind::KnownHosts
        | FileKind::OrphanMark
        | FileKind::Seed
        | FileKind::Identity => None,
        FileKind::UnfinishedDir | FileKind::Snapshot => None,
        FileKind::PackstackPassword => Some(format!("packstack password {shown}")),
        FileKind::SshKey => Some(format!("key {shown}")),
        FileKind::Unfinished => Some(format!("unfinished {shown}")),
        FileKind::BootFile => {
            let _ = std::fs::remove_file(directboot::digest_path(path));
            let _ = std::fs::remove_file(directboot::inputs_path(path));
            gone(&crate::mark::marker_path(path))?;
            Some(format!("boot file {shown}"))
        }
    })
}

/// The storage a plan chose.
pub fn storage_for(plan: &plan::Plan) -> Result<Box<dyn Storage>> {
    match plan.storage.backend {
        plan::Backend::Qcow2 => Ok(Box::new(Qcow2Storage::new(&plan.storage.location))),
        plan::Backend::LvmThin => {
            let (vg, pool) =
                plan.storage.location.split_once('/').with_context(|| {
                    format!("thin pool {} is not VG/POOL", plan.storage.location)
                })?;
            Ok(Box::new(LvmThinStorage::new(vg, pool)))
        }
    }
}

/// Refuse to create network `name` on `subnet` when something of the host's now sits in it.
fn still_free(name: &str, subnet: ipnet::Ipv4Net, taken: &[crate::subnet::Taken]) -> Result<()> {
    let now = crate::subnet::collisions(subnet, taken);
    if now.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "not creating network {name} on {subnet}: since the plan it collides with {} (a VPN \
         that came up?); nothing was made: run `lab up` again to choose another subnet",
        now.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::Taken;

    #[test]
    fn a_subnet_taken_since_the_plan_is_refused_naming_what_took_it() {
        let subnet: ipnet::Ipv4Net = "10.77.7.0/24".parse().unwrap();
        let dns = Taken {
            net: "10.77.7.53/32".parse().unwrap(),
            what: "DNS server in /etc/resolv.conf".into(),
            iface: None,
        };
        let elsewhere = Taken {
            net: "192.168.1.0/24".parse().unwrap(),
            what: "route via wlan0".into(),
            iface: Some("wlan0".into()),
        };
        still_free("lab-demo", subnet, std::slice::from_ref(&elsewhere)).unwrap();
        let err = still_free("lab-demo", subnet, &[elsewhere, dns])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not creating network lab-demo on 10.77.7.0/24"),
            "{err}"
        );
        assert!(err.contains("10.77.7.53"), "{err}");
        assert!(err.contains("DNS server in /etc/resolv.conf"), "{err}");
    }
}
