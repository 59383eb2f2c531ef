//! The LVM thin backend for real. This kernel has no device-mapper, so the test boots a
//! throwaway TCG guest (tests/support/guest.rs) with a scratch disk and runs this very test
//! binary inside it: the ignored test `in_guest` drives `LvmThinStorage` step by step and
//! reports over the serial console (LAB-STEP, LAB-DATA lines); the host-side test asserts
//! on what it reported. lab's library is linked in, so every LVM command line the backend
//! runs is logged on the console too, as at `-v`.
//!
//! The disk half of whole-lab snapshots on a thin pool (`lab snapshot`, `lab restore`) runs
//! here too, with the very functions `lab::snapshot` calls for each VM: the memory half
//! needs libvirt, and a whole thin lab cannot run on a host without device-mapper.
//!
//! It always runs and fails (never skips) when the guest does not boot or a step fails.
//! About 100 s on a 2-core machine: some 150 LVM commands at 0.3 to 1 s each under TCG.
//! `LAB_GUEST_CONSOLE=1` prints the whole console.

#[path = "support/guest.rs"]
mod guest;

use std::time::{Duration, Instant};

use guest::{DiskFormat, Guest, GuestRun};
use serde_json::Value;

/// Set in the guest only: `in_guest` refuses to run without it (it takes /dev/vda).
const GUEST_ENV: &str = "LAB_THIN_GUEST";
const VG: &str = "vg_lab";
const POOL: &str = "lab-pool";
const PROFILE: &str = "demo";
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// Small, so the fill threshold is reached by writing about 100 MiB (writes are slow
/// under TCG).
const POOL_SIZE: u64 = 128 * MIB;
/// Written into and deleted from a snapshot's ext4 before fstrim: 25% of the pool.
const WRITE: u64 = 32 * MIB;
/// The base sizes whose clone time is measured (virtual: the pool is over-provisioned).
const TIMED_GIB: [u64; 3] = [1, 10, 100];
const TIMED_RUNS: usize = 3;
/// Copied for the full-copy figure (the pool has room for this much, not for whole bases).
const COPY: u64 = 32 * MIB;
/// The imported base image's virtual size (twice the pool: thin volumes may
/// over-provision), room enough for the filler clone to pass the threshold.
const BASE_SIZE: u64 = 256 * MIB;
const HELLO: &str = "hello from lab's base image\n";
/// Written into a clone before lab's snapshot of it: 12.5% of the pool, which a copy would
/// show.
const SNAP_DATA: u64 = 16 * MIB;

