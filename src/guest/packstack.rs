//! packstack answer files: what lab hands RDO packstack for a lab, made from the profile
//! and the plan. Pure apart from the random password it makes when the profile gives none.
//!
//! The controller is the one VM with role `controller` or `allinone`; the compute hosts
//! are the VMs with role `compute`, or the controller when there are none (all-in-one).
//! Addresses are the VMs' fixed ones from the plan. packstack picks `qemu` for Nova by
//! itself inside a VM, so lab always says which: `kvm` only when every compute VM is nested
//! on a host where nested KVM works, `qemu` otherwise, with the reason in the file.
//!
//! packstack reads the file with Python's RawConfigParser and takes its defaults for every
//! option the file leaves out; once read, it rewrites the file in place with every option
//! (lab's header comment goes), so lab writes the file afresh before each run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::error::usage;
use crate::plan::{Plan, VmPlan};
use crate::profile::{BUILT_IN, Profile, ProfileSource};

/// packstack's own options, extracted from its source (`packstack/plugins/*.py`) by
/// tests/support/packstack_options.py: one tab-separated line per option, its name first;
/// the header says which commit of packstack and when. A `[vars] packstack` option not
/// listed here is refused, since packstack ignores unknown names without a word.
pub const OPTIONS_TSV: &str = include_str!("../../tests/fixtures/packstack/options.tsv");

/// Roles that make a VM the packstack controller (exactly one VM has one of them).
pub const CONTROLLER_ROLES: &[&str] = &["controller", "allinone"];

/// The role of the VMs Nova runs instances on.
pub const COMPUTE_ROLE: &str = "compute";

const VIRT_TYPE_KEY: &str = "CONFIG_NOVA_LIBVIRT_VIRT_TYPE";
const ADMIN_PW_KEY: &str = "CONFIG_KEYSTONE_ADMIN_PW";
const DEFAULT_PW_KEY: &str = "CONFIG_DEFAULT_PASSWORD";

/// Length of a password lab makes up.
const GENERATED_PASSWORD_LEN: usize = 20;

/// Nova's libvirt virtualisation type (`CONFIG_NOVA_LIBVIRT_VIRT_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtType {
    /// Instances run under KVM inside the compute VM (nested KVM).
    Kvm,
    /// Instances are emulated by QEMU (TCG): slow, but they run anywhere.
    Qemu,
}

impl fmt::Display for VirtType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            VirtType::Kvm => "kvm",
            VirtType::Qemu => "qemu",
        })
    }
}

/// A generated answer file and what went into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerFile {
    /// The file: a header comment, `[general]`, one `KEY=VALUE` a line in name order.
    pub text: String,
    pub virt_type: VirtType,
    /// One sentence: which virt type and why.
    pub why_virt_type: String,
    /// The controller VM's address: where the file goes and packstack runs.
    pub controller: Ipv4Addr,
    /// The compute hosts' addresses, in plan order.
    pub computes: Vec<Ipv4Addr>,
    /// Where the admin and default passwords came from (never the passwords).
    pub passwords_from: String,
}

/// Whether the profile installs OpenStack with packstack from an answer file: one of its
/// provisioning steps runs `packstack ... --answer-file=...`.
pub fn is_packstack(profile: &Profile) -> bool {
    answer_file_path(profile).is_some()
}

/// The answer file path the profile's packstack step reads (`packstack
/// --answer-file=PATH` or `--answer-file PATH`), from the first step that has one.
pub fn answer_file_path(profile: &Profile) -> Option<String> {
    profile
        .provision
        .iter()
        .find_map(|step| answer_file_arg(&step.run))
}

fn answer_file_arg(run: &str) -> Option<String> {
    let mut in_packstack = false;
    let mut words = run.split_whitespace();
    while let Some(word) = words.next() {
        if matches!(word, "&&" | "||" | ";" | "|") {
            in_packstack = false;
            continue;
        }
        if word == "packstack" || word.ends_with("/packstack") {
            in_packstack = true;
        } else if in_packstack && let Some(rest) = word.strip_prefix("--answer-file") {
            let path = match rest.strip_prefix('=') {
                Some(path) => Some(path.to_string()),
                None if rest.is_empty() => words.next().map(str::to_string),
                None => continue,
            };
            return path
                .map(|p| {
                    p.trim_end_matches([';', '&'])
                        .trim_matches(['"', '\''])
                        .to_string()
                })
                .filter(|p| !p.is_empty());
        }
        if word.ends_with(';') {
            in_packstack = false;
        }
    }
    None
}

