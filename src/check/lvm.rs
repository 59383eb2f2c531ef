//! `lvm.*`: can lab clone VMs as LVM thin snapshots here, and will freed space reach the
//! SSD. Without lvm2 lab falls back to qcow2 overlays, so most findings are warnings unless
//! the profile demands `backend = "lvm-thin"`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{Check, CheckContext, Report};
use crate::host::lvm::{self, IssueDiscards, LvmSource, LvmVersion, PoolDiscards, ThinPool, VgRow};
use crate::host::{Sysroot, tools};
use crate::profile::StorageBackend;
use crate::runner::Cmd;
use crate::size::{ByteSize, GIB, MIB};

/// Pool fill (data or metadata) that deserves a warning: a few VM installs away from full.
pub const FILL_WARN: f64 = 80.0;
/// A full thin pool stops every VM on it with I/O errors, or worse, corrupts metadata.
pub const FILL_FAIL: f64 = 95.0;
/// Extending a pool aims to bring its fill back down to this.
const FILL_TARGET: f64 = 70.0;

/// The thin pool a profile asks for.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSpec {
    pub vg: String,
    pub pool: String,
    /// `backend = "lvm-thin"`: no fallback, so problems fail.
    pub required: bool,
    pub profile: String,
    /// The qcow2 directory lab falls back to (backend auto).
    pub fallback: PathBuf,
    /// Worst-case disk use of the profile (every clone fully written).
    pub needs_disk: u64,
}

/// What the profile says about LVM.
enum Demand {
    None(String),
    Pool(PoolSpec),
    /// lvm-thin without vg/pool: a profile mistake.
    Incomplete {
        profile: String,
    },
}

fn demand(ctx: &CheckContext<'_>) -> Demand {
    let Some(p) = ctx.profile else {
        return Demand::None(
            "no profile given: pass --profile with [storage] vg and pool to check a thin pool"
                .into(),
        );
    };
    let s = &p.storage;
    match (s.backend, &s.vg, &s.pool) {
        (StorageBackend::Qcow2, _, _) => Demand::None(format!(
            "profile {} uses backend qcow2: no thin pool",
            p.name
        )),
        (backend, Some(vg), Some(pool)) => Demand::Pool(PoolSpec {
            vg: vg.clone(),
            pool: pool.clone(),
            required: backend == StorageBackend::LvmThin,
            profile: p.name.clone(),
            fallback: s.dir.clone(),
            needs_disk: p.needs().disk,
        }),
        (StorageBackend::LvmThin, _, _) => Demand::Incomplete {
            profile: p.name.clone(),
        },
        (StorageBackend::Auto, _, _) => Demand::None(format!(
            "profile {} names no [storage] vg and pool: lab uses qcow2 in {}",
            p.name,
            s.dir.display()
        )),
    }
}

impl Demand {
    fn required(&self) -> bool {
        match self {
            Demand::Pool(spec) => spec.required,
            Demand::Incomplete { .. } => true,
            Demand::None(_) => false,
        }
    }
}

/// The package manager line for this distribution, from `/etc/os-release`.
fn install_fix(sysroot: &Sysroot, debian: &str, fedora: &str) -> String {
    let release = sysroot.read_opt("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        release
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_ascii_lowercase())
            .unwrap_or_default()
    };
    let ids = format!("{} {}", field("ID="), field("ID_LIKE="));
    let has = |names: &[&str]| ids.split_whitespace().any(|w| names.contains(&w));
    let apt = format!("apt install {debian}");
    let dnf = format!("dnf install {fedora}");
    if has(&["debian", "ubuntu"]) {
        apt
    } else if has(&["fedora", "rhel", "centos"]) {
        dnf
    } else {
        format!("{apt} (Debian, Ubuntu) or {dnf} (Fedora, RHEL, CentOS)")
    }
}

fn lvm2_fix(sysroot: &Sysroot) -> String {
    install_fix(
        sysroot,
        "lvm2 thin-provisioning-tools",
        "lvm2 device-mapper-persistent-data",
    )
}

/// The `lvm` fact.
#[derive(Debug, Default, Serialize)]
struct LvmFacts {
    lvm: Option<PathBuf>,
    version: Option<LvmVersion>,
    version_error: Option<String>,
    device_mapper: Option<bool>,
    issue_discards: Option<IssueDiscards>,
    issue_discards_error: Option<String>,
    fix_applied: Option<String>,
    pool_spec: Option<PoolSpec>,
    source: Option<String>,
    vg: Option<VgRow>,
    thin_pool: Option<ThinPool>,
    thin_check: Option<PathBuf>,
    thin_check_version: Option<String>,
}

pub fn check(ctx: &CheckContext<'_>, report: &mut Report) {
    let mut facts = LvmFacts::default();
    let demand = demand(ctx);
    if let Demand::Pool(spec) = &demand {
        facts.pool_spec = Some(spec.clone());
    }
    report.push(installed_check(ctx, &demand, &mut facts));
    report.push(issue_discards_check(ctx, &mut facts));
    for c in pool_checks(ctx, &demand, &mut facts) {
        report.push(c);
    }
    report.push(thin_check_check(ctx, &demand, &mut facts));
    report.fact("lvm", facts);
}

