//! `lab snapshot` and `lab restore` on the real libvirtd under TCG, with smoke VMs: one
//! consistent point of the whole lab (saved memory plus frozen qcow2 layers), gone back to
//! with processes and all; list and removal (a layer merged into the one above it); the
//! `provisioned` snapshot `lab up` takes and `lab reset` goes back to; bad input refused
//! with nothing changed; `lab down` leaves nothing. A lab on a thin pool: what can be
//! proven on a host without device-mapper (see its test).

#[path = "support/lab_cli.rs"]
mod lab_cli;

use lab_cli::{Lab, virsh};

fn new_lab() -> Lab {
    let lab = Lab::new("sn", |name, images| {
        format!(
            "name = \"{name}\"\n\
             [network]\nsubnet = \"auto\"\nauto_range = \"10.245.0.0/16\"\n\
             [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
             [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
             [[vm]]\nname = \"node\"\ncount = 2\nmemory = \"256MiB\"\n\
             [[provision]]\nname = \"mark\"\nrun = \"echo done > /data/provisioned; sync\"\n",
            images.display()
        )
    });
    lab.require_host_program("dropbear", "dropbear-bin");
    lab
}

fn sh(lab: &Lab, vm: &str, script: &str) -> String {
    let (out, _) = lab.run(&["ssh", lab.profile(), vm, "--", script], 0);
    out.trim().to_string()
}

fn count(lab: &Lab) -> u64 {
    sh(lab, "node1", "cat /run/count").parse().unwrap()
}

fn has(lab: &Lab, vm: &str, file: &str) -> bool {
    sh(lab, vm, &format!("test -e {file} && echo yes || echo no")) == "yes"
}

fn names(lab: &Lab) -> Vec<String> {
    let list = lab.json(&["snapshot", lab.profile(), "--list"], 0);
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["bytes"].as_u64().unwrap() > 0, "{s}");
            assert!(s["memory_bytes"].as_u64().unwrap() > 0, "{s}");
            s["name"].as_str().unwrap().to_string()
        })
        .collect()
}

fn snapshots_dir(lab: &Lab) -> std::path::PathBuf {
    lab.images().join(format!("lab-{}.snapshots", lab.name))
}

