//! Carrying out a plan: network, base, then every VM at once (clone, define, start), then
//! waiting until each is ready. Every step is observable afterwards (lab's marks are put
//! down first), so a run that is interrupted anywhere is completed by the next `lab up` and
//! removed by `lab down`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::libvirt::Libvirt;
use crate::libvirt::xml::{self, DirectBoot};
use crate::plan::{Action, Object, Op, Plan, VmPlan};
use crate::profile::Profile;
use crate::smoke;
use crate::storage::{InUse, Storage, Volume};
use crate::ui;

/// Everything `apply` works with.
pub struct Env<'a> {
    pub lv: &'a Libvirt,
    pub storage: &'a dyn Storage,
    pub profile: &'a Profile,
    /// Where boot files and console logs live.
    pub dir: PathBuf,
    /// How long a VM may take from start to ready.
    pub ready_timeout: Duration,
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
    pub define: u64,
    pub start: u64,
    pub ready: u64,
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

/// Where a VM's serial console is logged.
pub fn console_log(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("{domain}.console.log"))
}

/// Whether the profile boots its VMs straight from a kernel and initrd lab makes.
pub fn direct_boot(profile: &Profile) -> bool {
    profile.base.kernel.is_some()
}

/// The kernel, initrd and command line a direct-boot VM gets.
fn boot_for(env: &Env<'_>, boot: Option<&smoke::BootFiles>, vm: &VmPlan) -> Option<DirectBoot> {
    boot.map(|b| DirectBoot {
        kernel: b.kernel.display().to_string(),
        initrd: b.initrd.display().to_string(),
        cmdline: smoke::vm_cmdline(b, &env.profile.name, &vm.name),
    })
}

fn step(what: &Action) {
    ui::debug(format_args!(
        "lab: {} {} {}",
        what.op, what.object, what.name
    ));
}

fn done(what: &Action) {
    ui::debug(format_args!(
        "lab: done {} {} {}",
        what.op, what.object, what.name
    ));
}

/// The user libvirt runs QEMU as, when it is a separate one (Debian: libvirt-qemu,
/// Fedora: qemu): it must be able to reach every image, console log and kernel lab writes.
fn qemu_user() -> Option<(String, u32)> {
    for name in ["libvirt-qemu", "qemu"] {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: getpwnam with a valid C string; the result is read at once.
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if !pw.is_null() {
            // SAFETY: pw is non-null and points to a valid passwd entry.
            return Some((name.to_string(), unsafe { (*pw).pw_uid }));
        }
    }
    None
}

/// Refuse, before anything is made, a directory QEMU could not reach: a home directory of
/// mode 0700 is the usual case. lab does not change the permissions of directories it did
/// not make; it says which one and how.
pub fn preflight_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some((user, uid)) = qemu_user() else {
        return Ok(());
    };
    let existing = crate::host::resources::nearest_existing(dir);
    let mut at = existing.canonicalize().unwrap_or(existing);
    loop {
        if let Ok(meta) = std::fs::metadata(&at) {
            let others_search = meta.mode() & 0o001 != 0;
            if !others_search && meta.uid() != uid {
                bail!(
                    "QEMU runs as {user} and could not reach {}: {} is mode {:o}; \
                     run `chmod o+x {}` or set [storage] dir to a directory such as /var/lib/lab/images",
                    dir.display(),
                    at.display(),
                    meta.mode() & 0o7777,
                    at.display()
                );
            }
        }
        if !at.pop() {
            return Ok(());
        }
    }
}

