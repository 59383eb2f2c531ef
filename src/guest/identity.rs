//! A VM's identity, one rule for every VM lab makes, whatever carries it there (a cloud-init
//! seed at first boot, or files and commands over SSH for a kickstart base):
//!
//! - its hostname and FQDN (`VM.DOMAIN`, the plan's network domain), and an `/etc/hosts`
//!   naming every VM of the lab (`IP FQDN SHORT`), so VMs reach each other by name;
//! - root's authorized keys: lab's key for the profile, the user's keys and the lab-wide
//!   peer key; no password, password login off;
//! - the lab-wide peer key pair as root's `id_ed25519` on every VM, so each VM logs in to
//!   every other as root by name (packstack's controller logs in to each compute);
//! - a new SSH host key per VM, made by lab and signed by the lab's host CA, served through
//!   an sshd drop-in (`HostCertificate`); every VM's `/etc/ssh/ssh_known_hosts` and lab's
//!   known_hosts file for the VM trust that CA for the lab's names and addresses, so lab's
//!   ssh and VM-to-VM ssh check host keys strictly, and a reset VM's new key is trusted at
//!   once, with no key to pin first;
//! - a machine-id lab chooses, new with each identity. The base is sealed with an empty
//!   `/etc/machine-id`, but systemd fills an empty one in a QEMU guest from the SMBIOS
//!   system UUID, which libvirt takes from the domain's UUID, stable per VM by design
//!   (`names::domain_uuid`): a reset VM would keep its machine-id. So the identity writes
//!   lab's as early as it can (cloud-init's `bootcmd`, before `sysinit.target`, D-Bus and
//!   most services), restarting journald onto it; only PID 1 keeps the one it read until
//!   the next boot.
//!
//! The CA and the peer key pair are made once per lab and kept until `lab down`; a VM's
//! host key is made anew with each identity (each new disk). All of them live beside the
//! images (names in `names.rs`), mode 0600.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::guest::ssh::pub_path;
use crate::names;
use crate::runner::Cmd;

/// Where the host certificate goes on a VM. Not `ssh_host_*`: cloud-init removes those
/// (`ssh_deletekeys`) after its files are written and before it installs lab's host key.
pub const HOST_CERTIFICATE: &str = "/etc/ssh/lab_host_ed25519_key-cert.pub";
/// The host key lab makes for each VM, where sshd looks for one.
pub const HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
/// The sshd drop-in: lab's host key and its certificate, no password logins. Early in the
/// order, as sshd takes the first value it reads of most keywords.
pub const SSHD_DROP_IN: &str = "/etc/ssh/sshd_config.d/10-lab.conf";

/// What every VM of a lab shares.
#[derive(Debug, Clone)]
pub struct LabIdentity {
    pub profile: String,
    /// The DNS domain of the lab's VMs (`PROFILE.lab` unless `[network] domain`).
    pub domain: String,
    /// Every VM of the lab, by name, with its address.
    pub hosts: Vec<(String, Ipv4Addr)>,
    /// The public key lines that log in to root: lab's key first, then the user's.
    pub login_keys: Vec<String>,
    /// The lab-wide peer key pair (root's `id_ed25519` on every VM).
    pub peer_private: String,
    pub peer_public: String,
    /// The public line of the lab's SSH host CA.
    pub ca_public: String,
    ca_key: PathBuf,
}

/// One VM's identity: its names and address, a new host key signed by the lab's CA, and
/// the cloud-init instance-id of the seed that carries it.
#[derive(Debug, Clone)]
pub struct VmIdentity {
    /// The VM's name in the profile: its short hostname.
    pub vm: String,
    pub fqdn: String,
    /// Its libvirt domain name (lab's ssh names the host by it: `HostKeyAlias`).
    pub domain: String,
    pub ip: Ipv4Addr,
    /// New with every identity, so cloud-init takes a new seed as a new instance.
    pub instance_id: String,
    /// 32 hex digits, new with every identity.
    pub machine_id: String,
    pub host_private: String,
    pub host_public: String,
    pub host_certificate: String,
}

/// A file of the identity, as it is to be on the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    pub path: String,
    pub mode: u32,
    pub contents: String,
}

