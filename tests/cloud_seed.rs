//! A cloud-init VM of the real Debian 12 cloud image (tests/support/debian-image.sh, cached
//! under /var/cache/lab-test), brought up by `lab up` on the real libvirtd under TCG: lab
//! imports the image as the base, clones it as a qcow2 overlay grown to 4 GiB, writes the
//! VM's NoCloud seed (its identity, the profile's user-data merged in) and attaches it as a
//! read-only CD-ROM, and waits for cloud-init. Then, over the VM's real OpenSSH, with
//! `StrictHostKeyChecking=yes` and lab's known_hosts file for the VM (which holds only the
//! lab's host CA, nothing pinned):
//! - `cloud-init status --wait` is done, from the seed lab wrote;
//! - `hostname -f` is the FQDN, `/etc/hosts` names the lab's VMs;
//! - root logs in to its own FQDN with the lab's peer key, checking the host certificate
//!   against `/etc/ssh/ssh_known_hosts`;
//! - `/etc/machine-id` is the one lab chose (not the base's empty one), the root filesystem fills
//!   the 4 GiB disk, the base's and the VM's user-data both ran (marker files), and the
//!   guest agent answers `guest-ping` through libvirt;
//! - `lab reset` gives the VM a new host key and machine-id, the same FQDN and address,
//!   and lab's ssh trusts it at once (its known_hosts file is the same CA line);
//! - the identity step of a kickstart VM, through the code `lab up` runs for it
//!   (`provision::apply_identity`), on the VM made to look like a fresh kickstart clone
//!   (the base's hostname, no lab hosts, no peer key, its first host key pinned): the FQDN,
//!   `/etc/hosts`, a new machine-id, a new host key certified by the lab's CA (lab's
//!   known_hosts then the CA alone), root's peer SSH to the VM by name, the step recorded;
//!   a second run skips it and changes nothing.
//!
//! `lab up` SIGKILLed right after it wrote the VM's seed, or as it begins writing it: `lab
//! down` leaves nothing (an unfinished seed included), `lab up --dry-run` keeps a whole seed
//! for the disk it was made with, and `lab up` finishes the lab, cloud-init done from the
//! seed, an unfinished one never attached.
//!
//! It prints boot-to-ready and cloud-init times. Run under `flock /work/heavy.lock`: one TCG
//! Debian boot takes minutes on a shared 2-core machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

#[path = "support/lab_cli.rs"]
mod lab_cli;

const LAB: &str = env!("CARGO_BIN_EXE_lab");
const URI: &str = "qemu:///system";

/// One emulated Debian guest at a time on the two-core machines: three at once take each
/// past lab's ready timeout.
static GUESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Lab {
    dir: tempfile::TempDir,
    profile: PathBuf,
    name: String,
}

impl Lab {
    fn new(tag: &str, base: &str, vm: &str) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("{tag}{}", std::process::id() % 100_000);
        let profile = dir.path().join(format!("{name}.toml"));
        // `@DIR@` in the base's keys: this lab's directory.
        let base = base.replace("@DIR@", &dir.path().display().to_string());
        std::fs::write(
            &profile,
            format!(
                "name = \"{name}\"\n\
                 [network]\nsubnet = \"auto\"\nauto_range = \"10.253.0.0/16\"\n\
                 [storage]\nbackend = \"qcow2\"\ndir = \"{images}\"\n\
                 [base]\n{base}\ncloud_init = true\ndisk = \"4GiB\"\n\
                 [[vm]]\nname = \"web\"\nmemory = \"1GiB\"\n{vm}\n",
                images = dir.path().join("images").display()
            ),
        )
        .unwrap();
        Lab { dir, profile, name }
    }

    fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(LAB);
        c.args(args)
            .env("LAB_CONNECT", URI)
            .env("LAB_LOCK", self.dir.path().join("lab.lock"))
            // No user keys: root takes lab's key and the peer key only.
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path());
        c
    }

    /// Run `lab ARGS PROFILE`; (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut all = args.to_vec();
        all.insert(1, self.profile.to_str().unwrap());
        let out = self.cmd(&all).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn domain(&self) -> String {
        format!("lab-{}-web", self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Leave nothing behind, whatever happened.
        let _ = self.run(&["down", "--purge"]);
    }
}