/// Carry out `plan`. Returns the state of every VM of the plan once ready.
pub fn apply(plan: &Plan, env: &Env<'_>) -> Result<(Vec<VmState>, LabTimings)> {
    preflight_dir(&env.dir)?;
    if direct_boot(env.profile) {
        // What the boot files are made of, before anything is made.
        smoke::preflight()?;
    }
    let mut timings = LabTimings::default();
    // Network first: domains need it to start.
    let t = Instant::now();
    for a in plan.actions.iter().filter(|a| a.object == Object::Network) {
        step(a);
        match a.op {
            Op::Create => {
                let doc = xml::to_xml(&xml::network_for(plan));
                env.lv.define_network(&a.name, &doc)?;
            }
            Op::Start => env.lv.start_network(&a.name)?,
            _ => {}
        }
        done(a);
    }
    timings.network = ms(t);

    // Boot files (direct boot) are made, or found unchanged, on every run.
    let t = Instant::now();
    let boot = if direct_boot(env.profile) {
        std::fs::create_dir_all(&env.dir)
            .with_context(|| format!("creating {}", env.dir.display()))?;
        Some(smoke::prepare_boot_files(&env.dir, &env.profile.name)?)
    } else {
        None
    };
    timings.boot_files = ms(t);

    let t = Instant::now();
    for a in plan.actions.iter().filter(|a| a.object == Object::Base) {
        step(a);
        build_base(env)?;
        done(a);
    }
    timings.base = ms(t);
    let t = Instant::now();

    let in_use = env.lv.disks_in_use()?;
    let progress = VmProgress::new();
    let results: Vec<Result<VmState>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .vms
            .iter()
            .map(|vm| {
                let bar = progress.bar(&vm.name);
                let boot = boot.as_ref();
                let in_use = &in_use;
                s.spawn(move || {
                    let r = bring_up(plan, env, vm, boot, in_use, &bar);
                    match &r {
                        Ok(st) => bar.finish_with_message(format!(
                            "ready at {}",
                            st.ip.as_deref().unwrap_or("?")
                        )),
                        Err(e) => bar.abandon_with_message(format!("failed: {e:#}")),
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a VM thread panicked")))
            .collect()
    });
    let states = all_or_errors(results)?;
    timings.vms = ms(t);
    Ok((states, timings))
}

/// A spinner line per VM on stderr, updated from the VM's thread (hidden with -q).
pub struct VmProgress {
    multi: MultiProgress,
    style: ProgressStyle,
}

impl VmProgress {
    pub fn new() -> VmProgress {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        if ui::verbosity() < 0 {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        VmProgress {
            multi,
            style: ProgressStyle::with_template("{spinner} {prefix:<12} {msg}")
                .expect("valid template"),
        }
    }

    /// The line of VM `name`, ticking.
    pub fn bar(&self, name: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(self.style.clone());
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}

impl Default for VmProgress {
    fn default() -> Self {
        Self::new()
    }
}

/// Every VM's result, or one error listing every VM that failed.
pub fn all_or_errors<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    let mut states = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(s) => states.push(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(states)
}

/// How long an installer may run before lab gives up on it and removes what it made.
const KICKSTART_BUILD_TIMEOUT: Duration = Duration::from_secs(7200);

/// Build the base the profile describes, seal it.
fn build_base(env: &Env<'_>) -> Result<Volume> {
    let p = env.profile;
    let base = if direct_boot(p) {
        let work = tempfile::Builder::new()
            .prefix("lab-base-")
            .tempdir_in(std::env::temp_dir())
            .context("creating a scratch directory for the base")?;
        let raw = smoke::build_base_image(work.path(), &p.name, p.base.disk)?;
        env.storage.import_base(&p.name, &raw)?
    } else if let Some(image) = &p.base.image {
        env.storage.import_base(&p.name, image)?
    } else {
        // An installer run: it builds, trims, compacts and seals the base itself.
        crate::kickstart::build_base(env.lv, env.storage, p, &env.dir, KICKSTART_BUILD_TIMEOUT)?;
        return env
            .storage
            .base(&p.name)?
            .with_context(|| format!("the kickstart build of {} left no sealed base", p.name));
    };
    env.storage.seal_base(&p.name)?;
    Ok(base)
}

/// One VM: clone, define, start as the plan says, then wait until it is ready.
fn bring_up(
    plan: &Plan,
    env: &Env<'_>,
    vm: &VmPlan,
    boot: Option<&smoke::BootFiles>,
    in_use: &[InUse],
    bar: &ProgressBar,
) -> Result<VmState> {
    let console = console_log(&env.dir, &vm.domain);
    let mine = |a: &&Action| a.vm.as_deref() == Some(vm.name.as_str());
    let mut disk: Option<Volume> = None;
    let mut timings = VmTimings::default();
    for a in plan.actions.iter().filter(mine) {
        step(a);
        bar.set_message(format!("{} {}", a.op, a.object));
        let t = Instant::now();
        match (a.op, a.object) {
            (Op::Clone, Object::Disk) => {
                disk = Some(
                    env.storage
                        .clone_base(&env.profile.name, &vm.name, in_use)?,
                );
                // A new disk, a new host key.
                crate::ssh::forget_host(&env.dir, &vm.domain)?;
                timings.disk = ms(t);
            }
            (Op::Define, Object::Domain) => {
                let disk = match &disk {
                    Some(d) => d.clone(),
                    None => env
                        .storage
                        .clone_volume(&env.profile.name, &vm.name)?
                        .with_context(|| format!("{}: its disk is missing", vm.name))?,
                };
                let doc = xml::to_xml(&xml::domain_for(
                    plan,
                    vm,
                    &disk,
                    boot_for(env, boot, vm).as_ref(),
                    &console,
                ));
                env.lv.define_domain(&vm.domain, &doc)?;
                timings.define = ms(t);
            }
            (Op::Start, Object::Domain) => {
                if disk.is_none() {
                    // An existing clone: a thin snapshot is activated here (-K), as after a
                    // reboot; a qcow2 overlay is just found.
                    env.storage.clone_volume(&env.profile.name, &vm.name)?;
                }
                env.lv.start_domain(&vm.domain)?;
                timings.start = ms(t);
            }
            _ => {}
        }
        done(a);
    }
    reattach_interfaces(env, vm)?;
    bar.set_message("waiting until ready");
    ready_state(env, vm, boot.is_some(), timings)
}

/// A running VM whose network was stopped and started again under it is off the new
/// bridge, cut off: its interfaces are put back, and that is said.
fn reattach_interfaces(env: &Env<'_>, vm: &VmPlan) -> Result<()> {
    for (tap, bridge) in env
        .lv
        .detached_interfaces(&vm.domain, &crate::host::Sysroot::live())
    {
        env.lv.reattach(&tap, &bridge)?;
        ui::warn(format_args!(
            "{}: its interface {tap} was off bridge {bridge} (the network was restarted \
             under the running VM): put back",
            vm.name
        ));
    }
    Ok(())
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
    let ip = wait_ready(env, vm, &console, direct_boot)?;
    timings.ready = ms(t);
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
                .and_then(|t| smoke::parse_ready(&t, &vm.name))
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
            bail!(
                "{}: not ready after {} s: waited for {waited}{}",
                vm.name,
                env.ready_timeout.as_secs(),
                console_tail(console)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The last lines of a console log, for error messages.
pub fn console_tail(console: &Path) -> String {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return format!("; its console ({}) is empty", console.display());
    }
    let tail = &lines[lines.len().saturating_sub(10)..];
    format!(
        "; last console lines ({}):\n    {}",
        console.display(),
        tail.join("\n    ")
    )
}

/// `lab reset`: each target VM stopped, its clone dropped and made again from the base,
/// started, and waited for, all at once.
pub fn reset(env: &Env<'_>, targets: &[&VmPlan]) -> Result<Vec<VmState>> {
    preflight_dir(&env.dir)?;
    // Boot files before any VM is stopped: a failure there leaves the VMs as they were.
    let boot = if direct_boot(env.profile) {
        Some(smoke::prepare_boot_files(&env.dir, &env.profile.name)?)
    } else {
        None
    };
    for vm in targets {
        ui::debug(format_args!("lab: stop domain {}", vm.domain));
        env.lv.stop_domain(&vm.domain)?;
    }
    let in_use = env.lv.disks_in_use()?;
    let results: Vec<Result<VmState>> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|vm| {
                let in_use = &in_use;
                let boot = boot.as_ref();
                s.spawn(move || {
                    let p = &env.profile.name;
                    let mut timings = VmTimings::default();
                    ui::debug(format_args!("lab: reset disk of {}", vm.name));
                    let t = Instant::now();
                    env.storage.remove_clone(p, &vm.name, in_use)?;
                    env.storage.clone_base(p, &vm.name, in_use)?;
                    crate::ssh::forget_host(&env.dir, &vm.domain)?;
                    timings.disk = ms(t);
                    ui::debug(format_args!("lab: start domain {}", vm.domain));
                    let t = Instant::now();
                    env.lv.start_domain(&vm.domain)?;
                    timings.start = ms(t);
                    ready_state(env, vm, boot.is_some(), timings)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a VM thread panicked")))
            .collect()
    });
    all_or_errors(results)
}

/// `lab down`: lab's domains, network and clones of the profile (with `purge`, its base and
/// boot files too). Only what carries lab's mark for this profile is touched.
pub fn down(
    lv: &Libvirt,
    profile: &Profile,
    observed: &crate::state::Observed,
    purge: bool,
) -> Result<Vec<String>> {
    use crate::state::VolumeRole;
    let p = profile.name.as_str();
    let dir = &profile.storage.dir;
    let mut removed = Vec::new();
    for d in &observed.domains {
        if d.owner.as_ref().is_some_and(|o| o.is(p)) {
            lv.remove_domain(&d.name)?;
            let _ = std::fs::remove_file(console_log(dir, &d.name));
            ui::debug(format_args!("lab: removed domain {}", d.name));
            removed.push(format!("domain {}", d.name));
        }
    }
    let net = crate::names::network(p);
    if let Some(n) = observed.network(&net)
        && n.owner.as_ref().is_some_and(|o| o.is(p))
    {
        lv.remove_network(&net)?;
        removed.push(format!("network {net}"));
    }
    let storage = crate::storage::qcow2::Qcow2Storage::new(dir);
    let thin = match (&profile.storage.vg, &profile.storage.pool) {
        (Some(vg), Some(pool)) => Some(crate::storage::lvm_thin::LvmThinStorage::new(vg, pool)),
        _ => None,
    };
    // A thin volume's location is VG/LV; an image's is its path.
    let storage_of = |v: &crate::state::ObservedVolume| -> &dyn Storage {
        match &thin {
            Some(t) if !v.location.starts_with('/') => t,
            _ => &storage,
        }
    };
    let in_use = lv.disks_in_use()?;
    let ours: Vec<&crate::state::ObservedVolume> = observed
        .volumes
        .iter()
        .filter(|v| v.owner.as_ref().is_some_and(|o| o.is(p)))
        .collect();
    // Clones first: a base is only removed once nothing is backed by it.
    for v in &ours {
        if let (Some(VolumeRole::Clone), Some(vm)) =
            (v.role, v.owner.as_ref().and_then(|o| o.vm.as_ref()))
        {
            storage_of(v).remove_clone(p, vm, &in_use)?;
            removed.push(format!("disk {}", v.location));
        }
    }
    if purge && let Some(base) = ours.iter().find(|v| v.role == Some(VolumeRole::Base)) {
        storage_of(base).remove_base(p)?;
        removed.push(format!("base {}", base.location));
    }
    // Console logs lab asked libvirt to write and the VMs' host keys, also of VMs removed
    // behind lab's back.
    for (vm, _) in profile.instances() {
        let domain = crate::names::domain(p, &vm);
        let log = console_log(dir, &domain);
        if log.exists() {
            std::fs::remove_file(&log).with_context(|| format!("removing {}", log.display()))?;
        }
        crate::ssh::forget_host(dir, &domain)?;
    }
    // The packstack password lab made up belongs to the OpenStack that was in the VMs.
    let secret = crate::commands_ssh::packstack_password_path(dir, p);
    if secret.exists() {
        std::fs::remove_file(&secret).with_context(|| format!("removing {}", secret.display()))?;
        removed.push(format!("packstack password {}", secret.display()));
    }
    if purge {
        let key = crate::ssh::lab_key_path(dir, p);
        for file in [crate::ssh::pub_path(&key), key] {
            if file.exists() {
                std::fs::remove_file(&file)
                    .with_context(|| format!("removing {}", file.display()))?;
                removed.push(format!("key {}", file.display()));
            }
        }
    }
    for partial in storage.clear_partial(p)? {
        removed.push(format!("unfinished {}", partial.display()));
    }
    removed.extend(remove_leftover_marks(dir, p, purge)?);
    Ok(removed)
}

/// lab's marker files of `profile` whose image is gone (an interrupted clone), and with
/// `purge` its boot files: removed. Files without lab's mark are never touched.
fn remove_leftover_marks(dir: &Path, profile: &str, purge: bool) -> Result<Vec<String>> {
    use crate::state::{Marker, VolumeRole};
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let mark = entry.path();
        let Some(name) = mark.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(target) = name.strip_suffix(".lab") else {
            continue;
        };
        let file = dir.join(target);
        let Some(marker) = Marker::read(&file) else {
            continue;
        };
        if !marker.owner.is(profile) {
            continue;
        }
        let is_boot = marker.role == VolumeRole::Boot;
        if is_boot && purge && file.exists() {
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            let _ = std::fs::remove_file(smoke::digest_path(&file));
            let _ = std::fs::remove_file(smoke::inputs_path(&file));
            removed.push(format!("boot file {}", file.display()));
        }
        if !file.exists() {
            std::fs::remove_file(&mark).with_context(|| format!("removing {}", mark.display()))?;
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_qemu_cannot_reach_is_refused_naming_the_culprit() {
        use std::os::unix::fs::PermissionsExt;
        if qemu_user().is_none() {
            // libvirt's packages create this user; setup-host.sh makes sure it exists.
            panic!("no libvirt-qemu or qemu user on this machine");
        }
        let top = tempfile::tempdir().unwrap();
        let private = top.path().join("home");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let images = private.join("labs/images");
        let err = preflight_dir(&images).unwrap_err().to_string();
        assert!(err.contains("is mode 700"), "{err}");
        assert!(
            err.contains(&format!(
                "chmod o+x {}",
                private.canonicalize().unwrap().display()
            )),
            "{err}"
        );
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        preflight_dir(&images).unwrap();
    }
}
