//! `lab trim` on a real smoke lab under the real libvirtd (TCG guests), measured from the
//! clone's allocation on the host:
//! - running VM: the guest writes 64 MiB of random data to /data and deletes it; `lab trim`
//!   (fstrim through the guest agent) gives at least 95% of it back;
//! - stopped VM: the same, then the VM is powered off; `lab trim` (offline fstrim and
//!   compaction) gives at least 95% back, and the guest's filesystem is intact;
//! - an image another program holds open is left alone, byte for byte;
//! - a running VM whose guest agent is gone is not trimmed, and not stopped, unless
//!   `--stop`, which shuts it down, trims it offline and starts it again;
//! - a base with no clone left is trimmed offline; a profile with nothing is said so.
//!
//! The guest is driven through its qemu guest agent (`guest-exec`), the same agent
//! `lab trim` uses: no test hook in the guest. The agent is the host's qemu-ga (package
//! qemu-guest-agent, which the setup script installs; the test fails without it), so the
//! discards travel from the guest's ext4 through virtio-blk and QEMU to the image on the
//! host. One VM, one test: CPU is scarce.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/lab_cli.rs"]
mod lab_cli;
use lab_cli::Lab;

const MIB: u64 = 1024 * 1024;
/// What the guest writes and deletes each time.
const WRITTEN: u64 = 64 * MIB;