/// The lab's shared identity: the host CA and the peer key pair, made with ssh-keygen the
/// first time and then kept, with the lab's hosts and login keys.
pub fn lab_identity(
    dir: &Path,
    profile: &str,
    domain: &str,
    hosts: &[(String, Ipv4Addr)],
    login_keys: Vec<String>,
) -> Result<LabIdentity> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = names::host_ca(dir, profile);
    let peer = names::peer_key(dir, profile);
    key_pair(&ca_key, &format!("lab host CA for {profile}"))?;
    key_pair(&peer, &format!("root@{profile} (lab peer key)"))?;
    Ok(LabIdentity {
        profile: profile.to_string(),
        domain: domain.to_string(),
        hosts: hosts.to_vec(),
        login_keys,
        peer_private: read(&peer)?,
        peer_public: read(&pub_path(&peer))?.trim().to_string(),
        ca_public: read(&pub_path(&ca_key))?.trim().to_string(),
        ca_key,
    })
}

/// A new identity for VM `vm`: a new host key, signed by the lab's CA for the VM's names
/// and address, and a new instance-id. Nothing changes for lab's ssh until
/// [`VmIdentity::trust`].
pub fn new_vm_identity(
    dir: &Path,
    lab: &LabIdentity,
    profile: &str,
    vm: &str,
) -> Result<VmIdentity> {
    let domain = names::domain(profile, vm);
    let Some(&(_, ip)) = lab.hosts.iter().find(|(name, _)| name == vm) else {
        bail!("{vm}: not a VM of the lab {profile}");
    };
    let fqdn = format!("{vm}.{}", lab.domain);
    let instance_id = format!("{domain}-{}", random_hex(8)?);
    let key = names::host_key(dir, &domain);
    let cert = cert_path(&key);
    for f in [&key, &pub_path(&key), &cert] {
        remove(f)?;
    }
    keygen(&key, &format!("root@{fqdn}"))?;
    let principals = [vm, fqdn.as_str(), &ip.to_string(), domain.as_str()].join(",");
    Cmd::new("ssh-keygen")
        .args(["-q", "-h", "-s"])
        .arg(&lab.ca_key)
        .arg("-I")
        .arg(&instance_id)
        .arg("-n")
        .arg(&principals)
        .arg(pub_path(&key))
        .run()
        .with_context(|| format!("{vm}: signing its host key"))?;
    for f in [&key, &pub_path(&key), &cert] {
        private_mode(f)?;
    }
    Ok(VmIdentity {
        vm: vm.to_string(),
        fqdn,
        domain,
        ip,
        instance_id,
        machine_id: random_hex(16)?,
        host_private: read(&key)?,
        host_public: read(&pub_path(&key))?.trim().to_string(),
        host_certificate: read(&cert)?.trim().to_string(),
    })
}

/// Every file lab keeps for the identity of the lab `profile` and of its VMs (`domains`),
/// present or not: what `lab down` removes.
pub fn files(dir: &Path, profile: &str, domains: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for key in [names::host_ca(dir, profile), names::peer_key(dir, profile)] {
        out.push(pub_path(&key));
        out.push(key);
    }
    for d in domains {
        let key = names::host_key(dir, d);
        out.push(pub_path(&key));
        out.push(cert_path(&key));
        out.push(key);
    }
    out
}

impl LabIdentity {
    /// `/etc/hosts`: the usual local names, then every VM of the lab (`IP FQDN SHORT`).
    pub fn etc_hosts(&self) -> String {
        let mut text = format!(
            "# Written by lab: every VM of the lab {}.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             ff02::1\tip6-allnodes\n\
             ff02::2\tip6-allrouters\n",
            self.profile
        );
        for (vm, ip) in &self.hosts {
            text.push_str(&format!("{ip}\t{vm}.{}\t{vm}\n", self.domain));
        }
        text
    }

    /// `/etc/ssh/ssh_known_hosts`: the lab's CA vouches for the lab's names and addresses.
    pub fn ssh_known_hosts(&self) -> String {
        let mut patterns = vec![format!("*.{}", self.domain)];
        patterns.extend(self.hosts.iter().map(|(vm, _)| vm.clone()));
        patterns.extend(self.hosts.iter().map(|(_, ip)| ip.to_string()));
        format!(
            "# Written by lab: host keys of the lab {} are signed by its CA.\n\
             @cert-authority {} {}\n",
            self.profile,
            patterns.join(","),
            self.ca_public
        )
    }