/// The cached test image (built when the cache is cold).
fn debian_image() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/debian-image.sh");
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// ssh as root to `ip` with lab's key and lab's known_hosts file for the VM, checking the
/// host key strictly; (ok, stdout + stderr).
fn ssh(lab: &Lab, ip: &str, command: &str) -> (bool, String) {
    ssh_with(lab, ip, command, "")
}

/// As [`ssh`], `stdin` on the remote command's standard input.
fn ssh_with(lab: &Lab, ip: &str, command: &str, stdin: &str) -> (bool, String) {
    use std::io::Write;
    let images = lab.images();
    let mut child = Command::new("ssh")
        .arg("-i")
        .arg(images.join(format!("lab-{}-ssh-key", lab.name)))
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            images
                .join(format!("{}.known_hosts", lab.domain()))
                .display()
        ))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
        ])
        .arg(format!("HostKeyAlias={}", lab.domain()))
        .arg(format!("root@{ip}"))
        .arg(command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The user-data of a seed, read back with lab's ISO reader.
fn seed_user_data(seed: &Path) -> String {
    let out = seed.with_extension("user-data");
    lab::kickstart::iso9660::extract(seed, "user_data", &out).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    text
}

fn must(lab: &Lab, ip: &str, command: &str) -> String {
    let (ok, out) = ssh(lab, ip, command);
    assert!(ok, "ssh {command}: {out}");
    out.trim().to_string()
}

#[test]
fn a_debian_cloud_vm_takes_the_seed_lab_wrote() {
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let image = debian_image();
    let lab = Lab::new(
        "cs",
        &format!(
            "image = \"{image}\"\n\
             user_data = \"\"\"\n#cloud-config\nruncmd:\n  - touch /root/from-base\n\"\"\""
        ),
        "user_data = \"\"\"\nruncmd: [touch /root/from-vm]\nwrite_files:\n  - path: /etc/lab-test\n    content: merged\n\"\"\"",
    );
    let t = Instant::now();
    let (code, stdout, stderr) = lab.run(&["up", "--json"]);
    assert_eq!(code, Some(0), "lab up:\n{stdout}\n{stderr}");
    let up_s = t.elapsed().as_secs_f64();
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let vm = &report["vms"][0];
    let ip = vm["ip"].as_str().unwrap().to_string();
    let ms = |k: &str| vm["timings_ms"][k].as_u64().unwrap();
    eprintln!(
        "lab up: {up_s:.1} s; seed written in {} ms; start to DHCP lease {:.1} s, lease to \
         cloud-init done {:.1} s: boot-to-ready {:.1} s",
        ms("seed"),
        ms("ready") as f64 / 1000.0,
        ms("cloud_init") as f64 / 1000.0,
        (ms("ready") + ms("cloud_init")) as f64 / 1000.0
    );

    // The seed: private to root on the host, handed to QEMU by libvirt.
    let seed = lab.images().join(format!("{}.seed.iso", lab.domain()));
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&seed).unwrap();
    assert_eq!(meta.mode() & 0o077, 0, "{} is private", seed.display());
    let known_hosts = lab.images().join(format!("{}.known_hosts", lab.domain()));
    let pinned = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(pinned.starts_with("@cert-authority "), "{pinned}");

    assert_eq!(must(&lab, &ip, "cloud-init status --wait"), "status: done");
    let fqdn = format!("web.{}.lab", lab.name);
    assert_eq!(must(&lab, &ip, "hostname -f"), fqdn);
    assert_eq!(must(&lab, &ip, "hostname"), "web");
    let hosts = must(&lab, &ip, "cat /etc/hosts");
    assert!(hosts.contains(&format!("{ip}\t{fqdn}\tweb")), "{hosts}");
    // VM to VM: root's peer key, the host certificate checked against the lab's CA.
    assert_eq!(
        must(
            &lab,
            &ip,
            &format!("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes root@{fqdn} hostname -f")
        ),
        fqdn
    );
    assert_eq!(
        must(
            &lab,
            &ip,
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes root@web true"
        ),
        ""
    );
    let machine_id = must(&lab, &ip, "cat /etc/machine-id");
    assert!(
        machine_id.len() == 32 && machine_id.chars().all(|c| c.is_ascii_hexdigit()),
        "the VM's own machine-id, not the base's empty one: {machine_id:?}"
    );
    assert!(
        seed_user_data(&seed).contains(&machine_id),
        "the machine-id lab chose, in its seed"
    );
    let root_bytes: u64 = must(&lab, &ip, "df -B1 --output=size / | tail -n 1")
        .parse()
        .unwrap();
    assert!(
        root_bytes > 3800 * 1024 * 1024,
        "root filesystem grown to the 4 GiB disk: {root_bytes} bytes"
    );
    assert_eq!(
        must(
            &lab,
            &ip,
            "ls /root/from-base /root/from-vm && cat /etc/lab-test"
        ),
        "/root/from-base\n/root/from-vm\nmerged"
    );
    assert_eq!(
        must(&lab, &ip, "ls /etc/ssh/ssh_host_*_key"),
        "/etc/ssh/ssh_host_ed25519_key",
        "lab's host key only"
    );
    let pong = Command::new("virsh")
        .args(["-c", URI, "qemu-agent-command", &lab.domain()])
        .arg(r#"{"execute":"guest-ping"}"#)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&pong.stdout).trim(),
        r#"{"return":{}}"#,
        "{}",
        String::from_utf8_lossy(&pong.stderr)
    );
    // Written to the disk by systemd, not a transient one mounted over the file.
    assert_eq!(must(&lab, &ip, "findmnt -n /etc/machine-id || true"), "");
    // Nothing was pinned beside the CA: every login above checked the certificate.
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), pinned);

    // A CA that did not sign the VM's key: lab's ssh refuses the VM and says why.
    let other_ca = lab.dir.path().join("other-ca");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&other_ca)
            .status()
            .unwrap()
            .success()
    );
    let other = std::fs::read_to_string(lab.dir.path().join("other-ca.pub")).unwrap();
    std::fs::write(
        &known_hosts,
        format!("@cert-authority {},web {other}", lab.domain()),
    )
    .unwrap();
    let (code, _, stderr) = lab.run(&["ssh", "web", "--", "true"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("the lab's CA did not sign"), "{stderr}");
    std::fs::write(&known_hosts, &pinned).unwrap();
    let (code, _, stderr) = lab.run(&["ssh", "web", "--", "true"]);
    assert_eq!(code, Some(0), "{stderr}");

    // A reset VM: a new disk, a new seed, a new host key and machine-id, the same name and
    // address, trusted at once through the CA.
    let host_key = must(&lab, &ip, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    let t = Instant::now();
    let (code, stdout, stderr) = lab.run(&["reset", "web"]);
    assert_eq!(code, Some(0), "lab reset:\n{stdout}\n{stderr}");
    eprintln!("lab reset web: {:.1} s to ready", t.elapsed().as_secs_f64());
    assert_eq!(must(&lab, &ip, "cloud-init status --wait"), "status: done");
    assert_eq!(must(&lab, &ip, "hostname -f"), fqdn);
    let new_key = must(&lab, &ip, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    assert_ne!(new_key, host_key, "a new host key");
    let new_id = must(&lab, &ip, "cat /etc/machine-id");
    assert!(
        new_id.len() == 32 && new_id != machine_id,
        "{new_id} after {machine_id}"
    );
    assert!(seed_user_data(&seed).contains(&new_id), "from the new seed");
    // journald went over to it.
    must(
        &lab,
        &ip,
        &format!("test -d /run/log/journal/{new_id} || test -d /var/log/journal/{new_id}"),
    );
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), pinned);

    // The identity step of a kickstart VM, through the code `lab up` runs for it
    // (`provision::apply_identity`, after `wait_ssh`): first the VM is made to look like a
    // fresh clone of a kickstart base (the base's hostname, no lab hosts, no peer key, no
    // step records), and lab's known_hosts file for it is gone, as for a new disk.
    let images = lab.images();
    let before_key = must(&lab, &ip, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    let before_id = must(&lab, &ip, "cat /etc/machine-id");
    must(
        &lab,
        &ip,
        "hostnamectl set-hostname base && printf '127.0.0.1\\tlocalhost\\n' >/etc/hosts && \
         rm -rf /root/.ssh/id_ed25519 /root/.ssh/id_ed25519.pub /etc/ssh/ssh_known_hosts \
         /var/lib/lab/steps",
    );
    assert_eq!(must(&lab, &ip, "hostname"), "base");
    std::fs::remove_file(&known_hosts).unwrap();
    let target = lab::guest::ssh::Target {
        vm: "web".into(),
        domain: lab.domain(),
        ip: ip.clone(),
        key: images.join(format!("lab-{}-ssh-key", lab.name)),
        known_hosts: known_hosts.clone(),
    };
    lab::guest::connect::wait_ssh(
        &target,
        Instant::now() + std::time::Duration::from_secs(120),
        "",
    )
    .unwrap();
    let first_seen = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(
        !first_seen.contains("@cert-authority"),
        "the first key is pinned, as for a kickstart clone: {first_seen}"
    );
    let login =
        std::fs::read_to_string(images.join(format!("lab-{}-ssh-key.pub", lab.name))).unwrap();
    let shared = lab::guest::identity::lab_identity(
        &images,
        &lab.name,
        &format!("{}.lab", lab.name),
        &[("web".into(), ip.parse().unwrap())],
        vec![login.trim().to_string()],
    )
    .unwrap();
    let lines = std::sync::Mutex::new(Vec::new());
    let on_line = |step: &str, line: &str| lines.lock().unwrap().push(format!("{step}: {line}"));
    let t = Instant::now();
    let applied =
        lab::guest::provision::apply_identity(&target, &images, &shared, &on_line).unwrap();
    eprintln!("identity over SSH: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(
        (applied.name.as_str(), applied.outcome.as_str()),
        ("identity", "done"),
        "{:?}",
        lines.lock().unwrap()
    );
    // Lab's known_hosts file now holds the CA alone, and every login below checks the
    // VM's certificate against it.
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), pinned);
    assert_eq!(must(&lab, &ip, "hostname"), "web");
    assert_eq!(must(&lab, &ip, "hostname -f"), fqdn);
    let hosts = must(&lab, &ip, "cat /etc/hosts");
    assert!(hosts.contains(&format!("{ip}\t{fqdn}\tweb")), "{hosts}");
    let after_id = must(&lab, &ip, "cat /etc/machine-id");
    assert!(
        after_id.len() == 32 && after_id != before_id,
        "{after_id} after {before_id}"
    );
    let after_key = must(&lab, &ip, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    assert_ne!(after_key, before_key, "a new host key");
    let mut made = lab::names::host_key(&images, &lab.domain()).into_os_string();
    made.push(".pub");
    let made = std::fs::read_to_string(made).unwrap();
    assert_eq!(after_key, made.trim(), "the key lab made and the CA signed");
    let cert = must(
        &lab,
        &ip,
        "ssh-keygen -L -f /etc/ssh/lab_host_ed25519_key-cert.pub",
    );
    assert!(cert.contains("host certificate"), "{cert}");
    for name in [lab.domain().as_str(), "web", fqdn.as_str(), ip.as_str()] {
        assert!(cert.contains(name), "{name}: {cert}");
    }
    // VM to VM by name, as packstack's controller logs in to each compute: root's peer
    // key, the host certificate checked against the lab's CA.
    for name in ["web", fqdn.as_str()] {
        assert_eq!(
            must(
                &lab,
                &ip,
                &format!(
                    "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes root@{name} hostname -f"
                )
            ),
            fqdn
        );
    }
    assert_eq!(
        must(&lab, &ip, "cat /var/lib/lab/steps/identity"),
        shared.step_digest("web")
    );
    // A second `lab up`: recorded, so skipped; nothing on the VM changes.
    let again = lab::guest::provision::apply_identity(&target, &images, &shared, &on_line).unwrap();
    assert_eq!(again.outcome, "skipped");
    assert_eq!(
        must(&lab, &ip, "cat /etc/ssh/ssh_host_ed25519_key.pub"),
        after_key
    );
    assert_eq!(must(&lab, &ip, "cat /etc/machine-id"), after_id);
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), pinned);

    let (code, _, stderr) = lab.run(&["down", "--purge"]);
    assert_eq!(code, Some(0), "{stderr}");
    let left: Vec<PathBuf> = std::fs::read_dir(lab.images())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn user_data_that_is_not_yaml_is_refused_at_its_profile_line() {
    let lab = Lab::new(
        "cb",
        "image = \"@DIR@/lab.toml\"",
        "user_data = \"\"\"\nruncmd:\n  - a\n b: [\n\"\"\"",
    );
    std::fs::write(lab.dir.path().join("lab.toml"), "not read").unwrap();
    let (code, stdout, stderr) = lab.run(&["up", "--dry-run"]);
    assert_ne!(code, Some(0), "{stdout}");
    let toml = lab.profile.display().to_string();
    assert!(stderr.contains(&format!("{toml}:")), "{stderr}");
    assert!(stderr.contains("vm[0].user_data"), "{stderr}");
    assert!(stderr.contains("not valid YAML, line "), "{stderr}");
    assert!(!Path::new(&lab.images()).exists(), "nothing made");
}