fn smoke_profile(name: &str, images: &Path) -> String {
    format!(
        "name = \"{name}\"\n\
         [network]\nsubnet = \"auto\"\nauto_range = \"10.248.0.0/16\"\n\
         [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
         [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"256MiB\"\n\
         [[vm]]\nname = \"node\"\nmemory = \"256MiB\"\n",
        images.display()
    )
}

impl Lab {
    fn domain(&self) -> String {
        format!("lab-{}-node", self.name)
    }

    fn clone_image(&self) -> PathBuf {
        self.images().join(format!("lab-{}-node.qcow2", self.name))
    }

    fn console(&self) -> PathBuf {
        self.images()
            .join(format!("lab-{}-node.console.log", self.name))
    }

    fn base_image(&self) -> PathBuf {
        self.images().join(format!("lab-{}-base.qcow2", self.name))
    }

    /// `lab trim` as data, with the wall time it took.
    fn trim(&self, args: &[&str], code: i32) -> Value {
        let mut all = vec!["trim", self.profile()];
        all.extend_from_slice(args);
        let t = Instant::now();
        let report = self.json(&all, code);
        eprintln!(
            "lab trim {args:?}: {:.1} s, {} given back",
            t.elapsed().as_secs_f64(),
            report["given_back"]
        );
        report
    }
}

fn virsh(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// One guest agent command; its `return` value.
fn agent(domain: &str, command: &Value) -> Result<Value, String> {
    let (ok, out, err) = virsh(&["qemu-agent-command", domain, &command.to_string()]);
    if !ok {
        return Err(err);
    }
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    Ok(v["return"].clone())
}

/// Wait until the guest agent answers; its console in the failure.
fn wait_agent(domain: &str, console: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match agent(domain, &serde_json::json!({"execute": "guest-ping"})) {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!(
                "the guest agent of {domain} never answered: {e}\nits console ({}):\n{}",
                console.display(),
                std::fs::read_to_string(console).unwrap_or_default()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Run a shell script in the guest through its agent; its exit code and output.
fn guest_sh(domain: &str, script: &str) -> (i64, String) {
    let started = agent(
        domain,
        &serde_json::json!({"execute": "guest-exec", "arguments": {
            "path": "/bin/sh", "arg": ["-c", script], "capture-output": true}}),
    )
    .unwrap_or_else(|e| panic!("guest-exec {script:?} in {domain}: {e}"));
    let pid = started["pid"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = agent(
            domain,
            &serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
        )
        .unwrap();
        if status["exited"] == true {
            let text = |key: &str| {
                status[key]
                    .as_str()
                    .map(|b| String::from_utf8_lossy(&decode_base64(b)).into_owned())
                    .unwrap_or_default()
            };
            let out = format!("{}{}", text("out-data"), text("err-data"));
            return (status["exitcode"].as_i64().unwrap_or(-1), out);
        }
        assert!(
            Instant::now() < deadline,
            "{script:?} still runs in {domain}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .map(value)
        .collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= u32::from(*d) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// What the host's filesystem holds for the image (blocks, not length).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The guest writes 64 MiB of random data (nothing for a zero detector to skip) to its
/// disk and deletes it; returns the clone's allocation after the write and after the delete.
fn write_and_delete(domain: &str, image: &Path) -> (u64, u64) {
    let before = allocated(image);
    let t = Instant::now();
    let (rc, out) = guest_sh(
        domain,
        &format!(
            "dd if=/dev/urandom of=/data/fill bs=1048576 count={} 2>&1 && sync",
            WRITTEN / MIB
        ),
    );
    assert_eq!(rc, 0, "writing in the guest: {out}");
    let written = allocated(image);
    assert!(
        written >= before + WRITTEN * 95 / 100,
        "the guest's {} MiB did not land in {}: {before} -> {written}",
        WRITTEN / MIB,
        image.display()
    );
    let (rc, out) = guest_sh(domain, "rm /data/fill && sync && sleep 1 && sync");
    assert_eq!(rc, 0, "deleting in the guest: {out}");
    let deleted = allocated(image);
    eprintln!(
        "guest wrote and deleted {} MiB in {:.1} s: allocation {before} -> {written} -> {deleted}",
        WRITTEN / MIB,
        t.elapsed().as_secs_f64()
    );
    (written, deleted)
}

fn image_of<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

/// The guest's filesystem in the image is clean and still holds lab's files.
fn assert_filesystem_intact(image: &Path, scratch: &Path) {
    let raw = scratch.join("check.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck of the trimmed disk: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let cat = Command::new("debugfs")
        .args(["-R", "cat /lab-vm"])
        .arg(&raw)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout).trim(), "node");
    std::fs::remove_file(&raw).unwrap();
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn trim_gives_back_what_the_guest_deleted_running_and_stopped() {
    let lab = Lab::new("tr", smoke_profile);
    // The VMs' guest agent is the host's qemu-ga.
    lab.require_host_program("qemu-ga", "qemu-guest-agent");
    let domain = lab.domain();
    let image = lab.clone_image();

    // A profile that is not up: nothing to trim, said so, nothing fails.
    let (_, stderr) = lab.run(&["trim", lab.profile()], 0);
    assert!(stderr.contains("nothing to trim"), "{stderr}");

    let t = Instant::now();
    let up = lab.json(&["up", lab.profile()], 0);
    assert_eq!(up["vms"][0]["state"], "running", "{up:#}");
    wait_agent(&domain, &lab.console());
    eprintln!("lab up and guest agent: {:.1} s", t.elapsed().as_secs_f64());

    // 1. Running: fstrim through the guest agent.
    let (_, deleted) = write_and_delete(&domain, &image);
    let report = lab.trim(&[], 0);
    let node = image_of(&report, "node");
    assert_eq!(node["method"], "guest-agent", "{report:#}");
    assert_eq!(node["outcome"], "trimmed", "{report:#}");
    let after = allocated(&image);
    let back = deleted.saturating_sub(after);
    eprintln!("running VM: {back} bytes given back of {WRITTEN}");
    assert!(
        back >= WRITTEN * 95 / 100,
        "running VM: only {back} of {WRITTEN} bytes came back ({deleted} -> {after})\n{report:#}"
    );
    let reported = node["given_back"].as_u64().unwrap();
    assert!(
        reported >= WRITTEN * 95 / 100 && reported <= deleted,
        "lab reported {reported}, the host measured {back}"
    );
    assert_eq!(report["given_back"], node["given_back"]);
    // The base has a clone reading from it: left alone, and said why.
    let base = image_of(&report, "base");
    assert_eq!(base["outcome"], "left-alone");
    assert!(
        base["message"].as_str().unwrap().contains("1 clone (node)"),
        "{base}"
    );
    let links: Vec<&str> = node["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["link"].as_str().unwrap())
        .collect();
    assert_eq!(links, ["domain-disk", "guest-agent"]);
    assert!(
        node["chain"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["status"] == "ok"),
        "{node:#}"
    );

    // 2. Stopped: offline fstrim and compaction.
    let (_, deleted) = write_and_delete(&domain, &image);
    assert!(virsh(&["destroy", &domain]).0);
    let report = lab.trim(&["node"], 0);
    let node = image_of(&report, "node");
    assert_eq!(node["state"], "shut off", "{report:#}");
    assert_eq!(node["method"], "offline", "{report:#}");
    assert_eq!(node["outcome"], "trimmed", "{report:#}");
    assert_eq!(node["filesystems"][0]["fstype"], "ext4", "{report:#}");
    assert!(node["filesystems"][0]["trimmed"].as_u64().unwrap() >= WRITTEN);
    assert_eq!(
        report["images"].as_array().unwrap().len(),
        1,
        "a VM named: its image only"
    );
    let after = allocated(&image);
    let back = deleted.saturating_sub(after);
    eprintln!("stopped VM: {back} bytes given back of {WRITTEN}");
    assert!(
        back >= WRITTEN * 95 / 100,
        "stopped VM: only {back} of {WRITTEN} bytes came back ({deleted} -> {after})\n{report:#}"
    );
    assert_filesystem_intact(&image, lab.dir.path());
    let left: Vec<String> = std::fs::read_dir(lab.dir.path().join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("trim-"))
        .collect();
    assert!(left.is_empty(), "the offline trim left {left:?} behind");

    // 3. An image another program holds open (qemu-io here, a VM lab does not know of in
    //    life): left alone, not a byte changed.
    let mut holder = Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(&image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let digest = sha256(&image);
    let held = lab.trim(&["node"], 1);
    let digest_after = sha256(&image);
    let _ = holder.stdin.take().unwrap().write_all(b"quit\n");
    let _ = holder.wait();
    assert_eq!(digest_after, digest, "an image in use was changed");
    let node = image_of(&held, "node");
    assert_eq!(node["outcome"], "failed", "{held:#}");
    assert!(
        node["message"]
            .as_str()
            .unwrap()
            .contains("is open in another program"),
        "{held:#}"
    );

    // 4. Running without a guest agent: not trimmed and not stopped; --stop does it.
    assert!(virsh(&["start", &domain]).0);
    wait_agent(&domain, &lab.console());
    let (_, id_before, _) = virsh(&["domid", &domain]);
    // The agent cannot answer for its own end: started, not waited for.
    let _ = agent(
        &domain,
        &serde_json::json!({"execute": "guest-exec", "arguments": {
            "path": "/bin/sh", "arg": ["-c", "sleep 1; kill $(cat /run/qemu-ga.pid)"]}}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent(&domain, &serde_json::json!({"execute": "guest-ping"})).is_ok() {
        assert!(Instant::now() < deadline, "the guest agent would not stop");
        std::thread::sleep(Duration::from_millis(300));
    }
    let report = lab.trim(&["node"], 1);
    let node = image_of(&report, "node");
    assert_eq!(node["outcome"], "not-trimmed", "{report:#}");
    let message = node["message"].as_str().unwrap();
    assert!(message.contains("--stop"), "{message}");
    assert!(message.to_lowercase().contains("guest agent"), "{message}");
    assert_eq!(
        virsh(&["domid", &domain]).1,
        id_before,
        "a VM without agent was stopped"
    );
    let report = lab.trim(&["node", "--stop", "--shutdown-timeout", "2"], 0);
    let node = image_of(&report, "node");
    assert_eq!(node["method"], "offline", "{report:#}");
    assert_eq!(node["outcome"], "trimmed", "{report:#}");
    assert_eq!(node["restarted"], true, "{report:#}");
    assert!(
        node["message"].as_str().unwrap().contains("started again"),
        "{report:#}"
    );
    let (running, id_after, _) = virsh(&["domid", &domain]);
    assert!(running && id_after != id_before, "not started again");

    // 5. The base alone (the clone removed by lab down): trimmed offline, still sealed.
    lab.run(&["down", lab.profile()], 0);
    let report = lab.trim(&[], 0);
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{report:#}");
    assert_eq!(images[0]["name"], "base");
    assert_eq!(images[0]["outcome"], "trimmed", "{report:#}");
    assert_eq!(images[0]["method"], "offline");
    assert!(
        std::fs::metadata(lab.base_image())
            .unwrap()
            .permissions()
            .readonly(),
        "the base is no longer sealed"
    );
    let check = Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(lab.base_image())
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

/// A guest agent named that is no program: `lab up` says so before it makes anything.
#[test]
fn a_guest_agent_that_is_no_program_stops_lab_up_before_anything_is_made() {
    let mut lab = Lab::new("tg", smoke_profile);
    lab.env
        .push(("LAB_SMOKE_GUEST_AGENT".into(), "qemu-ga".into()));
    let (_, err) = lab.run(&["up", lab.profile()], 1);
    assert!(
        err.contains("LAB_SMOKE_GUEST_AGENT=qemu-ga: not an absolute path to a program"),
        "{err}"
    );
    lab.assert_nothing_made();
}

/// `lab trim` of a stopped VM of a real smoke lab, through the command: its clone holds
/// 64 MiB of data its ext4 has freed (written and deleted in a copy of the disk, put back
/// as the clone's content: the guest agent that would let the guest do it is not needed for
/// this path); `lab trim` gives at least 95% of it back, the filesystem is intact, and the
/// VM comes up again on its trimmed disk.
#[test]
fn lab_trim_gives_back_what_a_stopped_vms_filesystem_freed() {
    let lab = Lab::new("ts", smoke_profile);
    let domain = lab.domain();
    let image = lab.clone_image();
    let up = lab.json(&["up", lab.profile()], 0);
    assert_eq!(up["vms"][0]["state"], "running", "{up:#}");
    assert!(virsh(&["destroy", &domain]).0);

    // The clone's content, with a file written and deleted in its filesystem.
    let scratch = lab.dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let raw = scratch.join("disk.raw");
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
    };
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let fill = scratch.join("fill");
    let mut random = vec![0u8; WRITTEN as usize];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .unwrap();
    std::fs::write(&fill, &random).unwrap();
    let write = format!("write {} fill", fill.display());
    run("debugfs", &["-w", "-R", &write, raw.to_str().unwrap()]);
    run("debugfs", &["-w", "-R", "rm fill", raw.to_str().unwrap()]);
    // Back as the clone, over the same base (only what differs from it is stored).
    let base = std::fs::canonicalize(lab.base_image()).unwrap();
    let rebuilt = scratch.join("clone.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            "-B",
            base.to_str().unwrap(),
            "-F",
            "qcow2",
            raw.to_str().unwrap(),
            rebuilt.to_str().unwrap(),
        ],
    );
    std::fs::remove_file(&raw).unwrap();
    std::fs::copy(&rebuilt, &image).unwrap();
    std::fs::remove_file(&rebuilt).unwrap();
    let before = allocated(&image);
    assert!(
        before >= WRITTEN,
        "the freed data is not in the clone: {before}"
    );

    let report = lab.trim(&["node"], 0);
    let node = image_of(&report, "node");
    assert_eq!(node["state"], "shut off", "{report:#}");
    assert_eq!(node["method"], "offline", "{report:#}");
    assert_eq!(node["outcome"], "trimmed", "{report:#}");
    let after = allocated(&image);
    let back = before.saturating_sub(after);
    eprintln!(
        "lab trim of a stopped smoke VM: {before} -> {after} bytes, {back} back of {WRITTEN}"
    );
    assert!(
        back >= WRITTEN * 95 / 100,
        "only {back} of {WRITTEN} bytes came back ({before} -> {after})\n{report:#}"
    );
    let reported = node["given_back"].as_u64().unwrap();
    assert_eq!(
        reported, back,
        "lab reported {reported}, the host measured {back}"
    );
    assert_filesystem_intact(&image, lab.dir.path());
    // The VM comes up on its trimmed disk (its ready line says the disk mounted).
    let again = lab.json(&["up", lab.profile()], 0);
    assert_eq!(again["vms"][0]["state"], "running", "{again:#}");
}

/// The offline path alone, on real tools and no VM: ext4 blocks that hold deleted data come
/// back from a qcow2 image, the filesystem stays clean, and nothing stays attached.
#[test]
fn an_offline_trim_gives_back_what_a_filesystem_freed() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
    };
    run("mkfs.ext4", &["-q", "-F", raw.to_str().unwrap()]);
    // 32 MiB of random data written into the filesystem, then deleted: free for ext4, and
    // still there in the image.
    let data = dir.path().join("fill");
    let mut random = vec![0u8; (32 * MIB) as usize];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .unwrap();
    std::fs::write(&data, &random).unwrap();
    let write = format!("write {} fill", data.display());
    run("debugfs", &["-w", "-R", &write, raw.to_str().unwrap()]);
    run("debugfs", &["-w", "-R", "rm fill", raw.to_str().unwrap()]);
    let image = dir.path().join("disk.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
    );
    let before = allocated(&image);
    assert!(before >= 32 * MIB, "{before}");

    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let t = Instant::now();
    let filesystems = lab::storage::fstrim::offline_fstrim(&image, "qcow2", &work).unwrap();
    let after = allocated(&image);
    eprintln!(
        "offline trim: {} -> {} bytes in {:.2} s",
        before,
        after,
        t.elapsed().as_secs_f64()
    );
    assert_eq!(filesystems.len(), 1, "{filesystems:?}");
    assert_eq!(filesystems[0].part, "whole disk");
    assert_eq!(filesystems[0].fstype, "ext4");
    assert!(
        filesystems[0].trimmed.unwrap() >= 32 * MIB,
        "{filesystems:?}"
    );
    assert!(
        before - after >= 32 * MIB * 95 / 100,
        "only {} of {} bytes came back",
        before - after,
        32 * MIB
    );
    // Nothing left attached to the export, no daemon left running.
    let export = work.join("export");
    let loops = Command::new("losetup")
        .arg("--associated")
        .arg(&export)
        .output()
        .unwrap();
    assert!(loops.stdout.is_empty(), "{loops:?}");
    let pid: i32 = std::fs::read_to_string(work.join("qsd.pid"))
        .map(|t| t.trim().parse().unwrap())
        .unwrap_or(0);
    assert!(
        pid == 0 || !Path::new(&format!("/proc/{pid}")).exists(),
        "qemu-storage-daemon {pid} still runs"
    );
    let check = dir.path().join("check.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            check.to_str().unwrap(),
        ],
    );
    run("e2fsck", &["-fn", check.to_str().unwrap()]);
}

/// The block-device path (a thin volume's, in life; a loop device over a file stands in for
/// it here, as this kernel has no device-mapper): the filesystem on the device is trimmed
/// in place, no export, and the discards go down to what holds the device, here the file,
/// whose allocation falls. The device is left as it was: mounted nowhere, no loop device
/// on it.
#[test]
fn an_offline_trim_of_a_block_device_sends_the_discards_down() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("volume.raw");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    let run = |program: &str, args: &[&str]| -> String {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run("mkfs.ext4", &["-q", "-F", backing.to_str().unwrap()]);
    let data = dir.path().join("fill");
    let mut random = vec![0u8; (32 * MIB) as usize];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .unwrap();
    std::fs::write(&data, &random).unwrap();
    let write = format!("write {} fill", data.display());
    run("debugfs", &["-w", "-R", &write, backing.to_str().unwrap()]);
    run(
        "debugfs",
        &["-w", "-R", "rm fill", backing.to_str().unwrap()],
    );

    // The "volume": a block device over the file.
    let device = run("losetup", &["--find", "--show", backing.to_str().unwrap()]);
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).output();
        }
    }
    let _detach = Detach(device.clone());
    let before = allocated(&backing);
    assert!(before >= 32 * MIB, "{before}");

    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let filesystems =
        lab::storage::fstrim::offline_fstrim(Path::new(&device), "raw", &work).unwrap();
    let after = allocated(&backing);
    eprintln!("offline trim of block device {device}: {before} -> {after} bytes");
    assert_eq!(filesystems.len(), 1, "{filesystems:?}");
    assert_eq!(filesystems[0].fstype, "ext4");
    assert!(
        filesystems[0].trimmed.unwrap() >= 32 * MIB,
        "{filesystems:?}"
    );
    assert!(
        before - after >= 32 * MIB * 95 / 100,
        "only {} of {} bytes came back",
        before - after,
        32 * MIB
    );
    // No export was made, no daemon ran, and only our own loop device stands on the file:
    // the trim's own loop device on the device is gone.
    assert!(!work.join("export").exists());
    assert!(!work.join("qsd.pid").exists());
    let on_device = run(
        "losetup",
        &["--noheadings", "--output", "NAME", "--associated", &device],
    );
    assert!(on_device.is_empty(), "left on {device}: {on_device}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(work.to_str().unwrap()),
        "something is still mounted under {}",
        work.display()
    );
    run("e2fsck", &["-fn", &device]);

    // A trim of the device killed after its loop device was attached: the next run's
    // clearing finds the loop device by the recorded device and detaches it.
    let killed = dir.path().join("killed");
    std::fs::create_dir(&killed).unwrap();
    std::fs::write(killed.join("block"), &device).unwrap();
    let leftover = run("losetup", &["--find", "--show", "--partscan", &device]);
    struct Leftover(String);
    impl Drop for Leftover {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).output();
        }
    }
    let _leftover = Leftover(leftover.clone());
    lab::storage::fstrim::clear_leftovers(&killed).unwrap();
    let on_device = run(
        "losetup",
        &["--noheadings", "--output", "NAME", "--associated", &device],
    );
    assert!(
        on_device.is_empty(),
        "{leftover} was left on {device}: {on_device}"
    );
    assert!(
        !killed.exists(),
        "the killed trim's directory is still there"
    );
}
