//! A VM's serial console as lab keeps it: a log file libvirt writes, and its last lines
//! for error messages.

use std::path::{Path, PathBuf};

/// Where a VM's serial console is logged.
pub fn console_log(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("{domain}.console.log"))
}

/// The last lines of a console log, for error messages.
pub fn console_tail(console: &Path) -> String {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return format!("; its console ({}) is empty", console.display());
    }
    let tail = &lines[lines.len().saturating_sub(10)..];
    format!(
        "; last console lines ({}):\n    {}",
        console.display(),
        tail.join("\n    ")
    )
}

/// Empty a VM's console log (one that is not there yet is fine).
pub fn empty(console: &Path) -> anyhow::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(console)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            Err(anyhow::Error::new(e)
                .context(format!("emptying console log {}", console.display())))
        }
    }
}
