//! KVM on the host: which module provides `/dev/kvm`, whether nested virtualisation is on,
//! and two live probes that tell a KVM able to run real guests from one that only looks so.
//!
//! `/dev/kvm` existing proves little: a paravirtual KVM (`kvm_pvm`) runs a tiny guest driven
//! through the ioctls perfectly well while a standard guest (firmware, then boot loader)
//! crawls or hangs. So the probes are layered: the ioctl probe (does KVM run code at all, and
//! what CPUID does it offer guests) and the standard-guest probe (does QEMU's firmware reach
//! a boot sector under KVM in the time it takes under TCG emulation).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VcpuExit};
use serde::Serialize;

use super::Sysroot;
use crate::runner::{Cmd, ProcessError, Running};

/// The modules that drive hardware virtualisation, the only ones with a `nested` knob.
pub const VENDOR_MODULES: [&str; 2] = ["kvm_intel", "kvm_amd"];

/// The modprobe.d file `lab check --fix` owns.
pub const NESTED_CONF: &str = "/etc/modprobe.d/lab-nested.conf";

// ---------------------------------------------------------------------------------------------
// File-based facts
// ---------------------------------------------------------------------------------------------

/// One line of `/proc/modules`: `name size refcnt used_by state address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLine {
    pub name: String,
    /// None when the kernel cannot unload modules and prints `-`.
    pub refcnt: Option<u32>,
    pub used_by: Vec<String>,
}

pub fn parse_modules(text: &str) -> Vec<ModuleLine> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_string();
            let _size = words.next()?;
            let refcnt = words.next().and_then(|w| w.parse().ok());
            let used_by = match words.next() {
                Some("-") | None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            };
            Some(ModuleLine {
                name,
                refcnt,
                used_by,
            })
        })
        .collect()
}

/// The `nested` parameter: kvm_intel prints `Y`/`N`, kvm_amd `1`/`0`.
pub fn parse_nested(raw: &str) -> Option<bool> {
    match raw.trim() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// A module whose name starts with `kvm_`: a provider of `/dev/kvm` (kvm_intel, kvm_amd,
/// or something else such as kvm_pvm).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmModule {
    pub name: String,
    /// Built into the kernel: it has no refcnt and cannot be reloaded.
    pub builtin: bool,
    /// Users of the module (for kvm_intel/kvm_amd: open `/dev/kvm` files and VMs).
    pub refcnt: Option<u32>,
    /// The raw `nested` parameter, for kvm_intel and kvm_amd.
    pub nested: Option<String>,
    pub nested_enabled: Option<bool>,
}

impl KvmModule {
    pub fn is_vendor(&self) -> bool {
        VENDOR_MODULES.contains(&self.name.as_str())
    }
}

/// What the files under the sysroot say about KVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmHost {
    /// `/dev/kvm` exists.
    pub device: bool,
    /// Every `kvm_*` module found in `/proc/modules` or `/sys/module`.
    pub modules: Vec<KvmModule>,
    /// `/proc/modules` exists (a kernel without module support has none).
    pub modules_listed: bool,
    /// `/etc/modprobe.d/lab-nested.conf`, when present.
    pub nested_conf: Option<String>,
}

