//! A throwaway TCG guest for tests: the host's kernel, a busybox initramfs built with
//! `lab::directboot::initramfs`, scratch disks, and a test script whose results come back over the
//! serial console.
//!
//! Include it with `#[path = "support/guest.rs"] mod guest;`.
//!
//! The protocol, one line each on the console:
//! - `LAB-BOOT <uptime>`: /init runs; `LAB-SCRIPT <uptime>`: modules loaded, script starts;
//! - `LAB-STEP <name> ok` or `LAB-STEP <name> fail <detail>`;
//! - `LAB-DATA <name> <payload>`: base64 of a command's exact stdout, or one-line JSON;
//! - `LAB-DONE <rc>`: the script's exit status, then `poweroff -f`.
//!
//! The script runs under busybox sh with helpers: `lab_step NAME CMD...`,
//! `lab_data NAME CMD...` (CMD's exact stdout, base64), `lab_value NAME VALUE`,
//! `lab_fail NAME DETAIL`.
//!
//! The kernel is booted from the ELF inside the host's bzImage through its PVH entry point
//! (about 5 s less under TCG than letting the bzImage decompress itself), falling back to
//! the bzImage copy. `LAB_GUEST_BZIMAGE=1` forces the bzImage; `LAB_GUEST_CONSOLE=1` prints
//! the whole console of every guest on stderr.
//!
//! A guest that never prints `LAB-DONE` (no kernel, no QEMU, a hang past the timeout, a
//! panic) is a failure with the last 40 console lines, never a skip: these tests exist to
//! prove that guests boot here.

#![allow(dead_code)]

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use lab::directboot::initramfs::{Initramfs, KernelModule};
use lab::runner::{Cmd, ProcessError};

/// Console lines shown when a guest fails.
pub const TAIL_LINES: usize = 40;

/// LVM settings for a guest without udev: libdevmapper makes the /dev nodes itself, the
/// device list comes from scanning /dev, no dmeventd, and no backups or archives.
pub const LVM_CONF: &str = "\
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = \"none\"
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
backup {
    backup = 0
    archive = 0
}
";

/// Where the host's libvirt keeps the drivers libvirtd loads.
pub const LIBVIRT_MODULES: &str = "/usr/lib/x86_64-linux-gnu/libvirt";

/// The guest's libvirtd log (see [`Guest::libvirtd`]).
pub const LIBVIRTD_LOG: &str = "/var/log/libvirt/libvirtd.log";

/// The LVM commands libvirt's logical backend runs, by the paths it was built with
/// (`/sbin/lvs`...): each is `lvm` under another name.
const LIBVIRT_LVM_COMMANDS: [&str; 12] = [
    "lvs", "vgs", "pvs", "vgscan", "vgchange", "vgcreate", "vgremove", "pvcreate", "pvremove",
    "lvcreate", "lvremove", "lvchange",
];

/// Shell helpers every test script can call (sourced before it runs).
const LIB_SH: &str = r#"# lab_step NAME CMD...: run CMD; LAB-STEP NAME ok, or fail with its exit status and output
lab_step() {
    _lab_name=$1; shift
    "$@" >/tmp/lab-out 2>&1
    _lab_rc=$?
    if [ "$_lab_rc" -eq 0 ]; then
        echo "LAB-STEP $_lab_name ok"
    else
        echo "LAB-STEP $_lab_name fail rc=$_lab_rc: $(tail -n 5 /tmp/lab-out | tr '\n' ' ')"
    fi
    return "$_lab_rc"
}
# lab_data NAME CMD...: CMD's exact stdout as LAB-DATA NAME <base64>; a failure is a LAB-STEP
lab_data() {
    _lab_name=$1; shift
    "$@" >/tmp/lab-data 2>/tmp/lab-err
    _lab_rc=$?
    echo "LAB-DATA $_lab_name $(base64 -w 0 </tmp/lab-data)"
    if [ "$_lab_rc" -ne 0 ]; then
        echo "LAB-STEP $_lab_name fail rc=$_lab_rc: $(tail -n 5 /tmp/lab-err | tr '\n' ' ')"
    fi
    return "$_lab_rc"
}
# lab_value NAME VALUE: one value, as LAB-DATA NAME <base64>
lab_value() {
    echo "LAB-DATA $1 $(printf '%s' "$2" | base64 -w 0)"
}
# lab_fail NAME DETAIL
lab_fail() {
    echo "LAB-STEP $1 fail $2"
}
"#;

