//! A bridge with a lab network's name that no libvirt network owns (what a libvirtd that
//! crashed leaves behind) is named by `lab up`, with its fix, before anything is made: on
//! the real host, with a real bridge (`ip link add ... type bridge`) and the real libvirtd.

use std::process::Command as Std;

use assert_cmd::Command;

/// Removes the bridge even when the test fails.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Std::new("ip").args(["link", "delete", &self.0]).status();
    }
}

#[test]
fn a_lab_bridge_left_without_its_network_is_named_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("orph{}", std::process::id());
    let profile = dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &profile,
        format!(
            "name = \"{name}\"\n[storage]\ndir = \"{}\"\n[base]\nkernel = \"host\"\n\
             initrd = \"busybox\"\n[[vm]]\nname = \"a\"\n",
            dir.path().join("images").display()
        ),
    )
    .unwrap();
    let bridge = lab::names::bridge(&name);
    let made = Std::new("ip")
        .args(["link", "add", &bridge, "type", "bridge"])
        .status()
        .expect("running ip");
    assert!(made.success(), "ip link add {bridge} type bridge failed");
    let guard = Bridge(bridge.clone());

    for dry_run in [true, false] {
        let mut cmd = Command::cargo_bin("lab").unwrap();
        cmd.args(["up", profile.to_str().unwrap()])
            .env("LAB_LOCK", dir.path().join("locks/host.lock"));
        if dry_run {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "dry run {dry_run}: {stderr}");
        assert!(
            stderr.contains(&format!("bridge {bridge} exists on this host")),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("ip link delete {bridge}")),
            "{stderr}"
        );
    }
    // Nothing was made: no network, no domain, no image.
    let virsh = |what: &str| {
        let out = Std::new("virsh")
            .args(["-q", "-c", "qemu:///system", what, "--all", "--name"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!virsh("net-list").contains(&format!("lab-{name}")));
    assert!(!virsh("list").contains(&format!("lab-{name}-")));
    assert!(!dir.path().join("images").exists());

    // With the bridge gone, the same profile plans its network again.
    drop(guard);
    let out = Command::cargo_bin("lab")
        .unwrap()
        .args(["up", profile.to_str().unwrap(), "--dry-run"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains(&format!("lab-{name}")), "{plan}");
}