    /// root's `authorized_keys`: the login keys, then the peer key.
    pub fn authorized_keys(&self) -> Vec<String> {
        let mut keys = self.login_keys.clone();
        keys.push(self.peer_public.clone());
        keys
    }
}

impl VmIdentity {
    /// Make lab's known_hosts file for the VM trust the lab's CA for the VM's names and
    /// address, and nothing else: lab's ssh then checks the VM strictly, from its first
    /// answer on. Called when the VM is to show its new key: with its seed, or once the
    /// identity has been applied over SSH (before that, the VM shows its old key).
    pub fn trust(&self, dir: &Path, lab: &LabIdentity) -> Result<()> {
        write_private(
            &crate::guest::ssh::known_hosts_path(dir, &self.domain),
            &format!(
                "@cert-authority {},{},{},{} {}\n",
                self.domain, self.vm, self.fqdn, self.ip, lab.ca_public
            ),
        )
    }

    /// Every file of the identity, as it is to be on the VM. The same for a cloud-init
    /// seed and for a VM reached over SSH.
    pub fn guest_files(&self, lab: &LabIdentity) -> Vec<GuestFile> {
        let file = |path: &str, mode: u32, contents: String| GuestFile {
            path: path.to_string(),
            mode,
            contents: if contents.ends_with('\n') {
                contents
            } else {
                contents + "\n"
            },
        };
        vec![
            file("/etc/hostname", 0o644, self.vm.clone()),
            file("/etc/hosts", 0o644, lab.etc_hosts()),
            file("/etc/ssh/ssh_known_hosts", 0o644, lab.ssh_known_hosts()),
            file(HOST_KEY, 0o600, self.host_private.clone()),
            file(&format!("{HOST_KEY}.pub"), 0o644, self.host_public.clone()),
            file(HOST_CERTIFICATE, 0o644, self.host_certificate.clone()),
            file(
                SSHD_DROP_IN,
                0o644,
                format!(
                    "# Written by lab: the host key lab made, signed by the lab's CA; keys, \
                     never passwords.\n\
                     HostKey {HOST_KEY}\n\
                     HostCertificate {HOST_CERTIFICATE}\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n"
                ),
            ),
            file(
                "/root/.ssh/authorized_keys",
                0o600,
                lab.authorized_keys().join("\n"),
            ),
            file("/root/.ssh/id_ed25519", 0o600, lab.peer_private.clone()),
            file("/root/.ssh/id_ed25519.pub", 0o644, lab.peer_public.clone()),
        ]
    }

    /// The whole identity as one script for `sh -s` as root on the VM (one SSH connection,
    /// the script on its standard input): [`guest_files`] written, then [`commands`].
    ///
    /// [`guest_files`]: VmIdentity::guest_files
    /// [`commands`]: VmIdentity::commands
    pub fn script(&self, lab: &LabIdentity) -> String {
        let mut s = files_script(&self.guest_files(lab), "");
        for c in self.commands() {
            s.push_str(&c);
            s.push('\n');
        }
        s
    }

    /// The shell line that makes lab's machine-id the VM's: written whole (over the
    /// transient one systemd may have mounted on the file), D-Bus's own copy where it is a
    /// file, journald restarted onto it. Nothing when it is the VM's already, so it may
    /// run at every boot.
    pub fn machine_id_command(&self) -> String {
        let id = &self.machine_id;
        format!(
            "if [ \"$(cat /etc/machine-id 2>/dev/null)\" != {id} ]; then \
             if mountpoint -q /etc/machine-id; then umount /etc/machine-id; fi; \
             printf '%s\\n' {id} > /etc/machine-id.lab-new && \
             chmod 0444 /etc/machine-id.lab-new && \
             mv -f /etc/machine-id.lab-new /etc/machine-id; \
             if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then \
             cp -f /etc/machine-id /var/lib/dbus/machine-id; fi; \
             systemctl restart systemd-journald.service || true; fi"
        )
    }