#[test]
fn a_whole_lab_goes_back_to_its_snapshot_processes_and_all() {
    let lab = new_lab();
    lab.run(&["up", lab.profile()], 0);
    // Provisioning succeeded: lab up kept the point as `provisioned`.
    assert_eq!(names(&lab), ["provisioned"]);
    assert!(has(&lab, "node2", "/data/provisioned"));

    // A process counting in memory, and a file on disk.
    sh(
        &lab,
        "node1",
        "(i=0; while :; do i=$((i+1)); echo $i > /run/count; sleep 1; done) </dev/null >/dev/null 2>&1 & echo $!",
    );
    sh(&lab, "node1", "echo kept > /data/before; sync");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let at_snapshot = count(&lab);
    let taken = lab.json(&["snapshot", lab.profile(), "demo"], 0);
    assert_eq!(taken["vms"], 2, "{taken}");
    println!("snapshot: {}", taken["timings_ms"]);
    // Running on, after the snapshot: a file written, the counter going on.
    sh(&lab, "node1", "echo later > /data/after; sync");
    std::thread::sleep(std::time::Duration::from_secs(10));
    let before_restore = count(&lab);
    assert!(
        before_restore > at_snapshot + 5,
        "{at_snapshot} -> {before_restore}"
    );

    let restored = lab.json(&["restore", lab.profile(), "demo"], 0);
    println!("restore: {}", restored["timings_ms"]);
    let after_restore = count(&lab);
    assert!(
        after_restore >= at_snapshot && after_restore < before_restore,
        "the counter did not go on from the snapshot's value {at_snapshot}: \
         {after_restore} after restore, {before_restore} before"
    );
    assert!(
        !has(&lab, "node1", "/data/after"),
        "a file written after the snapshot is back"
    );
    assert!(
        has(&lab, "node1", "/data/before"),
        "a file of the snapshot is gone"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(count(&lab) > after_restore, "the counter stopped");

    // A layer others sit on is merged into them when removed: `two` under `three`; while
    // the running disks sit on `three`, and so on `two`, its layers wait for them to move.
    sh(&lab, "node2", "echo x > /data/x; sync");
    lab.run(&["snapshot", lab.profile(), "two"], 0);
    sh(&lab, "node2", "echo y > /data/y; sync");
    lab.run(&["snapshot", lab.profile(), "three"], 0);
    sh(&lab, "node2", "echo z > /data/z; sync");
    lab.run(&["snapshot", lab.profile(), "two", "--rm"], 0);
    assert_eq!(names(&lab), ["provisioned", "demo", "three"]);
    assert!(snapshots_dir(&lab).join("two/node1.qcow2").exists());
    lab.run(&["restore", lab.profile(), "three"], 0);
    assert!(has(&lab, "node2", "/data/x") && has(&lab, "node2", "/data/y"));
    assert!(!has(&lab, "node2", "/data/z"));

    // Killed while taking a snapshot, or while restoring one: the next command that
    // changes the lab (`lab up`, `lab start`: they come before anything reads the VMs'
    // states) completes it (or, before any memory was saved, undoes it) and every VM runs.
    for (args, at_ms, next) in [
        (vec!["snapshot", lab.profile(), "killed"], 1500, "up"),
        (vec!["restore", lab.profile(), "three"], 1200, "start"),
    ] {
        let mut child = lab.cmd(&args).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(at_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let (_, said) = lab.run(&[next, lab.profile()], 0);
        println!("lab {next} after a killed lab {args:?}: {said}");
        let listed = names(&lab);
        assert!(
            listed.starts_with(&["provisioned".to_string(), "demo".into(), "three".into()]),
            "{listed:?}"
        );
        let status = lab.json(&["status", &lab.name], 0);
        for vm in status[0]["vms"].as_array().unwrap() {
            assert_eq!(
                vm["state"], "running",
                "after a killed lab {args:?}: {status}"
            );
        }
        assert!(has(&lab, "node2", "/data/x"), "after a killed lab {args:?}");
        if listed.len() == 4 {
            lab.run(&["snapshot", lab.profile(), "killed", "--rm"], 0);
        }
    }

    // What the snapshots hold is told by lab status, lab trim and lab down --dry-run.
    let status = lab.json(&["status", &lab.name], 0);
    // `two`, removed, still holds the layers under `three`: listed as being removed.
    let listed: Vec<String> = status[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {}", s["name"].as_str().unwrap(), s["state"]))
        .collect();
    assert_eq!(
        listed,
        [
            "provisioned \"complete\"",
            "demo \"complete\"",
            "two \"removing\"",
            "three \"complete\""
        ],
        "{status}"
    );
    let (text, _) = lab.run(&["status", &lab.name], 0);
    assert!(text.contains("snapshot three ("), "{text}");
    let (trimmed, _) = lab.run(&["trim", lab.profile()], 0);
    assert!(
        trimmed.contains("snapshots hold ") && trimmed.contains("  snapshot three: 2 VMs, "),
        "{trimmed}"
    );
    let (plan, _) = lab.run(&["down", lab.profile(), "--dry-run"], 0);
    for name in ["provisioned", "demo", "three"] {
        assert!(
            plan.contains(&format!(".snapshots/{name}  (snapshot {name}: 2 VMs, ")),
            "{plan}"
        );
    }

    // Bad input: a clear error, exit status 2, nothing changed.
    let bad = |args: &[&str], says: &str| {
        let (_, err) = lab.run(args, 2);
        assert!(err.contains(says), "lab {args:?}: {err}");
        assert_eq!(names(&lab), ["provisioned", "demo", "three"]);
    };
    bad(
        &["restore", lab.profile(), "nosuch"],
        "no snapshot \"nosuch\"",
    );
    bad(
        &["snapshot", lab.profile(), "nosuch", "--rm"],
        "no snapshot \"nosuch\"",
    );
    bad(&["snapshot", lab.profile(), "../up"], "not a plain word");
    bad(&["snapshot", lab.profile(), "demo"], "exists already");
    let uptime = sh(&lab, "node1", "cut -d' ' -f1 /proc/uptime");
    // A lab that is not up (a VM saved by lab stop) cannot be snapshotted.
    lab.run(&["stop", lab.profile(), "node2"], 0);
    bad(&["snapshot", lab.profile(), "four"], "node2 is not running");
    lab.run(&["start", lab.profile()], 0);
    // A restore while a VM is missing touches no VM.
    let domain = format!("lab-{}-node2", lab.name);
    virsh(&["destroy", &domain]);
    virsh(&["undefine", &domain]);
    bad(&["restore", lab.profile(), "demo"], "node2 is not up");
    let later = sh(&lab, "node1", "cut -d' ' -f1 /proc/uptime");
    assert!(
        later.parse::<f64>().unwrap() > uptime.parse::<f64>().unwrap(),
        "node1 was touched: uptime {uptime} -> {later}"
    );
    assert!(has(&lab, "node1", "/data/before"));
    lab.run(&["up", lab.profile()], 0);

    // lab reset goes back to `provisioned`: provisioning kept, the rest gone; the layers
    // `demo` still held under the disks are let go once nothing sits on them.
    lab.run(&["snapshot", lab.profile(), "demo", "--rm"], 0);
    lab.run(&["reset", lab.profile()], 0);
    assert!(has(&lab, "node1", "/data/provisioned"));
    assert!(!has(&lab, "node1", "/data/before"));
    assert!(!has(&lab, "node2", "/data/x"));
    assert_eq!(names(&lab), ["provisioned", "three"]);
    // The disks moved off them: `two` and `demo` merged into `three` and gone.
    assert!(!snapshots_dir(&lab).join("demo").exists());
    assert!(!snapshots_dir(&lab).join("two").exists());
    lab.run(&["restore", lab.profile(), "three"], 0);
    assert!(has(&lab, "node1", "/data/before"), "demo's layer was lost");
    assert!(has(&lab, "node2", "/data/x") && has(&lab, "node2", "/data/y"));
    assert!(!has(&lab, "node2", "/data/z"));

    // --pristine: back to the base, and the snapshots go.
    lab.run(&["reset", lab.profile(), "--pristine"], 0);
    assert!(!has(&lab, "node1", "/data/provisioned"));
    assert!(names(&lab).is_empty());
    assert!(!snapshots_dir(&lab).exists());

    lab.run(&["up", lab.profile()], 0);
    lab.run(&["snapshot", lab.profile(), "last"], 0);
    lab.run(&["down", lab.profile()], 0);
    assert!(!snapshots_dir(&lab).exists(), "lab down left snapshots");
    let left: Vec<_> = std::fs::read_dir(lab.images())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qcow2") && !n.contains("-base"))
        .collect();
    assert!(left.is_empty(), "lab down left {left:?}");
}

/// A lab on a thin pool, on this host, which has no device-mapper: no thin pool can be
/// made, so no thin lab can be up, and this test proves only what can be proven without
/// one: `lab snapshot` and `lab restore` of a thin lab go through the same orchestration
/// (no refusal for thin pools any more), and bad input is refused with a clear error and
/// nothing changed. A thin snapshot's record (as `lab snapshot` writes it on a thin pool,
/// with `layers` naming the pool) is written by the test, since no real one can be taken
/// here. The LVM half (lab's thin snapshot volume of a clone, the clone laid again from
/// it, removal) runs for real in tests/lvm_thin_guest.rs, inside a TCG guest with
/// device-mapper; the memory half is the qcow2 labs', proven above on the real libvirtd.
#[test]
fn a_thin_lab_s_snapshots_refuse_bad_input_and_change_nothing() {
    let lab = Lab::new("snt", |name, images| {
        format!(
            "name = \"{name}\"\n\
             [storage]\nbackend = \"lvm-thin\"\nvg = \"labvg\"\npool = \"thin\"\ndir = \"{}\"\n\
             [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
             [[vm]]\nname = \"node\"\nmemory = \"256MiB\"\n",
            images.display()
        )
    });
    let no_lvm_ran = |err: &str| {
        assert!(
            !err.lines().any(|l| l.contains("$ ")
                && ["lvcreate", "lvremove", "lvchange"]
                    .iter()
                    .any(|c| l.contains(c))),
            "an LVM change ran: {err}"
        );
    };
    // A lab that is not up: refused before anything is made.
    let (_, err) = lab.run(&["-v", "snapshot", lab.profile(), "one"], 2);
    assert!(
        err.contains(&format!("node is not up (no domain lab-{}-node)", lab.name)),
        "{err}"
    );
    no_lvm_ran(&err);
    assert!(
        !snapshots_dir(&lab).exists(),
        "a refused snapshot left its directory"
    );
    // An unknown snapshot.
    for args in [
        vec!["-v", "restore", lab.profile(), "one"],
        vec!["-v", "snapshot", lab.profile(), "one", "--rm"],
    ] {
        let (_, err) = lab.run(&args, 2);
        assert!(
            err.contains("has no snapshot \"one\": it has none"),
            "{args:?}: {err}"
        );
        no_lvm_ran(&err);
    }
    assert_eq!(
        lab.json(&["snapshot", lab.profile(), "--list"], 0),
        serde_json::json!([])
    );

    // A thin snapshot `one` whose VM is missing (the lab is not up): the restore is
    // refused, naming the VM, and the snapshot stays as it was.
    let dir = snapshots_dir(&lab).join("one");
    std::fs::create_dir_all(&dir).unwrap();
    let record = serde_json::json!({
        "owner": {"profile": lab.name},
        "name": "one",
        "created": 1,
        "state": "complete",
        "vms": ["node"],
        "layers": {"kind": "thin", "vg": "labvg", "pool": "thin"},
    });
    std::fs::write(dir.join("snapshot.json"), record.to_string()).unwrap();
    std::fs::write(dir.join("node.mem"), "memory").unwrap();
    let listed = lab.json(&["snapshot", lab.profile(), "--list"], 0);
    assert_eq!(listed[0]["name"], "one", "{listed}");
    assert_eq!(listed[0]["state"], "complete", "{listed}");
    let (_, err) = lab.run(&["-v", "restore", lab.profile(), "one"], 2);
    assert!(
        err.contains(&format!("node is not up (no domain lab-{}-node)", lab.name)),
        "{err}"
    );
    assert!(err.contains("a restore needs every VM of the lab"), "{err}");
    no_lvm_ran(&err);
    assert_eq!(
        std::fs::read_to_string(dir.join("snapshot.json")).unwrap(),
        record.to_string()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("node.mem")).unwrap(),
        "memory"
    );
    assert!(!dir.join("restoring").exists());
    // Its domain there but its thin volume missing (no VG labvg here): refused the same
    // way. The domain is a bare definition, never started, removed at once.
    let domain = format!("lab-{}-node", lab.name);
    let xml = lab.dir.path().join("domain.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>{domain}</name><memory unit='MiB'>64</memory>\
             <os><type>hvm</type></os></domain>"
        ),
    )
    .unwrap();
    virsh(&["define", xml.to_str().unwrap()]);
    let out = lab
        .cmd(&["-v", "restore", lab.profile(), "one"])
        .output()
        .unwrap();
    virsh(&["undefine", &domain]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "node's disk labvg/lab-{}-node is missing or not lab's: a restore leaves the lab \
             as it is",
            lab.name
        )),
        "{err}"
    );
    no_lvm_ran(&err);
    assert!(!dir.join("restoring").exists());
    // A second snapshot of the same name is refused before the lab is looked at.
    let (_, err) = lab.run(&["snapshot", lab.profile(), "one"], 2);
    assert!(err.contains("snapshot one of"), "{err}");
    assert!(err.contains("exists already"), "{err}");

    // lab down plans its removal, and removes it with its thin snapshot volumes (none
    // exist: no VG labvg here).
    let (plan, _) = lab.run(&["down", lab.profile(), "--dry-run"], 0);
    assert!(
        plan.contains(".snapshots/one  (snapshot one: 1 VM, "),
        "{plan}"
    );
    let (out, _) = lab.run(&["down", lab.profile()], 0);
    assert!(out.contains("removed snapshot one"), "{out}");
    assert!(!snapshots_dir(&lab).exists(), "lab down left the snapshot");
}
