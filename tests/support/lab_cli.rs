//! A lab in a temporary directory, driven through the `lab` binary against the real
//! libvirtd: its own profile name (so a developer's labs are never touched), lock and
//! runtime directory, and `lab down --purge` when it goes out of scope.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const LAB: &str = env!("CARGO_BIN_EXE_lab");

/// `virsh` on the system libvirtd; it must succeed.
pub fn virsh(args: &[&str]) {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "virsh {args:?}: {out:?}");
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub profile: PathBuf,
    pub name: String,
    /// Set for every lab command, besides lab's own.
    pub env: Vec<(String, String)>,
}

impl Lab {
    /// A lab named `TAG<pid>`; `profile` gives the profile's text from the name and the
    /// image directory.
    pub fn new(tag: &str, profile: impl FnOnce(&str, &std::path::Path) -> String) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        // QEMU runs as libvirt-qemu and must reach the images.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = format!("{tag}{}", std::process::id() % 100_000);
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, profile(&name, &dir.path().join("images"))).unwrap();
        Lab {
            dir,
            profile: path,
            name,
            env: Vec::new(),
        }
    }

    /// The host's `name` is what the smoke VMs carry (lab takes it from the host): the
    /// tests need the real one, which `scripts/setup-host.sh` installs.
    pub fn require_host_program(&self, name: &str, package: &str) {
        assert!(
            lab::host::tools::find_program(name).is_some(),
            "{name} is missing on this host: install {package} (scripts/setup-host.sh does)"
        );
    }

    /// Nothing of this lab exists: no image directory, no libvirt network.
    pub fn assert_nothing_made(&self) {
        assert!(!self.images().exists(), "lab made files");
        let nets = Command::new("virsh")
            .args(["-c", "qemu:///system", "net-list", "--all", "--name"])
            .output()
            .unwrap();
        let nets = String::from_utf8_lossy(&nets.stdout);
        assert!(
            !nets
                .lines()
                .any(|n| n.trim() == format!("lab-{}", self.name)),
            "lab defined its network: {nets}"
        );
    }

    /// Nothing of this lab is left (after `lab down --purge`): no file in its image
    /// directory, no libvirt domain or network.
    pub fn assert_nothing_left(&self) {
        let files: Vec<String> = std::fs::read_dir(self.images())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            files.is_empty(),
            "lab left {files:?} in its image directory"
        );
        let prefix = format!("lab-{}", self.name);
        for list in ["list", "net-list"] {
            let out = Command::new("virsh")
                .args(["-c", "qemu:///system", list, "--all", "--name"])
                .output()
                .unwrap();
            let names = String::from_utf8_lossy(&out.stdout);
            assert!(
                !names
                    .lines()
                    .any(|n| n.trim() == prefix || n.trim().starts_with(&format!("{prefix}-"))),
                "lab left in virsh {list}: {names}"
            );
        }
    }

    pub fn profile(&self) -> &str {
        self.profile.to_str().unwrap()
    }

    pub fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(LAB);
        c.args(args)
            .env("LAB_CONNECT", "qemu:///system")
            .env("LAB_LOCK", self.dir.path().join("lab.lock"))
            .env("LAB_RUNTIME_DIR", self.dir.path().join("run"))
            // Images a test's profile downloads stay in its own directory, never in the
            // host's cache (a test may set another with `env`).
            .env("LAB_IMAGE_CACHE", self.dir.path().join("image-cache"))
            .current_dir(self.dir.path());
        for (key, value) in &self.env {
            c.env(key, value);
        }
        c
    }

    /// Run; the exit status must be `code`; returns (stdout, stderr).
    pub fn run(&self, args: &[&str], code: i32) -> (String, String) {
        let out = self.cmd(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "lab {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        (stdout, stderr)
    }

    /// Start `lab ARGS`, its stderr read as it comes.
    pub fn spawn(&self, args: &[&str]) -> Running {
        Running::start(self.cmd(args))
    }

    /// Run with `--json`; the exit status must be `code`; stdout as JSON.
    pub fn json(&self, args: &[&str], code: i32) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (stdout, stderr) = self.run(&all, code);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("lab {args:?}: {e}\n{stdout}\n{stderr}"))
    }
}

/// A lab command running, its stderr read as it comes.
pub struct Running {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Running {
    /// Start `cmd`, its stderr read as it comes.
    pub fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let into = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let mut s = into.lock().unwrap();
                s.push_str(&line.unwrap());
                s.push('\n');
            }
        });
        Running {
            child,
            stderr,
            reader,
        }
    }

    /// Wait until its stderr holds `text` (a failure when it ends without saying it).
    pub fn until_said(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.stderr.lock().unwrap().contains(text) {
            assert!(
                Instant::now() < deadline && !self.reader.is_finished(),
                "never said {text:?}:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL it (if it still runs) and reap it; what it had said on stderr. (Its reader
    /// is not waited for: a program lab ran may outlive it, holding the pipe.)
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        self.child.wait().unwrap();
        self.stderr.lock().unwrap().clone()
    }

    /// Wait for it to end; its exit status must be 0; (stdout, stderr).
    pub fn finish(mut self, what: &str) -> (String, String) {
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        assert_eq!(
            status.code(),
            Some(0),
            "{what}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        (stdout, stderr)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Leave nothing behind, whatever happened.
        let _ = self.cmd(&["down", self.profile(), "--purge"]).output();
    }
}