    /// What to run (each a line for `sh -c`, as root) after writing [`guest_files`] over
    /// SSH: the hostname taken, the base's other host keys gone, lab's machine-id, SELinux
    /// labels where it runs, sshd restarted on the new key (the running connection survives
    /// the restart).
    ///
    /// [`guest_files`]: VmIdentity::guest_files
    pub fn commands(&self) -> Vec<String> {
        vec![
            format!("hostnamectl set-hostname {}", self.vm),
            "rm -f /etc/ssh/ssh_host_rsa_key* /etc/ssh/ssh_host_ecdsa_key* \
             /etc/ssh/ssh_host_dsa_key*"
                .into(),
            self.machine_id_command(),
            "if command -v restorecon >/dev/null; then restorecon -R /etc/ssh /root/.ssh /etc/hosts; fi"
                .into(),
            "systemctl restart sshd 2>/dev/null || systemctl restart ssh".into(),
        ]
    }
}

/// A POSIX shell script that writes `files` under `root` ("" on the VM itself): each file
/// written aside and moved into place with its mode, so an interrupted run leaves every
/// file whole, old or new; directories made private where they are new (`/root/.ssh`).
fn files_script(files: &[GuestFile], root: &str) -> String {
    const END: &str = "LAB_IDENTITY_FILE_END";
    let mut out = String::from("set -eu\numask 077\n");
    for f in files {
        debug_assert!(!f.contents.contains(END));
        let path = crate::runner::quote(&format!("{root}{}", f.path));
        out.push_str(&format!(
            "mkdir -p \"$(dirname {path})\"\n\
             cat > {path}.lab-new <<'{END}'\n{}{END}\n\
             chmod {:o} {path}.lab-new\n\
             mv -f {path}.lab-new {path}\n",
            f.contents, f.mode
        ));
    }
    out
}

/// `KEY-cert.pub`: where ssh-keygen puts the certificate of `KEY.pub`, and where sshd and ssh
/// look for it.
fn cert_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_os_string();
    name.push("-cert.pub");
    PathBuf::from(name)
}

/// A key pair at `private` (and `.pub`), made when either half is missing.
fn key_pair(private: &Path, comment: &str) -> Result<()> {
    if private.is_file() && pub_path(private).is_file() {
        return Ok(());
    }
    // Half a pair (an interrupted ssh-keygen) is made again whole.
    remove(private)?;
    remove(&pub_path(private))?;
    keygen(private, comment)?;
    private_mode(private)?;
    private_mode(&pub_path(private))
}

fn keygen(private: &Path, comment: &str) -> Result<()> {
    Cmd::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(private)
        .run()
        .map_err(|e| {
            let hint = if e.is_not_found() {
                " (install openssh-client)"
            } else {
                ""
            };
            anyhow::anyhow!("making SSH key {}: {e}{hint}", private.display())
        })?;
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn private_mode(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))
}