/// The answer file for a lab: hosts from the plan, the virt type from the compute VMs and
/// `host_nested_kvm` (whether nested KVM works on this host: lab's KVM verdict), passwords
/// from `[vars]` (else made up), then the profile's `[vars] packstack` options on top.
/// Errors name the profile's file, line and key when the profile is at fault.
pub fn answer_file(profile: &Profile, plan: &Plan, host_nested_kvm: bool) -> Result<AnswerFile> {
    answer_file_inner(profile, plan, host_nested_kvm, &[], &|| {
        Ok((
            generate_password()?,
            format!(
                "made up at random by lab ({GENERATED_PASSWORD_LEN} letters and digits: \
                 the profile's [vars] has no default_password)"
            ),
        ))
    })
}

/// [`answer_file`], with a password lab makes up kept in `secret` (mode 0600) and used
/// again every later time: packstack runs again with the passwords it was first given
/// (its database keeps them). `kvm_in_vms` are the compute VMs in which `/dev/kvm` was
/// found not to work, with why (probed over SSH): any of them means `qemu`.
pub fn answer_file_kept(
    profile: &Profile,
    plan: &Plan,
    host_nested_kvm: bool,
    kvm_in_vms: &[(String, String)],
    secret: &std::path::Path,
) -> Result<AnswerFile> {
    answer_file_inner(profile, plan, host_nested_kvm, kvm_in_vms, &|| {
        let kept = std::fs::read_to_string(secret)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty() && check_value(t).is_ok());
        let password = match kept {
            Some(p) => p,
            None => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let p = generate_password()?;
                if let Some(dir) = secret.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let tmp = secret.with_extension("new");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .with_context(|| format!("writing {}", tmp.display()))?;
                writeln!(f, "{p}").with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, secret)
                    .with_context(|| format!("writing {}", secret.display()))?;
                p
            }
        };
        Ok((
            password,
            format!(
                "made up by lab the first time and kept in {} (the profile's [vars] has no \
                 default_password)",
                secret.display()
            ),
        ))
    })
}

