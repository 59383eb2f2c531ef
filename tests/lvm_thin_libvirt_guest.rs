//! lab's libvirt storage pool (type `logical`, named `lab-VG`) over a volume group with a
//! real thin pool. This kernel has no device-mapper (tests/lvm_thin_libvirt.rs shows libvirt
//! cannot start such a pool here), so the test boots a throwaway TCG guest
//! (tests/support/guest.rs) with libvirtd (QEMU and storage drivers, logical backend) in its
//! initramfs and runs this very test binary inside it: the ignored test `in_guest` makes
//! lab's thin volumes with `LvmThinStorage`, starts libvirtd, connects to `qemu:///system`
//! as lab does, has lab define, refresh and remove its pool, and reports what libvirt shows
//! over the serial console; the host-side test asserts on it.
//!
//! What libvirt 9.0 really shows: the pool starts and is active over the VG, but it lists
//! none of the thin volumes (lab's base and snapshots, or anyone's), only the VG's ordinary
//! LVs. Its logical backend parses `lvs -o ...,devices,...` with a pattern that needs a
//! non-empty `devices` field, and LVM prints none for a thin volume, so those rows are
//! dropped without a word. Stopping the pool (lab's `remove_libvirt_pool`) runs
//! `vgchange -aln VG`: every LV stays, deactivated.
//!
//! It always runs and fails (never skips) when the guest does not boot or a step fails.
//! About 30 s on a 2-core machine. `LAB_GUEST_CONSOLE=1` prints the whole console.

#[path = "support/guest.rs"]
mod guest;

use std::time::{Duration, Instant};

use guest::{DiskFormat, Guest, GuestRun};
use serde_json::Value;

/// Set in the guest only: `in_guest` refuses to run without it (it takes /dev/vda).
const GUEST_ENV: &str = "LAB_THIN_LIBVIRT_GUEST";
/// The connection lab uses by default.
const URI: &str = "qemu:///system";
const VG: &str = "vg_lab";
const POOL: &str = "lab-pool";
const LIBVIRT_POOL: &str = "lab-vg_lab";
const PROFILE: &str = "demo";
const MIB: u64 = 1024 * 1024;
const POOL_SIZE: u64 = 64 * MIB;
const BASE_SIZE: u64 = 32 * MIB;
/// LVs in the VG without lab's tags: a thin volume with a lab-like name, and a plain
/// (linear) LV.
const INTRUDER: &str = "lab-demo-intruder";
const LINEAR: &str = "notes";
const LINEAR_SIZE: u64 = 8 * MIB;

#[test]
fn libvirt_logical_pool_over_a_thin_pool_in_a_tcg_guest() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join("lvm_thin_libvirt_guest");
    lab::runner::Cmd::new("objcopy")
        .arg("--strip-debug")
        .arg(std::env::current_exe().expect("the test binary's path"))
        .arg(&exe)
        .run()
        .expect("objcopy (binutils, installed with gcc)");
    let exe = exe.to_str().expect("a UTF-8 path").to_string();
    let script = format!(
        "export {GUEST_ENV}=1\n{} in_guest --exact --ignored --nocapture --test-threads=1\n",
        lab::runner::quote(&exe)
    );
    let run = Guest::new(script)
        .lvm_thin()
        .libvirtd(&["storage", "qemu"], &["logical"])
        .executables(&[&exe])
        .disk(256 * MIB, DiskFormat::Raw)
        .memory_mib(1024)
        .timeout(Duration::from_secs(300))
        .run();
    run.assert_ok();
    for name in [
        "vg",
        "pool-create",
        "base",
        "clone-web1",
        "clone-web2",
        "by-hand",
        "libvirtd",
        "connect",
        "define",
        "refresh",
        "volumes",
        "virsh-vol-list",
        "define-again",
        "remove",
    ] {
        assert!(run.step(name).ok, "step {name}: {}", run.step(name).detail);
    }
    let before = check_lvs(&run);
    check_pool(&run);
    check_listing(&run);
    check_removal(&run, &before);
    check_libvirt_commands(&run);
    eprintln!(
        "libvirt logical pool in a TCG guest: boot to script {:?}, QEMU {:?}, whole test {:?}, \
         initramfs {} MiB",
        run.boot_to_script,
        run.qemu_time,
        started.elapsed(),
        run.initramfs_bytes / MIB,
    );
}

/// Lab's thin volumes, as `lvs` names them.
const LAB_VOLUMES: [&str; 3] = ["lab-demo-base", "lab-demo-web1", "lab-demo-web2"];

