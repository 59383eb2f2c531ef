//! Every shipped kickstart template, rendered for every shipped profile that uses it (and
//! the Fedora one for a Fedora profile), passes pykickstart's `ksvalidator` for its OS
//! version, for each install method and with the optional variables set. ksvalidator is
//! installed by scripts/setup-host.sh (`pip install pykickstart`); without it these tests
//! fail, they never skip.

use std::path::Path;

use lab::kickstart::{self, RenderInputs};
use lab::profile::{BUILT_IN, Profile, ProfileSource};
use lab::runner::Cmd;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXlmb3JsYWJzYmFzZWJ1aWxkcw lab@test";
const HASH: &str = "$6$labsalt1$Zb7o0oXUZ3zj9m4Zp1Q4V7uH8yHkQb8a7gK2cB1lqS3rT5vW6xY7zA8bC9dE0fG1hI2jK3lM4nO5pQ6rS7tU8v";

fn inputs() -> RenderInputs {
    RenderInputs {
        ssh_keys: vec![KEY.into()],
        ssh_keys_from: "test".into(),
    }
}

/// ksvalidator's verdict on a kickstart, for a pykickstart version.
fn ksvalidator(text: &str, version: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ks.cfg");
    std::fs::write(&file, text).unwrap();
    let out = Cmd::new("ksvalidator")
        .args(["-v", version])
        .arg(&file)
        .capture()
        .unwrap_or_else(|e| {
            panic!("{e}: scripts/setup-host.sh installs it (pip install pykickstart)")
        });
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

/// The shipped profiles built from a kickstart, with the template each uses.
fn kickstart_profiles() -> Vec<Profile> {
    BUILT_IN
        .iter()
        .map(|(_, text)| Profile::parse(text, ProfileSource::BuiltIn).unwrap())
        .filter(|p| p.base.kickstart.is_some())
        .collect()
}

/// A profile's variants: as shipped, installed from an ISO, with the optional variables.
fn variants(profile: &Profile, iso: &Path) -> Vec<(String, Profile)> {
    let mut out = vec![("as shipped".to_string(), profile.clone())];
    let mut from_iso = profile.clone();
    from_iso.base.install = Some(iso.display().to_string());
    out.push(("from an ISO".into(), from_iso));
    let mut local = profile.clone();
    local.base.install = Some("file:///srv/mirror/tree/".into());
    out.push(("from a tree on the host".into(), local));
    let mut optional = profile.clone();
    optional.vars.insert(
        "content_cache".into(),
        toml::Value::String("http://192.168.1.5/mirror/9-stream/BaseOS/x86_64/os/".into()),
    );
    optional.vars.insert(
        "root_password_hash".into(),
        toml::Value::String(HASH.into()),
    );
    out.push(("with a content cache and a root hash".into(), optional));
    out
}

#[test]
fn every_shipped_template_passes_ksvalidator_for_every_profile_using_it() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("CentOS-Stream-9-x86_64-dvd1.iso");
    std::fs::write(&iso, b"").unwrap();
    let profiles = kickstart_profiles();
    assert!(
        profiles.len() >= 2,
        "the packstack profiles use a kickstart"
    );
    let mut used = std::collections::BTreeSet::new();
    for profile in &profiles {
        let version = kickstart::ks_version(profile.base.os.as_deref().unwrap()).unwrap();
        used.insert(profile.base.kickstart.clone().unwrap());
        for (what, p) in variants(profile, &iso) {
            let rendered = kickstart::render_full(&p, &inputs()).unwrap();
            let (ok, report) = ksvalidator(&rendered.text, &version);
            assert!(
                ok,
                "{} {what} ({version}) fails ksvalidator:\n{report}\n{}",
                p.name, rendered.text
            );
            // lab's own check agrees.
            kickstart::validate(&p, &rendered.text).unwrap();
        }
    }
    // Every shipped template is used by a shipped profile, or validated below.
    for (name, _) in kickstart::templates::BUILT_IN {
        assert!(
            used.contains(*name) || *name == "fedora.ks.j2",
            "template {name} is used by no profile and not validated"
        );
    }
}

#[test]
fn the_fedora_template_passes_ksvalidator() {
    let text = "name = \"fedora-demo\"\n[base]\nos = \"fedora40\"\nkickstart = \"fedora.ks.j2\"\n\
                install = \"https://dl.fedoraproject.org/pub/fedora/linux/releases/40/Everything/x86_64/os/\"\n\
                [[vm]]\nname = \"a\"\n";
    let profile = Profile::parse(text, ProfileSource::BuiltIn).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("Fedora-Server-dvd-x86_64-40.iso");
    std::fs::write(&iso, b"").unwrap();
    for (what, p) in variants(&profile, &iso) {
        let rendered = kickstart::render_full(&p, &inputs()).unwrap();
        let (ok, report) = ksvalidator(&rendered.text, "F40");
        assert!(
            ok,
            "fedora {what} fails ksvalidator:\n{report}\n{}",
            rendered.text
        );
    }
}

