//! SSH into lab VMs with the OpenSSH client: `lab ssh`, provisioning steps and `lab ready`.
//!
//! - The key: for a profile whose VMs lab boots itself (smoke), a key pair lab makes once
//!   beside the images (`lab-PROFILE-ssh-key`), whose public half goes into the VMs'
//!   initramfs; for a kickstart base, the private key of a public key the base was built
//!   with (`[vars] ssh_keys` or `~/.ssh/*.pub`), or `[vars] ssh_identity`.
//! - Host keys: each VM has a known_hosts file of its own beside the images
//!   (`lab-PROFILE-VM.known_hosts`), with `StrictHostKeyChecking=accept-new`: the first key
//!   a new clone shows is pinned, a changed key afterwards is refused. A VM whose identity
//!   lab made (cloud-init) has the lab's host CA in that file instead, and ssh then accepts
//!   only a host key the CA signed (`StrictHostKeyChecking=yes`). lab removes the file
//!   whenever it makes the VM's disk anew (up, reset, down), so a re-created lab never
//!   trips over the old VM's key, and nothing in `~/.ssh/known_hosts` is touched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::names;
use crate::profile::Profile;
use crate::runner::Cmd;

/// The user lab logs in as: the kickstart templates and the smoke VMs give root the key.
pub const USER: &str = "root";

/// A private key and the public key line that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub private: PathBuf,
    pub public_line: String,
    /// Where lab found it, for messages.
    pub from: String,
}

/// The private key of lab's own key pair for `profile`.
pub fn lab_key_path(dir: &Path, profile: &str) -> PathBuf {
    dir.join(format!("{}-{profile}-ssh-key", names::PREFIX))
}

/// The known_hosts file of one VM.
pub fn known_hosts_path(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("{domain}.known_hosts"))
}

/// Forget a VM's host key: its disk was made anew, and so will its host key be.
pub fn forget_host(dir: &Path, domain: &str) -> Result<()> {
    let file = known_hosts_path(dir, domain);
    match std::fs::remove_file(&file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", file.display())),
    }
}

/// lab's key pair for a profile whose VMs lab boots itself: made with ssh-keygen the first
/// time, then kept (the VMs' initramfs carries its public half).
pub fn lab_key(dir: &Path, profile: &str) -> Result<Key> {
    let private = lab_key_path(dir, profile);
    let public = pub_path(&private);
    if !private.is_file() || !public.is_file() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Half a pair (an interrupted ssh-keygen) is made again whole.
        let _ = std::fs::remove_file(&private);
        let _ = std::fs::remove_file(&public);
        Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("lab@{profile}"))
            .arg("-f")
            .arg(&private)
            .run()
            .map_err(|e| {
                let hint = if e.is_not_found() {
                    " (install openssh-client)"
                } else {
                    ""
                };
                anyhow::anyhow!("making lab's SSH key for {profile}: {e}{hint}")
            })?;
    }
    let public_line = std::fs::read_to_string(&public)
        .with_context(|| format!("reading {}", public.display()))?
        .trim()
        .to_string();
    Ok(Key {
        private,
        public_line,
        from: format!("lab's key for {profile}"),
    })
}

/// The public half of a private key file: the same name with `.pub` added.
pub fn pub_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

/// "TYPE BASE64" of a public key line, without its comment.
fn key_body(line: &str) -> Option<(&str, &str)> {
    let mut words = line.split_whitespace();
    // An options prefix (authorized_keys style) is not expected here.
    Some((words.next()?, words.next()?))
}