fn installed_check(ctx: &CheckContext<'_>, demand: &Demand, facts: &mut LvmFacts) -> Check {
    const ID: &str = "lvm.installed";
    let sysroot = ctx.sysroot;
    facts.lvm = tools::installed(sysroot, "lvm");
    let Some(path) = facts.lvm.clone() else {
        let summary = if demand.required() {
            "lvm2 is not installed, and the profile's backend lvm-thin needs it".to_string()
        } else {
            "lvm2 is not installed: lab will clone VMs as qcow2 overlays instead of thin snapshots"
                .to_string()
        };
        return if demand.required() {
            Check::fail(ID, summary, lvm2_fix(sysroot))
        } else {
            Check::warn(ID, summary, lvm2_fix(sysroot))
        };
    };
    let mut version_text = if sysroot.is_live() {
        match lvm::live_version() {
            Ok(Some(v)) => {
                let mut text = format!("lvm2 {}", v.lvm);
                if let Some(lib) = &v.library {
                    text.push_str(&format!(", library {lib}"));
                }
                if let Some(driver) = &v.driver {
                    text.push_str(&format!(", device-mapper driver {driver}"));
                }
                facts.version = Some(v);
                text
            }
            Ok(None) => format!("lvm2 at {}", path.display()),
            Err(e) => {
                facts.version_error = Some(format!("{e:#}"));
                return Check::warn(
                    ID,
                    format!(
                        "{} is there but `lvm version` failed: {e:#}",
                        path.display()
                    ),
                    lvm2_fix(sysroot),
                );
            }
        }
    } else {
        format!("lvm2 installed ({} in the sysroot)", path.display())
    };
    let dm = facts
        .version
        .as_ref()
        .and_then(|v| v.driver.as_ref().map(|_| true))
        .or_else(|| lvm::device_mapper_loaded(sysroot));
    facts.device_mapper = dm;
    if dm == Some(false) {
        let summary = format!(
            "{version_text}, but the kernel has no device-mapper loaded (/proc/misc lists none): LVM cannot activate volumes, so thin pools cannot work here{}",
            if demand.required() {
                ""
            } else {
                "; lab will use qcow2 overlays"
            }
        );
        let fix = "modprobe dm_thin_pool (loads dm_mod too; a kernel without CONFIG_BLK_DEV_DM and CONFIG_DM_THIN_PROVISIONING cannot run thin pools)";
        return if demand.required() {
            Check::fail(ID, summary, fix)
        } else {
            Check::warn(ID, summary, fix)
        };
    }
    if dm.is_none() && !sysroot.is_live() {
        version_text.push_str("; device-mapper state unknown (no /proc/misc)");
    }
    Check::pass(ID, version_text)
}

const ISSUE_DISCARDS_LINES: &str = "devices {\n\tissue_discards = 1\n}";

fn issue_discards_fix(sysroot: &Sysroot) -> String {
    format!(
        "set devices/issue_discards = 1 in {}:\n{ISSUE_DISCARDS_LINES}\n(or run lab check --fix)",
        lvmlocal_path(sysroot).display()
    )
}

fn lvmlocal_path(sysroot: &Sysroot) -> PathBuf {
    sysroot.path("/etc/lvm/lvmlocal.conf")
}

fn issue_discards_check(ctx: &CheckContext<'_>, facts: &mut LvmFacts) -> Check {
    const ID: &str = "lvm.issue-discards";
    let sysroot = ctx.sysroot;
    if facts.lvm.is_none() {
        return Check::skip(ID, "lvm2 is not installed");
    }
    if tools::find_program("lvmconfig").is_none() {
        return Check::skip(
            ID,
            "lvmconfig is not installed on this machine, so the LVM configuration cannot be read",
        );
    }
    let current = match lvm::issue_discards(sysroot) {
        Ok(v) => v,
        Err(e) => {
            facts.issue_discards_error = Some(format!("{e:#}"));
            return Check::warn(
                ID,
                format!("cannot read devices/issue_discards: {e:#}"),
                format!(
                    "correct the LVM configuration in {} (lvmconfig --validate names the error)",
                    lvm::config_dir(sysroot).display()
                ),
            );
        }
    };
    let origin = if current.built_in_default {
        format!(
            "LVM's built-in default, no lvm.conf in {}",
            current.config_dir.display()
        )
    } else {
        format!("lvmconfig --type full, {}", current.config_dir.display())
    };
    facts.issue_discards = Some(current.clone());
    if current.value != 0 {
        return Check::pass(
            ID,
            format!(
                "devices/issue_discards = {} ({origin}): extents freed by lvremove and lvreduce are discarded on the SSD",
                current.value
            ),
        );
    }
    let consequence = "extents freed by lvremove and lvreduce stay allocated on the SSD (fstrim cannot reach free PV space)";
    if !ctx.fix {
        return Check::warn(
            ID,
            format!("devices/issue_discards = 0 ({origin}): {consequence}"),
            issue_discards_fix(sysroot),
        );
    }
    let path = lvmlocal_path(sysroot);
    if let Err(e) = lvm::write_issue_discards(&path) {
        return Check::warn(
            ID,
            format!(
                "devices/issue_discards = 0 ({origin}); --fix could not write {}: {e:#}",
                path.display()
            ),
            issue_discards_fix(sysroot),
        );
    }
    let done = format!(
        "set devices/issue_discards = 1 in {} (was 0)",
        path.display()
    );
    facts.fix_applied = Some(done.clone());
    match lvm::issue_discards(sysroot) {
        Ok(after) if after.value != 0 => {
            facts.issue_discards = Some(after.clone());
            Check::pass(
                ID,
                format!(
                    "{done}; lvmconfig now reads issue_discards = {}",
                    after.value
                ),
            )
        }
        Ok(after) => Check::warn(
            ID,
            format!(
                "{done}, but lvmconfig still reads issue_discards = {}: another setting overrides lvmlocal.conf",
                after.value
            ),
            format!(
                "find the overriding setting: lvmconfig --type diff in {}",
                lvm::config_dir(sysroot).display()
            ),
        ),
        Err(e) => Check::warn(
            ID,
            format!("{done}, but lvmconfig can no longer read the configuration: {e:#}"),
            format!(
                "correct {} (lvmconfig --validate names the error)",
                path.display()
            ),
        ),
    }
}