/// The LVs before libvirt saw them: lab's three volumes and the intruder, active thin
/// volumes; the thin pool; the plain LV. Returns each LV's name and tags.
fn check_lvs(run: &GuestRun) -> Vec<(String, Value)> {
    let lvs = run.data_json("lvs-before");
    let rows = lvs.as_array().unwrap();
    let attr = |name: &str| -> String {
        rows.iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["attr"].as_str())
            .unwrap_or_else(|| panic!("no LV {name}: {lvs}"))
            .to_string()
    };
    for name in LAB_VOLUMES.iter().chain([&INTRUDER]) {
        let a = attr(name);
        assert_eq!(&a[0..1], "V", "{name} is a thin volume ({a})");
        assert_eq!(&a[4..5], "a", "{name} is active ({a})");
    }
    assert_eq!(&attr(POOL)[0..1], "t", "{lvs}");
    let linear = attr(LINEAR);
    assert_eq!(&linear[0..1], "-", "{LINEAR} is a plain LV ({linear})");
    assert_eq!(&linear[4..5], "a", "{linear}");

    // The report libvirt parses: a thin volume's `devices` field (the fourth) is empty,
    // an ordinary LV's names its PV extent.
    let report = run.data_json("libvirt-report");
    let fields = |name: &str| -> Vec<String> {
        report["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .map(|l| l.trim().split('#').map(str::to_string).collect::<Vec<_>>())
            .find(|f| f[0] == name)
            .unwrap_or_else(|| panic!("{name} missing from the lvs report: {report}"))
    };
    for name in LAB_VOLUMES.iter().chain([&INTRUDER]) {
        let f = fields(name);
        assert_eq!(
            (f[3].as_str(), f[4].as_str()),
            ("", "thin"),
            "{name}: {f:?}"
        );
    }
    let f = fields(LINEAR);
    assert!(f[3].starts_with("/dev/vda("), "{f:?}");
    assert_eq!(f[4], "linear", "{f:?}");

    rows.iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r["tags"].clone()))
        .collect()
}

/// lab's pool: defined, started, over the VG; found as lab's the second time.
fn check_pool(run: &GuestRun) {
    let libvirtd = run.data_json("libvirtd");
    assert_eq!(libvirtd["driver"], "QEMU", "{libvirtd}");
    let define = run.data_json("define");
    assert_eq!(
        define["result"],
        format!("Defined({LIBVIRT_POOL:?})"),
        "{define}"
    );
    let pools = define["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{define}");
    let pool = &pools[0];
    assert_eq!(pool["name"], LIBVIRT_POOL);
    assert_eq!(pool["kind"], "logical");
    assert_eq!(pool["active"], true, "{pool}");
    assert_eq!(pool["source_name"], VG);
    assert_eq!(pool["target_path"], format!("/dev/{VG}"));
    assert_eq!(
        run.data_json("define-again")["result"],
        format!("Lab({LIBVIRT_POOL:?})")
    );
}

/// What `virsh vol-list lab-VG` shows: the plain LV only, none of the thin volumes.
fn check_listing(run: &GuestRun) {
    let volumes = run.data_json("volumes");
    let names: Vec<&str> = volumes["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for name in LAB_VOLUMES.iter().chain([&INTRUDER]) {
        assert!(
            !names.contains(name),
            "libvirt lists thin volume {name} now ({names:?}): the pool shows lab's volumes \
             after all; update this test and the README"
        );
    }
    assert_eq!(
        names,
        [LINEAR],
        "libvirt lists the VG's ordinary LV, and only it: {volumes}"
    );
    let notes = &volumes["volumes"][0];
    assert_eq!(notes["path"], format!("/dev/{VG}/{LINEAR}"), "{notes}");
    assert_eq!(notes["capacity"], LINEAR_SIZE, "{notes}");

    let virsh = run.data_json("virsh-vol-list");
    let virsh = virsh["stdout"].as_str().unwrap();
    let listed: Vec<&str> = virsh
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, [LINEAR], "virsh vol-list {LIBVIRT_POOL}:\n{virsh}");
    assert!(virsh.contains(&format!("/dev/{VG}/{LINEAR}")), "{virsh}");
}

/// The pool's definition goes; every LV stays, with its tags, but deactivated by libvirt's
/// pool stop. lab leaves the untagged LV alone.
fn check_removal(run: &GuestRun, before: &[(String, Value)]) {
    let refused = run.data_json("remove-intruder");
    let error = refused["error"]
        .as_str()
        .unwrap_or_else(|| panic!("lab removed someone else's LV: {refused}"));
    assert!(
        error.contains("no `lab` tag") && error.contains("left alone"),
        "{error}"
    );
    let after = run.data_json("after-remove");
    assert_eq!(after["pools"], serde_json::json!([]), "{after}");
    let rows = after["lvs"].as_array().unwrap();
    let kept: Vec<(String, Value)> = rows
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r["tags"].clone()))
        .collect();
    assert_eq!(kept, before, "the VG's LVs after the pool was removed");
    for r in rows {
        let a = r["attr"].as_str().unwrap();
        assert_eq!(
            &a[4..5],
            "-",
            "{} deactivated by the pool's stop ({a})",
            r["name"]
        );
    }
}

