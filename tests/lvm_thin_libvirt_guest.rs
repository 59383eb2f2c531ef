//! lab's libvirt storage pool (type `dir` over `/dev/VG`, named `lab-VG`) for a volume group
//! with a real thin pool. This kernel has no device-mapper (tests/lvm_thin_libvirt.rs shows
//! `/dev/VG` never appears here), so the test boots a throwaway TCG guest
//! (tests/support/guest.rs) with libvirtd (QEMU and storage drivers, `fs` and `logical`
//! backends) in its initramfs and runs this very test binary inside it: the ignored test
//! `in_guest` makes lab's thin volumes with `LvmThinStorage`, starts libvirtd, connects to
//! `qemu:///system` as lab does, has lab define, refresh and remove its pool, and reports what
//! libvirt shows over the serial console; the host-side test asserts on it.
//!
//! What libvirt 9.0 shows with the dir pool: every entry of `/dev/VG`, that is every active
//! LV of the VG (lab's base and snapshots, someone else's thin volume, a plain LV), each at
//! `/dev/VG/NAME` with the LV's size as capacity (and as allocation: libvirt seeks to the end
//! of a block device and sees no thin use). An LV deactivated with `lvchange -an` leaves
//! `/dev/VG` and the list at the next refresh. libvirtd runs no command at all for the dir
//! pool's start, refresh and stop, and lab's removal leaves every LV active.
//!
//! What lab defined before, a `logical` pool over the VG, measured here too: libvirt 9.0's
//! logical backend lists none of the thin volumes, only the plain LV. It parses
//! `lvs -o ...,devices,...` with a pattern that needs a non-empty `devices` field, and LVM
//! prints none for a thin volume (the test still checks that report). Starting such a pool
//! runs `vgchange -aly VG` and stopping it `vgchange -aln VG`, which deactivated every LV.
//! So lab leaves an active older pool of its name as it is (the end of the guest run checks
//! that lab's define turns its autostart off and runs no LVM command).
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
const INTRUDER_SIZE: u64 = 16 * MIB;
/// The clone deactivated, then activated again, between two refreshes.
const DEACTIVATED: &str = "lab-demo-web2";
/// The LVM commands libvirt's logical backend runs (by these paths).
const LVM_PROGRAMS: [&str; 7] = [
    "/sbin/vgscan",
    "/sbin/pvs",
    "/sbin/vgchange",
    "/sbin/lvs",
    "/sbin/vgs",
    "/sbin/lvchange",
    "/sbin/lvm",
];

#[test]
fn libvirt_dir_pool_over_a_thin_pool_in_a_tcg_guest() {
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
        .libvirtd(&["storage", "qemu"], &["fs", "logical"])
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
        "deactivate",
        "volumes-deactivated",
        "activate",
        "volumes-activated",
        "remove",
        "older-pool",
        "older-pool-define",
    ] {
        assert!(run.step(name).ok, "step {name}: {}", run.step(name).detail);
    }
    let before = check_lvs(&run);
    check_pool(&run);
    let listed = check_listing(&run, &before);
    check_deactivation(&run, &listed);
    check_removal(&run, &before);
    check_dir_pool_commands(&run);
    check_older_pool(&run, &before);
    eprintln!(
        "libvirt dir pool in a TCG guest: boot to script {:?}, QEMU {:?}, whole test {:?}, \
         initramfs {} MiB",
        run.boot_to_script,
        run.qemu_time,
        started.elapsed(),
        run.initramfs_bytes / MIB,
    );
}

/// Lab's thin volumes, as `lvs` names them.
const LAB_VOLUMES: [&str; 3] = ["lab-demo-base", "lab-demo-web1", "lab-demo-web2"];

/// One LV as `lvs` reported it in the guest.
#[derive(Debug, Clone, PartialEq)]
struct Lv {
    name: String,
    attr: String,
    tags: Value,
    size: u64,
}

fn lv_rows(value: &Value) -> Vec<Lv> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list of LVs: {value}"))
        .iter()
        .map(|r| Lv {
            name: r["name"].as_str().unwrap().to_string(),
            attr: r["attr"].as_str().unwrap().to_string(),
            tags: r["tags"].clone(),
            size: r["size"].as_u64().unwrap(),
        })
        .collect()
}