#[test]
fn lvm_thin_backend_in_a_tcg_guest() {
    let started = Instant::now();
    // This binary without its debug information (a tenth of the size): a smaller
    // initramfs boots faster.
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join("lvm_thin_guest");
    lab::runner::Cmd::new("objcopy")
        .arg("--strip-debug")
        .arg(std::env::current_exe().expect("the test binary's path"))
        .arg(&exe)
        .run()
        .expect("objcopy (binutils, installed with gcc)");
    let exe = exe.to_str().expect("a UTF-8 path").to_string();
    let script = format!(
        "export {GUEST_ENV}=1\n{} in_guest --exact --ignored --nocapture --test-threads=1\n",
        lab::runner::quote(&exe)
    );
    let run = Guest::new(script)
        .lvm_thin()
        .ext4()
        // lab trim's offline path: util-linux losetup and blkid, the loop driver.
        .modules(&["loop"])
        .executables(&[
            "lvmconfig",
            "qemu-img",
            "losetup",
            "blkid",
            "partx",
            "blockdev",
            "dmsetup",
            &exe,
        ])
        .disk(2 * GIB, DiskFormat::Raw)
        .memory_mib(1024)
        .timeout(Duration::from_secs(600))
        .run();
    run.assert_ok();
    for name in [
        "vg",
        "pool-create",
        "issue-discards",
        "base-image",
        "base-import",
        "base-seal",
        "clone-web1",
        "clone-web2",
        "clone-db1",
        "deactivate-db1",
        "clone-volume-db1",
        "trim",
        "lab-trim-offline",
        "lab-trim-offline-partitioned",
        "full-copy",
        "clone-filler",
        "fill",
        "remove-filler",
        "lab-snapshot",
        "by-hand",
        "remove-clones",
        "remove-base",
        "end",
    ] {
        assert!(run.step(name).ok, "step {name}: {}", run.step(name).detail);
    }

    check_bad_input(&run);
    check_pool(&run);
    check_base(&run);
    check_snapshots(&run);
    check_trim(&run);
    check_lab_trim_offline(&run);
    check_lab_trim_offline_partitioned(&run);
    check_threshold(&run);
    check_lab_snapshot(&run);
    check_removal(&run);
    check_commands_are_logged(&run);
    let times = clone_times(&run);
    let copy = run.data_json("full-copy");
    let copy_ms = copy["ms"].as_f64().unwrap();
    assert_eq!(copy["bytes"], COPY, "{copy}");
    assert!(copy_ms > 0.0, "{copy}");
    let per_gib_s = copy_ms / 1000.0 * (GIB as f64 / COPY as f64);
    eprintln!(
        "full copy in the same guest: {} MiB in {copy_ms:.0} ms ({:.0} MiB/s), so a full copy \
         of a 1 GiB base takes about {:.0} s, 10 GiB {:.0} s, 100 GiB {:.0} s (from the \
         measured rate; the test pool holds 128 MiB, not whole bases)",
        COPY / MIB,
        (COPY / MIB) as f64 / (copy_ms / 1000.0),
        per_gib_s,
        per_gib_s * 10.0,
        per_gib_s * 100.0
    );
    // A snapshot of any base beats copying even the 1 GiB one.
    assert!(
        times[0].1 < per_gib_s * 1000.0,
        "a thin snapshot ({:.0} ms) is no faster than a full copy of 1 GiB ({:.0} ms)",
        times[0].1,
        per_gib_s * 1000.0
    );
    eprintln!(
        "thin snapshot clone (LvmThinStorage::clone_base: lvs + lvcreate -s -K) in a TCG guest, \
         median of {TIMED_RUNS}: {}; boot to script {:?}, QEMU {:?}, whole test {:?}, \
         initramfs {} MiB",
        times
            .iter()
            .map(|(gib, ms)| format!("{gib} GiB base {ms:.0} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        run.boot_to_script,
        run.qemu_time,
        started.elapsed(),
        run.initramfs_bytes / MIB,
    );
}

/// A refusal the guest reported: its message, and whether the VG's LVs stayed the same.
fn refusal(run: &GuestRun, name: &str) -> String {
    let v = run.data_json(name);
    let error = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} was not refused: {v}"))
        .to_string();
    assert_eq!(
        v["unchanged"], true,
        "{name}: the refusal changed the LVs: {v}"
    );
    error
}

fn assert_has(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

fn check_bad_input(run: &GuestRun) {
    assert_has(
        &refusal(run, "bad-vg-create-pool"),
        &[
            "cannot create thin pool vg_missing/lab-pool",
            "volume group vg_missing does not exist",
        ],
    );
    assert_has(
        &refusal(run, "bad-vg-clone"),
        &["volume group vg_missing does not exist"],
    );
    assert_has(
        &refusal(run, "bad-pool-clone"),
        &[
            "thin pool vg_lab/lab-pool does not exist",
            "lvcreate --type thin-pool",
        ],
    );
    assert_has(
        &refusal(run, "bad-pool-create-base"),
        &["thin pool vg_lab/lab-pool does not exist"],
    );
    assert_has(
        &refusal(run, "pool-exists"),
        &[
            "cannot create thin pool vg_lab/lab-pool",
            "already exists (a thin pool)",
        ],
    );
    assert_has(
        &refusal(run, "clone-without-base"),
        &["base vg_lab/lab-demo-base is missing"],
    );
    assert_has(
        &refusal(run, "import-missing-image"),
        &["base image /tmp/no-such-image.qcow2 does not exist"],
    );
}

fn check_pool(run: &GuestRun) {
    let pool = run.data_json("pool");
    assert_eq!(pool["vg"], VG);
    assert_eq!(pool["name"], POOL);
    assert_eq!(pool["discards"], "passdown");
    assert_eq!(pool["active"], true);
    assert_eq!(pool["size"], POOL_SIZE);
    let lvs = run.data_json("pool-lvs");
    let row = &lvs["report"][0]["lv"][0];
    assert_eq!(row["discards"], "passdown", "{lvs}");
    assert_eq!(
        row["zero"], "zero",
        "zeroing of new pool blocks is on: {lvs}"
    );
    let discards = run.data_json("issue-discards");
    assert_eq!(discards["before"], 0, "{discards}");
    assert_eq!(discards["after"], 1, "{discards}");
    assert_has(
        discards["lvmlocal"].as_str().unwrap(),
        &["issue_discards = 1"],
    );
}

fn check_base(run: &GuestRun) {
    let unsealed = run.data_json("base-unsealed");
    assert_eq!(
        unsealed["base"],
        Value::Null,
        "an unsealed base is no base: {unsealed}"
    );
    assert_has(
        &refusal(run, "clone-unsealed"),
        &["base vg_lab/lab-demo-base is unfinished (not sealed)"],
    );
    let base = run.data_json("base");
    assert_eq!(base["path"], "/dev/vg_lab/lab-demo-base");
    let row = &base["row"];
    assert_eq!(row["segtype"], "thin");
    assert_eq!(row["pool_lv"], POOL);
    assert_eq!(
        row["lv_tags"],
        serde_json::json!(["lab", "lab-profile-demo", "lab-role-base"])
    );
    let attr = row["lv_attr"].as_str().unwrap();
    assert_eq!(&attr[1..2], "r", "sealed: read-only ({attr})");
    assert_eq!(&attr[4..5], "a", "active ({attr})");
    // 256 MiB virtual, and only the image's data written: the zeros of the image are
    // skipped (a mostly empty ext4 holds a few MiB).
    assert_eq!(row["lv_size"], BASE_SIZE);
    let written: f64 = row["data_percent"].as_f64().unwrap();
    assert!(
        written > 0.0 && written < 10.0,
        "base data_percent {written}"
    );
    assert!(
        base["write_error"].is_string(),
        "a write to the sealed base went through: {base}"
    );
}

fn check_snapshots(run: &GuestRun) {
    let clones = run.data_json("clones");
    for vm in ["web1", "web2", "db1"] {
        let c = &clones[vm];
        let row = &c["row"];
        assert_eq!(c["path"], format!("/dev/vg_lab/lab-demo-{vm}"));
        assert_eq!(c["block_device"], true, "{vm}: {c}");
        assert_eq!(c["ext4_magic"], true, "{vm} shows the base's ext4: {c}");
        assert_eq!(row["origin"], "lab-demo-base", "{vm}");
        assert_eq!(row["pool_lv"], POOL);
        assert_eq!(
            row["lv_tags"],
            serde_json::json!([
                "lab",
                "lab-profile-demo",
                "lab-role-clone",
                format!("lab-vm-{vm}")
            ]),
        );
        let attr = row["lv_attr"].as_str().unwrap();
        assert_eq!(&attr[1..2], "w", "{vm} writable ({attr})");
        assert_eq!(&attr[4..5], "a", "{vm} activated with -K ({attr})");
        assert_eq!(
            &attr[9..10],
            "k",
            "{vm} keeps the activation-skip flag ({attr})"
        );
    }
    assert_has(
        &refusal(run, "clone-base-in-use"),
        &["base vg_lab/lab-demo-base is in use by running domain lab-demo-builder"],
    );
    assert_has(
        &refusal(run, "clone-exists"),
        &["vg_lab/lab-demo-web1 already exists (lab's"],
    );
    // Deactivated as after a reboot (normal activation skips it), then back with -K.
    let inactive = run.data_json("db1-inactive");
    assert_eq!(
        &inactive["lv_attr"].as_str().unwrap()[4..5],
        "-",
        "{inactive}"
    );
    let back = run.data_json("db1-reactivated");
    assert_eq!(
        &back["row"]["lv_attr"].as_str().unwrap()[4..5],
        "a",
        "{back}"
    );
    assert_eq!(back["block_device"], true, "{back}");

    let observed = run.data_json("observe");
    let find = |name: &str| {
        observed
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} not observed: {observed}"))
            .clone()
    };
    let base = find("lab-demo-base");
    assert_eq!(
        (base["role"].as_str(), base["sealed"].as_bool()),
        (Some("base"), Some(true))
    );
    let web1 = find("lab-demo-web1");
    assert_eq!(web1["role"], "clone");
    assert_eq!(web1["owner"]["profile"], PROFILE);
    assert_eq!(web1["owner"]["vm"], "web1");
    assert_eq!(web1["location"], "vg_lab/lab-demo-web1");
}

fn check_trim(run: &GuestRun) {
    let t = run.data_json("trim");
    assert_eq!(t["hello"], HELLO, "web1 carries the base's file: {t}");
    let f = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k}: {t}"));
    let (before, written, deleted, trimmed) =
        (f("before"), f("written"), f("deleted"), f("trimmed"));
    // 64 MiB of a 256 MiB pool is 25 points.
    let share = WRITE as f64 / POOL_SIZE as f64 * 100.0;
    assert!(
        written - before > share * 0.9,
        "writing {WRITE} bytes: {before}% -> {written}%"
    );
    assert!(
        deleted > written - 2.0,
        "deleting alone gave the blocks back: {written}% -> {deleted}%"
    );
    assert!(
        deleted - trimmed > share * 0.9,
        "fstrim gave back too little: {deleted}% -> {trimmed}%"
    );
    assert!(
        trimmed - before < share / 2.0,
        "most of the write came back: {before}% before, {trimmed}% after fstrim"
    );
    assert_has(t["fstrim"].as_str().unwrap(), &["trimmed"]);
    // usage() reads the same growth on the clone itself.
    let grown = t["usage_written"].as_u64().unwrap() - t["usage_before"].as_u64().unwrap();
    assert!(grown >= WRITE * 9 / 10, "usage grew by {grown}");
}