#[test]
fn a_cloud_init_that_ends_in_error_fails_lab_up_naming_the_vm_and_its_log() {
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let image = debian_image();
    let lab = Lab::new(
        "ce",
        &format!("image = \"{image}\""),
        "user_data = \"\"\"\nruncmd:\n  - echo lab-broken-step; exit 3\n\"\"\"",
    );
    let (code, stdout, stderr) = lab.run(&["up", "--timeout", "900"]);
    assert_eq!(code, Some(1), "lab up:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("web: cloud-init ended in error"),
        "the VM and what happened are named:\n{stderr}"
    );
    assert!(
        stderr.contains("cloud-init-output.log") && stderr.contains("lab-broken-step"),
        "the tail of its cloud-init log is shown:\n{stderr}"
    );
    // lab ready says the same, and is not ready.
    let (code, stdout, stderr) = lab.run(&["ready", "--json"]);
    assert_eq!(code, Some(3), "lab ready:\n{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "cloud-init")
        .unwrap_or_else(|| panic!("no cloud-init finding: {report}"));
    assert_eq!(finding["ok"], false, "{report}");
    assert!(
        finding["detail"].as_str().unwrap().contains("error"),
        "{report}"
    );
}

/// The test image with cloud-init turned off (`/etc/cloud/cloud-init.disabled`, as an
/// image without cloud-init behaves: nothing reads the seed), made in `dir` through a loop
/// mount of its root partition (1 MiB in, as debian-image.sh makes it).
fn image_without_cloud_init(image: &str, dir: &Path) -> PathBuf {
    let raw = dir.join("no-cloud-init.raw");
    let out = dir.join("no-cloud-init.qcow2");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let run = |cmd: &mut Command| {
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw", image])
        .arg(&raw));
    run(Command::new("mount")
        .args(["-o", "loop,offset=1048576"])
        .arg(&raw)
        .arg(&mnt));
    let touched = std::fs::write(mnt.join("etc/cloud/cloud-init.disabled"), "");
    run(Command::new("umount").arg(&mnt));
    touched.unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&out));
    std::fs::remove_file(&raw).unwrap();
    out
}

