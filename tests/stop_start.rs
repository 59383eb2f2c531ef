//! `lab stop` and `lab start` on the real libvirtd under TCG, with smoke VMs: a stopped VM's
//! memory is saved (libvirt managed save) and `lab start` resumes it where it was: the same
//! boot (uptime goes on), the same processes. A saved VM is shown as such, left alone by
//! `lab trim`, resumed by `lab up`, and booted afresh by `lab reset`.

#[path = "support/lab_cli.rs"]
mod lab_cli;

use lab_cli::Lab;
use serde_json::Value;

fn new_lab() -> Lab {
    let lab = Lab::new("ss", |name, images| {
        format!(
            "name = \"{name}\"\n\
             [network]\nsubnet = \"auto\"\nauto_range = \"10.244.0.0/16\"\n\
             [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
             [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
             [[vm]]\nname = \"node\"\ncount = 2\nmemory = \"256MiB\"\n",
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

fn states(lab: &Lab) -> Vec<(String, String)> {
    let status = lab.json(&["status", &lab.name], 0);
    status[0]["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_stopped_lab_resumes_where_it_was() {
    let lab = new_lab();
    lab.run(&["up", lab.profile()], 0);
    // A process counting in memory, started in the background.
    let pid = sh(
        &lab,
        "node1",
        "(i=0; while :; do i=$((i+1)); echo $i > /run/count; sleep 1; done) </dev/null >/dev/null 2>&1 & echo $!",
    );
    assert!(pid.parse::<u32>().is_ok(), "{pid}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before = uptime(&lab, "node1");
    let count_before: u64 = sh(&lab, "node1", "cat /run/count").parse().unwrap();

    // Stop: every VM saved, and said so by lab status.
    let stopped = lab.json(&["stop", lab.profile()], 0);
    let rows = stopped.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{stopped}");
    assert!(rows.iter().all(|r| r["state"] == "saved"), "{stopped}");
    assert_eq!(
        states(&lab),
        [
            ("node1".to_string(), "saved".to_string()),
            ("node2".to_string(), "saved".to_string())
        ]
    );
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
    let count_after: u64 = sh(&lab, "node1", "cat /run/count").parse().unwrap();
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
    assert!(states(&lab).iter().all(|(_, s)| s == "running"));

    lab.run(&["down", lab.profile()], 0);
    // A lab that is not up cannot be started: lab up's work, said so.
    let (_, err) = lab.run(&["start", lab.profile()], 2);
    assert!(err.contains("lab up"), "{err}");
    let _: Value = lab.json(&["status", &lab.name], 0);
}