/// lab trim's offline path on a thin snapshot: the pool gets the deleted data back.
fn check_lab_trim_offline(run: &GuestRun) {
    let t = run.data_json("lab-trim-offline");
    let f = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k}: {t}"));
    let (before, deleted, trimmed) = (f("before"), f("deleted"), f("trimmed"));
    let share = WRITE as f64 / POOL_SIZE as f64 * 100.0;
    assert!(
        deleted - before > share * 0.9,
        "the deleted data still held its pool blocks before the trim: {before}% -> {deleted}%"
    );
    assert!(
        deleted - trimmed > share * 0.9,
        "lab's offline trim gave the pool too little back: {deleted}% -> {trimmed}%"
    );
    let fs = &t["filesystems"][0];
    assert_eq!(fs["part"], "whole disk", "{t}");
    assert_eq!(fs["fstype"], "ext4", "{t}");
    assert!(fs["trimmed"].as_u64().unwrap() >= WRITE, "{t}");
    assert_eq!(
        t["loops_left"], "",
        "a loop device was left on the volume: {t}"
    );
    eprintln!(
        "lab trim offline of a thin snapshot in the guest: pool data {deleted:.1}% -> \
         {trimmed:.1}% ({} MiB deleted) in {:.0} ms",
        WRITE / MIB,
        f("ms")
    );
}

/// lab trim's offline path on a partitioned thin volume: the partition is mapped, trimmed,
/// and the mapping taken down.
fn check_lab_trim_offline_partitioned(run: &GuestRun) {
    let t = run.data_json("lab-trim-offline-partitioned");
    let f = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k}: {t}"));
    let (before, deleted, trimmed) = (f("before"), f("deleted"), f("trimmed"));
    let share = WRITE as f64 / POOL_SIZE as f64 * 100.0;
    assert!(deleted - before > share * 0.9, "{t}");
    assert!(
        deleted - trimmed > share * 0.9,
        "lab's offline trim of a partition gave the pool too little back: {t}"
    );
    let fs = &t["filesystems"][0];
    assert_eq!(fs["part"], "partition 1", "{t}");
    assert_eq!(fs["fstype"], "ext4", "{t}");
    assert!(fs["trimmed"].as_u64().unwrap() >= WRITE, "{t}");
    assert!(
        !t["mappings"].as_str().unwrap().contains("lab-trim-"),
        "lab left a mapping: {t}"
    );
}

fn check_threshold(run: &GuestRun) {
    let filled = run.data_json("filled");
    let data = filled["data_percent"].as_f64().unwrap();
    assert!(
        data > 80.0,
        "the pool was filled past the threshold: {filled}"
    );
    assert_has(
        &refusal(run, "too-full"),
        &[
            "thin pool vg_lab/lab-pool is too full",
            &format!("data is {data:.2}% used"),
            "lvextend -L +1G vg_lab/lab-pool",
            "below 80%",
        ],
    );
    let after = run.data_json("after-filler");
    let freed = after["data_percent"].as_f64().unwrap();
    assert!(
        freed < 40.0,
        "removing the filler clone freed its blocks: {after}"
    );
}