/// The key lab logs in to `profile`'s VMs with.
pub fn key_for(profile: &Profile, dir: &Path, home: Option<&Path>) -> Result<Key> {
    if profile.base.cloud_init || profile.direct_boot() {
        // Only read here: a key made now would be in no VM (the seeds, or the initramfs,
        // carry lab's key).
        let private = lab_key_path(dir, &profile.name);
        let public = pub_path(&private);
        let why = if profile.base.cloud_init {
            "it was removed since the VMs were made; `lab reset {cli}` gives them a new seed \
             with a new key"
        } else {
            "the VMs were made without an SSH server (no dropbear on the host then), or the \
             key was removed since; `lab reset {cli}` makes them anew with a new key (install \
             dropbear-bin first where it is missing)"
        };
        return match std::fs::read_to_string(&public) {
            Ok(line) if private.is_file() => Ok(Key {
                private,
                public_line: line.trim().to_string(),
                from: format!("lab's key for {}", profile.name),
            }),
            _ => bail!(
                "lab has no SSH key for {} ({} is missing): {}",
                profile.name,
                private.display(),
                why.replace("{cli}", &profile.cli_name())
            ),
        };
    }
    if let Some(value) = profile.vars.get("ssh_identity") {
        let at = profile.locate("vars.ssh_identity");
        let Some(text) = value.as_str() else {
            bail!(crate::error::usage(format!(
                "{at}: vars.ssh_identity: the path of a private key, as a string"
            )));
        };
        let private = match (text.strip_prefix("~/"), home) {
            (Some(rest), Some(h)) => h.join(rest),
            _ => PathBuf::from(text),
        };
        if !private.is_file() {
            bail!(crate::error::usage(format!(
                "{at}: vars.ssh_identity: {} does not exist",
                private.display()
            )));
        }
        let public_line = std::fs::read_to_string(pub_path(&private))
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        return Ok(Key {
            private,
            public_line,
            from: "the profile's [vars] ssh_identity".into(),
        });
    }
    let inputs = crate::kickstart::inputs_for(profile, home)?;
    let ssh_dir = home.map(|h| h.join(".ssh"));
    if let Some(d) = &ssh_dir
        && let Ok(entries) = std::fs::read_dir(d)
    {
        let mut pubs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        pubs.sort();
        for public in pubs {
            let Ok(text) = std::fs::read_to_string(&public) else {
                continue;
            };
            let Some(body) = key_body(&text) else {
                continue;
            };
            let wanted = inputs
                .ssh_keys
                .iter()
                .any(|k| key_body(k).is_some_and(|b| b == body));
            let private = public.with_extension("");
            if wanted && private.is_file() {
                return Ok(Key {
                    private,
                    public_line: text.trim().to_string(),
                    from: format!("{} (in {})", public.display(), inputs.ssh_keys_from),
                });
            }
        }
    }
    Err(crate::error::usage(format!(
        "profile {}: no private key for the SSH keys the base was built with (from {}): \
         none of them has its private half in {}; set [vars] ssh_identity to the private key",
        profile.name,
        inputs.ssh_keys_from,
        ssh_dir
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "~/.ssh".into())
    )))
}

/// The locale variables among `names`: LANG, LANGUAGE and LC_*, always with LANG and
/// LC_ALL (removing an unset one costs nothing, and keeps the command line the same).
pub fn locale_vars(names: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut found: Vec<std::ffi::OsString> = vec!["LANG".into(), "LC_ALL".into()];
    for name in names {
        let is_locale = name
            .to_str()
            .is_some_and(|n| n == "LANGUAGE" || n.starts_with("LC_"));
        if is_locale && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

/// Why a VM did not answer [`Target::probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unanswered {
    /// ssh refused the VM's host key: not the one pinned for it. What to say, with the
    /// pinned file; asking again shows the same key.
    HostKey(String),
    /// Anything else (no route, refused, timed out...): ssh's failure.
    Other(String),
}

/// One VM to log in to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The VM's name in the profile, for messages.
    pub vm: String,
    pub domain: String,
    pub ip: String,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
}

