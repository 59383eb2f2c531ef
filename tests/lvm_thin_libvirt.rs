//! lab's libvirt storage pool over a volume group (type `logical`, so `virsh vol-list` and
//! virt-manager show lab's volumes): its XML and ownership against libvirt's test driver,
//! then the real libvirtd (started by scripts/setup-host.sh, as in CI) with a VG on a loop
//! device, which needs root. LVM metadata works on this kernel; activation does not (no
//! device-mapper), and libvirt activates the VG when it starts the pool: the test records
//! what libvirt does then and checks that lab leaves nothing half made.
//!
//! The loop device, PV, VG, libvirt pool, and any LVM archive libvirt's own LVM calls write
//! under /etc/lvm for this VG are removed at the end whatever happened.

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

#[test]
fn lab_defines_one_pool_per_volume_group_and_leaves_others_alone() {
    let lv = open("test:///default");
    let pid = std::process::id();

    // lab's own: defined, active, over the VG; a second call finds it.
    let vg = format!("vg_t{pid}a");
    let name = format!("lab-{vg}");
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Defined(name.clone())
    );
    let pools = lv.storage_pools().unwrap();
    let ours = pool(&pools, &name).expect("lab's pool is defined");
    assert_eq!(ours.kind, "logical");
    assert_eq!(ours.source_name.as_deref(), Some(vg.as_str()));
    assert_eq!(
        ours.target_path.as_deref(),
        Some(format!("/dev/{vg}").as_str())
    );
    assert!(ours.active);
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Lab(name.clone())
    );
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
    assert_eq!(pool(&still, &name).map(|p| p.kind.as_str()), Some("dir"));
    foreign.undefine().unwrap();

    // Another logical pool over the VG already shows its volumes: lab defines none.
    let vg = format!("vg_t{pid}c");
    let other = format!("theirs-{vg}");
    let xml = format!(
        "<pool type='logical'><name>{other}</name><source><name>{vg}</name></source>\
         <target><path>/dev/{vg}</path></target></pool>"
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

    // An empty VG: libvirt starts the pool (vgchange activates nothing).
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Defined(name.clone())
    );
    let pools = lv.storage_pools().unwrap();
    let ours = pool(&pools, &name).unwrap();
    assert!(ours.active);
    assert_eq!(ours.source_name.as_deref(), Some(vg.as_str()));
    assert_eq!(lv.storage_volumes(&name).unwrap(), Vec::<String>::new());
    assert_eq!(
        define_libvirt_pool(&lv, &vg).unwrap(),
        LibvirtPool::Lab(name.clone())
    );

    // An LV written into the VG's metadata only (it cannot be activated here).
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
    refresh_libvirt_pool(&lv, &vg).unwrap();
    let listed = lv.storage_volumes(&name).unwrap();
    eprintln!("libvirt lists {listed:?} for a VG with one inactive LV");

    // Starting the pool again makes libvirt run `vgchange -aly`, which needs
    // device-mapper when the VG has LVs: without it the pool cannot start, and lab then
    // leaves no pool defined; with it the pool starts and lists the LV.
    remove_libvirt_pool(&lv, &vg).unwrap();
    assert!(pool(&lv.storage_pools().unwrap(), &name).is_none());
    match define_libvirt_pool(&lv, &vg) {
        Ok(found) => {
            assert_eq!(found, LibvirtPool::Defined(name.clone()));
            assert!(
                lv.storage_volumes(&name)
                    .unwrap()
                    .contains(&"lab-p-base".to_string())
            );
            eprintln!("libvirt started the pool over a VG with an LV (device-mapper present)");
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains(&format!("starting storage pool {name}")), "{e}");
            assert!(e.contains("was not kept"), "{e}");
            assert!(
                pool(&lv.storage_pools().unwrap(), &name).is_none(),
                "a pool that could not start is not left defined"
            );
            eprintln!("libvirt could not start the pool: {e}");
        }
    }
    drop(fixture);
    assert!(
        !lvm(&["vgs", &vg]).capture().unwrap().success(),
        "the test VG is gone"
    );
}