fn answer_file_inner(
    profile: &Profile,
    plan: &Plan,
    host_nested_kvm: bool,
    kvm_in_vms: &[(String, String)],
    made_up: &dyn Fn() -> Result<(String, String)>,
) -> Result<AnswerFile> {
    if plan.profile != profile.name {
        bail!(
            "the plan is for profile {} but the answer file is asked for profile {}",
            plan.profile,
            profile.name
        );
    }
    let controller = controller_vm(profile, plan)?;
    let mut computes: Vec<&VmPlan> = plan
        .vms
        .iter()
        .filter(|v| v.role.as_deref() == Some(COMPUTE_ROLE))
        .collect();
    if computes.is_empty() {
        computes.push(controller);
    }
    let overrides = overrides(profile)?;
    let (mut virt_type, mut why_virt_type) =
        choose_virt_type(&computes, host_nested_kvm, kvm_in_vms);
    if let Some(value) = overrides.get(VIRT_TYPE_KEY) {
        let chosen = match value.as_str() {
            "kvm" => VirtType::Kvm,
            "qemu" => VirtType::Qemu,
            other => {
                return Err(usage(format!(
                    "{}: vars.packstack.{VIRT_TYPE_KEY}: {other:?} is neither \"kvm\" nor \"qemu\"",
                    option_location(profile, VIRT_TYPE_KEY)
                )));
            }
        };
        why_virt_type = format!(
            "{chosen}: set by the profile's [vars] packstack (lab alone would say {why_virt_type})"
        );
        virt_type = chosen;
    }
    let passwords = passwords(profile, &overrides, made_up)?;

    let controller_ip = controller.ip.to_string();
    let compute_ips: Vec<Ipv4Addr> = computes.iter().map(|v| v.ip).collect();
    let mut options: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |key: &str, value: &str| {
        options.insert(key.to_string(), value.to_string());
    };
    set("CONFIG_CONTROLLER_HOST", &controller_ip);
    set(
        "CONFIG_COMPUTE_HOSTS",
        &compute_ips
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    set("CONFIG_NETWORK_HOSTS", &controller_ip);
    set("CONFIG_AMQP_HOST", &controller_ip);
    set("CONFIG_MARIADB_HOST", &controller_ip);
    set("CONFIG_REDIS_HOST", &controller_ip);
    set("CONFIG_PROVISION_DEMO", "y");
    set("CONFIG_NEUTRON_L2_AGENT", "ovn");
    set("CONFIG_NEUTRON_ML2_MECHANISM_DRIVERS", "ovn");
    set("CONFIG_NEUTRON_ML2_TYPE_DRIVERS", "geneve,flat");
    set("CONFIG_NEUTRON_ML2_TENANT_NETWORK_TYPES", "geneve");
    // Telemetry (ceilometer, gnocchi, aodh) and swift are heavy for a laptop.
    set("CONFIG_CEILOMETER_INSTALL", "n");
    set("CONFIG_AODH_INSTALL", "n");
    set("CONFIG_SWIFT_INSTALL", "n");
    set("CONFIG_CINDER_VOLUMES_CREATE", "y");
    set("CONFIG_NTP_SERVERS", "");
    // packstack logs in to every host (controller included) as root with ssh's default
    // keys, and first installs this public key in each root's authorized_keys over that
    // same login. The lab's peer key pair, which the identity step gives every VM of a
    // kickstart base, is both: named here rather than left to packstack's default (the
    // first `~/.ssh/*.pub` it finds, else a new `id_rsa` no compute would accept).
    set("CONFIG_SSH_KEY", crate::guest::identity::PEER_PUBLIC_KEY);
    set(ADMIN_PW_KEY, &passwords.admin);
    set(DEFAULT_PW_KEY, &passwords.default);
    set(VIRT_TYPE_KEY, &virt_type.to_string());
    options.extend(overrides);

    let mut text = format!(
        "# packstack answer file generated by lab from profile {}.\n\
         # {VIRT_TYPE_KEY} is {why_virt_type}.\n\
         # Passwords: {}.\n\
         [general]\n",
        profile.name, passwords.from
    );
    // packstack reads the file with Python's RawConfigParser: values as written, no %
    // interpolation, blanks around them stripped (check_value keeps them out).
    for (key, value) in &options {
        text.push_str(&format!("{key}={value}\n"));
    }
    Ok(AnswerFile {
        text,
        virt_type,
        why_virt_type,
        controller: controller.ip,
        computes: compute_ips,
        passwords_from: passwords.from,
    })
}

/// The one VM with a controller role; none or several is the profile's fault.
fn controller_vm<'a>(profile: &Profile, plan: &'a Plan) -> Result<&'a VmPlan> {
    let controllers: Vec<&VmPlan> = plan
        .vms
        .iter()
        .filter(|v| {
            v.role
                .as_deref()
                .is_some_and(|r| CONTROLLER_ROLES.contains(&r))
        })
        .collect();
    match controllers.as_slice() {
        [one] => Ok(one),
        [] => {
            let roles: BTreeSet<String> = plan
                .vms
                .iter()
                .map(|v| match &v.role {
                    Some(r) => format!("{r:?}"),
                    None => "none".to_string(),
                })
                .collect();
            Err(usage(format!(
                "{}: profile {}: packstack needs one VM with role \"controller\" or \"allinone\" \
                 to install the controller on, and no VM has one (roles found: {})",
                profile.locate("vm[0]"),
                profile.name,
                roles.into_iter().collect::<Vec<_>>().join(", ")
            )))
        }
        several => {
            let second = profile
                .vms
                .iter()
                .enumerate()
                .filter(|(_, v)| {
                    v.role
                        .as_deref()
                        .is_some_and(|r| CONTROLLER_ROLES.contains(&r))
                })
                .flat_map(|(i, v)| std::iter::repeat_n(i, v.count as usize))
                .nth(1)
                .unwrap_or(0);
            Err(usage(format!(
                "{}: vm[{second}].role: profile {}: {} VMs have a controller role ({}): \
                 packstack installs one controller; give role \"controller\" or \"allinone\" \
                 to one VM only",
                profile.locate(&format!("vm[{second}].role")),
                profile.name,
                several.len(),
                several
                    .iter()
                    .map(|v| format!("{} is {:?}", v.name, v.role.as_deref().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
}

/// `kvm` when every compute VM is a KVM domain with `nested = true` and nested KVM works on
/// the host; `qemu` otherwise, saying every reason.
fn choose_virt_type(
    computes: &[&VmPlan],
    host_nested_kvm: bool,
    kvm_in_vms: &[(String, String)],
) -> (VirtType, String) {
    let names = |vms: &[&VmPlan]| {
        let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        match names.as_slice() {
            [] => String::new(),
            [one] => one.to_string(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
        }
    };
    let is_are = |vms: &[&VmPlan]| if vms.len() == 1 { "is" } else { "are" };
    let mut reasons = Vec::new();
    if !host_nested_kvm {
        reasons.push(
            "nested KVM does not work on this host (`lab check --fix` turns it on)".to_string(),
        );
    }
    let emulated: Vec<&VmPlan> = computes
        .iter()
        .copied()
        .filter(|v| v.domain_type != "kvm")
        .collect();
    if !emulated.is_empty() {
        reasons.push(format!(
            "{} {} emulated by QEMU itself (libvirt domain type {}) and cannot run KVM",
            names(&emulated),
            is_are(&emulated),
            emulated[0].domain_type,
        ));
    }
    let flat: Vec<&VmPlan> = computes.iter().copied().filter(|v| !v.nested).collect();
    if !flat.is_empty() {
        reasons.push(format!(
            "{} {} not `nested = true` in the profile (no vmx/svm)",
            names(&flat),
            is_are(&flat),
        ));
    }
    for (vm, why) in kvm_in_vms {
        reasons.push(format!("/dev/kvm does not work in {vm}: {why}"));
    }
    if reasons.is_empty() {
        (
            VirtType::Kvm,
            format!(
                "kvm: {} {} vmx/svm and nested KVM works on this host, so the Nova instances \
                 run under KVM",
                names(computes),
                if computes.len() == 1 {
                    "exposes"
                } else {
                    "expose"
                }
            ),
        )
    } else {
        (
            VirtType::Qemu,
            format!(
                "qemu: {}, so the Nova instances are emulated (slow, but they run)",
                reasons.join(" and ")
            ),
        )
    }
}

struct Passwords {
    admin: String,
    default: String,
    from: String,
}

/// The admin password: `[vars] packstack` CONFIG_KEYSTONE_ADMIN_PW, `[vars] admin_password`,
/// else the default password. The default password: `[vars] packstack`
/// CONFIG_DEFAULT_PASSWORD, `[vars] default_password`, else made up here.
fn passwords(
    profile: &Profile,
    overrides: &BTreeMap<String, String>,
    made_up: &dyn Fn() -> Result<(String, String)>,
) -> Result<Passwords> {
    let var = |name: &str| -> Result<Option<String>> {
        let Some(value) = profile.vars.get(name) else {
            return Ok(None);
        };
        let at = format!("{}: vars.{name}", profile.locate(&format!("vars.{name}")));
        let Some(text) = value.as_str() else {
            return Err(usage(format!(
                "{at}: a password is a string (\"...\"), not {}",
                toml_kind(value)
            )));
        };
        if text.is_empty() {
            return Err(usage(format!(
                "{at}: the password is empty: leave {name} out and lab makes one up"
            )));
        }
        check_value(text).map_err(|msg| usage(format!("{at}: {msg}")))?;
        Ok(Some(text.to_string()))
    };
    let mut generated = false;
    let (default, default_from) = match overrides.get(DEFAULT_PW_KEY) {
        Some(v) => (v.clone(), "from [vars] packstack".to_string()),
        None => match var("default_password")? {
            Some(v) => (v, "from [vars] default_password".to_string()),
            None => {
                generated = true;
                made_up()?
            }
        },
    };
    let (admin, from) = match overrides.get(ADMIN_PW_KEY) {
        Some(v) => (
            v.clone(),
            format!("{ADMIN_PW_KEY} from [vars] packstack, {DEFAULT_PW_KEY} {default_from}"),
        ),
        None => match var("admin_password")? {
            Some(v) => (
                v,
                format!(
                    "{ADMIN_PW_KEY} from [vars] admin_password, {DEFAULT_PW_KEY} {default_from}"
                ),
            ),
            None => {
                let from =
                    format!("{ADMIN_PW_KEY} and {DEFAULT_PW_KEY} are one password, {default_from}");
                if generated {
                    (
                        default.clone(),
                        format!(
                            "{from}; packstack leaves it in /root/keystonerc_admin on the controller"
                        ),
                    )
                } else {
                    (default.clone(), from)
                }
            }
        },
    };
    Ok(Passwords {
        admin,
        default,
        from,
    })
}

/// The profile's `[vars] packstack` table: known option names, string values.
fn overrides(profile: &Profile) -> Result<BTreeMap<String, String>> {
    let Some(value) = profile.vars.get("packstack") else {
        return Ok(BTreeMap::new());
    };
    let Some(table) = value.as_table() else {
        return Err(usage(format!(
            "{}: vars.packstack: a table of packstack options, such as \
             packstack = {{ CONFIG_HEAT_INSTALL = \"y\" }}, not {}",
            profile.locate("vars.packstack"),
            toml_kind(value)
        )));
    };
    let known = known_options();
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let at = || {
            format!(
                "{}: vars.packstack.{key}",
                option_location(profile, key.as_str())
            )
        };
        if !known.contains(key.as_str()) {
            let hint = match closest(key, &known) {
                Some(name) => format!("; did you mean {name}?"),
                None => String::new(),
            };
            return Err(usage(format!(
                "{}: not a packstack option (packstack would ignore it without a word){hint}",
                at()
            )));
        }
        let Some(text) = value.as_str() else {
            return Err(usage(format!(
                "{}: write the value as a string, {key} = \"...\", not {}",
                at(),
                toml_kind(value)
            )));
        };
        check_value(text).map_err(|msg| usage(format!("{}: {msg}", at())))?;
        out.insert(key.clone(), text.to_string());
    }
    Ok(out)
}

/// A value must stay one `KEY=VALUE` line that ConfigParser reads back unchanged.
fn check_value(text: &str) -> std::result::Result<(), String> {
    if text.chars().any(char::is_control) {
        return Err("a line break or control character cannot go into the answer file".into());
    }
    if text.trim() != text {
        return Err(
            "leading or trailing blanks would be lost: packstack strips them from values".into(),
        );
    }
    Ok(())
}

/// Every option name packstack defines (the first column of [`OPTIONS_TSV`]).
pub fn known_options() -> BTreeSet<&'static str> {
    OPTIONS_TSV
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split('\t').next())
        .collect()
}

/// The known option nearest to a misspelt one, when it is near enough to be a typo.
fn closest<'a>(key: &str, known: &BTreeSet<&'a str>) -> Option<&'a str> {
    let upper = key.to_ascii_uppercase();
    known
        .iter()
        .map(|k| (strsim::levenshtein(&upper, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

/// "FILE:LINE" of a `[vars] packstack` option: the line that sets it, whether the table is
/// written inline or as `[vars.packstack]`; else where `packstack` is.
fn option_location(profile: &Profile, option: &str) -> String {
    let text = match &profile.source {
        ProfileSource::File(path) => std::fs::read_to_string(path).ok(),
        ProfileSource::BuiltIn => BUILT_IN
            .iter()
            .find(|(n, _)| *n == profile.name)
            .map(|(_, t)| t.to_string()),
    };
    let line = text.as_deref().and_then(|text| {
        text.lines().position(|l| {
            l.match_indices(option).any(|(at, _)| {
                let before = l[..at].chars().next_back();
                let after = l[at + option.len()..].trim_start();
                !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"')
                    && after.starts_with('=')
            })
        })
    });
    match (line, &profile.source) {
        (Some(i), ProfileSource::File(path)) => format!("{}:{}", path.display(), i + 1),
        (Some(i), ProfileSource::BuiltIn) => {
            format!("built-in profile {}:{}", profile.name, i + 1)
        }
        (None, _) => profile.locate("vars.packstack"),
    }
}

fn toml_kind(value: &toml::Value) -> String {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "a number",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
    .to_string()
}

/// A password of letters and digits from the kernel's random source.
fn generate_password() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut urandom =
        std::fs::File::open("/dev/urandom").context("opening /dev/urandom for a password")?;
    let mut out = String::with_capacity(GENERATED_PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while out.len() < GENERATED_PASSWORD_LEN {
        urandom
            .read_exact(&mut buf)
            .context("reading /dev/urandom for a password")?;
        // 248 = 4 * 62: taking bytes below it modulo 62 keeps every character equally likely.
        for b in buf.iter().filter(|b| usize::from(**b) < 4 * ALPHABET.len()) {
            if out.len() == GENERATED_PASSWORD_LEN {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
        }
    }
    Ok(out)
}

/// Read an answer file back as packstack does (Python's RawConfigParser): `[general]` and
/// `KEY=VALUE` lines, values taken as written and trimmed, `#` and `;` comment lines and
/// blank lines skipped. A line that is none of these, a key outside `[general]`, another
/// section or a key given twice is an error naming the line.
pub fn parse_answer_file(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut in_general = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(section) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if section != "general" {
                bail!("answer file line {n}: section [{section}]: packstack reads [general] only");
            }
            in_general = true;
            continue;
        }
        let Some((key, value)) = t.split_once('=') else {
            bail!("answer file line {n}: {t:?} is not KEY=VALUE");
        };
        let key = key.trim();
        if !in_general {
            bail!("answer file line {n}: {key} comes before [general]");
        }
        if key.is_empty() {
            bail!("answer file line {n}: a value without a key");
        }
        if out
            .insert(key.to_string(), value.trim().to_string())
            .is_some()
        {
            bail!("answer file line {n}: {key} is set twice");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_file_argument_is_found_in_a_step() {
        for (run, want) in [
            (
                "dnf -y install openstack-packstack && packstack --answer-file=/root/a.txt",
                Some("/root/a.txt"),
            ),
            (
                "packstack -d --answer-file /root/b.txt",
                Some("/root/b.txt"),
            ),
            (
                "/usr/bin/packstack --answer-file='/root/c.txt'",
                Some("/root/c.txt"),
            ),
            ("packstack --allinone", None),
            ("packstack --allinone; cat --answer-file=/x", None),
            ("dnf -y install openstack-packstack", None),
            ("echo --answer-file=/x", None),
        ] {
            assert_eq!(answer_file_arg(run).as_deref(), want, "{run}");
        }
    }

    #[test]
    fn answer_files_read_back() {
        let text = "# lab\n[general]\nCONFIG_A=1\n; note\nCONFIG_B=\nCONFIG_C = 50%%x=y \n";
        let got = parse_answer_file(text).unwrap();
        assert_eq!(got["CONFIG_A"], "1");
        assert_eq!(got["CONFIG_B"], "");
        assert_eq!(got["CONFIG_C"], "50%%x=y");
        for (bad, says) in [
            ("CONFIG_A=1\n", "before [general]"),
            ("[general]\nCONFIG_A\n", "line 2"),
            ("[general]\nCONFIG_A=1\nCONFIG_A=2\n", "set twice"),
            ("[other]\n", "[general] only"),
        ] {
            let err = parse_answer_file(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn generated_passwords_are_letters_and_digits_and_differ() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), GENERATED_PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn typos_get_a_suggestion() {
        let known = known_options();
        assert_eq!(
            closest("CONFIG_HEAT_INSTAL", &known),
            Some("CONFIG_HEAT_INSTALL")
        );
        assert_eq!(
            closest("config_heat_install", &known),
            Some("CONFIG_HEAT_INSTALL")
        );
        assert_eq!(closest("SOMETHING_ELSE_ENTIRELY", &known), None);
    }

    #[test]
    fn the_option_list_is_packstack_s() {
        let known = known_options();
        assert!(known.len() > 250, "{}", known.len());
        for name in [
            VIRT_TYPE_KEY,
            ADMIN_PW_KEY,
            DEFAULT_PW_KEY,
            "EXCLUDE_SERVERS",
        ] {
            assert!(known.contains(name), "{name}");
        }
        assert!(
            known
                .iter()
                .all(|k| k.starts_with("CONFIG_") || *k == "EXCLUDE_SERVERS")
        );
    }
}
