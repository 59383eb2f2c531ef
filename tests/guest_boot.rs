//! The TCG test guest boots here and LVM thin pools are real inside it: a file written to
//! and deleted from ext4 on a thin volume gives its space back to the pool on fstrim.
//!
//! This test always runs; a guest that does not boot fails it (it never skips).

#[path = "support/guest.rs"]
mod guest;

use std::time::Instant;

use guest::{DiskFormat, Guest, decode_base64, parse_console, tail};

const MIB: u64 = 1024 * 1024;

/// Pool 128 MiB, thin volume 256 MiB, a 48 MiB file (37.5% of the pool).
const SCRIPT: &str = r#"
pool_percent() { lvm lvs --noheadings -o data_percent vg_lab/lab-pool | tr -d ' '; }
lab_step pvcreate lvm pvcreate -q /dev/vda || exit 1
lab_step vgcreate lvm vgcreate -q vg_lab /dev/vda || exit 1
lab_step pool lvm lvcreate -q --type thin-pool -L 128m -Zn --discards passdown -n lab-pool vg_lab || exit 1
lab_step thin lvm lvcreate -q --type thin -V 256m --thinpool lab-pool -n lab-thin vg_lab || exit 1
lab_step mkfs mkfs.ext4 -q -E lazy_itable_init=1,lazy_journal_init=1 /dev/vg_lab/lab-thin || exit 1
lab_step mount mount -t ext4 -o noinit_itable /dev/vg_lab/lab-thin /mnt || exit 1
lab_value empty "$(pool_percent)"
lab_step write dd if=/dev/zero of=/mnt/blob bs=1M count=48 conv=fsync || exit 1
lab_value written "$(pool_percent)"
lab_step delete rm /mnt/blob || exit 1
sync
lab_value deleted "$(pool_percent)"
lab_data fstrim fstrim -v /mnt || exit 1
lab_value trimmed "$(pool_percent)"
lab_data lvs lvm lvs --reportformat json -o lv_name,segtype,discards,data_percent vg_lab || exit 1
lab_step umount umount /mnt || exit 1
lab_step deactivate lvm vgchange -q -an vg_lab || exit 1
"#;

fn percent(run: &guest::GuestRun, name: &str) -> f64 {
    let text = run.data_text(name);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("LAB-DATA {name} {text:?}: {e}\n{}", run.tail()))
}

#[test]
fn thin_pool_gives_space_back_after_fstrim_in_a_tcg_guest() {
    let started = Instant::now();
    let run = Guest::new(SCRIPT)
        .lvm_thin()
        .ext4()
        .disk(1024 * MIB, DiskFormat::Raw)
        .run();
    run.assert_ok();

    let empty = percent(&run, "empty");
    let written = percent(&run, "written");
    let deleted = percent(&run, "deleted");
    let trimmed = percent(&run, "trimmed");
    eprintln!(
        "pool data_percent: empty {empty}, written {written}, deleted {deleted}, trimmed {trimmed}; \
         kernel entry {:?}, \
         boot to script {:?}, QEMU {:?}, test {:?}, initramfs {} MiB, disk after {} MiB",
        run.kernel_entry,
        run.boot_to_script,
        run.qemu_time,
        started.elapsed(),
        run.initramfs_bytes / MIB,
        run.disk_allocated[0] / MIB,
    );
    // 48 MiB of a 128 MiB pool is 37.5 points: writing must show, deleting alone must not
    // give it back (no -o discard), and fstrim must.
    assert!(written - empty > 30.0, "written {written}, empty {empty}");
    assert!(
        deleted > written - 5.0,
        "deleting alone freed the pool: {deleted} after {written}"
    );
    assert!(
        deleted - trimmed > 30.0,
        "fstrim freed too little: {deleted} -> {trimmed}"
    );
    let fstrim = run.data_text("fstrim");
    assert!(fstrim.contains("trimmed"), "fstrim said {fstrim:?}");

    let lvs = run.data_json("lvs");
    let rows = lvs["report"][0]["lv"].as_array().expect("lvs rows");
    let pool = rows
        .iter()
        .find(|r| r["lv_name"] == "lab-pool")
        .unwrap_or_else(|| panic!("no lab-pool in {lvs}"));
    assert_eq!(pool["segtype"], "thin-pool");
    assert_eq!(pool["discards"], "passdown");
    let thin = rows.iter().find(|r| r["lv_name"] == "lab-thin").unwrap();
    assert_eq!(thin["segtype"], "thin");
}

#[test]
fn console_protocol_lines_are_parsed_and_noise_ignored() {
    let text = "\
[    0.000000] Linux version 6.1.0\r
\x1bc\x1b[?7l\x1b[2JLAB-BOOT 4.51\r
LAB-SCRIPT 5.02
some output
LAB-STEP pvcreate ok
LAB-STEP pool fail rc=5: Volume group \"vg_lab\" not found
LAB-DATA lvs eyJhIjoxfQo=
LAB-DATA inline {\"b\": 2}
LAB-DATA empty
LAB-DONE 5
";
    let console = parse_console(text);
    assert_eq!(console.boot_uptime, Some(4.51));
    assert_eq!(console.script_uptime, Some(5.02));
    assert_eq!(console.done, Some(5));
    assert_eq!(console.steps.len(), 2);
    assert!(console.steps[0].ok);
    assert_eq!(console.steps[1].name, "pool");
    assert!(!console.steps[1].ok);
    assert_eq!(
        console.steps[1].detail,
        "rc=5: Volume group \"vg_lab\" not found"
    );
    assert_eq!(
        console.data,
        [
            ("lvs".to_string(), "eyJhIjoxfQo=".to_string()),
            ("inline".to_string(), "{\"b\": 2}".to_string()),
            ("empty".to_string(), String::new()),
        ]
    );
}

#[test]
fn a_console_without_lab_done_has_no_status() {
    let console = parse_console("LAB-BOOT 3.2\nLAB-SCRIPT 4.0\nLAB-STEP a ok\n");
    assert_eq!(console.done, None);
    let long: String = (1..=100).map(|i| format!("line {i}\n")).collect();
    let shown = tail(&long, guest::TAIL_LINES);
    assert_eq!(shown.lines().count(), 40);
    assert!(shown.starts_with("line 61\n") && shown.ends_with("line 100"));
    assert_eq!(tail("", guest::TAIL_LINES), "(no console output)");
}

#[test]
fn base64_decodes_as_busybox_encodes() {
    assert_eq!(decode_base64("").unwrap(), b"");
    assert_eq!(decode_base64("YQ==").unwrap(), b"a");
    assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
    assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
    assert_eq!(
        decode_base64("eyJyZXBvcnQiOiBbXX0K").unwrap(),
        b"{\"report\": []}\n"
    );
    assert!(decode_base64("YW=j").is_err());
    assert!(decode_base64("YWJ").is_err());
    assert!(decode_base64("YW*j").is_err());
}