/// The kernel the guest boots: the host's, with its modules.
#[derive(Debug, Clone)]
pub struct HostKernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
}

impl HostKernel {
    /// The newest `/boot/vmlinuz-<version>` that has `/lib/modules/<version>/modules.dep`.
    pub fn find() -> Result<Self, String> {
        let mut found: Vec<HostKernel> = fs::read_dir("/boot")
            .map_err(|e| format!("reading /boot: {e}"))?
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let version = name.strip_prefix("vmlinuz-")?.to_string();
                let modules_dir = Path::new("/lib/modules").join(&version);
                modules_dir
                    .join("modules.dep")
                    .exists()
                    .then(|| HostKernel {
                        vmlinuz: entry.path(),
                        modules_dir,
                        version,
                    })
            })
            .collect();
        found.sort_by(|a, b| a.version.cmp(&b.version));
        found.pop().ok_or_else(|| {
            "no /boot/vmlinuz-<version> with /lib/modules/<version>/modules.dep: install \
             linux-image-amd64 (scripts/setup-host.sh does)"
                .to_string()
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, Clone)]
struct Disk {
    size: u64,
    format: DiskFormat,
}

/// A guest to boot: modules, host executables, extra files, scratch disks and a script.
#[derive(Debug, Clone)]
pub struct Guest {
    script: String,
    modules: Vec<String>,
    executables: Vec<String>,
    host_files: Vec<PathBuf>,
    files: Vec<(String, Vec<u8>, u32)>,
    symlinks: Vec<(String, String)>,
    dirs: Vec<String>,
    disks: Vec<Disk>,
    memory_mib: u32,
    timeout: Duration,
}

/// One `LAB-STEP` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What the console said, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Console {
    pub steps: Vec<Step>,
    pub data: Vec<(String, String)>,
    pub done: Option<i32>,
    /// Guest uptime (s) when /init started and when the script started.
    pub boot_uptime: Option<f64>,
    pub script_uptime: Option<f64>,
}

/// A guest that finished its script.
#[derive(Debug, Clone)]
pub struct GuestRun {
    pub console: Console,
    pub console_text: String,
    pub rc: i32,
    /// From QEMU's start to the `LAB-SCRIPT` line, as the host saw it.
    pub boot_to_script: Option<Duration>,
    /// From QEMU's start to its exit.
    pub qemu_time: Duration,
    /// Bytes the scratch disk files took on the host after the guest stopped.
    pub disk_allocated: Vec<u64>,
    /// Size of the initramfs handed to the kernel.
    pub initramfs_bytes: u64,
    pub kernel_entry: KernelEntry,
}

/// How QEMU entered the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEntry {
    /// The ELF inside the bzImage, decompressed on the host, through its PVH entry point.
    Pvh,
    /// The bzImage itself, which decompresses itself (slowly, under TCG).
    BzImage,
}

/// A guest that did not finish: the reason and the end of its console.
#[derive(Debug)]
pub struct GuestFailure {
    pub reason: String,
    pub console_tail: String,
}

impl fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the test guest failed: {}\n--- last {TAIL_LINES} console lines ---\n{}\n---",
            self.reason, self.console_tail
        )
    }
}

impl Guest {
    /// A guest running `script` (busybox sh, with the `lab_*` helpers defined).
    pub fn new(script: impl Into<String>) -> Self {
        Guest {
            script: script.into(),
            modules: Vec::new(),
            executables: Vec::new(),
            host_files: Vec::new(),
            files: Vec::new(),
            symlinks: Vec::new(),
            dirs: Vec::new(),
            disks: Vec::new(),
            memory_mib: 512,
            timeout: Duration::from_secs(300),
        }
    }

