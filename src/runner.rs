//! Every external command lab runs goes through here: a command is data, it is logged as a
//! shell-quoted line at `-v`, and a failure carries the command line, exit status and stderr.
//! How a command ended is said in one place, [`Exit`]'s `Display`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::ui;

/// One external command: program, arguments, optional stdin, extra environment and
/// variables of lab's own environment it does not get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
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
    #[error("`{cmdline}` {} and was killed", Exit::TimedOut(*.timeout))]
    TimedOut { cmdline: String, timeout: Duration },
    #[error("`{cmdline}` failed ({exit}){}", stderr_tail(.stderr))]
    Failed {
        cmdline: String,
        exit: Exit,
        stderr: String,
        stdout: String,
    },
}

/// How a command ended. Its `Display` is the one wording lab uses for it: "exit status 3",
/// "killed by signal 9 (SIGKILL)", "timed out after 20 s".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It was still running at its deadline, this long after it started, and lab killed it.
    TimedOut(Duration),
}

impl Exit {
    pub fn of(status: ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            // Stopped or continued: `wait` does not report those for a child it waited for.
            (None, None) => Exit::Signal(status.stopped_signal().unwrap_or(0)),
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The exit status, when the command exited by itself.
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            Exit::Signal(_) | Exit::TimedOut(_) => None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exit status {code}"),
            Exit::Signal(signal) => match signal_name(signal) {
                Some(name) => write!(f, "killed by signal {signal} ({name})"),
                None => write!(f, "killed by signal {signal}"),
            },
            Exit::TimedOut(after) => write!(f, "timed out after {}", seconds(after)),
        }
    }
}

/// The names of the signals that end commands in practice; the number alone for others.
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// "20 s", or "0.2 s" below whole seconds.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
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

