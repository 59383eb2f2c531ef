//! `lab check` as a user runs it: the network, resources, libvirt and tools areas, the JSON
//! shape, exit statuses and bad input.

use std::path::PathBuf;

use assert_cmd::Command;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Run `lab check ARGS --json` and return (exit status, parsed report, stderr).
fn check(args: &[&str]) -> (i32, Value, String) {
    let out = Command::cargo_bin("lab")
        .unwrap()
        .arg("check")
        .args(args)
        .arg("--json")
        .env_remove("LAB_CONNECT")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}"));
    (
        out.status.code().unwrap(),
        report,
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn by_id<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report:#}"))
}

fn status<'a>(report: &'a Value, id: &str) -> &'a str {
    by_id(report, id)["status"].as_str().unwrap()
}

fn summary<'a>(report: &'a Value, id: &str) -> &'a str {
    by_id(report, id)["summary"].as_str().unwrap()
}

fn fix<'a>(report: &'a Value, id: &str) -> &'a str {
    by_id(report, id)["fix"].as_str().unwrap_or("")
}

fn sysroot(name: &str) -> String {
    fixture(&format!("hosts/{name}")).display().to_string()
}

/// Invariants of every report: unique ids, statuses from the set, a fix for every warn and
/// fail, exit status 3 exactly when something failed.
fn assert_well_formed(code: i32, report: &Value) {
    let checks = report["checks"].as_array().unwrap();
    assert!(!checks.is_empty());
    let mut ids = std::collections::BTreeSet::new();
    let mut failed = false;
    for c in checks {
        let id = c["id"].as_str().unwrap();
        assert!(ids.insert(id), "duplicate id {id}");
        let st = c["status"].as_str().unwrap();
        assert!(["pass", "warn", "fail", "skip"].contains(&st), "{c}");
        assert!(!c["summary"].as_str().unwrap().is_empty(), "{c}");
        if st == "warn" || st == "fail" {
            assert!(
                c["fix"].as_str().is_some_and(|f| !f.is_empty()),
                "{id} is {st} without a fix"
            );
        }
        failed |= st == "fail";
    }
    assert!(report["facts"].is_object());
    assert_eq!(code, if failed { 3 } else { 0 }, "{report:#}");
}

#[test]
fn auto_subnet_steps_around_a_vpn_on_the_preferred_subnet() {
    let (code, report, _) = check(&["--sysroot", &sysroot("net-vpn-split"), "--no-throughput"]);
    assert_well_formed(code, &report);
    assert_eq!(status(&report, "network.subnet"), "pass");
    let s = summary(&report, "network.subnet");
    // smoke's preferred 10.213.166.0/24 is a WireGuard route here: the next one is chosen.
    assert!(
        s.contains("preferred subnet 10.213.166.0/24 is taken by"),
        "{s}"
    );
    assert!(s.contains("VPN route via wg0 (WireGuard)"), "{s}");
    assert!(s.contains("10.213.167.0/24 is the next free one"), "{s}");
    assert!(s.contains("VPN interfaces seen: tun0, wg0"), "{s}");
    let taken = report["facts"]["network"]["taken"].as_array().unwrap();
    let nets: Vec<&str> = taken.iter().map(|t| t["net"].as_str().unwrap()).collect();
    assert_eq!(
        nets,
        [
            "192.168.1.0/24",
            "10.10.0.0/16",
            "172.16.0.0/12",
            "10.213.166.0/24"
        ]
    );
}

#[test]
fn a_vpn_covering_the_whole_auto_range_fails_with_a_way_out() {
    let (code, report, _) = check(&[
        "--sysroot",
        &sysroot("net-vpn-10-slash-8"),
        "--no-throughput",
    ]);
    assert_well_formed(code, &report);
    assert_eq!(code, 3);
    assert_eq!(status(&report, "network.subnet"), "fail");
    assert!(summary(&report, "network.subnet").contains("no free /24 left in 10.213.0.0/16"));
    assert!(fix(&report, "network.subnet").contains("auto_range"));
}