impl KvmHost {
    pub fn read(sysroot: &Sysroot) -> Self {
        let listed = sysroot.read_opt("/proc/modules").map(|t| parse_modules(&t));
        let mut names: BTreeSet<String> = BTreeSet::new();
        for m in listed.iter().flatten() {
            names.insert(m.name.clone());
        }
        if let Ok(dir) = fs::read_dir(sysroot.path("/sys/module")) {
            for entry in dir.flatten() {
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let modules = names
            .into_iter()
            .filter(|n| n.starts_with("kvm_"))
            .map(|name| {
                let line = listed.iter().flatten().find(|m| m.name == name);
                let sys = format!("/sys/module/{name}");
                // A loadable module has `initstate` and `refcnt`; a built-in one only
                // `parameters`.
                let builtin = line.is_none() && !sysroot.exists(format!("{sys}/initstate"));
                let refcnt = sysroot
                    .read_attr(format!("{sys}/refcnt"))
                    .and_then(|r| r.parse().ok())
                    .or(line.and_then(|l| l.refcnt));
                let nested = if VENDOR_MODULES.contains(&name.as_str()) {
                    sysroot.read_attr(format!("{sys}/parameters/nested"))
                } else {
                    None
                };
                KvmModule {
                    nested_enabled: nested.as_deref().and_then(parse_nested),
                    name,
                    builtin,
                    refcnt,
                    nested,
                }
            })
            .collect();
        KvmHost {
            device: sysroot.exists("/dev/kvm"),
            modules,
            modules_listed: listed.is_some(),
            nested_conf: sysroot.read_opt(NESTED_CONF),
        }
    }

    /// kvm_intel or kvm_amd, when loaded.
    pub fn vendor_module(&self) -> Option<&KvmModule> {
        self.modules.iter().find(|m| m.is_vendor())
    }

    /// Providers of `/dev/kvm` that are neither kvm_intel nor kvm_amd (e.g. kvm_pvm).
    pub fn other_providers(&self) -> Vec<&str> {
        self.modules
            .iter()
            .filter(|m| !m.is_vendor())
            .map(|m| m.name.as_str())
            .collect()
    }

    /// True when the lab's modprobe.d file already asks for nested on `module`.
    pub fn nested_conf_sets(&self, module: &str) -> bool {
        self.nested_conf.as_deref().is_some_and(|text| {
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == nested_conf_words(module))
        })
    }
}

fn nested_conf_words(module: &str) -> [&str; 3] {
    ["options", module, "nested=1"]
}

/// The modprobe.d line that turns nested virtualisation on.
pub fn nested_conf_line(module: &str) -> String {
    nested_conf_words(module).join(" ")
}

/// The whole content lab writes to [`NESTED_CONF`].
pub fn nested_conf_content(module: &str) -> String {
    format!(
        "# Written by `lab check --fix`: let the lab's VMs run KVM themselves.\n{}\n",
        nested_conf_line(module)
    )
}

/// Write [`NESTED_CONF`] under the sysroot; returns the path written.
pub fn write_nested_conf(sysroot: &Sysroot, module: &str) -> io::Result<PathBuf> {
    let path = sysroot.path(NESTED_CONF);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&path, nested_conf_content(module))?;
    Ok(path)
}

/// Unload and load `module` again so a new modprobe.d option takes effect (live only; the
/// caller makes sure no VM is running).
pub fn reload_module(module: &str) -> Result<(), ProcessError> {
    let limit = Duration::from_secs(20);
    Cmd::new("modprobe")
        .args(["-r", module])
        .timeout(limit)
        .run()?;
    Cmd::new("modprobe").arg(module).timeout(limit).run()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// /dev/kvm access
// ---------------------------------------------------------------------------------------------

/// Why `/dev/kvm` could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceError {
    pub error: String,
    pub permission_denied: bool,
    /// The group owning `/dev/kvm`, which a user must be in.
    pub group: Option<String>,
}

/// Open the live `/dev/kvm` read-write, as QEMU does.
pub fn open_device() -> Result<(), DeviceError> {
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(DeviceError {
            error: e.to_string(),
            permission_denied: e.kind() == io::ErrorKind::PermissionDenied,
            group: device_group(&Sysroot::live()),
        }),
    }
}

fn device_group(sysroot: &Sysroot) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let gid = fs::metadata(sysroot.path("/dev/kvm")).ok()?.gid();
    group_name(&sysroot.read_opt("/etc/group")?, gid)
}

/// The name of group `gid` in `/etc/group` text.
pub fn group_name(etc_group: &str, gid: u32) -> Option<String> {
    etc_group.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == gid).then(|| name.to_string())
    })
}

// ---------------------------------------------------------------------------------------------
// The ioctl probe: a four-instruction real-mode guest
// ---------------------------------------------------------------------------------------------

/// What KVM's supported CPUID (`KVM_GET_SUPPORTED_CPUID`) offers guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuestCpuid {
    /// Leaf 1 ECX bit 5: a guest can run Intel VT-x itself (nested on Intel).
    pub vmx: bool,
    /// Leaf 0x8000_0001 ECX bit 2: a guest can run AMD-V itself (nested on AMD).
    pub svm: bool,
    /// Leaf 1 ECX bit 0 (SSE3, `pni`): every x86-64 distribution of the last decade needs it.
    pub sse3: bool,
    pub entries: usize,
}

impl GuestCpuid {
    pub fn offers_nesting(&self) -> bool {
        self.vmx || self.svm
    }
}

pub fn guest_cpuid(entries: &[kvm_cpuid_entry2]) -> GuestCpuid {
    let ecx = |function: u32| {
        entries
            .iter()
            .find(|e| e.function == function && e.index == 0)
            .map_or(0, |e| e.ecx)
    };
    GuestCpuid {
        vmx: ecx(1) & (1 << 5) != 0,
        svm: ecx(0x8000_0001) & (1 << 2) != 0,
        sse3: ecx(1) & 1 != 0,
        entries: entries.len(),
    }
}

