//! `lab check` as a user runs it, for the storage.* and lvm.* checks: fixture laptops under
//! --sysroot, --fix on a copy of one, this machine live, and bad input.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn host(name: &str) -> String {
    fixtures().join("hosts").join(name).display().to_string()
}

fn profile(name: &str) -> String {
    fixtures()
        .join("profiles")
        .join(format!("{name}.toml"))
        .display()
        .to_string()
}

/// Run `lab check --json` with `args`; the parsed document and the exit status.
fn lab_check(args: &[&str]) -> (Value, i32) {
    let out = Command::cargo_bin("lab")
        .unwrap()
        .arg("check")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (doc, out.status.code().unwrap_or(-1))
}

fn sysroot_check(name: &str, extra: &[&str]) -> (Value, i32) {
    let root = host(name);
    let mut args = vec!["--sysroot", root.as_str(), "--no-throughput"];
    args.extend_from_slice(extra);
    lab_check(&args)
}

fn find<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .expect("checks is a list")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {doc:#}"))
}

fn status<'a>(doc: &'a Value, id: &str) -> &'a str {
    find(doc, id)["status"].as_str().unwrap()
}

fn summary<'a>(doc: &'a Value, id: &str) -> &'a str {
    find(doc, id)["summary"].as_str().unwrap()
}

fn fix<'a>(doc: &'a Value, id: &str) -> &'a str {
    find(doc, id)["fix"]
        .as_str()
        .unwrap_or_else(|| panic!("{id} has no fix"))
}

const STORAGE_IDS: [&str; 3] = ["storage.throughput", "storage.media", "storage.discard"];
const LVM_IDS: [&str; 6] = [
    "lvm.installed",
    "lvm.issue-discards",
    "lvm.thin-pool",
    "lvm.thin-pool-discards",
    "lvm.thin-pool-fill",
    "lvm.thin-check",
];

#[test]
fn every_id_is_reported_once_in_order_with_a_fix_for_each_warn_or_fail() {
    let (doc, _) = sysroot_check("storage-hdd", &["--storage", "/srv/lab"]);
    let ids: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .filter(|id| id.starts_with("storage.") || id.starts_with("lvm."))
        .collect();
    let want: Vec<&str> = STORAGE_IDS.iter().chain(LVM_IDS.iter()).copied().collect();
    assert_eq!(ids, want);
    for c in doc["checks"].as_array().unwrap() {
        if c["status"] == "warn" || c["status"] == "fail" {
            assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c:#}");
        }
    }
    assert!(doc["facts"]["storage"].is_object());
    assert!(doc["facts"]["lvm"].is_object());
}

#[test]
fn ssd_laptop_passes_media_and_discard() {
    let (doc, _) = sysroot_check("storage-ssd", &[]);
    assert_eq!(status(&doc, "storage.throughput"), "skip");
    assert_eq!(status(&doc, "storage.media"), "pass");
    assert_eq!(status(&doc, "storage.discard"), "pass");
    assert!(summary(&doc, "storage.media").contains("nvme0n1 (SAMSUNG MZVL2512HCJQ-00B00"));
    assert!(
        summary(&doc, "storage.media")
            .contains("/var/lib/lab/images does not exist yet, measured at /var/lib")
    );
    assert_eq!(doc["facts"]["storage"]["disks"][0]["rotational"], false);
}

#[test]
fn hdd_laptop_warns_with_fixes() {
    let (doc, _) = sysroot_check("storage-hdd", &["--storage", "/srv/lab"]);
    assert_eq!(status(&doc, "storage.media"), "warn");
    assert!(fix(&doc, "storage.media").contains("put the lab on an SSD"));
    assert_eq!(status(&doc, "storage.discard"), "warn");
    assert!(summary(&doc, "storage.discard").contains("discard_max_bytes = 0"));
}

#[test]
fn loop_device_on_an_ssd_is_an_ssd() {
    let (doc, _) = sysroot_check("storage-loop-on-ssd", &["--storage", "/var/lib/lab/images"]);
    assert_eq!(status(&doc, "storage.media"), "pass");
    assert!(
        summary(&doc, "storage.media").contains("loop0 (loop device on /home/alice/lab-disk.img)")
    );
    assert_eq!(status(&doc, "storage.discard"), "pass");
}