#[test]
fn a_fixed_subnet_on_the_lan_is_refused_naming_the_route() {
    let profile = fixture("profiles/fixed-lan-subnet.toml")
        .display()
        .to_string();
    let (code, report, _) = check(&[
        "--sysroot",
        &sysroot("net-vpn-split"),
        "--profile",
        &profile,
        "--no-throughput",
    ]);
    assert_well_formed(code, &report);
    assert_eq!(status(&report, "network.subnet"), "fail");
    let s = summary(&report, "network.subnet");
    assert!(s.contains("192.168.1.0/24 of profile fixed-lan"), "{s}");
    assert!(
        s.contains("collides with 192.168.1.0/24 (route via wlan0)"),
        "{s}"
    );
    let f = fix(&report, "network.subnet");
    assert!(f.contains("subnet = \"auto\""), "{f}");
    assert!(f.contains("10.213."), "{f}");
}

#[test]
fn resources_state_the_shortfall() {
    let profile = fixture("profiles/big-memory.toml").display().to_string();
    let (code, report, _) = check(&[
        "--sysroot",
        &sysroot("net-vpn-10-slash-8"),
        "--profile",
        &profile,
        "--no-throughput",
    ]);
    assert_well_formed(code, &report);
    // 3 x 4GiB + 2GiB = 14GiB plus 1GiB for the host, on an 8GiB laptop.
    assert_eq!(status(&report, "resources.memory"), "fail");
    assert_eq!(
        summary(&report, "resources.memory"),
        "big-memory needs 14GiB for 4 VMs plus 1GiB for the host; the host has 8GiB: short by 7GiB"
    );
    // The db VM wants 8 vCPUs on 4 CPUs.
    assert_eq!(status(&report, "resources.cpu"), "fail");
    assert!(summary(&report, "resources.cpu").contains("short by 4"));
    assert!(fix(&report, "resources.cpu").contains("4 or fewer"));
    // Free disk is a live fact.
    assert_eq!(status(&report, "resources.disk"), "skip");
}

#[test]
fn live_only_areas_skip_under_a_sysroot() {
    let (_, report, _) = check(&["--sysroot", &sysroot("net-vpn-split"), "--no-throughput"]);
    for id in [
        "libvirt.connect",
        "libvirt.bridge",
        "tools.qemu-system",
        "tools.qemu-img",
        "tools.dnsmasq",
    ] {
        assert_eq!(status(&report, id), "skip", "{id}");
    }
    for id in ["resources.memory", "resources.cpu", "resources.disk"] {
        assert!(summary(&report, id).contains("no --profile"), "{id}");
    }
}

#[test]
fn an_empty_sysroot_is_no_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (code, report, stderr) =
        check(&["--sysroot", dir.path().to_str().unwrap(), "--no-throughput"]);
    assert_well_formed(code, &report);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn this_machine_has_libvirt_and_the_tools() {
    // CI starts libvirtd (scripts/setup-host.sh) and installs the tools: on this machine
    // these must be real passes with real versions.
    let (code, report, _) = check(&["--no-throughput"]);
    assert_well_formed(code, &report);
    assert_eq!(status(&report, "libvirt.connect"), "pass", "{report:#}");
    assert!(summary(&report, "libvirt.connect").contains("libvirt 9."));
    assert_eq!(status(&report, "libvirt.bridge"), "pass", "{report:#}");
    for id in ["tools.qemu-system", "tools.qemu-img", "tools.dnsmasq"] {
        assert_eq!(status(&report, id), "pass", "{id}");
        let version = report["facts"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| summary(&report, id).starts_with(t["program"].as_str().unwrap()))
            .and_then(|t| t["version"].as_str())
            .unwrap_or_default()
            .to_string();
        assert!(
            version.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "{id}: {version}"
        );
    }
}

