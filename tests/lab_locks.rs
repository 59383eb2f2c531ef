//! Locks on the real libvirtd (TCG guests). The test itself holds the host-wide lock for a
//! while, so that what happens meanwhile is certain, not a race: `lab up --no-wait` fails
//! at once naming the test and makes nothing; two smoke labs of one VM each, started at
//! once, each take their profile's lock and wait for the host-wide one; meanwhile `lab down
//! --no-wait` of one fails at once naming its `lab up`, `lab status` answers, and a `lab
//! reset` of it waits. Then both labs finish, on different subnets although both prefer
//! the same one (the host-wide lock covers choosing a subnet and creating the network),
//! and the reset says on whom it waited, and runs.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::Value;

#[path = "support/lab_cli.rs"]
mod lab_cli;
use lab_cli::Lab;

/// Two /24s: labs that prefer the same one must share them out.
const RANGE: &str = "10.246.40.0/23";

fn smoke_profile(name: &str, images: &Path) -> String {
    format!(
        "name = \"{name}\"\n\
         [network]\nsubnet = \"auto\"\nauto_range = \"{RANGE}\"\n\
         [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
         [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
         [[vm]]\nname = \"node\"\nmemory = \"256MiB\"\n",
        images.display()
    )
}

/// The subnet lab prefers for a lab of tag `tag` (as [`Lab::new`] names it).
fn preferred(tag: &str) -> Ipv4Net {
    let name = format!("{tag}{}", std::process::id() % 100_000);
    lab::subnet::SubnetAllocator::new(RANGE.parse().unwrap())
        .allocate(&name, None, &[])
        .unwrap()
        .subnet
}

/// A lab whose profile, lock and runtime directories are its own but whose lock directory
/// is `locks` (shared by the labs of this test, as by all labs of a host).
fn lab(tag: &str, locks: &Path) -> Lab {
    let mut lab = Lab::new(tag, smoke_profile);
    lab.env.push((
        "LAB_LOCK".into(),
        locks.join("host.lock").to_string_lossy().into_owned(),
    ));
    lab
}

fn subnet_of(up: &str) -> Ipv4Net {
    let up: Value = serde_json::from_str(up).unwrap();
    let vms = up["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 1, "{up:#}");
    assert!(vms[0]["ip"].as_str().is_some(), "{up:#}");
    up["network"]["subnet"].as_str().unwrap().parse().unwrap()
}

/// Wait until the lock file at `path` names `command` as its holder.
fn until_held_by(path: &Path, command: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let wanted = format!("command: {command}\n");
    while !std::fs::read_to_string(path).is_ok_and(|t| t.contains(&wanted)) {
        assert!(
            Instant::now() < deadline,
            "{command} never recorded itself in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_labs_come_up_at_once_and_a_third_command_waits_saying_on_whom() {
    let locks = tempfile::tempdir().unwrap();
    let a = lab("la", locks.path());
    // A second tag whose lab prefers the same subnet as the first's.
    let tag_b = ["lb", "lc", "ld", "le", "lf", "lg", "lh", "li"]
        .into_iter()
        .find(|t| preferred(t) == preferred("la"))
        .expect("one of eight names falls on the same of two subnets");
    let b = lab(tag_b, locks.path());
    let a_lock = locks.path().join(format!("profile-{}.lock", a.name));
    let b_lock = locks.path().join(format!("profile-{}.lock", b.name));
    let host_lock = locks.path().join("host.lock");

    // 0. The test holds the host-wide lock, as a `lab up` choosing its subnet would: a
    //    `lab up --no-wait` fails at once naming it, and has made nothing.
    let held = lab::lock::Lock::acquire_at(
        &host_lock,
        "the host-wide lock (to test)",
        "lab_locks test",
        lab::lock::Wait::NoWait,
    )
    .unwrap();
    let (_, err) = a.run(&["up", a.profile(), "--no-wait"], 4);
    assert!(
        err.contains(&format!(
            "`lab_locks test` (pid {}, since ",
            std::process::id()
        )) && err.contains("holds the host-wide lock (to test); not waiting (--no-wait)"),
        "{err}"
    );
    a.assert_nothing_made();

    // 1. Both labs at once: each takes its profile's lock and waits for the host-wide one.
    let t = Instant::now();
    let up_a = a.spawn(&["up", a.profile(), "--json"]);
    let up_a_pid = up_a.child.id();
    let up_b = b.spawn(&["up", b.profile(), "--json"]);
    until_held_by(&a_lock, &format!("lab up {}", a.name));
    until_held_by(&b_lock, &format!("lab up {}", b.name));
    up_a.until_said("waiting for `lab_locks test`");
    up_b.until_said("waiting for `lab_locks test`");

    // 2. While `lab up` A holds its profile's lock, a third command on the profile waits,
    let reset_a = a.spawn(&["reset", a.profile(), "--json"]);
    // ... one that is told not to wait fails at once, naming the holder,
    let t_down = Instant::now();
    let (_, err) = a.run(&["down", a.profile(), "--no-wait"], 4);
    assert!(
        t_down.elapsed() < Duration::from_secs(20),
        "lab down --no-wait took {:?}",
        t_down.elapsed()
    );
    assert!(
        err.contains(&format!("`lab up {}` (pid {up_a_pid}, since ", a.name))
            && err.contains(&format!(
                "holds the lock of profile {}; not waiting (--no-wait)",
                a.name
            )),
        "{err}"
    );
    // ... and `lab status` answers (the host-wide lock and A's are held all along).
    let status = a.json(&["status", &a.name], 0);
    assert!(status.is_array(), "{status:#}");
    reset_a.until_said(&format!("waiting for `lab up {}`", a.name));
    drop(held);

    // 3. Both labs finish, on different subnets of the two they both prefer one of.
    let (out_a, err_a) = up_a.finish("lab up A");
    let (out_b, err_b) = up_b.finish("lab up B");
    eprintln!(
        "two labs up at once: {:.1} s\nA:\n{err_a}\nB:\n{err_b}",
        t.elapsed().as_secs_f64()
    );
    let (net_a, net_b) = (subnet_of(&out_a), subnet_of(&out_b));
    assert_ne!(net_a, net_b, "two labs on one subnet");
    for err in [&err_a, &err_b] {
        assert!(
            err.contains("waiting for `lab_locks test`"),
            "each lab up waited for the host-wide lock:\n{err}"
        );
        assert!(
            !err.contains("holds the lock of profile"),
            "a lab waited for another profile's lock:\n{err}"
        );
    }

    // 4. The waiting command said on whom, then ran.
    let (out_reset, err_reset) = reset_a.finish("lab reset A");
    assert!(
        err_reset.contains(&format!(
            "waiting for `lab up {}` (pid {up_a_pid}, since ",
            a.name
        )) && err_reset.contains(&format!("which holds the lock of profile {}", a.name)),
        "{err_reset}"
    );
    let reset: Value = serde_json::from_str(&out_reset).unwrap();
    assert_eq!(reset.as_array().map(Vec::len), Some(1), "{reset:#}");

    // Nothing is held once every command is done: no record left, and `flock(1)` (the
    // same flock) finds the host-wide lock free.
    for lock in std::fs::read_dir(locks.path()).unwrap() {
        let path = lock.unwrap().path();
        let mut text = String::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "", "{} still names a holder", path.display());
    }
    let free = Command::new("flock")
        .args(["-n", host_lock.to_str().unwrap(), "true"])
        .status()
        .unwrap();
    assert!(free.success());
}
