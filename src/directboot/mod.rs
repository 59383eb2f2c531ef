//! The smoke lab's artifacts and guest side: VMs booted straight from the host's kernel and
//! a busybox initramfs lab assembles itself (nothing to download), each with a qcow2 clone
//! of a tiny ext4 base disk.
//!
//! The guest's `/init` (`src/smoke/init.sh`) loads its drivers, takes a DHCP lease, mounts
//! its disk, writes its name there, starts the qemu guest agent when the host has one
//! (`lab trim` asks it to fstrim the disk) and prints one line on the serial console:
//! `LAB-READY vm=node1 ip=10.213.166.10 disk=ok`, after a `LAB-ERROR vm=node1 ...` line for
//! each thing that went wrong. [`parse_ready`] and [`parse_report`] read that line back from
//! a console log.

pub mod initramfs;

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::directboot::initramfs::{Initramfs, KernelModule};
use crate::host::Sysroot;
use crate::host::kernel::host_kernel;
use crate::mark::{Marker, Owner, VolumeRole, marker_path};
use crate::names;
use crate::runner::Cmd;
use crate::size::ByteSize;
use crate::ui;

/// The guest's `/init`.
pub const INIT_SCRIPT: &str = include_str!("init.sh");
/// busybox `udhcpc` applies a lease only through a script: this one.
pub const DHCP_SCRIPT: &str = include_str!("default.script");
/// Where `/init` finds the modules to load, in order: `PATH required|optional` lines.
pub const MODULE_LIST: &str = "/etc/lab/modules";

/// The file in the initramfs that names the SSH server `/init` starts.
pub const SSH_SERVER_FILE: &str = "/etc/lab/ssh-server";
/// The file in the initramfs that names the guest agent `/init` starts.
pub const GUEST_AGENT_FILE: &str = "/etc/lab/guest-agent";

/// The kernel command line every smoke VM gets; [`vm_cmdline`] appends its own words.
/// The serial console carries the ready line; `quiet` keeps kernel chatter off it.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet";

/// Drivers the guest cannot do without: the virtio PCI transport, its NIC and disk,
/// AF_PACKET for udhcpc, ext4 for the disk. Dependencies (virtio_ring, failover, jbd2,
/// mbcache, crc16, the crc32c soft dependency...) are kmod's answer (`modprobe
/// --show-depends`); what the kernel has built in needs nothing.
const REQUIRED_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "af_packet",
    "ext4",
];

/// Loaded when this kernel has them. crc32c_generic is also pulled in as ext4's soft
/// dependency; naming it here keeps ext4's checksums working on a CPU without SSE4.2.
const OPTIONAL_MODULES: &[&str] = &["crc32c_generic", "virtio_rng", "virtio_console"];

/// What lab boots a smoke VM with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The part every VM shares; lab appends per-VM words ([`vm_cmdline`]).
    pub cmdline: String,
}

/// A smoke VM that said it is ready and has an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ready {
    pub vm: String,
    pub ip: Ipv4Addr,
    /// Its disk clone is mounted and was written.
    pub disk: bool,
}

/// Everything a smoke VM said about its boot: the ready line, address or not, and the
/// errors it printed before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestReport {
    pub vm: String,
    /// None when it got no DHCP lease (`ip=none`).
    pub ip: Option<Ipv4Addr>,
    pub disk: bool,
    /// The text of each `LAB-ERROR` line of this boot.
    pub errors: Vec<String>,
}

impl GuestReport {
    /// Ready in the sense of [`parse_ready`]: it has an address.
    pub fn ready(&self) -> Option<Ready> {
        Some(Ready {
            vm: self.vm.clone(),
            ip: self.ip?,
            disk: self.disk,
        })
    }
}

/// The busybox lab puts into the initramfs: busybox-static's, wherever it is.
pub fn host_busybox() -> Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_dirs)
        .chain(["/bin", "/usr/bin", "/sbin", "/usr/sbin"].map(PathBuf::from))
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
        .context("busybox is not installed: install busybox-static (Fedora: busybox)")
}

/// The environment variable that names another guest agent for the smoke VMs than the
/// host's qemu-ga: an absolute path to a program that takes qemu-ga's options
/// (`--daemonize -m virtio-serial -p PORT -f PIDFILE -t DIR -l LOG`).
pub const GUEST_AGENT_ENV: &str = "LAB_SMOKE_GUEST_AGENT";

/// The guest agent lab puts into the initramfs, when the host has one: the program named
/// by `LAB_SMOKE_GUEST_AGENT`, else qemu-ga (package qemu-guest-agent). `lab trim` asks it
/// to fstrim a running smoke VM. Without one the smoke VMs still boot; they are then
/// trimmed only while stopped.
pub fn host_qemu_ga() -> Result<Option<PathBuf>> {
    program_from_env(GUEST_AGENT_ENV, "qemu-ga")
}

/// The environment variable that names another SSH server for the smoke VMs than the
/// host's dropbear: an absolute path to a program that takes dropbear's options
/// (`-R -s -P PIDFILE`) and logs root in with `/root/.ssh/authorized_keys`.
pub const SSH_SERVER_ENV: &str = "LAB_SMOKE_SSH_SERVER";

/// The SSH server lab puts into the initramfs, when the host has one: the program named
/// by `LAB_SMOKE_SSH_SERVER`, else dropbear (package dropbear-bin). `lab ssh`,
/// provisioning steps and `lab ready` log in with it.
pub fn host_ssh_server() -> Result<Option<PathBuf>> {
    program_from_env(SSH_SERVER_ENV, "dropbear")
}

/// The program the environment variable `var` names (an absolute path, or an error), else
/// the host's `default` when it has one.
fn program_from_env(var: &str, default: &str) -> Result<Option<PathBuf>> {
    match std::env::var_os(var) {
        Some(value) if !value.is_empty() => {
            let path = PathBuf::from(value);
            if !path.is_absolute() || !path.is_file() {
                bail!(
                    "{var}={}: not an absolute path to a program",
                    path.display()
                );
            }
            Ok(Some(path))
        }
        _ => Ok(crate::host::tools::find_program(default)),
    }
}