/// How the test guest ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum GuestRun {
    /// The planned exits, in order: the byte written to the serial port, then `hlt`.
    Halted { output: String, exits: Vec<String> },
    /// KVM ran the guest but it left through exits other than the planned ones.
    Unexpected { exits: Vec<String> },
    /// No exit within the time limit; the vCPU thread was interrupted with a signal.
    Hung { after_ms: u64 },
    /// An ioctl failed.
    Failed { step: String, error: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IoctlProbe {
    pub api_version: Option<i32>,
    pub guest_cpuid: Option<GuestCpuid>,
    /// `KVM_CAP_NESTED_STATE`: KVM can save and restore a guest that itself runs guests.
    pub nested_state: Option<bool>,
    pub run: GuestRun,
    /// From creating the VM to the guest's `hlt` (or the give-up).
    pub run_ms: f64,
}

/// Serial port 0x3f8 gets `'K' + 1`, then the vCPU halts: it must really have executed.
///   mov dx, 0x3f8 ; mov al, 'K' ; inc al ; out dx, al ; hlt
pub const TEST_GUEST: &[u8] = &[0xba, 0xf8, 0x03, 0xb0, b'K', 0xfe, 0xc0, 0xee, 0xf4];
const TEST_GUEST_ADDR: u64 = 0x1000;
const TEST_PORT: u16 = 0x3f8;

/// Open `/dev/kvm`, read what it offers guests, and run [`TEST_GUEST`] with a time limit.
pub fn probe_ioctl(timeout: Duration) -> IoctlProbe {
    let failed = |step: &str, error: String| IoctlProbe {
        api_version: None,
        guest_cpuid: None,
        nested_state: None,
        run: GuestRun::Failed {
            step: step.into(),
            error,
        },
        run_ms: 0.0,
    };
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => return failed("opening /dev/kvm", e.to_string()),
    };
    let api_version = Some(kvm.get_api_version());
    let guest_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .ok()
        .map(|c| guest_cpuid(c.as_slice()));
    let nested_state = Some(kvm.check_extension(Cap::NestedState));
    let started = Instant::now();
    let run = run_guest(kvm, TEST_GUEST, timeout);
    IoctlProbe {
        api_version,
        guest_cpuid,
        nested_state,
        run,
        run_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Run `code` in real mode at 0x1000 on a fresh VM, in a thread of its own so a guest that
/// never exits cannot hang lab: past `timeout` the thread is signalled out of `KVM_RUN`.
pub fn run_guest(kvm: Kvm, code: &'static [u8], timeout: Duration) -> GuestRun {
    let (tx, rx) = mpsc::channel();
    let worker = thread::Builder::new()
        .name("lab-kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(run_guest_here(&kvm, code));
        });
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            return GuestRun::Failed {
                step: "starting the vCPU thread".into(),
                error: e.to_string(),
            };
        }
    };
    let started = Instant::now();
    if let Ok(run) = rx.recv_timeout(timeout) {
        let _ = worker.join();
        return run;
    }
    // Kick the vCPU out of KVM_RUN: a pending signal makes it return EINTR. The signal may
    // land before the thread enters KVM_RUN, so repeat it for a while.
    let after_ms = started.elapsed().as_millis() as u64;
    for _ in 0..20 {
        interrupt(&worker);
        if rx.recv_timeout(Duration::from_millis(25)).is_ok() {
            let _ = worker.join();
            return GuestRun::Hung { after_ms };
        }
    }
    // Still inside the kernel: leave the thread behind rather than hang lab.
    GuestRun::Hung { after_ms }
}

fn interrupt(worker: &thread::JoinHandle<()>) {
    extern "C" fn ignore(_: libc::c_int) {}
    let signal = kick_signal();
    // SAFETY: installs a handler that does nothing (async-signal-safe), without SA_RESTART
    // so the interrupted ioctl returns EINTR; the thread handle is alive (not yet joined).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
        libc::pthread_kill(worker.as_pthread_t(), signal);
    }
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// One page of anonymous memory, unmapped on drop.
struct GuestPage {
    addr: *mut libc::c_void,
    len: usize,
}

