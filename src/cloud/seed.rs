//! A VM's NoCloud seed: the `cidata` ISO on its CD-ROM that cloud-init reads at first boot.
//!
//! - `meta-data`: the instance-id (new with every seed, so cloud-init runs its
//!   once-per-instance modules again after a reset) and the local hostname.
//! - `user-data`: `#cloud-config` carrying the VM's identity (`guest::identity`), growpart,
//!   the guest agent, with the profile's user-data (`[base] user_data`, then the VM's own)
//!   merged in: mappings merged key by key, lists (runcmd, write_files, packages...)
//!   appended after lab's, and where both give a single value the VM's beats the base's and
//!   lab's identity beats both.
//!
//! The identity's files reach the VM through `write_files`, except those cloud-init makes
//! itself in a later module and would overwrite: the host key (through `ssh_keys`, as
//! cloud-init's ssh module deletes the image's host keys after `write_files` ran), root's
//! authorized keys (`ssh_authorized_keys`) and `/etc/hostname` (`hostname`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_norway::{Mapping, Value};

use crate::guest::identity::{HOST_KEY, LabIdentity, VmIdentity};

/// The volume label cloud-init's NoCloud source looks for.
pub const VOLUME_ID: &str = "cidata";

/// Where a VM's seed is kept: beside its disk.
pub fn seed_path(dir: &Path, domain: &str) -> PathBuf {
    crate::names::seed(dir, domain)
}

/// Files of the identity that cloud-init writes through its own modules (see the module
/// documentation), not through `write_files`.
const WRITTEN_BY_CLOUD_INIT: [&str; 4] = [
    "/etc/hostname",
    HOST_KEY,
    "/etc/ssh/ssh_host_ed25519_key.pub",
    "/root/.ssh/authorized_keys",
];

/// Write the seed of `vm` at `path` (mode 0600; libvirt hands it to QEMU's user when it
/// starts the domain), whole or not at all.
pub fn write_seed(
    path: &Path,
    lab: &LabIdentity,
    vm: &VmIdentity,
    base_user_data: Option<&str>,
    vm_user_data: Option<&str>,
    user: &str,
) -> Result<()> {
    let user_data = user_data(lab, vm, base_user_data, vm_user_data, user)?;
    let meta = meta_data(vm);
    let iso = crate::cloud::iso::image(
        VOLUME_ID,
        &[
            ("meta-data", meta.as_bytes()),
            ("user-data", user_data.as_bytes()),
        ],
    )?;
    write_file(path, &iso)
}

/// `meta-data`: the instance-id and the local hostname.
pub fn meta_data(vm: &VmIdentity) -> String {
    let mut m = Mapping::new();
    m.insert("instance-id".into(), vm.instance_id.clone().into());
    m.insert("local-hostname".into(), vm.vm.clone().into());
    to_yaml(&Value::Mapping(m))
}

/// `user-data`: lab's cloud-config for `vm` with the profile's merged in, as cloud-init
/// reads it (`#cloud-config` first).
pub fn user_data(
    lab: &LabIdentity,
    vm: &VmIdentity,
    base_user_data: Option<&str>,
    vm_user_data: Option<&str>,
    user: &str,
) -> Result<String> {
    let mut profile = Mapping::new();
    for (what, text) in [
        ("[base] user_data", base_user_data),
        ("the VM's user_data", vm_user_data),
    ] {
        if let Some(text) = text {
            let doc = parse(text).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            merge(&mut profile, doc, true);
        }
    }
    let mut doc = lab_config(lab, vm, user);
    merge(&mut doc, profile, false);
    Ok(format!("#cloud-config\n{}", to_yaml(&Value::Mapping(doc))))
}

/// Whether `text` is cloud-config user-data: YAML whose document is a mapping (or empty).
/// The error says what is wrong and on which line of the text.
pub fn check_user_data(text: &str) -> Result<(), String> {
    parse(text).map(|_| ())
}

