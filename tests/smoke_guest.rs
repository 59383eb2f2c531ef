//! One smoke VM booted for real: lab's kernel copy and busybox initramfs, a qcow2 clone of
//! lab's ext4 base disk, QEMU's user-mode network (its DHCP server hands out 10.0.2.15),
//! TCG because KVM cannot be trusted on these machines. The guest must print its ready
//! line within a minute, and its write must land in its clone and not in the base. No
//! skipping: a guest that does not come up fails the test with its console.
//!
//! QEMU gets the guest agent's virtio serial port as libvirt gives it to lab's VMs
//! (`src/libvirt/xml.rs`: a unix socket channel named `org.qemu.guest_agent.0`), so the
//! qemu-ga lab puts into the initramfs (when the host has it) finds its port, and the test
//! talks to it through the socket.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use lab::directboot;
use lab::runner::Cmd;
use lab::size::ByteSize;
use lab::storage::qcow2::Qcow2Storage;
use lab::storage::{Storage, Volume};

const PROFILE: &str = "smoketest";
const VM: &str = "node1";
const READY_WITHIN: Duration = Duration::from_secs(60);
/// The name lab's domains give the agent's port, which `/init` looks for in sysfs.
const AGENT_PORT: &str = "org.qemu.guest_agent.0";
/// How long one answer of the agent may take.
const AGENT_ANSWERS_WITHIN: Duration = Duration::from_secs(5);

/// QEMU runs outside lab's runner: the test polls the console while it runs and kills it,
/// which `runner::Running` (wait with a deadline) does not offer. Killed on drop, so a
/// failing assertion never leaves a guest behind.
struct Guest {
    child: Child,
    started: Instant,
    console: PathBuf,
    stderr: PathBuf,
    /// QEMU's end of the guest agent's port: a unix socket QEMU listens on.
    agent: PathBuf,
}

impl Guest {
    fn console(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    fn failure(&self, what: &str) -> String {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("{what}\n--- console (last 40 lines) ---\n{tail}\n--- qemu stderr ---\n{stderr}")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
}

fn boot(dir: &Path, boot: &directboot::BootFiles, cmdline: &str, disk: &Path) -> Guest {
    let console = dir.join("console.log");
    let stderr = dir.join("qemu.stderr");
    let agent = dir.join("agent.sock");
    let started = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initrd)
        .arg("-append")
        .arg(cmdline)
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
        .args(["-netdev", "user,id=n0"])
        .args(["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"])
        // The agent's channel as libvirt makes it for a `<channel type='unix'>` with a
        // virtio target: a virtio-serial controller, one named port on a socket chardev.
        .arg("-chardev")
        .arg(format!(
            "socket,id=agent0,path={},server=on,wait=off",
            agent.display()
        ))
        .args(["-device", "virtio-serial-pci,id=serial0"])
        .arg("-device")
        .arg(format!(
            "virtserialport,bus=serial0.0,chardev=agent0,name={AGENT_PORT}"
        ))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("starting qemu-system-x86_64 (scripts/setup-host.sh installs qemu-system-x86)");
    Guest {
        child,
        started,
        console,
        stderr,
        agent,
    }
}

/// One command to the guest agent through QEMU's socket, and what it returned. The
/// protocol is one JSON object per line each way. A `guest-sync` with a fresh id goes
/// first and every line up to its echo is dropped, so an answer left in the channel by an
/// earlier attempt that timed out is never taken for this one (libvirt does the same).
fn agent_command(socket: &Path, command: &Value) -> Result<Value, String> {
    static SYNC_ID: AtomicU64 = AtomicU64::new(1);
    let id = (u64::from(std::process::id()) << 20) | SYNC_ID.fetch_add(1, Ordering::Relaxed);
    let stream = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(AGENT_ANSWERS_WITHIN))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(&stream);
    let sync = json!({"execute": "guest-sync", "arguments": {"id": id}});
    agent_send(&stream, &sync)?;
    while agent_receive(&mut reader, &sync)?["return"] != json!(id) {}
    agent_send(&stream, command)?;
    let answer = agent_receive(&mut reader, command)?;
    match answer.get("return") {
        Some(value) => Ok(value.clone()),
        None => Err(format!("{command} failed: {answer}")),
    }
}

fn agent_send(mut stream: &UnixStream, request: &Value) -> Result<(), String> {
    writeln!(stream, "{request}").map_err(|e| format!("sending {request}: {e}"))
}

fn agent_receive(reader: &mut BufReader<&UnixStream>, request: &Value) -> Result<Value, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err(format!("the agent's socket closed after {request}")),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}")),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(format!(
            "no answer to {request} within {}s",
            AGENT_ANSWERS_WITHIN.as_secs()
        )),
        Err(e) => Err(format!("no answer to {request}: {e}")),
    }
}

