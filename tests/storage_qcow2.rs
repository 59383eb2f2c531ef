//! The qcow2 backend against the real qemu-img: bases, overlays, markers, refusals,
//! compaction that keeps the backing file.

use std::path::{Path, PathBuf};

use lab::mark::VolumeRole;
use lab::size::ByteSize;
use lab::storage::qcow2::{self, Qcow2Storage};
use lab::storage::{InUse, Storage};

fn qemu_io(path: &Path, cmd: &str) {
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-io {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn storage() -> (tempfile::TempDir, Qcow2Storage) {
    let dir = tempfile::tempdir().unwrap();
    let s = Qcow2Storage::new(dir.path().join("images"));
    (dir, s)
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn base_then_three_overlays_each_marked_and_backed_by_the_base() {
    let (_t, s) = storage();
    let base = s.create_base("demo", ByteSize::mib(64)).unwrap();
    qemu_io(&base.path, "write -P 0xab 0 4M");
    s.seal_base("demo").unwrap();
    assert!(
        std::fs::metadata(&base.path)
            .unwrap()
            .permissions()
            .readonly()
    );
    for vm in ["a", "b", "c"] {
        let v = s.clone_base("demo", vm, &[]).unwrap();
        let info = qcow2::info(&v.path).unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 64 << 20);
        assert_eq!(
            info.full_backing_filename.as_deref(),
            Some(base.path.to_str().unwrap())
        );
        assert_eq!(info.backing_filename_format.as_deref(), Some("qcow2"));
        // The overlay holds no data of its own yet.
        assert!(s.usage(&v).unwrap().allocated < 1 << 20);
    }
    assert_eq!(
        files(s.dir()),
        [
            "lab-demo-a.qcow2",
            "lab-demo-a.qcow2.lab",
            "lab-demo-b.qcow2",
            "lab-demo-b.qcow2.lab",
            "lab-demo-base.g1.qcow2",
            "lab-demo-base.g1.qcow2.lab",
            "lab-demo-base.qcow2",
            "lab-demo-base.qcow2.lab",
            "lab-demo-c.qcow2",
            "lab-demo-c.qcow2.lab",
        ]
    );
    // The base's name is a link to the build the clones are backed by.
    assert_eq!(
        std::fs::read_link(s.dir().join("lab-demo-base.qcow2")).unwrap(),
        PathBuf::from("lab-demo-base.g1.qcow2")
    );
    let observed = s.observe().unwrap();
    let roles: Vec<(String, Option<VolumeRole>)> =
        observed.iter().map(|v| (v.name.clone(), v.role)).collect();
    assert_eq!(roles.len(), 5);
    assert_eq!(
        roles[3],
        ("lab-demo-base.qcow2".into(), Some(VolumeRole::Base))
    );
    assert!(observed[3].sealed);
    assert_eq!(roles[0].1, Some(VolumeRole::Clone));
    assert_eq!(observed[0].owner.as_ref().unwrap().vm.as_deref(), Some("a"));
}

#[test]
fn a_base_in_use_by_a_running_domain_is_never_cloned() {
    let (_t, s) = storage();
    let base = s.create_base("demo", ByteSize::mib(16)).unwrap();
    s.seal_base("demo").unwrap();
    let busy = [InUse {
        domain: "installer".into(),
        path: base.path.clone(),
    }];
    let err = s.clone_base("demo", "a", &busy).unwrap_err().to_string();
    assert!(err.contains("in use by running domain installer"), "{err}");
    assert!(!s.dir().join("lab-demo-a.qcow2").exists());
}

#[test]
fn nothing_of_anyone_else_is_touched() {
    let (_t, s) = storage();
    s.create_base("demo", ByteSize::mib(16)).unwrap();
    s.seal_base("demo").unwrap();
    // Someone else's file where a clone would go, without lab's marker.
    let theirs = s.dir().join("lab-demo-a.qcow2");
    std::fs::write(&theirs, b"precious").unwrap();
    let err = s.clone_base("demo", "a", &[]).unwrap_err().to_string();
    assert!(err.contains("not lab's"), "{err}");
    let err = s.remove_clone("demo", "a", &[]).unwrap_err().to_string();
    assert!(err.contains("not lab's: left alone"), "{err}");
    assert_eq!(std::fs::read(&theirs).unwrap(), b"precious");
    // A clone of another profile is not this profile's to remove.
    s.create_base("other", ByteSize::mib(16)).unwrap();
    s.seal_base("other").unwrap();
    s.clone_base("other", "x", &[]).unwrap();
    std::fs::rename(
        s.dir().join("lab-other-x.qcow2"),
        s.dir().join("lab-demo-x.qcow2"),
    )
    .unwrap();
    std::fs::rename(
        s.dir().join("lab-other-x.qcow2.lab"),
        s.dir().join("lab-demo-x.qcow2.lab"),
    )
    .unwrap();
    assert!(s.remove_clone("demo", "x", &[]).is_err());
    assert!(s.dir().join("lab-demo-x.qcow2").exists());
}

#[test]
fn the_base_outlives_its_clones_only() {
    let (_t, s) = storage();
    s.create_base("demo", ByteSize::mib(16)).unwrap();
    s.seal_base("demo").unwrap();
    s.clone_base("demo", "a", &[]).unwrap();
    let err = s.remove_base("demo").unwrap_err().to_string();
    assert!(err.contains("still has clones (lab-demo-a.qcow2)"), "{err}");
    let busy = [InUse {
        domain: "lab-demo-a".into(),
        path: s.dir().join("lab-demo-a.qcow2"),
    }];
    assert!(
        s.remove_clone("demo", "a", &busy)
            .unwrap_err()
            .to_string()
            .contains("lab-demo-a")
    );
    s.remove_clone("demo", "a", &[]).unwrap();
    s.remove_base("demo").unwrap();
    assert!(files(s.dir()).is_empty());
}

#[test]
fn compaction_gives_space_back_and_keeps_the_backing_file() {
    let (_t, s) = storage();
    let base = s.create_base("demo", ByteSize::mib(64)).unwrap();
    qemu_io(&base.path, "write -P 0x11 0 8M");
    s.seal_base("demo").unwrap();
    let v = s.clone_base("demo", "a", &[]).unwrap();
    qemu_io(&v.path, "write -P 0x22 16M 32M");
    let before = s.usage(&v).unwrap().allocated;
    assert!(before >= 32 << 20, "{before}");
    // The guest deletes its data and TRIMs: the overlay's clusters become zero/unallocated.
    qemu_io(&v.path, "discard 16M 32M");
    let running = [InUse {
        domain: "lab-demo-a".into(),
        path: v.path.clone(),
    }];
    assert!(s.compact("demo", "a", &running).is_err());
    let after = s.compact("demo", "a", &[]).unwrap().allocated;
    assert!(
        after < 2 << 20,
        "compacted overlay still holds {after} bytes"
    );
    let info = qcow2::info(&v.path).unwrap();
    assert_eq!(
        info.full_backing_filename.as_deref(),
        Some(base.path.to_str().unwrap())
    );
    // The base's data still shows through.
    qemu_io(&v.path, "read -P 0x11 0 8M");
}

#[test]
fn missing_or_corrupt_bases_are_named() {
    let (_t, s) = storage();
    let err = s.clone_base("demo", "a", &[]).unwrap_err().to_string();
    assert!(err.contains("lab-demo-base.qcow2 is missing"), "{err}");
    let base = s.create_base("demo", ByteSize::mib(16)).unwrap();
    s.seal_base("demo").unwrap();
    // Damage the header (root writes through the read-only bit).
    std::fs::write(&base.path, b"QFI\xfbgarbage").unwrap();
    let err = format!("{:#}", s.clone_base("demo", "a", &[]).unwrap_err());
    assert!(err.contains("is damaged or not a qcow2 image"), "{err}");
    assert!(!s.dir().join("lab-demo-a.qcow2").exists());
}

#[test]
fn a_full_filesystem_is_refused_before_anything_is_made() {
    let mnt = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mounting a small tmpfs (needs root, as CI is)"
    );
    let s = Qcow2Storage::new(mnt.path().join("images"));
    let err = s
        .create_base("demo", ByteSize::gib(1))
        .unwrap_err()
        .to_string();
    let _ = std::process::Command::new("umount")
        .arg(mnt.path())
        .status();
    assert!(err.contains("free"), "{err}");
    assert!(err.contains("headroom"), "{err}");
}

#[test]
fn importing_an_image_converts_a_copy() {
    let (t, s) = storage();
    let src = PathBuf::from(t.path()).join("vendor.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&src)
        .arg("32M")
        .status()
        .unwrap();
    assert!(out.success());
    qemu_io(&src, "write -P 0x5a 0 1M");
    let base = s.import_base("demo", &src).unwrap();
    qemu_io(&base.path, "read -P 0x5a 0 1M");
    assert!(src.exists(), "the source is left as it was");
    s.seal_base("demo").unwrap();
    // Imported again (a newer `latest` image): a new generation, the base once sealed.
    qemu_io(&src, "write -P 0x6b 0 1M");
    s.import_base("demo", &src).unwrap();
    qemu_io(&base.path, "read -P 0x5a 0 1M");
    s.seal_base("demo").unwrap();
    qemu_io(&base.path, "read -P 0x6b 0 1M");
    assert_eq!(
        s.generations("demo").len(),
        1,
        "the unused old one is pruned"
    );
}

/// The base's name removed by hand while a clone of it exists: the next import is a new
/// generation, and the clone keeps reading the base it was made from, never the new one.
#[test]
fn an_imported_base_made_again_leaves_the_old_clones_their_own_base() {
    let (t, s) = storage();
    let make = |name: &str, pattern: u8| {
        let src = PathBuf::from(t.path()).join(name);
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&src)
            .arg("16M")
            .status()
            .unwrap();
        assert!(ok.success());
        qemu_io(&src, &format!("write -P {pattern:#x} 0 1M"));
        src
    };
    let first = make("first.qcow2", 0x11);
    let base = s.import_base("demo", &first).unwrap();
    s.seal_base("demo").unwrap();
    let a = s.clone_base("demo", "a", &[]).unwrap();
    qemu_io(&a.path, "read -P 0x11 0 1M");

    std::fs::remove_file(&base.path).unwrap();
    assert_eq!(s.base("demo").unwrap(), None);
    let second = make("second.qcow2", 0x22);
    s.import_base("demo", &second).unwrap();
    s.seal_base("demo").unwrap();
    let b = s.clone_base("demo", "b", &[]).unwrap();
    qemu_io(&b.path, "read -P 0x22 0 1M");
    // The old clone still reads the old base, which is kept while it is used.
    qemu_io(&a.path, "read -P 0x11 0 1M");
    assert_eq!(s.generations("demo").len(), 2);
    s.remove_clone("demo", "a", &[]).unwrap();
    s.prune_generations("demo", &[]).unwrap();
    assert_eq!(s.generations("demo").len(), 1);
    qemu_io(&b.path, "read -P 0x22 0 1M");
}

#[test]
fn an_unsealed_base_left_by_an_interrupted_build_is_replaced_not_cloned() {
    let (_t, s) = storage();
    let first = s.create_base("demo", ByteSize::mib(16)).unwrap();
    qemu_io(&first.path, "write -P 0x01 0 1M");
    // Interrupted here: never sealed.
    assert_eq!(s.base("demo").unwrap(), None);
    let err = s.clone_base("demo", "a", &[]).unwrap_err().to_string();
    assert!(err.contains("unfinished (not sealed)"), "{err}");
    let again = s.create_base("demo", ByteSize::mib(16)).unwrap();
    assert_eq!(again.path, first.path);
    // A new, empty image: the half-written data is gone.
    qemu_io(&again.path, "read -P 0x00 0 1M");
    s.seal_base("demo").unwrap();
    assert!(s.base("demo").unwrap().is_some());
    s.clone_base("demo", "a", &[]).unwrap();
}

#[test]
fn a_rebuilt_base_leaves_the_old_one_to_its_clones_until_they_go() {
    let (_t, s) = storage();
    let old = s.create_base("demo", ByteSize::mib(16)).unwrap();
    qemu_io(&old.path, "write -P 0x01 0 1M");
    s.record_base(&old, "{\"inputs\":\"one\"}").unwrap();
    s.seal_base("demo").unwrap();
    let a = s.clone_base("demo", "a", &[]).unwrap();

    // A rebuild while clone a exists: made beside the old base, which stays current until
    // the new one is sealed.
    let new = s.create_base("demo", ByteSize::mib(16)).unwrap();
    assert_eq!(new.path, s.dir().join("lab-demo-base.g2.qcow2"));
    assert_eq!(
        s.base_record("demo").unwrap().as_deref(),
        Some("{\"inputs\":\"one\"}")
    );
    // Until then, a clone still gets the old base.
    let early = s.clone_base("demo", "early", &[]).unwrap();
    qemu_io(&early.path, "read -P 0x01 0 1M");
    qemu_io(&new.path, "write -P 0x02 0 1M");
    s.record_base(&new, "{\"inputs\":\"two\"}").unwrap();
    s.seal_base("demo").unwrap();
    assert_eq!(
        s.base_record("demo").unwrap().as_deref(),
        Some("{\"inputs\":\"two\"}")
    );

    // The old clone still reads the old base; a new clone reads the new one.
    qemu_io(&a.path, "read -P 0x01 0 1M");
    let b = s.clone_base("demo", "b", &[]).unwrap();
    qemu_io(&b.path, "read -P 0x02 0 1M");
    assert!(
        old.path.exists(),
        "the old base stays while clone a uses it"
    );

    // Resetting a (remove, clone again) lets the old base go.
    let running_a = [InUse {
        domain: "lab-demo-a".into(),
        path: a.path.clone(),
    }];
    assert!(s.remove_clone("demo", "a", &running_a).is_err());
    assert!(old.path.exists());
    s.remove_clone("demo", "a", &[]).unwrap();
    assert!(old.path.exists(), "clone early still uses the old base");
    s.remove_clone("demo", "early", &[]).unwrap();
    assert!(!old.path.exists(), "no clone uses the old base any more");
    assert!(!s.dir().join("lab-demo-base.g1.qcow2.lab").exists());
    assert!(!s.dir().join("lab-demo-base.g1.qcow2.build").exists());
    let a = s.clone_base("demo", "a", &[]).unwrap();
    qemu_io(&a.path, "read -P 0x02 0 1M");

    // A failed rebuild is discarded and the current base is untouched.
    s.create_base("demo", ByteSize::mib(16)).unwrap();
    assert!(s.dir().join("lab-demo-base.g3.qcow2").exists());
    s.discard_unfinished_base("demo").unwrap();
    assert!(!s.dir().join("lab-demo-base.g3.qcow2").exists());
    assert!(!s.dir().join("lab-demo-base.g3.qcow2.lab").exists());
    assert!(s.base("demo").unwrap().is_some());
    qemu_io(&a.path, "read -P 0x02 0 1M");

    // Removing everything leaves nothing.
    s.remove_clone("demo", "a", &[]).unwrap();
    s.remove_clone("demo", "b", &[]).unwrap();
    s.remove_base("demo").unwrap();
    assert!(files(s.dir()).is_empty(), "{:?}", files(s.dir()));
}

#[test]
fn a_first_build_that_fails_leaves_nothing() {
    let (_t, s) = storage();
    s.create_base("demo", ByteSize::mib(16)).unwrap();
    assert_eq!(s.base("demo").unwrap(), None);
    s.discard_unfinished_base("demo").unwrap();
    assert!(files(s.dir()).is_empty(), "{:?}", files(s.dir()));
}

/// A VM disk larger than its base (a small cloud image in a 20 GiB VM) is the clone grown
/// at creation, its base's data still read through; a smaller one is refused and leaves no
/// clone behind.
#[test]
fn a_clone_takes_the_vm_disk_size_and_never_less_than_its_base() {
    let (_t, s) = storage();
    let base = s.create_base("demo", ByteSize::mib(64)).unwrap();
    qemu_io(&base.path, "write -P 0xcd 0 1M");
    s.seal_base("demo").unwrap();
    let big = s
        .clone_base_sized("demo", "big", Some(ByteSize::mib(256)), &[])
        .unwrap();
    let info = qcow2::info(&big.path).unwrap();
    assert_eq!(info.virtual_size, 256 << 20);
    assert_eq!(
        info.full_backing_filename.as_deref(),
        Some(base.path.to_str().unwrap())
    );
    qemu_io(&big.path, "read -P 0xcd 0 1M");
    qemu_io(&big.path, "write -P 0x11 200M 1M");
    let same = s
        .clone_base_sized("demo", "same", Some(ByteSize::mib(64)), &[])
        .unwrap();
    assert_eq!(qcow2::info(&same.path).unwrap().virtual_size, 64 << 20);
    let err = format!(
        "{:#}",
        s.clone_base_sized("demo", "small", Some(ByteSize::mib(32)), &[])
            .unwrap_err()
    );
    assert!(
        err.contains("small: a disk of 32MiB is smaller than its base"),
        "{err}"
    );
    assert!(
        !files(s.dir()).iter().any(|f| f.contains("small")),
        "{:?}",
        files(s.dir())
    );
}