fn parse(text: &str) -> Result<Mapping, String> {
    let value: Value = serde_norway::from_str(text).map_err(|e| match e.location() {
        Some(at) => format!(
            "not valid YAML, line {} column {}: {}",
            at.line(),
            at.column(),
            strip_location(&e.to_string())
        ),
        None => format!("not valid YAML: {e}"),
    })?;
    match value {
        Value::Mapping(m) => Ok(m),
        Value::Null => Ok(Mapping::new()),
        other => Err(format!(
            "cloud-config is a YAML mapping (`key: value` lines), not {}",
            kind(&other)
        )),
    }
}

/// serde_norway's message without its own " at line L column C", said once already.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string (a shell script is not cloud-config)",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Merge `from` into `into`: mappings key by key, lists appended, and where both hold
/// another value, `from`'s when `from_wins`, else `into`'s stays.
pub fn merge(into: &mut Mapping, from: Mapping, from_wins: bool) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (None, value) => {
                into.insert(key, value);
            }
            (Some(Value::Mapping(a)), Value::Mapping(b)) => merge(a, b, from_wins),
            (Some(Value::Sequence(a)), Value::Sequence(b)) => a.extend(b),
            (Some(slot), value) => {
                if from_wins {
                    *slot = value;
                }
            }
        }
    }
}

