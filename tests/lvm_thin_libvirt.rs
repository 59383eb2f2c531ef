//! lab's libvirt storage pool for a volume group (type `dir` over `/dev/VG`, so `virsh
//! vol-list` and virt-manager show lab's volumes): its XML and ownership against libvirt's
//! test driver, including an older lab's `logical` pool of the same name, then the real
//! libvirtd (started by scripts/setup-host.sh, as in CI) with a VG on a loop device, which
//! needs root. LVM metadata works on this kernel; activation does not (no device-mapper), so
//! `/dev/VG` never appears here: lab's pool cannot start, and the test checks that lab says so
//! and leaves nothing half made. tests/lvm_thin_libvirt_guest.rs shows the pool with active
//! thin volumes in a guest that has device-mapper.
//!
//! The loop device, PV, VG, libvirt pool, and any LVM archive written under /etc/lvm for
//! this VG are removed at the end whatever happened.

use std::path::{Path, PathBuf};

use lab::libvirt::Libvirt;
use lab::runner::Cmd;
use lab::size::ByteSize;
use lab::storage::Storage;
use lab::storage::lvm_thin::{
    LibvirtPool, LvmConfig, LvmThinStorage, define_libvirt_pool, refresh_libvirt_pool,
    remove_libvirt_pool,
};

/// No backups or archives: LVM would otherwise write them into the host's /etc/lvm.
const LVM_CONFIG: &str = "backup { backup = 0 archive = 0 }";

fn open(uri: &str) -> Libvirt {
    virt::error::clear_error_callback();
    Libvirt::open(uri).unwrap_or_else(|e| panic!("{e:#}"))
}

fn pool<'a>(
    pools: &'a [lab::libvirt::StoragePoolInfo],
    name: &str,
) -> Option<&'a lab::libvirt::StoragePoolInfo> {
    pools.iter().find(|p| p.name == name)
}

/// An older lab's pool: `logical`, over the VG, autostart.
fn older_lab_pool(lv: &Libvirt, vg: &str, start: bool) -> virt::storage_pool::StoragePool {
    let xml = format!(
        "<pool type='logical'><name>lab-{vg}</name><source><name>{vg}</name>\
         <format type='lvm2'/></source><target><path>/dev/{vg}</path></target></pool>"
    );
    let pool = lv.connect().define_storage_pool_xml(&xml, 0).unwrap();
    if start {
        pool.create(0).unwrap();
    }
    pool.set_autostart(true).unwrap();
    pool
}