fn gib_ceil(bytes: f64) -> u64 {
    ((bytes / GIB as f64).ceil() as u64).max(1)
}

/// `lvcreate` for the pool: as large as the profile could ever fill, within the VG's free
/// space when that is known.
fn lvcreate_fix(spec: &PoolSpec, vg: Option<&VgRow>) -> String {
    let mut size = gib_ceil(spec.needs_disk as f64);
    if let Some(free) = vg.and_then(|v| v.vg_free) {
        // Leave room for the pool's metadata and its spare.
        let usable = (free as f64 * 0.95 / GIB as f64).floor() as u64;
        if usable >= 1 {
            size = size.min(usable);
        }
    }
    format!(
        "lvcreate --type thin-pool --discards passdown -L {size}G -n {} {}",
        spec.pool, spec.vg
    )
}

fn pool_checks(ctx: &CheckContext<'_>, demand: &Demand, facts: &mut LvmFacts) -> Vec<Check> {
    const POOL: &str = "lvm.thin-pool";
    const DISCARDS: &str = "lvm.thin-pool-discards";
    const FILL: &str = "lvm.thin-pool-fill";
    let all_skip = |why: &str| {
        vec![
            Check::skip(POOL, why.to_string()),
            Check::skip(DISCARDS, why.to_string()),
            Check::skip(FILL, why.to_string()),
        ]
    };
    let spec = match demand {
        Demand::None(why) => return all_skip(why),
        Demand::Incomplete { profile } => {
            return vec![
                Check::fail(
                    POOL,
                    format!(
                        "profile {profile} says backend = \"lvm-thin\" but names no [storage] vg and pool"
                    ),
                    "set [storage] vg = \"<volume group>\" and pool = \"<thin pool>\" in the profile",
                ),
                Check::skip(DISCARDS, "no thin pool named"),
                Check::skip(FILL, "no thin pool named"),
            ];
        }
        Demand::Pool(spec) => spec,
    };
    let name = format!("{}/{}", spec.vg, spec.pool);
    let no_pool = |why: &str| {
        vec![
            Check::skip(DISCARDS, format!("no thin pool {name}: {why}")),
            Check::skip(FILL, format!("no thin pool {name}: {why}")),
        ]
    };
    let source = if facts.lvm.is_none() {
        LvmSource::Unavailable("lvm2 is not installed".into())
    } else {
        LvmSource::for_sysroot(ctx.sysroot)
    };
    facts.source = Some(source.label().to_string());
    let mut checks = Vec::new();
    if let LvmSource::Unavailable(why) = &source {
        if facts.lvm.is_none() && spec.required {
            checks.push(Check::fail(
                POOL,
                format!("{why}, and profile {} needs thin pool {name}", spec.profile),
                lvm2_fix(ctx.sysroot),
            ));
        } else {
            checks.push(Check::skip(
                POOL,
                format!(
                    "{name}: {why}; lab falls back to qcow2 in {}",
                    spec.fallback.display()
                ),
            ));
        }
        checks.extend(no_pool(why));
        return checks;
    }
    let rows = match source.lvs(&spec.vg, &spec.pool) {
        Ok(rows) => rows,
        Err(e) => {
            let summary = format!("cannot read thin pool {name}: {e:#}");
            let fix = "run lab check as root: LVM's reports need root";
            checks.push(if spec.required {
                Check::fail(POOL, summary, fix)
            } else {
                Check::warn(POOL, summary, fix)
            });
            checks.extend(no_pool("its state is unknown"));
            return checks;
        }
    };
    let vg = source.vg(&spec.vg).ok().flatten();
    facts.vg = vg.clone();
    let Some(pool) = ThinPool::find(&rows, &spec.vg, &spec.pool) else {
        if let Some(other) = rows.iter().find(|r| r.lv_name == spec.pool) {
            let summary = format!(
                "{name} exists but is a {} LV, not a thin pool",
                if other.segtype.is_empty() {
                    "plain"
                } else {
                    &other.segtype
                }
            );
            let fix = format!(
                "set [storage] pool in profile {} to a free name and create it: {}",
                spec.profile,
                lvcreate_fix(spec, vg.as_ref())
                    .replace(&format!("-n {} ", spec.pool), "-n lab-pool ")
            );
            checks.push(if spec.required {
                Check::fail(POOL, summary, fix)
            } else {
                Check::warn(POOL, summary, fix)
            });
            checks.extend(no_pool("the LV is not a thin pool"));
            return checks;
        }
        match &vg {
            Some(v) => {
                let free = v
                    .vg_free
                    .map(|f| format!(" ({} free)", ByteSize(f)))
                    .unwrap_or_default();
                let summary = format!(
                    "no thin pool {name} in VG {}{free}{}",
                    spec.vg,
                    if spec.required {
                        String::new()
                    } else {
                        format!(
                            "; lab falls back to qcow2 overlays in {}",
                            spec.fallback.display()
                        )
                    }
                );
                let fix = lvcreate_fix(spec, Some(v));
                checks.push(if spec.required {
                    Check::fail(POOL, summary, fix)
                } else {
                    Check::warn(POOL, summary, fix)
                });
            }
            None if spec.required => checks.push(Check::fail(
                POOL,
                format!("no VG {}, so no thin pool {name}", spec.vg),
                format!(
                    "vgcreate {} /dev/<partition on an SSD> && {}",
                    spec.vg,
                    lvcreate_fix(spec, None)
                ),
            )),
            None => checks.push(Check::skip(
                POOL,
                format!(
                    "no VG {} (backend auto): lab uses qcow2 overlays in {}",
                    spec.vg,
                    spec.fallback.display()
                ),
            )),
        }
        checks.extend(no_pool("it does not exist"));
        return checks;
    };
    facts.thin_pool = Some(pool.clone());

    let size = pool
        .size
        .map(|s| format!(" of {}", ByteSize(s)))
        .unwrap_or_default();
    checks.push(Check::pass(
        POOL,
        format!(
            "{name}: thin pool{size}, {} ({})",
            if pool.active {
                "active"
            } else {
                "inactive (lab activates it)"
            },
            source.label()
        ),
    ));
    checks.push(pool_discards_check(&name, &pool, spec.required));
    checks.push(pool_fill_check(&name, &pool, vg.as_ref()));
    checks
}