#[test]
fn a_wrong_uri_is_a_failed_check_with_how_to_start_libvirt() {
    let out = Command::cargo_bin("lab")
        .unwrap()
        .args(["check", "--json", "--no-throughput"])
        .env(
            "LAB_CONNECT",
            "qemu+unix:///system?socket=/nonexistent/lab.sock",
        )
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(status(&report, "libvirt.connect"), "fail");
    assert!(summary(&report, "libvirt.connect").contains("/nonexistent/lab.sock"));
    assert!(fix(&report, "libvirt.connect").contains("libvirtd"));
}

fn usage_error(args: &[&str]) -> String {
    let out = Command::cargo_bin("lab")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    assert!(out.stdout.is_empty(), "{args:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_input_is_a_usage_error_with_a_clear_message() {
    let e = usage_error(&["check", "--profile", "no-such-profile"]);
    assert!(e.contains("no profile named \"no-such-profile\""), "{e}");
    assert!(e.contains("smoke"), "{e}");
    let e = usage_error(&["check", "--storage", "/does/not/exist"]);
    assert!(
        e.contains("--storage /does/not/exist: no such file or directory"),
        "{e}"
    );
    let e = usage_error(&["check", "--sysroot", "/does/not/exist"]);
    assert!(e.contains("--sysroot /does/not/exist"), "{e}");
    let e = usage_error(&["check", "--profile", "/does/not/exist.toml"]);
    assert!(e.contains("profile /does/not/exist.toml"), "{e}");
    let e = usage_error(&["check", "--bogus"]);
    assert!(e.contains("--bogus"), "{e}");
    let e = usage_error(&["--color", "sometimes", "check"]);
    assert!(e.contains("sometimes"), "{e}");
}

#[test]
fn a_broken_profile_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "name = \"b\"\n\n[[vm]]\nname = \"a\"\nmemory = \"lots\"\n",
    )
    .unwrap();
    let e = usage_error(&["check", "--profile", path.to_str().unwrap()]);
    assert!(e.contains(&format!("{}:5:", path.display())), "{e}");
    assert!(e.contains("vm[0].memory"), "{e}");
}

#[test]
fn verbose_logs_every_external_command() {
    let out = Command::cargo_bin("lab")
        .unwrap()
        .args(["-v", "check", "--no-throughput"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("$ qemu-img --version"), "{stderr}");
    assert!(stderr.contains("$ dnsmasq --version"), "{stderr}");
}

#[test]
fn completions_are_printed_for_bash() {
    let out = Command::cargo_bin("lab")
        .unwrap()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("_lab()"), "{script}");
    assert!(script.contains("--sysroot"));
}

