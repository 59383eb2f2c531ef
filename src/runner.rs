//! Every external command lab runs goes through here: a command is data, it is logged as a
//! shell-quoted line at `-v`, and a failure carries the command line, exit status and stderr.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::ui;

/// One external command: program, arguments, optional stdin and extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("`{cmdline}`: {program} is not installed (not found in PATH)")]
    NotFound { cmdline: String, program: String },
    #[error("`{cmdline}` could not be started: {source}")]
    Spawn {
        cmdline: String,
        #[source]
        source: io::Error,
    },
    #[error("`{cmdline}` did not finish within {}s and was killed", .timeout.as_secs_f64())]
    TimedOut { cmdline: String, timeout: Duration },
    #[error("`{cmdline}` failed ({status}){}", stderr_tail(.stderr))]
    Failed {
        cmdline: String,
        status: String,
        stderr: String,
        stdout: String,
    },
}

fn stderr_tail(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!(": {trimmed}")
    }
}

impl ProcessError {
    /// True when the program itself is missing, so callers can say "install X".
    pub fn is_not_found(&self) -> bool {
        matches!(self, ProcessError::NotFound { .. })
    }
}

/// What a command printed, as text.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
}

impl Captured {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout: None,
        }
    }

    /// Kill the command when it runs longer than this; it then fails with `TimedOut`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn program(&self) -> &Path {
        Path::new(&self.program)
    }

    /// The command as a line a person could paste into a shell.
    pub fn cmdline(&self) -> String {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), quote(&v.to_string_lossy())))
            .collect();
        words.push(quote(&self.program.to_string_lossy()));
        words.extend(self.args.iter().map(|a| quote(&a.to_string_lossy())));
        words.join(" ")
    }

    /// The same command as a `std::process::Command` (stdin, stdout and stderr inherited
    /// unless set), for callers that stream its output or hand it the terminal.
    pub fn std_command(&self) -> std::process::Command {
        ui::debug(format_args!("$ {}", self.cmdline()));
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn expression(&self) -> duct::Expression {
        let mut expr = duct::cmd(&self.program, &self.args)
            .stdout_capture()
            .stderr_capture()
            .unchecked();
        for (k, v) in &self.env {
            expr = expr.env(k, v);
        }
        match &self.stdin {
            Some(bytes) => expr.stdin_bytes(bytes.clone()),
            None => expr.stdin_null(),
        }
    }

    fn spawn_error(&self, source: io::Error) -> ProcessError {
        if source.kind() == io::ErrorKind::NotFound {
            ProcessError::NotFound {
                cmdline: self.cmdline(),
                program: self.program.to_string_lossy().into_owned(),
            }
        } else {
            ProcessError::Spawn {
                cmdline: self.cmdline(),
                source,
            }
        }
    }

    /// Run and capture, whatever the exit status; only a failure to start is an error.
    pub fn capture(&self) -> Result<Captured, ProcessError> {
        match self.timeout {
            None => {
                ui::debug(format_args!("$ {}", self.cmdline()));
                let output = self.expression().run().map_err(|e| self.spawn_error(e))?;
                Ok(captured(&output))
            }
            Some(timeout) => self.start()?.wait_until(Instant::now() + timeout),
        }
    }

    /// Start the command and return at once; wait for it with [`Running::wait_until`].
    pub fn start(&self) -> Result<Running, ProcessError> {
        ui::debug(format_args!("$ {}", self.cmdline()));
        let handle = self.expression().start().map_err(|e| self.spawn_error(e))?;
        Ok(Running {
            handle,
            cmd: self.clone(),
            started: Instant::now(),
        })
    }

    /// Run, requiring success; the error carries command line, exit status and stderr.
    pub fn run(&self) -> Result<Captured, ProcessError> {
        let captured = self.capture()?;
        if captured.success() {
            Ok(captured)
        } else {
            Err(ProcessError::Failed {
                cmdline: self.cmdline(),
                status: match captured.code {
                    Some(code) => format!("exit status {code}"),
                    None => "killed by a signal".to_string(),
                },
                stderr: captured.stderr,
                stdout: captured.stdout,
            })
        }
    }
}

/// A command that was started and not yet waited for. Dropping it leaves it running.
pub struct Running {
    handle: duct::Handle,
    cmd: Cmd,
    started: Instant,
}

impl Running {
    /// Wait until `deadline`; a command still running then is killed, and its error says
    /// how long it had.
    pub fn wait_until(self, deadline: Instant) -> Result<Captured, ProcessError> {
        let waited = self
            .handle
            .wait_deadline(deadline)
            .map_err(|e| self.cmd.spawn_error(e))?;
        match waited {
            Some(output) => Ok(captured(output)),
            None => {
                let _ = self.handle.kill();
                let timeout = deadline.saturating_duration_since(self.started);
                ui::debug(format_args!("  killed after {:.2}s", timeout.as_secs_f64()));
                Err(ProcessError::TimedOut {
                    cmdline: self.cmd.cmdline(),
                    timeout,
                })
            }
        }
    }

    /// When the command was started.
    pub fn started(&self) -> Instant {
        self.started
    }
}

fn captured(output: &Output) -> Captured {
    let captured = Captured {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        code: output.status.code(),
    };
    if !output.status.success() {
        ui::debug(format_args!(
            "  exited with {}: {}",
            describe_status(&output.status),
            captured.stderr.trim()
        ));
    }
    captured
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cmdline())
    }
}

fn describe_status(status: &std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "a signal".to_string(),
    }
}

/// Quote one word for a POSIX shell, only when it needs it.
pub fn quote(word: &str) -> String {
    shell_words::quote(word).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_quotes_only_what_needs_it() {
        let cmd = Cmd::new("lvs")
            .args(["-o", "lv_name,vg_name", "vg 0/it's"])
            .env("LVM_SYSTEM_DIR", "/tmp/a b");
        assert_eq!(
            cmd.cmdline(),
            "LVM_SYSTEM_DIR='/tmp/a b' lvs -o lv_name,vg_name 'vg 0/it'\\''s'"
        );
    }

    #[test]
    fn failure_carries_cmdline_status_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo oops >&2; exit 7"])
            .run()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("exit status 7"), "{text}");
        assert!(text.contains("oops"), "{text}");
    }

    #[test]
    fn missing_program_is_named() {
        let err = Cmd::new("lab-no-such-program-xyz").run().unwrap_err();
        assert!(err.is_not_found());
        assert!(
            err.to_string()
                .contains("lab-no-such-program-xyz is not installed")
        );
    }

    #[test]
    fn a_command_past_its_timeout_is_killed() {
        let started = std::time::Instant::now();
        let err = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stdin_reaches_the_command() {
        let out = Cmd::new("cat").stdin("hello").run().unwrap();
        assert_eq!(out.stdout, "hello");
    }
}
