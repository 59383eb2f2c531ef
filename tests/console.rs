//! `lab console` on the real libvirtd under TCG, with a smoke VM: on a terminal (`script`
//! gives it one) it reaches the VM's serial console, where a shell answers, and the
//! console log goes on being written; Ctrl+] leaves. `[[vm]] graphics` adds a display
//! virt-viewer can open, on the host's loopback. Bad input is refused, naming it.

#[path = "support/lab_cli.rs"]
mod lab_cli;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_cli::Lab;

fn new_lab() -> Lab {
    let lab = Lab::new("co", |name, images| {
        format!(
            "name = \"{name}\"\n\
             [network]\nsubnet = \"auto\"\nauto_range = \"10.243.0.0/16\"\n\
             [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
             [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
             [[vm]]\nname = \"node\"\nmemory = \"256MiB\"\ngraphics = \"vnc\"\n",
            images.display()
        )
    });
    lab.require_host_program("script", "util-linux");
    lab
}

/// `lab console PROFILE node` on a terminal: `lines` typed one by one, a pause after
/// each, then Ctrl+]. What the terminal showed, and lab's exit status.
fn console_session(lab: &Lab, lines: &[&str]) -> (Option<i32>, String) {
    let inner = lab.cmd(&["console", lab.profile(), "node"]);
    let line = format!("{} console {} node", lab_cli::LAB, lab.profile());
    let mut script = Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            script.env(key, value);
        }
    }
    let mut child = script
        .env("TERM", "xterm")
        .current_dir(inner.get_current_dir().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) is installed");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for l in lines {
        stdin.write_all(l.as_bytes()).unwrap();
        stdin.write_all(b"\r").unwrap();
        std::thread::sleep(Duration::from_secs(3));
    }
    stdin.write_all(b"\x1d").unwrap();
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "lab console did not leave on Ctrl+]"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut shown = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    (child.wait().unwrap().code(), shown)
}

#[test]
fn the_console_reaches_a_shell_and_its_log_goes_on() {
    let lab = new_lab();
    // Not up: refused, naming what to run.
    let (_, err) = lab.run(&["console", lab.profile(), "node"], 2);
    assert!(err.contains("lab up"), "{err}");
    let (_, err) = lab.run(&["console", lab.profile(), "nosuch"], 2);
    assert!(err.contains("nosuch"), "{err}");

    lab.run(&["up", lab.profile()], 0);
    let log = lab
        .images()
        .join(format!("lab-{}-node.console.log", lab.name));
    let before = std::fs::read_to_string(&log).unwrap();
    assert!(before.contains("LAB-READY"), "{before}");

    let (code, shown) = console_session(&lab, &["", "echo CONSOLE-$((6*7))"]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains("Ctrl+]"),
        "the escape key is named on entry: {shown}"
    );
    assert!(shown.contains("CONSOLE-42"), "no shell answered: {shown}");
    // The log kept being written while the console was attached.
    let after = std::fs::read_to_string(&log).unwrap();
    assert!(after.len() > before.len(), "the console log did not grow");
    assert!(after.contains("CONSOLE-42"), "{after}");

    // The display: VNC on the host's loopback, for virt-viewer.
    let display = Command::new("virsh")
        .args(["-c", "qemu:///system", "domdisplay"])
        .arg(format!("lab-{}-node", lab.name))
        .output()
        .unwrap();
    let display = String::from_utf8_lossy(&display.stdout);
    assert!(display.trim().starts_with("vnc://127.0.0.1:"), "{display}");

    // A saved VM has no console: said so, with what to run.
    lab.run(&["stop", lab.profile()], 0);
    let (_, err) = lab.run(&["console", lab.profile(), "node"], 2);
    assert!(err.contains("lab start"), "{err}");
    lab.run(&["down", lab.profile()], 0);
}