#[test]
fn quiet_shows_only_what_failed_and_the_table_otherwise() {
    let root = sysroot("net-vpn-10-slash-8");
    let run = |quiet: bool| {
        let mut cmd = Command::cargo_bin("lab").unwrap();
        if quiet {
            cmd.arg("-q");
        }
        let out = cmd
            .args([
                "check",
                "--no-throughput",
                "--color",
                "never",
                "--sysroot",
                &root,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        String::from_utf8(out.stdout).unwrap()
    };
    let quiet = run(true);
    assert!(quiet.contains("network.subnet"), "{quiet}");
    assert!(quiet.contains("auto_range"), "{quiet}");
    assert!(!quiet.contains(" pass "), "{quiet}");
    assert!(!quiet.contains(" skip "), "{quiet}");
    let full = run(false);
    assert!(
        full.lines().any(
            |l| l.starts_with("libvirt.connect") && l.split_whitespace().nth(1) == Some("skip")
        ),
        "{full}"
    );
    assert!(full.lines().last().unwrap().contains("failed"), "{full}");
}

/// packstack-aio against two recorded laptops. laptop-small: 8GiB of RAM, 4 CPUs, 40GiB
/// free on / (a recorded `df -P -B1`), no volume group, nested KVM off. laptop-big: 64GiB,
/// 16 CPUs, the lab's volume group with 250GiB unallocated and a half-full 100GiB thin pool
/// (recorded vgs/lvs), nested KVM on.
#[test]
fn packstack_aio_does_not_fit_a_small_laptop_and_says_by_how_much() {
    let (code, report, _) = check(&[
        "--sysroot",
        &sysroot("laptop-small"),
        "--profile",
        "packstack-aio",
        "--no-throughput",
    ]);
    assert_well_formed(code, &report);
    assert_eq!(code, 3);
    assert_eq!(status(&report, "resources.memory"), "fail");
    assert_eq!(
        summary(&report, "resources.memory"),
        "packstack-aio needs 16GiB for 1 VM plus 1GiB for the host; the host has 7.6GiB: short by 9.4GiB"
    );
    assert_eq!(status(&report, "resources.disk"), "fail");
    assert_eq!(
        summary(&report, "resources.disk"),
        "/ has 40.3GiB free; the base image alone may grow to 60GiB: short by 19.7GiB"
    );
    assert_eq!(status(&report, "resources.nested"), "fail");
    assert!(
        summary(&report, "resources.nested")
            .starts_with("aio of packstack-aio needs nested KVM, and it does not work here"),
        "{}",
        summary(&report, "resources.nested")
    );
    assert!(fix(&report, "resources.nested").contains("lab check --fix"));
    // 4 vCPUs on 4 CPUs fits.
    assert_eq!(status(&report, "resources.cpu"), "pass");
}

#[test]
fn packstack_fits_a_big_laptop_in_its_volume_group() {
    for profile in ["packstack-aio", "packstack-multinode"] {
        let (code, report, _) = check(&[
            "--sysroot",
            &sysroot("laptop-big"),
            "--profile",
            profile,
            "--no-throughput",
        ]);
        assert_well_formed(code, &report);
        for id in [
            "resources.memory",
            "resources.cpu",
            "resources.disk",
            "resources.nested",
        ] {
            assert_eq!(
                status(&report, id),
                "pass",
                "{profile} {id}: {}",
                summary(&report, id)
            );
        }
        assert!(
            summary(&report, "resources.disk").starts_with(
                "volume group vg_lab (250GiB unallocated, thin pool lab-pool 50.0GiB unused) has 300.0GiB free"
            ),
            "{}",
            summary(&report, "resources.disk")
        );
    }
    // The pool is 50.02% full in the recorded lvs: 49.98% of 100GiB is unused.
    // The multinode computes are the nested ones.
    let (_, report, _) = check(&[
        "--sysroot",
        &sysroot("laptop-big"),
        "--profile",
        "packstack-multinode",
        "--no-throughput",
    ]);
    assert!(
        summary(&report, "resources.nested")
            .starts_with("compute1, compute2 of packstack-multinode need nested KVM;"),
        "{}",
        summary(&report, "resources.nested")
    );
}

/// A volume group without the profile's thin pool is not where the lab goes (the plan then
/// uses qcow2 images in the directory): its room is the directory's filesystem.
#[test]
fn without_its_thin_pool_the_lab_is_measured_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles/packstack-aio.toml"),
    )
    .unwrap()
    .replace("pool = \"lab-pool\"", "pool = \"no-such-pool\"");
    let profile = dir.path().join("packstack-aio.toml");
    std::fs::write(&profile, text).unwrap();
    let (code, report, _) = check(&[
        "--sysroot",
        &sysroot("laptop-big"),
        "--profile",
        profile.to_str().unwrap(),
        "--no-throughput",
    ]);
    assert_well_formed(code, &report);
    assert_eq!(
        summary(&report, "resources.disk"),
        "/var/lib/lab has 460.4GiB free; base and 1 VM fully written take 120GiB"
    );
}