/// libvirt activated the VG to start the pool and deactivated it to stop it, and never
/// created or removed anything.
fn check_libvirt_commands(run: &GuestRun) {
    let commands = run.data_json("libvirt-commands");
    let commands: Vec<&str> = commands
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let lvm: Vec<&str> = commands
        .iter()
        .copied()
        .filter(|c| c.starts_with("/sbin/"))
        .collect();
    assert!(
        lvm.contains(&format!("/sbin/vgchange -aly {VG}").as_str()),
        "{lvm:#?}"
    );
    assert_eq!(
        lvm.last().copied(),
        Some(format!("/sbin/vgchange -aln {VG}").as_str()),
        "{lvm:#?}"
    );
    assert!(lvm.iter().any(|c| c.starts_with("/sbin/lvs ")), "{lvm:#?}");
    for c in &lvm {
        let program = c.split_whitespace().next().unwrap();
        assert!(
            [
                "/sbin/vgscan",
                "/sbin/pvs",
                "/sbin/vgchange",
                "/sbin/lvs",
                "/sbin/vgs"
            ]
            .contains(&program),
            "libvirt ran {c}"
        );
    }
}

#[test]
#[ignore = "runs inside the TCG guest that libvirt_logical_pool_over_a_thin_pool_in_a_tcg_guest boots"]
fn in_guest() {
    assert!(
        std::env::var_os(GUEST_ENV).is_some(),
        "in_guest runs inside the test guest only: it takes /dev/vda for a volume group"
    );
    in_guest::run();
}

mod in_guest {
    //! The guest side: each step prints `LAB-STEP name ok|fail`, each fact `LAB-DATA name
    //! JSON`; the first failed step ends the run.

    use std::fs;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use lab::libvirt::Libvirt;
    use lab::runner::Cmd;
    use lab::size::ByteSize;
    use lab::storage::Storage;
    use lab::storage::lvm_thin::{
        LvmThinStorage, define_libvirt_pool, refresh_libvirt_pool, remove_libvirt_pool,
    };
    use serde_json::{Value, json};

    use super::guest::LIBVIRTD_LOG;
    use super::*;

    const SOCKET: &str = "/run/libvirt/libvirt-sock";

    fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> T {
        let t = Instant::now();
        let result = f();
        eprintln!("step {name}: {:.2} s", t.elapsed().as_secs_f64());
        match result {
            Ok(v) => {
                println!("LAB-STEP {name} ok");
                v
            }
            Err(e) => {
                let detail = format!("{e:#}").replace('\n', " | ");
                println!("LAB-STEP {name} fail {detail}");
                panic!("step {name} failed: {detail}");
            }
        }
    }

    fn data(name: &str, value: Value) {
        println!("LAB-DATA {name} {value}");
    }

    fn log_tail() -> String {
        let log = fs::read_to_string(LIBVIRTD_LOG).unwrap_or_default();
        guest::tail(&log, 15)
    }

