//! The smoke lab on the real libvirtd (started by scripts/setup-host.sh, as in CI), under
//! TCG: up, up again (nothing changes), status, reset, kill -9 at several points and
//! recover, down with someone else's domain and network present that must survive.
//!
//! One test drives the whole story so that at most three emulated guests run at a time on
//! the two-core machines.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

const LAB: &str = env!("CARGO_BIN_EXE_lab");

struct Lab {
    dir: tempfile::TempDir,
    profile: PathBuf,
    name: String,
    /// Someone else's objects the test made; removed at the end whatever happened.
    foreign: std::cell::RefCell<Vec<(&'static str, String)>>,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        // A name of its own, so a developer's smoke lab is never touched.
        let name = format!("t{}", std::process::id() % 100_000);
        let images = dir.path().join("images");
        let profile = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &profile,
            format!(
                "name = \"{name}\"\n\
                 [network]\nsubnet = \"auto\"\nauto_range = \"10.251.0.0/16\"\n\
                 [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
                 [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
                 [[vm]]\nname = \"node\"\ncount = 3\nmemory = \"256MiB\"\n",
                images.display()
            ),
        )
        .unwrap();
        Lab {
            dir,
            profile,
            name,
            foreign: Default::default(),
        }
    }

    fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(LAB);
        c.args(args)
            .env("LAB_CONNECT", "qemu:///system")
            .env("LAB_LOCK", self.dir.path().join("lab.lock"))
            .current_dir(self.dir.path());
        c
    }

    /// Run; the exit status must be `code`; returns stdout.
    fn run(&self, args: &[&str], code: i32) -> String {
        let out = self.cmd(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "lab {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.run(&all, 0)).unwrap()
    }

    /// Start `lab -v ARGS`, kill -9 it once stderr shows `line`, return what it printed.
    fn kill_at(&self, args: &[&str], line: &str) -> String {
        let mut all = vec!["-v"];
        all.extend_from_slice(args);
        let mut child = self
            .cmd(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut seen = String::new();
        for l in BufReader::new(stderr).lines() {
            let l = l.unwrap();
            seen.push_str(&l);
            seen.push('\n');
            if l.contains(line) {
                child.kill().unwrap();
                child.wait().unwrap();
                return seen;
            }
        }
        let status = child.wait().unwrap();
        panic!("lab {args:?} ended ({status}) before printing {line:?}:\n{seen}");
    }

    fn domain(&self, vm: &str) -> String {
        format!("lab-{}-{vm}", self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Leave nothing behind, whatever happened.
        let _ = self
            .cmd(&["down", self.profile.to_str().unwrap(), "--purge"])
            .output();
        for (undefine, name) in self.foreign.borrow().iter() {
            let _ = virsh(&[undefine, name]);
        }
    }
}

fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn domid(name: &str) -> String {
    let (ok, id) = virsh(&["domid", name]);
    assert!(ok, "domid {name}");
    id
}

fn ready_vms(up: &Value) -> Vec<(String, String)> {
    up["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["ip"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn assert_up(lab: &Lab, up: &Value) {
    let subnet: ipnet::Ipv4Net = up["network"]["subnet"].as_str().unwrap().parse().unwrap();
    let vms = ready_vms(up);
    assert_eq!(
        vms.iter().map(|v| v.0.as_str()).collect::<Vec<_>>(),
        ["node1", "node2", "node3"]
    );
    for (i, (name, ip)) in vms.iter().enumerate() {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        assert!(subnet.contains(&ip), "{name} got {ip} outside {subnet}");
        assert_eq!(ip.octets()[3] as usize, 10 + i, "{name}: fixed address");
        let console = lab
            .images()
            .join(format!("{}.console.log", lab.domain(name)));
        let text = std::fs::read_to_string(&console).unwrap();
        assert!(
            text.contains(&format!("LAB-READY vm={name} ip={ip} disk=ok")),
            "{name}: no ready line in {}:\n{text}",
            console.display()
        );
    }
}

#[test]
fn smoke_lab_lifecycle_on_a_real_libvirtd() {
    let lab = Lab::new();
    let profile = lab.profile.to_str().unwrap();

    // Someone else's domain and network with lab-like names: they must survive everything.
    let foreign_net = format!("lab-{}-x", lab.name);
    let foreign_dom = format!("lab-{}-node9", lab.name);
    let net_xml = lab.dir.path().join("foreign-net.xml");
    std::fs::write(
        &net_xml,
        format!(
            "<network><name>{foreign_net}</name><bridge name='fx{}'/></network>",
            std::process::id() % 100_000
        ),
    )
    .unwrap();
    assert!(virsh(&["net-define", net_xml.to_str().unwrap()]).0);
    lab.foreign
        .borrow_mut()
        .push(("net-undefine", foreign_net.clone()));
    let dom_xml = lab.dir.path().join("foreign-dom.xml");
    std::fs::write(
        &dom_xml,
        format!(
            "<domain type='qemu'><name>{foreign_dom}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os></domain>"
        ),
    )
    .unwrap();
    assert!(virsh(&["define", dom_xml.to_str().unwrap()]).0);
    lab.foreign
        .borrow_mut()
        .push(("undefine", foreign_dom.clone()));

    // 1. Killed while building the base, then while defining the second VM: each next
    //    `lab up` completes the lab.
    lab.kill_at(&["up", profile], "lab: build base");
    lab.kill_at(
        &["up", profile],
        &format!("lab: done define domain {}", lab.domain("node2")),
    );
    let t = Instant::now();
    let up = lab.json(&["up", profile]);
    eprintln!("lab up after two kills: {:.1} s", t.elapsed().as_secs_f64());
    assert_up(&lab, &up);

    // 2. Up again: nothing changes, the domains keep their ids.
    let ids: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .map(|v| domid(&lab.domain(v)))
        .collect();
    let plan = lab.json(&["up", profile, "--dry-run"]);
    assert_eq!(plan["actions"].as_array().unwrap().len(), 0, "{plan:#}");
    let again = lab.json(&["up", profile]);
    assert_eq!(ready_vms(&again), ready_vms(&up));
    let ids_again: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .map(|v| domid(&lab.domain(v)))
        .collect();
    assert_eq!(ids, ids_again, "a second lab up restarted something");

    // 3. Status tells the same.
    let status = lab.json(&["status", &lab.name]);
    let vms = status[0]["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 3);
    for v in vms {
        assert_eq!(v["state"], "running", "{v}");
        assert!(v["ip"].as_str().is_some(), "{v}");
    }

    // lab reset --dry-run and lab down --dry-run print their plans and touch nothing.
    let op_lines = |plan: &Value| -> Vec<String> {
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{} {} {}",
                    a["op"].as_str().unwrap(),
                    a["object"].as_str().unwrap(),
                    a["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let image = |name: &str| lab.images().join(name).display().to_string();
    let node2_disk = lab.images().join(format!("{}.qcow2", lab.domain("node2")));
    let disk_before = std::fs::metadata(&node2_disk).unwrap().modified().unwrap();
    let reset_plan = lab.json(&["reset", profile, "node2", "--dry-run"]);
    assert_eq!(
        op_lines(&reset_plan),
        [
            format!("stop domain {}", lab.domain("node2")),
            format!("reclone disk {}.qcow2", lab.domain("node2")),
            format!("start domain {}", lab.domain("node2")),
        ]
    );
    let text = lab.run(&["reset", profile, "--dry-run"], 0);
    assert!(
        text.contains(&format!(
            "  reclone disk     {}.qcow2  (dropped and cloned again from lab-{}-base.qcow2)",
            lab.domain("node1"),
            lab.name
        )),
        "{text}"
    );
    let down_plan = lab.json(&["down", profile, "--purge", "--dry-run"]);
    let lines = op_lines(&down_plan);
    let mut expected: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .map(|v| format!("remove domain {}", lab.domain(v)))
        .collect();
    expected.push(format!("remove network lab-{}", lab.name));
    for v in ["node1", "node2", "node3"] {
        expected.push(format!(
            "remove disk {}",
            image(&format!("{}.qcow2", lab.domain(v)))
        ));
    }
    expected.push(format!(
        "remove base {}",
        image(&format!("lab-{}-base.qcow2", lab.name))
    ));
    assert_eq!(&lines[..expected.len()], &expected[..], "{lines:#?}");
    for v in ["node1", "node2", "node3"] {
        let log = format!(
            "remove file {}",
            image(&format!("{}.console.log", lab.domain(v)))
        );
        assert!(lines.contains(&log), "{log} not in {lines:#?}");
    }
    assert!(
        lines.contains(&format!(
            "remove file {}",
            image(&format!("lab-{}-initrd.img", lab.name))
        )),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("node9") && !l.ends_with("-x")),
        "someone else's objects in the plan: {lines:#?}"
    );
    let text = lab.run(&["down", profile, "--dry-run"], 0);
    assert!(
        text.starts_with(&format!(
            "Will do:\n  remove  domain   {}  (lab's, running: powered off and undefined)\n",
            lab.domain("node1")
        )),
        "{text}"
    );
    assert!(text.contains("\nLeaves alone:\n  base     "), "{text}");
    let ids_after: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .map(|v| domid(&lab.domain(v)))
        .collect();
    assert_eq!(ids, ids_after, "a dry run restarted something");
    assert_eq!(
        std::fs::metadata(&node2_disk).unwrap().modified().unwrap(),
        disk_before,
        "a dry run touched a disk"
    );
    assert!(virsh(&["net-info", &format!("lab-{}", lab.name)]).0);
    assert!(
        lab.images()
            .join(format!("lab-{}-initrd.img", lab.name))
            .exists()
    );

    // lab check of the profile while its lab is up: the lab's own network is where the
    // lab already is, no collision. (Exit 3 here: KVM does not work on this machine.)
    let check = lab.run(
        &["check", "--profile", profile, "--no-throughput", "--json"],
        3,
    );
    let check: Value = serde_json::from_str(&check).unwrap();
    let subnet = check["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "network.subnet")
        .unwrap_or_else(|| panic!("no network.subnet in {check:#}"));
    assert_eq!(subnet["status"], "pass", "{subnet:#}");
    let up_subnet = up["network"]["subnet"].as_str().unwrap();
    let finding = subnet["summary"].as_str().unwrap();
    assert!(
        finding.contains("lab's own network") && finding.contains(up_subnet),
        "{finding}"
    );

    // 4. Reset one VM: only it restarts, on a fresh clone.
    let clone = lab.images().join(format!("{}.qcow2", lab.domain("node2")));
    let before = std::fs::metadata(&clone).unwrap().modified().unwrap();
    let reset = lab.json(&["reset", profile, "node2"]);
    assert_eq!(reset[0]["name"], "node2");
    assert_ne!(
        domid(&lab.domain("node2")),
        ids[1],
        "node2 was not restarted"
    );
    assert_eq!(domid(&lab.domain("node1")), ids[0]);
    assert_eq!(domid(&lab.domain("node3")), ids[2]);
    assert!(std::fs::metadata(&clone).unwrap().modified().unwrap() > before);

    // 5. One VM gone behind lab's back: lab up brings back that VM alone.
    assert!(virsh(&["destroy", &lab.domain("node3")]).0);
    assert!(virsh(&["undefine", &lab.domain("node3")]).0);
    let plan = lab.json(&["up", profile, "--dry-run"]);
    let ops: Vec<String> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["op"].as_str().unwrap(),
                a["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            format!("define {}", lab.domain("node3")),
            format!("start {}", lab.domain("node3"))
        ]
    );
    assert_up(&lab, &lab.json(&["up", profile]));

    // 6. Killed in the middle of a lab down: the next down finishes the job.
    lab.kill_at(
        &["down", profile],
        &format!("lab: removed domain {}", lab.domain("node1")),
    );
    let down = lab.json(&["down", profile]);
    let removed: Vec<&str> = down
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        removed.contains(&format!("network lab-{}", lab.name).as_str()),
        "{removed:?}"
    );
    for vm in ["node1", "node2", "node3"] {
        assert!(
            !virsh(&["dominfo", &lab.domain(vm)]).0,
            "{vm} survived lab down"
        );
        assert!(
            !lab.images()
                .join(format!("{}.qcow2", lab.domain(vm)))
                .exists()
        );
    }
    assert!(!virsh(&["net-info", &format!("lab-{}", lab.name)]).0);
    // The base stays without --purge; someone else's objects always stay.
    assert!(
        lab.images()
            .join(format!("lab-{}-base.qcow2", lab.name))
            .exists()
    );
    assert!(
        virsh(&["dominfo", &foreign_dom]).0,
        "someone else's domain was removed"
    );
    assert!(
        virsh(&["net-info", &foreign_net]).0,
        "someone else's network was removed"
    );
    let purge = lab.json(&["down", profile, "--purge"]);
    assert!(
        purge
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().starts_with("base ")),
        "{purge}"
    );
    let left: Vec<String> = std::fs::read_dir(lab.images())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_vm_not_ready_in_time_is_named_with_what_lab_waited_for_and_its_console() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("w{}", std::process::id() % 100_000);
    let profile = dir.path().join("slow.toml");
    std::fs::write(
        &profile,
        format!(
            "name = \"{name}\"\n[network]\nauto_range = \"10.250.0.0/16\"\n\
             [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
             [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
             [[vm]]\nname = \"slow\"\nmemory = \"256MiB\"\n",
            dir.path().join("images").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(LAB)
            .args(args)
            .env("LAB_CONNECT", "qemu:///system")
            .env("LAB_LOCK", dir.path().join("lab.lock"))
            .output()
            .unwrap()
    };
    // An emulated guest needs several seconds; one second is never enough.
    let out = run(&["up", profile.to_str().unwrap(), "--timeout", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let down = run(&["down", profile.to_str().unwrap(), "--purge"]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("slow: not ready after 1 s: waited for"),
        "{stderr}"
    );
    assert!(
        stderr.contains("a DHCP lease for 52:54:00:") || stderr.contains("its ready line"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("lab-{name}-slow.console.log")),
        "the message names the console log: {stderr}"
    );
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!virsh(&["dominfo", &format!("lab-{name}-slow")]).0);
}
