//! `lab stop` and `lab start` SIGKILLed at several points, on the real libvirtd under TCG
//! with smoke VMs each running a counter in memory. libvirtd goes on with a managed save
//! (or a start from saved memory) whose lab died, the domain paused meanwhile: `lab status`
//! says so, and the next `lab stop`, `lab start` or `lab up` waits for it and finishes the
//! work. No VM is lost or booted afresh (its counter goes on), no saved memory is left once
//! a VM runs again, a VM left paused is resumed or saved, and the profile's forward is in
//! place after every start. Meanwhile the profile's lock: `--no-wait` fails at once naming
//! its holder, and a waiting `lab stop` says on whom it waits, then runs.
//!
//! The kill points are read from lab's own output (`-v` says each step as it begins and
//! ends): the first VM's save begun, the first VM saved (the other's in flight: VMs are
//! saved and started in parallel), likewise for starts; and one after a delay.

#[path = "support/lab_cli.rs"]
mod lab_cli;

use std::time::{Duration, Instant};

use lab_cli::Lab;
use serde_json::Value;

/// One lab at a time: kills land where they are meant to on an unloaded machine.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

const VMS: [&str; 2] = ["node1", "node2"];

/// Where libvirt keeps a domain's managed save.
const SAVE_DIR: &str = "/var/lib/libvirt/qemu/save";