    /// Kernel modules to load, with their dependencies (virtio_pci and virtio_blk always).
    pub fn modules(mut self, names: &[&str]) -> Self {
        self.modules.extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// Host executables (a name looked up in PATH and the sbin directories, or a path),
    /// copied with their libraries.
    pub fn executables(mut self, names: &[&str]) -> Self {
        self.executables.extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// Host files copied to the same path (/etc/mke2fs.conf, say).
    pub fn host_files(mut self, paths: &[&str]) -> Self {
        self.host_files.extend(paths.iter().map(PathBuf::from));
        self
    }

    pub fn file(mut self, path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((path.to_string(), bytes.into(), mode));
        self
    }

    /// A symbolic link at `path` to `target`.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.symlinks.push((path.to_string(), target.to_string()));
        self
    }

    /// An empty directory (mode 0755).
    pub fn dir(mut self, path: &str) -> Self {
        self.dirs.push(path.to_string());
        self
    }

    /// Device-mapper thin provisioning and LVM: the modules, lvm, thin_check and an
    /// /etc/lvm/lvm.conf fit for a guest without udev. dm_snapshot too: lvcreate checks for
    /// its target even for thin snapshots, and the guest has no modprobe to load it then.
    pub fn lvm_thin(self) -> Self {
        self.modules(&["dm_thin_pool", "dm_snapshot"])
            .executables(&["lvm", "thin_check"])
            .file("/etc/lvm/lvm.conf", LVM_CONF, 0o644)
    }

    /// ext4 with mkfs.ext4 and fstrim.
    pub fn ext4(self) -> Self {
        self.modules(&["ext4"])
            .executables(&["mkfs.ext4", "fstrim"])
            .host_files(&["/etc/mke2fs.conf"])
    }

    /// libvirtd and virsh with the given connection drivers (`storage`, `qemu`) and storage
    /// backends (`logical`) from the host's libvirt, each with its libraries; a
    /// `/etc/libvirt/libvirtd.conf` that logs to [`LIBVIRTD_LOG`] every command libvirt runs
    /// (and its warnings and errors); root and the `libvirt-qemu` user in /etc/passwd (the
    /// QEMU driver refuses to start without that user); the LVM commands at the `/sbin`
    /// paths libvirt was built with; /var/run as a link to /run. The script starts the
    /// daemon itself.
    pub fn libvirtd(mut self, drivers: &[&str], backends: &[&str]) -> Self {
        self.executables
            .extend(["libvirtd", "virsh"].iter().map(|s| s.to_string()));
        for driver in drivers {
            self.executables.push(format!(
                "{LIBVIRT_MODULES}/connection-driver/libvirt_driver_{driver}.so"
            ));
        }
        for backend in backends {
            self.executables.push(format!(
                "{LIBVIRT_MODULES}/storage-backend/libvirt_storage_backend_{backend}.so"
            ));
        }
        let lvm = find_executable("lvm")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "/usr/sbin/lvm".to_string());
        for cmd in LIBVIRT_LVM_COMMANDS {
            self = self.symlink(&format!("/sbin/{cmd}"), &lvm);
        }
        // The client looks for the daemon's socket under /var/run, the daemon makes it
        // under /run.
        self = self.symlink("/var/run", "/run");
        for dir in [
            "/etc/libvirt",
            "/run/libvirt",
            "/var/lib/libvirt",
            "/var/cache/libvirt",
            "/var/log/libvirt",
        ] {
            self = self.dir(dir);
        }
        self.file(
            "/etc/libvirt/libvirtd.conf",
            format!("log_filters = \"1:util.command\"\nlog_outputs = \"1:file:{LIBVIRTD_LOG}\"\n"),
            0o644,
        )
        .file(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\n\
             libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin\n",
            0o644,
        )
        .file("/etc/group", "root:x:0:\nlibvirt-qemu:x:64055:\n", 0o644)
    }

