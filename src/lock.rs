//! One lab command that changes things at a time on a host: a second one waits, and says
//! who it waits for.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::ui;

/// Where the lock lives; `LAB_LOCK` moves it (tests run several hosts' worth of labs).
pub fn lock_path() -> PathBuf {
    std::env::var_os("LAB_LOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/lab.lock"))
}

/// Held until dropped; the kernel releases it if the process dies.
pub struct HostLock {
    file: File,
}

impl HostLock {
    /// Take the lock for `what` (e.g. "lab up smoke"), waiting while another command
    /// holds it.
    pub fn acquire(what: &str) -> Result<HostLock> {
        HostLock::acquire_at(&lock_path(), what)
    }

    pub fn acquire_at(path: &Path, what: &str) -> Result<HostLock> {
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
        // std's File::lock is flock(2) on Linux: released by the kernel when the process
        // dies, and shared with `flock(1)` in scripts.
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                ui::info(format_args!(
                    "waiting for another lab command to finish: {}",
                    if holder.is_empty() {
                        "(unknown)"
                    } else {
                        holder
                    }
                ));
                file.lock()
                    .with_context(|| format!("waiting for the lab lock {}", path.display()))?;
            }
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "pid {}: {what}", std::process::id())?;
        Ok(HostLock { file })
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.lock");
        let first = HostLock::acquire_at(&path, "lab up smoke").unwrap();
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("lab up smoke")
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = path.clone();
        let t = std::thread::spawn(move || {
            let _second = HostLock::acquire_at(&p2, "lab down smoke").unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the second command must wait"
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the second command goes on once the first is done");
        t.join().unwrap();
    }
}