fn pool_discards_check(name: &str, pool: &ThinPool, required: bool) -> Check {
    const ID: &str = "lvm.thin-pool-discards";
    let mode = pool.discards.as_str();
    match &pool.discards {
        PoolDiscards::Passdown => Check::pass(
            ID,
            format!(
                "{name}: discards passdown: space freed in VMs returns to the pool and to the SSD"
            ),
        ),
        PoolDiscards::Nopassdown => Check::warn(
            ID,
            format!(
                "{name}: discards nopassdown: freed space returns to the pool but the SSD is never told"
            ),
            format!("lvchange --discards passdown {name}"),
        ),
        PoolDiscards::Ignore => {
            let summary = format!(
                "{name}: discards ignore: space freed inside VMs never returns to the pool, which fills up for good"
            );
            // Changing to or from ignore needs the pool inactive.
            let fix = format!(
                "lvchange -an {name} && lvchange --discards passdown {name} && lvchange -ay {name}"
            );
            if required {
                Check::fail(ID, summary, fix)
            } else {
                Check::warn(ID, summary, fix)
            }
        }
        PoolDiscards::Unknown(_) => Check::warn(
            ID,
            format!("{name}: discards mode {mode:?} is not one lab knows"),
            format!("lvchange --discards passdown {name}"),
        ),
    }
}

fn pool_fill_check(name: &str, pool: &ThinPool, vg: Option<&VgRow>) -> Check {
    const ID: &str = "lvm.thin-pool-fill";
    let (Some(data), Some(meta)) = (pool.data_percent, pool.metadata_percent) else {
        return Check::skip(
            ID,
            format!(
                "{name} is inactive: LVM reports its fill once it is active (lvchange -ay {name})"
            ),
        );
    };
    let of = |size: Option<u64>| {
        size.map(|s| format!(" of {}", ByteSize(s)))
            .unwrap_or_default()
    };
    let summary = format!(
        "{name}: data {data:.1}%{}, metadata {meta:.1}%{}",
        of(pool.size),
        of(pool.metadata_size)
    );
    let mut fixes = Vec::new();
    let mut worst = 0.0f64;
    if data >= FILL_WARN {
        worst = worst.max(data);
        let n = match pool.size {
            Some(size) => gib_ceil(size as f64 * (data / FILL_TARGET - 1.0)),
            None => 10,
        };
        let mut fix = format!("lvextend -L +{n}G {name}");
        if let Some(free) = vg.and_then(|v| v.vg_free)
            && free < n * GIB
        {
            fix.push_str(&format!(
                " (VG has only {} free: vgextend {} /dev/<new PV> first)",
                ByteSize(free),
                pool.vg
            ));
        }
        fixes.push(fix);
    }
    if meta >= FILL_WARN {
        worst = worst.max(meta);
        let m = match pool.metadata_size {
            Some(size) => {
                ((size as f64 * (meta / FILL_TARGET - 1.0) / MIB as f64).ceil() as u64).max(16)
            }
            None => 128,
        };
        fixes.push(format!("lvextend --poolmetadatasize +{m}M {name}"));
    }
    if worst >= FILL_FAIL {
        Check::fail(
            ID,
            format!("{summary}: at {FILL_FAIL:.0}% a thin pool is about to stop every VM on it"),
            fixes.join("\n"),
        )
    } else if worst >= FILL_WARN {
        Check::warn(
            ID,
            format!("{summary}: {FILL_WARN:.0}% or more used"),
            fixes.join("\n"),
        )
    } else {
        Check::pass(ID, summary)
    }
}

