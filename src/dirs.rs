//! Where lab looks for what the user wrote (profiles, kickstart templates) and whose home
//! it reads keys from: one definition each, so every search names the same places.

use std::path::PathBuf;

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
}

/// The directories searched for a user's `kind` (`profiles`, `kickstart`), in order, before
/// what is built into lab: `./KIND`, `$XDG_CONFIG_HOME/lab/KIND`, `/etc/lab/KIND`.
pub fn search_dirs(kind: &str) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(kind)];
    if let Some(config) = config_home() {
        dirs.push(config.join("lab").join(kind));
    }
    dirs.push(PathBuf::from("/etc/lab").join(kind));
    dirs
}

/// The home directory whose `.ssh/*.pub` keys go into the kickstart: the presenter's.
/// lab runs as root for libvirt; under sudo that is `$SUDO_USER`'s home, not root's.
pub fn user_home() -> Option<PathBuf> {
    if let Some(user) = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty() && u != "root")
        && let Some(home) = home_of(&user)
    {
        return Some(home);
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// A user's home directory from the password database.
fn home_of(user: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam with a valid C string; the entry is copied out at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null and its pw_dir a NUL-terminated string.
    let dir = unsafe { std::ffi::CStr::from_ptr((*pw).pw_dir) };
    let dir = std::ffi::OsStr::from_bytes(dir.to_bytes());
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_in_the_password_database() {
        assert_eq!(home_of("root"), Some(PathBuf::from("/root")));
        assert_eq!(home_of("lab-no-such-user"), None);
    }

    #[test]
    fn user_files_are_searched_here_then_in_config_then_in_etc() {
        let dirs = search_dirs("profiles");
        assert_eq!(dirs.first(), Some(&PathBuf::from("profiles")));
        assert_eq!(dirs.last(), Some(&PathBuf::from("/etc/lab/profiles")));
    }
}