    /// libvirtd in the foreground (the guest powers off under it), up once its socket is.
    fn start_libvirtd() -> Result<Child> {
        let out = fs::File::create("/tmp/libvirtd.out")?;
        let mut child = Command::new("libvirtd")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting libvirtd")?;
        let t = Instant::now();
        while !Path::new(SOCKET).exists() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "libvirtd exited ({status}): {} | log: {}",
                    fs::read_to_string("/tmp/libvirtd.out").unwrap_or_default(),
                    log_tail()
                );
            }
            if t.elapsed() > Duration::from_secs(90) {
                bail!("no {SOCKET} after 90 s; log: {}", log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child)
    }

    /// Every LV of the VG: name, attributes, tags.
    fn lvs(s: &LvmThinStorage) -> Result<Value> {
        let mut rows: Vec<Value> = s
            .rows()?
            .into_iter()
            .map(|r| json!({"name": r.lv_name, "attr": r.lv_attr, "tags": r.lv_tags}))
            .collect();
        rows.sort_by_key(|r| r["name"].as_str().unwrap_or_default().to_string());
        Ok(Value::Array(rows))
    }

    /// What libvirt lists in lab's pool: each volume's name, path and capacity.
    fn volumes(lv: &Libvirt) -> Result<Value> {
        let names = lv.storage_volumes(LIBVIRT_POOL)?;
        let pool = lv
            .connect()
            .lookup_storage_pool_by_name(LIBVIRT_POOL)
            .context("looking up the pool")?;
        let mut details = Vec::new();
        for name in &names {
            let vol = pool
                .lookup_storage_vol_by_name(name)
                .with_context(|| format!("looking up volume {name}"))?;
            let info = vol.info().with_context(|| format!("info of {name}"))?;
            details.push(json!({
                "name": name,
                "path": vol.path().ok(),
                "capacity": info.capacity,
            }));
        }
        Ok(json!({"names": names, "volumes": details}))
    }

    fn virsh(args: &[&str]) -> Result<String> {
        Ok(Cmd::new("virsh")
            .arg("-c")
            .arg(URI)
            .args(args)
            .run()?
            .stdout)
    }

    pub fn run() {
        lab::ui::init(1, false, lab::cli::ColorChoice::Never);
        let s = LvmThinStorage::new(VG, POOL);

        // lab's thin volumes: a pool, a sealed base and two snapshots.
        step("vg", || {
            s.command("pvcreate").args(["-q", "/dev/vda"]).run()?;
            s.command("vgcreate").args(["-q", VG, "/dev/vda"]).run()?;
            Ok(())
        });
        step("pool-create", || s.create_pool(ByteSize(POOL_SIZE)));
        step("base", || {
            s.create_base(PROFILE, ByteSize(BASE_SIZE))?;
            s.seal_base(PROFILE)
        });
        for vm in ["web1", "web2"] {
            step(&format!("clone-{vm}"), || s.clone_base(PROFILE, vm, &[]));
        }
        // Someone else's LVs in the same VG.
        step("by-hand", || {
            s.command("lvcreate")
                .args(["-q", "--type", "thin", "-V", "16m", "--thinpool", POOL])
                .args(["-n", INTRUDER, VG])
                .run()?;
            s.command("lvcreate")
                .args(["-q", "--type", "linear", "-L"])
                .arg(format!("{}m", LINEAR_SIZE / MIB))
                .args(["-n", LINEAR, VG])
                .run()?;
            Ok(())
        });
        data("lvs-before", step("lvs-before", || lvs(&s)));
        // The very report libvirt's logical backend parses (storage_backend_logical.c).
        let report = step("libvirt-report", || {
            Ok(s.command("lvs")
                .args(["--separator", "#", "--noheadings", "--units", "b"])
                .args(["--unbuffered", "--nosuffix", "--options"])
                .arg("lv_name,origin,uuid,devices,segtype,stripes,seg_size,vg_extent_size,size,lv_attr")
                .arg(VG)
                .run()?
                .stdout)
        });
        data("libvirt-report", json!({ "stdout": report }));

        let t = Instant::now();
        let mut daemon = step("libvirtd", start_libvirtd);
        let daemon_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let lv = step("connect", || {
            virt::error::clear_error_callback();
            Libvirt::open(URI).with_context(|| {
                format!(
                    "libvirtd said: {} | log: {}",
                    fs::read_to_string("/tmp/libvirtd.out").unwrap_or_default(),
                    log_tail()
                )
            })
        });
        data(
            "libvirtd",
            json!({"start_s": daemon_s, "connect_s": t.elapsed().as_secs_f64(),
                   "driver": lv.driver().ok(), "versions": lv.versions().ok()}),
        );

        // lab's pool: defined and started, then refreshed, as `lab up` does.
        let defined = step("define", || define_libvirt_pool(&lv, VG));
        step("refresh", || refresh_libvirt_pool(&lv, VG));
        let pools = step("pools", || lv.storage_pools());
        data(
            "define",
            json!({"result": format!("{defined:?}"), "pools": pools}),
        );
        data("volumes", step("volumes", || volumes(&lv)));
        data(
            "virsh-vol-list",
            json!({ "stdout": step("virsh-vol-list", || virsh(&["vol-list", LIBVIRT_POOL])) }),
        );
        let again = step("define-again", || define_libvirt_pool(&lv, VG));
        data("define-again", json!({ "result": format!("{again:?}") }));

        // lab never takes someone else's LV, whatever its name.
        let refused = s
            .remove_clone(PROFILE, "intruder", &[])
            .err()
            .map(|e| format!("{e:#}"));
        data("remove-intruder", json!({"error": refused}));

        // Removing lab's pool removes the definition only: the VG and every LV stay.
        step("remove", || remove_libvirt_pool(&lv, VG));
        let pools = step("pools-after", || lv.storage_pools());
        let after = step("lvs-after", || lvs(&s));
        data("after-remove", json!({"pools": pools, "lvs": after}));
        let commands: Vec<String> = fs::read_to_string(LIBVIRTD_LOG)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("About to run ").map(|(_, c)| c.to_string()))
            .collect();
        data("libvirt-commands", json!(commands));
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
}
