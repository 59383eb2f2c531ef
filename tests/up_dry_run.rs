//! `lab up --dry-run` through the binary: libvirt's test driver stands in for the daemon
//! (it has someone else's network "default" on 192.168.122.0/24 and a domain "test"), host
//! facts come from fixture trees, and every profile keeps its images in a fresh temporary
//! directory (see [`own_images`]).

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

fn fixture(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
        .display()
        .to_string()
}

/// `text`, a profile, with its images in `dir/images` (made empty here) instead of the
/// default /var/lib/lab/images: lab reads its image directory live even under --sysroot,
/// and what a developer's own `lab up` left there (the base `lab down` keeps) would change
/// the plan. The `dir` line goes right under `[storage]`, or a `[storage]` table goes at
/// the end, so the lines above keep their numbers for errors that name one.
fn own_images(dir: &Path, text: &str) -> String {
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    let line = format!(
        "dir = {}",
        toml::Value::from(images.to_str().unwrap().to_string())
    );
    let lines: Vec<&str> = text.lines().collect();
    match lines.iter().position(|l| l.trim() == "[storage]") {
        Some(at) => {
            let (head, tail) = lines.split_at(at + 1);
            format!("{}\n{line}\n{}\n", head.join("\n"), tail.join("\n"))
        }
        None => format!("{}\n\n[storage]\n{line}\n", text.trim_end()),
    }
}

/// A copy in `dir` of the profile file `source` (`profiles/NAME.toml` for a shipped one),
/// with its images in `dir/images`.
fn profile_copy(dir: &Path, source: &Path) -> String {
    let text = std::fs::read_to_string(source).unwrap();
    let copy = dir.join(source.file_name().unwrap());
    std::fs::write(&copy, own_images(dir, &text)).unwrap();
    copy.display().to_string()
}

/// A shipped profile, as `profile_copy` makes it.
fn shipped(dir: &Path, name: &str) -> String {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(format!("{name}.toml"));
    profile_copy(dir, &source)
}

fn lab(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("lab")
        .unwrap()
        .args(args)
        .env("LAB_CONNECT", "test:///default")
        .output()
        .unwrap()
}

