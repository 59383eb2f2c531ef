//! Base builds for real, against the running libvirtd, under TCG: an install tree on this
//! host (`.treeinfo`, the host's kernel as `images/pxeboot/vmlinuz`, and as
//! `images/pxeboot/initrd.img` a small busybox "installer" made with `lab::directboot::initramfs`)
//! whose /init reads the injected `/ks.cfg`, fetches `.treeinfo` from the `inst.repo=`
//! lab serves it at, writes an ext4 filesystem holding the kickstart's SHA-256 to its disk
//! and powers off. lab builds from it, seals the base; a clone of the base boots and shows
//! the file. Then the faults: an installer that never powers off (the time-out removes
//! the half-built base and the installer domain), one that reboots, and bad input
//! (missing ISO, a tree without `.treeinfo`, a missing template variable, a kickstart that
//! fails ksvalidator: the real one, else a fake that refuses only what that test writes),
//! each a clear error with nothing half-made left behind.
//!
//! Guests run one at a time (two cores).

#[path = "support/guest.rs"]
mod guest;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab::directboot::initramfs::Initramfs;
use lab::kickstart::{self, BuildRecord, build_base, needs_rebuild};
use lab::libvirt::Libvirt;
use lab::profile::{Profile, ProfileSource};
use lab::runner::Cmd;
use lab::storage::Storage;
use lab::storage::qcow2::Qcow2Storage;
use sha2::Digest;

const URI: &str = "qemu:///system";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXlmb3JsYWJzYmFzZWJ1aWxkcw lab@test";

/// One emulated guest at a time on the two-core machines.
static GUESTS: Mutex<()> = Mutex::new(());

/// The fake installer's /init. `lab.test=` on the command line (lab appends the profile's
/// `[base] cmdline`) picks a misbehaviour; `lab.test=check` mounts the disk and prints the
/// file the install wrote.
const INIT: &str = r#"#!/bin/sh
PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
say() { echo "fake-installer: $*"; }
mode=install
repo=
set -f
for w in $(cat /proc/cmdline); do
    case "$w" in
        lab.test=*) mode=${w#lab.test=} ;;
        inst.repo=*) repo=${w#inst.repo=} ;;
    esac
done
set +f
while read -r m; do insmod "$m" 2>/dev/null; done </etc/modules.list
n=0
while [ ! -e /dev/vda ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
case "$mode" in
    hang) say "hanging on purpose"; while :; do sleep 3600; done ;;
    reboot) say "rebooting on purpose"; reboot -f ;;
    check)
        mkdir -p /mnt
        if mount -t ext4 -o ro /dev/vda /mnt; then
            say "LAB-CHECK ks=$(cat /mnt/ks.sha256) treeinfo=$(head -n 1 /mnt/treeinfo)"
        else
            say "LAB-CHECK mount failed"
        fi
        umount /mnt
        poweroff -f ;;
esac
say "kickstart $(sha256sum /ks.cfg)"
mkdir -p /stage /run /etc/udhcpc
sha256sum /ks.cfg | cut -d ' ' -f 1 >/stage/ks.sha256
cp /ks.cfg /stage/ks.cfg
ip link set lo up
nic=
for d in /sys/class/net/*; do [ "${d##*/}" != lo ] && nic=${d##*/}; done
if [ -n "$nic" ] && [ "${repo#http}" != "$repo" ] \
        && udhcpc -i "$nic" -s /etc/udhcpc/default.script -n -q -t 10 -T 1 >/dev/null 2>&1 \
        && wget -q -O /stage/treeinfo "${repo}.treeinfo"; then
    say "fetched ${repo}.treeinfo"
else
    say "no tree over http at ${repo:-?}"
    echo none >/stage/treeinfo
fi
# Scratch data an installer writes and frees (downloads, old files): without discards at
# mkfs it stays in the image until lab trims the filesystem while sealing.
say "writing scratch data"
dd if=/dev/urandom of=/dev/vda bs=1M count=16 2>/dev/null
say "formatting /dev/vda"
if mkfs.ext4 -q -F -E nodiscard -d /stage /dev/vda; then say "installed"; else say "mkfs failed"; fi
sync
poweroff -f
"#;