fn active(lv: &Lv) -> bool {
    &lv.attr[4..5] == "a"
}

/// The LVs before libvirt saw them: lab's three volumes and the intruder, active thin
/// volumes; the thin pool; the plain LV. The report the logical backend parses has an empty
/// `devices` field for every thin volume, which is why a logical pool lists none of them.
fn check_lvs(run: &GuestRun) -> Vec<Lv> {
    let rows = lv_rows(&run.data_json("lvs-before"));
    let lv = |name: &str| -> &Lv {
        rows.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no LV {name}: {rows:?}"))
    };
    for name in LAB_VOLUMES.iter().chain([&INTRUDER]) {
        let a = &lv(name).attr;
        assert_eq!(&a[0..1], "V", "{name} is a thin volume ({a})");
        assert!(active(lv(name)), "{name} is active ({a})");
    }
    for name in LAB_VOLUMES {
        assert_eq!(lv(name).size, BASE_SIZE, "{name}");
    }
    assert_eq!(lv(INTRUDER).size, INTRUDER_SIZE);
    assert_eq!(&lv(POOL).attr[0..1], "t", "{rows:?}");
    let linear = lv(LINEAR);
    assert_eq!(
        &linear.attr[0..1],
        "-",
        "{LINEAR} is a plain LV ({linear:?})"
    );
    assert!(active(linear), "{linear:?}");
    assert_eq!(linear.size, LINEAR_SIZE);

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
    rows
}

/// lab's pool: defined, started, a dir pool over /dev/VG, not autostart; found as lab's the
/// second time.
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
    assert_eq!(pool["kind"], "dir");
    assert_eq!(pool["active"], true, "{pool}");
    assert_eq!(pool["autostart"], false, "{pool}");
    assert_eq!(pool["source_name"], Value::Null);
    assert_eq!(pool["target_path"], format!("/dev/{VG}"));
    assert_eq!(
        run.data_json("define-again")["result"],
        format!("Lab({LIBVIRT_POOL:?})")
    );
}