    /// A sparse scratch disk: /dev/vda for the first, /dev/vdb for the next...
    pub fn disk(mut self, size: u64, format: DiskFormat) -> Self {
        self.disks.push(Disk { size, format });
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Boot, run the script, and panic with the console tail if the guest did not finish.
    pub fn run(self) -> GuestRun {
        match self.try_run() {
            Ok(run) => run,
            Err(failure) => panic!("{failure}"),
        }
    }

    pub fn try_run(self) -> Result<GuestRun, GuestFailure> {
        let no_console = |reason: String| GuestFailure {
            reason,
            console_tail: "(the guest never started)".to_string(),
        };
        let work = tempfile::Builder::new()
            .prefix("lab-guest-")
            .tempdir()
            .map_err(|e| no_console(format!("creating a scratch directory: {e}")))?;
        let kernel = HostKernel::find().map_err(no_console)?;
        // Boot a copy: /boot is no place to hand to an emulator (libvirt even relabels it).
        let vmlinuz = work.path().join("vmlinuz");
        fs::copy(&kernel.vmlinuz, &vmlinuz)
            .map_err(|e| no_console(format!("copying {}: {e}", kernel.vmlinuz.display())))?;
        let pvh = match std::env::var_os("LAB_GUEST_BZIMAGE") {
            Some(_) => None,
            None => pvh_kernel(&vmlinuz, work.path()),
        };
        let (boot_kernel, kernel_entry) = match pvh {
            Some(elf) => (elf, KernelEntry::Pvh),
            None => (vmlinuz.clone(), KernelEntry::BzImage),
        };
        let initrd = work.path().join("initramfs.cpio");
        self.build_initramfs(&kernel, &initrd)
            .map_err(|e| no_console(format!("building the initramfs: {e:#}")))?;
        let initramfs_bytes = fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
        let disks = self.create_disks(work.path()).map_err(no_console)?;

        let console_path = work.path().join("console.log");
        let mut qemu = Cmd::new("qemu-system-x86_64").args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            &self.memory_mib.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
        ]);
        qemu = qemu
            .arg("-kernel")
            .arg(&boot_kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-serial")
            .arg(format!("file:{}", console_path.display()));
        for (path, disk) in &disks {
            let format = match disk.format {
                DiskFormat::Raw => "raw",
                DiskFormat::Qcow2 => "qcow2",
            };
            // discard=unmap: the guest's discards punch holes in the file, as on a laptop.
            qemu = qemu.arg("-drive").arg(format!(
                "file={},if=virtio,format={format},discard=unmap,cache=unsafe",
                path.display().to_string().replace(',', ",,")
            ));
        }
        qemu = qemu.timeout(self.timeout);

        let started = Instant::now();
        let watcher = ScriptWatcher::start(console_path.clone(), started);
        let outcome = qemu.run();
        let qemu_time = started.elapsed();
        let boot_to_script = watcher.stop();

        let console_text = fs::read_to_string(&console_path)
            .map(|t| t.replace('\r', ""))
            .unwrap_or_default();
        let console = parse_console(&console_text);
        if std::env::var_os("LAB_GUEST_CONSOLE").is_some() {
            eprintln!("--- guest console ---\n{console_text}--- end of guest console ---");
        }
        let failure = |reason: String| GuestFailure {
            reason,
            console_tail: tail(&console_text, TAIL_LINES),
        };
        match (&outcome, console.done) {
            (_, Some(rc)) => {
                let disk_allocated = disks
                    .iter()
                    .map(|(path, _)| allocated_bytes(path))
                    .collect();
                Ok(GuestRun {
                    rc,
                    console,
                    console_text,
                    boot_to_script,
                    qemu_time,
                    disk_allocated,
                    initramfs_bytes,
                    kernel_entry,
                })
            }
            (Err(ProcessError::TimedOut { timeout, .. }), None) => Err(failure(format!(
                "no LAB-DONE within {}s (QEMU killed)",
                timeout.as_secs()
            ))),
            (Err(err), None) => Err(failure(format!("QEMU failed: {err}"))),
            (Ok(_), None) => Err(failure(
                "QEMU exited without LAB-DONE (kernel panic, or /init died)".to_string(),
            )),
        }
    }

