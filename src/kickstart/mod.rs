//! Kickstart templates: where they are found, how they are rendered for a profile, how the
//! result is validated. Base images are never hand-made: lab renders a kickstart, runs the
//! distribution's installer with it (`build`), seals the result (`seal`) and records what
//! it was made from, so a change of template, profile or install source rebuilds it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;

use crate::error::usage;
use crate::profile::Profile;
use crate::runner::Cmd;

pub mod build;
pub mod iso9660;
pub mod seal;
pub mod serve;
pub mod source;
pub mod templates;

pub use build::{BuildRecord, build_base, needs_rebuild};
pub use source::InstallSource;

/// Template variables lab sets itself; `[vars]` may not set them (except `ssh_keys`,
/// which lab takes from `[vars]` when it is there).
pub const LAB_VARIABLES: &[&str] = &[
    "profile",
    "os",
    "install",
    "install_method",
    "install_url",
    "disk_mib",
    "disk_gib",
    "ssh_keys",
    "vars",
];

/// `[vars]` a template may test without the profile setting them: they are `none` unless
/// the profile sets them. Any other variable a template uses must be set, or rendering
/// fails naming it.
pub const OPTIONAL_VARIABLES: &[&str] = &["content_cache", "root_password_hash"];

/// Everything a template is rendered with, apart from `[vars]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderInputs {
    /// SSH public keys for root (one key a line each).
    pub ssh_keys: Vec<String>,
    /// Where the keys came from, for messages.
    pub ssh_keys_from: String,
}

/// A rendered kickstart and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rendered {
    pub template: String,
    pub text: String,
}

/// Render the profile's kickstart template with the invoking user's SSH keys (`[vars]
/// ssh_keys`, else `~/.ssh/*.pub`). An undefined variable is an error naming the template,
/// the line and the variable.
pub fn render(profile: &Profile) -> Result<String> {
    Ok(render_full(
        profile,
        &inputs_for(profile, crate::dirs::user_home().as_deref())?,
    )?
    .text)
}

/// The render inputs for a profile: its `[vars] ssh_keys`, else the `*.pub` keys in
/// `home/.ssh`. No key and no root password hash is an error: nobody could log in.
pub fn inputs_for(profile: &Profile, home: Option<&Path>) -> Result<RenderInputs> {
    let key_at =
        |field: &str| format!("{}: vars.{field}", profile.locate(&format!("vars.{field}")));
    if let Some(hash) = profile.vars.get("root_password_hash") {
        let text = hash.as_str().unwrap_or_default();
        if !is_crypt_hash(text) {
            return Err(usage(format!(
                "{}: give a crypt(3) hash (`openssl passwd -6`), never a plaintext password",
                key_at("root_password_hash")
            )));
        }
    }
    let (keys, from) = user_ssh_keys(profile, home)?;
    if keys.is_empty() && !profile.vars.contains_key("root_password_hash") {
        return Err(usage(format!(
            "profile {}: no SSH public key for root in {from} and no root password hash: \
             nobody could log in to the base. Create a key (`ssh-keygen -t ed25519`) or set \
             [vars] ssh_keys",
            profile.name
        )));
    }
    Ok(RenderInputs {
        ssh_keys: keys,
        ssh_keys_from: from,
    })
}

