//! Every broken profile in tests/fixtures/profiles/bad gives one clear error naming the
//! file, the line and the key, exits with status 2, and creates nothing.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn bad(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/profiles/bad")
        .join(name)
}

/// (file, line, key, a piece of the message)
const CORPUS: &[(&str, u32, &str, &str)] = &[
    ("syntax-error.toml", 1, "", "invalid basic string"),
    (
        "forward-unknown-vm.toml",
        10,
        "forward[0].vm",
        "no VM is named \"db\": the profile's VMs are web",
    ),
    (
        "forward-port-range.toml",
        12,
        "forward[0].host_port",
        "host_port 70000 is not a port (1 to 65535)",
    ),
    (
        "forward-duplicate.toml",
        17,
        "forward[1].host_port",
        "127.0.0.1:8080 is published twice (forward[0] has 127.0.0.1:8080)",
    ),
    (
        "forward-multicast.toml",
        13,
        "forward[0].host_address",
        "224.0.0.1 is not an address a host listens on",
    ),
    (
        "forward-all-addresses.toml",
        18,
        "forward[1].host_port",
        "127.0.0.1:8080 is published twice (forward[0] has 0.0.0.0:8080)",
    ),
    (
        "unknown-key.toml",
        8,
        "vm[0].colour",
        "unknown field `colour`",
    ),
    (
        "wrong-type.toml",
        8,
        "vm[0].vcpus",
        "invalid type: string \"two\"",
    ),
    (
        "duplicate-vm.toml",
        13,
        "vm[2].name",
        "duplicate VM name \"web\"",
    ),
    (
        "count-collision.toml",
        11,
        "vm[1].name",
        "duplicate VM name \"node2\"",
    ),
    ("name-with-space.toml", 1, "name", "invalid name \"my lab\""),
    (
        "name-with-quote.toml",
        1,
        "name",
        "invalid name \"o'brien\"",
    ),
    (
        "name-with-xml.toml",
        7,
        "vm[0].name",
        "invalid name \"<b>web</b>\"",
    ),
    (
        "name-with-shell.toml",
        7,
        "vm[0].name",
        "invalid name \"web;rm -rf ~\"",
    ),
    ("name-too-long.toml", 1, "name", "is 41 characters"),
    (
        "memory-lots.toml",
        8,
        "vm[0].memory",
        "invalid size \"lots\"",
    ),
    (
        "count-zero.toml",
        8,
        "vm[0].count",
        "count must be 1 or more",
    ),
    (
        "subnet-host-bits.toml",
        4,
        "network.subnet",
        "did you mean 10.20.30.0/24?",
    ),
    (
        "kickstart-missing.toml",
        4,
        "base.kickstart",
        "no kickstart template \"fedora-99.ks.j2\"",
    ),
    (
        "iso-missing.toml",
        5,
        "base.install",
        "CentOS-Stream-9-latest-x86_64-dvd1.iso does not exist",
    ),
    (
        "user-data-not-yaml.toml",
        7,
        "base.user_data",
        "not valid YAML, line 4 column 2",
    ),
    (
        "provision-unknown-role.toml",
        13,
        "provision[0].role",
        "no VM has role \"contoller\"",
    ),
    (
        "provision-identity-name.toml",
        11,
        "provision[0].name",
        "\"identity\" is lab's own step",
    ),
    ("no-vm.toml", 1, "vm", "at least one [[vm]]"),
    (
        "kernel-path.toml",
        4,
        "base.kernel",
        "direct boot takes \"host\" only",
    ),
    (
        "image-url-unverified.toml",
        4,
        "base.image",
        "a downloaded image must be verifiable",
    ),
    (
        "image-two-checksums.toml",
        4,
        "base.image",
        "give checksum or checksum_url, not both",
    ),
    (
        "image-checksum-short.toml",
        5,
        "base.checksum",
        "a sha512 checksum is 128 hex digits (this is 64)",
    ),
    (
        "lvm-thin-without-pool.toml",
        4,
        "storage.backend",
        "needs storage.vg and storage.pool",
    ),
];

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        }
        out.push(p);
    }
    out.sort();
    out
}

#[test]
fn the_corpus_is_complete() {
    let mut on_disk: Vec<String> = std::fs::read_dir(bad(""))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CORPUS.iter().map(|c| c.0.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "every broken profile has an expected error"
    );
}

#[test]
fn each_broken_profile_is_one_clear_error_and_changes_nothing() {
    for (file, line, key, message) in CORPUS {
        // A private copy in an empty directory, so "created nothing" can be seen.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file);
        std::fs::copy(bad(file), &path).unwrap();
        let before = files_under(dir.path());
        for args in [
            vec!["up", path.to_str().unwrap()],
            vec!["up", path.to_str().unwrap(), "--dry-run", "--json"],
            vec![
                "check",
                "--profile",
                path.to_str().unwrap(),
                "--no-throughput",
            ],
        ] {
            let out = Command::cargo_bin("lab")
                .unwrap()
                .args(&args)
                .current_dir(dir.path())
                .env("XDG_CONFIG_HOME", dir.path())
                .env("LAB_CONNECT", "test:///default")
                .output()
                .unwrap();
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert_eq!(out.status.code(), Some(2), "{file} {args:?}: {stderr}");
            assert!(out.stdout.is_empty(), "{file}: printed a result anyway");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{file}: one error line, got {stderr}");
            let at = format!("error: {}:{line}:", path.display());
            assert!(
                stderr.starts_with(&at),
                "{file}: expected {at}, got {stderr}"
            );
            if !key.is_empty() {
                assert!(
                    stderr.contains(&format!(" {key}: ")),
                    "{file}: key {key} in {stderr}"
                );
            }
            assert!(stderr.contains(message), "{file}: {message} in {stderr}");
            assert!(!stderr.contains("panicked"));
        }
        assert_eq!(
            files_under(dir.path()),
            before,
            "{file}: something was created"
        );
    }
}