/// What goes into the smoke initramfs besides busybox and the drivers, when the host has
/// it: the qemu guest agent, an SSH server, and the public key root logs in with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// Started by `/init` with qemu-ga's options on the agent's virtio serial port.
    pub qemu_ga: Option<&'a Path>,
    /// Started by `/init` with dropbear's options: `-R -s -P /run/sshd.pid`.
    pub ssh_server: Option<&'a Path>,
    /// One OpenSSH public key line, root's `authorized_keys`.
    pub authorized_key: Option<&'a str>,
}

/// The smoke VMs' initramfs: busybox with its applet links, `/init`, the udhcpc script,
/// the kernel modules from `modules_dir` and the list `/init` loads them from, and the
/// qemu guest agent and the SSH server with their libraries when they are given.
pub fn build_initramfs(
    modules_dir: &Path,
    busybox: &Path,
    extras: &Extras<'_>,
) -> Result<Initramfs> {
    let mut ramfs = Initramfs::new();
    ramfs
        .busybox(busybox)
        .with_context(|| format!("adding {} to the initramfs", busybox.display()))?;
    for program in [extras.qemu_ga, extras.ssh_server].into_iter().flatten() {
        ramfs
            .executable_with_libs(program)
            .with_context(|| format!("adding {} to the initramfs", program.display()))?;
    }
    // root, for the SSH server: its shell, its home and the key it is logged in with.
    ramfs
        .file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("/etc/group", "root:x:0:\n", 0o644)
        .file("/etc/shells", "/bin/sh\n", 0o644)
        .dir("/root", 0o700)
        .dir("/etc/dropbear", 0o700);
    // /init starts the programs named here.
    if let Some(server) = extras.ssh_server {
        ramfs.file(SSH_SERVER_FILE, format!("{}\n", server.display()), 0o644);
    }
    if let Some(agent) = extras.qemu_ga {
        ramfs.file(GUEST_AGENT_FILE, format!("{}\n", agent.display()), 0o644);
    }
    if let Some(key) = extras.authorized_key {
        ramfs.dir("/root/.ssh", 0o700).file(
            "/root/.ssh/authorized_keys",
            format!("{}\n", key.trim()),
            0o600,
        );
    }
    let loads = add_modules(&mut ramfs, modules_dir)?;
    let list = module_list(&loads);
    for dir in ["/proc", "/sys", "/dev", "/run", "/tmp", "/data"] {
        ramfs.dir(dir, 0o755);
    }
    ramfs
        .file("/init", INIT_SCRIPT, 0o755)
        .file("/etc/udhcpc/default.script", DHCP_SCRIPT, 0o755)
        .file(MODULE_LIST, list, 0o644);
    Ok(ramfs)
}

/// Add the smoke VM drivers and their dependencies to `ramfs`; the load order `/init`
/// follows, each module once.
fn add_modules(ramfs: &mut Initramfs, modules_dir: &Path) -> Result<Vec<KernelModule>> {
    let mut loads = ramfs
        .kernel_modules(modules_dir, REQUIRED_MODULES)
        .with_context(|| {
            format!(
                "collecting the smoke VM drivers from {}",
                modules_dir.display()
            )
        })?;
    for name in OPTIONAL_MODULES {
        match ramfs.kernel_modules(modules_dir, &[*name]) {
            Ok(more) => {
                for mut module in more {
                    if !loads.iter().any(|m| m.name == module.name) {
                        module.optional = true;
                        loads.push(module);
                    }
                }
            }
            Err(err) => ui::debug(format_args!("smoke initramfs: no {name}: {err:#}")),
        }
    }
    Ok(loads)
}

/// The text of [`MODULE_LIST`]: `PATH required|optional`, one module a line, in order.
fn module_list(loads: &[KernelModule]) -> String {
    loads
        .iter()
        .map(|m| {
            let need = if m.optional { "optional" } else { "required" };
            format!("{} {need}\n", m.path)
        })
        .collect()
}

/// The kernel copy's path: `<dir>/lab-<profile>-vmlinuz`.
pub fn kernel_path(dir: &Path, profile: &str) -> PathBuf {
    dir.join(format!("{}-{profile}-vmlinuz", names::PREFIX))
}

/// The initramfs's path: `<dir>/lab-<profile>-initrd.img`.
pub fn initrd_path(dir: &Path, profile: &str) -> PathBuf {
    dir.join(format!("{}-{profile}-initrd.img", names::PREFIX))
}

/// Where the SHA-256 of a boot file's content is recorded, in `sha256sum` format.
pub fn digest_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    file.with_file_name(name)
}

/// Check what the boot files are made of (the host's kernel and modules, busybox, and the
/// SSH server and guest agent when they are named), without making anything.
pub fn preflight() -> Result<()> {
    host_kernel(&Sysroot::live())?;
    host_busybox()?;
    host_ssh_server()?;
    host_qemu_ga()?;
    Ok(())
}

/// Write `<dir>/lab-<profile>-vmlinuz` (a copy of the host kernel: libvirt relabels what it
/// boots, and /boot is not lab's) and `<dir>/lab-<profile>-initrd.img`, each with lab's
/// marker beside it, and return them with the base command line.
///
/// The initramfs is deterministic, so the SHA-256 of each file's intended content stands
/// for its inputs (kernel; busybox, `/init`, udhcpc script, modules): a file whose recorded
/// digest matches is left alone, anything else is rewritten atomically (temporary file,
/// then rename). A file at either path that is not lab's is never overwritten.
pub fn prepare_boot_files(dir: &Path, profile: &str) -> Result<BootFiles> {
    let inputs = HostInputs::find(&Sysroot::live())?;
    let key = match &inputs.ssh_server {
        Some(_) => Some(crate::guest::ssh::lab_key(dir, profile)?.public_line),
        None => None,
    };
    prepare_boot_files_from(
        dir,
        profile,
        &inputs.kernel,
        &inputs.modules,
        &inputs.busybox,
        &inputs.extras(key.as_deref()),
    )
}

/// What the boot files are made of on this host: its kernel and modules, busybox, and the
/// guest agent and SSH server the VMs carry.
struct HostInputs {
    kernel: PathBuf,
    modules: PathBuf,
    busybox: PathBuf,
    qemu_ga: Option<PathBuf>,
    ssh_server: Option<PathBuf>,
}