/// The user's public keys for root in the VMs, and where they came from: `[vars] ssh_keys`,
/// else every `~/.ssh/*.pub`. Each is checked to be an OpenSSH public key line.
pub fn user_ssh_keys(profile: &Profile, home: Option<&Path>) -> Result<(Vec<String>, String)> {
    let key_at =
        |field: &str| format!("{}: vars.{field}", profile.locate(&format!("vars.{field}")));
    let (keys, from) = match profile.vars.get("ssh_keys") {
        Some(value) => {
            let keys: Vec<String> = match value {
                toml::Value::String(s) => s.lines().map(str::to_string).collect(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            usage(format!("{}: a list of strings", key_at("ssh_keys")))
                        })
                    })
                    .collect::<Result<_>>()?,
                _ => {
                    return Err(usage(format!(
                        "{}: one public key per line, or a list of them",
                        key_at("ssh_keys")
                    )));
                }
            };
            (keys, "the profile's [vars] ssh_keys".to_string())
        }
        None => {
            let dir = home.map(|h| h.join(".ssh"));
            let keys = match &dir {
                Some(d) => keys_in(d)?,
                None => Vec::new(),
            };
            (
                keys,
                dir.map(|d| format!("{}/*.pub", d.display()))
                    .unwrap_or_else(|| "~/.ssh/*.pub ($HOME is not set)".into()),
            )
        }
    };
    let keys: Vec<String> = keys
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('#'))
        .collect();
    for key in &keys {
        if !is_public_key(key) {
            return Err(usage(format!(
                "SSH key from {from} is not an OpenSSH public key line (\"ssh-ed25519 AAAA... comment\"): {:?}",
                key.chars().take(40).collect::<String>()
            )));
        }
    }
    Ok((keys, from))
}

/// The keys of every `*.pub` file in `dir`, in name order.
fn keys_in(dir: &Path) -> Result<Vec<String>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pub") && p.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    files.sort();
    let mut keys = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        keys.extend(text.lines().map(str::to_string));
    }
    Ok(keys)
}

/// An OpenSSH public key line: a known type, base64 data, an optional comment; no quote
/// (the template puts it inside double quotes).
fn is_public_key(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let kind = words.next().unwrap_or_default();
    let data = words.next().unwrap_or_default();
    let known = kind.starts_with("ssh-")
        || kind.starts_with("ecdsa-sha2-")
        || kind.starts_with("sk-ssh-")
        || kind.starts_with("sk-ecdsa-");
    known
        && data.len() >= 16
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        && !line.contains('"')
        && !line.contains('\\')
}

/// A crypt(3) hash such as `$6$salt$...` or `$y$...`: what `rootpw --iscrypted` takes.
pub fn is_crypt_hash(text: &str) -> bool {
    let parts: Vec<&str> = text.split('$').collect();
    text.starts_with('$')
        && parts.len() >= 4
        && !parts[1].is_empty()
        && parts.last().is_some_and(|p| p.len() >= 16)
        && !text.contains(char::is_whitespace)
}

/// Render with explicit inputs (tests hand in their own keys).
pub fn render_full(profile: &Profile, inputs: &RenderInputs) -> Result<Rendered> {
    let Some(name) = profile.base.kickstart.as_deref() else {
        return Err(usage(format!(
            "profile {} has no [base] kickstart: its base is not installed from a kickstart",
            profile.name
        )));
    };
    let (label, text) = templates::template_text(name)?;
    let source = match profile.base.install.as_deref() {
        Some(s) => InstallSource::parse(s)?,
        None => {
            return Err(usage(format!(
                "{}: base.install: a kickstart install needs an install source",
                profile.locate("base.install")
            )));
        }
    };
    let context = context_for(profile, &source, inputs)?;
    let rendered = render_text(&label, &text, &context)?;
    Ok(Rendered {
        template: label,
        text: rendered,
    })
}

