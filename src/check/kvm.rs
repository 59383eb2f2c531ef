//! The KVM area of `lab check`: `cpu.virt`, `kvm.device`, `kvm.run`, `kvm.nested`.
//!
//! Facts are gathered first (files under the sysroot, then the live probes), then judged by
//! pure functions, so every verdict is testable on a fixture or a constructed probe result.

use std::time::Duration;

use super::{Check, CheckContext, Report, Status};
use crate::host::Sysroot;
use crate::host::cpu::{self, CpuInfo, Vendor};
use crate::host::kvm::KvmVerdict;
use crate::host::kvm::{
    self, BootOutcome, GuestBoot, GuestProbe, GuestRun, IoctlProbe, KvmFacts, KvmHost, KvmModule,
};

/// The tiny ioctl guest halts within milliseconds; this only guards against a hang.
const IOCTL_TIMEOUT: Duration = Duration::from_secs(2);
/// QEMU with SeaBIOS reaches the boot sector in 0.1-0.2 s under TCG on the development
/// machine (measured), and a sound KVM should be faster than emulation; under that
/// machine's kvm_pvm it takes 4.2-4.8 s. A host that needs more than 1 s is not running guests at KVM speed, and
/// on a bad host this time-out is paid on every `lab check`, so it stays short.
const KVM_BOOT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The TCG reference boots alongside the KVM one; it only adds time when it is slower.
const TCG_BOOT_TIMEOUT: Duration = Duration::from_millis(1500);

const CONSEQUENCE: &str =
    "guests would run under TCG emulation, tens of times slower, with no nested KVM inside them";

pub fn check(ctx: &CheckContext<'_>, report: &mut Report) {
    let live = ctx.sysroot.is_live();
    let cpu = cpu::read(ctx.sysroot);
    let mut facts = gather(ctx.sysroot, live);
    let mut checks = evaluate(cpu.as_ref(), &facts, live);
    if live {
        remember(
            &cache_key(ctx.sysroot),
            &verdict_from(&facts, &checks, live),
        );
    }
    if ctx.fix
        && let Some(fixed) = fix_nested(ctx.sysroot, &facts.host, live)
    {
        checks[3] = fixed;
        facts.host = KvmHost::read(ctx.sysroot);
    }
    for c in checks {
        report.push(c);
    }
    report.fact("cpu", &cpu);
    report.fact("kvm", &facts);
}

/// Whether lab's VMs get KVM here, from the same facts and verdicts as `lab check`. Under
/// a sysroot, where nothing can be run, KVM counts as usable when the files show a vendor
/// KVM module and the CPU flag.
pub fn verdict(sysroot: &Sysroot) -> KvmVerdict {
    let live = sysroot.is_live();
    let cpu = cpu::read(sysroot);
    let facts = gather(sysroot, live);
    let checks = evaluate(cpu.as_ref(), &facts, live);
    verdict_from(&facts, &checks, live)
}

fn verdict_from(facts: &KvmFacts, checks: &[Check; 4], live: bool) -> KvmVerdict {
    let [virt, device, run, nested] = checks;
    let usable = if live {
        run.status == Status::Pass
    } else {
        device.status == Status::Pass
            && virt.status == Status::Pass
            && facts.host.vendor_module().is_some()
    };
    let reason = [&run, &device, &virt]
        .into_iter()
        .find(|c| c.status == Status::Fail)
        .map_or_else(|| run.summary.clone(), |c| c.summary.clone());
    // The plan states the consequence itself.
    let reason = reason
        .split(" — ")
        .next()
        .unwrap_or_default()
        .trim_end_matches(&format!("; {CONSEQUENCE}"))
        .to_string();
    KvmVerdict {
        usable,
        nested: usable && nested.status == Status::Pass,
        reason,
    }
}

/// [`verdict`], remembered until the machine reboots or its KVM modules change: the probe
/// boots QEMU twice, which `lab up` should not pay on every run. `lab check` always probes
/// afresh and refreshes what is remembered. Under a sysroot nothing is remembered.
pub fn verdict_cached(sysroot: &Sysroot) -> KvmVerdict {
    if !sysroot.is_live() {
        return verdict(sysroot);
    }
    let key = cache_key(sysroot);
    let path = cache_path();
    if let Some(cached) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<CachedVerdict>(&t).ok())
        .filter(|c| c.key == key)
    {
        crate::ui::debug(format_args!("KVM verdict remembered in {}", path.display()));
        return cached.verdict;
    }
    let v = verdict(sysroot);
    remember(&key, &v);
    v
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedVerdict {
    key: String,
    verdict: KvmVerdict,
}

fn cache_path() -> std::path::PathBuf {
    crate::names::runtime_dir().join("kvm-verdict.json")
}

/// What the verdict depends on: this boot, the KVM modules and their nested option, lab.
fn cache_key(sysroot: &Sysroot) -> String {
    let mut key = String::new();
    for file in [
        "/proc/sys/kernel/random/boot_id",
        "/sys/module/kvm_intel/parameters/nested",
        "/sys/module/kvm_amd/parameters/nested",
        "/sys/module/kvm/refcnt",
    ] {
        let value = if file.ends_with("refcnt") {
            // Loaded or not; the count itself changes with every VM.
            sysroot.exists(file).to_string()
        } else {
            sysroot.read_attr(file).unwrap_or_default()
        };
        key.push_str(&format!("{file}={value};"));
    }
    key.push_str(&format!("dev_kvm={};", sysroot.exists("/dev/kvm")));
    key.push_str(concat!("lab=", env!("CARGO_PKG_VERSION")));
    key
}