    fn build_initramfs(&self, kernel: &HostKernel, dest: &Path) -> anyhow::Result<()> {
        let mut ramfs = Initramfs::new();
        for dir in ["/proc", "/sys", "/dev", "/run", "/run/lock", "/mnt"] {
            ramfs.dir(dir, 0o755);
        }
        ramfs.dir("/tmp", 0o1777);
        let busybox = find_executable("busybox")?;
        ramfs.busybox(&busybox)?;
        let mut names = vec!["virtio_pci".to_string(), "virtio_blk".to_string()];
        names.extend(self.modules.iter().cloned());
        let modules = ramfs.kernel_modules(&kernel.modules_dir, &names)?;
        for exe in &self.executables {
            ramfs.executable_with_libs(find_executable(exe)?)?;
        }
        for path in &self.host_files {
            ramfs.copy_host_file(path, path)?;
        }
        for (path, bytes, mode) in &self.files {
            ramfs.file(path, bytes.clone(), *mode);
        }
        for (path, target) in &self.symlinks {
            ramfs.symlink(path, target);
        }
        for path in &self.dirs {
            ramfs.dir(path, 0o755);
        }
        ramfs.file("/lab/modules", module_list(&modules), 0o644);
        ramfs.file("/lab/lib.sh", LIB_SH, 0o644);
        ramfs.file(
            "/lab/test.sh",
            format!("#!/bin/sh\n. /lab/lib.sh\n{}\n", self.script),
            0o755,
        );
        ramfs.file("/init", init_script(self.disks.len()), 0o755);
        ramfs.write_to(dest)
    }

    fn create_disks(&self, dir: &Path) -> Result<Vec<(PathBuf, Disk)>, String> {
        let mut out = Vec::new();
        for (i, disk) in self.disks.iter().enumerate() {
            let path = dir.join(format!("disk{i}.img"));
            match disk.format {
                DiskFormat::Raw => {
                    let file = fs::File::create(&path)
                        .map_err(|e| format!("creating {}: {e}", path.display()))?;
                    file.set_len(disk.size)
                        .map_err(|e| format!("sizing {}: {e}", path.display()))?;
                }
                DiskFormat::Qcow2 => {
                    Cmd::new("qemu-img")
                        .args(["create", "-q", "-f", "qcow2"])
                        .arg(&path)
                        .arg(disk.size.to_string())
                        .run()
                        .map_err(|e| e.to_string())?;
                }
            }
            out.push((path, disk.clone()));
        }
        Ok(out)
    }
}

fn module_list(modules: &[KernelModule]) -> String {
    modules
        .iter()
        .map(|m| {
            let kind = if m.optional { "optional" } else { "required" };
            format!("{} {kind}\n", m.path)
        })
        .collect()
}