/// The guest agent's answer to `command`, asked again until it answers (qemu-ga has
/// daemonized by the time the guest is ready, but may not have opened its port yet).
fn ask_agent(guest: &Guest, command: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match agent_command(&guest.agent, &command) {
            Ok(value) => return value,
            Err(e) if Instant::now() > deadline => panic!(
                "{}",
                guest.failure(&format!("the guest agent never answered {command}: {e}"))
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Wait for the guest's report (its LAB-READY line); fail with its console when QEMU
/// exits first or the minute is up. Returns the report and how long it took.
fn wait_for_report(guest: &mut Guest, vm: &str) -> (directboot::GuestReport, Duration) {
    let started = guest.started;
    loop {
        if let Some(report) = directboot::parse_report(&guest.console(), vm) {
            return (report, started.elapsed());
        }
        if let Some(status) = guest.child.try_wait().unwrap() {
            panic!(
                "{}",
                guest.failure(&format!(
                    "QEMU exited ({status}) before the guest was ready"
                ))
            );
        }
        if started.elapsed() > READY_WITHIN {
            panic!(
                "{}",
                guest.failure(&format!(
                    "no LAB-READY line from {vm} within {}s",
                    READY_WITHIN.as_secs()
                ))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Boot files, a sealed base and one clone of it for `vm`, all under `dir`.
fn lab_disks(dir: &Path, vm: &str) -> (directboot::BootFiles, Duration, Volume, Volume) {
    let t = Instant::now();
    let boot_files = directboot::prepare_boot_files(&dir.join("boot"), PROFILE)
        .expect("preparing the boot files");
    let build_time = t.elapsed();
    let raw = directboot::build_base_image(&dir.join("work"), PROFILE, ByteSize::mib(64))
        .expect("building the base image");
    let storage = Qcow2Storage::new(dir.join("images"));
    let base = storage.import_base(PROFILE, &raw).unwrap();
    fs::remove_file(&raw).unwrap();
    storage.seal_base(PROFILE).unwrap();
    let clone = storage.clone_base(PROFILE, vm, &[]).unwrap();
    (boot_files, build_time, base, clone)
}

/// A file's content inside an ext4 image (journal replayed on a raw copy first), or None
/// when the file is not there.
fn ext4_file(image: &Path, format: &str, file: &str, scratch: &Path) -> Option<String> {
    let raw = scratch.join(format!(
        "{}.raw",
        image.file_name().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_file(&raw);
    Cmd::new("qemu-img")
        .args(["convert", "-U", "-f", format, "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .run()
        .unwrap();
    // The guest synced but was killed, not shut down: its last metadata may sit in the
    // journal, which debugfs does not replay. e2fsck does: 0 clean, 1 fixed.
    let fsck = Cmd::new("e2fsck")
        .args(["-f", "-y"])
        .arg(&raw)
        .capture()
        .unwrap();
    assert!(
        matches!(fsck.code, Some(0 | 1)),
        "e2fsck on {}: {:?}\n{}{}",
        raw.display(),
        fsck.code,
        fsck.stdout,
        fsck.stderr
    );
    let out = Cmd::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(&raw)
        .run()
        .unwrap();
    let missing = out.stderr.contains("File not found");
    assert!(
        missing || !out.stdout.is_empty(),
        "debugfs cat {file}: {}",
        out.stderr
    );
    (!missing).then_some(out.stdout)
}

#[test]
fn a_smoke_vm_boots_takes_its_lease_and_writes_to_its_own_clone() {
    let dir = tempfile::tempdir().unwrap();

    let t = Instant::now();
    let (boot_files, build_time, base, clone) = lab_disks(dir.path(), VM);
    let setup_time = t.elapsed();
    let kernel_size = fs::metadata(&boot_files.kernel).unwrap().len();
    let initrd_size = fs::metadata(&boot_files.initrd).unwrap().len();
    assert!(
        initrd_size < 16 << 20,
        "the initramfs stays small: {initrd_size} bytes"
    );
    // What the guest needs is in the archive (GNU cpio lists it).
    let listing = Cmd::new("cpio")
        .arg("-t")
        .stdin(fs::read(&boot_files.initrd).unwrap())
        .run()
        .unwrap()
        .stdout;
    for needed in [
        "init",
        "bin/busybox",
        "etc/udhcpc/default.script",
        "etc/lab/modules",
    ] {
        assert!(
            listing.lines().any(|l| l == needed),
            "{needed} in {listing}"
        );
    }
    // The guest agent goes in from the host (scripts/setup-host.sh installs
    // qemu-guest-agent; the test fails without it); the booted guest is asked through it.
    let agent = directboot::host_qemu_ga().unwrap().unwrap_or_else(|| {
        panic!(
            "qemu-ga is missing on this host: install qemu-guest-agent (scripts/setup-host.sh does)"
        )
    });
    let agent_file = directboot::GUEST_AGENT_FILE.trim_start_matches('/');
    assert!(
        listing.lines().any(|l| l == agent_file),
        "{agent_file} in the initramfs, for {}",
        agent.display()
    );
    for module in [
        "/virtio_net.ko",
        "/virtio_blk.ko",
        "/virtio_pci.ko",
        "/ext4.ko",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(module)),
            "{module} in the initramfs"
        );
    }

    let cmdline = directboot::vm_cmdline(&boot_files, PROFILE, VM);
    let mut guest = boot(dir.path(), &boot_files, &cmdline, &clone.path);
    let (report, ready_after) = wait_for_report(&mut guest, VM);
    let agent_answered = {
        let t = Instant::now();
        assert_eq!(
            ask_agent(&guest, json!({"execute": "guest-ping"})),
            json!({}),
            "guest-ping to {}",
            agent.display()
        );
        let answered = t.elapsed();
        // `lab trim` asks a running smoke VM's agent to fstrim its disk.
        let info = ask_agent(&guest, json!({"execute": "guest-info"}));
        let fstrim = info["supported_commands"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "guest-fstrim");
        assert_eq!(
            fstrim.map(|c| &c["enabled"]),
            Some(&json!(true)),
            "guest-fstrim enabled in the agent's guest-info: {info}"
        );
        answered
    };
    let console = guest.console();
    guest.stop();
    eprintln!(
        "its guest agent answered guest-ping {:.1}s after the ready line",
        agent_answered.as_secs_f64()
    );
    eprintln!(
        "boot files prepared in {:.2}s (kernel {kernel_size} bytes, initramfs {initrd_size} \
         bytes); with base and clone in {:.2}s; {VM} ready {:.1}s after QEMU started (TCG)",
        build_time.as_secs_f64(),
        setup_time.as_secs_f64(),
        ready_after.as_secs_f64()
    );

    assert!(
        report.errors.is_empty(),
        "{}",
        guest.failure(&format!("the guest reported errors: {:?}", report.errors))
    );
    assert_eq!(report.ip, Some(Ipv4Addr::new(10, 0, 2, 15)), "{console}");
    assert!(report.disk, "{console}");
    let ready = directboot::parse_ready(&console, VM).unwrap();
    assert_eq!(ready.ip.to_string(), "10.0.2.15");
    assert_eq!(
        console.matches("LAB-READY ").count(),
        1,
        "exactly one ready line: {console}"
    );
    assert!(console.contains("LAB-READY vm=node1 ip=10.0.2.15 disk=ok"));

    // The clone diverged from the base; the base is as built.
    let scratch = dir.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    assert_eq!(
        ext4_file(&clone.path, "qcow2", "/lab-vm", &scratch).as_deref(),
        Some("node1\n")
    );
    let base_text = directboot::base_marker_text(PROFILE, ByteSize::mib(64)).unwrap();
    assert_eq!(
        ext4_file(&clone.path, "qcow2", "/lab-base", &scratch).as_deref(),
        Some(base_text.as_str())
    );
    assert_eq!(ext4_file(&base.path, "qcow2", "/lab-vm", &scratch), None);
    assert_eq!(
        ext4_file(&base.path, "qcow2", "/lab-base", &scratch).as_deref(),
        Some(base_text.as_str())
    );

    // Same inputs again: the boot files are left as they are.
    let again = directboot::prepare_boot_files(&dir.path().join("boot"), PROFILE).unwrap();
    assert_eq!(again, boot_files);
}

#[test]
fn a_smoke_vm_on_another_profile_s_disk_says_so_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let vm = "stray";
    let (boot_files, _, _, clone) = lab_disks(dir.path(), vm);
    let cmdline = directboot::vm_cmdline(&boot_files, "other", vm);
    let mut guest = boot(dir.path(), &boot_files, &cmdline, &clone.path);
    let (report, _) = wait_for_report(&mut guest, vm);
    let console = guest.console();
    guest.stop();
    assert!(
        console.contains("LAB-READY vm=stray ip=10.0.2.15 disk=missing"),
        "{console}"
    );
    assert!(!report.disk);
    assert_eq!(report.ip, Some(Ipv4Addr::new(10, 0, 2, 15)));
    assert_eq!(report.errors.len(), 1, "{console}");
    assert!(
        report.errors[0].starts_with("/dev/vda is the base of another profile: profile=smoketest"),
        "{console}"
    );
    let scratch = dir.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    assert_eq!(ext4_file(&clone.path, "qcow2", "/lab-vm", &scratch), None);
}