#[test]
fn dm_over_two_disks_names_the_slow_one() {
    let (doc, _) = sysroot_check("storage-dm-two-disks", &["--storage", "/home/alice/lab"]);
    assert_eq!(status(&doc, "storage.media"), "warn");
    assert!(summary(&doc, "storage.media").contains("rotational: sdb"));
    assert_eq!(status(&doc, "storage.discard"), "warn");
    let disks: Vec<&str> = doc["facts"]["storage"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(disks, ["sda", "sdb"]);
}

#[test]
fn issue_discards_on_and_off() {
    let (doc, _) = sysroot_check("lvm-discards-on", &[]);
    assert_eq!(status(&doc, "lvm.installed"), "pass");
    assert_eq!(status(&doc, "lvm.issue-discards"), "pass");
    let (doc, _) = sysroot_check("lvm-discards-off", &[]);
    assert_eq!(status(&doc, "lvm.issue-discards"), "warn");
    assert!(
        fix(&doc, "lvm.issue-discards")
            .contains("/etc/lvm/lvmlocal.conf:\ndevices {\n\tissue_discards = 1\n}")
    );
}

#[test]
fn fix_writes_lvmlocal_conf_and_the_check_then_passes() {
    let dir = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", host("lvm-discards-off")))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let conf = dir.path().join("etc/lvm/lvmlocal.conf");
    let before = std::fs::read_to_string(&conf).unwrap();
    let lvm_conf_before = std::fs::read(dir.path().join("etc/lvm/lvm.conf")).unwrap();
    let root = dir.path().display().to_string();

    let (doc, _) = lab_check(&["--sysroot", &root, "--no-throughput", "--fix"]);
    assert_eq!(status(&doc, "lvm.issue-discards"), "pass");
    assert!(
        summary(&doc, "lvm.issue-discards").contains("lvmconfig now reads issue_discards = 1"),
        "{}",
        summary(&doc, "lvm.issue-discards")
    );
    let after = std::fs::read_to_string(&conf).unwrap();
    assert_eq!(
        after,
        format!("{before}\ndevices {{\n\tissue_discards = 1\n}}\n")
    );
    assert_eq!(
        std::fs::read(dir.path().join("etc/lvm/lvm.conf")).unwrap(),
        lvm_conf_before,
        "lvm.conf is not touched"
    );

    let (doc, _) = lab_check(&["--sysroot", &root, "--no-throughput"]);
    assert_eq!(status(&doc, "lvm.issue-discards"), "pass");
    assert!(summary(&doc, "lvm.issue-discards").starts_with("devices/issue_discards = 1"));
}

#[test]
fn thin_pool_fill_at_50_85_and_97_percent() {
    let thin = profile("lvm-thin");
    let (doc, _) = sysroot_check("lvm-pool-50", &["--profile", &thin]);
    for id in &LVM_IDS[2..] {
        assert_eq!(status(&doc, id), "pass", "{id}: {}", summary(&doc, id));
    }
    // The VG's PV is what the storage checks measured.
    assert!(summary(&doc, "storage.media").contains("on /dev/nvme0n1p3"));

    let (doc, _) = sysroot_check("lvm-pool-85", &["--profile", &profile("lvm-auto")]);
    assert_eq!(status(&doc, "lvm.thin-pool-fill"), "warn");
    assert_eq!(
        fix(&doc, "lvm.thin-pool-fill"),
        "lvextend -L +22G vg_lab/lab-pool"
    );
    assert_eq!(status(&doc, "lvm.thin-pool-discards"), "warn");
    assert_eq!(
        fix(&doc, "lvm.thin-pool-discards"),
        "lvchange --discards passdown vg_lab/lab-pool"
    );

    let (doc, code) = sysroot_check("lvm-pool-97", &["--profile", &thin]);
    assert_eq!(status(&doc, "lvm.thin-pool-fill"), "fail");
    assert!(
        fix(&doc, "lvm.thin-pool-fill")
            .contains("lvextend --poolmetadatasize +18M vg_lab/lab-pool")
    );
    assert_eq!(code, 3, "a failed check exits 3");
}

#[test]
fn missing_vg_fails_for_lvm_thin_with_the_commands_to_create_it() {
    let (doc, code) = sysroot_check("lvm-no-vg", &["--profile", &profile("lvm-thin")]);
    assert_eq!(status(&doc, "lvm.thin-pool"), "fail");
    assert!(
        fix(&doc, "lvm.thin-pool")
            .contains("lvcreate --type thin-pool --discards passdown -L 40G -n lab-pool vg_lab")
    );
    assert_eq!(code, 3);
    let (doc, _) = sysroot_check("lvm-no-vg", &["--profile", &profile("lvm-auto")]);
    assert_eq!(status(&doc, "lvm.thin-pool"), "skip");
    assert!(summary(&doc, "storage.media").contains("VG vg_lab does not exist"));
}

#[test]
fn lvm_missing_is_a_warning_unless_the_profile_demands_it() {
    let (doc, _) = sysroot_check("lvm-missing", &[]);
    assert_eq!(status(&doc, "lvm.installed"), "warn");
    assert_eq!(
        fix(&doc, "lvm.installed"),
        "apt install lvm2 thin-provisioning-tools"
    );
    let (doc, code) = sysroot_check("lvm-missing", &["--profile", &profile("lvm-thin")]);
    assert_eq!(status(&doc, "lvm.installed"), "fail");
    assert_eq!(code, 3);
}

/// This machine, live: /dev/vda refuses even root (EPERM), so the figure comes from a
/// scratch file in the given directory. On a machine where the device opens, the device
/// is read instead; both are real figures.
#[test]
fn live_throughput_is_a_real_figure_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().display().to_string();
    let started = std::time::Instant::now();
    let (doc, _) = lab_check(&["--storage", &storage]);
    let elapsed = started.elapsed();

    let t = &doc["facts"]["storage"]["throughput"];
    let mb_per_s = t["mb_per_s"].as_f64().expect("a measured figure");
    assert!(mb_per_s > 0.0 && mb_per_s.is_finite(), "{t:#}");
    assert!(t["bytes_read"].as_u64().unwrap() > 0);
    let c = find(&doc, "storage.throughput");
    assert!(
        ["pass", "warn", "fail"].contains(&c["status"].as_str().unwrap()),
        "{c:#}"
    );
    assert!(
        c["summary"]
            .as_str()
            .unwrap()
            .contains("MB/s sequential read of")
    );
    if t["method"] == "device" {
        assert!(t["device_error"].is_null());
    } else {
        assert!(
            t["method"].as_str().unwrap().starts_with("scratch"),
            "{t:#}"
        );
        assert!(
            c["summary"].as_str().unwrap().contains("scratch file in"),
            "{c:#}"
        );
        assert!(t["source"].as_str().unwrap().starts_with(&storage), "{t:#}");
        if Path::new("/dev/vda").exists() && t["device_error"].is_string() {
            assert!(
                c["summary"].as_str().unwrap().contains("could not be read"),
                "{c:#}"
            );
        }
    }
    assert!(t["probe_seconds"].as_f64().unwrap() < 6.0, "{t:#}");
    assert!(elapsed.as_secs_f64() < 30.0);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the scratch file is removed"
    );

    let disks = doc["facts"]["storage"]["disks"].as_array().unwrap();
    assert!(!disks.is_empty(), "{doc:#}");
    for id in ["storage.media", "storage.discard"] {
        let s = status(&doc, id);
        assert!(["pass", "warn"].contains(&s), "{id}: {}", summary(&doc, id));
        assert!(summary(&doc, id).contains(disks[0]["name"].as_str().unwrap()));
    }
}

#[test]
fn a_storage_path_that_does_not_exist_is_a_usage_error() {
    let out = Command::cargo_bin("lab")
        .unwrap()
        .args(["check", "--json", "--storage", "/does/not/exist"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--storage /does/not/exist: no such file or directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "no report on a usage error");

    // Under a sysroot the path is looked up in the sysroot.
    let out = Command::cargo_bin("lab")
        .unwrap()
        .args([
            "check",
            "--sysroot",
            &host("storage-ssd"),
            "--storage",
            "/srv/lab",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