#[test]
fn the_packstack_base_has_what_the_issue_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("cs9.iso");
    std::fs::write(&iso, b"").unwrap();
    for profile in kickstart_profiles() {
        for (what, p) in variants(&profile, &iso) {
            let text = kickstart::render_full(&p, &inputs()).unwrap().text;
            let has = |needle: &str| {
                assert!(
                    text.contains(needle),
                    "{} {what}: no {needle:?} in\n{text}",
                    p.name
                )
            };
            has(&format!("sshkey --username=root \"{KEY}\""));
            has("keepcache=1");
            has("dnf -y update");
            has("qemu-guest-agent");
            has("fstrim.timer");
            has("\npoweroff\n");
            // No plaintext password anywhere: root is locked or gets a crypt hash.
            let rootpw: Vec<&str> = text.lines().filter(|l| l.starts_with("rootpw")).collect();
            assert_eq!(rootpw.len(), 1, "{text}");
            assert!(
                rootpw[0] == "rootpw --lock" || rootpw[0] == format!("rootpw --iscrypted {HASH}"),
                "{}",
                rootpw[0]
            );
            assert!(!text.contains("--plaintext"), "{text}");
            // The install method follows the source.
            let iso_source = p.base.install.as_deref() == Some(iso.to_str().unwrap());
            assert_eq!(text.contains("\ncdrom\n"), iso_source, "{what}:\n{text}");
            let remote = p.base.install.as_deref().unwrap().starts_with("https://");
            assert_eq!(
                text.contains(&format!("url --url={}", p.base.install.as_deref().unwrap())),
                remote,
                "{what}:\n{text}"
            );
            // The content cache, when given, comes before the upstream repositories.
            if p.vars.contains_key("content_cache") {
                has(
                    "repo --name=lab-content-cache --baseurl=http://192.168.1.5/mirror/9-stream/BaseOS/x86_64/os/ --cost=10",
                );
            } else {
                assert!(!text.contains("lab-content-cache"), "{text}");
            }
        }
    }
    // The shipped packstack profiles' disks, and the default of 40 GiB.
    let aio = Profile::parse(BUILT_IN[1].1, ProfileSource::BuiltIn).unwrap();
    assert_eq!(aio.base.disk.bytes(), 60 << 30);
    let bare = Profile::parse(
        "name = \"x\"\n[base]\nkernel = \"host\"\n[[vm]]\nname = \"a\"\n",
        ProfileSource::BuiltIn,
    )
    .unwrap();
    assert_eq!(bare.base.disk.bytes(), 40 << 30);
}

#[test]
fn lab_base_kickstart_prints_the_rendered_kickstart() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".ssh")).unwrap();
    std::fs::write(home.path().join(".ssh/id_ed25519.pub"), format!("{KEY}\n")).unwrap();
    let lab = |args: &[&str], home: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
            .args(args)
            .env("HOME", home)
            .env_remove("XDG_CONFIG_HOME")
            .current_dir(home)
            .output()
            .unwrap()
    };
    let out = lab(
        &["base", "kickstart", "packstack-aio", "--validate"],
        home.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("# lab base image: packstack-aio (centos-stream9)\n"));
    assert!(
        stdout.contains(&format!("sshkey --username=root \"{KEY}\"")),
        "{stdout}"
    );
    assert!(
        stdout.contains("url --url=https://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os/")
    );

    // No key anywhere and no password hash: nobody could log in, so it is refused.
    let empty = tempfile::tempdir().unwrap();
    let out = lab(&["base", "kickstart", "packstack-aio"], empty.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no SSH public key"), "{stderr}");

    // A profile without a kickstart is told so.
    let out = lab(&["base", "kickstart", "smoke"], home.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("without a kickstart"), "{stderr}");
}

/// The end of each template's %post seals the base: the lines from its `# Seal` comment to
/// `%end`, run by sh against a directory standing in for the installed system's root, leave
/// /etc/machine-id empty (not missing: systemd then writes a new one at first boot) and no
/// SSH host key, and nothing else of /etc/ssh touched.
#[test]
fn the_kickstart_post_seals_machine_id_and_host_keys() {
    let fedora = Profile::parse(
        "name = \"fedora-demo\"\n[base]\nos = \"fedora40\"\nkickstart = \"fedora.ks.j2\"\n\
         install = \"https://dl.fedoraproject.org/pub/fedora/linux/releases/40/Everything/x86_64/os/\"\n\
         [[vm]]\nname = \"a\"\n",
        ProfileSource::BuiltIn,
    )
    .unwrap();
    let mut profiles = kickstart_profiles();
    profiles.push(fedora);
    for p in profiles {
        let text = kickstart::render_full(&p, &inputs()).unwrap().text;
        let post = &text[text.rfind("%post").unwrap()..];
        let seal = &post[post
            .find("# Seal")
            .unwrap_or_else(|| panic!("{}: no seal in %post:\n{post}", p.name))..];
        let seal = &seal[..seal.find("%end").unwrap()];
        // Nothing after the seal in %post could undo it.
        assert!(
            post[post.find("# Seal").unwrap()..]
                .trim_end()
                .ends_with("%end"),
            "{post}"
        );
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir_all(etc.join("ssh")).unwrap();
        std::fs::write(etc.join("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        for kind in ["rsa", "ecdsa", "ed25519"] {
            std::fs::write(etc.join(format!("ssh/ssh_host_{kind}_key")), "private").unwrap();
            std::fs::write(etc.join(format!("ssh/ssh_host_{kind}_key.pub")), "public").unwrap();
        }
        std::fs::write(etc.join("ssh/sshd_config"), "PermitRootLogin yes\n").unwrap();
        std::fs::write(etc.join("ssh/moduli"), "moduli\n").unwrap();
        let script = seal.replace(" /etc/", &format!(" {}/etc/", root.path().display()));
        assert!(!script.contains(" /etc/"), "{script}");
        Cmd::new("sh")
            .args(["-e", "-c", &script])
            .run()
            .unwrap_or_else(|e| panic!("{}: {e}\n{script}", p.name));
        let id = std::fs::read(etc.join("machine-id")).unwrap();
        assert!(id.is_empty(), "{}: machine-id {id:?}", p.name);
        let mut left: Vec<String> = std::fs::read_dir(etc.join("ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["moduli", "sshd_config"], "{}", p.name);
    }
}
