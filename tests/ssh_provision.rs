//! `lab ssh`, provisioning steps and `lab ready` on a smoke lab under the real libvirtd
//! (TCG guests). The smoke VMs carry the host's dropbear as their SSH server and lab's own
//! key for root.
//!
//! The test that logs in needs the host's dropbear (package dropbear-bin, which the setup
//! script installs) and fails without it; the client is the user's OpenSSH. The refusals
//! (an unknown VM, a lab that is not up) need only libvirtd.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

#[path = "support/lab_cli.rs"]
mod lab_cli;
use lab_cli::Lab;

/// The test profile, with `broken`'s command.
fn profile_text(name: &str, images: &Path, broken: &str) -> String {
    format!(
        "name = \"{name}\"\n\
         [network]\nsubnet = \"auto\"\nauto_range = \"10.249.0.0/16\"\n\
         [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
         [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
         [vars]\ngreeting = \"hello\"\n\
         [[vm]]\nname = \"node\"\nmemory = \"256MiB\"\nrole = \"web\"\n\
         [[provision]]\nname = \"greet\"\nrun = \"echo {{{{ greeting }}}} from {{{{ vm }}}} >/root/greeting\"\n\
         [[provision]]\nname = \"broken\"\nrun = \"echo failing-now; {broken}\"\nrole = \"web\"\ntimeout = 20\n",
        images.display()
    )
}

/// `lab ssh PROFILE VM` with no command, as a person runs it: on a terminal (`script`
/// gives it one), `input` typed. Returns the exit status and what the terminal showed.
fn interactive_ssh(lab: &Lab, vm: &str, input: &str) -> (Option<i32>, String) {
    let inner = lab.cmd(&["ssh", lab.profile(), vm]);
    let line = format!("{} ssh {} {vm}", lab_cli::LAB, lab.profile());
    let mut script = Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            script.env(key, value);
        }
    }
    script
        .env("TERM", "xterm")
        .current_dir(inner.get_current_dir().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = script.spawn().expect("script (util-linux) is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut shown = String::from_utf8_lossy(&out.stdout).into_owned();
    shown.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), shown)
}

fn new_lab(tag: &str) -> Lab {
    Lab::new(tag, |name, images| profile_text(name, images, "exit 7"))
}

impl Lab {
    fn write_profile(&self, broken: &str) {
        std::fs::write(
            &self.profile,
            profile_text(&self.name, &self.images(), broken),
        )
        .unwrap();
    }
}

fn finding<'a>(report: &'a Value, check: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} finding in {report:#}"))
}

/// What the `check` finding of `lab ready`'s report says.
fn detail<'a>(report: &'a Value, check: &str) -> &'a str {
    finding(report, check)["detail"].as_str().unwrap()
}

#[test]
fn ssh_and_ready_refuse_what_is_not_there() {
    let lab = new_lab("sr");
    // A VM the profile does not have: a usage error naming its VMs.
    let (_, err) = lab.run(&["ssh", lab.profile(), "nosuch", "--", "true"], 2);
    assert!(
        err.contains("no VM \"nosuch\"") && err.contains("node"),
        "{err}"
    );
    // Not up: said so, with what to run.
    let (_, err) = lab.run(&["ssh", lab.profile(), "node", "--", "true"], 2);
    assert!(err.contains("not running"), "{err}");
    // ... as the profile was named: the suggested command runs as it is.
    assert!(
        err.contains(&format!("`lab up {}`", lab.profile())),
        "{err}"
    );
    // Not ready: exit 3, the VM named with why.
    let report = lab.json(&["ready", lab.profile()], 3);
    assert_eq!(report["ready"], false);
    let ssh = finding(&report, "ssh");
    assert_eq!(ssh["vm"], "node");
    assert!(
        ssh["detail"].as_str().unwrap().contains("not running"),
        "{report:#}"
    );
    // Nothing was made.
    lab.assert_nothing_made();

    // An SSH server named that is no program: lab up says so before it makes anything.
    let mut bad = new_lab("sb");
    bad.env
        .push(("LAB_SMOKE_SSH_SERVER".into(), "bin/sshd".into()));
    let (_, err) = bad.run(&["up", bad.profile()], 1);
    assert!(
        err.contains("LAB_SMOKE_SSH_SERVER=bin/sshd: not an absolute path to a program"),
        "{err}"
    );
    bad.assert_nothing_made();
}