/// What a command printed, as text, and how it ended.
#[derive(Debug, Clone)]
pub struct Captured {
    pub stdout: String,
    pub stderr: String,
    /// The exit status; `None` when a signal ended the command (then `signal` says which).
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Captured {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn exit(&self) -> Exit {
        match self.code {
            Some(code) => Exit::Code(code),
            None => Exit::Signal(self.signal.unwrap_or(0)),
        }
    }
}

/// What a streamed command ([`Cmd::stream`]) came to: how it ended and its last lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    pub exit: Exit,
    /// The last lines it printed (stdout and stderr, in the order they came), at most as
    /// many as were asked for.
    pub tail: Vec<String>,
}

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
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
        let key = key.into();
        self.env_remove.retain(|k| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// Leave `key` out of the environment the command inherits from lab.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        if !self.env_remove.contains(&key) {
            self.env_remove.push(key);
        }
        self
    }

    /// The variables the command does not inherit, in the order they were named.
    pub fn removed_env(&self) -> &[OsString] {
        &self.env_remove
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
        // `env -u NAME` pastes as the same removal the command had.
        let mut words: Vec<String> = Vec::new();
        if !self.env_remove.is_empty() {
            words.push("env".into());
            for k in &self.env_remove {
                words.push("-u".into());
                words.push(quote(&k.to_string_lossy()));
            }
        }
        words.extend(
            self.env
                .iter()
                .map(|(k, v)| format!("{}={}", k.to_string_lossy(), quote(&v.to_string_lossy()))),
        );
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
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
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
        for k in &self.env_remove {
            expr = expr.env_remove(k);
        }
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
                exit: captured.exit(),
                stderr: captured.stderr,
                stdout: captured.stdout,
            })
        }
    }

    /// Run, handing each line the command prints to `on_line` as it comes: stdout and
    /// stderr share one pipe, so their lines arrive in the order they were written. With a
    /// [`Cmd::timeout`], a command still running then is killed (itself: what it started
    /// and left holding the pipe is not waited for) and ends as [`Exit::TimedOut`].
    /// Whatever the exit, the result keeps the last `keep` lines; only a failure to start
    /// is an error.
    pub fn stream(
        &self,
        keep: usize,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Streamed, ProcessError> {
        let (reader, writer) = io::pipe().map_err(|e| self.spawn_error(e))?;
        let mut command = self.std_command();
        command
            .stdout(writer.try_clone().map_err(|e| self.spawn_error(e))?)
            .stderr(writer)
            .stdin(match self.stdin {
                Some(_) => Stdio::piped(),
                None => Stdio::null(),
            });
        let spawned = command.spawn();
        // The command holds the pipe's write ends until dropped: without this the reader
        // would never see the end of the output.
        drop(command);
        let mut child = spawned.map_err(|e| self.spawn_error(e))?;
        let started = Instant::now();
        let deadline = self.timeout.map(|t| started + t);
        if let (Some(bytes), Some(mut stdin)) = (self.stdin.clone(), child.stdin.take()) {
            // From a thread, so a command that prints before it has read all of its stdin
            // cannot block on a full pipe. One that exits without reading it is seen by
            // its status.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        // Not scoped: after a kill, a process the command started may still hold the
        // pipe; this thread then ends when that process does, and lab does not wait.
        std::thread::spawn(move || {
            let mut reader = io::BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf);
                let line = line.strip_suffix('\n').unwrap_or(&line);
                let line = line.strip_suffix('\r').unwrap_or(line);
                if tx.send(line.to_string()).is_err() {
                    break;
                }
            }
        });
        let mut tail = VecDeque::with_capacity(keep.min(1024));
        let mut take = |line: String, on_line: &mut dyn FnMut(&str)| {
            on_line(&line);
            if keep > 0 {
                if tail.len() == keep {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        };
        let waited = |e: io::Error| self.spawn_error(e);
        let mut output_ended = false;
        let exit = loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if output_ended {
                // The output has ended; the command itself may not have.
                match left {
                    None => break Exit::of(child.wait().map_err(waited)?),
                    Some(_) => {
                        if let Some(status) = child.try_wait().map_err(waited)? {
                            break Exit::of(status);
                        }
                    }
                }
            }
            if left == Some(Duration::ZERO) {
                let _ = child.kill();
                let _ = child.wait();
                ui::debug(format_args!(
                    "  killed after {:.2}s",
                    started.elapsed().as_secs_f64()
                ));
                break Exit::TimedOut(self.timeout.unwrap_or_default());
            }
            if output_ended {
                std::thread::sleep(left.unwrap_or_default().min(Duration::from_millis(20)));
                continue;
            }
            let next = match left {
                Some(left) => rx.recv_timeout(left),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(line) => take(line, on_line),
                Err(RecvTimeoutError::Disconnected) => output_ended = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
        };
        // Lines read before the kill and not handed on yet.
        for line in rx.try_iter() {
            take(line, on_line);
        }
        if !exit.success() {
            ui::debug(format_args!("  ended with {exit}"));
        }
        Ok(Streamed {
            exit,
            tail: tail.into(),
        })
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
    use std::os::unix::process::ExitStatusExt;
    let captured = Captured {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        code: output.status.code(),
        signal: output.status.signal(),
    };
    if !output.status.success() {
        ui::debug(format_args!(
            "  ended with {}: {}",
            Exit::of(output.status),
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

    /// HOME is in every test's environment: a command told to leave it out runs without
    /// it, through both ways of running (captured and as a std Command), and its line
    /// pastes as the same removal.
    #[test]
    fn a_removed_variable_is_not_inherited() {
        assert!(std::env::var_os("HOME").is_some());
        let cmd = Cmd::new("sh")
            .args(["-c", "echo \"${HOME-unset}\""])
            .env_remove("HOME");
        assert_eq!(cmd.run().unwrap().stdout.trim(), "unset");
        let out = cmd.std_command().output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unset");
        assert!(
            cmd.cmdline().starts_with("env -u HOME sh -c"),
            "{}",
            cmd.cmdline()
        );
        // A value given after the removal is the one the command gets.
        let given = cmd.env("HOME", "/elsewhere");
        assert_eq!(given.run().unwrap().stdout.trim(), "/elsewhere");
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
    fn exit_wording_names_status_signal_and_timeout() {
        assert_eq!(Exit::Code(3).to_string(), "exit status 3");
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(Exit::Signal(60).to_string(), "killed by signal 60");
        assert_eq!(
            Exit::TimedOut(Duration::from_secs(20)).to_string(),
            "timed out after 20 s"
        );
        assert_eq!(
            Exit::TimedOut(Duration::from_millis(200)).to_string(),
            "timed out after 0.2 s"
        );
    }

    #[test]
    fn a_failure_by_signal_names_the_signal() {
        let err = Cmd::new("sh")
            .args(["-c", "kill -TERM $$"])
            .run()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("killed by signal 15 (SIGTERM)"), "{text}");
    }

    fn stream(cmd: Cmd, keep: usize) -> (Streamed, Vec<(Duration, String)>) {
        let started = Instant::now();
        let mut seen = Vec::new();
        let out = cmd
            .stream(keep, &mut |l| seen.push((started.elapsed(), l.to_string())))
            .unwrap();
        (out, seen)
    }

    #[test]
    fn stream_hands_on_stdout_and_stderr_lines_in_order_and_keeps_the_last() {
        let (out, seen) = stream(
            Cmd::new("sh").args([
                "-c",
                "echo one; echo two >&2; printf 'three\r\nfour'; exit 4",
            ]),
            2,
        );
        let lines: Vec<&str> = seen.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines, ["one", "two", "three", "four"]);
        assert_eq!(out.exit, Exit::Code(4));
        assert_eq!(out.tail, ["three", "four"]);
    }

    #[test]
    fn stream_hands_on_a_line_before_the_command_ends() {
        let (out, seen) = stream(
            Cmd::new("sh")
                .args(["-c", "echo early; sleep 1; echo late"])
                .timeout(Duration::from_secs(30)),
            10,
        );
        assert!(out.exit.success(), "{}", out.exit);
        assert_eq!(seen[0].1, "early");
        assert_eq!(seen[1].1, "late");
        assert!(
            seen[0].0 + Duration::from_millis(500) < seen[1].0,
            "the first line came at the end: {seen:?}"
        );
    }

    #[test]
    fn stream_kills_a_command_past_its_deadline_and_says_so() {
        let started = Instant::now();
        let (out, seen) = stream(
            Cmd::new("sh")
                .args(["-c", "echo waiting; exec sleep 30"])
                .timeout(Duration::from_millis(500)),
            10,
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(out.exit, Exit::TimedOut(Duration::from_millis(500)));
        assert_eq!(out.exit.to_string(), "timed out after 0.5 s");
        assert_eq!(seen.len(), 1);
        assert_eq!(out.tail, ["waiting"]);
    }

    #[test]
    fn stream_does_not_wait_for_what_a_killed_command_left_holding_its_output() {
        // The shell is killed; the sleep it started keeps the pipe open for 5 s more.
        let started = Instant::now();
        let (out, _) = stream(
            Cmd::new("sh")
                .args(["-c", "sleep 5; echo never"])
                .timeout(Duration::from_millis(300)),
            10,
        );
        assert!(matches!(out.exit, Exit::TimedOut(_)), "{}", out.exit);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn stream_names_the_signal_and_feeds_stdin() {
        let (out, seen) = stream(
            Cmd::new("sh")
                .arg("-s")
                .stdin("echo got it; kill -KILL $$\n"),
            10,
        );
        assert_eq!(out.exit, Exit::Signal(9));
        assert_eq!(out.exit.to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, "got it");
        let (out, _) = stream(Cmd::new("sh").arg("-s").stdin("echo hi; exit 0\n"), 0);
        assert!(out.exit.success());
        assert!(out.tail.is_empty());
    }

    #[test]
    fn stream_of_a_missing_program_is_an_error() {
        let err = Cmd::new("lab-no-such-program-xyz")
            .stream(5, &mut |_| {})
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }

    #[test]
    fn stdin_reaches_the_command() {
        let out = Cmd::new("cat").stdin("hello").run().unwrap();
        assert_eq!(out.stdout, "hello");
    }
}
