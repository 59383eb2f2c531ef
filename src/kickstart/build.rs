//! Building a base from a kickstart: the installer's kernel and initrd from the install
//! source, the kickstart appended to the initrd as an extra cpio archive holding `/ks.cfg`
//! (what `virt-install --initrd-inject` does) and named by `inst.ks=file:/ks.cfg`, an
//! installer domain with the new base as its disk, its console followed until it powers
//! off, then sealing. A failure or a time-out removes the installer domain and the
//! half-built base: nothing half-made is left behind.
//!
//! The base records what it was built from (the rendered kickstart's SHA-256, the install
//! source, the disk size); [`needs_rebuild`] compares that with what the profile asks for
//! now.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::source::InstallSource;
use super::{ValidationError, seal};
use crate::directboot::initramfs::Initramfs;
use crate::libvirt::Libvirt;
use crate::libvirt::installer::{InstallerSpec, RunState, installer_xml};
use crate::libvirt::xml::to_xml;
use crate::names;
use crate::profile::Profile;
use crate::size::ByteSize;
use crate::storage::Storage;
use crate::ui;

/// Memory of the installer: anaconda keeps its stage2 image in RAM.
pub const INSTALLER_MEMORY: ByteSize = ByteSize(3 * crate::size::GIB);

/// The installer domain's name: `lab-<profile>-installer`.
pub fn installer_domain(profile: &str) -> String {
    format!("{}-{profile}-installer", names::PREFIX)
}

/// What a base was built from, kept beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub profile: String,
    pub template: String,
    /// SHA-256 of the rendered kickstart.
    pub kickstart_sha256: String,
    /// The install source as the profile gives it.
    pub install: String,
    /// What identifies the source's content (see [`InstallSource::identity`]).
    pub install_identity: String,
    pub disk: u64,
    /// SHA-256 over the three above: what [`needs_rebuild`] compares.
    pub inputs: String,
    /// Seconds since the epoch when the build finished.
    #[serde(default)]
    pub built_at: u64,
    #[serde(default)]
    pub build_seconds: u64,
}

impl BuildRecord {
    /// The record of what the profile asks for now: rendering, the source's identity.
    pub fn current(profile: &Profile) -> Result<BuildRecord> {
        let inputs = super::inputs_for(profile, crate::dirs::user_home().as_deref())?;
        let rendered = super::render_full(profile, &inputs)?;
        let source = source_of(profile)?;
        BuildRecord::of(profile, &rendered, &source)
    }

    fn of(
        profile: &Profile,
        rendered: &super::Rendered,
        source: &InstallSource,
    ) -> Result<BuildRecord> {
        let kickstart_sha256 = format!("{:x}", Sha256::digest(rendered.text.as_bytes()));
        let install_identity = source.identity()?;
        let disk = profile.base.disk.bytes();
        let inputs = format!(
            "{:x}",
            Sha256::digest(format!(
                "kickstart {kickstart_sha256}\nsource {install_identity}\ndisk {disk}\n"
            ))
        );
        Ok(BuildRecord {
            profile: profile.name.clone(),
            template: profile.base.kickstart.clone().unwrap_or_default(),
            kickstart_sha256,
            install: source.to_string(),
            install_identity,
            disk,
            inputs,
            built_at: 0,
            build_seconds: 0,
        })
    }

    /// What differs from `other` (the base's record), in words.
    pub fn changes_from(&self, other: &BuildRecord) -> Vec<String> {
        let mut out = Vec::new();
        if self.kickstart_sha256 != other.kickstart_sha256 {
            out.push("the rendered kickstart changed".to_string());
        }
        if self.install_identity != other.install_identity {
            out.push(format!(
                "the install source changed ({} -> {})",
                other.install_identity, self.install_identity
            ));
        }
        if self.disk != other.disk {
            out.push(format!(
                "the disk size changed ({} -> {})",
                ByteSize(other.disk),
                ByteSize(self.disk)
            ));
        }
        out
    }
}