/// The guest's /init: mount the kernel filesystems, load the modules, wait for the disks,
/// run the script, report its status and power off.
fn init_script(disks: usize) -> String {
    let names: Vec<String> = (0..disks)
        .map(|i| format!("vd{}", (b'a' + i as u8) as char))
        .collect();
    format!(
        r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Kernel messages would break protocol lines on the shared console.
dmesg -n 1
# A fresh line: the firmware leaves "Booting from ROM.." without one.
echo
echo "LAB-BOOT $(cut -d' ' -f1 /proc/uptime)"
rc=0
while read -r path kind; do
    if ! out=$(insmod "$path" 2>&1) && [ "$kind" = required ]; then
        echo "LAB-STEP insmod fail $path: $out"
        rc=98
    fi
done </lab/modules
for disk in {disks}; do
    n=0
    while [ ! -b "/dev/$disk" ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    [ -b "/dev/$disk" ] || {{ echo "LAB-STEP disk fail /dev/$disk did not appear"; rc=98; }}
done
if [ "$rc" -eq 0 ]; then
    echo "LAB-SCRIPT $(cut -d' ' -f1 /proc/uptime)"
    sh /lab/test.sh
    rc=$?
fi
[ "$rc" -eq 0 ] || dmesg | tail -n 15
echo "LAB-DONE $rc"
sync
poweroff -f
"#,
        disks = names.join(" ")
    )
}

/// Parse the protocol lines of a console log; everything else is ignored.
pub fn parse_console(text: &str) -> Console {
    let mut console = Console::default();
    for line in text.lines() {
        let line = strip_escapes(line.trim_end_matches('\r'));
        let Some(rest) = line.strip_prefix("LAB-") else {
            continue;
        };
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "STEP" => {
                let mut words = rest.splitn(3, ' ');
                let name = words.next().unwrap_or("").to_string();
                let status = words.next().unwrap_or("");
                let detail = words.next().unwrap_or("").trim().to_string();
                console.steps.push(Step {
                    name,
                    ok: status == "ok",
                    detail,
                });
            }
            "DATA" => {
                let (name, payload) = rest.split_once(' ').unwrap_or((rest, ""));
                console
                    .data
                    .push((name.to_string(), payload.trim().to_string()));
            }
            "DONE" => console.done = rest.trim().parse().ok(),
            "BOOT" => console.boot_uptime = rest.trim().parse().ok(),
            "SCRIPT" => console.script_uptime = rest.trim().parse().ok(),
            _ => {}
        }
    }
    console
}

/// A line without terminal escape sequences (SeaBIOS clears the screen right before the
/// kernel's first line, without a newline).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI: parameters up to a final byte in @..~; any other escape is two characters
        // (ESC c resets the terminal).
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(no console output)".to_string();
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl GuestRun {
    /// The step of this name; panics (with the console) when the guest never reported it.
    pub fn step(&self, name: &str) -> &Step {
        self.console
            .steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no LAB-STEP {name}\n{}", self.tail()))
    }

    /// The script exited 0 and no step failed; otherwise panic with what failed.
    pub fn assert_ok(&self) {
        let failed: Vec<String> = self
            .console
            .steps
            .iter()
            .filter(|s| !s.ok)
            .map(|s| format!("{}: {}", s.name, s.detail))
            .collect();
        assert!(
            self.rc == 0 && failed.is_empty(),
            "guest script exited {} with failed steps {failed:#?}\n{}",
            self.rc,
            self.tail()
        );
    }

    /// The raw payload of `LAB-DATA name` (the last one, if repeated).
    pub fn data(&self, name: &str) -> &str {
        self.console
            .data
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, payload)| payload.as_str())
            .unwrap_or_else(|| panic!("no LAB-DATA {name}\n{}", self.tail()))
    }

    /// A base64 payload, decoded.
    pub fn data_bytes(&self, name: &str) -> Vec<u8> {
        decode_base64(self.data(name))
            .unwrap_or_else(|e| panic!("LAB-DATA {name} is not base64: {e}"))
    }

    pub fn data_text(&self, name: &str) -> String {
        String::from_utf8(self.data_bytes(name))
            .unwrap_or_else(|e| panic!("LAB-DATA {name} is not UTF-8: {e}"))
    }

    /// JSON, sent inline (`{...}`) or base64-encoded.
    pub fn data_json(&self, name: &str) -> serde_json::Value {
        let payload = self.data(name);
        let text = if payload.starts_with('{') || payload.starts_with('[') {
            payload.to_string()
        } else {
            self.data_text(name)
        };
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("LAB-DATA {name}: {e}: {text}"))
    }

    pub fn tail(&self) -> String {
        format!(
            "--- last {TAIL_LINES} console lines ---\n{}\n---",
            tail(&self.console_text, TAIL_LINES)
        )
    }
}