fn names(volumes: &Value) -> Vec<String> {
    volumes["names"]
        .as_array()
        .unwrap_or_else(|| panic!("no names: {volumes}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// What `virsh vol-list lab-VG` shows: what /dev/VG holds, that is every active LV of the
/// VG (lab's, the intruder, the plain LV), each at /dev/VG/NAME with its LV size. Returns the
/// names.
fn check_listing(run: &GuestRun, lvs: &[Lv]) -> Vec<String> {
    let volumes = run.data_json("volumes");
    let listed = names(&volumes);
    let dev = volumes["dev_entries"].clone();
    assert_eq!(
        serde_json::json!(listed),
        dev,
        "libvirt lists exactly the entries of /dev/{VG}: {volumes}"
    );
    let mut expected: Vec<&str> = LAB_VOLUMES.to_vec();
    expected.extend([INTRUDER, LINEAR]);
    expected.sort();
    assert_eq!(listed, expected, "{volumes}");
    let active_lvs: Vec<&str> = {
        let mut v: Vec<&str> = lvs
            .iter()
            .filter(|l| active(l) && l.name != POOL)
            .map(|l| l.name.as_str())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed, active_lvs, "the active LVs but the thin pool");
    for vol in volumes["volumes"].as_array().unwrap() {
        let name = vol["name"].as_str().unwrap();
        let lv = lvs.iter().find(|l| l.name == name).unwrap();
        assert_eq!(vol["path"], format!("/dev/{VG}/{name}"), "{vol}");
        assert_eq!(
            vol["capacity"], lv.size,
            "{name}: capacity is the LV's size: {vol}"
        );
        assert_eq!(
            vol["allocation"], lv.size,
            "{name}: allocation of a block device is its size: {vol}"
        );
    }

    let virsh = run.data_json("virsh-vol-list");
    let virsh = virsh["stdout"].as_str().unwrap();
    let virsh_names: Vec<&str> = virsh
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        virsh_names, listed,
        "virsh vol-list {LIBVIRT_POOL}:\n{virsh}"
    );
    for name in &listed {
        assert!(virsh.contains(&format!("/dev/{VG}/{name}")), "{virsh}");
    }
    listed
}

/// An LV deactivated leaves /dev/VG and the list at the next refresh; activated again, it
/// is back.
fn check_deactivation(run: &GuestRun, listed: &[String]) {
    let off = run.data_json("volumes-deactivated");
    let without: Vec<String> = listed
        .iter()
        .filter(|n| *n != DEACTIVATED)
        .cloned()
        .collect();
    assert_eq!(names(&off), without, "{off}");
    assert_eq!(off["dev_entries"], serde_json::json!(without), "{off}");
    let lvs = lv_rows(&off["lvs"]);
    let web2 = lvs.iter().find(|l| l.name == DEACTIVATED).unwrap();
    assert!(!active(web2), "{web2:?}");
    let on = run.data_json("volumes-activated");
    assert_eq!(names(&on), listed, "{on}");
}

/// The pool's definition goes; every LV stays, with its tags, still active. lab leaves the
/// untagged LV alone.
fn check_removal(run: &GuestRun, before: &[Lv]) {
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
    let rows = lv_rows(&after["lvs"]);
    assert_eq!(rows, before, "the VG's LVs after the pool was removed");
    assert!(rows.iter().all(active), "{rows:?}");
}

fn lvm_commands(commands: &Value) -> Vec<String> {
    commands
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {commands}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .filter(|c| {
            let program = c.split_whitespace().next().unwrap_or_default();
            LVM_PROGRAMS.contains(&program) || program.ends_with("/lvm")
        })
        .collect()
}

/// libvirtd ran no LVM command (in fact no command at all) for the dir pool's definition,
/// start, refreshes and removal.
fn check_dir_pool_commands(run: &GuestRun) {
    let commands = run.data_json("dir-pool-commands");
    assert_eq!(lvm_commands(&commands), Vec::<String>::new(), "{commands}");
    assert_eq!(commands, serde_json::json!([]), "libvirtd ran commands");
    // The log does record commands: the older pool's start below ran vgchange.
    let older = run.data_json("older-pool-start-commands");
    let lvm = lvm_commands(&older);
    assert!(
        lvm.contains(&format!("/sbin/vgchange -aly {VG}")),
        "starting a logical pool activates the VG: {lvm:#?}"
    );
}

/// An active logical pool of lab's name (what older lab defined): lab's define leaves it
/// active, turns its autostart off, says why, and runs nothing; every LV stays active.
fn check_older_pool(run: &GuestRun, before: &[Lv]) {
    let older = run.data_json("older-pool-define");
    let error = older["error"]
        .as_str()
        .unwrap_or_else(|| panic!("lab took over an active logical pool: {older}"));
    assert!(error.contains(&format!("vgchange -aln {VG}")), "{error}");
    let pools = older["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{older}");
    let pool = &pools[0];
    assert_eq!(
        (
            &pool["name"],
            &pool["kind"],
            &pool["active"],
            &pool["autostart"]
        ),
        (
            &Value::from(LIBVIRT_POOL),
            &Value::from("logical"),
            &Value::from(true),
            &Value::from(false)
        ),
        "{pool}"
    );
    let rows = lv_rows(&older["lvs"]);
    assert_eq!(
        rows.iter().map(|l| &l.name).collect::<Vec<_>>(),
        before.iter().map(|l| &l.name).collect::<Vec<_>>()
    );
    assert!(rows.iter().all(active), "{rows:?}");
    let commands = run.data_json("older-pool-lab-commands");
    assert_eq!(
        commands,
        serde_json::json!([]),
        "lab's define ran {commands}"
    );
}

#[test]
#[ignore = "runs inside the TCG guest that libvirt_dir_pool_over_a_thin_pool_in_a_tcg_guest boots"]
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

    /// The commands libvirtd logged since the last call.
    struct CommandLog {
        seen: usize,
    }

    impl CommandLog {
        fn since_last(&mut self) -> Vec<String> {
            let all: Vec<String> = fs::read_to_string(LIBVIRTD_LOG)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_once("About to run ").map(|(_, c)| c.to_string()))
                .collect();
            let new = all[self.seen.min(all.len())..].to_vec();
            self.seen = all.len();
            new
        }
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

    /// Every LV of the VG: name, attributes, tags, size.
    fn lvs(s: &LvmThinStorage) -> Result<Value> {
        let mut rows: Vec<Value> = s
            .rows()?
            .into_iter()
            .map(|r| {
                json!({"name": r.lv_name, "attr": r.lv_attr, "tags": r.lv_tags,
                       "size": r.lv_size})
            })
            .collect();
        rows.sort_by_key(|r| r["name"].as_str().unwrap_or_default().to_string());
        Ok(Value::Array(rows))
    }

    /// The entries of /dev/VG, sorted (none when it does not exist).
    fn dev_entries() -> Result<Vec<String>> {
        let dir = format!("/dev/{VG}");
        if !Path::new(&dir).exists() {
            return Ok(Vec::new());
        }
        let mut names: Vec<String> = fs::read_dir(&dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        names.sort();
        Ok(names)
    }

    /// What libvirt lists in lab's pool (each volume's name, path, type, capacity and
    /// allocation) next to what /dev/VG holds.
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
                "kind": info.kind,
                "capacity": info.capacity,
                "allocation": info.allocation,
            }));
        }
        Ok(json!({"names": names, "volumes": details, "dev_entries": dev_entries()?}))
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
                .args(["-q", "--type", "thin", "-V"])
                .arg(format!("{}m", INTRUDER_SIZE / MIB))
                .args(["--thinpool", POOL, "-n", INTRUDER, VG])
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
        let mut log = CommandLog { seen: 0 };
        data("startup-commands", json!(log.since_last()));

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

        // An LV deactivated leaves /dev/VG, and the list at the next refresh.
        let web2 = format!("{VG}/{DEACTIVATED}");
        step("deactivate", || {
            s.command("lvchange").args(["-an", &web2]).run()?;
            refresh_libvirt_pool(&lv, VG)
        });
        let mut off = step("volumes-deactivated", || volumes(&lv));
        off["lvs"] = step("lvs-deactivated", || lvs(&s));
        data("volumes-deactivated", off);
        step("activate", || {
            s.command("lvchange").args(["-ay", "-K", &web2]).run()?;
            refresh_libvirt_pool(&lv, VG)
        });
        data(
            "volumes-activated",
            step("volumes-activated", || volumes(&lv)),
        );

        // lab never takes someone else's LV, whatever its name.
        let refused = s
            .remove_clone(PROFILE, "intruder", &[])
            .err()
            .map(|e| format!("{e:#}"));
        data("remove-intruder", json!({"error": refused}));

        // Removing lab's pool removes the definition only: the VG and every LV stay active.
        step("remove", || remove_libvirt_pool(&lv, VG));
        let pools = step("pools-after", || lv.storage_pools());
        let after = step("lvs-after", || lvs(&s));
        data("after-remove", json!({"pools": pools, "lvs": after}));
        data("dir-pool-commands", json!(log.since_last()));

        // What an older lab left: an active, autostart logical pool of lab's name.
        step("older-pool", || {
            let xml = format!(
                "<pool type='logical'><name>{LIBVIRT_POOL}</name><source><name>{VG}</name>\
                 <format type='lvm2'/></source><target><path>/dev/{VG}</path></target></pool>"
            );
            let pool = lv.connect().define_storage_pool_xml(&xml, 0)?;
            pool.create(0)?;
            pool.set_autostart(true)?;
            Ok(())
        });
        data("older-pool-start-commands", json!(log.since_last()));
        let older = define_libvirt_pool(&lv, VG);
        let pools = step("older-pool-define", || lv.storage_pools());
        let lvs_now = step("older-pool-lvs", || lvs(&s));
        data(
            "older-pool-define",
            json!({"result": older.as_ref().ok().map(|r| format!("{r:?}")),
                   "error": older.as_ref().err().map(|e| format!("{e:#}")),
                   "pools": pools, "lvs": lvs_now}),
        );
        data("older-pool-lab-commands", json!(log.since_last()));
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
}