#[test]
fn dry_run_prints_the_plan_as_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = lab(&[
        "up",
        &shipped(dir.path(), "smoke"),
        "--dry-run",
        "--json",
        "--sysroot",
        &fixture("hosts/net-vpn-split"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["profile"], "smoke");
    // The fixture's WireGuard route sits on smoke's preferred subnet.
    assert_eq!(plan["network"]["subnet"], "10.213.167.0/24");
    let ops: Vec<String> = plan["actions"]
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
        .collect();
    assert_eq!(
        ops,
        [
            "create network lab-smoke",
            "write boot lab-smoke-initrd.img",
            "build base lab-smoke-base.qcow2",
            "clone disk lab-smoke-node1.qcow2",
            "define domain lab-smoke-node1",
            "start domain lab-smoke-node1",
            "clone disk lab-smoke-node2.qcow2",
            "define domain lab-smoke-node2",
            "start domain lab-smoke-node2",
            "clone disk lab-smoke-node3.qcow2",
            "define domain lab-smoke-node3",
            "start domain lab-smoke-node3",
        ]
    );
}

#[test]
fn dry_run_for_people_lists_actions_and_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let out = lab(&[
        "up",
        &shipped(dir.path(), "packstack-multinode"),
        "--dry-run",
        "--sysroot",
        &fixture("hosts/net-vpn-split"),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Will do:"), "{text}");
    assert!(
        text.contains("create  network  lab-packstack-multinode"),
        "{text}"
    );
    assert!(
        text.contains("no thin pool vg_lab/lab-pool on this host"),
        "{text}"
    );
}

#[test]
fn a_fixed_subnet_on_a_host_route_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let profile = profile_copy(
        dir.path(),
        Path::new(&fixture("profiles/fixed-lan-subnet.toml")),
    );
    let out = lab(&[
        "up",
        &profile,
        "--dry-run",
        "--sysroot",
        &fixture("hosts/net-vpn-split"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{profile}:5: network.subnet: 192.168.1.0/24 collides with 192.168.1.0/24 (route via wlan0)")),
        "{stderr}"
    );
}

#[test]
fn a_fixed_subnet_on_someone_else_s_libvirt_network_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("on-default.toml");
    std::fs::write(
        &path,
        own_images(
            dir.path(),
            "name = \"on-default\"\n[network]\nsubnet = \"192.168.122.0/24\"\n[base]\nkernel = \"host\"\n[[vm]]\nname = \"a\"\n",
        ),
    )
    .unwrap();
    let out = lab(&[
        "up",
        path.to_str().unwrap(),
        "--dry-run",
        "--sysroot",
        &fixture("hosts/net-vpn-split"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("libvirt network default"), "{stderr}");
}

#[test]
fn profiles_lists_shipped_and_local_profiles_with_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
    std::fs::write(
        dir.path().join("profiles/smoke.toml"),
        own_images(
            dir.path(),
            "name = \"smoke\"\ndescription = \"my own smoke\"\n[base]\nkernel = \"host\"\n[[vm]]\nname = \"a\"\n",
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("profiles/broken.toml"), "name = \n").unwrap();
    let out = Command::cargo_bin("lab")
        .unwrap()
        .args(["profiles", "--json"])
        .current_dir(dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(String, String, bool, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["source"].as_str().unwrap().to_string(),
                e["shadowed"].as_bool().unwrap(),
                e["error"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("broken".into(), "profiles/broken.toml".into(), false, true),
            ("smoke".into(), "profiles/smoke.toml".into(), false, false),
            ("smoke".into(), "built-in".into(), true, false),
            ("packstack-aio".into(), "built-in".into(), false, false),
            (
                "packstack-multinode".into(),
                "built-in".into(),
                false,
                false
            ),
            ("debian-stack".into(), "built-in".into(), false, false),
        ]
    );
    // And the local one wins when asked for by name.
    let out = Command::cargo_bin("lab")
        .unwrap()
        .args(["up", "smoke", "--dry-run", "--json", "--sysroot"])
        .arg(fixture("hosts/net-vpn-split"))
        .current_dir(dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("LAB_CONNECT", "test:///default")
        .output()
        .unwrap();
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["vms"].as_array().unwrap().len(), 1);
}

#[test]
fn a_pool_is_created_only_for_a_profile_that_names_one_and_a_vg_that_exists() {
    let out = lab(&["pool", "create", "smoke", "--size", "1G"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("names no vg and pool to create"),
        "{stderr}"
    );
    // The shipped packstack profiles name vg_lab/lab-pool, which this machine lacks.
    let out = lab(&["pool", "create", "packstack-aio", "--size", "1G"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("volume group vg_lab does not exist"),
        "{stderr}"
    );
}

#[test]
fn under_a_sysroot_lab_s_lvs_come_from_its_recorded_report_not_the_live_lvm() {
    // The lvm-pool-50 host, whose recorded report also holds thin-demo's sealed base: the
    // plan keeps that base (this machine's own LVM has no such LV).
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(fixture("hosts/lvm-pool-50"))
        .arg(&host)
        .status()
        .unwrap();
    assert!(copied.success());
    let lvs = host.join(".lab-recorded/lvs.json");
    let pool_row = std::fs::read_to_string(&lvs)
        .unwrap()
        .lines()
        .find(|l| l.contains("\"lab-pool\""))
        .unwrap()
        .trim()
        .to_string();
    let base_row = r#"{"lv_name":"lab-thin-demo-base", "vg_name":"vg_lab", "lv_attr":"Vri---tz-k", "segtype":"thin", "lv_size":"21474836480", "lv_metadata_size":"", "data_percent":"", "metadata_percent":"", "discards":"passdown", "lv_uuid":"Q2bq5L-0Xh7-Ud1S-Wq2x-9fXh-Vb3k-m1Tb0A", "lv_tags":"lab,lab-profile-thin-demo,lab-role-base"}"#;
    std::fs::write(
        &lvs,
        format!("{{\"report\": [{{\"lv\": [{pool_row}, {base_row}]}}]}}\n"),
    )
    .unwrap();
    let out = lab(&[
        "up",
        &profile_copy(dir.path(), Path::new(&fixture("profiles/lvm-thin.toml"))),
        "--dry-run",
        "--json",
        "--sysroot",
        host.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = plan["unchanged"].as_array().unwrap();
    assert!(
        kept.iter()
            .any(|a| a["op"] == "keep" && a["name"] == "lab-thin-demo-base"),
        "{kept:?}"
    );
    let actions = plan["actions"].as_array().unwrap();
    assert!(!actions.iter().any(|a| a["op"] == "build"), "{actions:?}");
}

/// `lab up --dry-run` tells what the laptop is short of, with the numbers, before a run of
/// hours: the same findings `lab check --profile` fails on (tests/check_cli.rs), as
/// warnings of the plan; a laptop with room has none of them.
#[test]
fn a_dry_run_warns_when_the_laptop_is_short_for_packstack() {
    let dir = tempfile::tempdir().unwrap();
    let profile = shipped(dir.path(), "packstack-aio");
    let run = |host: &str| -> Vec<String> {
        let out = lab(&[
            "up",
            &profile,
            "--dry-run",
            "--json",
            "--sysroot",
            &fixture(&format!("hosts/{host}")),
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        plan["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .filter(|w| w.starts_with("resources."))
            .collect()
    };
    let small = run("laptop-small");
    let find = |id: &str| {
        small
            .iter()
            .find(|w| w.starts_with(&format!("{id}: ")))
            .unwrap_or_else(|| panic!("no {id} in {small:#?}"))
            .clone()
    };
    assert!(
        find("resources.memory").contains(
            "needs 16GiB for 1 VM plus 1GiB for the host; the host has 7.6GiB: short by 9.4GiB"
        ),
        "{small:#?}"
    );
    // The profile's images are in a temporary directory: on / of the recorded df.
    assert!(
        find("resources.disk").contains(
            "/ has 40.3GiB free; the base image alone may grow to 60GiB: short by 19.7GiB"
        ),
        "{small:#?}"
    );
    assert!(find("resources.nested").contains("aio of packstack-aio needs nested KVM"));
    assert_eq!(small.len(), 3, "{small:#?}");
    assert_eq!(run("laptop-big"), Vec::<String>::new());
}
