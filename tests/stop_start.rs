//! `lab stop` and `lab start` on the real libvirtd under TCG, with smoke VMs: a stopped VM's
//! memory is saved (libvirt managed save) and `lab start` resumes it where it was: the same
//! boot (uptime goes on), the same processes. A saved VM is shown as such, left alone by
//! `lab trim`, resumed by `lab up`, and booted afresh by `lab reset`. A reboot between `lab
//! stop` and `lab start` (network down, forward rules gone, libvirtd restarted) changes
//! nothing of that.
//!
//! Killed: `lab stop` and `lab start` SIGKILLed at several points, the VMs each running a
//! counter in memory. libvirtd goes on with a managed save (or a start from saved memory)
//! whose lab died, the domain paused meanwhile: `lab status` says so, and the next `lab
//! stop`, `lab start` or `lab up` waits for it and finishes the work. No VM is lost or
//! booted afresh (its counter goes on), no saved memory is left once a VM runs again, a VM
//! left paused is resumed or saved, and the profile's forward is in place after every
//! start. Meanwhile the profile's lock: `--no-wait` fails at once naming its holder, and a
//! waiting `lab stop` says on whom it waits, then runs. The kill points are read from lab's
//! own output (`-v` says each step as it begins and ends): the first VM's save begun, the
//! first VM saved (the other's in flight: VMs are saved and started in parallel), likewise
//! for starts; and one after a delay.

#[path = "support/lab_cli.rs"]
mod lab_cli;

use std::time::{Duration, Instant};

use lab_cli::{Lab, virsh};
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
             [network]\nsubnet = \"auto\"\nauto_range = \"10.244.0.0/16\"\n\
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

