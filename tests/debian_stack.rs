//! The shipped `debian-stack` profile, end to end, on the real libvirtd under TCG: three
//! Debian 12 VMs from a cloud image, with their real OpenSSH, cloud-init, qemu-guest-agent
//! and apt.
//!
//! The image is the tests' own cloud-style Debian 12 (tests/support/debian-image.sh), the
//! packages the steps install a local apt repository of Debian's own .debs
//! (tests/support/debian-repo.sh); both are cached on this machine by their recipe, so only
//! a cold cache needs the network. The test serves both over HTTP from the host
//! (tests/support/http_server.rs): lab downloads the image from an `http://` URL and checks
//! it against the `SHA512SUMS` beside it, as it does Debian's, and the VMs' apt reads the
//! repository at their network's gateway. A copy of the profile points `[base] image`,
//! `checksum_url` and `[vars] apt_sources` there, with modest memory; everything else,
//! the steps and the readiness probe included, is the shipped profile's.
//!
//! One test, one lab: three emulated guests are what the two-core machines hold. It
//! checks: all three VMs up with cloud-init done; `lab ssh` into each; SSH from web to db by
//! name as root; the steps ran and are recorded (a second `lab up` runs none); `lab ready`
//! exits 0 and the page came from the database through nginx and the app; `lab trim` of a
//! running VM gives back at least 95% of what its guest deleted; `lab reset` of a VM gives
//! it a new machine-id with its name and address kept, and `lab up` provisions it again;
//! `lab down` leaves nothing. It prints each VM's boot to ready and lab's own time.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

#[path = "support/http_server.rs"]
mod http_server;
#[path = "support/lab_cli.rs"]
mod lab_cli;
use http_server::Server;
use lab_cli::Lab;

const MIB: u64 = 1024 * 1024;
/// What the guest writes and deletes for the trim.
const WRITTEN: u64 = 200 * MIB;
/// Seconds a VM may take from start to ready (three emulated guests share two cores).
const BOOT_TIMEOUT: &str = "900";
/// The text of the seeded row that the probe looks for.
const FROM_DB: &str = "This row was read from PostgreSQL on db";
const VMS: [&str; 3] = ["web", "app", "db"];

/// Run a script of tests/support (as root, which builds into /var/cache/lab-test); the
/// path it prints. Its progress goes to the test's stderr.
fn support(script: &str, args: &[&str]) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script);
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{script} failed: {}", out.status);
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The shipped profile, as a TOML table to edit.
fn shipped() -> toml::Table {
    let (_, text) = lab::profile::BUILT_IN
        .iter()
        .find(|(n, _)| *n == "debian-stack")
        .unwrap();
    text.parse().unwrap()
}