#[test]
fn lab_defines_one_pool_per_volume_group_and_leaves_others_alone() {
    let lv = open("test:///default");
    let pid = std::process::id();

    // lab's own: a dir pool over /dev/VG, active, not autostart; a second call finds it.
    let vg = format!("vg_t{pid}a");
    let name = format!("lab-{vg}");
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Defined(name.clone())
    );
    let pools = lv.storage_pools().unwrap();
    let ours = pool(&pools, &name).expect("lab's pool is defined");
    assert_eq!(ours.kind, "dir");
    assert_eq!(ours.source_name, None);
    assert_eq!(
        ours.target_path.as_deref(),
        Some(format!("/dev/{vg}").as_str())
    );
    assert!(ours.active);
    assert!(
        !ours.autostart,
        "lab's pool is started by lab up, not libvirtd"
    );
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Lab(name.clone())
    );
    // Inactive (after a reboot): started again.
    lv.connect()
        .lookup_storage_pool_by_name(&name)
        .unwrap()
        .destroy()
        .unwrap();
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Lab(name.clone())
    );
    assert!(pool(&lv.storage_pools().unwrap(), &name).unwrap().active);
    refresh_libvirt_pool(&lv, &vg).unwrap();
    remove_libvirt_pool(&lv, &vg).unwrap();
    assert!(pool(&lv.storage_pools().unwrap(), &name).is_none());

    // Someone else's pool carrying lab's name for another VG: an error, and it stays.
    let vg = format!("vg_t{pid}b");
    let name = format!("lab-{vg}");
    let theirs = format!(
        "<pool type='dir'><name>{name}</name><target><path>/var/tmp/x{pid}</path></target></pool>"
    );
    let foreign = lv.connect().define_storage_pool_xml(&theirs, 0).unwrap();
    let err = format!("{:#}", define_libvirt_pool(&lv, &vg).unwrap_err());
    assert!(err.contains(&name), "{err}");
    assert!(err.contains("is not lab's pool of volume group"), "{err}");
    assert!(err.contains("left alone"), "{err}");
    remove_libvirt_pool(&lv, &vg).unwrap();
    let still = lv.storage_pools().unwrap();
    let p = pool(&still, &name).unwrap();
    assert_eq!(
        (p.kind.as_str(), p.target_path.clone()),
        ("dir", Some(format!("/var/tmp/x{pid}")))
    );
    foreign.undefine().unwrap();

    // Someone else's dir pool over /dev/VG already shows the volumes: lab defines none.
    let vg = format!("vg_t{pid}c");
    let other = format!("theirs-{vg}");
    let xml = format!(
        "<pool type='dir'><name>{other}</name><target><path>/dev/{vg}</path></target></pool>"
    );
    let foreign = lv.connect().define_storage_pool_xml(&xml, 0).unwrap();
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Other(other.clone())
    );
    remove_libvirt_pool(&lv, &vg).unwrap();
    let pools = lv.storage_pools().unwrap();
    assert!(pool(&pools, &format!("lab-{vg}")).is_none());
    assert!(pool(&pools, &other).is_some(), "their pool stays");
    foreign.undefine().unwrap();

    // Someone else's logical pool over the VG lists no thin volume: lab's dir pool goes
    // beside it, and theirs is left as it was.
    let vg = format!("vg_t{pid}d");
    let name = format!("lab-{vg}");
    let other = format!("theirs-{vg}");
    let xml = format!(
        "<pool type='logical'><name>{other}</name><source><name>{vg}</name></source>\
         <target><path>/dev/{vg}</path></target></pool>"
    );
    let foreign = lv.connect().define_storage_pool_xml(&xml, 0).unwrap();
    foreign.create(0).unwrap();
    foreign.set_autostart(true).unwrap();
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Defined(name.clone())
    );
    remove_libvirt_pool(&lv, &vg).unwrap();
    let pools = lv.storage_pools().unwrap();
    assert!(pool(&pools, &name).is_none());
    let theirs = pool(&pools, &other).expect("their pool stays");
    assert_eq!(
        (theirs.kind.as_str(), theirs.active, theirs.autostart),
        ("logical", true, true)
    );
    foreign.destroy().unwrap();
    foreign.undefine().unwrap();

    // An older lab's logical pool, inactive: undefined (nothing runs) and replaced.
    let vg = format!("vg_t{pid}e");
    let name = format!("lab-{vg}");
    older_lab_pool(&lv, &vg, false);
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Replaced(name.clone())
    );
    let pools = lv.storage_pools().unwrap();
    let ours = pool(&pools, &name).unwrap();
    assert_eq!((ours.kind.as_str(), ours.active), ("dir", true));
    assert!(!ours.autostart);
    remove_libvirt_pool(&lv, &vg).unwrap();
    assert!(pool(&lv.storage_pools().unwrap(), &name).is_none());

    // An older lab's logical pool, active: never stopped (that would deactivate the VG);
    // autostart off, an error that says why; remove refuses too.
    let vg = format!("vg_t{pid}f");
    let name = format!("lab-{vg}");
    let old = older_lab_pool(&lv, &vg, true);
    let err = format!("{:#}", define_libvirt_pool(&lv, &vg).unwrap_err());
    assert!(err.contains(&format!("vgchange -aln {vg}")), "{err}");
    assert!(err.contains("left as it is"), "{err}");
    assert!(err.contains("after the next reboot"), "{err}");
    let err = format!("{:#}", remove_libvirt_pool(&lv, &vg).unwrap_err());
    assert!(err.contains("not removed"), "{err}");
    let pools = lv.storage_pools().unwrap();
    let p = pool(&pools, &name).unwrap();
    assert_eq!(
        (p.kind.as_str(), p.active, p.autostart),
        ("logical", true, false)
    );
    // Once inactive (the next boot), lab's next call replaces it, and remove undefines an
    // inactive one.
    old.destroy().unwrap();
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Replaced(name.clone())
    );
    remove_libvirt_pool(&lv, &vg).unwrap();
    older_lab_pool(&lv, &vg, false);
    remove_libvirt_pool(&lv, &vg).unwrap();
    assert!(pool(&lv.storage_pools().unwrap(), &name).is_none());
}

/// A VG on a loop device, removed (with what libvirt's LVM calls left in /etc/lvm) on drop.
struct LoopVg {
    vg: String,
    dev: String,
    _file: tempfile::NamedTempFile,
    /// /etc/lvm/{archive,backup} as they were: made by this test only if absent before.
    lvm_dirs: Vec<(PathBuf, bool)>,
}

fn lvm(args: &[&str]) -> Cmd {
    Cmd::new("lvm")
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .arg(args[0])
        .args(["--config", LVM_CONFIG])
        .args(&args[1..])
}

impl LoopVg {
    fn new(vg: &str) -> LoopVg {
        let lvm_dirs = ["/etc/lvm/archive", "/etc/lvm/backup"]
            .iter()
            .map(|d| (PathBuf::from(d), Path::new(d).exists()))
            .collect();
        let file = tempfile::Builder::new()
            .prefix("lab-test-pv-")
            .tempfile_in("/var/tmp")
            .unwrap();
        file.as_file().set_len(64 << 20).unwrap();
        let dev = Cmd::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .run()
            .expect("losetup (this test needs root)")
            .stdout
            .trim()
            .to_string();
        let guard = LoopVg {
            vg: vg.to_string(),
            dev,
            _file: file,
            lvm_dirs,
        };
        lvm(&["pvcreate", "-q", &guard.dev]).run().unwrap();
        lvm(&["vgcreate", "-q", vg, &guard.dev]).run().unwrap();
        guard
    }
}

