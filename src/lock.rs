//! Who may change what at the same time. Each profile has a lock, held for the whole of a
//! command that changes its lab (`lab up` with its base build and provisioning, `reset`,
//! `down`, `trim`, `base build`/`rm`): two commands on one profile take turns, commands on
//! different profiles run side by side. One host-wide lock is held only for moments, around
//! what profiles share: choosing a subnet and creating the network (so two labs never pick
//! the same one), and creating a thin pool in a volume group. A command that holds both
//! takes its profile's first, so two commands never wait for each other.
//!
//! A lock is flock(2) on a file (std's `File::lock`): the kernel releases it when its
//! holder dies, however it dies. The file records who holds it (command, pid, since when),
//! for whoever waits; a record left by a process that died is ignored, as its lock is gone.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::error::Busy;
use crate::ui;

/// The host-wide lock file: `$LAB_LOCK`, else `locks/host.lock` in lab's runtime directory
/// (`/run/lab`), which a reboot empties as locks want.
pub fn host_lock_path() -> PathBuf {
    std::env::var_os("LAB_LOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::names::runtime_dir().join("locks/host.lock"))
}

/// The lock file of profile `name`, beside the host-wide one (so `$LAB_LOCK` moves both,
/// and tests get locks of their own).
pub fn profile_lock_path(name: &str) -> PathBuf {
    let host = host_lock_path();
    let dir = host.parent().unwrap_or(Path::new("."));
    dir.join(format!("profile-{name}.lock"))
}

/// Whether a command waits for a lock another holds, or fails at once (`--no-wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Wait,
    NoWait,
}

impl Wait {
    pub fn from_no_wait(no_wait: bool) -> Wait {
        if no_wait { Wait::NoWait } else { Wait::Wait }
    }
}

/// Held until dropped; the kernel releases it if the process dies.
#[derive(Debug)]
pub struct Lock {
    file: File,
}

impl Lock {
    /// The lock of profile `profile`, for `command` (e.g. "lab up demo"), for as long as
    /// the command runs.
    pub fn profile(profile: &str, command: &str, wait: Wait) -> Result<Lock> {
        Lock::acquire_at(
            &profile_lock_path(profile),
            &format!("the lock of profile {profile}"),
            command,
            wait,
        )
    }

    /// The host-wide lock, for `command`, to do `purpose` (e.g. "to choose a subnet and
    /// create network lab-demo"); drop it as soon as that is done.
    pub fn host(command: &str, purpose: &str, wait: Wait) -> Result<Lock> {
        Lock::acquire_at(
            &host_lock_path(),
            &format!("the host-wide lock ({purpose})"),
            command,
            wait,
        )
    }

    /// Take the lock at `path`, which is `scope` ("the lock of profile demo"), for
    /// `command`.
    pub fn acquire_at(path: &Path, scope: &str, command: &str, wait: Wait) -> Result<Lock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening the lab lock {}", path.display()))?;
        let started = Instant::now();
        let mut waiting: Option<Waiting> = None;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
                Err(TryLockError::WouldBlock) => {}
            }
            let holder = read_holder(&mut file);
            if wait == Wait::NoWait {
                return Err(Busy(busy_message(holder.as_ref(), scope, path, now_secs())).into());
            }
            waiting
                .get_or_insert_with(Waiting::new)
                .show(holder.as_ref(), scope, path);
            // Polling rather than a blocking flock, so the line can say when the holder
            // changes and how long it has held the lock.
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(w) = waiting {
            w.done();
            ui::debug(format_args!(
                "got {scope} after {} s",
                started.elapsed().as_secs()
            ));
        }
        let record = Holder {
            command: command.to_string(),
            holds: scope.to_string(),
            pid: std::process::id(),
            since: now_secs(),
            start: process_start(std::process::id()),
        };
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        // One write, so a waiter reads the record whole or not at all.
        file.write_all(record.to_text().as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Lock { file })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Who holds a lock, as its lock file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    /// "lab up demo"
    command: String,
    /// "the lock of profile demo"
    holds: String,
    pid: u32,
    /// Seconds since the epoch.
    since: u64,
    /// When the process started, in clock ticks after boot (/proc/PID/stat): a pid the
    /// kernel gave to another process since is not the holder.
    start: Option<u64>,
}

impl Holder {
    fn to_text(&self) -> String {
        let mut t = format!(
            "command: {}\nholds: {}\npid: {}\nsince: {}\nsince_unix: {}\n",
            self.command,
            self.holds,
            self.pid,
            rfc3339(self.since),
            self.since
        );
        if let Some(start) = self.start {
            t.push_str(&format!("process_start: {start}\n"));
        }
        t
    }