fn source_of(profile: &Profile) -> Result<InstallSource> {
    match profile.base.install.as_deref() {
        Some(s) => InstallSource::parse(s),
        None => Err(crate::error::usage(format!(
            "{}: base.install: a kickstart install needs an install source",
            profile.locate("base.install")
        ))),
    }
}

/// Why the base of a kickstart profile must be (re)built, or None when it is current.
/// A base without a record (imported, or built by other means) is kept.
pub fn rebuild_reason(profile: &Profile, storage: &dyn Storage) -> Result<Option<String>> {
    if storage.base(&profile.name)?.is_none() {
        return Ok(Some("there is no sealed base".into()));
    }
    let Some(text) = storage.base_record(&profile.name)? else {
        return Ok(None);
    };
    let current = BuildRecord::current(profile)?;
    let Ok(recorded) = serde_json::from_str::<BuildRecord>(&text) else {
        return Ok(Some("its build record is unreadable".into()));
    };
    if recorded.inputs == current.inputs {
        return Ok(None);
    }
    let changes = current.changes_from(&recorded);
    Ok(Some(if changes.is_empty() {
        "what it was built from changed".into()
    } else {
        changes.join("; ")
    }))
}

/// True when `lab up` must build the base of this kickstart profile: there is none, or the
/// rendered kickstart, the install source or the disk size changed since it was built.
pub fn needs_rebuild(profile: &Profile, storage: &dyn Storage) -> Result<bool> {
    Ok(rebuild_reason(profile, storage)?.is_some())
}

/// Build, seal and record the base of a kickstart profile. `work_dir` holds the
/// installer's kernel, initrd and console log while it runs (QEMU must reach it: lab's
/// image directory is the natural place); `timeout` bounds the installer's run; `kvm`
/// says whether the installer runs under KVM or emulation (the verdict the plan took).
pub fn build_base(
    lv: &Libvirt,
    storage: &dyn Storage,
    profile: &Profile,
    work_dir: &Path,
    timeout: Duration,
    kvm: bool,
) -> Result<()> {
    let started = Instant::now();
    let p = profile.name.as_str();
    let inputs = super::inputs_for(profile, crate::dirs::user_home().as_deref())?;
    let rendered = super::render_full(profile, &inputs)?;
    match super::validate(profile, &rendered.text) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.downcast_ref::<ValidationError>(),
                Some(ValidationError::NotInstalled)
            ) =>
        {
            ui::warn(format_args!("the kickstart is not validated: {e}"));
        }
        Err(e) => return Err(crate::error::usage(format!("{e:#}"))),
    }
    let source = source_of(profile)?;
    source.check()?;
    let mut record = BuildRecord::of(profile, &rendered, &source)?;

    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    crate::libvirt::preflight_dir(work_dir)?;
    if let InstallSource::Iso(iso) = &source {
        crate::libvirt::preflight_dir(iso.parent().unwrap_or(Path::new("/")))?;
    }
    let domain = installer_domain(p);
    remove_leftover_installer(lv, &domain, p)?;
    remove_leftover_scratch(work_dir, p)?;
    let scratch = tempfile::Builder::new()
        .prefix(&scratch_prefix(p))
        .tempdir_in(work_dir)
        .with_context(|| format!("creating a scratch directory in {}", work_dir.display()))?;
    set_mode(scratch.path(), 0o755)?;
    // lab's mark: a build killed before it cleaned up leaves a directory the next removes.
    std::fs::write(scratch.path().join(SCRATCH_MARK), format!("{p}\n"))
        .with_context(|| format!("writing into {}", scratch.path().display()))?;

    ui::info(format_args!(
        "{p}: building the base from {} and {}",
        rendered.template, source
    ));
    let images = source.fetch_boot_images(scratch.path())?;
    inject_kickstart(&images.initrd, &rendered.text)?;

    let server = match &source {
        InstallSource::LocalTree { dir, .. } => Some(super::serve::TreeServer::start(dir)?),
        _ => None,
    };
    let cmdline = installer_cmdline(profile, &source, server.as_ref());

    // From here on a failure removes the domain and the unfinished base.
    let mut cleanup = Cleanup {
        lv,
        storage,
        profile: p,
        domain: &domain,
        armed: true,
    };
    let volume = storage.create_base(p, profile.base.disk)?;
    let empty = written_bytes(&volume.path)?;
    let console = scratch.path().join("console.log");
    let spec = InstallerSpec {
        name: &domain,
        profile: p,
        kernel: &images.kernel,
        initrd: &images.initrd,
        cmdline: &cmdline,
        disk: &volume,
        cdrom: match &source {
            InstallSource::Iso(iso) => Some(iso.as_path()),
            _ => None,
        },
        console: &console,
        memory: INSTALLER_MEMORY,
        vcpus: 2,
        kvm,
    };
    lv.define_domain(&domain, &to_xml(&installer_xml(&spec)))?;
    lv.start_domain(&domain)?;
    ui::info(format_args!(
        "{p}: installer {domain} started ({}); waiting up to {} s for it to power off",
        if kvm { "KVM" } else { "TCG emulation" },
        timeout.as_secs()
    ));
    wait_for_poweroff(lv, &domain, &console, Instant::now() + timeout)?;
    lv.remove_domain(&domain)?;
    drop(server);
    if written_bytes(&volume.path)? <= empty {
        bail!(
            "the installer powered off without writing to its disk{}",
            crate::libvirt::console::console_tail(&console)
        );
    }

    ui::info(format_args!(
        "{p}: sealing the base (offline fstrim, compaction)"
    ));
    let report = seal::trim_and_compact(&volume, scratch.path())?;
    for line in report.trimmed.iter().chain(&report.skipped) {
        ui::debug(format_args!("  {line}"));
    }
    record.built_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    record.build_seconds = started.elapsed().as_secs();
    storage.record_base(&volume, &(serde_json::to_string_pretty(&record)? + "\n"))?;
    storage.seal_base(p)?;
    cleanup.armed = false;
    ui::info(format_args!(
        "{p}: base built and sealed in {} s ({} on disk, {} before sealing)",
        started.elapsed().as_secs(),
        ByteSize(report.allocated_after),
        ByteSize(report.allocated_before)
    ));
    Ok(())
}

