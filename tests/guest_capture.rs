//! Regenerates the real LVM thin-pool captures in `tests/fixtures/lvm/guest-*` from a TCG
//! guest where device-mapper works (the host kernel has none). See that directory's README.
//!
//! cargo test --test guest_capture -- --ignored capture_lvm_fixtures

#[path = "support/guest.rs"]
mod guest;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest::{DiskFormat, Guest};

const GIB: u64 = 1024 * 1024 * 1024;

/// The report commands, exactly as the fixture README lists them.
const LVS: &str = "lvm lvs --reportformat json --units b --nosuffix \
    -o lv_name,vg_name,lv_attr,segtype,lv_size,data_percent,metadata_percent,discards,lv_uuid,lv_tags vg_lab";
const VGS: &str =
    "lvm vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free,vg_tags";
const PVS: &str =
    "lvm pvs --reportformat json --units b --nosuffix -o pv_name,vg_name,pv_size,pv_free";
const LVMCONFIG: &str = "lvm lvmconfig --type full devices/issue_discards";

/// A 1 GiB pool on a 2 GiB disk, a 2 GiB thin base volume and two thin snapshots of it (lab's
/// clones): web1 active, db1 left inactive as lvcreate makes snapshots (activation skip).
/// Writes of whole 64 KiB chunks fill the pool to 0, 50, 85 and 97 percent: 512 MiB into the
/// base, then 359 and 123 MiB into web1 (871 and 994 of 1024 MiB).
fn script() -> String {
    let tags = "--addtag lab --addtag lab-profile-demo";
    format!(
        r#"
report() {{ lab_data "$1" {LVS}; }}
lab_step pvcreate lvm pvcreate -q /dev/vda || exit 1
lab_step vgcreate lvm vgcreate -q vg_lab /dev/vda || exit 1
lab_step pool lvm lvcreate -q --type thin-pool -L 1g -Zn --discards passdown -n lab-pool vg_lab || exit 1
lab_step base lvm lvcreate -q --type thin -V 2g --thinpool lab-pool -n lab-demo-base {tags} vg_lab || exit 1
lab_step web1 lvm lvcreate -q -s vg_lab/lab-demo-base -n lab-demo-web1 {tags} || exit 1
lab_step db1 lvm lvcreate -q -s vg_lab/lab-demo-base -n lab-demo-db1 {tags} || exit 1
lab_step web1-activate lvm lvchange -q -ay -K vg_lab/lab-demo-web1 || exit 1
report pool-00 || exit 1
lab_step fill-50 dd if=/dev/zero of=/dev/vg_lab/lab-demo-base bs=1M count=512 oflag=direct || exit 1
report pool-50 || exit 1
lab_step fill-85 dd if=/dev/zero of=/dev/vg_lab/lab-demo-web1 bs=1M count=359 oflag=direct || exit 1
report pool-85 || exit 1
lab_step fill-97 dd if=/dev/zero of=/dev/vg_lab/lab-demo-web1 bs=1M seek=359 count=123 oflag=direct || exit 1
report pool-97 || exit 1
lab_step nopassdown lvm lvchange -q --discards nopassdown vg_lab/lab-pool || exit 1
report pool-nopassdown || exit 1
# Discards can only be ignored on an inactive pool.
lab_step deactivate lvm vgchange -q -an vg_lab || exit 1
lab_step ignore lvm lvchange -q --discards ignore vg_lab/lab-pool || exit 1
lab_step activate lvm vgchange -q -ay vg_lab || exit 1
lab_step web1-reactivate lvm lvchange -q -ay -K vg_lab/lab-demo-web1 || exit 1
report pool-ignore || exit 1
lab_data vgs {VGS} || exit 1
lab_data pvs {PVS} || exit 1
lab_data lvmconfig-issue-discards {LVMCONFIG} || exit 1
lab_data lvm-version lvm version || exit 1
lab_data thin-check-version thin_check --version || exit 1
lab_step stop lvm vgchange -q -an vg_lab || exit 1
"#
    )
}

