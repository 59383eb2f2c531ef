//! Whether cloud-init in a VM has finished, and how: `cloud-init status`, asked over SSH
//! (the seed lab made put lab's key in, so an answer at all means cloud-init ran that far).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::guest::connect::{CONNECT, wait_ssh};
use crate::guest::ssh::Target;

/// How cloud-init ended, as `cloud-init status` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Done,
    /// Still running (`running`, or `not run` yet).
    Running(String),
    /// Ended in error; what `status --long` said of it.
    Error(String),
    /// The VM has no cloud-init command at all.
    Missing,
}

/// Read `cloud-init status [--long]` output and its exit status. cloud-init 22.x exits 1
/// on error; 23.4 and later exit 2 for "done with recoverable errors", which still prints
/// `status: done` (a deprecated key, say) and is done.
pub fn parse_status(stdout: &str, code: Option<i32>) -> Status {
    if code == Some(127) {
        return Status::Missing;
    }
    let word = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("status:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match word.as_str() {
        "done" => Status::Done,
        "error" => Status::Error(stdout.trim().to_string()),
        "" if code == Some(1) => Status::Error(stdout.trim().to_string()),
        "" => Status::Running("no status yet".into()),
        other => Status::Running(other.to_string()),
    }
}

/// The command lab runs: the status, long, and the tail of the output log when it ended in
/// error (one connection for both).
pub const STATUS: &str = "cloud-init status --long; rc=$?; \
     if [ $rc -eq 1 ]; then echo '--- /var/log/cloud-init-output.log:'; \
     tail -n 20 /var/log/cloud-init-output.log 2>/dev/null; fi; exit $rc";

/// Wait until cloud-init in `t` has finished. SSH answering first: without cloud-init
/// nothing puts lab's key in, so a VM that never answers is said to be one whose image
/// may lack cloud-init. Errors name the VM and show cloud-init's own words and log tail.
pub fn wait_done(t: &Target, deadline: Instant) -> Result<()> {
    wait_ssh(
        t,
        deadline,
        "; cloud-init puts lab's key in: an image without cloud-init (or one that ignores a \
         NoCloud seed on a CD-ROM) never lets lab in",
    )?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // `--wait` would block without a bound; short polls keep the deadline lab's.
        let got = t
            .command(true, CONNECT)
            .arg(STATUS)
            .timeout(
                left.min(Duration::from_secs(30))
                    .max(Duration::from_secs(5)),
            )
            .capture();
        let status = match &got {
            Ok(c) if c.code == Some(255) => Status::Running(format!("ssh: {}", c.stderr.trim())),
            Ok(c) => parse_status(&c.stdout, c.code),
            Err(e) => Status::Running(e.to_string()),
        };
        match status {
            Status::Done => return Ok(()),
            Status::Error(said) => bail!(
                "{}: cloud-init ended in error:\n    {}",
                t.vm,
                said.lines().collect::<Vec<_>>().join("\n    ")
            ),
            Status::Missing => bail!(
                "{}: the image has no cloud-init command, yet the profile says cloud_init = true",
                t.vm
            ),
            Status::Running(what) => {
                if Instant::now() >= deadline {
                    bail!(
                        "{}: cloud-init had not finished in time (last status: {what}); \
                         `lab ssh` in and read /var/log/cloud-init-output.log",
                        t.vm
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_as_cloud_init_prints_them() {
        assert_eq!(
            parse_status(
                "status: done\nboot_status_code: enabled-by-generator\n",
                Some(0)
            ),
            Status::Done
        );
        assert_eq!(
            parse_status("status: done\nrecoverable_errors: ...\n", Some(2)),
            Status::Done
        );
        assert_eq!(
            parse_status("status: running\n", Some(0)),
            Status::Running("running".into())
        );
        assert_eq!(
            parse_status("status: not run\n", Some(0)),
            Status::Running("not run".into())
        );
        let long = "status: error\ntime: Sun, 06 Dec 2026 13:00:00 +0000\ndetail:\n('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))\n";
        match parse_status(long, Some(1)) {
            Status::Error(said) => assert!(said.contains("Runparts: 1 failures"), "{said}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_status("", Some(127)), Status::Missing);
    }
}