impl HostInputs {
    fn find(host: &Sysroot) -> Result<HostInputs> {
        let (kernel, modules) = host_kernel(host)?;
        Ok(HostInputs {
            kernel,
            modules,
            busybox: host_busybox()?,
            qemu_ga: host_qemu_ga()?,
            ssh_server: host_ssh_server()?,
        })
    }

    /// The programs beyond busybox, with root's key for the SSH server.
    fn extras<'a>(&'a self, authorized_key: Option<&'a str>) -> Extras<'a> {
        Extras {
            qemu_ga: self.qemu_ga.as_deref(),
            ssh_server: self.ssh_server.as_deref(),
            authorized_key,
        }
    }
}

/// [`prepare_boot_files`] with the kernel, its modules directory, busybox and the extras
/// given.
pub fn prepare_boot_files_from(
    dir: &Path,
    profile: &str,
    kernel: &Path,
    modules_dir: &Path,
    busybox: &Path,
    extras: &Extras<'_>,
) -> Result<BootFiles> {
    let kernel_dest = kernel_path(dir, profile);
    let initrd_dest = initrd_path(dir, profile);
    // Refuse before any work when someone else's file sits at either path.
    refuse_foreign(&kernel_dest, profile)?;
    refuse_foreign(&initrd_dest, profile)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    // Rebuilding the initramfs to compare digests costs a few hundred milliseconds on
    // every `lab up`; when none of its inputs changed (by size and mtime, and lab's own
    // scripts by content) the files are known to be current.
    let inputs = inputs_fingerprint(kernel, modules_dir, busybox, extras);
    let inputs_file = inputs_path(&initrd_dest);
    if files_current(dir, profile, &inputs) {
        ui::debug(format_args!(
            "boot files of {profile} are current (inputs unchanged)"
        ));
        return Ok(existing_boot_files(dir, profile));
    }
    let _ = fs::remove_file(&inputs_file);

    let kernel_bytes = fs::read(kernel).map_err(|err| {
        let hint = if err.kind() == std::io::ErrorKind::PermissionDenied {
            " (some distributions keep kernels readable by root only: run lab as root)"
        } else {
            ""
        };
        anyhow::Error::new(err).context(format!("reading kernel {}{hint}", kernel.display()))
    })?;
    install_boot_file(&kernel_dest, &kernel_bytes, profile)?;

    if extras.qemu_ga.is_none() {
        ui::warn(format_args!(
            "qemu-ga is not installed: the {profile} VMs get no guest agent, so `lab trim` \
             trims them only while they are stopped (install qemu-guest-agent, or name \
             another agent in {GUEST_AGENT_ENV})"
        ));
    }
    if extras.ssh_server.is_none() {
        ui::warn(format_args!(
            "dropbear is not installed: the {profile} VMs get no SSH server, so `lab ssh`, \
             provisioning steps and `lab ready` cannot reach them (install dropbear-bin, or \
             name another server in {SSH_SERVER_ENV})"
        ));
    }
    let initrd_bytes = build_initramfs(modules_dir, busybox, extras)?
        .to_bytes()
        .context("assembling the smoke initramfs")?;
    install_boot_file(&initrd_dest, &initrd_bytes, profile)?;
    write_atomically(&inputs_file, inputs.as_bytes(), 0o644)?;

    Ok(BootFiles {
        kernel: kernel_dest,
        initrd: initrd_dest,
        cmdline: BASE_CMDLINE.to_string(),
    })
}

/// The boot files of `profile` in `dir` as they are, without looking at them: for a run
/// whose plan found them current.
pub fn existing_boot_files(dir: &Path, profile: &str) -> BootFiles {
    BootFiles {
        kernel: kernel_path(dir, profile),
        initrd: initrd_path(dir, profile),
        cmdline: BASE_CMDLINE.to_string(),
    }
}

/// Whether both boot files are lab's, with their digests, and were made from `inputs`.
fn files_current(dir: &Path, profile: &str, inputs: &str) -> bool {
    let ours = |p: &Path| {
        p.is_file()
            && Marker::read(p).is_some_and(|m| m.owner.is(profile) && m.role == VolumeRole::Boot)
            && digest_path(p).is_file()
    };
    let initrd = initrd_path(dir, profile);
    ours(&kernel_path(dir, profile))
        && ours(&initrd)
        && fs::read_to_string(inputs_path(&initrd)).is_ok_and(|t| t == inputs)
}

/// Whether [`prepare_boot_files`] would leave the boot files of `profile` in `dir` alone:
/// lab's, and made from what the host has now. Reads only (lab's SSH key is not made
/// here: without it the files are not current); anything missing says "not current".
pub fn boot_files_current(dir: &Path, profile: &str, host: &Sysroot) -> bool {
    let current = || -> Result<bool> {
        let inputs = HostInputs::find(host)?;
        let key = match &inputs.ssh_server {
            Some(_) => {
                let private = crate::guest::ssh::lab_key_path(dir, profile);
                let public = crate::guest::ssh::pub_path(&private);
                if !private.is_file() {
                    return Ok(false);
                }
                match fs::read_to_string(&public) {
                    Ok(line) => Some(line.trim().to_string()),
                    Err(_) => return Ok(false),
                }
            }
            None => None,
        };
        let fingerprint = inputs_fingerprint(
            &inputs.kernel,
            &inputs.modules,
            &inputs.busybox,
            &inputs.extras(key.as_deref()),
        );
        Ok(files_current(dir, profile, &fingerprint))
    };
    current().unwrap_or(false)
}

/// The sidecar recording what the boot files were built from.
pub fn inputs_path(initrd: &Path) -> PathBuf {
    let mut name = initrd.file_name().unwrap_or_default().to_os_string();
    name.push(".inputs");
    initrd.with_file_name(name)
}

