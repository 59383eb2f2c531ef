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
//! - `/etc/machine-id` is the VM's own (not the base's empty one), the root filesystem fills
//!   the 4 GiB disk, the base's and the VM's user-data both ran (marker files), and the
//!   guest agent answers `guest-ping` through libvirt;
//! - `lab reset` gives the VM a new host key and machine-id, the same FQDN and address,
//!   and lab's ssh trusts it at once (its known_hosts file is the same CA line);
//! - the same identity applied over SSH (`VmIdentity::script`, the kickstart path) serves
//!   a new certified host key at once.
//!
//! It prints boot-to-ready and cloud-init times. Run under `flock /work/heavy.lock`: one TCG
//! Debian boot takes minutes on a shared 2-core machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

const LAB: &str = env!("CARGO_BIN_EXE_lab");
const URI: &str = "qemu:///system";

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

fn must(lab: &Lab, ip: &str, command: &str) -> String {
    let (ok, out) = ssh(lab, ip, command);
    assert!(ok, "ssh {command}: {out}");
    out.trim().to_string()
}

#[test]
fn a_debian_cloud_vm_takes_the_seed_lab_wrote() {
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
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), pinned);

    // The same identity applied over SSH, as to a VM that has no seed (a kickstart base):
    // a new host key, served at once and trusted through the same CA.
    let images = lab.images();
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
    let id = lab::guest::identity::new_vm_identity(&images, &shared, &lab.name, "web").unwrap();
    let (ok, out) = ssh_with(&lab, &ip, "sh -s", &id.script(&shared));
    assert!(ok, "the identity script: {out}");
    id.trust(&images, &shared).unwrap();
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), pinned);
    let served = must(&lab, &ip, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    assert_eq!(served, id.host_public);
    assert_ne!(served, new_key);
    assert_eq!(
        must(
            &lab,
            &ip,
            &format!("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes root@{fqdn} hostname -f")
        ),
        fqdn
    );

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