/// Write `text` to `path` with mode 0600, whole or not at all.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    // NamedTempFile is made 0600 already; said again so the rule is in one place.
    private_mode(tmp.path())?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `bytes` random bytes from the kernel, as hex.
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(dir: &Path) -> LabIdentity {
        lab_identity(
            dir,
            "demo",
            "demo.lab",
            &[
                ("web".into(), Ipv4Addr::new(10, 9, 8, 10)),
                ("db".into(), Ipv4Addr::new(10, 9, 8, 11)),
            ],
            vec!["ssh-ed25519 AAAAlab lab@demo".into()],
        )
        .unwrap()
    }

    #[test]
    fn the_ca_and_peer_key_are_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = lab(dir.path());
        let b = lab(dir.path());
        assert_eq!(a.ca_public, b.ca_public);
        assert_eq!(a.peer_public, b.peer_public);
        assert!(a.peer_private.contains("OPENSSH PRIVATE KEY"));
        for f in files(dir.path(), "demo", &[]) {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }

    #[test]
    fn a_vm_identity_is_new_each_time_and_its_certificate_names_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let l = lab(dir.path());
        let one = new_vm_identity(dir.path(), &l, "demo", "web").unwrap();
        let two = new_vm_identity(dir.path(), &l, "demo", "web").unwrap();
        assert_ne!(one.host_public, two.host_public);
        assert_ne!(one.instance_id, two.instance_id);
        assert_ne!(one.machine_id, two.machine_id);
        assert!(
            one.machine_id.len() == 32 && one.machine_id.chars().all(|c| c.is_ascii_hexdigit())
        );
        assert_eq!(two.fqdn, "web.demo.lab");
        let shown = Cmd::new("ssh-keygen")
            .args(["-L", "-f"])
            .arg(cert_path(&names::host_key(dir.path(), "lab-demo-web")))
            .run()
            .unwrap()
            .stdout;
        assert!(shown.contains("host certificate"), "{shown}");
        for p in ["web", "web.demo.lab", "10.9.8.10", "lab-demo-web"] {
            assert!(
                shown.contains(&format!("\n                {p}\n")),
                "{p}: {shown}"
            );
        }
        let known_hosts = crate::guest::ssh::known_hosts_path(dir.path(), "lab-demo-web");
        assert!(!known_hosts.exists(), "not trusted before it is asked for");
        two.trust(dir.path(), &l).unwrap();
        let known = std::fs::read_to_string(&known_hosts).unwrap();
        assert_eq!(
            known,
            format!(
                "@cert-authority lab-demo-web,web,web.demo.lab,10.9.8.10 {}\n",
                l.ca_public
            )
        );
        let all = files(dir.path(), "demo", &["lab-demo-web".into()]);
        assert_eq!(all.len(), 7);
        assert!(all.iter().all(|f| f.is_file()), "{all:?}");
        let err = new_vm_identity(dir.path(), &l, "demo", "mail").unwrap_err();
        assert!(format!("{err:#}").contains("mail: not a VM"), "{err:#}");
    }

    #[test]
    fn the_guest_files_name_every_vm_and_trust_the_ca_for_the_lab_only() {
        let dir = tempfile::tempdir().unwrap();
        let l = lab(dir.path());
        let id = new_vm_identity(dir.path(), &l, "demo", "db").unwrap();
        let files = id.guest_files(&l);
        let get = |p: &str| &files.iter().find(|f| f.path == p).unwrap().contents;
        let hosts = get("/etc/hosts");
        assert!(hosts.contains("10.9.8.10\tweb.demo.lab\tweb\n"), "{hosts}");
        assert!(hosts.contains("10.9.8.11\tdb.demo.lab\tdb\n"), "{hosts}");
        assert_eq!(get("/etc/hostname"), "db\n");
        let known = get("/etc/ssh/ssh_known_hosts");
        assert!(
            known.contains(&format!(
                "@cert-authority *.demo.lab,web,db,10.9.8.10,10.9.8.11 {}\n",
                l.ca_public
            )),
            "{known}"
        );
        let auth = get("/root/.ssh/authorized_keys");
        assert_eq!(
            auth,
            &format!("ssh-ed25519 AAAAlab lab@demo\n{}\n", l.peer_public)
        );
        let drop_in = get(SSHD_DROP_IN);
        assert!(drop_in.contains(&format!("HostCertificate {HOST_CERTIFICATE}\n")));
        assert!(drop_in.contains("PasswordAuthentication no\n"));
        let secret: Vec<&str> = files
            .iter()
            .filter(|f| f.mode == 0o600)
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(
            secret,
            [
                HOST_KEY,
                "/root/.ssh/authorized_keys",
                "/root/.ssh/id_ed25519"
            ]
        );
        assert_eq!(id.commands()[0], "hostnamectl set-hostname db");
        assert!(
            id.script(&l)
                .ends_with(&format!("{}\n", id.commands().join("\n")))
        );
        // The script is one the shell parses whole.
        Cmd::new("sh")
            .args(["-n", "-s"])
            .stdin(id.script(&l))
            .run()
            .unwrap();
    }

    #[test]
    fn the_files_script_writes_every_file_whole_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let l = lab(dir.path());
        let id = new_vm_identity(dir.path(), &l, "demo", "web").unwrap();
        let root = dir.path().join("vm root");
        let files = id.guest_files(&l);
        let script = files_script(&files, &root.display().to_string());
        Cmd::new("sh").arg("-s").stdin(script).run().unwrap();
        for f in &files {
            let on = root.join(f.path.trim_start_matches('/'));
            assert_eq!(
                std::fs::read_to_string(&on).unwrap(),
                f.contents,
                "{}",
                f.path
            );
            let mode = std::fs::metadata(&on).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, f.mode, "{}", f.path);
        }
        let ssh_dir = std::fs::metadata(root.join("root/.ssh")).unwrap();
        assert_eq!(ssh_dir.permissions().mode() & 0o777, 0o700);
        let left: Vec<_> = walk(&root)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".lab-new"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            }
            out.push(e.path());
        }
        out
    }
}
