//! The few errors that code branches on: each maps to an exit status.

use std::fmt;

/// Exit statuses lab promises in its README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CHECK_FAILED: u8 = 3;
    /// `--no-wait`: another lab command holds a lock this one needs; try again later.
    pub const BUSY: u8 = 4;
}

/// The user asked for something that cannot be: a profile that does not exist, a path that
/// is not there, a profile with a bad key. Exit status 2; nothing was changed.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand for returning a usage error from a function that returns `anyhow::Result`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Another lab command holds a lock this one needs, and `--no-wait` said not to wait: exit
/// status 4 (a script may try again later); nothing was changed. The message names the
/// holder.
#[derive(Debug)]
pub struct Busy(pub String);

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Busy {}

/// The exit status for an error that ended a command.
pub fn exit_status(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        exit::USAGE
    } else if err.chain().any(|e| e.is::<Busy>()) {
        exit::BUSY
    } else {
        exit::FAILURE
    }
}