fn thin_check_check(ctx: &CheckContext<'_>, demand: &Demand, facts: &mut LvmFacts) -> Check {
    const ID: &str = "lvm.thin-check";
    let spec = match demand {
        Demand::None(why) => return Check::skip(ID, why.clone()),
        Demand::Incomplete { .. } => return Check::skip(ID, "no thin pool named"),
        Demand::Pool(spec) => spec,
    };
    let sysroot = ctx.sysroot;
    facts.thin_check = tools::installed(sysroot, "thin_check");
    match &facts.thin_check {
        Some(path) => {
            if sysroot.is_live() {
                let version = Cmd::new(path)
                    .arg("-V")
                    .timeout(Duration::from_secs(10))
                    .run()
                    .ok()
                    .map(|o| o.stdout.trim().to_string())
                    .filter(|v| !v.is_empty());
                facts.thin_check_version = version.clone();
                Check::pass(
                    ID,
                    format!(
                        "thin_check {} ({})",
                        version.as_deref().unwrap_or("(version unknown)"),
                        path.display()
                    ),
                )
            } else {
                Check::pass(
                    ID,
                    format!("thin_check installed ({} in the sysroot)", path.display()),
                )
            }
        }
        None => {
            let summary = format!(
                "thin_check is not installed: LVM refuses to activate thin pool {}/{} without it",
                spec.vg, spec.pool
            );
            let fix = install_fix(
                sysroot,
                "thin-provisioning-tools",
                "device-mapper-persistent-data",
            );
            if spec.required {
                Check::fail(ID, summary, fix)
            } else {
                Check::warn(ID, summary, fix)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Status, StorageTarget};
    use crate::profile::{Profile, ProfileSource};
    use std::path::Path;

    fn fixture_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts")
            .join(name)
    }

    fn profile(name: &str) -> Profile {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/profiles")
            .join(format!("{name}.toml"));
        Profile::load(path.to_str().unwrap()).unwrap()
    }

    fn run_at(root: &Path, profile: Option<&Profile>, fix: bool) -> Report {
        let sysroot = Sysroot::at(root).unwrap();
        let ctx = CheckContext {
            sysroot: &sysroot,
            profile,
            storage: StorageTarget::Path {
                path: "/var/lib/lab/images".into(),
                origin: "test".into(),
            },
            connect: "test:///default",
            fix,
            throughput: false,
        };
        let mut report = Report::default();
        check(&ctx, &mut report);
        report
    }

    fn run(name: &str, profile: Option<&Profile>) -> Report {
        run_at(&fixture_dir(name), profile, false)
    }

    fn get<'a>(report: &'a Report, id: &str) -> &'a Check {
        report.get(id).unwrap_or_else(|| panic!("no {id}"))
    }

    fn have_lvmconfig() -> bool {
        let ok = tools::find_program("lvmconfig").is_some();
        if !ok {
            eprintln!("lvmconfig is not installed here: skipping");
        }
        ok
    }

    /// A fixture copied to a tempdir, for tests that change it.
    fn copy_fixture(name: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", fixture_dir(name).display()))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        dir
    }

    #[test]
    fn ids_in_order_with_reasons_to_skip_without_a_profile() {
        let report = run("lvm-discards-on", None);
        let ids: Vec<&str> = report.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "lvm.installed",
                "lvm.issue-discards",
                "lvm.thin-pool",
                "lvm.thin-pool-discards",
                "lvm.thin-pool-fill",
                "lvm.thin-check"
            ]
        );
        for id in &ids[2..] {
            let c = get(&report, id);
            assert_eq!(c.status, Status::Skip);
            assert!(c.summary.contains("--profile"), "{}", c.summary);
        }
        assert!(report.facts.contains_key("lvm"));
    }

    #[test]
    fn installed_with_device_mapper_passes() {
        let c = run("lvm-discards-on", None);
        let c = get(&c, "lvm.installed");
        assert_eq!(c.status, Status::Pass);
        assert!(c.summary.contains("/usr/sbin/lvm"), "{}", c.summary);
    }

    #[test]
    fn lvm_missing_warns_unless_the_profile_needs_it() {
        let report = run("lvm-missing", None);
        let c = get(&report, "lvm.installed");
        assert_eq!(c.status, Status::Warn);
        assert!(c.summary.contains("qcow2"), "{}", c.summary);
        // lvm-missing is Ubuntu.
        assert_eq!(
            c.fix.as_deref(),
            Some("apt install lvm2 thin-provisioning-tools")
        );
        assert_eq!(get(&report, "lvm.issue-discards").status, Status::Skip);

        let thin = profile("lvm-thin");
        let report = run("lvm-missing", Some(&thin));
        assert_eq!(get(&report, "lvm.installed").status, Status::Fail);
        assert_eq!(get(&report, "lvm.thin-pool").status, Status::Fail);
        let tc = get(&report, "lvm.thin-check");
        assert_eq!(tc.status, Status::Fail);
        assert_eq!(
            tc.fix.as_deref(),
            Some("apt install thin-provisioning-tools")
        );
    }

    #[test]
    fn no_device_mapper_means_no_thin_pools() {
        let dir = copy_fixture("lvm-discards-on");
        std::fs::write(
            dir.path().join("proc/misc"),
            "229 fuse\n237 loop-control\n232 kvm\n",
        )
        .unwrap();
        let report = run_at(dir.path(), None, false);
        let c = get(&report, "lvm.installed");
        assert_eq!(c.status, Status::Warn);
        assert!(c.summary.contains("no device-mapper"), "{}", c.summary);
        assert!(
            c.fix
                .as_deref()
                .unwrap()
                .starts_with("modprobe dm_thin_pool")
        );
        let thin = profile("lvm-thin");
        let report = run_at(dir.path(), Some(&thin), false);
        assert_eq!(get(&report, "lvm.installed").status, Status::Fail);
    }

    #[test]
    fn issue_discards_on_and_off() {
        if !have_lvmconfig() {
            return;
        }
        let report = run("lvm-discards-on", None);
        let c = get(&report, "lvm.issue-discards");
        assert_eq!(c.status, Status::Pass);
        assert!(
            c.summary.starts_with("devices/issue_discards = 1"),
            "{}",
            c.summary
        );

        for name in ["lvm-discards-off", "lvm-discards-off-in-lvmlocal"] {
            let report = run(name, None);
            let c = get(&report, "lvm.issue-discards");
            assert_eq!(c.status, Status::Warn, "{name}");
            assert!(
                c.summary.starts_with("devices/issue_discards = 0"),
                "{}",
                c.summary
            );
            let fix = c.fix.as_deref().unwrap();
            assert!(
                fix.contains("etc/lvm/lvmlocal.conf:\ndevices {\n\tissue_discards = 1\n}"),
                "{fix}"
            );
            assert_eq!(report.facts["lvm"]["issue_discards"]["value"], 0);
        }
    }

    #[test]
    fn fix_edits_the_devices_section_and_proves_it_took() {
        if !have_lvmconfig() {
            return;
        }
        let dir = copy_fixture("lvm-discards-off-in-lvmlocal");
        let conf = dir.path().join("etc/lvm/lvmlocal.conf");
        let before = std::fs::read_to_string(&conf).unwrap();
        let report = run_at(dir.path(), None, true);
        let c = get(&report, "lvm.issue-discards");
        assert_eq!(c.status, Status::Pass, "{}", c.summary);
        assert!(
            c.summary
                .contains("(was 0); lvmconfig now reads issue_discards = 1"),
            "{}",
            c.summary
        );
        let after = std::fs::read_to_string(&conf).unwrap();
        assert_eq!(
            after,
            before.replace("\tissue_discards = 0\n", "\tissue_discards = 1\n")
        );
        assert!(report.facts["lvm"]["fix_applied"].is_string());
        // A second run finds nothing to do.
        let report = run_at(dir.path(), None, true);
        assert!(
            get(&report, "lvm.issue-discards")
                .summary
                .starts_with("devices/issue_discards = 1")
        );
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), after);
    }

    #[test]
    fn fix_creates_lvmlocal_conf_when_there_is_none() {
        if !have_lvmconfig() {
            return;
        }
        let dir = copy_fixture("lvm-discards-off");
        std::fs::remove_file(dir.path().join("etc/lvm/lvmlocal.conf")).unwrap();
        let report = run_at(dir.path(), None, true);
        assert_eq!(get(&report, "lvm.issue-discards").status, Status::Pass);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/lvm/lvmlocal.conf")).unwrap(),
            "devices {\n\tissue_discards = 1\n}\n"
        );
    }

    #[test]
    fn a_healthy_pool_passes_everything() {
        let thin = profile("lvm-thin");
        let report = run("lvm-pool-50", Some(&thin));
        for id in [
            "lvm.thin-pool",
            "lvm.thin-pool-discards",
            "lvm.thin-pool-fill",
            "lvm.thin-check",
        ] {
            assert_eq!(
                get(&report, id).status,
                Status::Pass,
                "{id}: {}",
                get(&report, id).summary
            );
        }
        let fill = get(&report, "lvm.thin-pool-fill");
        assert_eq!(
            fill.summary,
            "vg_lab/lab-pool: data 50.0% of 100GiB, metadata 12.4% of 104MiB"
        );
        assert_eq!(report.facts["lvm"]["thin_pool"]["data_percent"], 50.02);
        assert_eq!(report.facts["lvm"]["source"], "recorded lvs report");
    }

    #[test]
    fn a_pool_at_85_percent_with_nopassdown_warns_twice() {
        let auto = profile("lvm-auto");
        let report = run("lvm-pool-85", Some(&auto));
        let d = get(&report, "lvm.thin-pool-discards");
        assert_eq!(d.status, Status::Warn);
        assert_eq!(
            d.fix.as_deref(),
            Some("lvchange --discards passdown vg_lab/lab-pool")
        );
        let f = get(&report, "lvm.thin-pool-fill");
        assert_eq!(f.status, Status::Warn);
        assert!(f.summary.contains("data 85.3%"), "{}", f.summary);
        // 85.31% of 100 GiB brought back to 70%: 22 GiB more.
        assert_eq!(f.fix.as_deref(), Some("lvextend -L +22G vg_lab/lab-pool"));
    }

    #[test]
    fn a_pool_at_97_percent_fails_with_data_and_metadata_fixes() {
        let thin = profile("lvm-thin");
        let report = run("lvm-pool-97", Some(&thin));
        let f = get(&report, "lvm.thin-pool-fill");
        assert_eq!(f.status, Status::Fail);
        let fix = f.fix.as_deref().unwrap();
        let lines: Vec<&str> = fix.lines().collect();
        assert_eq!(lines.len(), 2, "{fix}");
        assert!(
            lines[0].starts_with("lvextend -L +39G vg_lab/lab-pool"),
            "{fix}"
        );
        assert!(
            lines[0].contains("vgextend vg_lab"),
            "only 10 GiB free: {fix}"
        );
        assert_eq!(lines[1], "lvextend --poolmetadatasize +18M vg_lab/lab-pool");
    }

    #[test]
    fn an_inactive_pool_has_no_fill_to_judge() {
        let thin = profile("lvm-thin");
        let report = run("lvm-pool-inactive", Some(&thin));
        let pool = get(&report, "lvm.thin-pool");
        assert_eq!(pool.status, Status::Pass);
        assert!(pool.summary.contains("inactive"), "{}", pool.summary);
        let fill = get(&report, "lvm.thin-pool-fill");
        assert_eq!(fill.status, Status::Skip);
        assert!(
            fill.summary.contains("lvchange -ay vg_lab/lab-pool"),
            "{}",
            fill.summary
        );
    }

    #[test]
    fn ignored_discards_fail_for_lvm_thin_and_warn_for_auto() {
        let fix = "lvchange -an vg_lab/lab-pool && lvchange --discards passdown vg_lab/lab-pool && lvchange -ay vg_lab/lab-pool";
        let report = run("lvm-pool-ignore", Some(&profile("lvm-thin")));
        let c = get(&report, "lvm.thin-pool-discards");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.fix.as_deref(), Some(fix));
        let report = run("lvm-pool-ignore", Some(&profile("lvm-auto")));
        assert_eq!(get(&report, "lvm.thin-pool-discards").status, Status::Warn);
    }

    #[test]
    fn a_missing_vg_fails_for_lvm_thin_and_falls_back_for_auto() {
        let report = run("lvm-no-vg", Some(&profile("lvm-thin")));
        let c = get(&report, "lvm.thin-pool");
        assert_eq!(c.status, Status::Fail);
        // Base 20 GiB plus two 10 GiB VMs, every block written.
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "vgcreate vg_lab /dev/<partition on an SSD> && lvcreate --type thin-pool --discards passdown -L 40G -n lab-pool vg_lab"
            )
        );
        assert_eq!(get(&report, "lvm.thin-pool-fill").status, Status::Skip);
        let report = run("lvm-no-vg", Some(&profile("lvm-auto")));
        let c = get(&report, "lvm.thin-pool");
        assert_eq!(c.status, Status::Skip);
        assert!(
            c.summary.contains("qcow2 overlays in /var/lib/lab/images"),
            "{}",
            c.summary
        );
    }

    #[test]
    fn a_vg_without_the_pool_gets_an_lvcreate_fix() {
        let dir = copy_fixture("lvm-pool-50");
        let lvs =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lvm/lvs-lv-missing.json");
        std::fs::copy(lvs, dir.path().join(".lab-recorded/lvs.json")).unwrap();
        let report = run_at(dir.path(), Some(&profile("lvm-auto")), false);
        let c = get(&report, "lvm.thin-pool");
        assert_eq!(c.status, Status::Warn);
        assert!(c.summary.contains("(250GiB free)"), "{}", c.summary);
        assert_eq!(
            c.fix.as_deref(),
            Some("lvcreate --type thin-pool --discards passdown -L 40G -n lab-pool vg_lab")
        );
    }

    #[test]
    fn an_lv_that_is_not_a_thin_pool_is_named() {
        let dir = copy_fixture("lvm-pool-50");
        let lvs = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/lvm/lvs-vg-all-segments.json");
        std::fs::copy(lvs, dir.path().join(".lab-recorded/lvs.json")).unwrap();
        let text = "name = \"t\"\n[storage]\nbackend = \"lvm-thin\"\nvg = \"vg_lab\"\npool = \"plain\"\n[base]\nkernel = \"host\"\n[[vm]]\nname = \"a\"\n";
        let p = Profile::parse(text, ProfileSource::File("t.toml".into())).unwrap();
        let report = run_at(dir.path(), Some(&p), false);
        let c = get(&report, "lvm.thin-pool");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.summary
                .contains("vg_lab/plain exists but is a linear LV, not a thin pool"),
            "{}",
            c.summary
        );
        assert!(
            c.fix
                .as_deref()
                .unwrap()
                .contains("lvcreate --type thin-pool")
        );
    }

    #[test]
    fn thin_check_missing_names_the_package_of_the_distribution() {
        let dir = copy_fixture("lvm-pool-50");
        std::fs::remove_file(dir.path().join("usr/sbin/thin_check")).unwrap();
        let report = run_at(dir.path(), Some(&profile("lvm-auto")), false);
        let c = get(&report, "lvm.thin-check");
        assert_eq!(c.status, Status::Warn);
        // lvm-pool-50 is Fedora.
        assert_eq!(
            c.fix.as_deref(),
            Some("dnf install device-mapper-persistent-data")
        );
        let report = run_at(dir.path(), Some(&profile("lvm-thin")), false);
        assert_eq!(get(&report, "lvm.thin-check").status, Status::Fail);
    }

    #[test]
    fn qcow2_and_incomplete_profiles() {
        let report = run("lvm-pool-50", Some(&profile("qcow2")));
        for id in [
            "lvm.thin-pool",
            "lvm.thin-pool-discards",
            "lvm.thin-pool-fill",
            "lvm.thin-check",
        ] {
            let c = get(&report, id);
            assert_eq!(c.status, Status::Skip);
            assert!(c.summary.contains("backend qcow2"), "{}", c.summary);
        }
        // An lvm-thin profile without vg and pool never gets this far: loading refuses it
        // (tests/fixtures/profiles/bad/lvm-thin-without-pool.toml).
    }

    #[test]
    fn without_recorded_reports_a_sysroot_skips_the_pool() {
        let report = run("lvm-discards-on", Some(&profile("lvm-auto")));
        let c = get(&report, "lvm.thin-pool");
        assert_eq!(c.status, Status::Skip);
        assert!(
            c.summary.contains(".lab-recorded/lvs.json"),
            "{}",
            c.summary
        );
    }

    #[test]
    fn install_fix_follows_os_release() {
        let dir = tempfile::tempdir().unwrap();
        let root = Sysroot::at(dir.path()).unwrap();
        assert!(lvm2_fix(&root).contains(" or dnf install"));
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/os-release"),
            "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
        )
        .unwrap();
        assert_eq!(
            lvm2_fix(&root),
            "dnf install lvm2 device-mapper-persistent-data"
        );
        std::fs::write(
            dir.path().join("etc/os-release"),
            "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n",
        )
        .unwrap();
        assert_eq!(lvm2_fix(&root), "apt install lvm2 thin-provisioning-tools");
    }
}