/// lab's own cloud-config for `vm`: its identity, growpart, the guest agent.
fn lab_config(lab: &LabIdentity, vm: &VmIdentity, user: &str) -> Mapping {
    let s = |v: &str| Value::String(v.to_string());
    let list = |items: Vec<Value>| Value::Sequence(items);
    let map = |pairs: Vec<(&str, Value)>| {
        Value::Mapping(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
    };
    let keys = list(lab.authorized_keys().iter().map(|k| s(k)).collect());
    let mut c = Mapping::new();
    let mut set = |k: &str, v: Value| {
        c.insert(s(k), v);
    };
    // Early, before sysinit.target: see guest::identity on the machine-id.
    set(
        "bootcmd",
        list(vec![list(vec![
            s("sh"),
            s("-c"),
            s(&vm.machine_id_command()),
        ])]),
    );
    set("hostname", s(&vm.vm));
    set("fqdn", s(&vm.fqdn));
    set("prefer_fqdn_over_hostname", Value::Bool(false));
    set("preserve_hostname", Value::Bool(false));
    // lab writes /etc/hosts with every VM; cloud-init's own would name this one only.
    set("manage_etc_hosts", Value::Bool(false));
    set("ssh_pwauth", Value::Bool(false));
    if user == "root" {
        set("disable_root", Value::Bool(false));
        set("ssh_authorized_keys", keys);
    } else {
        set("disable_root", Value::Bool(true));
        set(
            "users",
            list(vec![
                s("default"),
                map(vec![
                    ("name", s(user)),
                    ("lock_passwd", Value::Bool(true)),
                    ("sudo", s("ALL=(ALL) NOPASSWD:ALL")),
                    ("shell", s("/bin/bash")),
                    ("ssh_authorized_keys", keys),
                ]),
            ]),
        );
    }
    // The image's host keys go; lab's is the only one, and it is certified.
    set("ssh_deletekeys", Value::Bool(true));
    set("ssh_genkeytypes", list(vec![]));
    set(
        "ssh_keys",
        map(vec![
            ("ed25519_private", s(&vm.host_private)),
            ("ed25519_public", s(&vm.host_public)),
        ]),
    );
    set(
        "growpart",
        map(vec![("mode", s("auto")), ("devices", list(vec![s("/")]))]),
    );
    set("resize_rootfs", Value::Bool(true));
    set(
        "write_files",
        list(
            vm.guest_files(lab)
                .into_iter()
                .filter(|f| !WRITTEN_BY_CLOUD_INIT.contains(&f.path.as_str()))
                .map(|f| {
                    map(vec![
                        ("path", s(&f.path)),
                        ("owner", s("root:root")),
                        ("permissions", s(&format!("0{:o}", f.mode))),
                        ("content", s(&f.contents)),
                    ])
                })
                .collect(),
        ),
    );
    // Enabled where the image has it: lab trims and asks the VM through it.
    set(
        "runcmd",
        list(vec![list(vec![
            s("sh"),
            s("-c"),
            s(
                "if systemctl cat qemu-guest-agent.service >/dev/null 2>&1; then \
               systemctl enable --now qemu-guest-agent.service || \
               systemctl start qemu-guest-agent.service; fi",
            ),
        ])]),
    );
    c
}

fn to_yaml(v: &Value) -> String {
    serde_norway::to_string(v).expect("a YAML value serializes")
}

/// Write `bytes` to `path` with mode 0600, whole or not at all.
/// The seed is written whole to a hidden `.NAME.XXXXXX.partial` beside it, then renamed
/// into place: a VM is never defined on half a seed. What a killed lab leaves is named as
/// lab's unfinished files are (hidden, the domain's name, `.partial`), so `lab down`
/// removes it.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn identities(dir: &Path) -> (LabIdentity, VmIdentity) {
        let lab = crate::guest::identity::lab_identity(
            dir,
            "demo",
            "demo.lab",
            &[
                ("web".into(), Ipv4Addr::new(10, 9, 8, 10)),
                ("db".into(), Ipv4Addr::new(10, 9, 8, 11)),
            ],
            vec!["ssh-ed25519 AAAAlab lab@demo".into()],
        )
        .unwrap();
        let vm = crate::guest::identity::new_vm_identity(dir, &lab, "demo", "web").unwrap();
        (lab, vm)
    }

    fn yaml(text: &str) -> Mapping {
        parse(text).unwrap()
    }

    #[test]
    fn merging_appends_lists_merges_maps_and_lab_keeps_its_identity() {
        let mut user =
            yaml("runcmd: [a]\npackages: [nginx]\napt: {a: 1, b: {c: 2}}\nhostname: x\n");
        merge(
            &mut user,
            yaml("runcmd: [b]\napt: {b: {d: 3}, a: 9}\ntimezone: UTC\n"),
            true,
        );
        assert_eq!(
            to_yaml(&Value::Mapping(user.clone())),
            "runcmd:\n- a\n- b\npackages:\n- nginx\napt:\n  a: 9\n  b:\n    c: 2\n    d: 3\nhostname: x\ntimezone: UTC\n"
        );
        let mut lab = yaml("hostname: web\nruncmd: [lab]\n");
        merge(&mut lab, user, false);
        assert_eq!(lab.get("hostname").unwrap(), "web");
        assert_eq!(
            lab.get("runcmd").unwrap(),
            &Value::Sequence(vec!["lab".into(), "a".into(), "b".into()])
        );
    }

    #[test]
    fn the_user_data_carries_the_identity_and_the_profile_s_additions() {
        let dir = tempfile::tempdir().unwrap();
        let (lab, vm) = identities(dir.path());
        let text = user_data(
            &lab,
            &vm,
            Some("#cloud-config\npackages: [nginx]\nruncmd:\n  - touch /base\nssh_pwauth: true\n"),
            Some("runcmd: [touch /vm]\nhostname: other\nwrite_files:\n  - path: /etc/motd\n    content: hi\n"),
            "root",
        )
        .unwrap();
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        let doc = yaml(&text);
        let get = |k: &str| doc.get(k).unwrap_or_else(|| panic!("{k} missing:\n{text}"));
        assert_eq!(get("hostname"), "web");
        let bootcmd = get("bootcmd").as_sequence().unwrap();
        assert_eq!(bootcmd[0][2], vm.machine_id_command().as_str());
        assert_eq!(get("fqdn"), "web.demo.lab");
        assert_eq!(get("ssh_pwauth"), &Value::Bool(false));
        assert_eq!(get("disable_root"), &Value::Bool(false));
        assert_eq!(get("manage_etc_hosts"), &Value::Bool(false));
        assert_eq!(get("packages"), &Value::Sequence(vec!["nginx".into()]));
        let runcmd = get("runcmd").as_sequence().unwrap();
        assert_eq!(runcmd.len(), 3, "{text}");
        assert!(
            runcmd[0].as_sequence().is_some(),
            "lab's guest agent first: {text}"
        );
        assert_eq!(runcmd[1], "touch /base");
        assert_eq!(runcmd[2], "touch /vm");
        let keys = get("ssh_authorized_keys").as_sequence().unwrap();
        assert_eq!(keys[0], "ssh-ed25519 AAAAlab lab@demo");
        assert_eq!(keys[1], lab.peer_public.as_str());
        let ssh_keys = get("ssh_keys");
        assert_eq!(
            ssh_keys.get("ed25519_private").unwrap(),
            vm.host_private.as_str()
        );
        assert_eq!(get("ssh_genkeytypes"), &Value::Sequence(vec![]));
        let files = get("write_files").as_sequence().unwrap();
        let paths: Vec<&str> = files
            .iter()
            .map(|f| f.get("path").unwrap().as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "/etc/hosts",
                "/etc/ssh/ssh_known_hosts",
                crate::guest::identity::HOST_CERTIFICATE,
                crate::guest::identity::SSHD_DROP_IN,
                "/root/.ssh/id_ed25519",
                "/root/.ssh/id_ed25519.pub",
                "/etc/motd",
            ]
        );
        let hosts = &files[0];
        assert_eq!(hosts.get("permissions").unwrap(), "0644");
        assert!(
            hosts
                .get("content")
                .unwrap()
                .as_str()
                .unwrap()
                .contains("10.9.8.11\tdb.demo.lab\tdb\n")
        );
        assert_eq!(files[4].get("permissions").unwrap(), "0600");
        // Strings that YAML 1.1 (cloud-init's PyYAML) would read as something else stay
        // strings.
        assert!(text.contains("permissions: '0644'"), "{text}");
    }

    #[test]
    fn a_named_user_gets_the_keys_and_root_still_the_peer_key() {
        let dir = tempfile::tempdir().unwrap();
        let (lab, vm) = identities(dir.path());
        let doc = yaml(&user_data(&lab, &vm, None, None, "admin").unwrap());
        assert_eq!(doc.get("disable_root").unwrap(), &Value::Bool(true));
        let users = doc.get("users").unwrap().as_sequence().unwrap();
        assert_eq!(users[0], "default");
        assert_eq!(users[1].get("name").unwrap(), "admin");
        assert!(doc.get("ssh_authorized_keys").is_none());
    }

    #[test]
    fn meta_data_names_the_instance_and_host() {
        let dir = tempfile::tempdir().unwrap();
        let (_, vm) = identities(dir.path());
        assert_eq!(
            meta_data(&vm),
            format!("instance-id: {}\nlocal-hostname: web\n", vm.instance_id)
        );
        assert!(vm.instance_id.starts_with("lab-demo-web-"));
    }

    #[test]
    fn user_data_that_is_not_yaml_or_not_a_mapping_is_refused_with_its_line() {
        let e = check_user_data("packages:\n  - nginx\n runcmd: [x]\n").unwrap_err();
        assert!(e.starts_with("not valid YAML, line 3 column "), "{e}");
        assert!(!e.contains(" at line "), "{e}");
        let e = check_user_data("#!/bin/sh\necho hi\n").unwrap_err();
        assert!(e.contains("not a string"), "{e}");
        let e = check_user_data("- a\n- b\n").unwrap_err();
        assert!(e.contains("not a list"), "{e}");
        check_user_data("#cloud-config\n").unwrap();
        check_user_data("#cloud-config\nruncmd: [x]\n").unwrap();
    }

    #[test]
    fn the_seed_is_a_private_cidata_iso_with_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (lab, vm) = identities(dir.path());
        let path = seed_path(dir.path(), "lab-demo-web");
        write_seed(&path, &lab, &vm, Some("runcmd: [x]"), None, "root").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let out = dir.path().join("out");
        crate::kickstart::iso9660::extract(&path, "user_data", &out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            text,
            user_data(&lab, &vm, Some("runcmd: [x]"), None, "root").unwrap()
        );
        crate::kickstart::iso9660::extract(&path, "meta_data", &out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), meta_data(&vm));
        let err = write_seed(&path, &lab, &vm, Some("a: [\n"), None, "root").unwrap_err();
        assert!(
            format!("{err:#}").starts_with("[base] user_data: not valid YAML"),
            "{err:#}"
        );
    }
}