fn remember(key: &str, v: &KvmVerdict) {
    let path = cache_path();
    let doc = CachedVerdict {
        key: key.to_string(),
        verdict: v.clone(),
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(text) = serde_json::to_string(&doc) {
        let tmp = path.with_extension(format!("json.{}", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// Read the files, and on the live machine open `/dev/kvm` and run the probes.
fn gather(sysroot: &Sysroot, live: bool) -> KvmFacts {
    let mut facts = KvmFacts {
        host: KvmHost::read(sysroot),
        device_openable: None,
        device_error: None,
        ioctl_probe: None,
        guest_probe: None,
    };
    if !live || !facts.host.device {
        return facts;
    }
    match kvm::open_device() {
        Ok(()) => facts.device_openable = Some(true),
        Err(e) => {
            facts.device_openable = Some(false);
            facts.device_error = Some(e);
            return facts;
        }
    }
    let probe = kvm::probe_ioctl(IOCTL_TIMEOUT);
    let kvm_runs_code = matches!(
        probe.run,
        GuestRun::Halted { .. } | GuestRun::Unexpected { .. }
    );
    facts.ioctl_probe = Some(probe);
    if kvm_runs_code {
        facts.guest_probe = Some(kvm::probe_standard_guest(
            KVM_BOOT_TIMEOUT,
            TCG_BOOT_TIMEOUT,
        ));
    }
    facts
}

/// The four checks, in order, from the facts alone.
pub fn evaluate(cpu: Option<&CpuInfo>, facts: &KvmFacts, live: bool) -> [Check; 4] {
    [
        cpu_virt(cpu),
        device(cpu, facts, live),
        run(cpu, facts, live),
        nested(cpu, facts),
    ]
}

fn vendor(cpu: Option<&CpuInfo>) -> Vendor {
    cpu.map_or(Vendor::Other, |c| c.vendor)
}

fn has_virt(cpu: Option<&CpuInfo>) -> bool {
    cpu.is_some_and(|c| c.virt_flag().is_some())
}

/// The module a fix should name: the loaded one, else the CPU vendor's.
fn module_for(cpu: Option<&CpuInfo>, host: &KvmHost) -> String {
    match host.vendor_module() {
        Some(m) => m.name.clone(),
        None => vendor(cpu)
            .kvm_module()
            .unwrap_or("kvm_intel (Intel) or kvm_amd (AMD)")
            .to_string(),
    }
}

fn enable_virt_fix(cpu: Option<&CpuInfo>) -> String {
    let ext = vendor(cpu).extension();
    let firmware = format!(
        "enable {ext} in the firmware (BIOS/UEFI) setup, usually under CPU or \
         Virtualization, then power off and on"
    );
    let host = format!(
        "this machine is a VM: on its host, expose {ext} to it (libvirt: \
         <cpu mode='host-passthrough'/>, with nested=1 in the host's kvm_intel/kvm_amd)"
    );
    if cpu.is_some_and(|c| c.hypervisor) {
        format!("{host}; or run lab on bare metal with {ext} enabled in the firmware setup")
    } else {
        format!("{firmware}; on a VM host, expose it to this VM")
    }
}

fn cpu_virt(cpu: Option<&CpuInfo>) -> Check {
    let id = "cpu.virt";
    let Some(c) = cpu else {
        return Check::warn(
            id,
            "cannot read /proc/cpuinfo: hardware virtualisation unknown",
            "mount /proc (lab reads /proc/cpuinfo), or check `grep -wE 'vmx|svm' /proc/cpuinfo`",
        );
    };
    let what = format!(
        "{} ({}, {} CPUs)",
        if c.model_name.is_empty() {
            "unknown model"
        } else {
            &c.model_name
        },
        c.vendor_id,
        c.cpus
    );
    match c.virt_flag() {
        Some(flag) => Check::pass(id, format!("{what}: {flag} present")),
        None => {
            let why = if c.hypervisor {
                "this machine is itself a VM whose host does not pass hardware virtualisation on"
            } else {
                "hardware virtualisation is off in the firmware or absent"
            };
            Check::fail(
                id,
                format!("{what}: no vmx or svm flag: {why}"),
                enable_virt_fix(cpu),
            )
        }
    }
}

fn providers(host: &KvmHost) -> String {
    if host.modules.is_empty() {
        return if host.modules_listed {
            "no kvm_* module loaded".into()
        } else {
            "provider module unknown".into()
        };
    }
    let names: Vec<String> = host
        .modules
        .iter()
        .map(|m| {
            if m.builtin {
                format!("{} (built in)", m.name)
            } else {
                m.name.clone()
            }
        })
        .collect();
    format!("provided by {}", names.join(", "))
}

fn device(cpu: Option<&CpuInfo>, facts: &KvmFacts, live: bool) -> Check {
    let id = "kvm.device";
    let host = &facts.host;
    let module = module_for(cpu, host);
    if !host.device {
        let (why, fix) = if !has_virt(cpu) {
            (
                "no hardware virtualisation (see cpu.virt), so no KVM module provides it".into(),
                format!("fix cpu.virt first; then: sudo modprobe {module}"),
            )
        } else if let Some(m) = host.vendor_module() {
            (
                format!("{} is loaded but created no device", m.name),
                format!(
                    "dmesg | grep -i kvm; then: sudo sh -c 'modprobe -r {0} && modprobe {0}'",
                    m.name
                ),
            )
        } else {
            (
                format!("{module} is not loaded"),
                format!(
                    "sudo modprobe {module}; then let your user use it: \
                     sudo usermod -aG kvm $USER (log out and in again)"
                ),
            )
        };
        return Check::fail(id, format!("/dev/kvm missing: {why}; {CONSEQUENCE}"), fix);
    }
    let from = providers(host);
    if !live {
        return Check::pass(
            id,
            format!("/dev/kvm present, {from}; opening it is only tried on the live machine"),
        );
    }
    match (&facts.device_openable, &facts.device_error) {
        (Some(false), Some(err)) => {
            let fix = if err.permission_denied {
                let group = err.group.as_deref().unwrap_or("kvm");
                format!(
                    "sudo usermod -aG {group} $USER, then log out and in again (or run lab as root)"
                )
            } else {
                "ls -l /dev/kvm; dmesg | grep -i kvm".to_string()
            };
            Check::fail(
                id,
                format!(
                    "/dev/kvm present, {from}, but cannot be opened: {}",
                    err.error
                ),
                fix,
            )
        }
        _ => Check::pass(id, format!("/dev/kvm present, {from}, opens read-write")),
    }
}

/// What about this KVM is not what kvm_intel/kvm_amd would offer.
struct Oddities {
    notes: Vec<String>,
    /// Guests get no SSE3, which every current distribution needs (x86-64-v2 and up): they
    /// cannot run on this KVM whatever a boot sector does.
    no_sse3: bool,
    /// `/dev/kvm` comes from a module other than kvm_intel/kvm_amd.
    foreign_provider: bool,
}

impl Oddities {
    /// Enough, without a conclusive guest probe, to say standard guests will not run.
    fn condemning(&self) -> bool {
        self.no_sse3 || self.foreign_provider
    }
}

fn oddities(facts: &KvmFacts) -> Oddities {
    let mut notes = Vec::new();
    let others = facts.host.other_providers();
    let foreign_provider = facts.host.vendor_module().is_none() && !others.is_empty();
    if foreign_provider {
        notes.push(format!(
            "/dev/kvm comes from {} (no kvm_intel/kvm_amd)",
            others.join(", ")
        ));
    }
    let mut no_sse3 = false;
    if let Some(probe) = &facts.ioctl_probe {
        if let Some(c) = probe.guest_cpuid {
            let mut missing = Vec::new();
            if !c.offers_nesting() {
                missing.push("vmx/svm");
            }
            if !c.sse3 {
                missing.push("SSE3");
                no_sse3 = true;
            }
            if !missing.is_empty() {
                notes.push(format!("KVM offers guests no {}", missing.join(", no ")));
            }
        }
        if probe.nested_state == Some(false) {
            notes.push("no KVM_CAP_NESTED_STATE".into());
        }
    }
    Oddities {
        notes,
        no_sse3,
        foreign_provider,
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

fn describe_ioctl(probe: &IoctlProbe) -> Result<String, String> {
    match &probe.run {
        GuestRun::Halted { .. } => Ok(format!(
            "the 4-instruction ioctl test guest did run ({:.1} ms)",
            probe.run_ms
        )),
        GuestRun::Unexpected { exits } => Err(format!(
            "the ioctl test guest left through unplanned exits: {}",
            exits.join(", ")
        )),
        GuestRun::Hung { after_ms } => Err(format!(
            "the ioctl test guest never exited (gave up after {})",
            secs(*after_ms)
        )),
        GuestRun::Failed { step, error } => Err(format!("{step} failed: {error}")),
    }
}

fn tcg_reference(tcg: &GuestBoot) -> String {
    match tcg.outcome {
        BootOutcome::Booted => format!("under TCG it booted in {}", secs(tcg.elapsed_ms)),
        _ => format!(
            "under TCG it did not boot either ({})",
            tcg.error.as_deref().unwrap_or("stalled")
        ),
    }
}

/// The verdict of the standard-guest probe: Ok(text) when KVM booted it, Err((text,
/// conclusive)) when not; not conclusive when the TCG reference failed too.
fn describe_guest(g: &GuestProbe) -> Result<String, (String, bool)> {
    let kvm = &g.kvm;
    let tcg_booted = g.tcg.outcome == BootOutcome::Booted;
    match kvm.outcome {
        BootOutcome::Booted => Ok(format!(
            "a standard guest (SeaBIOS, boot sector) booted under KVM in {} (TCG {})",
            secs(kvm.elapsed_ms),
            if tcg_booted {
                secs(g.tcg.elapsed_ms)
            } else {
                "did not boot".into()
            }
        )),
        BootOutcome::Stalled => {
            let fw = kvm.firmware.as_ref();
            let progress = match fw {
                Some(p) if p.banner.is_some() => format!(
                    "the firmware started but was not at the boot sector after {} (last: \"{}\")",
                    secs(kvm.timeout_ms),
                    p.last_line.as_deref().unwrap_or_default()
                ),
                _ => format!("the firmware printed nothing in {}", secs(kvm.timeout_ms)),
            };
            Err((
                format!(
                    "a standard guest stalls under KVM: {progress}; {}",
                    tcg_reference(&g.tcg)
                ),
                tcg_booted,
            ))
        }
        BootOutcome::Failed => Err((
            format!(
                "QEMU could not run a standard guest under KVM: {}; {}",
                kvm.error.as_deref().unwrap_or("unknown error"),
                tcg_reference(&g.tcg)
            ),
            tcg_booted,
        )),
        BootOutcome::NotInstalled => Err((
            format!("standard-guest probe not run: {} not installed", g.qemu),
            false,
        )),
    }
}

fn run_fix(cpu: Option<&CpuInfo>, facts: &KvmFacts) -> String {
    if !has_virt(cpu) {
        return "fix cpu.virt first: standard guests need hardware virtualisation, so that \
                kvm_intel or kvm_amd provides /dev/kvm"
            .into();
    }
    if facts.host.vendor_module().is_none() {
        return format!(
            "sudo modprobe {}, then re-run lab check",
            module_for(cpu, &facts.host)
        );
    }
    "dmesg | grep -i kvm; update the kernel and QEMU; check that no other hypervisor \
     (VirtualBox, VMware) holds VT-x/AMD-V"
        .into()
}

fn run(cpu: Option<&CpuInfo>, facts: &KvmFacts, live: bool) -> Check {
    let id = "kvm.run";
    if !live {
        return Check::skip(id, "needs the live machine: not probed under --sysroot");
    }
    let probe = match (&facts.ioctl_probe, facts.device_openable) {
        (Some(p), Some(true)) => p,
        _ => {
            return Check::skip(
                id,
                "not probed: /dev/kvm is missing or cannot be opened (see kvm.device)",
            );
        }
    };
    let odd = oddities(facts);
    let fail = |what: String| {
        let mut parts = vec![what];
        parts.extend(odd.notes.iter().cloned());
        Check::fail(
            id,
            format!("{} — {CONSEQUENCE}", parts.join("; ")),
            run_fix(cpu, facts),
        )
    };
    let ioctl = match describe_ioctl(probe) {
        Ok(text) => text,
        Err(text) => return fail(text),
    };
    let guest = facts.guest_probe.as_ref().map(describe_guest);
    match guest {
        Some(Ok(booted)) => {
            if odd.no_sse3 {
                let mut parts = vec![booted];
                parts.extend(odd.notes);
                return Check::fail(
                    id,
                    format!(
                        "{}: current distributions need SSE3 and will not boot — {CONSEQUENCE}",
                        parts.join("; ")
                    ),
                    run_fix(cpu, facts),
                );
            }
            let mut parts = vec![booted, ioctl];
            parts.extend(odd.notes);
            Check::pass(id, parts.join("; "))
        }
        Some(Err((text, conclusive))) if conclusive || odd.condemning() => {
            fail(format!("{text}; {ioctl}, so /dev/kvm alone is misleading"))
        }
        Some(Err((text, _))) if facts.guest_probe.as_ref().is_some_and(not_installed) => {
            let mut parts = vec![ioctl, text];
            parts.extend(odd.notes);
            Check::pass(id, parts.join("; "))
        }
        Some(Err((text, _))) => Check::warn(
            id,
            format!("cannot tell whether KVM runs a standard guest: {text}; {ioctl}"),
            "re-run lab check when the machine is idle; test QEMU by hand: \
             qemu-system-x86_64 -accel kvm -display none -serial stdio",
        ),
        None => fail(ioctl),
    }
}

fn not_installed(g: &GuestProbe) -> bool {
    g.kvm.outcome == BootOutcome::NotInstalled
}

fn reload_cmd(module: &str) -> String {
    format!("sudo sh -c 'modprobe -r {module} && modprobe {module}'")
}

fn nested_off_fix(m: &KvmModule, host: &KvmHost) -> String {
    let name = &m.name;
    if m.builtin {
        return format!(
            "{name} is built into the kernel: add {name}.nested=1 to the kernel command line and reboot"
        );
    }
    if host.nested_conf_sets(name) {
        return format!(
            "{} already sets nested=1; reload the module with all VMs stopped: {}",
            kvm::NESTED_CONF,
            reload_cmd(name)
        );
    }
    format!(
        "echo '{}' | sudo tee {}\nthen, with all VMs stopped: {} (or run `lab check --fix`)",
        kvm::nested_conf_line(name),
        kvm::NESTED_CONF,
        reload_cmd(name)
    )
}

fn in_use(m: &KvmModule) -> String {
    match m.refcnt {
        Some(0) => format!("{} not in use", m.name),
        Some(n) => format!(
            "{} in use (refcnt {n}: running VMs or open /dev/kvm)",
            m.name
        ),
        None => format!("{} use count unknown", m.name),
    }
}

fn nested(cpu: Option<&CpuInfo>, facts: &KvmFacts) -> Check {
    let id = "kvm.nested";
    let host = &facts.host;
    let cpuid = facts.ioctl_probe.as_ref().and_then(|p| p.guest_cpuid);
    let offered = cpuid.map(|c| match (c.vmx, c.svm) {
        (true, _) => "KVM offers vmx to guests".to_string(),
        (_, true) => "KVM offers svm to guests".to_string(),
        _ => "KVM offers guests no vmx/svm, so they cannot run KVM themselves".to_string(),
    });
    let with_offer = |text: String| match &offered {
        Some(o) => format!("{text}; {o}"),
        None => text,
    };
    let Some(m) = host.vendor_module() else {
        let mut text = "nested unknown: neither kvm_intel nor kvm_amd is loaded".to_string();
        let module = module_for(cpu, host);
        let fix = if has_virt(cpu) {
            format!("sudo modprobe {module}, then re-run lab check")
        } else {
            text.push_str(" and none can be: the CPU shows no vmx/svm (see cpu.virt)");
            let others = host.other_providers();
            if !others.is_empty() {
                text.push_str(&format!("; /dev/kvm comes from {}", others.join(", ")));
            }
            format!(
                "fix cpu.virt first; then: echo '{}' | sudo tee {} && sudo modprobe {module}",
                kvm::nested_conf_line(vendor(cpu).kvm_module().unwrap_or("kvm_intel")),
                kvm::NESTED_CONF
            )
        };
        return Check::fail(id, with_offer(text), fix);
    };
    let raw = m.nested.as_deref().unwrap_or("(missing)");
    let setting = format!("{} nested={raw}", m.name);
    match m.nested_enabled {
        Some(true) => match cpuid {
            Some(c) if !c.offers_nesting() => Check::warn(
                id,
                with_offer(setting),
                format!(
                    "the module was loaded before nested=1 took effect: with all VMs stopped, {}",
                    reload_cmd(&m.name)
                ),
            ),
            _ => Check::pass(
                id,
                match &offered {
                    Some(_) => with_offer(setting),
                    None => format!("{setting}: VMs can run KVM inside them"),
                },
            ),
        },
        Some(false) => Check::fail(
            id,
            with_offer(format!(
                "{setting}: VMs cannot run KVM inside them; {}",
                in_use(m)
            )),
            nested_off_fix(m, host),
        ),
        None => Check::warn(
            id,
            with_offer(format!("{setting}: not a value lab understands (Y/N/1/0)")),
            nested_off_fix(m, host),
        ),
    }
}

/// `lab check --fix` with nested off: write the modprobe.d line under the sysroot, reload the
/// module only on the live machine with nothing using it. None when there is nothing to fix.
fn fix_nested(sysroot: &Sysroot, host: &KvmHost, live: bool) -> Option<Check> {
    let id = "kvm.nested";
    let m = host.vendor_module()?;
    if m.nested_enabled != Some(false) {
        return None;
    }
    let name = &m.name;
    let setting = format!("{name} nested={}", m.nested.as_deref().unwrap_or_default());
    if m.builtin {
        return Some(Check::fail(
            id,
            format!("{setting}: built into the kernel, a modprobe.d option cannot change it"),
            nested_off_fix(m, host),
        ));
    }
    let path = sysroot.path(kvm::NESTED_CONF);
    let wrote = if host.nested_conf_sets(name) {
        format!("{} already sets nested=1", path.display())
    } else {
        match kvm::write_nested_conf(sysroot, name) {
            Ok(p) => format!("wrote {}", p.display()),
            Err(e) => {
                return Some(Check::fail(
                    id,
                    format!("{setting}: could not write {}: {e}", path.display()),
                    nested_off_fix(m, host),
                ));
            }
        }
    };
    let later = format!("with all VMs stopped: {}", reload_cmd(name));
    let skipped = |why: String| {
        Check::warn(
            id,
            format!("{setting}: {wrote}; reload skipped: {why} — takes effect at next reload/boot"),
            later.clone(),
        )
    };
    if !live {
        return Some(skipped("not the live machine (--sysroot)".into()));
    }
    if m.refcnt != Some(0) {
        return Some(skipped(in_use(m)));
    }
    if let Err(e) = kvm::reload_module(name) {
        return Some(Check::fail(
            id,
            format!("{setting}: {wrote}; reloading {name} failed: {e}"),
            later,
        ));
    }
    let now = KvmHost::read(sysroot);
    let after = now.modules.iter().find(|x| &x.name == name);
    Some(match after.and_then(|x| x.nested_enabled) {
        Some(true) => Check::pass(
            id,
            format!(
                "{setting}: {wrote}; reloaded {name}; nested now {}",
                after.and_then(|x| x.nested.as_deref()).unwrap_or("on")
            ),
        ),
        _ => Check::fail(
            id,
            format!(
                "{setting}: {wrote}; reloaded {name} but nested is still {}",
                after
                    .and_then(|x| x.nested.as_deref())
                    .unwrap_or("unreadable")
            ),
            format!("check `modprobe -c | grep {name}` for a conflicting nested option"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::check::Status;
    use crate::host::kvm::{FirmwareProgress, GuestCpuid};

    fn fixture_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts")
            .join(name)
    }

    /// The checks of a fixture as `lab check --sysroot` computes them.
    fn sysroot_checks(name: &str) -> [Check; 4] {
        let root = Sysroot::at(&fixture_dir(name)).unwrap();
        let cpu = cpu::read(&root);
        let facts = gather(&root, false);
        assert!(facts.ioctl_probe.is_none() && facts.guest_probe.is_none());
        evaluate(cpu.as_ref(), &facts, false)
    }

    fn statuses(checks: &[Check]) -> Vec<(&str, Status)> {
        checks.iter().map(|c| (c.id.as_str(), c.status)).collect()
    }

    #[test]
    fn intel_nested_on() {
        let c = sysroot_checks("cpu-intel-nested-on");
        assert_eq!(
            statuses(&c),
            vec![
                ("cpu.virt", Status::Pass),
                ("kvm.device", Status::Pass),
                ("kvm.run", Status::Skip),
                ("kvm.nested", Status::Pass)
            ]
        );
        assert_eq!(
            c[0].summary,
            "11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz (GenuineIntel, 8 CPUs): vmx present"
        );
        assert_eq!(
            c[1].summary,
            "/dev/kvm present, provided by kvm_intel; opening it is only tried on the live machine"
        );
        assert_eq!(
            c[2].summary,
            "needs the live machine: not probed under --sysroot"
        );
        assert_eq!(
            c[3].summary,
            "kvm_intel nested=Y: VMs can run KVM inside them"
        );
        assert!(c.iter().all(|c| c.fix.is_none()));
    }

    #[test]
    fn intel_nested_off() {
        let c = sysroot_checks("cpu-intel-nested-off");
        assert_eq!(c[0].status, Status::Pass);
        assert_eq!(c[3].status, Status::Fail);
        assert_eq!(
            c[3].summary,
            "kvm_intel nested=N: VMs cannot run KVM inside them; kvm_intel not in use"
        );
        assert_eq!(
            c[3].fix.as_deref(),
            Some(
                "echo 'options kvm_intel nested=1' | sudo tee /etc/modprobe.d/lab-nested.conf\n\
                 then, with all VMs stopped: sudo sh -c 'modprobe -r kvm_intel && modprobe kvm_intel' \
                 (or run `lab check --fix`)"
            )
        );
    }

    #[test]
    fn amd_nested_on() {
        let c = sysroot_checks("cpu-amd-nested-on");
        assert_eq!(
            c[0].summary,
            "AMD Ryzen 7 PRO 5850U with Radeon Graphics (AuthenticAMD, 4 CPUs): svm present"
        );
        assert_eq!(c[3].status, Status::Pass);
        assert_eq!(
            c[3].summary,
            "kvm_amd nested=1: VMs can run KVM inside them"
        );
    }

    #[test]
    fn amd_nested_off_with_vms_running() {
        let c = sysroot_checks("cpu-amd-nested-off");
        assert_eq!(c[3].status, Status::Fail);
        assert_eq!(
            c[3].summary,
            "kvm_amd nested=0: VMs cannot run KVM inside them; \
             kvm_amd in use (refcnt 3: running VMs or open /dev/kvm)"
        );
        let fix = c[3].fix.as_deref().unwrap();
        assert!(
            fix.contains(
                "echo 'options kvm_amd nested=1' | sudo tee /etc/modprobe.d/lab-nested.conf"
            ),
            "{fix}"
        );
        assert!(
            fix.contains("modprobe -r kvm_amd && modprobe kvm_amd"),
            "{fix}"
        );
    }

    #[test]
    fn no_virt_laptop() {
        let c = sysroot_checks("cpu-no-virt");
        assert_eq!(
            statuses(&c),
            vec![
                ("cpu.virt", Status::Fail),
                ("kvm.device", Status::Fail),
                ("kvm.run", Status::Skip),
                ("kvm.nested", Status::Fail)
            ]
        );
        assert_eq!(
            c[0].summary,
            "Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz (GenuineIntel, 4 CPUs): no vmx or svm flag: \
             hardware virtualisation is off in the firmware or absent"
        );
        assert!(
            c[0].fix
                .as_deref()
                .unwrap()
                .starts_with("enable VT-x in the firmware (BIOS/UEFI) setup")
        );
        assert!(
            c[1].summary
                .starts_with("/dev/kvm missing: no hardware virtualisation")
        );
        assert!(c[1].summary.ends_with(CONSEQUENCE));
        assert!(
            c[1].fix
                .as_deref()
                .unwrap()
                .ends_with("then: sudo modprobe kvm_intel")
        );
        assert_eq!(
            c[3].summary,
            "nested unknown: neither kvm_intel nor kvm_amd is loaded and none can be: \
             the CPU shows no vmx/svm (see cpu.virt)"
        );
        assert!(
            c[3].fix
                .as_deref()
                .unwrap()
                .contains("options kvm_intel nested=1")
        );
    }

    #[test]
    fn a_kvm_pvm_host_under_a_sysroot() {
        let c = sysroot_checks("cpu-kvm-pvm");
        assert_eq!(
            statuses(&c),
            vec![
                ("cpu.virt", Status::Fail),
                ("kvm.device", Status::Pass),
                ("kvm.run", Status::Skip),
                ("kvm.nested", Status::Fail)
            ]
        );
        assert_eq!(
            c[0].summary,
            "AMD EPYC (AuthenticAMD, 2 CPUs): no vmx or svm flag: this machine is itself a VM \
             whose host does not pass hardware virtualisation on"
        );
        assert!(
            c[0].fix
                .as_deref()
                .unwrap()
                .starts_with("this machine is a VM: on its host, expose AMD-V (SVM)")
        );
        assert!(
            c[1].summary
                .starts_with("/dev/kvm present, provided by kvm_pvm (built in);")
        );
        assert_eq!(
            c[3].summary,
            "nested unknown: neither kvm_intel nor kvm_amd is loaded and none can be: \
             the CPU shows no vmx/svm (see cpu.virt); /dev/kvm comes from kvm_pvm"
        );
        assert!(
            c[3].fix
                .as_deref()
                .unwrap()
                .contains("options kvm_amd nested=1")
        );
    }

    // --- kvm.run on the live machine, judged from constructed probe results ---

    fn pvm_cpuid() -> GuestCpuid {
        GuestCpuid {
            vmx: false,
            svm: false,
            sse3: false,
            entries: 20,
        }
    }

    fn intel_cpuid() -> GuestCpuid {
        GuestCpuid {
            vmx: true,
            svm: false,
            sse3: true,
            entries: 50,
        }
    }

    fn ioctl(run: GuestRun, cpuid: GuestCpuid, nested_state: bool) -> IoctlProbe {
        IoctlProbe {
            api_version: Some(12),
            guest_cpuid: Some(cpuid),
            nested_state: Some(nested_state),
            run,
            run_ms: 0.4,
        }
    }

    fn halted() -> GuestRun {
        GuestRun::Halted {
            output: "L".into(),
            exits: vec!["io-out 0x3f8 [4c]".into(), "hlt".into()],
        }
    }

    fn boot(accel: &str, outcome: BootOutcome, ms: u64, last: &str) -> GuestBoot {
        GuestBoot {
            accel: accel.into(),
            outcome,
            elapsed_ms: ms,
            timeout_ms: 1000,
            firmware: Some(FirmwareProgress {
                banner: Some("SeaBIOS (version 1.16.2-debian-1.16.2-1)".into()),
                booted: outcome == BootOutcome::Booted,
                last_line: Some(last.into()),
                lines: 30,
            }),
            error: None,
        }
    }

    fn live_facts(
        fixture: &str,
        probe: IoctlProbe,
        guest: Option<GuestProbe>,
    ) -> (Option<CpuInfo>, KvmFacts) {
        let root = Sysroot::at(&fixture_dir(fixture)).unwrap();
        let facts = KvmFacts {
            host: KvmHost::read(&root),
            device_openable: Some(true),
            device_error: None,
            ioctl_probe: Some(probe),
            guest_probe: guest,
        };
        (cpu::read(&root), facts)
    }

    fn guest(kvm: GuestBoot, tcg: GuestBoot) -> Option<GuestProbe> {
        Some(GuestProbe {
            qemu: kvm::QEMU.into(),
            kvm,
            tcg,
        })
    }

    #[test]
    fn this_machine_kvm_pvm_stalls_a_standard_guest() {
        let (cpu, facts) = live_facts(
            "cpu-kvm-pvm",
            ioctl(halted(), pvm_cpuid(), false),
            guest(
                boot("kvm", BootOutcome::Stalled, 1003, "Scan for VGA option rom"),
                boot("tcg", BootOutcome::Booted, 104, "Booting from 0000:7c00"),
            ),
        );
        let c = evaluate(cpu.as_ref(), &facts, true);
        assert_eq!(c[2].status, Status::Fail);
        assert_eq!(
            c[2].summary,
            "a standard guest stalls under KVM: the firmware started but was not at the boot \
             sector after 1.00 s (last: \"Scan for VGA option rom\"); under TCG it booted in \
             0.10 s; the 4-instruction ioctl test guest did run (0.4 ms), so /dev/kvm alone is \
             misleading; /dev/kvm comes from kvm_pvm (no kvm_intel/kvm_amd); KVM offers guests \
             no vmx/svm, no SSE3; no KVM_CAP_NESTED_STATE — guests would run under TCG \
             emulation, tens of times slower, with no nested KVM inside them"
        );
        assert!(
            c[2].fix
                .as_deref()
                .unwrap()
                .starts_with("fix cpu.virt first")
        );
        assert_eq!(c[3].status, Status::Fail);
        assert!(
            c[3].summary
                .ends_with("; KVM offers guests no vmx/svm, so they cannot run KVM themselves"),
            "{}",
            c[3].summary
        );
    }

    #[test]
    fn a_healthy_intel_kvm_passes() {
        let (cpu, facts) = live_facts(
            "cpu-intel-nested-on",
            ioctl(halted(), intel_cpuid(), true),
            guest(
                boot("kvm", BootOutcome::Booted, 80, "Booting from 0000:7c00"),
                boot("tcg", BootOutcome::Booted, 110, "Booting from 0000:7c00"),
            ),
        );
        let c = evaluate(cpu.as_ref(), &facts, true);
        assert_eq!(
            c[1].summary,
            "/dev/kvm present, provided by kvm_intel, opens read-write"
        );
        assert_eq!(c[2].status, Status::Pass);
        assert_eq!(
            c[2].summary,
            "a standard guest (SeaBIOS, boot sector) booted under KVM in 0.08 s (TCG 0.11 s); \
             the 4-instruction ioctl test guest did run (0.4 ms)"
        );
        assert_eq!(c[3].status, Status::Pass);
        assert_eq!(c[3].summary, "kvm_intel nested=Y; KVM offers vmx to guests");
    }

    #[test]
    fn a_booting_guest_without_sse3_still_fails() {
        let mut cpuid = intel_cpuid();
        cpuid.sse3 = false;
        let (cpu, facts) = live_facts(
            "cpu-intel-nested-on",
            ioctl(halted(), cpuid, true),
            guest(
                boot("kvm", BootOutcome::Booted, 80, "Booting from 0000:7c00"),
                boot("tcg", BootOutcome::Booted, 110, "Booting from 0000:7c00"),
            ),
        );
        let c = evaluate(cpu.as_ref(), &facts, true);
        assert_eq!(c[2].status, Status::Fail);
        assert_eq!(
            c[2].summary,
            format!(
                "a standard guest (SeaBIOS, boot sector) booted under KVM in 0.08 s (TCG 0.11 s); \
                 KVM offers guests no SSE3: current distributions need SSE3 and will not boot \
                 — {CONSEQUENCE}"
            )
        );
        assert!(
            c[2].fix
                .as_deref()
                .unwrap()
                .starts_with("dmesg | grep -i kvm")
        );
    }

    #[test]
    fn another_provider_that_boots_the_guest_passes_with_a_note() {
        let (cpu, facts) = live_facts(
            "cpu-kvm-pvm",
            ioctl(halted(), intel_cpuid(), true),
            guest(
                boot("kvm", BootOutcome::Booted, 90, "Booting from 0000:7c00"),
                boot("tcg", BootOutcome::Booted, 110, "Booting from 0000:7c00"),
            ),
        );
        let c = evaluate(cpu.as_ref(), &facts, true);
        assert_eq!(c[2].status, Status::Pass);
        assert!(
            c[2].summary
                .ends_with("; /dev/kvm comes from kvm_pvm (no kvm_intel/kvm_amd)"),
            "{}",
            c[2].summary
        );
    }

    #[test]
    fn nested_on_without_vmx_offered_warns() {
        let mut cpuid = intel_cpuid();
        cpuid.vmx = false;
        let (cpu, facts) = live_facts(
            "cpu-intel-nested-on",
            ioctl(halted(), cpuid, true),
            guest(
                boot("kvm", BootOutcome::Booted, 80, "x"),
                boot("tcg", BootOutcome::Booted, 110, "x"),
            ),
        );
        let c = evaluate(cpu.as_ref(), &facts, true);
        assert_eq!(c[3].status, Status::Warn);
        assert!(
            c[3].fix
                .as_deref()
                .unwrap()
                .contains("modprobe -r kvm_intel && modprobe kvm_intel")
        );
    }

    #[test]
    fn a_hung_ioctl_guest_fails() {
        let (cpu, facts) = live_facts(
            "cpu-intel-nested-on",
            ioctl(GuestRun::Hung { after_ms: 2000 }, intel_cpuid(), true),
            None,
        );
        let c = evaluate(cpu.as_ref(), &facts, true);
        assert_eq!(c[2].status, Status::Fail);
        assert!(c[2].summary.starts_with("the ioctl test guest never exited (gave up after 2.00 s) — guests would run under TCG"), "{}", c[2].summary);
        assert!(
            c[2].fix
                .as_deref()
                .unwrap()
                .starts_with("dmesg | grep -i kvm")
        );
    }

    #[test]
    fn without_qemu_the_ioctl_probe_decides() {
        let not_installed = |accel: &str| GuestBoot {
            accel: accel.into(),
            outcome: BootOutcome::NotInstalled,
            elapsed_ms: 1,
            timeout_ms: 1000,
            firmware: None,
            error: None,
        };
        let (cpu, facts) = live_facts(
            "cpu-amd-nested-on",
            ioctl(
                halted(),
                GuestCpuid {
                    vmx: false,
                    svm: true,
                    sse3: true,
                    entries: 50,
                },
                true,
            ),
            guest(not_installed("kvm"), not_installed("tcg")),
        );
        let c = evaluate(cpu.as_ref(), &facts, true);
        assert_eq!(c[2].status, Status::Pass);
        assert_eq!(
            c[2].summary,
            "the 4-instruction ioctl test guest did run (0.4 ms); standard-guest probe not run: \
             qemu-system-x86_64 not installed"
        );
        // kvm_pvm without QEMU: the facts alone condemn it.
        let (cpu, facts) = live_facts(
            "cpu-kvm-pvm",
            ioctl(halted(), pvm_cpuid(), false),
            guest(not_installed("kvm"), not_installed("tcg")),
        );
        assert_eq!(evaluate(cpu.as_ref(), &facts, true)[2].status, Status::Fail);
    }

    #[test]
    fn both_accelerators_stalling_is_inconclusive_on_a_standard_kvm() {
        let (cpu, facts) = live_facts(
            "cpu-intel-nested-on",
            ioctl(halted(), intel_cpuid(), true),
            guest(
                boot("kvm", BootOutcome::Stalled, 1000, "PCI: init"),
                boot("tcg", BootOutcome::Stalled, 1200, "PCI: init"),
            ),
        );
        let c = evaluate(cpu.as_ref(), &facts, true);
        assert_eq!(c[2].status, Status::Warn);
        assert!(
            c[2].summary
                .starts_with("cannot tell whether KVM runs a standard guest")
        );
        assert!(c[2].fix.is_some());
    }

    #[test]
    fn an_unopenable_device_names_the_group() {
        let root = Sysroot::at(&fixture_dir("cpu-intel-nested-on")).unwrap();
        let facts = KvmFacts {
            host: KvmHost::read(&root),
            device_openable: Some(false),
            device_error: Some(kvm::DeviceError {
                error: "Permission denied (os error 13)".into(),
                permission_denied: true,
                group: Some("kvm".into()),
            }),
            ioctl_probe: None,
            guest_probe: None,
        };
        let c = evaluate(cpu::read(&root).as_ref(), &facts, true);
        assert_eq!(c[1].status, Status::Fail);
        assert_eq!(
            c[1].fix.as_deref(),
            Some("sudo usermod -aG kvm $USER, then log out and in again (or run lab as root)")
        );
        assert_eq!(c[2].status, Status::Skip);
    }

    // --- --fix ---

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let dest = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_tree(&entry.path(), &dest);
            } else {
                std::fs::copy(entry.path(), dest).unwrap();
            }
        }
    }

    fn fixture_copy(name: &str) -> (tempfile::TempDir, Sysroot) {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixture_dir(name), dir.path());
        let root = Sysroot::at(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn fix_under_a_sysroot_writes_the_conf_and_never_reloads() {
        let (_dir, root) = fixture_copy("cpu-intel-nested-off");
        let host = KvmHost::read(&root);
        let c = fix_nested(&root, &host, false).unwrap();
        let conf = root.path(kvm::NESTED_CONF);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.summary,
            format!(
                "kvm_intel nested=N: wrote {}; reload skipped: not the live machine (--sysroot) \
                 — takes effect at next reload/boot",
                conf.display()
            )
        );
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            kvm::nested_conf_content("kvm_intel")
        );
        // A second run sees its own file and does not write again.
        let host = KvmHost::read(&root);
        let again = fix_nested(&root, &host, false).unwrap();
        assert!(
            again.summary.contains("already sets nested=1"),
            "{}",
            again.summary
        );
        // Without --fix, the check now only asks for the reload.
        let facts = gather(&root, false);
        let c = evaluate(cpu::read(&root).as_ref(), &facts, false);
        assert_eq!(
            c[3].fix.as_deref(),
            Some(
                "/etc/modprobe.d/lab-nested.conf already sets nested=1; reload the module with \
                 all VMs stopped: sudo sh -c 'modprobe -r kvm_intel && modprobe kvm_intel'"
            )
        );
    }

    #[test]
    fn fix_on_a_live_machine_with_vms_running_skips_the_reload() {
        // `live` is forced on, but refcnt 3 stops before any modprobe could run.
        let (_dir, root) = fixture_copy("cpu-amd-nested-off");
        let host = KvmHost::read(&root);
        let c = fix_nested(&root, &host, true).unwrap();
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.summary.ends_with(
                "reload skipped: kvm_amd in use (refcnt 3: running VMs or open /dev/kvm) \
                 — takes effect at next reload/boot"
            ),
            "{}",
            c.summary
        );
        assert_eq!(
            c.fix.as_deref(),
            Some("with all VMs stopped: sudo sh -c 'modprobe -r kvm_amd && modprobe kvm_amd'")
        );
        assert!(
            std::fs::read_to_string(root.path(kvm::NESTED_CONF))
                .unwrap()
                .contains("options kvm_amd nested=1\n")
        );
    }

    #[test]
    fn nothing_to_fix_when_nested_is_on_or_unknown() {
        for name in ["cpu-intel-nested-on", "cpu-kvm-pvm", "cpu-no-virt"] {
            let (_dir, root) = fixture_copy(name);
            let host = KvmHost::read(&root);
            assert_eq!(fix_nested(&root, &host, false), None, "{name}");
            assert!(!root.exists(kvm::NESTED_CONF), "{name}");
        }
    }
}