/// Removes the installer domain and the unfinished base unless the build finished.
struct Cleanup<'a> {
    lv: &'a Libvirt,
    storage: &'a dyn Storage,
    profile: &'a str,
    domain: &'a str,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = self.lv.remove_domain(self.domain) {
            ui::warn(format_args!("removing {}: {e:#}", self.domain));
        }
        if let Err(e) = self.storage.discard_unfinished_base(self.profile) {
            ui::warn(format_args!(
                "removing the unfinished base of {}: {e:#}",
                self.profile
            ));
        }
    }
}

/// The file that marks a build's scratch directory as lab's.
const SCRATCH_MARK: &str = ".lab-build";

fn scratch_prefix(profile: &str) -> String {
    format!("{}-{profile}-installer.", names::PREFIX)
}

/// Scratch directories of this profile's builds that were killed before they cleaned up
/// (the installer's kernel and initrd, a raw copy of the image): removed. Only directories
/// holding lab's mark for this profile are touched.
fn remove_leftover_scratch(work_dir: &Path, profile: &str) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return Ok(());
    };
    let prefix = scratch_prefix(profile);
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&prefix)
            && entry.file_type().is_ok_and(|t| t.is_dir())
            && std::fs::read_to_string(path.join(SCRATCH_MARK)).is_ok_and(|t| t.trim() == profile);
        if ours {
            ui::debug(format_args!(
                "removing {}, left by an interrupted build",
                path.display()
            ));
            // A build killed while sealing: its export and mounts go first, so the removal
            // never walks into the base's filesystem.
            crate::storage::fstrim::clear_leftovers(&path.join(seal::WORK_DIR))?;
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// An installer domain of this profile left by an interrupted build is removed; someone
/// else's domain of that name is never touched.
fn remove_leftover_installer(lv: &Libvirt, domain: &str, profile: &str) -> Result<()> {
    match lv.domain_owner(domain) {
        None => Ok(()),
        Some(Some(owner)) if owner.is(profile) => {
            ui::debug(format_args!(
                "removing {domain}, left by an interrupted build"
            ));
            lv.remove_domain(domain)
        }
        Some(_) => bail!("domain {domain} exists and is not lab's: lab will not touch it"),
    }
}

/// Append the kickstart to an initrd as one more (uncompressed newc) cpio archive holding
/// `/ks.cfg`. The kernel unpacks concatenated archives in order; the new one starts on a
/// 4-byte boundary, as it must after a compressed archive.
pub fn inject_kickstart(initrd: &Path, kickstart: &str) -> Result<()> {
    let archive = Initramfs::new()
        .file("/ks.cfg", kickstart, 0o644)
        .to_bytes()
        .context("making the kickstart archive")?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(initrd)
        .with_context(|| format!("opening {}", initrd.display()))?;
    let len = file.metadata()?.len();
    let pad = (4 - (len % 4) as usize) % 4;
    file.write_all(&[0u8; 3][..pad])?;
    file.write_all(&archive)
        .with_context(|| format!("appending the kickstart to {}", initrd.display()))?;
    Ok(())
}

/// The installer's kernel command line: the serial console, the kickstart, where the
/// installation tree is, and the profile's own `[base] cmdline`.
pub fn installer_cmdline(
    profile: &Profile,
    source: &InstallSource,
    server: Option<&super::serve::TreeServer>,
) -> String {
    let mut words = vec![
        "console=ttyS0,115200n8".to_string(),
        "inst.ks=file:/ks.cfg".to_string(),
        "inst.text".to_string(),
    ];
    match (source, server) {
        (InstallSource::Iso(_), _) => words.push("inst.repo=cdrom".into()),
        (InstallSource::RemoteTree(url), _) => words.push(format!("inst.repo={url}")),
        (InstallSource::LocalTree { .. }, Some(s)) => {
            words.push(format!("inst.repo={}", s.guest_url()))
        }
        (InstallSource::LocalTree { .. }, None) => {}
    }
    if let Some(extra) = profile
        .base
        .cmdline
        .as_deref()
        .filter(|c| !c.trim().is_empty())
    {
        words.push(extra.trim().to_string());
    }
    words.join(" ")
}

/// Follow the console until the domain stops; the deadline ends it. The installer must
/// power off: a reboot, a crash or a kernel panic is a failed build.
fn wait_for_poweroff(lv: &Libvirt, domain: &str, console: &Path, deadline: Instant) -> Result<()> {
    let mut follower = ConsoleFollower::new(console);
    let state = loop {
        follower.show_new_lines();
        let state = lv.run_state(domain)?;
        if state != RunState::Running {
            break state;
        }
        if Instant::now() >= deadline {
            follower.show_new_lines();
            bail!(
                "the installer {domain} did not power off in time: the build was given up and \
                 what it made removed{}",
                crate::libvirt::console::console_tail(console)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    follower.show_new_lines();
    let text = String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned();
    if text.contains("Kernel panic") {
        bail!(
            "the installer's kernel panicked{}",
            crate::libvirt::console::console_tail(console)
        );
    }
    if text.contains("reboot: Restarting system") {
        bail!(
            "the installer rebooted instead of powering off (the kickstart must end with \
             `poweroff`){}",
            crate::libvirt::console::console_tail(console)
        );
    }
    if !state.powered_off() {
        let how = match &state {
            RunState::Off(reason) => format!("stopped ({reason})"),
            _ => "disappeared".to_string(),
        };
        bail!(
            "the installer {domain} {how} instead of powering off{}",
            crate::libvirt::console::console_tail(console)
        );
    }
    Ok(())
}

/// What an image holds (a qcow2 file's size on the host; a block device counts as
/// written), to tell an installer that wrote nothing.
fn written_bytes(image: &Path) -> Result<u64> {
    if image.is_file() {
        Ok(crate::storage::qcow2::info(image)?.actual_size.unwrap_or(0))
    } else {
        Ok(u64::MAX)
    }
}

/// New lines of the installer's console, shown as they come.
struct ConsoleFollower {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl ConsoleFollower {
    fn new(path: &Path) -> Self {
        ConsoleFollower {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    fn show_new_lines(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return;
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(last_newline) = self.partial.rfind('\n') else {
            return;
        };
        let complete: String = self.partial.drain(..=last_newline).collect();
        for line in complete.as_bytes().lines().map_while(Result::ok) {
            let line = printable(&line);
            if line.trim().is_empty() {
                continue;
            }
            // The kernel's own messages (`[    4.6] ...`) only at -v: the installer's
            // lines are the progress.
            if line.trim_start().starts_with('[') && line.contains("] ") {
                ui::debug(format_args!("  installer | {line}"));
            } else {
                ui::info(format_args!("  installer | {line}"));
            }
        }
    }
}

/// A console line without terminal escape sequences and carriage returns.
pub fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // CSI: parameters, then one final byte in @..~.
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                } else {
                    // Intermediate bytes (`(` of `ESC ( B`), then one final byte.
                    while chars.peek().is_some_and(|d| (' '..='/').contains(d)) {
                        chars.next();
                    }
                    chars.next();
                }
            }
            '\r' => out.clear(),
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_their_escapes() {
        assert_eq!(
            printable("\u{1b}[1;32mStarting installer\u{1b}[0m, one moment..."),
            "Starting installer, one moment..."
        );
        assert_eq!(printable("progress 10%\rprogress 20%"), "progress 20%");
        assert_eq!(printable("\u{1b}(Bplain"), "plain");
    }

    #[test]
    fn the_kickstart_is_appended_as_an_aligned_archive() {
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initrd.img");
        std::fs::write(&initrd, b"compressed-bytes").unwrap(); // 16 bytes, then 3 more
        std::fs::OpenOptions::new()
            .append(true)
            .open(&initrd)
            .unwrap()
            .write_all(b"xyz")
            .unwrap();
        inject_kickstart(&initrd, "text\npoweroff\n").unwrap();
        let bytes = std::fs::read(&initrd).unwrap();
        assert_eq!(&bytes[..19], b"compressed-bytesxyz");
        assert_eq!(bytes[19], 0, "padded to a 4-byte boundary");
        assert_eq!(&bytes[20..26], b"070701");
        // cpio itself reads the appended archive back.
        let out = crate::runner::Cmd::new("cpio")
            .args(["-i", "--to-stdout", "ks.cfg"])
            .stdin(bytes[20..].to_vec())
            .run()
            .unwrap();
        assert_eq!(out.stdout, "text\npoweroff\n");
    }

    #[test]
    fn only_lab_s_scratch_directories_of_the_profile_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("lab-demo-installer.abc123");
        let other_profile = dir.path().join("lab-other-installer.abc123");
        let unmarked = dir.path().join("lab-demo-installer.theirs");
        for d in [&ours, &other_profile, &unmarked] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("vmlinuz"), "kernel").unwrap();
        }
        std::fs::write(ours.join(SCRATCH_MARK), "demo\n").unwrap();
        std::fs::write(other_profile.join(SCRATCH_MARK), "other\n").unwrap();
        remove_leftover_scratch(dir.path(), "demo").unwrap();
        assert!(!ours.exists());
        assert!(other_profile.join("vmlinuz").exists());
        assert!(unmarked.join("vmlinuz").exists());
    }

    #[test]
    fn the_command_line_names_kickstart_and_tree() {
        let p = Profile::parse(
            "name = \"demo\"\n[base]\nkickstart = \"centos-stream9.ks.j2\"\n\
             install = \"https://mirror.example/os/\"\ncmdline = \"inst.sshd\"\n[[vm]]\nname = \"a\"\n",
            crate::profile::ProfileSource::BuiltIn,
        )
        .unwrap();
        let source = InstallSource::parse("https://mirror.example/os/").unwrap();
        assert_eq!(
            installer_cmdline(&p, &source, None),
            "console=ttyS0,115200n8 inst.ks=file:/ks.cfg inst.text \
             inst.repo=https://mirror.example/os/ inst.sshd"
        );
        let iso = InstallSource::parse("/isos/cs9.iso").unwrap();
        assert!(installer_cmdline(&p, &iso, None).contains(" inst.repo=cdrom "));
    }
}
