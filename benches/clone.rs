//! Clone time against base size, for the qcow2 backend, beside a full copy of the same base.
//! Run: `cargo bench --bench clone` (root not needed; uses a temporary directory under
//! $LAB_BENCH_DIR or /var/tmp). The thin-snapshot figures come from the LVM guest harness
//! (`cargo test --test lvm_thin_guest -- --nocapture` prints them), since this kernel has no
//! device-mapper.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lab::size::{ByteSize, GIB, MIB};
use lab::storage::Storage;
use lab::storage::qcow2::Qcow2Storage;

const RUNS: usize = 7;

fn qemu_io(path: &Path, cmd: &str) {
    let ok = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("qemu-io")
        .success();
    assert!(ok, "qemu-io {cmd}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let root = std::env::var("LAB_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::Builder::new()
        .prefix("lab-bench-clone-")
        .tempdir_in(&root)
        .expect("temporary directory");
    println!(
        "qcow2 clone benchmark in {} ({RUNS} runs each, median)",
        dir.path().display()
    );
    println!(
        "{:>10}  {:>12}  {:>14}  {:>16}  {:>8}",
        "base", "data in base", "clone (qcow2)", "full copy (cp)", "ratio"
    );
    let mut clone_times = Vec::new();
    for size_gib in [1u64, 10, 100] {
        let storage = Qcow2Storage::new(dir.path().join(format!("{size_gib}g")));
        let profile = format!("bench{size_gib}");
        let base = storage
            .create_base(&profile, ByteSize::gib(size_gib))
            .expect("base");
        // An installed OS holds a few GiB whatever the disk size: write up to 2 GiB.
        let data = (size_gib * GIB).min(2 * GIB);
        let mut off = 0;
        while off < data {
            let len = (data - off).min(256 * MIB);
            qemu_io(&base.path, &format!("write -P 0x5a {off} {len}"));
            off += len;
        }
        storage.seal_base(&profile).expect("seal");

        let mut clones = Vec::new();
        for run in 0..RUNS {
            let vm = format!("vm{run}");
            let t = Instant::now();
            storage.clone_base(&profile, &vm, &[]).expect("clone");
            clones.push(t.elapsed());
            storage.remove_clone(&profile, &vm, &[]).expect("remove");
        }
        let mut copies = Vec::new();
        for _ in 0..3 {
            let dst = dir.path().join("copy.qcow2");
            let t = Instant::now();
            let ok = Command::new("cp")
                .arg("--sparse=always")
                .arg(&base.path)
                .arg(&dst)
                .status()
                .unwrap()
                .success();
            assert!(ok);
            // A copy is only a copy once it is on disk.
            Command::new("sync").arg(&dst).status().unwrap();
            copies.push(t.elapsed());
            std::fs::remove_file(&dst).unwrap();
        }
        let (c, f) = (median(clones), median(copies));
        println!(
            "{:>10}  {:>12}  {:>14}  {:>16}  {:>7.0}x",
            ByteSize::gib(size_gib).to_string(),
            ByteSize(data).to_string(),
            ms(c),
            ms(f),
            f.as_secs_f64() / c.as_secs_f64()
        );
        clone_times.push(c);
        // Free the space before the next size.
        let _ = std::fs::set_permissions(&base.path, std::fs::Permissions::from_mode(0o644));
        storage.remove_base(&profile).expect("remove base");
    }
    let ratio = clone_times[2].as_secs_f64() / clone_times[0].as_secs_f64();
    println!(
        "100GiB clone / 1GiB clone = {ratio:.2} (goal: at most 1.5); slowest clone {} (goal: under 50 ms)",
        ms(*clone_times.iter().max().unwrap())
    );
}