const TREEINFO: &str = "[general]\nname = lab test tree\narch = x86_64\n\n\
    [images-x86_64]\nkernel = images/pxeboot/vmlinuz\ninitrd = images/pxeboot/initrd.img\n";

/// A kickstart that passes `ksvalidator -v RHEL9`, with a line from the profile's vars.
const TEMPLATE: &str = "# lab test kickstart for {{ profile }}\ntext\n\
{% if install_method == \"cdrom\" %}cdrom\n{% elif install_url %}url --url={{ install_url }}\n{% endif %}\
rootpw --lock\n\
{% for key in ssh_keys %}sshkey --username=root \"{{ key }}\"\n{% endfor %}\
poweroff\n%packages\n@core\n%end\n%post\necho {{ greeting }} >/root/lab-greeting\n%end\n";

/// The install tree of a case.
struct Tree {
    root: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// Make the tree under `dir`: `.treeinfo`, the host's kernel, the busybox installer.
fn make_tree(dir: &Path) -> Tree {
    let root = dir.join("tree");
    let pxe = root.join("images/pxeboot");
    fs::create_dir_all(&pxe).unwrap();
    fs::write(root.join(".treeinfo"), TREEINFO).unwrap();
    let host = guest::HostKernel::find().expect("a host kernel (setup-host.sh installs one)");
    // The ELF inside the bzImage boots about 5 s sooner under TCG.
    match guest::pvh_kernel(&host.vmlinuz, dir) {
        Some(elf) => fs::rename(elf, pxe.join("vmlinuz")).unwrap(),
        None => {
            fs::copy(&host.vmlinuz, pxe.join("vmlinuz")).unwrap();
        }
    }
    let mut ramfs = Initramfs::new();
    ramfs
        .busybox(lab::directboot::host_busybox().unwrap())
        .unwrap();
    let modules = ramfs
        .kernel_modules(
            &host.modules_dir,
            &[
                "virtio_pci",
                "virtio_blk",
                "virtio_net",
                "af_packet",
                "ext4",
            ],
        )
        .unwrap();
    let list: String = modules.iter().map(|m| format!("{}\n", m.path)).collect();
    let mkfs = guest::find_executable("mkfs.ext4").unwrap();
    ramfs.executable_with_libs(&mkfs).unwrap();
    for d in ["/proc", "/sys", "/dev", "/run", "/tmp", "/mnt"] {
        ramfs.dir(d, 0o755);
    }
    ramfs
        .file("/init", INIT, 0o755)
        .file("/etc/modules.list", list, 0o644)
        .file(
            "/etc/udhcpc/default.script",
            lab::directboot::DHCP_SCRIPT,
            0o755,
        );
    ramfs.write_to(pxe.join("initrd.img")).unwrap();
    Tree {
        kernel: pxe.join("vmlinuz"),
        initrd: pxe.join("initrd.img"),
        root,
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A profile of its own (name, image directory, template) in a directory QEMU can reach.
struct Case {
    dir: tempfile::TempDir,
    name: String,
    images: PathBuf,
    tree: Tree,
}

impl Case {
    fn new(tag: &str) -> Case {
        let dir = tempfile::Builder::new()
            .prefix("lab-ks-case-")
            .tempdir()
            .unwrap();
        chmod(dir.path(), 0o755);
        let name = format!("ks{tag}{}", std::process::id() % 100_000);
        let images = dir.path().join("images");
        fs::write(dir.path().join("test.ks.j2"), TEMPLATE).unwrap();
        let tree = make_tree(dir.path());
        Case {
            dir,
            name,
            images,
            tree,
        }
    }

    fn template(&self) -> PathBuf {
        self.dir.path().join("test.ks.j2")
    }

    /// The profile's text with `install` and extra `[base]` and `[vars]` lines.
    fn profile(&self, install: &str, base: &str, vars: &str) -> Profile {
        let text = format!(
            "name = \"{}\"\n[storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
             [base]\nos = \"centos-stream9\"\nkickstart = \"{}\"\ninstall = \"{install}\"\n\
             disk = \"64MiB\"\n{base}\n[vars]\nssh_keys = [\"{KEY}\"]\n{vars}\n\
             [[vm]]\nname = \"node\"\n",
            self.name,
            self.images.display(),
            self.template().display(),
        );
        let path = self.dir.path().join(format!("{}.toml", self.name));
        fs::write(&path, &text).unwrap();
        Profile::parse(&text, ProfileSource::File(path)).unwrap()
    }

    fn tree_profile(&self, base: &str, greeting: &str) -> Profile {
        self.profile(
            &format!("file://{}", self.tree.root.display()),
            base,
            &format!("greeting = \"{greeting}\"\n"),
        )
    }

    fn profile_file(&self) -> String {
        self.dir
            .path()
            .join(format!("{}.toml", self.name))
            .display()
            .to_string()
    }

    /// Run the lab binary; the exit status must be `code`; returns stdout and stderr.
    fn lab(&self, args: &[&str], code: i32) -> (String, String) {
        self.lab_with(args, code, &[])
    }

    /// [`Case::lab`] with more environment.
    fn lab_with(
        &self,
        args: &[&str],
        code: i32,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> (String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
            .args(args)
            .envs(env.iter().copied())
            .env("LAB_CONNECT", URI)
            .env("LAB_LOCK", self.dir.path().join("lab.lock"))
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "lab {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        (stdout, stderr)
    }

    fn lab_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.lab(&all, 0).0).unwrap()
    }

    fn storage(&self) -> Qcow2Storage {
        Qcow2Storage::new(&self.images)
    }

    fn installer(&self) -> String {
        format!("lab-{}-installer", self.name)
    }

    /// Everything in the image directory (the build's scratch directory included).
    /// A failed build (`err`) left no file in the image directory and no installer domain.
    fn assert_nothing_left(&self, err: &str) {
        assert!(
            self.leftovers().is_empty(),
            "left {:?} after: {err}",
            self.leftovers()
        );
        assert!(
            !domain_exists(&self.installer()),
            "a domain is left after: {err}"
        );
    }

    fn leftovers(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.images)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        // Whatever happened, no domain of this case outlives it.
        for dom in [self.installer(), format!("labtest-{}-check", self.name)] {
            let _ = Cmd::new("virsh")
                .args(["-c", URI, "destroy", &dom])
                .capture();
            let _ = Cmd::new("virsh")
                .args(["-c", URI, "undefine", &dom])
                .capture();
        }
    }
}

fn domain_exists(name: &str) -> bool {
    Cmd::new("virsh")
        .args(["-c", URI, "dominfo", name])
        .capture()
        .unwrap()
        .success()
}

/// Boot `disk` (a clone) with the tree's kernel and installer in check mode; return the
/// LAB-CHECK line.
fn boot_check(case: &Case, disk: &Path) -> String {
    let name = format!("labtest-{}-check", case.name);
    let console = case.dir.path().join("check.console.log");
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 lab.test=check</cmdline></os><features><acpi/></features>\
         <cpu mode='maximum' check='none'/><on_poweroff>destroy</on_poweroff>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <serial type='file'><source path='{}'/><target port='0'/></serial></devices></domain>",
        case.tree.kernel.display(),
        case.tree.initrd.display(),
        disk.display(),
        console.display()
    );
    let xml_file = case.dir.path().join("check.xml");
    fs::write(&xml_file, xml).unwrap();
    Cmd::new("virsh")
        .args(["-c", URI, "create"])
        .arg(&xml_file)
        .run()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = fs::read_to_string(&console).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("LAB-CHECK")) {
            return line.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the clone did not show its file within 120 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sha256(text: &str) -> String {
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

#[test]
fn a_base_is_built_from_a_local_tree_sealed_and_cloned() {
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let case = Case::new("b");
    virt::error::clear_error_callback();
    let lv = Libvirt::open(URI).unwrap();
    let storage = case.storage();
    let profile = case.tree_profile("", "hello");
    assert!(needs_rebuild(&profile, &storage).unwrap(), "no base yet");

    let t = Instant::now();
    build_base(
        &lv,
        &storage,
        &profile,
        &case.images,
        Duration::from_secs(180),
        kvm(),
    )
    .unwrap();
    eprintln!("base build (TCG): {:.1} s", t.elapsed().as_secs_f64());

    // Sealed, trimmed, recorded, current; nothing of the build is left around it.
    let base = storage.base(&profile.name).unwrap().expect("a sealed base");
    let image = base.path.canonicalize().unwrap();
    assert!(fs::metadata(&image).unwrap().permissions().readonly());
    let on_disk = lab::storage::qcow2::allocated_bytes(&image).unwrap();
    assert!(
        on_disk < 8 << 20,
        "the 16 MiB of freed scratch data were trimmed away: {on_disk} bytes left"
    );
    assert!(!domain_exists(&case.installer()));
    let base_file = format!("lab-{}-base", case.name);
    assert_eq!(
        case.leftovers(),
        [
            format!("{base_file}.g1.qcow2"),
            format!("{base_file}.g1.qcow2.build"),
            format!("{base_file}.g1.qcow2.lab"),
            format!("{base_file}.qcow2"),
            format!("{base_file}.qcow2.lab"),
        ]
    );
    let record: BuildRecord =
        serde_json::from_str(&storage.base_record(&profile.name).unwrap().unwrap()).unwrap();
    let ks = kickstart::render(&profile).unwrap();
    assert!(ks.contains("echo hello >/root/lab-greeting"), "{ks}");
    assert!(
        !ks.contains("url --url"),
        "a local tree is named on the command line only:\n{ks}"
    );
    assert_eq!(record.kickstart_sha256, sha256(&ks));
    assert!(record.install_identity.contains("treeinfo-sha256="));
    assert!(!needs_rebuild(&profile, &storage).unwrap());

    // A clone of the base boots and shows what the installer wrote: the kickstart's hash
    // and the .treeinfo it fetched over lab's tree server.
    let clone = storage.clone_base(&profile.name, "node", &[]).unwrap();
    let t = Instant::now();
    let line = boot_check(&case, &clone.path);
    eprintln!(
        "clone boot to its check line (TCG): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        line,
        format!(
            "fake-installer: LAB-CHECK ks={} treeinfo=[general]",
            sha256(&ks)
        )
    );

    // The command line agrees: the base is current, `lab base build` leaves it alone.
    let file = case.profile_file();
    let listed = case.lab_json(&["base", "list", &file]);
    assert_eq!(listed[0]["profile"], profile.name.as_str(), "{listed:#}");
    assert_eq!(listed[0]["status"], "current", "{listed:#}");
    assert_eq!(listed[0]["clones"], 1, "{listed:#}");
    assert_eq!(listed[0]["sealed"], true, "{listed:#}");
    let again = case.lab_json(&["base", "build", &file]);
    assert_eq!(again["built"], false, "{again:#}");
    let (printed, _) = case.lab(&["base", "kickstart", &file], 0);
    assert_eq!(printed, ks);

    // A changed variable changes the kickstart: the base is out of date, and the rebuild
    // goes beside the old base, which the clone keeps.
    let changed = case.tree_profile("", "bonjour");
    let why = kickstart::build::rebuild_reason(&changed, &storage)
        .unwrap()
        .expect("out of date");
    assert_eq!(why, "the rendered kickstart changed");
    let listed = case.lab_json(&["base", "list", &file]);
    assert_eq!(
        listed[0]["status"], "out of date: the rendered kickstart changed",
        "{listed:#}"
    );
    // lab up would build it again, and says why.
    let plan = case.lab_json(&["up", &file, "--dry-run"]);
    let builds: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["op"] == "build" && a["object"] == "base")
        .map(|a| a["why"].as_str().unwrap())
        .collect();
    assert_eq!(builds.len(), 1, "{plan:#}");
    assert!(
        builds[0].starts_with("out of date (the rendered kickstart changed)"),
        "{plan:#}"
    );
    let t = Instant::now();
    let rebuilt = case.lab_json(&["base", "build", &file]);
    eprintln!(
        "rebuild with lab base build (TCG): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(rebuilt["built"], true, "{rebuilt:#}");
    assert_eq!(rebuilt["reason"], "the rendered kickstart changed");
    assert!(!needs_rebuild(&changed, &storage).unwrap());
    assert!(needs_rebuild(&profile, &storage).unwrap());
    let new_image = storage
        .base(&profile.name)
        .unwrap()
        .unwrap()
        .path
        .canonicalize()
        .unwrap();
    assert_ne!(new_image, image);
    assert!(image.exists(), "the clone still uses the old base");
    let info = lab::storage::qcow2::info(&clone.path).unwrap();
    assert_eq!(
        info.full_backing_filename.as_deref(),
        Some(image.to_str().unwrap())
    );
    let listed = case.lab_json(&["base", "list", &file]);
    assert_eq!(listed[0]["old_generations"], 1, "{listed:#}");
    assert_eq!(listed[0]["status"], "current", "{listed:#}");
    let built_at = listed[0]["built_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now - built_at < 3600, "{listed:#}");
    let (table, _) = case.lab(&["base", "list", &file], 0);
    assert!(table.contains("today"), "{table}");
    // Built 45 days ago (as its record says): still current, but due for the rebuild that
    // patches it ("update the base regularly").
    let record_file = PathBuf::from(format!("{}.build", new_image.display()));
    let recorded = fs::read_to_string(&record_file).unwrap();
    let mut aged: serde_json::Value = serde_json::from_str(&recorded).unwrap();
    aged["built_at"] = (built_at - 45 * 86_400).into();
    fs::write(&record_file, aged.to_string()).unwrap();
    let listed = case.lab_json(&["base", "list", &file]);
    assert_eq!(
        listed[0]["status"],
        format!("current, but built 45 days ago: `lab base build {file} --force` patches it"),
        "{listed:#}"
    );
    let plan = case.lab_json(&["up", &file, "--dry-run"]);
    let warned = plan["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("was built 45 days ago"));
    assert!(warned, "{plan:#}");
    fs::write(&record_file, recorded).unwrap();

    // The base is not removed while a clone uses it; once the clone is gone, the old base
    // goes with it, and `lab base rm` leaves nothing.
    let (_, err) = case.lab(&["base", "rm", &file], 1);
    assert!(err.contains("still has clones"), "{err}");
    storage.remove_clone(&profile.name, "node", &[]).unwrap();
    assert!(!image.exists());
    let (out, _) = case.lab(&["base", "rm", &file], 0);
    assert_eq!(out, format!("removed the base of {}\n", profile.name));
    assert!(case.leftovers().is_empty(), "{:?}", case.leftovers());
}

#[test]
fn a_base_is_built_from_an_iso() {
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    virt::error::clear_error_callback();
    let case = Case::new("i");
    // The tree's installer as an ISO 9660 image, attached to the installer as a CD-ROM.
    let iso = case.dir.path().join("lab-test.iso");
    let kernel = fs::read(&case.tree.kernel).unwrap();
    let initrd = fs::read(&case.tree.initrd).unwrap();
    fs::write(
        &iso,
        lab::cloud::iso::image(
            "LABTEST",
            &[
                ("images/pxeboot/vmlinuz", &kernel),
                ("images/pxeboot/initrd.img", &initrd),
                ("readme", b"lab test ISO\n"),
            ],
        )
        .unwrap(),
    )
    .unwrap();
    // lab reads the files back byte for byte.
    let out = case.dir.path().join("extracted");
    kickstart::iso9660::extract(&iso, "images/pxeboot/initrd.img", &out).unwrap();
    assert!(fs::read(&out).unwrap() == initrd);
    kickstart::iso9660::extract(&iso, "/images/pxeboot/vmlinuz", &out).unwrap();
    assert!(fs::read(&out).unwrap() == kernel);
    fs::remove_file(&out).unwrap();
    let lv = Libvirt::open(URI).unwrap();
    let storage = case.storage();
    let profile = case.profile(&iso.display().to_string(), "", "greeting = \"hello\"");
    let ks = kickstart::render(&profile).unwrap();
    assert!(ks.contains("\ncdrom\n"), "{ks}");
    let t = Instant::now();
    build_base(
        &lv,
        &storage,
        &profile,
        &case.images,
        Duration::from_secs(180),
        kvm(),
    )
    .unwrap();
    eprintln!(
        "base build from an ISO (TCG): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let record: BuildRecord =
        serde_json::from_str(&storage.base_record(&profile.name).unwrap().unwrap()).unwrap();
    assert!(
        record
            .install_identity
            .starts_with(&format!("iso {} size=", iso.display())),
        "{record:?}"
    );
    assert_eq!(record.kickstart_sha256, sha256(&ks));
    assert!(!needs_rebuild(&profile, &storage).unwrap());
    // A new ISO at the same path is another install source.
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(&iso, fs::read(&iso).unwrap()).unwrap();
    let why = kickstart::build::rebuild_reason(&profile, &storage)
        .unwrap()
        .unwrap();
    assert!(why.starts_with("the install source changed"), "{why}");
    storage.remove_base(&profile.name).unwrap();
    assert!(case.leftovers().is_empty(), "{:?}", case.leftovers());

    // An ISO without images/pxeboot is no installer ISO.
    let other = case.dir.path().join("other.iso");
    fs::write(
        &other,
        lab::cloud::iso::image("OTHER", &[("readme", b"not an installer\n")]).unwrap(),
    )
    .unwrap();
    let profile = case.profile(&other.display().to_string(), "", "greeting = \"hello\"");
    let err = format!(
        "{:#}",
        build_base(
            &lv,
            &storage,
            &profile,
            &case.images,
            Duration::from_secs(60),
            kvm(),
        )
        .unwrap_err()
    );
    assert!(err.contains("not an installer ISO"), "{err}");
    assert!(case.leftovers().is_empty(), "{:?}", case.leftovers());
}

#[test]
fn an_installer_that_never_powers_off_is_given_up_and_removed() {
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let case = Case::new("h");
    virt::error::clear_error_callback();
    let lv = Libvirt::open(URI).unwrap();
    let storage = case.storage();
    let profile = case.tree_profile("cmdline = \"lab.test=hang\"", "hello");
    let t = Instant::now();
    let err = build_base(
        &lv,
        &storage,
        &profile,
        &case.images,
        Duration::from_secs(30),
        kvm(),
    )
    .unwrap_err();
    let text = format!("{err:#}");
    eprintln!("time-out case: {:.1} s", t.elapsed().as_secs_f64());
    assert!(text.contains("did not power off in time"), "{text}");
    // The console's last lines are shown (on a loaded machine the emulated installer may
    // not have reached its "hanging on purpose" line yet: the kernel's lines are shown).
    let (_, tail) = text
        .split_once("last console lines (")
        .unwrap_or_else(|| panic!("the console tail is not shown: {text}"));
    assert!(
        tail.contains("console.log):\n") && tail.lines().count() >= 2,
        "the console tail is empty: {text}"
    );
    assert!(!domain_exists(&case.installer()));
    assert!(case.leftovers().is_empty(), "{:?}", case.leftovers());
    assert!(storage.base(&profile.name).unwrap().is_none());
}

#[test]
fn an_installer_that_reboots_is_a_failed_build() {
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let case = Case::new("r");
    virt::error::clear_error_callback();
    let lv = Libvirt::open(URI).unwrap();
    let storage = case.storage();
    let profile = case.tree_profile("cmdline = \"lab.test=reboot\"", "hello");
    let err = build_base(
        &lv,
        &storage,
        &profile,
        &case.images,
        Duration::from_secs(120),
        kvm(),
    )
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("rebooted instead of powering off"), "{text}");
    assert!(!domain_exists(&case.installer()));
    assert!(case.leftovers().is_empty(), "{:?}", case.leftovers());
}

/// Build `profile` of `case`, which must fail; the error's text, once nothing of the build
/// is left: no domain, nothing in the image directory.
fn failed_build(case: &Case, profile: &Profile) -> String {
    // A regression could start an installer: one guest at a time all the same.
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    virt::error::clear_error_callback();
    let lv = Libvirt::open(URI).unwrap();
    let err = build_base(
        &lv,
        &case.storage(),
        profile,
        &case.images,
        Duration::from_secs(60),
        kvm(),
    )
    .unwrap_err();
    case.assert_nothing_left(&format!("{err:#}"));
    format!("{err:#}")
}

#[test]
fn a_missing_iso_is_a_clear_error() {
    let case = Case::new("m");
    // Refused when the profile is read...
    let text = format!(
        "name = \"{}\"\n[base]\nkickstart = \"{}\"\ninstall = \"/nonexistent/CentOS.iso\"\n\
         [[vm]]\nname = \"a\"\n",
        case.name,
        case.template().display()
    );
    let err = Profile::parse(&text, ProfileSource::BuiltIn)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("install ISO /nonexistent/CentOS.iso does not exist"),
        "{err}"
    );
    // ... and by the build, when it went away after.
    let iso = case.dir.path().join("gone.iso");
    fs::write(&iso, b"").unwrap();
    let profile = case.profile(&iso.display().to_string(), "", "greeting = \"hi\"");
    fs::remove_file(&iso).unwrap();
    let err = failed_build(&case, &profile);
    assert!(
        err.contains(&format!("install ISO {} does not exist", iso.display())),
        "{err}"
    );
}

#[test]
fn a_tree_without_treeinfo_is_a_clear_error() {
    let case = Case::new("t");
    let empty = case.dir.path().join("empty-tree");
    fs::create_dir(&empty).unwrap();
    let profile = case.profile(
        &format!("file://{}", empty.display()),
        "",
        "greeting = \"hi\"",
    );
    let err = failed_build(&case, &profile);
    assert!(err.contains("is not an install tree"), "{err}");
    assert!(err.contains(".treeinfo does not exist"), "{err}");
}

#[test]
fn a_missing_template_variable_is_a_clear_error() {
    let case = Case::new("v");
    let profile = case.profile(&format!("file://{}", case.tree.root.display()), "", "");
    let err = failed_build(&case, &profile);
    assert!(err.contains("test.ks.j2, line"), "{err}");
    assert!(err.contains("variable `greeting` is not defined"), "{err}");
}

/// Through the binary, as a user meets it, with pykickstart's real ksvalidator (which
/// `scripts/setup-host.sh` installs): the refusal named with ksvalidator's report, and
/// nothing made.
#[test]
fn a_kickstart_that_fails_validation_is_a_clear_error() {
    let case = Case::new("k");
    fs::write(
        case.template(),
        TEMPLATE.replace("rootpw --lock", "rootpw --lock\nfrobnicate --hard"),
    )
    .unwrap();
    case.tree_profile("", "hello");
    assert!(
        lab::host::tools::find_program("ksvalidator").is_some(),
        "ksvalidator is missing on this host: install pykickstart (scripts/setup-host.sh does)"
    );
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let (_, err) = case.lab(&["base", "build", &case.profile_file()], 2);
    assert!(err.contains("fails validation (RHEL9)"), "{err}");
    // ksvalidator's report, with the line it names.
    assert!(err.contains("Unknown command: frobnicate"), "{err}");
    assert!(err.contains("problem occurred on line 4"), "{err}");
    case.assert_nothing_left(&err);
}

/// Whether the installer runs under KVM here: the same verdict `lab up` plans with.
fn kvm() -> bool {
    lab::check::kvm::verdict_cached(&lab::host::Sysroot::live()).usable
}