#[test]
fn ssh_provisioning_and_ready_on_a_smoke_lab() {
    let lab = new_lab("sp");
    // The VMs' SSH server is the host's dropbear.
    lab.require_host_program("dropbear", "dropbear-bin");

    // 1. Up: the VM boots, `greet` runs, `broken` fails and is named with its output.
    let (_, err) = lab.run(&["up", lab.profile()], 1);
    assert!(
        err.contains("node: provision step broken failed with exit status 7"),
        "{err}"
    );
    assert!(err.contains("failing-now"), "{err}");

    // 2. lab ssh: one command, its output and exit status.
    let (out, _) = lab.run(
        &["ssh", lab.profile(), "node", "--", "cat", "/root/greeting"],
        0,
    );
    assert_eq!(out.trim(), "hello from node");
    lab.run(
        &["ssh", lab.profile(), "node", "--", "sh", "-c", "exit 3"],
        3,
    );
    // 255 is also ssh's own failure: a command's 255 still comes back as 255.
    let (_, err) = lab.run(&["ssh", lab.profile(), "node", "--", "exit 255"], 255);
    assert!(!err.contains("could not reach"), "{err}");
    let known = lab
        .images()
        .join(format!("lab-{}-node.known_hosts", lab.name));
    assert!(known.is_file(), "the VM's host key was not pinned");
    // A session, as a person opens one: a terminal in the VM, the shell's exit status back.
    let (code, shown) = interactive_ssh(&lab, "node", "tty; echo answer-$((6 * 7)); exit 4\n");
    assert_eq!(code, Some(4), "{shown}");
    assert!(shown.contains("answer-42"), "{shown}");
    assert!(
        shown.contains("/dev/pts/"),
        "no terminal in the VM: {shown}"
    );

    // 3. Not ready while a step is not done.
    let report = lab.json(&["ready", lab.profile()], 3);
    assert_eq!(finding(&report, "ssh")["ok"], true, "{report:#}");
    let steps = finding(&report, "steps");
    assert_eq!(steps["ok"], false);
    assert!(
        steps["detail"].as_str().unwrap().contains("broken"),
        "{report:#}"
    );

    // 4. The step fixed: the done one is skipped, the fixed one runs; ready.
    lab.write_profile("true");
    let up = lab.json(&["up", lab.profile()], 0);
    let outcomes: Vec<(&str, &str)> = up["provision"]["node"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [("greet", "skipped"), ("broken", "done")],
        "{up:#}"
    );
    let report = lab.json(&["ready", lab.profile()], 0);
    assert_eq!(report["ready"], true, "{report:#}");

    // 4b. The records are on the VM's disk: after a restart nothing runs again.
    let domain = format!("lab-{}-node", lab.name);
    let destroyed = Command::new("virsh")
        .args(["-c", "qemu:///system", "destroy", &domain])
        .output()
        .unwrap();
    assert!(destroyed.status.success(), "{destroyed:?}");
    let up = lab.json(&["up", lab.profile()], 0);
    let outcomes: Vec<&str> = up["provision"]["node"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["skipped", "skipped"], "{up:#}");

    // 4c. Another host key than the pinned one: refused at once, the pinned file named.
    let pinned = std::fs::read_to_string(&known).unwrap();
    let other = lab.dir.path().join("other-key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    std::fs::write(&known, format!("{domain} {other_pub}")).unwrap();
    let report = lab.json(&["ready", lab.profile()], 3);
    let said = detail(&report, "ssh");
    assert!(
        said.contains("another host key") && said.contains(&known.display().to_string()),
        "{report:#}"
    );
    let (_, err) = lab.run(&["up", lab.profile()], 1);
    assert!(
        err.contains("node: the SSH server at") && err.contains("another host key"),
        "{err}"
    );
    let (_, err) = lab.run(&["ssh", lab.profile(), "node", "--", "true"], 1);
    assert!(err.contains("another host key"), "{err}");
    std::fs::write(&known, pinned).unwrap();

    // 4d. The network stopped and started again under the running VM: its tap is off the
    //     new bridge. Said so; lab up puts it back, and it answers again.
    let network = format!("lab-{}", lab.name);
    for op in ["net-destroy", "net-start"] {
        let out = Command::new("virsh")
            .args(["-c", "qemu:///system", op, &network])
            .output()
            .unwrap();
        assert!(out.status.success(), "{op}: {out:?}");
    }
    let (_, err) = lab.run(&["ssh", lab.profile(), "node", "--", "true"], 1);
    assert!(
        err.contains("node of") && err.contains("is cut off"),
        "{err}"
    );
    let report = lab.json(&["ready", lab.profile()], 3);
    assert!(
        detail(&report, "ssh").contains(&format!("off bridge {network}")),
        "{report:#}"
    );
    let (_, err) = lab.run(&["up", lab.profile()], 0);
    assert!(err.contains("put back"), "{err}");
    let (out, _) = lab.run(&["ssh", lab.profile(), "node", "--", "echo", "reached"], 0);
    assert_eq!(out.trim(), "reached");

    // 5. A step that hangs is killed at its timeout and named.
    lab.write_profile("sleep 600");
    let (_, err) = lab.run(&["up", lab.profile()], 1);
    assert!(
        err.contains("node: provision step broken did not finish within 20 s"),
        "{err}"
    );

    // 6. lab's key removed: said so, with the way back, which works: reset makes the VM
    //    anew, with a new disk, a new host key and a new key, and lab ssh gets in.
    let key = lab.images().join(format!("lab-{}-ssh-key", lab.name));
    std::fs::remove_file(&key).unwrap();
    let (_, err) = lab.run(&["ssh", lab.profile(), "node", "--", "true"], 1);
    assert!(
        err.contains("lab has no SSH key") && err.contains(&key.display().to_string()),
        "{err}"
    );
    assert!(
        err.contains(&format!("`lab reset {}`", lab.profile())),
        "{err}"
    );
    let report = lab.json(&["ready", lab.profile()], 3);
    assert!(
        detail(&report, "ssh").contains("lab has no SSH key"),
        "{report:#}"
    );
    lab.write_profile("true");
    lab.run(&["reset", lab.profile(), "node"], 0);
    assert!(key.is_file(), "lab reset made no new key");
    assert!(!known.exists(), "the old host key survived the reset");
    let (out, _) = lab.run(&["ssh", lab.profile(), "node", "--", "echo", "again"], 0);
    assert_eq!(out.trim(), "again");

    // 7. Down --purge: lab's key and the host keys go with the lab.
    lab.run(&["down", lab.profile(), "--purge"], 0);
    let left: Vec<String> = std::fs::read_dir(lab.images())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}