    fn parse(text: &str) -> Option<Holder> {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
                .map(str::trim)
        };
        Some(Holder {
            command: field("command")?.to_string(),
            holds: field("holds")?.to_string(),
            pid: field("pid")?.parse().ok()?,
            since: field("since_unix")?.parse().ok()?,
            start: field("process_start").and_then(|s| s.parse().ok()),
        })
    }

    /// Whether the recorded process still runs (and is the one that wrote the record).
    fn alive(&self) -> bool {
        match (self.start, process_start(self.pid)) {
            (_, None) => false,
            (Some(recorded), Some(now)) => recorded == now,
            (None, Some(_)) => true,
        }
    }

    /// "`lab up demo` (pid 1234, since 10:02:11 UTC, 3 min ago)"
    fn describe(&self, now: u64) -> String {
        format!(
            "`{}` (pid {}, since {}, {})",
            self.command,
            self.pid,
            clock(self.since, now),
            crate::ui::ago(now.saturating_sub(self.since))
        )
    }
}

/// The holder a lock file names, when the process it names is alive. The record is
/// written just after the lock is taken: an empty or half-written one is read again for a
/// moment before the holder counts as unknown.
fn read_holder(file: &mut File) -> Option<Holder> {
    for _ in 0..5 {
        let mut text = String::new();
        if file.seek(SeekFrom::Start(0)).is_ok()
            && file.read_to_string(&mut text).is_ok()
            && let Some(h) = Holder::parse(&text).filter(Holder::alive)
        {
            return Some(h);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The message of a command that does not wait (`--no-wait`).
fn busy_message(holder: Option<&Holder>, scope: &str, path: &Path, now: u64) -> String {
    match holder {
        Some(h) => format!(
            "{} holds {}; not waiting (--no-wait)",
            h.describe(now),
            h.holds
        ),
        None => format!(
            "{scope} ({}) is held by a process that did not record itself; not waiting (--no-wait)",
            path.display()
        ),
    }
}

/// The line of a command that waits.
fn waiting_message(holder: Option<&Holder>, scope: &str, path: &Path, now: u64) -> String {
    match holder {
        Some(h) => format!("waiting for {}, which holds {}", h.describe(now), h.holds),
        None => format!(
            "waiting for {scope} ({}), held by a process that did not record itself",
            path.display()
        ),
    }
}

/// What a waiting command shows: on a terminal one line, kept current; elsewhere a line
/// each time the holder changes.
struct Waiting {
    bar: Option<indicatif::ProgressBar>,
    said: Option<Option<Holder>>,
}

impl Waiting {
    fn new() -> Waiting {
        let bar = (ui::verbosity() >= 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            // One line, cut to the terminal's width rather than wrapped.
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {wide_msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Waiting { bar, said: None }
    }

    fn show(&mut self, holder: Option<&Holder>, scope: &str, path: &Path) {
        let line = waiting_message(holder, scope, path, now_secs());
        match &self.bar {
            Some(bar) => bar.set_message(line),
            None if self.said.as_ref() != Some(&holder.cloned()) => {
                ui::info(format_args!("{line}"));
                self.said = Some(holder.cloned());
            }
            None => {}
        }
    }

    fn done(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When process `pid` started, in clock ticks after boot; None when there is no such
/// process.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22 (starttime) is the 20th after the name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Days since 1970-01-01 as a (year, month, day), proleptic Gregorian (Howard Hinnant's
/// civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// "2026-12-06T10:02:11Z"
fn rfc3339(secs: u64) -> String {
    let (y, mo, d) = civil((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// "10:02:11 UTC", with the date when it is not today's.
fn clock(secs: u64, now: u64) -> String {
    let t = rfc3339(secs);
    let (date, time) = t.trim_end_matches('Z').split_once('T').unwrap_or(("", ""));
    if secs / 86_400 == now / 86_400 {
        format!("{time} UTC")
    } else {
        format!("{date} {time} UTC")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::mpsc;

    const PROFILE_DEMO: &str = "the lock of profile demo";

    fn take(path: &Path, command: &str) -> Lock {
        Lock::acquire_at(path, PROFILE_DEMO, command, Wait::Wait).unwrap()
    }

    /// Whether taking the lock at `path` (in a thread) gets it within `within`.
    fn gets(path: &Path, scope: &'static str, within: Duration) -> (bool, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        std::thread::spawn(move || {
            let lock = Lock::acquire_at(&p, scope, "lab down demo", Wait::Wait).unwrap();
            tx.send(()).unwrap();
            drop(lock);
        });
        (rx.recv_timeout(within).is_ok(), rx)
    }

    #[test]
    fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.lock");
        let first = take(&path, "lab up smoke");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("lab up smoke")
        );
        let (got, rx) = gets(&path, PROFILE_DEMO, Duration::from_millis(300));
        assert!(!got, "the second command must wait");
        drop(first);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the second command goes on once the first is done");
    }

    #[test]
    fn locks_of_two_profiles_are_held_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("profile-a.lock");
        let b = dir.path().join("profile-b.lock");
        let _a = Lock::acquire_at(&a, "the lock of profile a", "lab up a", Wait::NoWait).unwrap();
        let _b = Lock::acquire_at(&b, "the lock of profile b", "lab up b", Wait::NoWait)
            .expect("another profile's lock is free while a's is held");
        // And the host-wide lock beside them, too.
        let host = dir.path().join("host.lock");
        let (got, _) = gets(&host, "the host-wide lock", Duration::from_secs(5));
        assert!(got);
    }

    #[test]
    fn profile_locks_live_beside_the_host_lock() {
        // The one test that reads LAB_LOCK; no other test in this binary sets it.
        let host = host_lock_path();
        let demo = profile_lock_path("demo");
        assert_eq!(demo.parent(), host.parent());
        assert_eq!(demo.file_name().unwrap(), "profile-demo.lock");
    }

    #[test]
    fn no_wait_fails_at_once_naming_the_holder_pid_and_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile-demo.lock");
        let _held = take(&path, "lab up demo");
        let t = Instant::now();
        let err = Lock::acquire_at(&path, PROFILE_DEMO, "lab down demo", Wait::NoWait).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "it did not wait");
        assert!(err.is::<Busy>(), "a typed error: its own exit status");
        let msg = format!("{err:#}");
        let pid = std::process::id();
        assert!(
            msg.starts_with(&format!("`lab up demo` (pid {pid}, since ")),
            "{msg}"
        );
        assert!(
            msg.contains(" UTC, 0 s ago) holds the lock of profile demo"),
            "{msg}"
        );
        assert!(msg.ends_with("not waiting (--no-wait)"), "{msg}");
    }

    #[test]
    fn a_record_left_by_a_dead_process_is_not_a_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile-demo.lock");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = Holder {
            command: "lab up demo".into(),
            holds: PROFILE_DEMO.into(),
            pid: dead,
            since: now_secs() - 3600,
            start: Some(1),
        };
        std::fs::write(&path, stale.to_text()).unwrap();

        // Its lock went with it: the next command takes the lock at once and records
        // itself.
        let mine = Lock::acquire_at(&path, PROFILE_DEMO, "lab down demo", Wait::NoWait)
            .expect("a dead process holds nothing");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("command: lab down demo"), "{text}");
        assert!(
            text.contains(&format!("pid: {}\n", std::process::id())),
            "{text}"
        );

        // A lock held by someone whose record is a dead process's: the message does not
        // name the dead one.
        let stale_text = stale.to_text();
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(0).unwrap();
        f.write_all(stale_text.as_bytes()).unwrap();
        let err =
            Lock::acquire_at(&path, PROFILE_DEMO, "lab reset demo", Wait::NoWait).unwrap_err();
        let msg = format!("{err:#}");
        assert!(!msg.contains(&dead.to_string()), "{msg}");
        assert!(!msg.contains("lab up demo"), "{msg}");
        assert!(
            msg.starts_with("the lock of profile demo (")
                && msg.contains("held by a process that did not record itself"),
            "{msg}"
        );
        drop(mine);
    }

    #[test]
    fn the_record_reads_back_and_a_recycled_pid_is_not_the_holder() {
        let me = Holder {
            command: "lab up demo".into(),
            holds: PROFILE_DEMO.into(),
            pid: std::process::id(),
            since: 1_765_015_331,
            start: process_start(std::process::id()),
        };
        let text = me.to_text();
        assert!(text.contains("since: 2025-12-06T10:02:11Z\n"), "{text}");
        assert_eq!(Holder::parse(&text), Some(me.clone()));
        assert!(me.alive());
        let other = Holder {
            start: me.start.map(|s| s + 1),
            ..me
        };
        assert!(!other.alive(), "the same pid, started at another time");
        assert_eq!(Holder::parse(""), None);
        assert_eq!(Holder::parse("command: lab up demo\nholds: x\n"), None);
    }

    #[test]
    fn times_read_as_people_say_them() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_765_015_331), "2025-12-06T10:02:11Z");
        assert_eq!(clock(1_765_015_331, 1_765_015_331 + 180), "10:02:11 UTC");
        assert_eq!(
            clock(1_765_015_331, 1_765_015_331 + 86_400),
            "2025-12-06 10:02:11 UTC"
        );
        assert_eq!(crate::ui::ago(3), "3 s ago");
        assert_eq!(crate::ui::ago(180), "3 min ago");
        assert_eq!(crate::ui::ago(7500), "2 h 5 min ago");
        assert_eq!(crate::ui::ago(3 * 86_400 + 60), "3 days ago");
        let h = Holder {
            command: "lab up demo".into(),
            holds: PROFILE_DEMO.into(),
            pid: 1234,
            since: 1_765_015_331,
            start: None,
        };
        assert_eq!(
            waiting_message(Some(&h), PROFILE_DEMO, Path::new("x"), 1_765_015_331 + 185),
            "waiting for `lab up demo` (pid 1234, since 10:02:11 UTC, 3 min ago), which holds \
             the lock of profile demo"
        );
    }
}