fn new_lab(tag: &str) -> Lab {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lab = Lab::new(tag, |name, images| {
        format!(
            "name = \"{name}\"\n\
             [network]\nsubnet = \"auto\"\nauto_range = \"10.247.0.0/16\"\n\
             [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
             [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
             [[vm]]\nname = \"node\"\ncount = 2\nmemory = \"256MiB\"\n\
             [[forward]]\nvm = \"node1\"\nport = 8080\nhost_port = {port}\n",
            images.display()
        )
    });
    lab.require_host_program("dropbear", "dropbear-bin");
    lab
}

/// Run `script` in `vm` over lab ssh; its stdout, trimmed.
fn sh(lab: &Lab, vm: &str, script: &str) -> String {
    let (out, _) = lab.run(&["ssh", lab.profile(), vm, "--", script], 0);
    out.trim().to_string()
}

/// A process counting seconds in `vm`'s memory (into /run, a tmpfs: a new boot has none).
fn start_counter(lab: &Lab, vm: &str) {
    let pid = sh(
        lab,
        vm,
        "(i=0; while :; do i=$((i+1)); echo $i > /run/count; sleep 1; done) </dev/null >/dev/null 2>&1 & echo $!",
    );
    assert!(pid.parse::<u32>().is_ok(), "{vm}: {pid}");
}

fn count(lab: &Lab, vm: &str) -> u64 {
    let c = sh(lab, vm, "cat /run/count");
    c.parse()
        .unwrap_or_else(|_| panic!("{vm} has no counter (booted afresh?): {c:?}"))
}

fn counts(lab: &Lab) -> Vec<u64> {
    VMS.iter().map(|vm| count(lab, vm)).collect()
}

/// Each VM's (state, what libvirt is doing to it) as `lab status` tells them.
fn states(lab: &Lab) -> Vec<(String, String)> {
    let status = lab.json(&["status", &lab.name], 0);
    let vms = status[0]["vms"].as_array().unwrap();
    assert_eq!(
        vms.iter().map(|v| v["name"].clone()).collect::<Vec<_>>(),
        VMS,
        "a VM is missing: {status}"
    );
    vms.iter()
        .map(|v| {
            (
                v["state"].as_str().unwrap().to_string(),
                v["doing"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The managed-save files libvirt holds for this lab's domains.
fn save_files(lab: &Lab) -> Vec<String> {
    let prefix = format!("lab-{}-", lab.name);
    let mut files: Vec<String> = std::fs::read_dir(SAVE_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    files.sort();
    files
}

/// Every VM runs, with an address, its counter going on from `before` (not booted
/// afresh), no saved memory left, the forward whole.
fn assert_resumed(lab: &Lab, before: &[u64], after_what: &str) {
    assert!(
        states(lab).iter().all(|(s, _)| s == "running"),
        "after {after_what}: {:?}",
        states(lab)
    );
    assert_eq!(save_files(lab), Vec::<String>::new(), "after {after_what}");
    std::thread::sleep(Duration::from_secs(2));
    let now = counts(lab);
    for ((vm, b), n) in VMS.iter().zip(before).zip(&now) {
        assert!(n > b, "{vm}'s counter after {after_what}: {b} -> {n}");
    }
    let status = lab.json(&["status", &lab.name], 0);
    let forwards = status[0]["forwards"].as_array().unwrap();
    assert!(
        forwards.len() == 1 && forwards[0]["whole"] == true,
        "after {after_what}: {status}"
    );
}

/// Where a command is killed: once its stderr holds a text, or after a delay.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    Said(&'static str),
    After(Duration),
}

/// `lab -v ARGS...` SIGKILLed at `at`; what it had said.
fn killed(lab: &Lab, args: &[&str], at: KillAt) -> String {
    let mut all = vec!["-v"];
    all.extend_from_slice(args);
    let running = lab.spawn(&all);
    match at {
        KillAt::Said(text) => running.until_said(text),
        KillAt::After(delay) => std::thread::sleep(delay),
    }
    running.kill()
}

#[test]
fn a_killed_lab_stop_is_finished_by_the_next_and_every_vm_resumes_where_it_was() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let lab = new_lab("ks");
    lab.run(&["up", lab.profile()], 0);
    for vm in VMS {
        start_counter(&lab, vm);
    }
    std::thread::sleep(Duration::from_secs(2));

    for at in [
        KillAt::Said("lab: save domain"),
        KillAt::Said("lab: done save domain"),
        KillAt::After(Duration::from_millis(300)),
    ] {
        let before = counts(&lab);
        let said = killed(&lab, &["stop", lab.profile()], at);
        // At once: each VM as it is, a save that goes on in libvirtd shown as such.
        let seen = states(&lab);
        for (vm, (state, doing)) in VMS.iter().zip(&seen) {
            assert!(
                matches!(
                    (state.as_str(), doing.as_str()),
                    ("running", "") | ("paused", "saving") | ("saved", "")
                ),
                "{vm} after lab stop killed at {at:?}: {state} {doing}\n{said}"
            );
        }
        let t = Instant::now();
        let stopped = lab.json(&["stop", lab.profile()], 0);
        let took = t.elapsed();
        assert!(
            stopped
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["state"] == "saved"),
            "{stopped}"
        );
        assert!(states(&lab).iter().all(|(s, _)| s == "saved"));
        assert_eq!(save_files(&lab).len(), 2);
        lab.run(&["start", lab.profile()], 0);
        assert_resumed(&lab, &before, &format!("lab stop killed at {at:?}"));
        println!(
            "lab stop killed at {at:?}: lab status then {seen:?}; the next lab stop took {:.1} s",
            took.as_secs_f64()
        );
    }

    // A VM left paused (as a killed snapshot leaves it, or a person with virsh): lab
    // status says so; lab stop saves it to resume running, lab start resumes it.
    let domain = |vm: &str| format!("lab-{}-{vm}", lab.name);
    let virsh = |args: &[&str]| {
        let out = std::process::Command::new("virsh")
            .args(["-c", "qemu:///system"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "virsh {args:?}: {out:?}");
    };
    let before = counts(&lab);
    virsh(&["suspend", &domain("node1")]);
    assert_eq!(states(&lab)[0], ("paused".to_string(), String::new()));
    let stopped = lab.json(&["stop", lab.profile()], 0);
    assert!(
        stopped
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "saved"),
        "{stopped}"
    );
    lab.run(&["start", lab.profile()], 0);
    assert_resumed(&lab, &before, "lab stop of a paused VM");
    let before = counts(&lab);
    virsh(&["suspend", &domain("node2")]);
    let (_, err) = lab.run(&["start", lab.profile()], 0);
    assert!(err.contains("node2 was paused"), "{err}");
    assert_resumed(&lab, &before, "lab start of a paused VM");

    lab.run(&["down", lab.profile(), "--purge"], 0);
    lab.assert_nothing_left();
}

#[test]
fn a_killed_lab_start_is_finished_by_the_next_start_or_up() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let lab = new_lab("kt");
    lab.run(&["up", lab.profile()], 0);
    for vm in VMS {
        start_counter(&lab, vm);
    }
    std::thread::sleep(Duration::from_secs(2));

    for (at, next) in [
        (KillAt::Said("lab: start domain"), "start"),
        (KillAt::Said("lab: done start domain"), "up"),
        (KillAt::After(Duration::from_millis(700)), "start"),
    ] {
        let before = counts(&lab);
        lab.run(&["stop", lab.profile()], 0);
        let said = killed(&lab, &["start", lab.profile()], at);
        let seen = states(&lab);
        for (vm, (state, doing)) in VMS.iter().zip(&seen) {
            assert!(
                matches!(
                    (state.as_str(), doing.as_str()),
                    ("running", "") | ("paused", "starting") | ("saved", "")
                ),
                "{vm} after lab start killed at {at:?}: {state} {doing}\n{said}"
            );
        }
        let t = Instant::now();
        let (_, err) = lab.run(&[next, lab.profile()], 0);
        let took = t.elapsed();
        assert_resumed(
            &lab,
            &before,
            &format!("lab start killed at {at:?}, then lab {next}:\n{err}"),
        );
        println!(
            "lab start killed at {at:?}: lab status then {seen:?}; the next lab {next} took {:.1} s",
            took.as_secs_f64()
        );
    }

    // The profile's lock held (by this test, as by a long lab command): lab stop and
    // lab start --no-wait fail at once naming the holder and change nothing; a lab stop
    // that waits says on whom, and runs once the lock is let go.
    let path = lab.dir.path().join(format!("profile-{}.lock", lab.name));
    let held = lab::lock::Lock::acquire_at(
        &path,
        &format!("the lock of profile {}", lab.name),
        "kill_paths test",
        lab::lock::Wait::NoWait,
    )
    .unwrap();
    for verb in ["stop", "start"] {
        let t = Instant::now();
        let (_, err) = lab.run(&[verb, lab.profile(), "--no-wait"], 4);
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        assert!(
            err.contains(&format!(
                "`kill_paths test` (pid {}, since ",
                std::process::id()
            )) && err.contains(&format!(
                "holds the lock of profile {}; not waiting (--no-wait)",
                lab.name
            )),
            "lab {verb} --no-wait: {err}"
        );
        assert!(states(&lab).iter().all(|(s, _)| s == "running"));
    }
    let waiting = lab.spawn(&["stop", lab.profile(), "--json"]);
    waiting.until_said("waiting for `kill_paths test`");
    assert!(states(&lab).iter().all(|(s, _)| s == "running"));
    drop(held);
    let (out, _) = waiting.finish("lab stop waiting for the lock");
    let stopped: Value = serde_json::from_str(&out).unwrap();
    assert!(
        stopped
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "saved"),
        "{stopped}"
    );

    lab.run(&["down", lab.profile(), "--purge"], 0);
    lab.assert_nothing_left();
    assert_eq!(save_files(&lab), Vec::<String>::new());
}