impl Drop for LoopVg {
    fn drop(&mut self) {
        if let Ok(lv) = Libvirt::open("qemu:///system") {
            let _ = remove_libvirt_pool(&lv, &self.vg);
        }
        let vg = self.vg.as_str();
        let _ = lvm(&["vgremove", "--driverloaded", "n", "-q", "-ff", "-y", vg]).run();
        let _ = lvm(&["pvremove", "-q", "-y", &self.dev]).run();
        let _ = Cmd::new("losetup").args(["-d", &self.dev]).run();
        for (dir, existed) in &self.lvm_dirs {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name == vg || name.starts_with(&format!("{vg}_")) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            if !existed {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

#[test]
fn real_libvirtd_pool_over_a_loop_device_volume_group() {
    let lv = open("qemu:///system");
    let vg = format!("vg_labt{}", std::process::id());
    let name = format!("lab-{vg}");
    let fixture = LoopVg::new(&vg);
    let storage = LvmThinStorage::new(&vg, "lab-pool").with_config(LvmConfig {
        config: Some(LVM_CONFIG.into()),
        system_dir: None,
    });

    // The backend on a real VG without a pool: nothing to observe, clear refusals, and
    // nothing made.
    assert_eq!(storage.observe().unwrap(), []);
    assert_eq!(storage.base("p").unwrap(), None);
    let err = format!("{:#}", storage.clone_base("p", "vm", &[]).unwrap_err());
    assert!(
        err.contains(&format!("thin pool {vg}/lab-pool does not exist")),
        "{err}"
    );
    let err = format!(
        "{:#}",
        LvmThinStorage::new(format!("{vg}x"), "lab-pool")
            .with_config(LvmConfig {
                config: Some(LVM_CONFIG.into()),
                system_dir: None,
            })
            .create_pool(ByteSize::mib(16))
            .unwrap_err()
    );
    assert!(
        err.contains(&format!("volume group {vg}x does not exist")),
        "{err}"
    );
    assert!(storage.rows().unwrap().is_empty());

    // No device-mapper here, so no LV of the VG is ever active and /dev/VG does not exist:
    // libvirt cannot start lab's dir pool. lab says so and keeps no pool.
    let dir = PathBuf::from(format!("/dev/{vg}"));
    assert!(
        !dir.exists(),
        "{} exists without device-mapper",
        dir.display()
    );
    let e = format!("{:#}", define_libvirt_pool(&lv, &vg).unwrap_err());
    assert!(e.contains(&format!("starting storage pool {name}")), "{e}");
    assert!(e.contains(&format!("/dev/{vg}")), "{e}");
    assert!(e.contains("no LV of volume group"), "{e}");
    assert!(e.contains("was not kept"), "{e}");
    assert!(
        pool(&lv.storage_pools().unwrap(), &name).is_none(),
        "a pool that could not start is not left defined"
    );
    assert!(!dir.exists(), "libvirt made {}", dir.display());
    eprintln!("libvirt could not start the pool: {e}");

    // lab's pool already defined (by an earlier `lab up`) and inactive: the start fails
    // with the same reason, and lab's whole definition stays for the next `lab up`.
    let xml = lab::libvirt::xml::to_xml(&lab::libvirt::xml::dir_pool_for(&vg));
    let defined = lv.connect().define_storage_pool_xml(&xml, 0).unwrap();
    let e = format!("{:#}", define_libvirt_pool(&lv, &vg).unwrap_err());
    assert!(e.contains(&format!("starting storage pool {name}")), "{e}");
    assert!(e.contains("no LV of volume group"), "{e}");
    let pools = lv.storage_pools().unwrap();
    let ours = pool(&pools, &name).unwrap();
    assert_eq!((ours.kind.as_str(), ours.active), ("dir", false));
    refresh_libvirt_pool(&lv, &vg).unwrap();
    remove_libvirt_pool(&lv, &vg).unwrap();
    assert!(pool(&lv.storage_pools().unwrap(), &name).is_none());
    drop(defined);

    // The backend still reads the VG: an LV written into its metadata only.
    lvm(&[
        "lvcreate",
        "-q",
        "--driverloaded",
        "n",
        "--activate",
        "n",
        "--zero",
        "n",
    ])
    .args(["--size", "8m", "--name", "lab-p-base", &vg])
    .run()
    .unwrap();
    let rows = storage.rows().unwrap();
    assert_eq!(
        rows.iter().map(|r| r.lv_name.as_str()).collect::<Vec<_>>(),
        ["lab-p-base"]
    );
    assert!(!dir.exists());
    drop(fixture);
    assert!(
        !lvm(&["vgs", &vg]).capture().unwrap().success(),
        "the test VG is gone"
    );
}