/// The template context: lab's variables, then each `[vars]` entry at the top level too.
fn context_for(
    profile: &Profile,
    source: &InstallSource,
    inputs: &RenderInputs,
) -> Result<BTreeMap<String, Value>> {
    let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
    for name in OPTIONAL_VARIABLES {
        ctx.insert(name.to_string(), Value::from(()));
    }
    for (key, value) in &profile.vars {
        if LAB_VARIABLES.contains(&key.as_str()) && key != "ssh_keys" {
            return Err(usage(format!(
                "{}: vars.{key}: lab sets the template variable {key} itself; choose another name",
                profile.locate(&format!("vars.{key}"))
            )));
        }
        ctx.insert(key.clone(), Value::from(minijinja::value::Serde(value)));
    }
    let disk = profile.base.disk.bytes();
    ctx.insert("profile".into(), Value::from(profile.name.clone()));
    ctx.insert(
        "os".into(),
        Value::from(profile.base.os.clone().unwrap_or_default()),
    );
    ctx.insert("install".into(), Value::from(source.to_string()));
    ctx.insert("install_method".into(), Value::from(source.method()));
    ctx.insert(
        "install_url".into(),
        match source.installer_url() {
            Some(u) => Value::from(u),
            None => Value::from(()),
        },
    );
    ctx.insert("disk_mib".into(), Value::from(disk / (1 << 20)));
    ctx.insert("disk_gib".into(), Value::from(disk / (1 << 30)));
    ctx.insert(
        "ssh_keys".into(),
        Value::from(minijinja::value::Serde(&inputs.ssh_keys)),
    );
    ctx.insert(
        "vars".into(),
        Value::from(minijinja::value::Serde(&profile.vars)),
    );
    Ok(ctx)
}

/// Render template text in strict mode: every variable it uses must be defined.
pub fn render_text(label: &str, text: &str, context: &BTreeMap<String, Value>) -> Result<String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Block tags on lines of their own leave no blank lines in the kickstart.
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .expect("a valid syntax configuration"),
    );
    env.add_template(label, text)
        .map_err(|e| template_error(label, text, context, &e))?;
    let template = env
        .get_template(label)
        .map_err(|e| template_error(label, text, context, &e))?;
    template
        .render(context)
        .map_err(|e| template_error(label, text, context, &e))
}

/// "kickstart template T, line N: variable `x` is not defined ...", or minijinja's own
/// words for other errors.
fn template_error(
    label: &str,
    text: &str,
    context: &BTreeMap<String, Value>,
    err: &minijinja::Error,
) -> anyhow::Error {
    let line = err.line();
    let at = line.map(|l| format!(", line {l}")).unwrap_or_default();
    if err.kind() != minijinja::ErrorKind::UndefinedError {
        let detail = err.detail().map(|d| format!(": {d}")).unwrap_or_default();
        return usage(format!(
            "kickstart template {label}{at}: {}{detail}",
            err.kind()
        ));
    }
    let missing = undefined_names(text, context, line);
    let source_line = line
        .and_then(|l| text.lines().nth(l.saturating_sub(1)))
        .map(|l| format!(" (`{}`)", l.trim()))
        .unwrap_or_default();
    match missing.as_slice() {
        [] => usage(format!(
            "kickstart template {label}{at}{source_line}: a variable used there is not defined"
        )),
        names => usage(format!(
            "kickstart template {label}{at}{source_line}: variable {} not defined; set {} in the \
             profile's [vars]",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
                + if names.len() == 1 { " is" } else { " are" },
            if names.len() == 1 { "it" } else { "them" }
        )),
    }
}

/// The variables (`x` or `vars.x`) the template uses that the context lacks, those on
/// `line` first when some are there.
fn undefined_names(
    text: &str,
    context: &BTreeMap<String, Value>,
    line: Option<usize>,
) -> Vec<String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let Ok(tmpl) = env.template_from_str(text) else {
        return Vec::new();
    };
    let used: BTreeSet<String> = tmpl.undeclared_variables(true).into_iter().collect();
    let missing: Vec<String> = used
        .into_iter()
        .filter(|name| {
            let mut parts = name.split('.');
            let top = parts.next().unwrap_or_default();
            match context.get(top) {
                None => true,
                Some(value) => match parts.next() {
                    Some(attr) if top == "vars" => {
                        value.get_attr(attr).is_ok_and(|v| v.is_undefined())
                    }
                    _ => false,
                },
            }
        })
        .collect();
    if let Some(l) = line.and_then(|l| text.lines().nth(l.saturating_sub(1))) {
        let here: Vec<String> = missing
            .iter()
            .filter(|n| l.contains(n.as_str()))
            .cloned()
            .collect();
        if !here.is_empty() {
            return here;
        }
    }
    missing
}