#[cfg(test)]
mod real_capture_tests {
    //! The pool checks on `lvs` output captured from a real, active thin pool in the TCG
    //! guest harness (tests/fixtures/lvm/guest-*.json).
    use super::*;
    use crate::check::Status;
    use crate::host::lvm::{ThinPool, parse_lvs};
    use std::path::Path;

    fn pool(file: &str) -> ThinPool {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/lvm")
            .join(file);
        let rows = parse_lvs(&std::fs::read_to_string(path).unwrap()).unwrap();
        ThinPool::find(&rows, "vg_lab", "lab-pool").unwrap()
    }

    #[test]
    fn fill_levels_of_a_real_pool_give_pass_warn_fail() {
        for (file, status, pct) in [
            ("guest-lvs-pool-00.json", Status::Pass, "data 0.0%"),
            ("guest-lvs-pool-50.json", Status::Pass, "data 50.0%"),
            ("guest-lvs-pool-85.json", Status::Warn, "data 85.1%"),
            ("guest-lvs-pool-97.json", Status::Fail, "data 97.1%"),
        ] {
            let p = pool(file);
            assert!(p.active, "{file}");
            let c = pool_fill_check("lvm.thin-pool-fill", &p, None);
            assert_eq!(c.status, status, "{file}: {}", c.summary);
            assert!(c.summary.contains(pct), "{file}: {}", c.summary);
            if status != Status::Pass {
                assert!(c.fix.as_deref().unwrap().contains("lvextend"), "{file}");
            }
        }
    }

    #[test]
    fn discard_modes_of_a_real_pool() {
        let passdown = pool("guest-lvs-pool-50.json");
        assert_eq!(
            pool_discards_check("x", &passdown, true).status,
            Status::Pass
        );
        let nopassdown = pool("guest-lvs-pool-nopassdown.json");
        assert_eq!(
            pool_discards_check("x", &nopassdown, true).status,
            Status::Warn
        );
        let ignore = pool("guest-lvs-pool-ignore.json");
        assert_eq!(pool_discards_check("x", &ignore, true).status, Status::Fail);
    }
}