impl Target {
    /// The ssh command line up to and including the destination; a remote command follows.
    /// `batch`: no prompt of any kind (provisioning, checks); otherwise a terminal may be
    /// asked for.
    pub fn command(&self, batch: bool, connect_timeout: Duration) -> Cmd {
        let mut cmd = Cmd::new("ssh")
            .arg("-i")
            .arg(&self.key)
            .args(["-o", "IdentitiesOnly=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .arg("-o")
            .arg(format!(
                "StrictHostKeyChecking={}",
                self.host_key_checking()
            ))
            .arg("-o")
            .arg(format!("HostKeyAlias={}", self.domain))
            .arg("-o")
            .arg(format!(
                "ConnectTimeout={}",
                connect_timeout.as_secs().max(1)
            ))
            .args([
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=4",
            ])
            .args(["-o", "LogLevel=ERROR"]);
        if batch {
            cmd = cmd.args(["-o", "BatchMode=yes", "-T"]);
        }
        // The laptop's locale stays on the laptop: the system ssh_config of most
        // distributions sends LANG and LC_* (`SendEnv`), and a locale the VM lacks (RDO warns
        // about this for packstack) breaks its tools. `SendEnv -NAME` in ssh_config cannot
        // undo that, as the first value given for an option wins and the system file's
        // `SendEnv LANG LC_*` comes first; so ssh is not given them at all.
        for name in locale_vars(std::env::vars_os().map(|(k, _)| k)) {
            cmd = cmd.env_remove(name);
        }
        cmd.arg(format!("{USER}@{}", self.ip))
    }

    /// `yes` when the VM's known_hosts file trusts the lab's host CA (a VM with an identity
    /// lab made: its certified key is known before it answers, and nothing else is
    /// accepted), else `accept-new` (the first key a new clone shows is pinned).
    fn host_key_checking(&self) -> &'static str {
        let certified = std::fs::read_to_string(&self.known_hosts)
            .is_ok_and(|t| t.lines().any(|l| l.starts_with("@cert-authority ")));
        if certified { "yes" } else { "accept-new" }
    }

    /// One quiet connection that runs `true`, ssh given `connect` to connect and the whole
    /// run `limit`: Ok when the VM answers.
    pub fn probe(&self, connect: Duration, limit: Duration) -> Result<(), Unanswered> {
        let Err(e) = self.command(true, connect).arg("true").timeout(limit).run() else {
            return Ok(());
        };
        let err = format!("{e}");
        if !err.contains("Host key verification failed") {
            return Err(Unanswered::Other(err));
        }
        if self.host_key_checking() == "yes" {
            return Err(Unanswered::HostKey(format!(
                "{vm}: the SSH server at {ip} shows a host key the lab's CA did not sign (lab \
                 trusts only the CA for {vm}, in {file}): another machine has its address, or \
                 the VM's disk was changed outside lab; `lab reset` gives it a new identity",
                vm = self.vm,
                ip = self.ip,
                file = self.known_hosts.display()
            )));
        }
        Err(Unanswered::HostKey(format!(
            "{vm}: the SSH server at {ip} shows another host key than the one lab pinned for \
             {vm} in {file}: the VM's disk was changed outside lab, or another machine has its \
             address. If the VM was made anew on purpose, remove {file} (lab does so itself \
             whenever it makes a clone: up, reset, down)",
            vm = self.vm,
            ip = self.ip,
            file = self.known_hosts.display()
        )))
    }

    /// The remote command line ssh runs. One word is a command line for the remote shell,
    /// as with ssh (`-- 'dmesg | tail'`); several are a command and its arguments, each
    /// quoted so it arrives as it was given (`-- cat 'my file'`).
    pub fn remote(words: &[String]) -> String {
        if let [line] = words {
            return line.clone();
        }
        words
            .iter()
            .map(|w| crate::runner::quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            vm: "node1".into(),
            domain: "lab-demo-node1".into(),
            ip: "10.213.166.10".into(),
            key: PathBuf::from("/var/lib/lab/images/lab-demo-ssh-key"),
            known_hosts: PathBuf::from("/var/lib/lab/images/lab-demo-node1.known_hosts"),
        }
    }

    #[test]
    fn the_command_pins_host_keys_per_vm_and_never_prompts_in_batch() {
        let line = target().command(true, Duration::from_secs(5)).cmdline();
        for part in [
            "ssh -i /var/lib/lab/images/lab-demo-ssh-key",
            "IdentitiesOnly=yes",
            "UserKnownHostsFile=/var/lib/lab/images/lab-demo-node1.known_hosts",
            "GlobalKnownHostsFile=/dev/null",
            "StrictHostKeyChecking=accept-new",
            "HostKeyAlias=lab-demo-node1",
            "ConnectTimeout=5",
            "BatchMode=yes",
        ] {
            assert!(line.contains(part), "{part} missing from {line}");
        }
        assert!(line.ends_with("root@10.213.166.10"), "{line}");
        let dir = tempfile::tempdir().unwrap();
        let certified = Target {
            known_hosts: dir.path().join("known_hosts"),
            ..target()
        };
        std::fs::write(
            &certified.known_hosts,
            "@cert-authority lab-demo-node1 ssh-ed25519 AAAA ca\n",
        )
        .unwrap();
        let line = certified.command(true, Duration::from_secs(5)).cmdline();
        assert!(line.contains("StrictHostKeyChecking=yes"), "{line}");
        let interactive = target().command(false, Duration::from_secs(5)).cmdline();
        assert!(!interactive.contains("BatchMode"), "{interactive}");
        assert!(!interactive.contains(" -T"), "{interactive}");
    }

    #[test]
    fn the_laptops_locale_is_not_passed_to_the_vm() {
        let names = [
            "PATH", "LC_TIME", "LANGUAGE", "LC_ALL", "LANGX", "HOME", "LC_CTYPE",
        ];
        let found = locale_vars(names.iter().map(std::ffi::OsString::from));
        assert_eq!(
            found,
            ["LANG", "LC_ALL", "LC_TIME", "LANGUAGE", "LC_CTYPE"].map(std::ffi::OsString::from)
        );
        // Whatever lab's own environment holds, ssh gets no LANG and no LC_ALL.
        let cmd = target().command(true, Duration::from_secs(5));
        for name in ["LANG", "LC_ALL"] {
            assert!(
                cmd.removed_env().contains(&name.into()),
                "{:?}",
                cmd.removed_env()
            );
        }
        assert!(
            cmd.cmdline().starts_with("env -u LANG -u LC_ALL "),
            "{}",
            cmd.cmdline()
        );
        // The process lab starts (the interactive `lab ssh` one) has them removed too.
        let std = cmd.std_command();
        let removed: Vec<&std::ffi::OsStr> = std
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect();
        assert!(
            removed.contains(&std::ffi::OsStr::new("LANG")),
            "{removed:?}"
        );
        assert!(
            removed.contains(&std::ffi::OsStr::new("LC_ALL")),
            "{removed:?}"
        );
    }

    #[test]
    fn remote_words_are_quoted_for_the_remote_shell() {
        let words: Vec<String> = ["echo", "a b", "it's", "$HOME"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let remote = Target::remote(&words);
        // One word: a command line, as ssh takes it.
        let line = Target::remote(&["echo a | tr a b; echo $((6 * 7))".to_string()]);
        let one = std::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&one.stdout), "b\n42\n");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&remote)
            .env("HOME", "/nowhere")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b it's $HOME\n");
    }

    #[test]
    fn lab_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = lab_key(dir.path(), "demo").unwrap();
        assert!(
            a.public_line.starts_with("ssh-ed25519 "),
            "{}",
            a.public_line
        );
        assert!(a.public_line.ends_with(" lab@demo"), "{}", a.public_line);
        let b = lab_key(dir.path(), "demo").unwrap();
        assert_eq!(a, b);
        // Half a pair is made again whole.
        std::fs::remove_file(pub_path(&a.private)).unwrap();
        let c = lab_key(dir.path(), "demo").unwrap();
        assert_ne!(c.public_line, a.public_line);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&c.private).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the private key is readable by others: {mode:o}"
        );
    }

    #[test]
    fn forgetting_a_host_removes_only_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mine = known_hosts_path(dir.path(), "lab-demo-node1");
        let other = known_hosts_path(dir.path(), "lab-demo-node2");
        std::fs::write(&mine, "x").unwrap();
        std::fs::write(&other, "y").unwrap();
        forget_host(dir.path(), "lab-demo-node1").unwrap();
        forget_host(dir.path(), "lab-demo-node1").unwrap();
        assert!(!mine.exists());
        assert!(other.exists());
    }

    #[test]
    fn the_private_half_of_a_base_key_is_found_in_home() {
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        std::fs::create_dir(&ssh).unwrap();
        let made = lab_key(&ssh, "x").unwrap();
        // As a user's key: ~/.ssh/id_ed25519 and .pub.
        std::fs::rename(&made.private, ssh.join("id_ed25519")).unwrap();
        std::fs::rename(pub_path(&made.private), ssh.join("id_ed25519.pub")).unwrap();
        let profile = Profile::parse(
            "name = \"k\"\n[base]\nos = \"centos-stream9\"\nkickstart = \"centos-stream9.ks.j2\"\n\
             install = \"http://example.invalid/os/\"\n[[vm]]\nname = \"a\"\n",
            crate::profile::ProfileSource::File("k.toml".into()),
        )
        .unwrap();
        let key = key_for(&profile, home.path(), Some(home.path())).unwrap();
        assert_eq!(key.private, ssh.join("id_ed25519"));
        // A key in [vars] ssh_keys whose private half is not there: a clear error.
        let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9kZXZlbG9wZXJrZXlmb3J0ZXN0cw other";
        let profile = Profile::parse(
            &format!(
                "name = \"k\"\n[base]\nos = \"centos-stream9\"\nkickstart = \"centos-stream9.ks.j2\"\n\
                 install = \"http://example.invalid/os/\"\n[vars]\nssh_keys = [\"{other}\"]\n\
                 [[vm]]\nname = \"a\"\n"
            ),
            crate::profile::ProfileSource::File("k.toml".into()),
        )
        .unwrap();
        let err = key_for(&profile, home.path(), Some(home.path())).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("no private key"), "{msg}");
        assert!(msg.contains("ssh_identity"), "{msg}");
    }
}