/// Each capture: its LAB-DATA name in the guest and its fixture file.
const CAPTURES: [(&str, &str); 11] = [
    ("pool-00", "guest-lvs-pool-00.json"),
    ("pool-50", "guest-lvs-pool-50.json"),
    ("pool-85", "guest-lvs-pool-85.json"),
    ("pool-97", "guest-lvs-pool-97.json"),
    ("pool-nopassdown", "guest-lvs-pool-nopassdown.json"),
    ("pool-ignore", "guest-lvs-pool-ignore.json"),
    ("vgs", "guest-vgs.json"),
    ("pvs", "guest-pvs.json"),
    (
        "lvmconfig-issue-discards",
        "guest-lvmconfig-issue-discards.txt",
    ),
    ("lvm-version", "guest-lvm-version.txt"),
    ("thin-check-version", "guest-thin_check-version.txt"),
];

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lvm")
}

fn json(bytes: &[u8], name: &str) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn pool_row(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["report"][0]["lv"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["lv_name"] == "lab-pool"))
        .cloned()
        .unwrap_or_else(|| panic!("no lab-pool row in {name}: {report}"))
}

/// The captures show what they are named after: fill levels, discards, the VG and PV.
fn check_captures(get: impl Fn(&str) -> Vec<u8>) {
    for (name, target) in [
        ("pool-00", 0.0),
        ("pool-50", 50.0),
        ("pool-85", 85.0),
        ("pool-97", 97.0),
    ] {
        let row = pool_row(&json(&get(name), name), name);
        let percent: f64 = row["data_percent"].as_str().unwrap().parse().unwrap();
        assert!(
            (percent - target).abs() < 1.0,
            "{name}: data_percent {percent}"
        );
        assert_eq!(row["discards"], "passdown", "{name}");
        assert_eq!(row["segtype"], "thin-pool", "{name}");
    }
    for discards in ["nopassdown", "ignore"] {
        let name = format!("pool-{discards}");
        let row = pool_row(&json(&get(&name), &name), &name);
        assert_eq!(row["discards"], discards);
    }
    let vgs = json(&get("vgs"), "vgs");
    assert_eq!(vgs["report"][0]["vg"][0]["vg_name"], "vg_lab");
    let pvs = json(&get("pvs"), "pvs");
    assert_eq!(pvs["report"][0]["pv"][0]["pv_name"], "/dev/vda");
    let config = String::from_utf8(get("lvmconfig-issue-discards")).unwrap();
    assert!(config.starts_with("issue_discards="), "{config:?}");
    let version = String::from_utf8(get("lvm-version")).unwrap();
    assert!(version.contains("Driver version:"), "{version}");
}

#[test]
fn committed_captures_show_what_their_names_say() {
    let dir = fixture_dir();
    check_captures(|name| {
        let file = CAPTURES.iter().find(|(n, _)| *n == name).unwrap().1;
        fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    });
}

#[test]
#[ignore = "boots a TCG guest for about 35 s and rewrites tests/fixtures/lvm/guest-*"]
fn capture_lvm_fixtures() {
    let started = Instant::now();
    let run = Guest::new(script())
        .lvm_thin()
        .disk(2 * GIB, DiskFormat::Raw)
        .timeout(Duration::from_secs(900))
        .run();
    run.assert_ok();
    // Check before overwriting the committed captures.
    check_captures(|name| run.data_bytes(name));

    let dir = fixture_dir();
    fs::create_dir_all(&dir).unwrap();
    for (data, file) in CAPTURES {
        fs::write(dir.join(file), run.data_bytes(data)).unwrap();
    }
    eprintln!(
        "captured into {}: boot to script {:?}, QEMU {:?}, in all {:?}",
        dir.display(),
        run.boot_to_script,
        run.qemu_time,
        started.elapsed()
    );
}