/// The test's copy of the shipped profile: its own name, range and image directory, the
/// image and apt source given, modest VMs.
fn test_copy(name: &str, images: &Path, image: &str, checksum_url: &str, apt: &str) -> String {
    use toml::Value as T;
    let mut p = shipped();
    p.insert("name".into(), T::String(name.into()));
    let table = |p: &toml::Table, key: &str| -> toml::Table {
        p.get(key)
            .and_then(T::as_table)
            .cloned()
            .unwrap_or_default()
    };
    let mut network = table(&p, "network");
    network.insert("auto_range".into(), T::String("10.247.0.0/16".into()));
    p.insert("network".into(), T::Table(network));
    let mut storage = toml::Table::new();
    storage.insert("backend".into(), T::String("qcow2".into()));
    storage.insert("dir".into(), T::String(images.display().to_string()));
    p.insert("storage".into(), T::Table(storage));
    let mut base = table(&p, "base");
    base.insert("image".into(), T::String(image.into()));
    base.insert("checksum_url".into(), T::String(checksum_url.into()));
    // Room for the trim's writes over the 2 GiB image: growpart's work.
    base.insert("disk".into(), T::String("4GiB".into()));
    p.insert("base".into(), T::Table(base));
    let mut vars = table(&p, "vars");
    vars.insert("apt_sources".into(), T::String(apt.into()));
    p.insert("vars".into(), T::Table(vars));
    for vm in p.get_mut("vm").and_then(T::as_array_mut).unwrap() {
        let vm = vm.as_table_mut().unwrap();
        let memory = if vm["name"].as_str() == Some("db") {
            "768MiB"
        } else {
            "512MiB"
        };
        vm.insert("memory".into(), T::String(memory.into()));
        vm.insert("vcpus".into(), T::Integer(1));
    }
    toml::to_string(&p).unwrap()
}

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn ms(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

impl Lab {
    /// `lab ssh PROFILE VM -- sh -c SCRIPT`: its stdout; it must exit 0.
    fn sh(&self, vm: &str, script: &str) -> String {
        self.run(&["ssh", self.profile(), vm, "--", "sh", "-c", script], 0)
            .0
    }

    fn clone_image(&self, vm: &str) -> PathBuf {
        self.images().join(format!("lab-{}-{vm}.qcow2", self.name))
    }

    /// The page as nginx on web serves it.
    fn page(&self) -> String {
        self.sh("web", "curl -fsS --max-time 20 http://localhost/")
    }
}

fn step_outcomes(up: &Value, vm: &str) -> Vec<(String, String)> {
    up["provision"][vm]
        .as_array()
        .unwrap_or_else(|| panic!("no steps for {vm} in {up:#}"))
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn steps_of(vm: &str) -> Vec<&'static str> {
    match vm {
        "web" => vec!["apt-sources", "guest-agent", "nginx"],
        "app" => vec!["apt-sources", "guest-agent", "python-app"],
        _ => vec!["apt-sources", "guest-agent", "postgresql", "seed-table"],
    }
}

#[test]
fn debian_stack_from_a_cloud_image_end_to_end() {
    // --- what the lab is made from, served over HTTP -------------------------------------
    let image = support("debian-image.sh", &[]);
    let image_dir = image.parent().unwrap().to_path_buf();
    let image_file = image.file_name().unwrap().to_str().unwrap().to_string();
    let repo = support("debian-repo.sh", &[image_dir.to_str().unwrap()]);
    let server = Server::start_public();
    server.serve_dir("image", &image_dir);
    server.serve_dir("repo", &repo);

    let mut lab = Lab::new("ds", |_, _| String::new());
    let cache = lab.dir.path().join("image-cache");
    lab.env
        .push(("LAB_IMAGE_CACHE".into(), cache.display().to_string()));
    let image_url = server.url(&format!("/image/{image_file}"));
    let sums_url = server.url("/image/SHA512SUMS");
    // The gateway the VMs reach the host at: the subnet lab picks for this profile.
    std::fs::write(
        &lab.profile,
        test_copy(&lab.name, &lab.images(), &image_url, &sums_url, "unknown"),
    )
    .unwrap();
    let dry = lab.json(&["up", lab.profile(), "--dry-run"], 0);
    let gateway = dry["network"]["gateway"].as_str().unwrap().to_string();
    let subnet: ipnet::Ipv4Net = dry["network"]["subnet"].as_str().unwrap().parse().unwrap();
    let domain = dry["network"]["domain"].as_str().unwrap().to_string();
    let apt = format!("deb [trusted=yes] {} ./", server.url_at(&gateway, "/repo/"));
    std::fs::write(
        &lab.profile,
        test_copy(&lab.name, &lab.images(), &image_url, &sums_url, &apt),
    )
    .unwrap();
    lab.assert_nothing_made();

    // --- up: three VMs, cloud-init done, provisioned ------------------------------------
    let t = Instant::now();
    let up = lab.json(&["up", lab.profile(), "--timeout", BOOT_TIMEOUT], 0);
    let up_wall = t.elapsed();
    let vms = up["vms"].as_array().unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, VMS, "{up:#}");
    let mut ips = std::collections::BTreeMap::new();
    for v in vms {
        let name = v["name"].as_str().unwrap();
        assert_eq!(v["state"], "running", "{up:#}");
        let ip: std::net::Ipv4Addr = v["ip"].as_str().unwrap().parse().unwrap();
        assert!(subnet.contains(&ip), "{name}: {ip} outside {subnet}");
        assert!(
            ms(&v["timings_ms"]["cloud_init"]) > 0,
            "{name}: lab did not wait for cloud-init: {up:#}"
        );
        ips.insert(name.to_string(), ip.to_string());
        let want: Vec<(String, String)> = steps_of(name)
            .into_iter()
            .map(|s| (s.to_string(), "done".to_string()))
            .collect();
        assert_eq!(step_outcomes(&up, name), want, "{up:#}");
    }
    // The image came over HTTP, checked against the checksum file; the packages came from
    // the repository, to every VM.
    let served = server.requests();
    for path in [
        format!("/image/{image_file}"),
        "/image/SHA512SUMS".to_string(),
    ] {
        assert!(
            served
                .iter()
                .any(|r| r.path == path && (r.status == 200 || r.status == 206)),
            "lab did not fetch {path}: {served:#?}"
        );
    }
    for (vm, ip) in &ips {
        assert!(
            served.iter().any(|r| r.peer.to_string() == *ip
                && (r.path.ends_with(".deb") || r.path.contains("Packages"))),
            "{vm} ({ip}) read nothing from the repository: {served:#?}"
        );
    }

    // --- lab ssh into each: its real OpenSSH, its name, cloud-init done ------------------
    let mut machine_ids = std::collections::BTreeMap::new();
    for vm in VMS {
        let out = lab.sh(
            vm,
            "hostname; hostname -f; cloud-init status; cat /etc/machine-id; \
             dpkg-query -W -f='${Package} ${Status}\\n' openssh-server; systemctl is-active ssh",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{vm}: {out}");
        assert_eq!(lines[0], vm, "{out}");
        assert_eq!(lines[1], format!("{vm}.{domain}"), "{out}");
        assert_eq!(lines[2], "status: done", "{out}");
        assert_eq!(lines[3].len(), 32, "{vm}: machine-id {out}");
        assert_eq!(lines[4], "openssh-server install ok installed", "{out}");
        assert_eq!(lines[5], "active", "{out}");
        machine_ids.insert(vm, lines[3].to_string());
    }
    let distinct: std::collections::BTreeSet<&String> = machine_ids.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "clones share a machine-id: {machine_ids:?}"
    );

    // --- VM to VM by name, as root -------------------------------------------------------
    for peer in [format!("db.{domain}"), "db".to_string()] {
        let out = lab.sh(
            "web",
            &format!("ssh -o BatchMode=yes -o ConnectTimeout=20 root@{peer} hostname"),
        );
        assert_eq!(out.trim(), "db", "web -> {peer}");
    }

    // --- the steps are recorded: a second lab up runs none ------------------------------
    for vm in VMS {
        let recorded = lab.sh(vm, "ls /var/lib/lab/steps");
        let mut want = steps_of(vm);
        want.sort();
        assert_eq!(
            recorded.split_whitespace().collect::<Vec<_>>(),
            want,
            "{vm}"
        );
    }
    let again = lab.json(&["up", lab.profile()], 0);
    for vm in VMS {
        assert!(
            step_outcomes(&again, vm)
                .iter()
                .all(|(_, o)| o == "skipped"),
            "{again:#}"
        );
    }

    // --- lab ready, and the page through nginx, the app and PostgreSQL ------------------
    let report = lab.json(&["ready", lab.profile()], 0);
    assert_eq!(report["ready"], true, "{report:#}");
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["vm"] == "web"
            && f["check"] == "probe"
            && f["ok"] == true
            && f["detail"] == "page-through-the-stack"),
        "{report:#}"
    );
    for vm in VMS {
        assert!(
            findings
                .iter()
                .any(|f| f["vm"] == vm && f["check"] == "cloud-init" && f["ok"] == true),
            "{report:#}"
        );
    }
    let page = lab.page();
    assert!(page.contains(FROM_DB), "{page}");
    assert!(page.contains("by Python on app"), "{page}");
    assert!(page.contains(&format!("at {}:", ips["db"])), "{page}");
    // Read live from the database: a row added there is on the next page.
    let added = format!("added by the test, run {}", std::process::id());
    lab.sh(
        "db",
        &format!(
            "cd / && runuser -u postgres -- psql -v ON_ERROR_STOP=1 -d demo -c \
             \"INSERT INTO talks (title, speaker) VALUES ('{added}', 'lab test')\""
        ),
    );
    let page = lab.page();
    assert!(page.contains(&added), "{page}");

    // --- lab trim of a running VM, through its guest agent ------------------------------
    // Online discard off, so that the space comes back through lab trim alone.
    lab.sh("app", "mount -o remount,nodiscard /");
    let clone = lab.clone_image("app");
    let before = allocated(&clone);
    lab.sh(
        "app",
        &format!(
            "dd if=/dev/urandom of=/root/fill bs=1048576 count={} status=none && sync",
            WRITTEN / MIB
        ),
    );
    let written = allocated(&clone);
    assert!(
        written >= before + WRITTEN * 95 / 100,
        "the guest's writes did not land in {}: {before} -> {written}",
        clone.display()
    );
    lab.sh("app", "rm /root/fill && sync && sleep 1 && sync");
    let deleted = allocated(&clone);
    let trim = lab.json(&["trim", lab.profile(), "app"], 0);
    let after = allocated(&clone);
    let image = trim["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "app")
        .unwrap_or_else(|| panic!("no app in {trim:#}"));
    assert_eq!(image["method"], "guest-agent", "{trim:#}");
    assert_eq!(image["outcome"], "trimmed", "{trim:#}");
    let back = deleted.saturating_sub(after);
    eprintln!(
        "trim: the guest wrote and deleted {} MiB; {before} -> {written} -> {deleted} -> {after}: {back} bytes came back",
        WRITTEN / MIB
    );
    assert!(
        back >= WRITTEN * 95 / 100,
        "only {back} of {WRITTEN} bytes came back ({deleted} -> {after})\n{trim:#}"
    );

    // --- lab reset of one VM to a fresh clone: a new machine-id, the same name and address
    // (a plain reset goes back to the `provisioned` snapshot lab up took, identity and all;
    // --pristine is the fresh clone of the base with a new seed)
    let reset = lab.json(
        &[
            "reset",
            lab.profile(),
            "web",
            "--pristine",
            "--timeout",
            BOOT_TIMEOUT,
        ],
        0,
    );
    assert_eq!(reset[0]["name"], "web", "{reset:#}");
    assert_eq!(
        reset[0]["ip"].as_str(),
        Some(ips["web"].as_str()),
        "{reset:#}"
    );
    let out = lab.sh("web", "hostname; cat /etc/machine-id; cloud-init status");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "web", "{out}");
    assert_ne!(lines[1], machine_ids["web"], "reset kept the machine-id");
    assert_eq!(lines[1].len(), 32, "{out}");
    assert_eq!(lines[2], "status: done", "{out}");
    // A pristine web: lab up provisions it again, and the demo is ready again.
    let again = lab.json(&["up", lab.profile()], 0);
    let want: Vec<(String, String)> = steps_of("web")
        .into_iter()
        .map(|s| (s.to_string(), "done".to_string()))
        .collect();
    assert_eq!(step_outcomes(&again, "web"), want, "{again:#}");
    assert!(lab.page().contains(FROM_DB));
    lab.run(&["ready", lab.profile()], 0);

    // --- down leaves nothing ------------------------------------------------------------
    lab.run(&["down", lab.profile(), "--purge"], 0);
    let prefix = format!("lab-{}", lab.name);
    let domains = virsh(&["list", "--all", "--name"]);
    assert!(
        !domains.lines().any(|d| d.trim().starts_with(&prefix)),
        "{domains}"
    );
    let nets = virsh(&["net-list", "--all", "--name"]);
    assert!(!nets.lines().any(|n| n.trim() == prefix), "{nets}");
    let pools = virsh(&["pool-list", "--all", "--name"]);
    assert!(!pools.lines().any(|p| p.contains(&lab.name)), "{pools}");
    let left: Vec<String> = std::fs::read_dir(lab.images())
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "lab down left {left:?} in {}",
        lab.images().display()
    );

    // --- the figures --------------------------------------------------------------------
    let t = &up["timings_ms"];
    eprintln!(
        "lab up {}: {:.1} s wall; plan {} ms, network {} ms, base (download, verify, import) {} ms, provisioning {} ms",
        lab.name,
        up_wall.as_secs_f64(),
        ms(&t["observe_and_plan"]),
        ms(&t["network"]),
        ms(&t["base"]),
        ms(&t["provision"]),
    );
    let mut own = ms(&t["observe_and_plan"]) + ms(&t["network"]) + ms(&t["boot_files"]);
    let mut per_vm = 0;
    for v in vms {
        let vt = &v["timings_ms"];
        eprintln!(
            "  {}: clone {} ms, seed {} ms, define {} ms, start {} ms; boot to lease {:.1} s, cloud-init {:.1} s: boot to ready {:.1} s",
            v["name"].as_str().unwrap(),
            ms(&vt["disk"]),
            ms(&vt["seed"]),
            ms(&vt["define"]),
            ms(&vt["start"]),
            ms(&vt["ready"]) as f64 / 1000.0,
            ms(&vt["cloud_init"]) as f64 / 1000.0,
            (ms(&vt["ready"]) + ms(&vt["cloud_init"])) as f64 / 1000.0,
        );
        per_vm =
            per_vm.max(ms(&vt["disk"]) + ms(&vt["seed"]) + ms(&vt["define"]) + ms(&vt["start"]));
    }
    own += per_vm;
    eprintln!(
        "lab's own time (plan, network, clone, seed, define, start; without the base): {own} ms"
    );
}