impl GuestPage {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(GuestPage { addr, len })
    }

    fn write(&mut self, bytes: &[u8]) {
        assert!(bytes.len() <= self.len);
        // SAFETY: the mapping is `len` bytes long and writable.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.addr.cast(), bytes.len()) }
    }
}

impl Drop for GuestPage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

fn run_guest_here(kvm: &Kvm, code: &[u8]) -> GuestRun {
    let fail = |step: &str| {
        let step = step.to_string();
        move |e: kvm_ioctls::Error| GuestRun::Failed {
            step,
            error: e.to_string(),
        }
    };
    let mut page = match GuestPage::new(0x1000) {
        Ok(p) => p,
        Err(e) => {
            return GuestRun::Failed {
                step: "mapping guest memory".into(),
                error: e.to_string(),
            };
        }
    };
    page.write(code);
    // Declared after `page`, so the VM is gone before its memory is unmapped.
    let vm = match kvm.create_vm().map_err(fail("KVM_CREATE_VM")) {
        Ok(vm) => vm,
        Err(f) => return f,
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: TEST_GUEST_ADDR,
        memory_size: page.len as u64,
        userspace_addr: page.addr as u64,
    };
    // SAFETY: the region is a live mapping that outlives the VM (see declaration order).
    if let Err(f) =
        unsafe { vm.set_user_memory_region(region) }.map_err(fail("KVM_SET_USER_MEMORY_REGION"))
    {
        return f;
    }
    let mut vcpu = match vm.create_vcpu(0).map_err(fail("KVM_CREATE_VCPU")) {
        Ok(v) => v,
        Err(f) => return f,
    };
    let setup = (|| {
        let mut sregs = vcpu.get_sregs().map_err(fail("KVM_GET_SREGS"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).map_err(fail("KVM_SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: TEST_GUEST_ADDR,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(fail("KVM_SET_REGS"))
    })();
    if let Err(f) = setup {
        return f;
    }
    let mut exits = Vec::new();
    let mut output = String::new();
    for _ in 0..8 {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                exits.push(format!("io-out {port:#x} {data:02x?}"));
                if port == TEST_PORT {
                    output.extend(data.iter().map(|&b| b as char));
                }
            }
            Ok(VcpuExit::Hlt) => {
                exits.push("hlt".into());
                let planned = exits.len() == 2 && output == "L";
                return if planned {
                    GuestRun::Halted { output, exits }
                } else {
                    GuestRun::Unexpected { exits }
                };
            }
            Ok(other) => exits.push(format!("{other:?}")),
            Err(e) => return fail("KVM_RUN")(e),
        }
    }
    GuestRun::Unexpected { exits }
}

// ---------------------------------------------------------------------------------------------
// The standard-guest probe: QEMU, SeaBIOS, a boot sector
// ---------------------------------------------------------------------------------------------

/// What the boot sector writes to the debug console once the firmware has handed over.
pub const BOOT_MARKER: &str = "LAB-BOOT-OK";
const DEBUGCON_PORT: u16 = 0x402;
const EXIT_PORT: u16 = 0xf4;
/// QEMU's `isa-debug-exit` turns a write of V into the exit status `(V << 1) | 1`.
const EXIT_VALUE: u8 = 0x10;
pub const BOOTED_EXIT_STATUS: i32 = ((EXIT_VALUE as i32) << 1) | 1;

/// A 512-byte MBR boot sector: prints [`BOOT_MARKER`] to the debug console and makes QEMU
/// exit through `isa-debug-exit`, so a guest that boots costs no time-out.
pub fn boot_sector() -> [u8; 512] {
    let [dbg_lo, dbg_hi] = DEBUGCON_PORT.to_le_bytes();
    let [exit_lo, exit_hi] = EXIT_PORT.to_le_bytes();
    #[rustfmt::skip]
    let mut code: Vec<u8> = vec![
        0xfa,                   // cli
        0xfc,                   // cld
        0x31, 0xc0,             // xor ax, ax
        0x8e, 0xd8,             // mov ds, ax
        0xbe, 0x00, 0x00,       // mov si, message (patched below)
        0xba, dbg_lo, dbg_hi,   // mov dx, debugcon
        0xac,                   // next: lodsb
        0x84, 0xc0,             // test al, al
        0x74, 0x03,             // jz done
        0xee,                   // out dx, al
        0xeb, 0xf8,             // jmp next
        0xba, exit_lo, exit_hi, // done: mov dx, exit port
        0xb0, EXIT_VALUE,       // mov al, value
        0xee,                   // out dx, al
        0xf4,                   // halt: hlt
        0xeb, 0xfd,             // jmp halt
    ];
    let message_addr = 0x7c00u16 + code.len() as u16;
    code[7..9].copy_from_slice(&message_addr.to_le_bytes());
    code.extend_from_slice(BOOT_MARKER.as_bytes());
    code.extend_from_slice(b"\n\0");
    let mut sector = [0u8; 512];
    sector[..code.len()].copy_from_slice(&code);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}

/// How far the firmware got, from what it printed on the debug console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirmwareProgress {
    /// The firmware's banner (SeaBIOS prints `SeaBIOS (version ...)` first).
    pub banner: Option<String>,
    pub booted: bool,
    /// The last line the firmware printed before the boot sector (or before it was killed).
    pub last_line: Option<String>,
    pub lines: usize,
}