/// The disk half of `lab snapshot` and `lab restore` on a thin pool, with the functions
/// `crate::snapshot` calls for each VM (the memory half needs libvirt, tested on qcow2 labs
/// in tests/snapshot_restore.rs): a thin snapshot volume of the clone, tagged as lab's,
/// copying nothing; the clone laid again from it reads the snapshot's data; removal leaves
/// the clone whole.
fn check_lab_snapshot(run: &GuestRun) {
    let t = run.data_json("lab-snapshot");
    let f = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k}: {t}"));
    assert_eq!(t["at_snapshot"], "lab-snapshot-A", "{t}");
    assert_eq!(t["written"], "lab-snapshot-B", "{t}");
    assert_eq!(
        t["restored"], "lab-snapshot-A",
        "the restored clone does not read the snapshot's data: {t}"
    );
    assert_eq!(
        t["after_removal"], "lab-snapshot-A",
        "removing the snapshot changed the clone: {t}"
    );
    // The clone held DATA (12.5% of the pool) when the snapshot was taken: a copy would
    // have added as much again; a thin snapshot adds only metadata.
    let share = SNAP_DATA as f64 / POOL_SIZE as f64 * 100.0;
    let (before, taken) = (f("pool_before"), f("pool_taken"));
    assert!(
        taken - before < share / 10.0,
        "taking the snapshot grew the pool's data {before}% -> {taken}%: a copy was made"
    );
    // What the snapshot volume maps is the clone's data, shared with it.
    let mapped = t["bytes"].as_u64().unwrap();
    assert!(
        mapped >= SNAP_DATA,
        "the snapshot volume maps {mapped} bytes: {t}"
    );
    let row = &t["row"];
    assert_eq!(row["lv_name"], "lab-demo-web2.before+demo", "{t}");
    assert_eq!(row["origin"], "lab-demo-web2", "{t}");
    assert_eq!(row["pool_lv"], POOL, "{t}");
    let mut tags: Vec<&str> = row["lv_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        [
            "lab",
            "lab-profile-demo",
            "lab-role-snapshot",
            "lab-snapshot-before_demo",
            "lab-vm-web2"
        ],
        "{t}"
    );
    let attr = row["lv_attr"].as_str().unwrap();
    assert_eq!(&attr[1..2], "r", "a snapshot volume is read-only ({attr})");
    assert_eq!(&attr[4..5], "a", "active ({attr})");
    assert_eq!(&attr[9..10], "-", "no activation-skip flag ({attr})");
    let clone = &t["restored_row"];
    assert_eq!(clone["origin"], "lab-demo-web2.before+demo", "{t}");
    assert_eq!(
        clone["lv_tags"],
        serde_json::json!(["lab", "lab-profile-demo", "lab-role-clone", "lab-vm-web2"]),
        "{t}"
    );
    assert_eq!(&clone["lv_attr"].as_str().unwrap()[1..2], "w", "{t}");
    // Observed as a snapshot, never as a clone or base.
    let observed = t["observed"].as_array().unwrap();
    let snap = observed
        .iter()
        .find(|v| v["name"] == "lab-demo-web2.before+demo")
        .unwrap_or_else(|| panic!("not observed: {t}"));
    assert_eq!(snap["role"], "snapshot", "{snap}");
    assert_eq!(snap["owner"]["vm"], "web2", "{snap}");
    assert_eq!(
        t["removed"],
        serde_json::json!(["lab-demo-web2.before+demo"]),
        "{t}"
    );
    assert_eq!(t["left"], 0, "{t}");
    for (name, says) in [
        (
            "snapshot-missing-clone",
            &["nosuch's disk vg_lab/lab-demo-nosuch is missing"][..],
        ),
        (
            "restore-missing-snapshot",
            &[
                "snapshot gone is damaged",
                "vg_lab/lab-demo-web2.gone is missing or not lab's",
            ],
        ),
        (
            "snapshot-too-full",
            &["thin pool vg_lab/lab-pool is too full", "lvextend -L +1G"],
        ),
    ] {
        assert_has(&refusal(run, name), says);
    }
    eprintln!(
        "lab's thin snapshot of a clone holding {} MiB: pool data {before:.2}% -> {taken:.2}% \
         in {:.0} ms; restore (lvremove + lvcreate -s) {:.0} ms",
        SNAP_DATA / MIB,
        f("take_ms"),
        f("restore_ms")
    );
}

fn check_removal(run: &GuestRun) {
    assert_has(
        &refusal(run, "remove-untagged"),
        &[
            "vg_lab/lab-demo-intruder is not lab's clone of intruder",
            "no `lab` tag",
            "left alone",
        ],
    );
    assert_has(
        &refusal(run, "clone-over-untagged"),
        &["vg_lab/lab-demo-intruder already exists and is not lab's"],
    );
    assert_has(
        &refusal(run, "remove-other-profile"),
        &[
            "vg_lab/lab-demo-other is not lab's clone of other",
            "lab-profile-other",
            "left alone",
        ],
    );
    assert_has(
        &refusal(run, "remove-in-use"),
        &["vg_lab/lab-demo-web2 is in use by running domain lab-demo-web2"],
    );
    assert_has(
        &refusal(run, "remove-base-with-clones"),
        &[
            "base vg_lab/lab-demo-base still has clones",
            "lab-demo-web1",
            "lab-demo-db1",
        ],
    );
    let end = run.data_json("end");
    // The timed profiles' volumes (lab-t1-base...) stay to the end of the guest.
    let mut lvs: Vec<&str> = end["lvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .filter(|n| !n.starts_with("lab-t"))
        .collect();
    lvs.sort();
    assert_eq!(lvs, ["lab-demo-intruder", "lab-demo-other", POOL], "{end}");
    let observed = end["observe"].as_array().unwrap();
    let intruder = observed
        .iter()
        .find(|v| v["name"] == "lab-demo-intruder")
        .expect("the untagged LV is observed");
    assert_eq!(intruder["owner"], Value::Null, "it is nobody's to lab");
}

/// At -v every LVM and qemu-img command is logged as a line a person could paste.
fn check_commands_are_logged(run: &GuestRun) {
    let commands: Vec<&str> = run
        .console_text
        .lines()
        .filter_map(|l| l.strip_prefix("$ "))
        .collect();
    let logged = |parts: &[&str]| {
        assert!(
            commands.iter().any(|c| parts.iter().all(|p| c.contains(p))),
            "no logged command with {parts:?} among {} commands",
            commands.len()
        );
    };
    logged(&[
        "lvm lvcreate",
        "--type thin-pool",
        "--discards passdown",
        "--zero y",
    ]);
    logged(&[
        "lvm lvcreate",
        "--snapshot",
        "--ignoreactivationskip",
        "--addtag lab-vm-web1",
    ]);
    logged(&["lvm lvchange", "--permission r", "vg_lab/lab-demo-base"]);
    logged(&[
        "lvm lvchange",
        "--activate y --ignoreactivationskip",
        "vg_lab/lab-demo-db1",
    ]);
    logged(&["lvm lvremove", "vg_lab/lab-demo-web1"]);
    logged(&[
        "lvm lvcreate",
        "--snapshot --name lab-demo-web2.before+demo --permission r --setactivationskip n",
        "--addtag lab-role-snapshot",
        "vg_lab/lab-demo-web2",
    ]);
    logged(&[
        "lvm lvcreate",
        "--snapshot --name lab-demo-web2 --permission rw",
        "vg_lab/lab-demo-web2.before+demo",
    ]);
    logged(&["qemu-img convert -n --target-is-zero -f qcow2 -O raw"]);
    logged(&["lvm lvs --reportformat json"]);
}

/// The median clone time per base size, from LAB-DATA clone-time-<N>g.
fn clone_times(run: &GuestRun) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    for gib in TIMED_GIB {
        let v = run.data_json(&format!("clone-time-{gib}g"));
        assert_eq!(v["virtual_size"], gib * GIB, "{v}");
        let runs = v["ms"].as_array().unwrap();
        assert_eq!(runs.len(), TIMED_RUNS, "{v}");
        let median = v["median_ms"].as_f64().unwrap();
        assert!(median > 0.0, "{v}");
        out.push((gib, median));
    }
    // Clone time does not grow with the base: a thin snapshot copies no data (a copy of
    // 100 GiB would take 100 times as long). The issue's goal is 1.5 times at most; the
    // bound here is 2 because TCG makes every LVM command slow and noisy. The figures are
    // printed.
    let (small, large) = (out[0].1, out[2].1);
    assert!(
        large < small * 2.0,
        "a 100 GiB base took {large:.0} ms to clone, a 1 GiB base {small:.0} ms"
    );
    out
}