/// Seconds the guest has been up (its own clock: paused while saved).
fn uptime(lab: &Lab, vm: &str) -> f64 {
    let line = sh(lab, vm, "cat /proc/uptime");
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// A process counting seconds in `vm`'s memory (into /run, a tmpfs: a new boot has none),
/// started in the background; its pid.
fn start_counter(lab: &Lab, vm: &str) -> String {
    let pid = sh(
        lab,
        vm,
        "(i=0; while :; do i=$((i+1)); echo $i > /run/count; sleep 1; done) </dev/null >/dev/null 2>&1 & echo $!",
    );
    assert!(pid.parse::<u32>().is_ok(), "{vm}: {pid}");
    pid
}

fn count(lab: &Lab, vm: &str) -> u64 {
    let c = sh(lab, vm, "cat /run/count");
    c.parse()
        .unwrap_or_else(|_| panic!("{vm} has no counter (booted afresh?): {c:?}"))
}

fn counts(lab: &Lab) -> Vec<u64> {
    VMS.iter().map(|vm| count(lab, vm)).collect()
}

/// Each VM's state as `lab status` tells it, with what libvirt is doing to it ("" when
/// nothing).
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

/// Every VM's state is `state`.
fn all(lab: &Lab, state: &str) -> bool {
    states(lab).iter().all(|(s, _)| s == state)
}

/// `lab stop`: every VM saved.
fn stop(lab: &Lab) {
    let stopped = lab.json(&["stop", lab.profile()], 0);
    let rows = stopped.as_array().unwrap();
    assert_eq!(rows.len(), VMS.len(), "{stopped}");
    assert!(rows.iter().all(|r| r["state"] == "saved"), "{stopped}");
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

/// Every VM runs, its counter going on from `before` (not booted afresh), no saved memory
/// left, the forward whole.
fn assert_resumed(lab: &Lab, before: &[u64], after_what: &str) {
    assert!(all(lab, "running"), "after {after_what}: {:?}", states(lab));
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

/// A lab up, a counter running in each VM.
fn counting_lab(tag: &str) -> Lab {
    let lab = new_lab(tag);
    lab.run(&["up", lab.profile()], 0);
    for vm in VMS {
        start_counter(&lab, vm);
    }
    std::thread::sleep(Duration::from_secs(2));
    lab
}

/// Where a command is killed: once its stderr holds a text, or after a delay.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    Said(&'static str),
    After(Duration),
}

/// `lab -v VERB PROFILE` SIGKILLed at `at`; then each VM, as `lab status` shows it at once,
/// is running, saved, or paused while libvirt goes on `doing` what lab asked. What lab
/// status showed.
fn killed(lab: &Lab, verb: &str, at: KillAt, doing: &str) -> Vec<(String, String)> {
    let running = lab.spawn(&["-v", verb, lab.profile()]);
    match at {
        KillAt::Said(text) => running.until_said(text),
        KillAt::After(delay) => std::thread::sleep(delay),
    }
    let said = running.kill();
    let seen = states(lab);
    for (vm, (state, now)) in VMS.iter().zip(&seen) {
        assert!(
            ["running", "saved"].contains(&state.as_str()) && now.is_empty()
                || state == "paused" && now == doing,
            "{vm} after lab {verb} killed at {at:?}: {state} {now}\n{said}"
        );
    }
    seen
}

#[test]
fn a_stopped_lab_resumes_where_it_was() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let lab = new_lab("ss");
    lab.run(&["up", lab.profile()], 0);
    // A process counting in memory, started in the background.
    let pid = start_counter(&lab, "node1");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before = uptime(&lab, "node1");
    let count_before = count(&lab, "node1");

    // Stop: every VM saved, and said so by lab status.
    stop(&lab);
    assert!(all(&lab, "saved"), "{:?}", states(&lab));
    // Stopping again changes nothing.
    let again = lab.json(&["stop", lab.profile()], 0);
    assert!(
        again
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "saved" && r["ms"].as_u64().unwrap() < 1000),
        "{again}"
    );
    // A saved VM's disk is left alone by trim: its saved memory holds the guest's view.
    let trim = lab.json(&["trim", lab.profile(), "node2"], 0);
    let image = &trim["images"][0];
    assert_eq!(image["outcome"], "left-alone", "{trim}");
    assert!(
        image["message"].as_str().unwrap().contains("memory saved"),
        "{trim}"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));

    // Start: resumed, not booted: the same boot, the same process, its count going on.
    let started = lab.json(&["start", lab.profile()], 0);
    assert!(
        started
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "running" && v["ip"].is_string()),
        "{started}"
    );
    let after = uptime(&lab, "node1");
    assert!(
        after >= before,
        "node1 booted again: uptime {after} s after, {before} s before"
    );
    assert_eq!(
        sh(&lab, "node1", &format!("kill -0 {pid} && echo alive")),
        "alive"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let count_after = count(&lab, "node1");
    assert!(
        count_after > count_before,
        "{count_before} -> {count_after}"
    );
    println!(
        "node1: uptime {before:.1} s before lab stop, {after:.1} s after lab start; count {count_before} -> {count_after}"
    );

    // lab up resumes a saved VM too, and says so in its plan.
    lab.run(&["stop", lab.profile(), "node1"], 0);
    let (plan, _) = lab.run(&["up", lab.profile(), "--dry-run"], 0);
    assert!(plan.contains("resumed where it was"), "{plan}");
    lab.run(&["up", lab.profile()], 0);
    assert_eq!(
        sh(&lab, "node1", &format!("kill -0 {pid} && echo alive")),
        "alive"
    );

    // lab reset throws the saved memory away with the disk: node1 boots afresh.
    lab.run(&["stop", lab.profile(), "node1"], 0);
    lab.run(&["reset", lab.profile(), "node1"], 0);
    let fresh = uptime(&lab, "node1");
    assert!(
        fresh < after,
        "node1 was not booted afresh: uptime {fresh} s"
    );
    // (a PID may be taken again by another process of the new boot; the counter's file
    // in /run, a tmpfs, is not)
    assert_eq!(
        sh(
            &lab,
            "node1",
            "test -e /run/count && echo kept || echo gone"
        ),
        "gone"
    );

    // Bad input: a VM the profile does not have, for both; nothing changes.
    let (_, err) = lab.run(&["stop", lab.profile(), "nosuch"], 2);
    assert!(err.contains("nosuch"), "{err}");
    let (_, err) = lab.run(&["start", lab.profile(), "nosuch"], 2);
    assert!(err.contains("nosuch"), "{err}");
    assert!(all(&lab, "running"));

    lab.run(&["down", lab.profile()], 0);
    // A lab that is not up cannot be started: lab up's work, said so.
    let (_, err) = lab.run(&["start", lab.profile()], 2);
    assert!(err.contains("lab up"), "{err}");
    let _: Value = lab.json(&["status", &lab.name], 0);
}