pub fn parse_debugcon(text: &str) -> FirmwareProgress {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let booted = lines.iter().any(|l| l.contains(BOOT_MARKER));
    let firmware: Vec<&str> = lines
        .iter()
        .copied()
        .take_while(|l| !l.contains(BOOT_MARKER))
        .collect();
    FirmwareProgress {
        banner: firmware
            .iter()
            .find(|l| l.contains("SeaBIOS") || l.contains("BIOS"))
            .map(|l| l.trim().to_string()),
        booted,
        last_line: firmware.last().map(|l| l.trim().to_string()),
        lines: firmware.len(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootOutcome {
    /// The boot sector ran.
    Booted,
    /// Still not at the boot sector when the time limit killed QEMU.
    Stalled,
    /// QEMU exited without booting (e.g. it could not initialise KVM).
    Failed,
    /// No qemu-system-x86_64 in PATH.
    NotInstalled,
}

/// One QEMU boot of the standard guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestBoot {
    pub accel: String,
    pub outcome: BootOutcome,
    pub elapsed_ms: u64,
    pub timeout_ms: u64,
    pub firmware: Option<FirmwareProgress>,
    /// QEMU's complaint when it failed.
    pub error: Option<String>,
}

/// The standard guest under KVM, and under TCG as the reference that proves QEMU, the
/// firmware and the boot sector are fine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestProbe {
    pub qemu: String,
    pub kvm: GuestBoot,
    pub tcg: GuestBoot,
}

pub const QEMU: &str = "qemu-system-x86_64";

/// Boot the standard guest under KVM and TCG at once. TCG is the yardstick: a sound KVM
/// boots faster than emulation, so the KVM boot gets until the TCG boot is done plus a
/// margin (never more than `kvm_timeout`). A sound host thus never waits for a time-out,
/// and a bad one is told in about the time emulation takes.
pub fn probe_standard_guest(kvm_timeout: Duration, tcg_timeout: Duration) -> GuestProbe {
    let failed = |accel: &str, timeout: Duration, e: String| GuestBoot {
        accel: accel.into(),
        outcome: BootOutcome::Failed,
        elapsed_ms: 0,
        timeout_ms: timeout.as_millis() as u64,
        firmware: None,
        error: Some(e),
    };
    let scratch = match scratch_dir() {
        Ok(s) => s,
        Err(e) => {
            let e = format!("creating a scratch directory: {e}");
            return GuestProbe {
                qemu: QEMU.into(),
                kvm: failed("kvm", kvm_timeout, e.clone()),
                tcg: failed("tcg", tcg_timeout, e),
            };
        }
    };
    let dir = scratch.path();
    let kvm = start_standard_guest(dir, "kvm");
    let tcg = start_standard_guest(dir, "tcg");
    let tcg = match tcg {
        Ok(run) => {
            let started = run.started();
            finish_standard_guest(dir, "tcg", run, started + tcg_timeout, tcg_timeout)
        }
        Err(boot) => *boot,
    };
    let kvm = match kvm {
        Ok(run) => {
            let started = run.started();
            let cap = started + kvm_timeout;
            let deadline = if tcg.outcome == BootOutcome::Booted {
                let yardstick = Duration::from_millis(tcg.elapsed_ms * 5 / 4) + KVM_MARGIN;
                (started + yardstick).min(cap)
            } else {
                cap
            };
            let allowed = deadline.saturating_duration_since(started);
            finish_standard_guest(dir, "kvm", run, deadline, allowed)
        }
        Err(boot) => *boot,
    };
    GuestProbe {
        qemu: QEMU.into(),
        kvm,
        tcg,
    }
}

/// Slack over the emulated boot time (plus a quarter) before KVM is called slower than
/// emulation. A sound KVM has the same QEMU start-up cost as TCG and runs the firmware
/// natively, so it is done well before the emulated boot.
const KVM_MARGIN: Duration = Duration::from_millis(100);

/// The QEMU command line of one boot: no display, no default devices, the boot sector as
/// the only disk, the firmware's debug console in a file.
pub fn qemu_cmd(accel: &str, disk: &Path, debugcon: &Path) -> Cmd {
    Cmd::new(QEMU).args([
        "-accel".into(),
        accel.to_string(),
        "-machine".into(),
        "pc".into(),
        "-smp".into(),
        "1".into(),
        "-m".into(),
        "32".into(),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
        "-debugcon".into(),
        format!("file:{}", debugcon.display()),
        "-global".into(),
        format!("isa-debugcon.iobase={DEBUGCON_PORT:#x}"),
        "-device".into(),
        format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x04"),
        "-drive".into(),
        format!("file={},format=raw,if=ide,index=0", disk.display()),
    ])
}

fn start_standard_guest(dir: &Path, accel: &str) -> Result<Running, Box<GuestBoot>> {
    let disk = dir.join(format!("{accel}.img"));
    let debugcon = dir.join(format!("{accel}.debugcon"));
    let fail = |outcome: BootOutcome, error: Option<String>| {
        Box::new(GuestBoot {
            accel: accel.into(),
            outcome,
            elapsed_ms: 0,
            timeout_ms: 0,
            firmware: None,
            error,
        })
    };
    if let Err(e) = fs::write(&disk, boot_sector()) {
        return Err(fail(
            BootOutcome::Failed,
            Some(format!("writing {}: {e}", disk.display())),
        ));
    }
    qemu_cmd(accel, &disk, &debugcon).start().map_err(|e| {
        if e.is_not_found() {
            fail(BootOutcome::NotInstalled, None)
        } else {
            fail(BootOutcome::Failed, Some(e.to_string()))
        }
    })
}

fn finish_standard_guest(
    dir: &Path,
    accel: &str,
    run: Running,
    deadline: Instant,
    allowed: Duration,
) -> GuestBoot {
    let debugcon = dir.join(format!("{accel}.debugcon"));
    let started = run.started();
    let result = run.wait_until(deadline);
    let mut boot = GuestBoot {
        accel: accel.into(),
        outcome: BootOutcome::Failed,
        elapsed_ms: started.elapsed().as_millis() as u64,
        timeout_ms: allowed.as_millis() as u64,
        firmware: None,
        error: None,
    };
    let progress = fs::read_to_string(&debugcon)
        .ok()
        .map(|t| parse_debugcon(&t));
    let booted = progress.as_ref().is_some_and(|p| p.booted);
    boot.firmware = progress;
    match result {
        Ok(_) if booted => boot.outcome = BootOutcome::Booted,
        Ok(out) => {
            boot.error = Some(match out.stderr.trim() {
                "" => format!("exited with {:?} before booting", out.code),
                err => err.lines().last().unwrap_or(err).to_string(),
            });
        }
        Err(ProcessError::TimedOut { .. }) => {
            boot.outcome = if booted {
                BootOutcome::Booted
            } else {
                BootOutcome::Stalled
            }
        }
        Err(e) if e.is_not_found() => boot.outcome = BootOutcome::NotInstalled,
        Err(e) => boot.error = Some(e.to_string()),
    }
    boot
}

/// A private directory under the system temp dir, removed on drop.
fn scratch_dir() -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("lab-kvm-probe-").tempdir()
}