#[test]
#[ignore = "runs inside the TCG guest that lvm_thin_backend_in_a_tcg_guest boots"]
fn in_guest() {
    assert!(
        std::env::var_os(GUEST_ENV).is_some(),
        "in_guest runs inside the test guest only: it takes /dev/vda for a volume group"
    );
    in_guest::run();
}

mod in_guest {
    //! The guest side: each step prints `LAB-STEP name ok|fail`, each fact `LAB-DATA name
    //! JSON`; the first failed step ends the run.

    use std::fs::{self, File, OpenOptions};
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::FileTypeExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::time::Instant;

    use anyhow::{Context, Result};
    use lab::host::lvm::LvRow;
    use lab::runner::Cmd;
    use lab::size::ByteSize;
    use lab::storage::lvm_thin::LvmThinStorage;
    use lab::storage::{InUse, Storage};
    use serde_json::{Value, json};

    use super::*;

    /// The VG's LV names after the last refusal, while no step has run since: the next
    /// refusal's "before" (each `lvs` costs a third of a second under TCG).
    static LAST_LVS: Mutex<Option<Vec<String>>> = Mutex::new(None);

    fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> T {
        *LAST_LVS.lock().unwrap() = None;
        let t = Instant::now();
        let result = f();
        eprintln!("step {name}: {:.2} s", t.elapsed().as_secs_f64());
        match result {
            Ok(v) => {
                println!("LAB-STEP {name} ok");
                v
            }
            Err(e) => {
                let detail = format!("{e:#}").replace('\n', " | ");
                println!("LAB-STEP {name} fail {detail}");
                panic!("step {name} failed: {detail}");
            }
        }
    }

    fn data(name: &str, value: Value) {
        println!("LAB-DATA {name} {value}");
    }

    fn lv_names(s: &LvmThinStorage) -> Vec<String> {
        let mut names: Vec<String> = s
            .rows()
            .map(|rows| rows.into_iter().map(|r| r.lv_name).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// An operation that must be refused: its message, and whether the LVs stayed as they
    /// were.
    fn refusal<T>(name: &str, s: &LvmThinStorage, f: impl FnOnce() -> Result<T>) {
        let cached = LAST_LVS.lock().unwrap().take();
        let before = cached.unwrap_or_else(|| lv_names(s));
        let error = f().err().map(|e| format!("{e:#}"));
        let after = lv_names(s);
        *LAST_LVS.lock().unwrap() = Some(after.clone());
        data(
            name,
            json!({"error": error, "unchanged": before == after, "lvs": after}),
        );
    }

    fn row(s: &LvmThinStorage, lv: &str) -> Result<LvRow> {
        s.rows()?
            .into_iter()
            .find(|r| r.lv_name == lv)
            .with_context(|| format!("lvs does not list {lv}"))
    }

    fn pool_percent(s: &LvmThinStorage) -> Result<f64> {
        s.pool()?.data_percent.context("the pool reports no fill")
    }

    fn is_block_device(path: &Path) -> bool {
        fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
    }

    /// The ext4 superblock's magic (0xEF53 at byte 1080) on a device.
    fn has_ext4_magic(path: &Path) -> Result<bool> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut magic = [0u8; 2];
        f.seek(SeekFrom::Start(1080))?;
        f.read_exact(&mut magic)?;
        Ok(magic == [0x53, 0xef])
    }

    /// Write `bytes` of a pattern at `offset` of a file or device, then flush it to disk.
    fn write_pattern(path: &Path, offset: u64, bytes: u64) -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(!path.starts_with("/dev"))
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening {} for writing", path.display()))?;
        f.seek(SeekFrom::Start(offset))?;
        let block: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 | 1).collect();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(MIB) as usize;
            f.write_all(&block[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        Ok(())
    }

    /// A short text at 4 MiB into a device (past ext4's superblock and group descriptors),
    /// flushed.
    fn write_text(path: &Path, text: &str) -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {} for writing", path.display()))?;
        f.seek(SeekFrom::Start(4 * MIB))?;
        f.write_all(format!("{text:<32}").as_bytes())?;
        f.sync_all()?;
        Ok(())
    }