#[test]
fn a_killed_lab_stop_is_finished_by_the_next_and_every_vm_resumes_where_it_was() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let lab = counting_lab("ks");

    for at in [
        KillAt::Said("lab: save domain"),
        KillAt::Said("lab: done save domain"),
        KillAt::After(Duration::from_millis(300)),
    ] {
        let before = counts(&lab);
        let seen = killed(&lab, "stop", at, "saving");
        let t = Instant::now();
        stop(&lab);
        let took = t.elapsed();
        assert!(all(&lab, "saved"), "{:?}", states(&lab));
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
    let before = counts(&lab);
    virsh(&["suspend", &domain("node1")]);
    assert_eq!(states(&lab)[0], ("paused".to_string(), String::new()));
    stop(&lab);
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
    let lab = counting_lab("kt");

    for (at, next) in [
        (KillAt::Said("lab: start domain"), "start"),
        (KillAt::Said("lab: done start domain"), "up"),
        (KillAt::After(Duration::from_millis(700)), "start"),
    ] {
        let before = counts(&lab);
        stop(&lab);
        let seen = killed(&lab, "start", at, "starting");
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
        assert!(all(&lab, "running"));
    }
    let waiting = lab.spawn(&["stop", lab.profile(), "--json"]);
    waiting.until_said("waiting for `kill_paths test`");
    assert!(all(&lab, "running"));
    drop(held);
    waiting.finish("lab stop waiting for the lock");
    assert!(all(&lab, "saved"), "{:?}", states(&lab));

    lab.run(&["down", lab.profile(), "--purge"], 0);
    lab.assert_nothing_left();
    assert_eq!(save_files(&lab), Vec::<String>::new());
}

/// libvirtd restarted, as a laptop's reboot restarts it: by systemd where it runs, else by
/// hand as scripts/setup-host.sh starts it (which starts only what is not running).
fn restart_libvirtd() {
    let ok = |c: &mut std::process::Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {out:?}");
    };
    if std::path::Path::new("/run/systemd/system").exists() {
        ok(std::process::Command::new("systemctl").args(["restart", "libvirtd"]));
        return;
    }
    let pid = std::fs::read_to_string("/run/libvirtd.pid").unwrap();
    let pid = pid.trim();
    ok(std::process::Command::new("kill").arg(pid));
    let until = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < until, "libvirtd {pid} did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(std::process::Command::new("bash").arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/setup-host.sh"
    )));
}

/// What a reboot between `lab stop` and `lab start` takes away: the lab's network is down
/// (its bridge gone), the nftables rules of its forward are gone, libvirtd is a new
/// process. `lab start` brings the network up, resumes every VM from its saved memory (the
/// counters go on: no VM booted afresh) and puts the forward back.
#[test]
fn a_lab_stopped_before_a_reboot_starts_where_it_was() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let lab = counting_lab("sr");
    let before = counts(&lab);
    stop(&lab);
    let network = format!("lab-{}", lab.name);
    virsh(&["net-destroy", &network]);
    let out = std::process::Command::new("nft")
        .args(["delete", "table", "ip", &network])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    restart_libvirtd();
    assert!(all(&lab, "saved"), "{:?}", states(&lab));
    let status = lab.json(&["status", &lab.name], 0);
    assert_eq!(status[0]["network_active"], false, "{status}");
    assert!(
        status[0]["forwards"].as_array().unwrap().is_empty(),
        "{status}"
    );

    lab.run(&["start", lab.profile()], 0);
    assert_resumed(&lab, &before, "a reboot between lab stop and lab start");
    let status = lab.json(&["status", &lab.name], 0);
    assert_eq!(status[0]["network_active"], true, "{status}");
}