/// pykickstart's name for the syntax version of an OS (`ksvalidator -v`): RHEL9 for
/// CentOS Stream 9, Rocky 9, Alma 9; F40 for Fedora 40...
pub fn ks_version(os: &str) -> Option<String> {
    let os = os.to_ascii_lowercase();
    let digits: String = os.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    let el = [
        "centos-stream",
        "centos",
        "rhel",
        "rocky",
        "alma",
        "almalinux",
        "ol",
        "oracle",
    ];
    if el.iter().any(|p| os.starts_with(p)) {
        return Some(format!("RHEL{digits}"));
    }
    if os.starts_with("fedora") {
        return Some(format!("F{digits}"));
    }
    None
}

/// Why validation could not run, as opposed to a kickstart that failed it.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error(
        "ksvalidator is not installed: `pip install pykickstart` (Debian: python3-pykickstart, \
         Fedora: pykickstart)"
    )]
    NotInstalled,
    #[error("kickstart for {profile} fails validation ({version}):\n{report}")]
    Invalid {
        profile: String,
        version: String,
        report: String,
    },
}

/// Run pykickstart's `ksvalidator` on a rendered kickstart for the profile's OS version.
pub fn validate(profile: &Profile, text: &str) -> Result<()> {
    let version = profile.base.os.as_deref().and_then(ks_version);
    let dir = tempfile::Builder::new()
        .prefix("lab-ks-")
        .tempdir()
        .context("creating a scratch directory for ksvalidator")?;
    let file = dir.path().join(format!("{}.ks", profile.name));
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let mut cmd = Cmd::new("ksvalidator");
    if let Some(v) = &version {
        cmd = cmd.args(["-v", v.as_str()]);
    }
    let out = match cmd.arg(&file).capture() {
        Ok(out) => out,
        Err(e) if e.is_not_found() => return Err(ValidationError::NotInstalled.into()),
        Err(e) => return Err(e.into()),
    };
    if out.success() {
        return Ok(());
    }
    let report = format!("{}{}", out.stdout, out.stderr)
        .replace(&file.display().to_string(), "ks.cfg")
        .trim()
        .to_string();
    Err(ValidationError::Invalid {
        profile: profile.name.clone(),
        version: version.unwrap_or_else(|| "pykickstart's newest syntax".into()),
        report,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileSource;

    fn profile(extra_vars: &str) -> Profile {
        let text = format!(
            "name = \"demo\"\n[base]\nos = \"centos-stream9\"\nkickstart = \"centos-stream9.ks.j2\"\n\
             install = \"https://mirror.example/9-stream/BaseOS/x86_64/os/\"\n[vars]\n{extra_vars}\n\
             [[vm]]\nname = \"a\"\n"
        );
        Profile::parse(&text, ProfileSource::File("demo.toml".into())).unwrap()
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9kZXZlbG9wZXJrZXlmb3J0ZXN0cw lab@test";

    fn inputs() -> RenderInputs {
        RenderInputs {
            ssh_keys: vec![KEY.into()],
            ssh_keys_from: "test".into(),
        }
    }

    #[test]
    fn strict_mode_names_the_missing_variable_and_its_line() {
        let ctx: BTreeMap<String, Value> = [("profile".to_string(), Value::from("demo"))].into();
        let err = render_text(
            "t.ks.j2",
            "text\n# {{ profile }}\nurl --url={{ mirror }}\n",
            &ctx,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("kickstart template t.ks.j2, line 3"), "{err}");
        assert!(err.contains("variable `mirror` is not defined"), "{err}");
        assert!(err.contains("[vars]"), "{err}");
        let err = render_text("t.ks.j2", "{% if vars.cache %}x{% endif %}\n", &ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`vars.cache`"), "{err}");
    }

    #[test]
    fn optional_variables_default_to_none_and_others_must_be_set() {
        let p = profile("");
        let r = render_full(&p, &inputs()).unwrap();
        assert!(!r.text.contains("lab-content-cache"), "{}", r.text);
        assert!(r.text.contains("rootpw --lock"), "{}", r.text);
        let p = profile("content_cache = \"http://10.0.0.5/mirror/\"\n");
        let r = render_full(&p, &inputs()).unwrap();
        assert!(
            r.text.contains(
                "repo --name=lab-content-cache --baseurl=http://10.0.0.5/mirror/ --cost=10"
            ),
            "{}",
            r.text
        );
    }

    #[test]
    fn plaintext_passwords_and_bad_keys_are_refused() {
        let p = profile("root_password_hash = \"hunter2\"\n");
        let err = inputs_for(&p, None).unwrap_err().to_string();
        assert!(err.contains("never a plaintext password"), "{err}");
        let p = profile(
            "root_password_hash = \"$6$saltsalt$Kq3Xq1Qv6a8m3fVtEwq0lJ0y5vJ2nZx2cQyGm8c9mB1\"\n",
        );
        let i = inputs_for(&p, None).unwrap();
        assert!(i.ssh_keys.is_empty());
        let r = render_full(&p, &i).unwrap();
        assert!(
            r.text.contains("rootpw --iscrypted $6$saltsalt$"),
            "{}",
            r.text
        );
        let p = profile("ssh_keys = \"ssh-rsa \\\"oops\\\"\"\n");
        let err = inputs_for(&p, None).unwrap_err().to_string();
        assert!(err.contains("not an OpenSSH public key"), "{err}");
    }

    #[test]
    fn keys_come_from_the_profile_else_from_home() {
        let home = tempfile::tempdir().unwrap();
        let p = profile("");
        let err = inputs_for(&p, Some(home.path())).unwrap_err().to_string();
        assert!(err.contains("no SSH public key"), "{err}");
        std::fs::create_dir(home.path().join(".ssh")).unwrap();
        std::fs::write(home.path().join(".ssh/id_ed25519.pub"), format!("{KEY}\n")).unwrap();
        std::fs::write(home.path().join(".ssh/id_ed25519"), "PRIVATE").unwrap();
        let i = inputs_for(&p, Some(home.path())).unwrap();
        assert_eq!(i.ssh_keys, [KEY]);
        let p = profile(&format!(
            "ssh_keys = [\"{KEY}\", \"{}\"]\n",
            KEY.replace("test", "two")
        ));
        let i = inputs_for(&p, Some(home.path())).unwrap();
        assert_eq!(i.ssh_keys.len(), 2);
        let text = render_full(&p, &i).unwrap().text;
        assert_eq!(text.matches("sshkey --username=root").count(), 2, "{text}");
    }

    #[test]
    fn lab_variables_cannot_be_overridden() {
        let p = profile("profile = \"other\"\n");
        let err = render_full(&p, &inputs()).unwrap_err().to_string();
        assert!(
            err.contains("lab sets the template variable profile itself"),
            "{err}"
        );
    }

    #[test]
    fn os_names_map_to_pykickstart_versions() {
        assert_eq!(ks_version("centos-stream9").as_deref(), Some("RHEL9"));
        assert_eq!(ks_version("rocky9").as_deref(), Some("RHEL9"));
        assert_eq!(ks_version("fedora40").as_deref(), Some("F40"));
        assert_eq!(ks_version("debian12"), None);
        assert_eq!(ks_version("centos-stream"), None);
    }

    #[test]
    fn crypt_hashes_are_told_from_passwords() {
        assert!(is_crypt_hash(
            "$6$rounds=5000$abcdefgh$0123456789abcdefghijklmnopqrstuv"
        ));
        assert!(is_crypt_hash("$y$j9T$abcdefgh$0123456789abcdefghijkl"));
        assert!(!is_crypt_hash("correct horse battery staple"));
        assert!(!is_crypt_hash("$6$short"));
    }
}