/// Size and mtime of every input file (the guest agent's absence included), and a hash of
/// lab's own scripts.
fn inputs_fingerprint(
    kernel: &Path,
    modules_dir: &Path,
    busybox: &Path,
    extras: &Extras<'_>,
) -> String {
    use std::os::unix::fs::MetadataExt;
    let stamp = |p: &Path| match fs::metadata(p) {
        Ok(m) => format!(
            "{} {} {}.{}\n",
            p.display(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => format!("{} missing\n", p.display()),
    };
    let scripts = crate::names::fnv1a(format!("{INIT_SCRIPT}\0{DHCP_SCRIPT}").as_bytes());
    // Every file of the modules tree by size and mtime: a few thousand stat calls, a few
    // milliseconds, and no module can change unseen.
    let mut tree = String::new();
    let mut dirs = vec![modules_dir.to_path_buf()];
    let mut entries = Vec::new();
    while let Some(d) = dirs.pop() {
        let Ok(read) = fs::read_dir(&d) else { continue };
        for e in read.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                dirs.push(e.path());
            } else {
                entries.push((e.path(), m.size(), m.mtime(), m.mtime_nsec()));
            }
        }
    }
    entries.sort();
    for (p, size, mtime, nsec) in entries {
        tree.push_str(&format!("{} {size} {mtime}.{nsec}\n", p.display()));
    }
    let mut agent = String::new();
    for (name, program) in [
        ("qemu-ga", extras.qemu_ga),
        ("ssh-server", extras.ssh_server),
    ] {
        match program {
            Some(p) => agent.push_str(&stamp(p)),
            None => agent.push_str(&format!("{name} none\n")),
        }
    }
    agent.push_str(&format!(
        "key {:016x}\n",
        crate::names::fnv1a(extras.authorized_key.unwrap_or("").as_bytes())
    ));
    format!(
        "{}{}{agent}modules {:016x}\nscripts {scripts:016x} lab {}\n",
        stamp(kernel),
        stamp(busybox),
        crate::names::fnv1a(tree.as_bytes()),
        env!("CARGO_PKG_VERSION")
    )
}

fn refuse_foreign(path: &Path, profile: &str) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match Marker::read(path) {
        Some(m) if m.owner.is(profile) && m.role == VolumeRole::Boot => Ok(()),
        Some(m) => bail!(
            "{} exists and is lab's for profile {} (as {:?}), not a boot file of {profile}: \
             left alone",
            path.display(),
            m.owner.profile,
            m.role
        ),
        None => bail!(
            "{} exists and is not lab's: lab will not overwrite it",
            path.display()
        ),
    }
}

/// Put `bytes` at `path` unless the recorded digest says they are there already; true when
/// the file was (re)written.
fn install_boot_file(path: &Path, bytes: &[u8], profile: &str) -> Result<bool> {
    let digest = format!("{:x}", Sha256::digest(bytes));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let record = format!("{digest}  {name}\n");
    let digest_file = digest_path(path);
    if path.is_file()
        && Marker::read(path).is_some_and(|m| m.owner.is(profile) && m.role == VolumeRole::Boot)
        && fs::read_to_string(&digest_file).is_ok_and(|r| r == record)
    {
        ui::debug(format_args!("{} is up to date", path.display()));
        return Ok(false);
    }
    ui::debug(format_args!("writing {}", path.display()));
    // The digest goes last: a crash in between leaves a stale digest, so a rewrite.
    let _ = fs::remove_file(&digest_file);
    write_atomically(path, bytes, 0o644)?;
    let marker = Marker {
        owner: Owner {
            profile: profile.to_string(),
            vm: None,
        },
        role: VolumeRole::Boot,
    };
    write_atomically(
        &marker_path(path),
        (serde_json::to_string_pretty(&marker)? + "\n").as_bytes(),
        0o644,
    )?;
    write_atomically(&digest_file, record.as_bytes(), 0o644)?;
    Ok(true)
}

/// Write a sibling temporary file (tempfile's), flush it to disk, and rename it over `path`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let written = (|| -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".lab-")
            .permissions(fs::Permissions::from_mode(mode))
            .tempfile_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    })();
    written.with_context(|| format!("writing {}", path.display()))
}

/// The text of `/lab-base` on a profile's base disk: the profile and a digest of what the
/// base holds, so a clone can always be traced back to the base it came from.
pub fn base_marker_text(profile: &str, size: ByteSize) -> Result<String> {
    let content = format!(
        "lab smoke base v1\nprofile={profile}\nsize={}\n",
        size.bytes()
    );
    Ok(format!(
        "profile={profile}\ncontent=sha256:{:x}\n",
        Sha256::digest(content.as_bytes())
    ))
}