/// Standard base64 (RFC 4648, padded), as busybox `base64` writes it.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let value = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("unexpected character {:?}", c as char)),
        } as u32)
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !clean.len().is_multiple_of(4) {
        return Err(format!("length {} is not a multiple of 4", clean.len()));
    }
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || chunk[..4 - pad].contains(&b'=') {
            return Err("misplaced padding".to_string());
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

/// A name in PATH or the sbin directories (tests may run without them in PATH), or a path.
pub fn find_executable(name: &str) -> anyhow::Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("{name} is not installed (scripts/setup-host.sh installs it)")
        })
}

/// Under TCG a bzImage spends about 6 s decompressing itself before the kernel starts; the
/// ELF inside it, decompressed on the host (under a second), boots at once through its PVH
/// entry point. None (boot the bzImage) when the payload is not xz or gzip, the tool is
/// missing, or the kernel has no PVH note (CONFIG_PVH).
pub fn pvh_kernel(bzimage: &Path, dir: &Path) -> Option<PathBuf> {
    let image = fs::read(bzimage).ok()?;
    let payload = bzimage_payload(&image)?;
    let (packed_name, cmd) = if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        // --single-stream: the payload ends with the uncompressed size, not another stream.
        (
            "vmlinux.xz",
            Cmd::new("xz").args(["-d", "-q", "--single-stream"]),
        )
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        ("vmlinux.gz", Cmd::new("gzip").args(["-d", "-q"]))
    } else {
        return None;
    };
    let packed = dir.join(packed_name);
    let elf = dir.join("vmlinux");
    fs::write(&packed, payload).ok()?;
    // gzip exits 2 for the trailing size ("trailing garbage ignored"): judge by the result.
    let _ = cmd.arg(&packed).capture().ok()?;
    let _ = fs::remove_file(&packed);
    let bytes = fs::read(&elf).ok()?;
    if has_pvh_note(&bytes) {
        Some(elf)
    } else {
        let _ = fs::remove_file(&elf);
        None
    }
}

/// The compressed kernel inside a bzImage (boot protocol 2.08+: payload_offset and
/// payload_length in the setup header, counted from the end of the setup sectors).
fn bzimage_payload(image: &[u8]) -> Option<&[u8]> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?));
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes(image.get(0x206..0x208)?.try_into().ok()?);
    if version < 0x208 {
        return None;
    }
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)? as usize;
    image.get(start..start + u32_at(0x24c)? as usize)
}

/// True when a 64-bit ELF carries the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, 18)
/// QEMU needs to boot it.
fn has_pvh_note(elf: &[u8]) -> bool {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if elf.get(0..5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        const PT_NOTE: usize = 4;
        if u32_at(ph) != Some(PT_NOTE) {
            continue;
        }
        let (Some(offset), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            continue;
        };
        let mut at = offset;
        while at + 12 <= offset + size {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
                break;
            };
            let name = elf.get(at + 12..at + 12 + namesz).unwrap_or(&[]);
            if kind == 18 && name.starts_with(b"Xen") {
                return true;
            }
            at += 12 + namesz.next_multiple_of(4) + descsz.next_multiple_of(4);
        }
    }
    false
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Watches the console file for `LAB-SCRIPT` and notes when it appeared.
struct ScriptWatcher {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Option<Duration>>,
}

impl ScriptWatcher {
    fn start(path: PathBuf, started: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            loop {
                let seen = fs::read_to_string(&path)
                    .map(|t| t.lines().any(|l| l.starts_with("LAB-SCRIPT ")))
                    .unwrap_or(false);
                if seen {
                    return Some(started.elapsed());
                }
                if flag.load(Ordering::Relaxed) {
                    return None;
                }
                thread::sleep(Duration::from_millis(25));
            }
        });
        ScriptWatcher { stop, handle }
    }

    fn stop(self) -> Option<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(None)
    }
}