    /// What [`write_text`] wrote, read past the page cache's copy of another LV: the
    /// device is opened anew.
    fn read_text(path: &Path) -> Result<String> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        f.seek(SeekFrom::Start(4 * MIB))?;
        let mut buf = [0u8; 32];
        f.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
    }

    fn sh(program: &str, args: &[&str]) -> Result<String> {
        Ok(Cmd::new(program).args(args).run()?.stdout)
    }

    /// A 256 MiB ext4 image holding hello.txt, converted to qcow2, in the guest's tmpfs.
    fn base_image() -> Result<PathBuf> {
        fs::create_dir_all("/tmp/seed")?;
        fs::write("/tmp/seed/hello.txt", HELLO)?;
        sh(
            "mkfs.ext4",
            &["-q", "-F", "-d", "/tmp/seed", "/tmp/base.raw", "256M"],
        )?;
        sh(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "/tmp/base.raw",
                "/tmp/base.qcow2",
            ],
        )?;
        fs::remove_file("/tmp/base.raw")?;
        Ok(PathBuf::from("/tmp/base.qcow2"))
    }

    fn median_ms(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    pub fn run() {
        // -v: every command the backend runs is logged on stderr, the console.
        lab::ui::init(1, false, lab::cli::ColorChoice::Never);
        let s = LvmThinStorage::new(VG, POOL);
        let missing_vg = LvmThinStorage::new("vg_missing", POOL);

        step("vg", || {
            s.command("pvcreate").args(["-q", "/dev/vda"]).run()?;
            s.command("vgcreate").args(["-q", VG, "/dev/vda"]).run()?;
            Ok(())
        });

        // Bad input before there is a pool.
        refusal("bad-vg-create-pool", &s, || {
            missing_vg.create_pool(ByteSize::mib(64))
        });
        refusal("bad-vg-clone", &s, || {
            missing_vg.clone_base(PROFILE, "web1", &[])
        });
        refusal("bad-pool-clone", &s, || s.clone_base(PROFILE, "web1", &[]));
        refusal("bad-pool-create-base", &s, || {
            s.create_base(PROFILE, ByteSize::mib(64))
        });

        // The pool, created on request only.
        let pool = step("pool-create", || s.create_pool(ByteSize(POOL_SIZE)));
        data("pool", json!(pool));
        let lvs = step("pool-lvs", || {
            let out = s
                .command("lvs")
                .args([
                    "--reportformat",
                    "json",
                    "-o",
                    "lv_name,discards,zero,chunk_size",
                    &format!("{VG}/{POOL}"),
                ])
                .run()?;
            Ok(serde_json::from_str::<Value>(&out.stdout)?)
        });
        data("pool-lvs", lvs);
        refusal("pool-exists", &s, || s.create_pool(ByteSize(POOL_SIZE)));
        step("issue-discards", || {
            let before = s.issue_discards()?;
            let after = s.enable_issue_discards()?;
            let text = fs::read_to_string("/etc/lvm/lvmlocal.conf")?;
            data(
                "issue-discards",
                json!({"before": before.value, "after": after.value, "lvmlocal": text}),
            );
            Ok(())
        });

        // The base: an ext4 image imported, then sealed.
        refusal("clone-without-base", &s, || {
            s.clone_base(PROFILE, "web1", &[])
        });
        refusal("import-missing-image", &s, || {
            s.import_base(PROFILE, Path::new("/tmp/no-such-image.qcow2"))
        });
        let image = step("base-image", base_image);
        let base = step("base-import", || s.import_base(PROFILE, &image));
        let unsealed = step("base-unsealed", || s.base(PROFILE));
        data("base-unsealed", json!({"base": unsealed}));
        refusal("clone-unsealed", &s, || s.clone_base(PROFILE, "web1", &[]));
        step("base-seal", || s.seal_base(PROFILE));
        let sealed = step("base-sealed", || {
            s.base(PROFILE)?.context("base() gives no base once sealed")
        });
        // The kernel refuses writes to a read-only LV (opening it for writing may succeed).
        let write_error = write_pattern(&sealed.path, 0, MIB)
            .err()
            .map(|e| format!("{e:#}"));
        data(
            "base",
            json!({"path": sealed.path, "row": row(&s, &base.name).ok(), "write_error": write_error}),
        );

        // Three snapshots.
        let mut clones = serde_json::Map::new();
        for vm in ["web1", "web2", "db1"] {
            let t = Instant::now();
            let v = step(&format!("clone-{vm}"), || s.clone_base(PROFILE, vm, &[]));
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            clones.insert(
                vm.to_string(),
                json!({
                    "path": v.path,
                    "format": v.format,
                    "ms": ms,
                    "block_device": is_block_device(&v.path),
                    "ext4_magic": has_ext4_magic(&v.path).ok(),
                    "row": null,
                }),
            );
        }
        let rows = s.rows().unwrap_or_default();
        for (vm, c) in clones.iter_mut() {
            let name = format!("lab-{PROFILE}-{vm}");
            c["row"] = json!(rows.iter().find(|r| r.lv_name == name));
        }
        data("clones", Value::Object(clones));
        refusal("clone-base-in-use", &s, || {
            s.clone_base(
                PROFILE,
                "web4",
                &[InUse {
                    domain: "lab-demo-builder".into(),
                    path: sealed.path.clone(),
                }],
            )
        });
        refusal("clone-exists", &s, || s.clone_base(PROFILE, "web1", &[]));
        step("deactivate-db1", || {
            s.command("lvchange")
                .args(["--activate", "n", &format!("{VG}/lab-demo-db1")])
                .run()?;
            data("db1-inactive", json!(row(&s, "lab-demo-db1")?));
            Ok(())
        });
        let db1 = step("clone-volume-db1", || {
            s.clone_volume(PROFILE, "db1")?
                .context("clone_volume gives no clone for db1")
        });
        data(
            "db1-reactivated",
            json!({"row": row(&s, "lab-demo-db1").ok(), "block_device": is_block_device(&db1.path)}),
        );
        data("observe", json!(s.observe().ok()));

        // Write and delete in web1's ext4; fstrim gives the blocks back to the pool.
        step("trim", || {
            let web1 = s.clone_volume(PROFILE, "web1")?.context("no web1")?;
            let dev = web1.path.to_str().context("path")?;
            sh("mount", &["-t", "ext4", dev, "/mnt"])?;
            let hello = fs::read_to_string("/mnt/hello.txt")?;
            let before = pool_percent(&s)?;
            let usage_before = s.usage(&web1)?.allocated;
            write_pattern(Path::new("/mnt/blob"), 0, WRITE)?;
            let written = pool_percent(&s)?;
            let usage_written = s.usage(&web1)?.allocated;
            fs::remove_file("/mnt/blob")?;
            sh("sync", &[])?;
            let deleted = pool_percent(&s)?;
            let fstrim = sh("fstrim", &["-v", "/mnt"])?;
            let trimmed = pool_percent(&s)?;
            sh("umount", &["/mnt"])?;
            data(
                "trim",
                json!({
                    "hello": hello, "before": before, "written": written, "deleted": deleted,
                    "trimmed": trimmed, "fstrim": fstrim, "usage_before": usage_before,
                    "usage_written": usage_written,
                }),
            );
            Ok(())
        });

        // Clone time against base size: empty thin bases with some data, sealed. They stay
        // to the end (removal is tested on the demo profile; LVM commands are slow here).
        // The clones are made round-robin across the sizes: each LV in the VG makes LVM a
        // little slower, which must not count against the later sizes.
        let mut bases = Vec::new();
        for gib in TIMED_GIB {
            let profile = format!("t{gib}");
            bases.push(step(&format!("timed-base-{gib}g"), || {
                let base = s.create_base(&profile, ByteSize::gib(gib))?;
                // Some data at both ends, as an installed system has.
                write_pattern(&base.path, 0, MIB)?;
                write_pattern(&base.path, gib * GIB - MIB, MIB)?;
                s.seal_base(&profile)?;
                Ok(base)
            }));
        }
        let mut ms = vec![Vec::new(); TIMED_GIB.len()];
        for i in 0..TIMED_RUNS {
            for (k, gib) in TIMED_GIB.iter().enumerate() {
                let t = Instant::now();
                step(&format!("timed-clone-{gib}g-{i}"), || {
                    s.clone_base(&format!("t{gib}"), &format!("c{i}"), &[])
                });
                ms[k].push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        for ((gib, base), ms) in TIMED_GIB.iter().zip(&bases).zip(ms) {
            data(
                &format!("clone-time-{gib}g"),
                json!({
                    "virtual_size": s.usage(base).map(|u| u.virtual_size).ok(),
                    "median_ms": median_ms(ms.clone()), "ms": ms,
                }),
            );
        }

        // lab trim's offline path on a stopped VM's thin snapshot: data written and deleted
        // while mounted, unmounted untrimmed; lab::storage::fstrim::offline_fstrim (the
        // volume itself, its ext4 mounted and fstrimmed) gives the pool its blocks back.
        step("lab-trim-offline", || {
            let web1 = s.clone_volume(PROFILE, "web1")?.context("no web1")?;
            let dev = web1.path.to_str().context("path")?;
            sh("mount", &["-t", "ext4", "-o", "nodiscard", dev, "/mnt"])?;
            let before = pool_percent(&s)?;
            write_pattern(Path::new("/mnt/blob2"), 0, WRITE)?;
            fs::remove_file("/mnt/blob2")?;
            sh("sync", &[])?;
            sh("umount", &["/mnt"])?;
            let deleted = pool_percent(&s)?;
            let work = Path::new("/tmp/lab-trim-work");
            fs::create_dir_all(work)?;
            let t = Instant::now();
            let filesystems = lab::storage::fstrim::offline_fstrim(&web1.path, "raw", work)?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            let trimmed = pool_percent(&s)?;
            let loops = sh(
                "losetup",
                &["--noheadings", "--output", "NAME", "--associated", dev],
            )?;
            data(
                "lab-trim-offline",
                json!({
                    "before": before, "deleted": deleted, "trimmed": trimmed, "ms": ms,
                    "filesystems": filesystems, "loops_left": loops.trim(),
                }),
            );
            Ok(())
        });

        // The same on a thin volume with a partition table, as an installed system has: lab
        // maps the partition with a device-mapper linear mapping (a loop device on a thin
        // volume takes no discard).
        step("lab-trim-offline-partitioned", || {
            s.command("lvcreate")
                .args(["--type", "thin", "-V", "48m", "--thinpool", POOL])
                .args(["-n", "parted", VG])
                .run()?;
            let dev = format!("/dev/{VG}/parted");
            // An MBR with one Linux partition, sectors 2048 to the end.
            let sectors = 48 * MIB / 512 - 2048;
            let mut mbr = [0u8; 512];
            let entry = &mut mbr[446..462];
            entry[4] = 0x83;
            entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
            entry[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
            mbr[510] = 0x55;
            mbr[511] = 0xaa;
            {
                let mut f = OpenOptions::new().write(true).open(&dev)?;
                f.write_all(&mbr)?;
                f.sync_all()?;
            }
            // By hand for mkfs and the data: the same partition as a linear mapping.
            let table = format!("0 {sectors} linear {dev} 2048");
            sh(
                "dmsetup",
                &["create", "--noudevsync", "hand-p1", "--table", &table],
            )?;
            sh("dmsetup", &["mknodes", "--noudevsync", "hand-p1"])?;
            sh(
                "mkfs.ext4",
                &["-q", "-E", "nodiscard", "/dev/mapper/hand-p1"],
            )?;
            sh("mount", &["-t", "ext4", "/dev/mapper/hand-p1", "/mnt"])?;
            let before = pool_percent(&s)?;
            write_pattern(Path::new("/mnt/blob3"), 0, WRITE)?;
            fs::remove_file("/mnt/blob3")?;
            sh("sync", &[])?;
            sh("umount", &["/mnt"])?;
            sh("dmsetup", &["remove", "--noudevsync", "hand-p1"])?;
            let deleted = pool_percent(&s)?;
            let work = Path::new("/tmp/lab-trim-work-2");
            fs::create_dir_all(work)?;
            let filesystems = lab::storage::fstrim::offline_fstrim(Path::new(&dev), "raw", work)?;
            let trimmed = pool_percent(&s)?;
            let left = sh("dmsetup", &["ls"])?;
            data(
                "lab-trim-offline-partitioned",
                json!({
                    "before": before, "deleted": deleted, "trimmed": trimmed,
                    "filesystems": filesystems, "mappings": left.trim(),
                }),
            );
            s.command("lvremove")
                .args(["-y", &format!("{VG}/parted")])
                .run()?;
            Ok(())
        });

        // A full copy, for comparison: COPY bytes of the 1 GiB base read and written into a
        // new thin volume, synced. The rate gives what copying whole bases would take.
        step("full-copy", || {
            s.command("lvcreate")
                .args(["--type", "thin", "-V", "64m", "--thinpool", POOL])
                .args(["-n", "fullcopy", VG])
                .run()?;
            let from = Path::new("/dev").join(VG).join("lab-t1-base");
            let to = Path::new("/dev").join(VG).join("fullcopy");
            let t = Instant::now();
            let mut src =
                File::open(&from).with_context(|| format!("opening {}", from.display()))?;
            let mut dst = OpenOptions::new()
                .write(true)
                .open(&to)
                .with_context(|| format!("opening {}", to.display()))?;
            let mut buf = vec![0u8; MIB as usize];
            let mut left = COPY;
            while left > 0 {
                src.read_exact(&mut buf)?;
                dst.write_all(&buf)?;
                left -= MIB;
            }
            dst.sync_all()?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            drop((src, dst));
            data("full-copy", json!({"bytes": COPY, "ms": ms}));
            s.command("lvremove")
                .args(["-y", &format!("{VG}/fullcopy")])
                .run()?;
            Ok(())
        });

        // Past the fill threshold: a filler clone takes the pool to about 85%.
        let filler = step("clone-filler", || s.clone_base(PROFILE, "filler", &[]));
        step("fill", || {
            let pool = s.pool()?;
            let size = pool.size.context("pool size")?;
            let used = pool.data_percent.context("pool fill")? / 100.0 * size as f64;
            let target = size as f64 * 0.85 - used;
            let bytes = (target / MIB as f64).ceil() as u64 * MIB;
            write_pattern(&filler.path, 0, bytes)?;
            Ok(())
        });
        data("filled", json!(s.pool().ok()));
        refusal("too-full", &s, || s.clone_base(PROFILE, "late", &[]));
        refusal("snapshot-too-full", &s, || s.snapshot_room());
        step("remove-filler", || s.remove_clone(PROFILE, "filler", &[]));
        data("after-filler", json!(s.pool().ok()));

        // lab snapshot's and lab restore's disk half, as `crate::snapshot` runs it for each
        // VM while the domain is stopped. The name holds `_`, which the LV name spells `+`.
        step("lab-snapshot", || {
            const SNAP: &str = "before_demo";
            let web2 = s.clone_volume(PROFILE, "web2")?.context("no web2")?;
            write_pattern(&web2.path, 8 * MIB, SNAP_DATA)?;
            write_text(&web2.path, "lab-snapshot-A")?;
            let pool_before = pool_percent(&s)?;
            let t = Instant::now();
            s.take_snapshot_volume(PROFILE, "web2", SNAP)?;
            let take_ms = t.elapsed().as_secs_f64() * 1000.0;
            let pool_taken = pool_percent(&s)?;
            // Taken again (a killed lab snapshot completed): nothing more.
            s.take_snapshot_volume(PROFILE, "web2", SNAP)?;
            let snap_row = row(&s, "lab-demo-web2.before+demo")?;
            let at_snapshot = read_text(&web2.path)?;
            write_text(&web2.path, "lab-snapshot-B")?;
            let written = read_text(&web2.path)?;
            let t = Instant::now();
            s.lay_clone_from_snapshot(PROFILE, "web2", SNAP)?;
            let restore_ms = t.elapsed().as_secs_f64() * 1000.0;
            let restored = read_text(&web2.path)?;
            let restored_row = row(&s, "lab-demo-web2")?;
            let bytes = s.snapshot_bytes(PROFILE, SNAP)?;
            let observed = s.observe()?;
            let removed = s.remove_snapshot_volumes(PROFILE, Some(SNAP))?;
            let after_removal = read_text(&web2.path)?;
            let left = s.snapshot_volumes(PROFILE, None)?.len();
            data(
                "lab-snapshot",
                json!({
                    "at_snapshot": at_snapshot, "written": written, "restored": restored,
                    "after_removal": after_removal, "pool_before": pool_before,
                    "pool_taken": pool_taken, "bytes": bytes, "row": snap_row,
                    "restored_row": restored_row, "observed": observed, "removed": removed,
                    "left": left, "take_ms": take_ms, "restore_ms": restore_ms,
                }),
            );
            Ok(())
        });
        refusal("snapshot-missing-clone", &s, || {
            s.take_snapshot_volume(PROFILE, "nosuch", "gone")
        });
        refusal("restore-missing-snapshot", &s, || {
            s.lay_clone_from_snapshot(PROFILE, "web2", "gone")
        });

        // Removal: LVs made by hand with lab's names are left alone.
        step("by-hand", || {
            s.command("lvcreate")
                .args(["--type", "thin", "-V", "64m", "--thinpool", POOL])
                .args(["-n", "lab-demo-intruder", VG])
                .run()?;
            s.command("lvcreate")
                .args(["--type", "thin", "-V", "64m", "--thinpool", POOL])
                .args(["-n", "lab-demo-other", "--addtag", "lab", "--addtag"])
                .args([
                    "lab-profile-other",
                    "--addtag",
                    "lab-role-clone",
                    "--addtag",
                ])
                .args(["lab-vm-other", VG])
                .run()?;
            Ok(())
        });
        refusal("remove-untagged", &s, || {
            s.remove_clone(PROFILE, "intruder", &[])
        });
        refusal("clone-over-untagged", &s, || {
            s.clone_base(PROFILE, "intruder", &[])
        });
        refusal("remove-other-profile", &s, || {
            s.remove_clone(PROFILE, "other", &[])
        });
        refusal("remove-in-use", &s, || {
            s.remove_clone(
                PROFILE,
                "web2",
                &[InUse {
                    domain: "lab-demo-web2".into(),
                    path: s.lv_path("lab-demo-web2"),
                }],
            )
        });
        refusal("remove-base-with-clones", &s, || s.remove_base(PROFILE));
        step("remove-clones", || {
            for vm in ["web1", "web2", "db1", "never-made"] {
                s.remove_clone(PROFILE, vm, &[])?;
            }
            Ok(())
        });
        step("remove-base", || s.remove_base(PROFILE));
        step("end", || {
            data("end", json!({"lvs": lv_names(&s), "observe": s.observe()?}));
            Ok(())
        });
    }
}
