//! scripts/subreaper.py, which setup-host.sh starts libvirtd under where no systemd runs:
//! what a daemon started under it leaves behind is reparented to it, not to PID 1, and
//! reaped as soon as it ends.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn field(pid: u32, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold blanks: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(index - 3).map(str::to_string)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_daemons_orphans_are_reparented_to_the_subreaper_and_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("subreaper.pid");
    let orphan_file = dir.path().join("orphan.pid");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/subreaper.py");
    // A "daemon" that leaves a process behind and exits, as `libvirtd -d` does.
    let daemon = format!(
        "sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {}; exit 0",
        orphan_file.display()
    );
    let mut reaper = Command::new("python3")
        .arg(&script)
        .arg(&pidfile)
        .args(["--", "sh", "-c", &daemon])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .arg(self.0.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
    let _reaper = Kill(reaper.id());
    wait_for("the subreaper wrote no pid file", || pidfile.exists());
    wait_for("the daemon wrote no pid", || {
        std::fs::read_to_string(&orphan_file).is_ok_and(|t| t.trim().parse::<u32>().is_ok())
    });
    let orphan: u32 = std::fs::read_to_string(&orphan_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _orphan = Kill(orphan);
    let reaper_pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(reaper_pid, reaper.id().to_string());
    // The daemon has exited: its child now belongs to the subreaper.
    wait_for("the orphan was not reparented to the subreaper", || {
        field(orphan, 4).as_deref() == Some(reaper_pid.as_str())
    });
    // It ends: the subreaper reaps it (no zombie left for PID 1 to collect).
    Command::new("kill")
        .arg(orphan.to_string())
        .status()
        .unwrap();
    wait_for("the orphan's zombie was not reaped", || {
        !Path::new(&format!("/proc/{orphan}")).exists()
    });
    // The subreaper itself keeps running, for whatever the daemon starts next.
    assert!(reaper.try_wait().unwrap().is_none(), "the subreaper exited");
}

#[test]
fn bad_usage_is_refused() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/subreaper.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("/nonexistent/pid")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("usage: subreaper.py"),
        "{out:?}"
    );
}