/// Build the base disk's content: a raw ext4 image of `size` holding `/lab-base`, made
/// with `mkfs.ext4 -d` (nothing is mounted). `workdir` is a scratch directory the caller
/// owns; the image is `<workdir>/lab-<profile>-base.raw`, for `Storage::import_base`,
/// after which the caller removes it.
pub fn build_base_image(workdir: &Path, profile: &str, size: ByteSize) -> Result<PathBuf> {
    let stem = names::base_volume(profile);
    let tree = workdir.join(format!("{stem}.tree"));
    let image = workdir.join(format!("{stem}.raw"));
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    let result = (|| -> Result<()> {
        fs::write(tree.join("lab-base"), base_marker_text(profile, size)?)
            .with_context(|| format!("writing {}", tree.join("lab-base").display()))?;
        // A fresh sparse file: mkfs then writes only metadata.
        let _ = fs::remove_file(&image);
        fs::File::create(&image)
            .and_then(|f| f.set_len(size.bytes()))
            .with_context(|| format!("creating {}", image.display()))?;
        let mkfs = Cmd::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                "lab-base",
                "-m",
                "0",
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(&tree)
            .arg(&image);
        mkfs.run().map_err(|err| {
            let hint = if err.is_not_found() {
                ": install e2fsprogs"
            } else {
                ""
            };
            anyhow::Error::new(err).context(format!(
                "making the {profile} base file system {}{hint}",
                image.display()
            ))
        })?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&tree);
    if let Err(err) = result {
        let _ = fs::remove_file(&image);
        return Err(err);
    }
    Ok(image)
}

/// The kernel command line of one smoke VM: the shared part plus
/// `lab.vm=<name> lab.profile=<profile>`, which `/init` reads from /proc/cmdline.
pub fn vm_cmdline(boot: &BootFiles, profile: &str, vm: &str) -> String {
    let own = format!("lab.vm={vm} lab.profile={profile}");
    match boot.cmdline.trim() {
        "" => own,
        shared => format!("{shared} {own}"),
    }
}

/// The ready line of `vm` in a console log, when it is there and carries an address. The
/// last one counts (a log may hold several boots).
pub fn parse_ready(console: &str, vm: &str) -> Option<Ready> {
    parse_report(console, vm)?.ready()
}

/// What `vm` reported in its latest boot, once its `LAB-READY` line is in the log: also
/// when it got no address or no disk, with the `LAB-ERROR` lines that say why. None while
/// the VM is still booting.
pub fn parse_report(console: &str, vm: &str) -> Option<GuestReport> {
    let mut report = None;
    let mut errors = Vec::new();
    for line in console.lines() {
        if let Some(message) = error_of(line, vm) {
            errors.push(message);
        } else if let Some((ip, disk)) = ready_of(line, vm) {
            report = Some(GuestReport {
                vm: vm.to_string(),
                ip,
                disk,
                errors: std::mem::take(&mut errors),
            });
        }
    }
    report
}

/// `LAB-ERROR vm=<vm> <message>` anywhere in a line (kernel messages can share it).
fn error_of(line: &str, vm: &str) -> Option<String> {
    let rest = &line[line.find("LAB-ERROR ")? + "LAB-ERROR ".len()..];
    let (word, message) = rest.split_once(' ').unwrap_or((rest, ""));
    (word.strip_prefix("vm=")? == vm).then(|| message.trim_end().to_string())
}

/// `LAB-READY vm=<vm> ip=<a.b.c.d|none> disk=<ok|missing>`: the address and disk state.
fn ready_of(line: &str, vm: &str) -> Option<(Option<Ipv4Addr>, bool)> {
    let rest = &line[line.find("LAB-READY ")? + "LAB-READY ".len()..];
    let (mut name, mut ip, mut disk) = (None, None, None);
    for word in rest.split_whitespace() {
        match word.split_once('=')? {
            ("vm", v) => name = Some(v),
            ("ip", "none") => ip = Some(None),
            ("ip", v) => ip = Some(Some(v.parse::<Ipv4Addr>().ok()?)),
            ("disk", "ok") => disk = Some(true),
            ("disk", "missing") => disk = Some(false),
            _ => return None,
        }
    }
    (name? == vm).then_some((ip?, disk?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> BootFiles {
        BootFiles {
            kernel: "/var/lib/lab/lab-smoke-vmlinuz".into(),
            initrd: "/var/lib/lab/lab-smoke-initrd.img".into(),
            cmdline: BASE_CMDLINE.into(),
        }
    }

    #[test]
    fn a_vm_cmdline_is_the_shared_part_plus_its_name_and_profile() {
        assert_eq!(
            vm_cmdline(&boot(), "smoke", "node1"),
            "console=ttyS0 quiet lab.vm=node1 lab.profile=smoke"
        );
        let bare = BootFiles {
            cmdline: "  ".into(),
            ..boot()
        };
        assert_eq!(
            vm_cmdline(&bare, "demo", "db"),
            "lab.vm=db lab.profile=demo"
        );
    }

    #[test]
    fn init_reads_the_words_vm_cmdline_writes() {
        let line = vm_cmdline(&boot(), "smoke", "node2");
        assert!(INIT_SCRIPT.contains("lab.vm=*) vm=${word#lab.vm=}"));
        assert!(INIT_SCRIPT.contains("lab.profile=*) profile=${word#lab.profile=}"));
        assert!(line.split_whitespace().any(|w| w == "lab.vm=node2"));
        assert!(line.split_whitespace().any(|w| w == "lab.profile=smoke"));
        assert!(line.split_whitespace().any(|w| w == "console=ttyS0"));
    }

    const CONSOLE: &str = "\
[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\r
[    3.120001] virtio_net virtio1 eth0: renamed\r
LAB-READY vm=node2 ip=10.213.166.11 disk=ok\r
LAB-READY vm=node1 ip=10.213.166.10 disk=ok\r
";

    #[test]
    fn the_ready_line_of_the_vm_asked_for_is_parsed() {
        assert_eq!(
            parse_ready(CONSOLE, "node1"),
            Some(Ready {
                vm: "node1".into(),
                ip: "10.213.166.10".parse().unwrap(),
                disk: true,
            })
        );
        assert_eq!(
            parse_ready(CONSOLE, "node2").unwrap().ip,
            Ipv4Addr::new(10, 213, 166, 11)
        );
        assert_eq!(parse_ready(CONSOLE, "node3"), None);
        assert_eq!(parse_ready(CONSOLE, "node"), None);
        assert_eq!(parse_ready("", "node1"), None);
    }

    #[test]
    fn a_line_still_being_written_is_not_ready() {
        assert_eq!(
            parse_ready("LAB-READY vm=node1 ip=10.0.2.15", "node1"),
            None
        );
        assert_eq!(parse_ready("LAB-READY vm=node1 ip=10.0.", "node1"), None);
        assert_eq!(
            parse_ready("LAB-READY vm=node1 ip=10.0.2.15 disk=o", "node1"),
            None
        );
        assert_eq!(
            parse_ready("LAB-READY vm=node1 ip=10.0.2.15 disk=ok junk", "node1"),
            None
        );
        assert_eq!(
            parse_ready("LAB-READY vm=node1 ip=10.0.2.15 disk=ok", "node1")
                .unwrap()
                .ip,
            Ipv4Addr::new(10, 0, 2, 15)
        );
    }

    #[test]
    fn a_ready_line_after_kernel_text_on_the_same_line_counts() {
        let console = "[    9.1] random: crng init doneLAB-READY vm=node1 ip=10.0.2.15 disk=ok\n";
        assert_eq!(
            parse_ready(console, "node1").unwrap().ip,
            Ipv4Addr::new(10, 0, 2, 15)
        );
    }

    #[test]
    fn failures_are_reported_with_their_reasons() {
        let console = "\
LAB-ERROR vm=node1 no DHCP lease on eth0: udhcpc: sending discover \n\
LAB-ERROR vm=node2 not mine\n\
LAB-ERROR vm=node1 mounting /dev/vda on /data: mount: mounting /dev/vda on /data failed: Invalid argument\n\
LAB-READY vm=node1 ip=none disk=missing\n";
        assert_eq!(parse_ready(console, "node1"), None);
        let report = parse_report(console, "node1").unwrap();
        assert_eq!(report.ip, None);
        assert!(!report.disk);
        assert_eq!(
            report.errors,
            [
                "no DHCP lease on eth0: udhcpc: sending discover",
                "mounting /dev/vda on /data: mount: mounting /dev/vda on /data failed: Invalid argument",
            ]
        );
        // Still booting: errors so far, no ready line, no report.
        assert_eq!(parse_report("LAB-ERROR vm=node1 no disk\n", "node1"), None);
        // An address without the disk is ready, and says so.
        let half = parse_ready("LAB-READY vm=node1 ip=10.0.2.15 disk=missing\n", "node1");
        assert!(!half.unwrap().disk);
    }

    #[test]
    fn the_latest_boot_counts() {
        let console = "\
LAB-ERROR vm=node1 no DHCP lease on eth0\n\
LAB-READY vm=node1 ip=none disk=ok\n\
[    0.000000] Linux version 6.1.0-56-amd64\n\
LAB-READY vm=node1 ip=10.213.166.10 disk=ok\n";
        let report = parse_report(console, "node1").unwrap();
        assert_eq!(report.ip, Some(Ipv4Addr::new(10, 213, 166, 10)));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }

    #[test]
    fn the_guest_scripts_parse_as_busybox_sh() {
        let busybox = host_busybox().expect("busybox-static is installed (setup-host.sh)");
        for (name, script) in [("init.sh", INIT_SCRIPT), ("default.script", DHCP_SCRIPT)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(name);
            fs::write(&path, script).unwrap();
            Cmd::new(&busybox)
                .args(["sh", "-n"])
                .arg(&path)
                .run()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh\n"));
        assert!(DHCP_SCRIPT.starts_with("#!/bin/sh\n"));
    }

    #[test]
    fn the_dhcp_script_applies_a_lease() {
        // Run the script's bound branch with `ip` stubbed: it must add the address with
        // its prefix, set the default route, write resolv.conf... into a scratch root.
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let log = dir.path().join("ip.log");
        fs::write(
            bin.join("ip"),
            format!("#!/bin/sh\necho \"ip $*\" >>{}\n", log.display()),
        )
        .unwrap();
        Cmd::new("chmod")
            .arg("+x")
            .arg(bin.join("ip"))
            .run()
            .unwrap();
        let script = DHCP_SCRIPT
            .replace(
                "/etc/resolv.conf",
                &dir.path().join("resolv.conf").display().to_string(),
            )
            .replace(
                "/run/lab-ip",
                &dir.path().join("lab-ip").display().to_string(),
            );
        let path = dir.path().join("default.script");
        fs::write(&path, script).unwrap();
        // The host's POSIX sh: busybox's own runs its `ip` applet whatever PATH says. The
        // guest test (tests/smoke_guest.rs) runs the script under busybox for real.
        Cmd::new("sh")
            .arg(&path)
            .arg("bound")
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("interface", "eth0")
            .env("ip", "10.0.2.15")
            .env("mask", "24")
            .env("broadcast", "10.0.2.255")
            .env("router", "10.0.2.2")
            .env("dns", "10.0.2.3")
            .env("domain", "lab.test")
            .run()
            .unwrap();
        let calls = fs::read_to_string(&log).unwrap();
        assert!(
            calls.contains("ip addr add 10.0.2.15/24 broadcast 10.0.2.255 dev eth0"),
            "{calls}"
        );
        assert!(
            calls.contains("ip route replace default via 10.0.2.2 dev eth0"),
            "{calls}"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("resolv.conf")).unwrap(),
            "search lab.test\nnameserver 10.0.2.3\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("lab-ip")).unwrap(),
            "10.0.2.15\n"
        );
    }

    /// A modules directory shaped like Debian's 6.1 kernel where the smoke drivers live,
    /// with af_packet built in; `extra` adds (dep line) entries.
    fn fake_modules(dir: &Path, extra: &[&str]) {
        let mut dep = String::from(
            "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n\
             kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
             kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/net/core/failover.ko:\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/lib/crc16.ko:\n\
             kernel/fs/mbcache.ko:\n\
             kernel/fs/jbd2/jbd2.ko:\n\
             kernel/crypto/crc32c_generic.ko:\n\
             kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n",
        );
        for line in extra {
            dep.push_str(line);
            dep.push('\n');
        }
        fake_modules_from(dir, &dep);
    }

    /// [`fake_modules`]' soft dependencies, aliases and built-ins over the modules of `dep`.
    fn fake_modules_from(dir: &Path, dep: &str) {
        crate::directboot::initramfs::fake_module_tree(
            dir,
            dep,
            "softdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\n",
            "alias crypto-crc32c crc32c_generic\n",
            "kernel/net/packet/af_packet.ko\n",
        );
    }

    #[test]
    fn init_loads_the_drivers_after_their_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("6.1.0-test");
        fs::create_dir(&modules).unwrap();
        fake_modules(
            &modules,
            &[
                "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
            ],
        );
        let mut ramfs = Initramfs::new();
        let loads = add_modules(&mut ramfs, &modules).unwrap();
        let order: Vec<(&str, bool)> = loads
            .iter()
            .map(|m| (m.name.as_str(), m.optional))
            .collect();
        assert_eq!(
            order,
            // kmod's order: each dependency before what needs it, jbd2's and ext4's
            // "pre:" soft dependency just before jbd2.
            [
                ("virtio_ring", false),
                ("virtio", false),
                ("virtio_pci_legacy_dev", false),
                ("virtio_pci_modern_dev", false),
                ("virtio_pci", false),
                ("failover", false),
                ("net_failover", false),
                ("virtio_net", false),
                ("virtio_blk", false),
                ("crc16", false),
                ("mbcache", false),
                ("crc32c_generic", true),
                ("jbd2", false),
                ("ext4", false),
                // virtio_console is not in this kernel: left out, no error.
                ("virtio_rng", true),
            ]
        );
        let list = module_list(&loads);
        assert!(list.starts_with(
            "/lib/modules/6.1.0-test/kernel/drivers/virtio/virtio_ring.ko required\n"
        ));
        assert!(list.contains(
            "/lib/modules/6.1.0-test/kernel/drivers/char/hw_random/virtio-rng.ko optional\n"
        ));
        assert_eq!(list.lines().count(), loads.len());
        for module in &loads {
            assert!(ramfs.contains(&module.path), "{}", module.path);
        }

        // A kernel without ext4 cannot run the smoke VMs: said up front.
        let broken = dir.path().join("6.1.0-broken");
        fs::create_dir(&broken).unwrap();
        let whole = tempfile::tempdir().unwrap();
        fake_modules(whole.path(), &[]);
        let dep: String = fs::read_to_string(whole.path().join("modules.dep"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("ext4"))
            .map(|l| format!("{l}\n"))
            .collect();
        fake_modules_from(&broken, &dep);
        let err = add_modules(&mut Initramfs::new(), &broken).unwrap_err();
        assert!(format!("{err:#}").contains("ext4"), "{err:#}");
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn boot_files_are_rewritten_only_when_their_content_changes() {
        let busybox = host_busybox().expect("busybox-static is installed (setup-host.sh)");
        let src = tempfile::tempdir().unwrap();
        let kernel = src.path().join("vmlinuz-6.1.0-test");
        fs::write(&kernel, "kernel one").unwrap();
        let modules = src.path().join("6.1.0-test");
        fs::create_dir(&modules).unwrap();
        fake_modules(&modules, &[]);
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("images");

        let boot = prepare_boot_files_from(
            &dir,
            "demo",
            &kernel,
            &modules,
            &busybox,
            &Extras::default(),
        )
        .unwrap();
        assert_eq!(boot.kernel, dir.join("lab-demo-vmlinuz"));
        assert_eq!(boot.initrd, dir.join("lab-demo-initrd.img"));
        assert_eq!(boot.cmdline, BASE_CMDLINE);
        assert_eq!(fs::read(&boot.kernel).unwrap(), b"kernel one");
        for file in [&boot.kernel, &boot.initrd] {
            let marker = Marker::read(file).expect("a marker beside each boot file");
            assert_eq!(marker.role, VolumeRole::Boot);
            assert!(marker.owner.is("demo"));
            let record = fs::read_to_string(digest_path(file)).unwrap();
            assert_eq!(
                record,
                format!(
                    "{:x}  {}\n",
                    Sha256::digest(fs::read(file).unwrap()),
                    file.file_name().unwrap().to_string_lossy()
                )
            );
        }
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 7, "no temporary file is left: {names:?}");

        // Same inputs: nothing is written.
        let (k, i) = (inode(&boot.kernel), inode(&boot.initrd));
        let again = prepare_boot_files_from(
            &dir,
            "demo",
            &kernel,
            &modules,
            &busybox,
            &Extras::default(),
        )
        .unwrap();
        assert_eq!(again, boot);
        assert_eq!((inode(&boot.kernel), inode(&boot.initrd)), (k, i));

        // A new kernel image replaces the copy and only it.
        fs::write(&kernel, "kernel two").unwrap();
        prepare_boot_files_from(
            &dir,
            "demo",
            &kernel,
            &modules,
            &busybox,
            &Extras::default(),
        )
        .unwrap();
        assert_eq!(fs::read(&boot.kernel).unwrap(), b"kernel two");
        assert_ne!(inode(&boot.kernel), k);
        assert_eq!(inode(&boot.initrd), i);

        // A changed module rebuilds the initramfs.
        let before = fs::read(&boot.initrd).unwrap();
        fs::write(modules.join("kernel/fs/ext4/ext4.ko"), "ext4, rebuilt").unwrap();
        prepare_boot_files_from(
            &dir,
            "demo",
            &kernel,
            &modules,
            &busybox,
            &Extras::default(),
        )
        .unwrap();
        assert_ne!(inode(&boot.initrd), i);
        assert_ne!(fs::read(&boot.initrd).unwrap(), before);

        // A file lab did not write is never overwritten, and neither is the other one.
        let theirs = kernel_path(&dir, "other");
        fs::write(&theirs, "someone's kernel").unwrap();
        let err = prepare_boot_files_from(
            &dir,
            "other",
            &kernel,
            &modules,
            &busybox,
            &Extras::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("is not lab's"), "{err:#}");
        assert_eq!(fs::read(&theirs).unwrap(), b"someone's kernel");
        assert!(!initrd_path(&dir, "other").exists());
    }

    #[test]
    fn the_guest_agent_goes_in_with_its_libraries_and_rebuilds_the_initramfs_when_it_changes() {
        let busybox = host_busybox().expect("busybox-static is installed (setup-host.sh)");
        let src = tempfile::tempdir().unwrap();
        let kernel = src.path().join("vmlinuz-6.1.0-test");
        fs::write(&kernel, "kernel").unwrap();
        let modules = src.path().join("6.1.0-test");
        fs::create_dir(&modules).unwrap();
        fake_modules(&modules, &[]);
        // A dynamically linked stand-in for qemu-ga: what matters is that it and every
        // library ldd names go in, and that a change to it is seen.
        let agent = src.path().join("qemu-ga");
        fs::copy("/bin/true", &agent).unwrap();
        let libs: Vec<String> = Cmd::new("ldd")
            .arg(&agent)
            .run()
            .unwrap()
            .stdout
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(str::to_string)
            .collect();
        assert!(!libs.is_empty(), "/bin/true is dynamically linked");
        let with_agent = Extras {
            qemu_ga: Some(&agent),
            ..Extras::default()
        };
        let ramfs = build_initramfs(&modules, &busybox, &with_agent).unwrap();
        assert!(ramfs.contains(&agent));
        // /init starts it from where it was on the host.
        let (named, _) = ramfs.file_entry(GUEST_AGENT_FILE).unwrap();
        assert_eq!(named, format!("{}\n", agent.display()).as_bytes());
        for lib in &libs {
            assert!(ramfs.contains(lib), "{lib}");
        }
        assert!(
            !build_initramfs(&modules, &busybox, &Extras::default())
                .unwrap()
                .contains(&agent)
        );

        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("images");
        let boot = prepare_boot_files_from(
            &dir,
            "demo",
            &kernel,
            &modules,
            &busybox,
            &Extras::default(),
        )
        .unwrap();
        let without = inode(&boot.initrd);
        // The agent appears (qemu-guest-agent installed): the initramfs is made again.
        prepare_boot_files_from(&dir, "demo", &kernel, &modules, &busybox, &with_agent).unwrap();
        let with = inode(&boot.initrd);
        assert_ne!(with, without);
        // Nothing changed: left alone.
        prepare_boot_files_from(&dir, "demo", &kernel, &modules, &busybox, &with_agent).unwrap();
        assert_eq!(inode(&boot.initrd), with);
        // The agent is upgraded (other bytes, a new mtime): made again.
        fs::copy("/bin/false", &agent).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        fs::File::options()
            .write(true)
            .open(&agent)
            .unwrap()
            .set_modified(later)
            .unwrap();
        prepare_boot_files_from(&dir, "demo", &kernel, &modules, &busybox, &with_agent).unwrap();
        assert_ne!(inode(&boot.initrd), with);
    }

    #[test]
    fn the_ssh_server_goes_in_with_roots_key_and_rebuilds_the_initramfs_when_the_key_changes() {
        let busybox = host_busybox().expect("busybox-static is installed (setup-host.sh)");
        let src = tempfile::tempdir().unwrap();
        let modules = src.path().join("6.1.0-test");
        fs::create_dir(&modules).unwrap();
        fake_modules(&modules, &[]);
        // A dynamically linked stand-in for dropbear: it and its libraries go in.
        let server = src.path().join("dropbear");
        fs::copy("/bin/true", &server).unwrap();
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9kZXZlbG9wZXJrZXlmb3J0ZXN0cw lab@demo";
        let extras = Extras {
            ssh_server: Some(&server),
            authorized_key: Some(key),
            ..Extras::default()
        };
        let ramfs = build_initramfs(&modules, &busybox, &extras).unwrap();
        assert!(ramfs.contains(&server));
        let (keys, mode) = ramfs.file_entry("/root/.ssh/authorized_keys").unwrap();
        assert_eq!(keys, format!("{key}\n").as_bytes());
        assert_eq!(mode, 0o600);
        assert_eq!(ramfs.dir_mode("/root/.ssh"), Some(0o700));
        assert_eq!(ramfs.dir_mode("/root"), Some(0o700));
        let (passwd, _) = ramfs.file_entry("/etc/passwd").unwrap();
        assert!(passwd.starts_with(b"root:x:0:0:root:/root:/bin/sh\n"));
        // /init starts it when it is there.
        let (init, _) = ramfs.file_entry("/init").unwrap();
        let init = String::from_utf8_lossy(init);
        assert!(init.contains("\"$server\" -R -s"), "{init}");
        let (named, _) = ramfs.file_entry(SSH_SERVER_FILE).unwrap();
        assert_eq!(named, format!("{}\n", server.display()).as_bytes());
        // Without a key, no authorized_keys.
        let bare = build_initramfs(&modules, &busybox, &Extras::default()).unwrap();
        assert!(!bare.contains("/root/.ssh/authorized_keys"));

        // A new key (lab's key made again) makes the initramfs again.
        let kernel = src.path().join("vmlinuz-6.1.0-test");
        fs::write(&kernel, "kernel").unwrap();
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("images");
        let boot =
            prepare_boot_files_from(&dir, "demo", &kernel, &modules, &busybox, &extras).unwrap();
        let first = inode(&boot.initrd);
        prepare_boot_files_from(&dir, "demo", &kernel, &modules, &busybox, &extras).unwrap();
        assert_eq!(inode(&boot.initrd), first);
        let other = Extras {
            authorized_key: Some(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOtherKeyOtherKeyOtherKeyOther lab@demo",
            ),
            ..extras
        };
        prepare_boot_files_from(&dir, "demo", &kernel, &modules, &busybox, &other).unwrap();
        assert_ne!(inode(&boot.initrd), first);
    }

    #[test]
    fn the_initramfs_is_the_same_bytes_every_time() {
        let busybox = host_busybox().expect("busybox-static is installed (setup-host.sh)");
        let dir = tempfile::tempdir().unwrap();
        fake_modules(dir.path(), &[]);
        let a = build_initramfs(dir.path(), &busybox, &Extras::default()).unwrap();
        let b = build_initramfs(dir.path(), &busybox, &Extras::default()).unwrap();
        assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
        for path in [
            "/init",
            "/bin/sh",
            "/bin/busybox",
            "/etc/udhcpc/default.script",
            MODULE_LIST,
            "/data",
            "/proc",
            "/sys",
            "/dev",
        ] {
            assert!(a.contains(path), "{path}");
        }
        for applet in [
            "udhcpc", "insmod", "mount", "ip", "hostname", "sleep", "sync",
        ] {
            assert!(
                ["bin", "sbin", "usr/bin", "usr/sbin"]
                    .iter()
                    .any(|d| a.contains(format!("/{d}/{applet}"))),
                "{applet}"
            );
        }
    }

    #[test]
    fn a_base_image_holds_lab_base() {
        let dir = tempfile::tempdir().unwrap();
        let image = build_base_image(dir.path(), "demo", ByteSize::mib(16)).unwrap();
        assert_eq!(image, dir.path().join("lab-demo-base.raw"));
        assert_eq!(fs::metadata(&image).unwrap().len(), 16 << 20);
        let listing: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(listing, ["lab-demo-base.raw"], "the staging tree is gone");
        let out = Cmd::new("debugfs")
            .args(["-R", "cat /lab-base"])
            .arg(&image)
            .run()
            .unwrap();
        assert_eq!(
            out.stdout,
            base_marker_text("demo", ByteSize::mib(16)).unwrap()
        );
        assert!(out.stdout.starts_with("profile=demo\ncontent=sha256:"));
        assert_ne!(
            base_marker_text("demo", ByteSize::mib(16)).unwrap(),
            base_marker_text("other", ByteSize::mib(16)).unwrap()
        );
        // Built again in place: replaced, not refused.
        build_base_image(dir.path(), "demo", ByteSize::mib(32)).unwrap();
        assert_eq!(fs::metadata(&image).unwrap().len(), 32 << 20);
    }
}