// ---------------------------------------------------------------------------------------------

/// Everything lab learned about KVM, as reported under `facts.kvm`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvmFacts {
    #[serde(flatten)]
    pub host: KvmHost,
    /// Live only: whether `/dev/kvm` opened read-write.
    pub device_openable: Option<bool>,
    pub device_error: Option<DeviceError>,
    pub ioctl_probe: Option<IoctlProbe>,
    pub guest_probe: Option<GuestProbe>,
}

/// Whether guests get KVM, from the same probes as `lab check`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvmVerdict {
    /// KVM really runs a standard guest.
    pub usable: bool,
    /// The KVM module's `nested` option is on and guests are offered vmx/svm.
    pub nested: bool,
    /// One line saying why, from the checks.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Sysroot {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts")
            .join(name);
        Sysroot::at(&dir).unwrap()
    }

    #[test]
    fn proc_modules_lines() {
        let text = "kvm_intel 413696 2 - Live 0x0000000000000000\n\
                    kvm 1372160 1 kvm_intel, Live 0x0000000000000000\n\
                    cfg80211 1331200 3 iwlmvm,mac80211,iwlwifi, Live 0x0000000000000000\n\
                    odd 4096 - - Live 0x0\n";
        let mods = parse_modules(text);
        assert_eq!(mods.len(), 4);
        assert_eq!(
            mods[0],
            ModuleLine {
                name: "kvm_intel".into(),
                refcnt: Some(2),
                used_by: vec![]
            }
        );
        assert_eq!(mods[1].used_by, vec!["kvm_intel"]);
        assert_eq!(mods[2].used_by, vec!["iwlmvm", "mac80211", "iwlwifi"]);
        assert_eq!(mods[3].refcnt, None);
    }

    #[test]
    fn nested_values_of_both_vendors() {
        assert_eq!(parse_nested("Y\n"), Some(true));
        assert_eq!(parse_nested("1"), Some(true));
        assert_eq!(parse_nested("N"), Some(false));
        assert_eq!(parse_nested("0\n"), Some(false));
        assert_eq!(parse_nested("maybe"), None);
    }

    #[test]
    fn intel_fixture_with_a_vm_running() {
        let host = KvmHost::read(&fixture("cpu-intel-nested-on"));
        assert!(host.device);
        assert!(host.modules_listed);
        assert_eq!(
            host.modules,
            vec![KvmModule {
                name: "kvm_intel".into(),
                builtin: false,
                refcnt: Some(2),
                nested: Some("Y".into()),
                nested_enabled: Some(true),
            }]
        );
        assert!(host.other_providers().is_empty());
        assert_eq!(host.vendor_module().unwrap().name, "kvm_intel");
    }

    #[test]
    fn amd_fixture_nested_off() {
        let host = KvmHost::read(&fixture("cpu-amd-nested-off"));
        let m = host.vendor_module().unwrap();
        assert_eq!(m.name, "kvm_amd");
        assert_eq!(m.nested.as_deref(), Some("0"));
        assert_eq!(m.nested_enabled, Some(false));
        assert_eq!(m.refcnt, Some(3));
        assert!(!host.nested_conf_sets("kvm_amd"));
    }

    #[test]
    fn this_machine_has_only_a_builtin_kvm_pvm() {
        let host = KvmHost::read(&fixture("cpu-kvm-pvm"));
        assert!(host.device);
        assert!(!host.modules_listed);
        assert_eq!(host.vendor_module(), None);
        assert_eq!(host.other_providers(), vec!["kvm_pvm"]);
        let pvm = &host.modules[0];
        assert!(pvm.builtin);
        assert_eq!(pvm.refcnt, None);
        assert_eq!(pvm.nested, None);
    }

    #[test]
    fn no_virt_fixture_has_no_kvm_at_all() {
        let host = KvmHost::read(&fixture("cpu-no-virt"));
        assert!(!host.device);
        assert!(host.modules.is_empty());
    }

    #[test]
    fn the_nested_conf_is_written_and_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let root = Sysroot::at(dir.path()).unwrap();
        let path = write_nested_conf(&root, "kvm_intel").unwrap();
        assert_eq!(path, root.path(NESTED_CONF));
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().any(|l| l == "options kvm_intel nested=1"),
            "{text}"
        );
        let host = KvmHost::read(&root);
        assert!(host.nested_conf_sets("kvm_intel"));
        assert!(!host.nested_conf_sets("kvm_amd"));
    }

    #[test]
    fn group_of_dev_kvm() {
        let etc_group = "root:x:0:\nkvm:x:993:alice,bob\nlibvirt:x:994:\n";
        assert_eq!(group_name(etc_group, 993).as_deref(), Some("kvm"));
        assert_eq!(group_name(etc_group, 5), None);
    }

    fn entry(function: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ecx,
            ..Default::default()
        }
    }

    #[test]
    fn supported_cpuid_bits() {
        // The bits as a stock kvm_intel with nested=1 offers them...
        let intel = guest_cpuid(&[entry(0, 0), entry(1, 0x0000_0021), entry(0x8000_0001, 0)]);
        assert_eq!(
            intel,
            GuestCpuid {
                vmx: true,
                svm: false,
                sse3: true,
                entries: 3
            }
        );
        assert!(intel.offers_nesting());
        let amd = guest_cpuid(&[entry(1, 1), entry(0x8000_0001, 0x4)]);
        assert!(amd.svm && !amd.vmx && amd.sse3);
        // ...and as kvm_pvm here does: no vmx, no svm, not even SSE3.
        let pvm = guest_cpuid(&[entry(1, 0x0200_0000), entry(0x8000_0001, 0x1)]);
        assert!(!pvm.vmx && !pvm.svm && !pvm.sse3);
        assert!(!pvm.offers_nesting());
    }

    #[test]
    fn the_boot_sector_is_bootable_and_points_at_its_message() {
        let sector = boot_sector();
        assert_eq!(&sector[510..], &[0x55, 0xaa]);
        let addr = u16::from_le_bytes([sector[7], sector[8]]) as usize;
        let at = addr - 0x7c00;
        assert_eq!(&sector[at..at + BOOT_MARKER.len()], BOOT_MARKER.as_bytes());
        assert_eq!(BOOTED_EXIT_STATUS, 33);
    }

    const DEBUGCON_TCG: &str = include_str!("../../tests/fixtures/qemu/debugcon-tcg-booted.txt");
    const DEBUGCON_KVM_PVM: &str =
        include_str!("../../tests/fixtures/qemu/debugcon-kvm-pvm-stalled.txt");

    #[test]
    fn seabios_under_tcg_reaches_the_boot_sector() {
        let p = parse_debugcon(DEBUGCON_TCG);
        assert!(p.booted);
        assert_eq!(
            p.banner.as_deref(),
            Some("SeaBIOS (version 1.16.2-debian-1.16.2-1)")
        );
        assert_eq!(p.last_line.as_deref(), Some("Booting from 0000:7c00"));
    }

    #[test]
    fn seabios_under_kvm_pvm_stalls_before_booting() {
        let p = parse_debugcon(DEBUGCON_KVM_PVM);
        assert!(!p.booted);
        assert_eq!(
            p.banner.as_deref(),
            Some("SeaBIOS (version 1.16.2-debian-1.16.2-1)")
        );
        assert!(p.lines > 3, "{p:?}");
        assert!(p.last_line.is_some());
    }

    #[test]
    fn nothing_printed_means_no_firmware_seen() {
        let p = parse_debugcon("");
        assert_eq!(
            p,
            FirmwareProgress {
                banner: None,
                booted: false,
                last_line: None,
                lines: 0
            }
        );
    }

    /// A live test: needs a usable /dev/kvm, skipped (and says so) without one.
    fn live_kvm() -> Option<Kvm> {
        match Kvm::new() {
            Ok(kvm) => Some(kvm),
            Err(e) => {
                eprintln!("skipped: /dev/kvm not usable here: {e}");
                None
            }
        }
    }

    #[test]
    fn live_the_test_guest_halts_after_its_output() {
        let Some(_) = live_kvm() else { return };
        let probe = probe_ioctl(Duration::from_secs(5));
        assert_eq!(
            probe.run,
            GuestRun::Halted {
                output: "L".into(),
                exits: vec!["io-out 0x3f8 [4c]".into(), "hlt".into()]
            }
        );
        assert_eq!(probe.api_version, Some(12));
        assert!(probe.guest_cpuid.is_some_and(|c| c.entries > 0));
    }

    #[test]
    fn live_a_guest_that_never_exits_is_reported_hung_and_interrupted() {
        let Some(kvm) = live_kvm() else { return };
        // jmp $ : spins in the guest without ever leaving KVM_RUN on its own.
        static SPIN: &[u8] = &[0xeb, 0xfe];
        let started = Instant::now();
        let run = run_guest(kvm, SPIN, Duration::from_millis(200));
        assert!(
            matches!(run, GuestRun::Hung { after_ms } if after_ms >= 200),
            "{run:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn live_the_standard_guest_boots_under_tcg() {
        // qemu-system-x86 is installed by scripts/setup-host.sh, as in CI.
        let dir = scratch_dir().unwrap();
        let run = start_standard_guest(dir.path(), "tcg").unwrap();
        let deadline = run.started() + Duration::from_secs(20);
        let boot = finish_standard_guest(dir.path(), "tcg", run, deadline, Duration::from_secs(20));
        assert_eq!(boot.outcome, BootOutcome::Booted, "{boot:?}");
        let fw = boot.firmware.unwrap();
        assert!(fw.booted);
        assert!(fw.banner.unwrap().starts_with("SeaBIOS"));
        let kept = dir.path().to_path_buf();
        drop(dir);
        assert!(!kept.exists(), "the scratch directory is removed");
    }
}
