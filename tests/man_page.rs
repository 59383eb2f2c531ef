//! `lab man` writes the manual pages that scripts/setup-host.sh installs: lab.1 and one page
//! per command, made from the same clap definitions as `lab --help`.

use assert_cmd::Command;

#[test]
fn lab_man_writes_a_page_for_lab_and_one_per_command_with_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    Command::cargo_bin("lab")
        .unwrap()
        .args(["man", "--dir"])
        .arg(dir.path())
        .assert()
        .success();

    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}; written: {:?}", listing(dir.path())))
    };
    let lab = page("lab.1");
    assert!(lab.contains("\n.TH lab 1 "), "{lab}");
    for command in [
        "check", "up", "status", "reset", "stop", "start", "down", "trim", "ssh", "ready",
    ] {
        assert!(
            lab.contains(&format!("lab\\-{command}(1)")),
            "{command}:\n{lab}"
        );
    }
    assert!(lab.contains(".SH \"EXIT STATUS\""), "{lab}");
    // Every page lab.1 lists as a command was written.
    for line in lab.lines().filter(|l| l.starts_with("lab\\-")) {
        let name = line.replace("\\-", "-").replace("(1)", ".1");
        assert!(
            dir.path().join(&name).exists(),
            "{name}: {:?}",
            listing(dir.path())
        );
    }

    let up = page("lab-up.1");
    assert!(up.contains("\n.TH lab-up 1 "), "{up}");
    for flag in [
        "\\-\\-dry\\-run",
        "\\-\\-timeout",
        "\\-\\-no\\-provision",
        "\\-\\-connect",
    ] {
        assert!(up.contains(flag), "{flag}:\n{up}");
    }
    // Nested commands get their own page; the hidden `man` command gets none.
    assert!(page("lab-base-build.1").contains("\\-\\-force"));
    assert!(page("lab-pool-create.1").contains("\\-\\-size"));
    assert!(page("lab-cache-rm.1").contains("\\-\\-all"));
    assert!(page("lab-cache-list.1").contains(".TH lab-cache-list 1 "));
    assert!(!dir.path().join("lab-man.1").exists());
}

#[test]
fn lab_man_without_a_dir_prints_lab_1() {
    let out = Command::cargo_bin("lab")
        .unwrap()
        .arg("man")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\n.TH lab 1 "), "{text}");
    assert!(text.contains(".SH SUBCOMMANDS"), "{text}");
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}