#[test]
fn an_image_without_cloud_init_is_named_as_such() {
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let image = debian_image();
    let scratch = tempfile::tempdir().unwrap();
    let bare = image_without_cloud_init(&image, scratch.path());
    let lab = Lab::new("cn", &format!("image = \"{}\"", bare.display()), "");
    let t = Instant::now();
    let (code, stdout, stderr) = lab.run(&["up", "--timeout", "150"]);
    assert_eq!(code, Some(1), "lab up:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("web: not ready") && stderr.contains("an image without cloud-init"),
        "the VM is named, and why it may never answer:\n{stderr}"
    );
    eprintln!("refused after {:.0} s", t.elapsed().as_secs_f64());
}

#[test]
fn a_lab_up_killed_around_the_seed_is_undone_by_lab_down_or_finished_by_lab_up() {
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let image = debian_image();
    let lab = Lab::new("ck", &format!("image = \"{image}\""), "");
    let seed = lab.images().join(format!("{}.seed.iso", lab.domain()));
    let up_killed_at = |text: &str| {
        let profile = lab.profile.to_str().unwrap();
        let running = lab_cli::Running::start(lab.cmd(&["-v", "up", profile]));
        running.until_said(text);
        running.kill()
    };
    let files = || -> Vec<String> {
        std::fs::read_dir(lab.images())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let domains = || {
        let out = Command::new("virsh")
            .args(["-c", URI, "list", "--all", "--name"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let down_leaves_nothing = |after: &str| {
        let (code, _, stderr) = lab.run(&["down", "--purge"]);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(files(), Vec::<String>::new(), "lab down after {after}");
        assert!(!domains().contains(&lab.domain()), "after {after}");
    };
    // What a kill in the middle of writing a seed leaves: its unfinished file, beside it.
    let unfinished = lab
        .images()
        .join(format!(".{}.seed.iso.k1ll3d.partial", lab.domain()));

    // 1. Killed once the seed is written (its domain being defined, or about to be).
    let said = up_killed_at("lab: done write seed");
    assert!(seed.is_file(), "{said}");
    let (code, stdout, stderr) = lab.run(&["up", "--dry-run", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let plan: Value = serde_json::from_str(&stdout).unwrap();
    let actions = plan["actions"].as_array().unwrap();
    let seed_ops: Vec<&Value> = actions
        .iter()
        .chain(plan["unchanged"].as_array().unwrap())
        .filter(|a| a["object"] == "seed")
        .map(|a| &a["op"])
        .collect();
    assert_eq!(
        seed_ops,
        ["keep"],
        "the seed of the disk it was made for: {plan:#}"
    );
    // The domain, defined a moment after the seed or not: started, or kept running.
    eprintln!(
        "killed after the seed was written; the next plan for the domain: {:?}",
        actions
            .iter()
            .chain(plan["unchanged"].as_array().unwrap())
            .filter(|a| a["object"] == "domain")
            .map(|a| format!("{} ({})", a["op"], a["why"]))
            .collect::<Vec<_>>()
    );
    down_leaves_nothing("lab up killed after the seed was written");

    // 2. Killed as it begins writing the seed; an unfinished seed beside it goes too.
    let said = up_killed_at("lab: write seed");
    eprintln!(
        "killed as the seed was being written: {:?} left",
        files()
            .iter()
            .filter(|f| f.contains("seed"))
            .collect::<Vec<_>>()
    );
    std::fs::write(&unfinished, b"CD001 half").unwrap();
    assert!(said.contains("lab: write seed"), "{said}");
    down_leaves_nothing("lab up killed while writing the seed");

    // 3. Killed after the seed, an unfinished one beside it: lab up finishes the lab, the
    //    VM boots from the whole seed, cloud-init done.
    up_killed_at("lab: done write seed");
    std::fs::write(&unfinished, b"CD001 half").unwrap();
    let t = Instant::now();
    let (code, stdout, stderr) = lab.run(&["up", "--json"]);
    assert_eq!(code, Some(0), "lab up:\n{stdout}\n{stderr}");
    eprintln!("lab up after the kill: {:.0} s", t.elapsed().as_secs_f64());
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let ip = report["vms"][0]["ip"].as_str().unwrap().to_string();
    assert_eq!(must(&lab, &ip, "cloud-init status --wait"), "status: done");
    assert_eq!(must(&lab, &ip, "hostname"), "web");
    let xml = Command::new("virsh")
        .args(["-c", URI, "dumpxml", &lab.domain()])
        .output()
        .unwrap();
    let xml = String::from_utf8_lossy(&xml.stdout);
    assert!(
        xml.contains(&format!("file='{}'", seed.display())) && !xml.contains(".partial"),
        "{xml}"
    );
    down_leaves_nothing("lab up finished the lab");
}
