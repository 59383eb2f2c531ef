//! LVM thin backend: one thin pool for all labs, a base per profile as a thin LV (made
//! read-only once sealed), and a thin snapshot of it per VM, so a clone costs the same
//! whatever the size of its base.
//!
//! Ownership lives in LVM tags set in the same `lvcreate` that makes a volume: `lab`,
//! `lab-profile-P`, `lab-role-base|clone|snapshot`, on clones and snapshot volumes
//! `lab-vm-V`, and on snapshot volumes `lab-snapshot-NAME`. An LV without them is never
//! changed, whatever its name. Every LVM command runs as `lvm COMMAND ...` through the
//! runner, so `-v` shows each command line.
//!
//! A whole-lab snapshot (`crate::snapshot`) keeps each VM's disk as a thin snapshot of its
//! clone (`lab-P-VM.NAME`, role `snapshot`); `lab restore` lays the clone again as a thin
//! snapshot of that. Neither copies data.
//!
//! A thin pool that fills up is how "thin goes weirdly wrong" (every VM on it stalls, then
//! gets I/O errors), so each new volume is refused while the pool is near full: see
//! [`FillLimit`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::{InUse, Storage, Usage, Volume, user_of};
use crate::host::Sysroot;
use crate::host::lvm::{self, IssueDiscards, LvRow, THIN_LVS_FIELDS, ThinPool};
use crate::libvirt::Libvirt;
use crate::mark::{Owner, VolumeRole};
use crate::names;
use crate::runner::Cmd;
use crate::size::{ByteSize, GIB, MIB};
use crate::storage::ObservedVolume;

const ROLE_BASE: &str = "base";
const ROLE_CLONE: &str = "clone";
const ROLE_SNAPSHOT: &str = "snapshot";

/// Extra LVM configuration for every command lab runs: a guest without udev, or a test
/// that must not write archives into the host's `/etc/lvm`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LvmConfig {
    /// Given as `--config TEXT` to every command (`backup { backup = 0 archive = 0 }`).
    pub config: Option<String>,
    /// `LVM_SYSTEM_DIR`: read `lvm.conf` and `lvmlocal.conf` from here, not `/etc/lvm`.
    pub system_dir: Option<PathBuf>,
}

/// When a pool is too full to take one more volume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FillLimit {
    /// Neither data nor metadata use may pass this, in percent of the pool.
    pub threshold: f64,
    /// A new snapshot shares every block of its base, so at first it takes nothing; then
    /// its VM writes. "Could push past the threshold" is read as: the pool must still hold
    /// this share of itself (percentage points) below the threshold for each new clone.
    pub clone_headroom: f64,
}

impl Default for FillLimit {
    /// A clone is refused once data or metadata is past 75%, so that it has at least 5%
    /// of the pool to write before the pool passes 80%.
    fn default() -> Self {
        FillLimit {
            threshold: 80.0,
            clone_headroom: 5.0,
        }
    }
}

/// What a new volume will take from the pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Need {
    /// A snapshot or an empty base: nothing at once, then what its writer writes
    /// ([`FillLimit::clone_headroom`]).
    Headroom,
    /// Bytes written at once (an imported image's allocated data).
    Data(u64),
}

/// Whether `pool` can take a new volume. The refusal names the pool and its fill and says
/// how to extend it.
pub fn judge_fill(pool: &ThinPool, need: Need, limit: FillLimit) -> Result<(), String> {
    let name = format!("{}/{}", pool.vg, pool.name);
    let (Some(size), Some(data)) = (pool.size, pool.data_percent) else {
        return Err(format!(
            "thin pool {name} is not active, so its fill cannot be read: activate it \
             (lvchange -ay {name})"
        ));
    };
    let size = size as f64;
    let allowed = (limit.threshold - limit.clone_headroom).max(0.0);
    let mut found = Vec::new();
    let mut fixes = Vec::new();

    let used = data / 100.0 * size;
    let (after, data_allowed, what) = match need {
        Need::Headroom => (data, allowed, "a new volume".to_string()),
        Need::Data(bytes) => (
            (used + bytes as f64) / size * 100.0,
            limit.threshold,
            format!("writing {}", ByteSize(bytes)),
        ),
    };
    if after > data_allowed {
        let added = match need {
            Need::Headroom => 0.0,
            Need::Data(bytes) => bytes as f64,
        };
        let wanted = (used + added) / (data_allowed / 100.0).max(0.01);
        let grow = ((wanted - size) / GIB as f64).ceil().max(1.0) as u64;
        found.push(match need {
            Need::Headroom => format!("data is {data:.2}% used"),
            Need::Data(_) => format!("data is {data:.2}% used and would reach {after:.1}%"),
        });
        fixes.push(format!("lvextend -L +{grow}G {name}"));
    }
    if let (Some(meta), Some(meta_size)) = (pool.metadata_percent, pool.metadata_size)
        && meta > allowed
    {
        let meta_size = meta_size as f64;
        let wanted = meta / 100.0 * meta_size / (allowed / 100.0).max(0.01);
        let grow = ((wanted - meta_size) / MIB as f64).ceil().max(1.0) as u64;
        found.push(format!("metadata is {meta:.2}% used"));
        fixes.push(format!("lvextend --poolmetadatasize +{grow}M {name}"));
    }
    if found.is_empty() {
        return Ok(());
    }
    let rule = match need {
        Need::Headroom => format!(
            "lab keeps {:.0}% of the pool free below {:.0}% for each new volume to write into",
            limit.clone_headroom, limit.threshold
        ),
        Need::Data(_) => format!(
            "the pool must stay under {:.0}% ({:.0}% for metadata)",
            limit.threshold, allowed
        ),
    };
    Err(format!(
        "thin pool {name} is too full for {what}: {}; {rule}, because a full thin pool \
         stalls every VM on it. Extend it: {} (the volume group needs that much free \
         space: vgs {}), or free space: remove labs you no longer need, fstrim inside the VMs",
        found.join(", "),
        fixes.join("; "),
        pool.vg
    ))
}

/// An LVM size argument: `4g`, `512m`, or bytes (`123b`); LVM rounds it up to its extent.
pub fn lvm_size(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{}g", bytes / GIB)
    } else if bytes.is_multiple_of(MIB) {
        format!("{}m", bytes / MIB)
    } else {
        format!("{bytes}b")
    }
}

/// The tags lab puts on a volume, in the order `lvcreate` is given them.
pub fn tags(profile: &str, vm: Option<&str>, role: &str) -> Vec<String> {
    let mut tags = vec![
        names::LV_TAG.to_string(),
        names::profile_tag(profile),
        names::role_tag(role),
    ];
    if let Some(vm) = vm {
        tags.push(names::vm_tag(vm));
    }
    tags
}

/// Thin pool `VG/POOL` as lab's storage.
pub struct LvmThinStorage {
    vg: String,
    pool: String,
    lvm: PathBuf,
    config: LvmConfig,
    limit: FillLimit,
}

impl LvmThinStorage {
    pub fn new(vg: impl Into<String>, pool: impl Into<String>) -> Self {
        LvmThinStorage {
            vg: vg.into(),
            pool: pool.into(),
            lvm: crate::host::tools::find_program("lvm").unwrap_or_else(|| PathBuf::from("lvm")),
            config: LvmConfig::default(),
            limit: FillLimit::default(),
        }
    }

    pub fn with_config(mut self, config: LvmConfig) -> Self {
        self.config = config;
        self
    }

    pub fn with_fill_limit(mut self, limit: FillLimit) -> Self {
        self.limit = limit;
        self
    }

    pub fn vg(&self) -> &str {
        &self.vg
    }

    pub fn pool_name(&self) -> &str {
        &self.pool
    }

    pub fn fill_limit(&self) -> FillLimit {
        self.limit
    }

    /// `VG/LV`, as LVM commands name an LV.
    fn lv_ref(&self, lv: &str) -> String {
        format!("{}/{lv}", self.vg)
    }

    /// The block device of an active LV.
    pub fn lv_path(&self, lv: &str) -> PathBuf {
        Path::new("/dev").join(&self.vg).join(lv)
    }

    fn volume(&self, lv: String) -> Volume {
        Volume {
            path: self.lv_path(&lv),
            name: lv,
            format: "raw".into(),
        }
    }

    /// `lvm COMMAND` with lab's environment and the configuration override.
    pub fn command(&self, command: &str) -> Cmd {
        let mut cmd = lvm::lvm_cmd(&self.lvm).arg(command);
        if let Some(dir) = &self.config.system_dir {
            cmd = cmd.env("LVM_SYSTEM_DIR", dir);
        }
        if let Some(text) = &self.config.config {
            cmd = cmd.args(["--config", text]);
        }
        cmd
    }

    fn report(&self, command: &str, fields: &str, target: &str) -> Result<String> {
        let out = self
            .command(command)
            .args([
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                fields,
                target,
            ])
            .capture()?;
        lvm::judge_report(command, &out.stdout, &out.stderr, out.exit())
    }

    fn vg_exists(&self) -> Result<bool> {
        let json = self.report("vgs", "vg_name", &self.vg)?;
        Ok(lvm::parse_vgs(&json)?.iter().any(|v| v.vg_name == self.vg))
    }

    /// Every LV of the VG (none when the VG does not exist), in one `lvs`.
    pub fn rows(&self) -> Result<Vec<LvRow>> {
        let json = self
            .report("lvs", THIN_LVS_FIELDS, &self.vg)
            .with_context(|| format!("reading the LVs of volume group {}", self.vg))?;
        lvm::parse_lvs(&json)
    }

    /// The VG's LVs and the pool among them; an error naming what is missing otherwise.
    fn rows_with_pool(&self) -> Result<(Vec<LvRow>, ThinPool)> {
        let rows = self.rows()?;
        match ThinPool::find(&rows, &self.vg, &self.pool) {
            Some(pool) => Ok((rows, pool)),
            None => Err(self.missing_pool(&rows)?),
        }
    }

    fn missing_pool(&self, rows: &[LvRow]) -> Result<anyhow::Error> {
        if rows.is_empty() && !self.vg_exists()? {
            return Ok(anyhow!(
                "volume group {} does not exist (vgs lists the volume groups of this machine)",
                self.vg
            ));
        }
        if let Some(other) = rows.iter().find(|r| r.lv_name == self.pool) {
            return Ok(anyhow!(
                "{} is not a thin pool (its type is {})",
                self.lv_ref(&self.pool),
                other.segtype
            ));
        }
        Ok(anyhow!(
            "thin pool {} does not exist: create it (lvcreate --type thin-pool --discards \
             passdown -L SIZE -n {} {})",
            self.lv_ref(&self.pool),
            self.pool,
            self.vg
        ))
    }

    /// The VG's LVs and the pool, activated when it was not, so its fill can be read.
    fn active_rows(&self) -> Result<(Vec<LvRow>, ThinPool)> {
        let (rows, pool) = self.rows_with_pool()?;
        if pool.data_percent.is_some() {
            return Ok((rows, pool));
        }
        let name = self.lv_ref(&self.pool);
        self.command("lvchange")
            .args(["--activate", "y", &name])
            .run()
            .with_context(|| format!("activating thin pool {name}"))?;
        let (rows, pool) = self.rows_with_pool()?;
        if pool.data_percent.is_none() {
            bail!("thin pool {name} was activated but lvs reports no fill for it");
        }
        Ok((rows, pool))
    }

    /// The pool, active, with its fill.
    pub fn pool(&self) -> Result<ThinPool> {
        Ok(self.active_rows()?.1)
    }

    /// The `lvcreate` that makes the pool.
    ///
    /// Zeroing stays on (`--zero y`, LVM's default): a block the pool hands to a volume for
    /// a write smaller than a chunk has the rest of the chunk zeroed first, so whatever a
    /// volume never wrote reads as zeros, never as the data of a volume removed earlier.
    /// Imports rely on it: `qemu-img convert --target-is-zero` skips the zeros of an image
    /// and writes only its data. The cost is one extra write of up to a chunk (64 KiB by
    /// default) the first time a VM writes into a chunk, and none on a later write.
    /// `--discards passdown`: a discard inside a VM frees the pool's blocks and reaches
    /// the SSD.
    pub fn create_pool_cmd(&self, size: ByteSize) -> Cmd {
        self.command("lvcreate").args([
            "--type",
            "thin-pool",
            "--discards",
            "passdown",
            "--zero",
            "y",
            "--size",
            &lvm_size(size.bytes()),
            "--name",
            &self.pool,
            &self.vg,
        ])
    }

    /// Create the thin pool: only ever when asked. Refused when the VG does not exist or
    /// an LV of the pool's name does.
    pub fn create_pool(&self, size: ByteSize) -> Result<ThinPool> {
        let what = format!("thin pool {}", self.lv_ref(&self.pool));
        if !self.vg_exists()? {
            bail!(
                "cannot create {what}: volume group {} does not exist (vgs lists the volume \
                 groups of this machine)",
                self.vg
            );
        }
        let rows = self.rows()?;
        if let Some(lv) = rows.iter().find(|r| r.lv_name == self.pool) {
            bail!(
                "cannot create {what}: {} already exists ({})",
                self.lv_ref(&lv.lv_name),
                if lv.segtype == "thin-pool" {
                    "a thin pool".to_string()
                } else {
                    format!("an LV of type {}", lv.segtype)
                }
            );
        }
        self.create_pool_cmd(size)
            .run()
            .with_context(|| format!("creating {what}"))?;
        let rows = self.rows()?;
        ThinPool::find(&rows, &self.vg, &self.pool)
            .ok_or_else(|| anyhow!("{what} was created but lvs does not list it"))
    }

    /// `lvcreate` of an empty thin base, tagged as lab's.
    pub fn create_base_cmd(&self, profile: &str, size: ByteSize) -> Cmd {
        self.command("lvcreate")
            .args([
                "--type",
                "thin",
                "--virtualsize",
                &lvm_size(size.bytes()),
                "--thinpool",
                &self.pool,
                "--name",
                &names::base_volume(profile),
            ])
            .args(tag_args(&tags(profile, None, ROLE_BASE)))
            .arg(&self.vg)
    }

    /// `lvcreate` of a VM's thin snapshot of the base, tagged as lab's. A thin snapshot
    /// carries the activation-skip flag (`k`), so nothing activates it at boot; lab
    /// activates it itself with `--ignoreactivationskip` (`-K`). Writable whatever the
    /// base's permission.
    pub fn snapshot_cmd(&self, profile: &str, vm: &str) -> Cmd {
        self.clone_cmd(profile, vm, &names::base_volume(profile))
    }

    /// `lvcreate` of a VM's clone as a thin snapshot of `origin`: the base, or (`lab
    /// restore`) the VM's volume of a whole-lab snapshot.
    fn clone_cmd(&self, profile: &str, vm: &str, origin: &str) -> Cmd {
        self.command("lvcreate")
            .args([
                "--snapshot",
                "--name",
                &names::clone_volume(profile, vm),
                "--permission",
                "rw",
                "--activate",
                "y",
                "--ignoreactivationskip",
            ])
            .args(tag_args(&tags(profile, Some(vm), ROLE_CLONE)))
            .arg(self.lv_ref(origin))
    }

    /// `lvcreate` of the volume that keeps a VM's disk as whole-lab snapshot `snapshot`
    /// found it: a thin snapshot of the clone, sharing every block with it (nothing is
    /// copied). Read-only: a restore takes a new snapshot of it and never writes it. Tagged
    /// as lab's with role `snapshot` and the snapshot's name. `--setactivationskip n`: it is
    /// active (so `lvs` reads the data it maps) and activated at boot like any LV.
    pub fn snapshot_volume_cmd(&self, profile: &str, vm: &str, snapshot: &str) -> Cmd {
        let mut tags = tags(profile, Some(vm), ROLE_SNAPSHOT);
        tags.push(names::snapshot_tag(snapshot));
        self.command("lvcreate")
            .args([
                "--snapshot",
                "--name",
                &names::snapshot_volume(profile, vm, snapshot),
                "--permission",
                "r",
                "--setactivationskip",
                "n",
                "--activate",
                "y",
            ])
            .args(tag_args(&tags))
            .arg(self.lv_ref(&names::clone_volume(profile, vm)))
    }

    /// lab's snapshot volumes of `profile` in this pool: those of whole-lab snapshot
    /// `snapshot`, or all of them.
    pub fn snapshot_volumes(&self, profile: &str, snapshot: Option<&str>) -> Result<Vec<LvRow>> {
        Ok(self
            .rows()?
            .into_iter()
            .filter(|r| {
                self.is_ours(r, profile, ROLE_SNAPSHOT, None)
                    && snapshot.is_none_or(|n| r.lv_tags.contains(&names::snapshot_tag(n)))
            })
            .collect())
    }

    /// The pool, when it may take a whole-lab snapshot's volumes: refused past the fill
    /// limit as a new clone is. A snapshot volume takes no data at once, but from then on
    /// each block a VM writes is a new block of the pool. Judged before any VM is paused:
    /// once a VM's memory is saved, a refusal would leave the lab stopped.
    pub fn snapshot_room(&self) -> Result<ThinPool> {
        let pool = self.pool()?;
        judge_fill(&pool, Need::Headroom, self.limit).map_err(|e| anyhow!(e))?;
        Ok(pool)
    }

    /// Keep `vm`'s disk as whole-lab snapshot `snapshot` finds it, in a new thin snapshot
    /// volume of its clone. The caller has stopped the domain (its memory saved), so the
    /// clone is closed and consistent, and has judged the pool's fill
    /// ([`snapshot_room`](Self::snapshot_room)). Already there (a killed snapshot
    /// completed): nothing to do. Refused, with nothing made, when the clone is not lab's.
    pub fn take_snapshot_volume(&self, profile: &str, vm: &str, snapshot: &str) -> Result<()> {
        let name = names::snapshot_volume(profile, vm, snapshot);
        let clone = names::clone_volume(profile, vm);
        let rows = self.rows()?;
        if let Some(row) = rows.iter().find(|r| r.lv_name == name) {
            if self.is_ours(row, profile, ROLE_SNAPSHOT, Some(vm))
                && row.lv_tags.contains(&names::snapshot_tag(snapshot))
            {
                return Ok(());
            }
            self.refuse_existing(&rows, &name)?;
        }
        match rows.iter().find(|r| r.lv_name == clone) {
            Some(row) if self.is_ours(row, profile, ROLE_CLONE, Some(vm)) => {}
            Some(row) => bail!(
                "{} is not lab's clone of {vm} ({}): no snapshot taken of it",
                self.lv_ref(&clone),
                self.why_not_ours(row)
            ),
            None => bail!("{vm}'s disk {} is missing", self.lv_ref(&clone)),
        }
        self.snapshot_volume_cmd(profile, vm, snapshot)
            .run()
            .with_context(|| {
                format!(
                    "creating thin snapshot {} of {}",
                    self.lv_ref(&name),
                    self.lv_ref(&clone)
                )
            })?;
        Ok(())
    }

    /// `vm`'s clone laid again as a new thin snapshot of its volume of whole-lab snapshot
    /// `snapshot`: the clone (lab's, closed: the caller has stopped its domain) removed, and
    /// one of the same name, tags and path made, so the domain's XML stays as it is. Nothing
    /// is copied, and the snapshot volume stays as it was. Done again from the start by a
    /// restore that was killed halfway. The fill limit is not judged: the new clone maps
    /// what the removed one mapped at most, so the pool is no fuller than before.
    pub fn lay_clone_from_snapshot(&self, profile: &str, vm: &str, snapshot: &str) -> Result<()> {
        let from = names::snapshot_volume(profile, vm, snapshot);
        let clone = names::clone_volume(profile, vm);
        let rows = self.rows()?;
        let ours = rows.iter().find(|r| r.lv_name == from).is_some_and(|r| {
            self.is_ours(r, profile, ROLE_SNAPSHOT, Some(vm))
                && r.lv_tags.contains(&names::snapshot_tag(snapshot))
        });
        if !ours {
            bail!(
                "snapshot {snapshot} is damaged: {vm}'s volume {} is missing or not lab's",
                self.lv_ref(&from)
            );
        }
        if let Some(row) = rows.iter().find(|r| r.lv_name == clone) {
            if !self.is_ours(row, profile, ROLE_CLONE, Some(vm)) {
                bail!(
                    "{} is not lab's clone of {vm} ({}): left alone",
                    self.lv_ref(&clone),
                    self.why_not_ours(row)
                );
            }
            self.remove_lv(&clone)?;
        }
        self.clone_cmd(profile, vm, &from).run().with_context(|| {
            format!(
                "creating thin snapshot {} of {}",
                self.lv_ref(&clone),
                self.lv_ref(&from)
            )
        })?;
        Ok(())
    }

    /// Pool data the snapshot volumes of `snapshot` map, in bytes (`data_percent` of
    /// `lv_size`): blocks they share with the clones until a VM writes over them, and then
    /// theirs alone. Only reads: an inactive one (LVM reports no data for it; they are
    /// made to be active at boot) counts 0.
    pub fn snapshot_bytes(&self, profile: &str, snapshot: &str) -> Result<u64> {
        let rows = self.snapshot_volumes(profile, Some(snapshot))?;
        Ok(rows
            .iter()
            .map(|r| {
                (r.data_percent.unwrap_or(0.0) / 100.0 * r.lv_size.unwrap_or(0) as f64).round()
                    as u64
            })
            .sum())
    }

    /// Remove lab's snapshot volumes of `profile` (of `snapshot`, or all): no clone depends
    /// on one (a thin snapshot shares blocks, it is not a layer), so nothing is merged.
    /// Returns the names removed.
    pub fn remove_snapshot_volumes(
        &self,
        profile: &str,
        snapshot: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for row in self.snapshot_volumes(profile, snapshot)? {
            self.remove_lv(&row.lv_name)?;
            removed.push(row.lv_name);
        }
        Ok(removed)
    }

    /// True when `row` is lab's volume in `role` for `profile` (and `vm`) in this pool.
    fn is_ours(&self, row: &LvRow, profile: &str, role: &str, vm: Option<&str>) -> bool {
        let has = |tag: &str| row.lv_tags.iter().any(|t| t == tag);
        row.segtype == "thin"
            && row.pool_lv.as_deref() == Some(self.pool.as_str())
            && has(names::LV_TAG)
            && has(&names::profile_tag(profile))
            && has(&names::role_tag(role))
            && vm.is_none_or(|vm| has(&names::vm_tag(vm)))
    }

    /// Why `row` is not lab's volume for this purpose, for an error message.
    fn why_not_ours(&self, row: &LvRow) -> String {
        if !row.lv_tags.iter().any(|t| t == names::LV_TAG) {
            "it has no `lab` tag: someone else's".to_string()
        } else if row.segtype != "thin" || row.pool_lv.as_deref() != Some(self.pool.as_str()) {
            format!(
                "it is not a thin volume of pool {}",
                self.lv_ref(&self.pool)
            )
        } else {
            format!("its tags are {}", row.lv_tags.join(","))
        }
    }

    /// An unsealed base of lab's is the leftover of an interrupted build: it is removed so
    /// the build starts again. A sealed one, or anyone else's LV, stays.
    fn clear_unsealed_base(&self, rows: Vec<LvRow>, profile: &str) -> Result<Vec<LvRow>> {
        let name = names::base_volume(profile);
        let leftover = rows.iter().any(|r| {
            r.lv_name == name
                && self.is_ours(r, profile, ROLE_BASE, None)
                && !r.is_read_only()
                && !rows
                    .iter()
                    .any(|c| c.origin.as_deref() == Some(name.as_str()))
        });
        if !leftover {
            return Ok(rows);
        }
        crate::ui::debug(format_args!(
            "removing {}: an unsealed base left by an interrupted build",
            self.lv_ref(&name)
        ));
        self.remove_lv(&name)
            .with_context(|| format!("removing unfinished base {}", self.lv_ref(&name)))?;
        self.rows()
    }

    /// Refuse to make `lv` when an LV of that name exists: lab's (an error the caller
    /// reports) or someone else's (never touched).
    fn refuse_existing(&self, rows: &[LvRow], lv: &str) -> Result<()> {
        if let Some(row) = rows.iter().find(|r| r.lv_name == lv) {
            if row.lv_tags.iter().any(|t| t == names::LV_TAG) {
                bail!(
                    "{} already exists (lab's, tags {})",
                    self.lv_ref(lv),
                    row.lv_tags.join(",")
                );
            }
            bail!(
                "{} already exists and is not lab's: lab will not touch it",
                self.lv_ref(lv)
            );
        }
        Ok(())
    }

    fn remove_lv(&self, lv: &str) -> Result<()> {
        self.command("lvremove")
            .args(["--yes", &self.lv_ref(lv)])
            .run()
            .with_context(|| format!("removing {}", self.lv_ref(lv)))?;
        Ok(())
    }

    fn activate(&self, lv: &str) -> Result<()> {
        self.command("lvchange")
            .args([
                "--activate",
                "y",
                "--ignoreactivationskip",
                &self.lv_ref(lv),
            ])
            .run()
            .with_context(|| format!("activating {}", self.lv_ref(lv)))?;
        Ok(())
    }

    /// The effective `devices/issue_discards`: whether LVM discards the extents that
    /// `lvremove` frees (the pool's own extents, when a pool is removed or shrunk).
    pub fn issue_discards(&self) -> Result<IssueDiscards> {
        match &self.config.system_dir {
            Some(dir) => lvm::issue_discards_in(dir),
            None => lvm::issue_discards(&Sysroot::live()),
        }
    }

    /// Set `devices/issue_discards = 1` in `lvmlocal.conf` (as `lab check --fix` does) and
    /// read the effective value back.
    pub fn enable_issue_discards(&self) -> Result<IssueDiscards> {
        let dir = self
            .config
            .system_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/lvm"));
        lvm::write_issue_discards(&dir.join("lvmlocal.conf"))?;
        self.issue_discards()
    }
}

fn tag_args(tags: &[String]) -> Vec<String> {
    tags.iter()
        .flat_map(|t| ["--addtag".to_string(), t.clone()])
        .collect()
}

impl Storage for LvmThinStorage {
    fn describe(&self) -> String {
        format!("thin pool {}", self.lv_ref(&self.pool))
    }

    /// The thin volumes of this pool, lab's with owner and role (from their tags).
    fn observe(&self) -> Result<Vec<ObservedVolume>> {
        let rows: Vec<LvRow> = self
            .rows()?
            .into_iter()
            .filter(|r| r.pool_lv.as_deref() == Some(self.pool.as_str()))
            .collect();
        Ok(lab_volumes(&rows))
    }

    fn create_base(&self, profile: &str, size: ByteSize) -> Result<Volume> {
        let name = names::base_volume(profile);
        let (rows, pool) = self.active_rows()?;
        let rows = self.clear_unsealed_base(rows, profile)?;
        self.refuse_existing(&rows, &name)?;
        judge_fill(&pool, Need::Headroom, self.limit).map_err(|e| anyhow!(e))?;
        self.create_base_cmd(profile, size)
            .run()
            .with_context(|| format!("creating base {}", self.lv_ref(&name)))?;
        Ok(self.volume(name))
    }

    /// A new thin base holding a copy of `image` (any format qemu-img reads). Only the
    /// image's data is written: a new thin volume reads as zeros already.
    fn import_base_as(&self, profile: &str, image: &Path, format: Option<&str>) -> Result<Volume> {
        if !image.exists() {
            bail!("base image {} does not exist", image.display());
        }
        let info = super::qcow2::info_as(image, format)?;
        if info.format == "qcow2" {
            super::qcow2::check(image)?;
        }
        let name = names::base_volume(profile);
        let (rows, pool) = self.active_rows()?;
        let rows = self.clear_unsealed_base(rows, profile)?;
        self.refuse_existing(&rows, &name)?;
        let data = info.actual_size.unwrap_or(info.virtual_size);
        judge_fill(&pool, Need::Data(data), self.limit).map_err(|e| anyhow!(e))?;
        self.create_base_cmd(profile, ByteSize(info.virtual_size))
            .run()
            .with_context(|| format!("creating base {}", self.lv_ref(&name)))?;
        let target = self.lv_path(&name);
        let written = Cmd::new("qemu-img")
            .args([
                "convert",
                "-n",
                "--target-is-zero",
                "-f",
                &info.format,
                "-O",
                "raw",
            ])
            .arg(image)
            .arg(&target)
            .run();
        if let Err(e) = written {
            // The LV was made a moment ago by this call: nothing of it is kept.
            let _ = self.remove_lv(&name);
            return Err(e).with_context(|| {
                format!(
                    "writing {} into base {}",
                    image.display(),
                    self.lv_ref(&name)
                )
            });
        }
        Ok(self.volume(name))
    }

    fn seal_base(&self, profile: &str) -> Result<()> {
        let name = names::base_volume(profile);
        let rows = self.rows()?;
        let Some(row) = rows.iter().find(|r| r.lv_name == name) else {
            bail!(
                "base {} does not exist: nothing to seal",
                self.lv_ref(&name)
            );
        };
        if !self.is_ours(row, profile, ROLE_BASE, None) {
            bail!(
                "{} is not lab's base for {profile} ({}): not sealed",
                self.lv_ref(&name),
                self.why_not_ours(row)
            );
        }
        if row.is_read_only() {
            return Ok(());
        }
        self.command("lvchange")
            .args(["--permission", "r", &self.lv_ref(&name)])
            .run()
            .with_context(|| format!("making base {} read-only", self.lv_ref(&name)))?;
        Ok(())
    }

    /// The sealed base; an unsealed one is no base yet. A thin base carries no
    /// activation-skip flag, so LVM activates it at boot like any LV.
    fn base(&self, profile: &str) -> Result<Option<Volume>> {
        let name = names::base_volume(profile);
        let rows = self.rows()?;
        Ok(rows
            .iter()
            .find(|r| r.lv_name == name)
            .filter(|r| self.is_ours(r, profile, ROLE_BASE, None) && r.is_read_only())
            .map(|_| self.volume(name)))
    }

    /// The VM's clone, activated (`-K`) when it is not active: thin snapshots are skipped
    /// by normal activation, so after a reboot nothing else brings them back.
    fn clone_volume(&self, profile: &str, vm: &str) -> Result<Option<Volume>> {
        let name = names::clone_volume(profile, vm);
        let rows = self.rows()?;
        let Some(row) = rows
            .iter()
            .find(|r| r.lv_name == name)
            .filter(|r| self.is_ours(r, profile, ROLE_CLONE, Some(vm)))
        else {
            return Ok(None);
        };
        if !row.is_active() {
            self.activate(&name)?;
        }
        Ok(Some(self.volume(name)))
    }

    fn clone_base_sized(
        &self,
        profile: &str,
        vm: &str,
        size: Option<ByteSize>,
        in_use: &[InUse],
    ) -> Result<Volume> {
        let base = names::base_volume(profile);
        let name = names::clone_volume(profile, vm);
        let (rows, pool) = self.active_rows()?;
        let Some(row) = rows.iter().find(|r| r.lv_name == base) else {
            bail!(
                "base {} is missing: build it first (lab up builds it)",
                self.lv_ref(&base)
            );
        };
        if !self.is_ours(row, profile, ROLE_BASE, None) {
            bail!(
                "{} is not lab's base for {profile} ({}): not cloned",
                self.lv_ref(&base),
                self.why_not_ours(row)
            );
        }
        if !row.is_read_only() {
            bail!(
                "base {} is unfinished (not sealed): lab up builds it again",
                self.lv_ref(&base)
            );
        }
        if let Some(u) = user_of(&self.lv_path(&base), in_use) {
            bail!(
                "base {} is in use by running domain {}: lab never snapshots a volume a \
                 domain is using; stop it first",
                self.lv_ref(&base),
                u.domain
            );
        }
        self.refuse_existing(&rows, &name)?;
        let base_size = row.lv_size.unwrap_or(0);
        if let Some(size) = size
            && size.bytes() < base_size
        {
            bail!(
                "{vm}: a disk of {size} is smaller than its base {} ({}): give the VM {} or more",
                self.lv_ref(&base),
                ByteSize(base_size),
                ByteSize(base_size)
            );
        }
        judge_fill(&pool, Need::Headroom, self.limit).map_err(|e| anyhow!(e))?;
        self.snapshot_cmd(profile, vm).run().with_context(|| {
            format!(
                "creating thin snapshot {} of {}",
                self.lv_ref(&name),
                self.lv_ref(&base)
            )
        })?;
        let volume = self.volume(name);
        if !volume.path.exists() {
            bail!(
                "thin snapshot {} was created but {} did not appear",
                self.lv_ref(&volume.name),
                volume.path.display()
            );
        }
        // A thin snapshot is its origin's size; a larger VM disk is the snapshot extended
        // (thin: nothing is allocated until the guest writes).
        if let Some(size) = size.filter(|s| s.bytes() > base_size) {
            self.command("lvextend")
                .arg("-L")
                .arg(format!("{}b", size.bytes()))
                .arg(self.lv_ref(&volume.name))
                .run()
                .with_context(|| format!("growing {} to {size}", self.lv_ref(&volume.name)))?;
        }
        Ok(volume)
    }

    fn remove_clone(&self, profile: &str, vm: &str, in_use: &[InUse]) -> Result<()> {
        let name = names::clone_volume(profile, vm);
        let rows = self.rows()?;
        let Some(row) = rows.iter().find(|r| r.lv_name == name) else {
            return Ok(());
        };
        if !self.is_ours(row, profile, ROLE_CLONE, Some(vm)) {
            bail!(
                "{} is not lab's clone of {vm} ({}): left alone",
                self.lv_ref(&name),
                self.why_not_ours(row)
            );
        }
        if let Some(u) = user_of(&self.lv_path(&name), in_use) {
            bail!(
                "{} is in use by running domain {}: stop it first",
                self.lv_ref(&name),
                u.domain
            );
        }
        self.remove_lv(&name)
    }

    fn remove_base(&self, profile: &str) -> Result<()> {
        let name = names::base_volume(profile);
        let rows = self.rows()?;
        let Some(row) = rows.iter().find(|r| r.lv_name == name) else {
            return Ok(());
        };
        if !self.is_ours(row, profile, ROLE_BASE, None) {
            bail!(
                "{} is not lab's base for {profile} ({}): left alone",
                self.lv_ref(&name),
                self.why_not_ours(row)
            );
        }
        // Snapshots of it, lab's or anyone's, and lab's clones of the profile wherever
        // they came from.
        let clones: Vec<&str> = rows
            .iter()
            .filter(|r| {
                r.origin.as_deref() == Some(name.as_str())
                    || (r.lv_name != name
                        && r.lv_tags.iter().any(|t| t == names::LV_TAG)
                        && r.lv_tags.contains(&names::profile_tag(profile))
                        && r.lv_tags.contains(&names::role_tag(ROLE_CLONE)))
            })
            .map(|r| r.lv_name.as_str())
            .collect();
        if !clones.is_empty() {
            bail!(
                "base {} still has clones ({}): remove them first",
                self.lv_ref(&name),
                clones.join(", ")
            );
        }
        self.remove_lv(&name)
    }

    /// Virtual size and the pool data the volume maps (`data_percent` of `lv_size`).
    fn usage(&self, volume: &Volume) -> Result<Usage> {
        let target = self.lv_ref(&volume.name);
        let rows = lvm::parse_lvs(&self.report("lvs", THIN_LVS_FIELDS, &target)?)?;
        let row = rows
            .iter()
            .find(|r| r.lv_name == volume.name)
            .ok_or_else(|| anyhow!("{target} does not exist"))?;
        let size = row
            .lv_size
            .ok_or_else(|| anyhow!("lvs reports no size for {target}"))?;
        let percent = row.data_percent.ok_or_else(|| {
            anyhow!("{target} is inactive, so its use cannot be read (lvchange -ay -K {target})")
        })?;
        Ok(Usage {
            virtual_size: size,
            allocated: (percent / 100.0 * size as f64).round() as u64,
        })
    }
}

/// What [`define_libvirt_pool`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibvirtPool {
    /// lab defined and started its pool (named [`names::storage_pool`]).
    Defined(String),
    /// lab's pool was there already (and is now active).
    Lab(String),
    /// An older lab's `logical` pool of that name was inactive: lab undefined it and defined
    /// and started its `dir` pool in its place.
    Replaced(String),
    /// Someone else's `dir` pool over `/dev/VG` already shows the volumes: lab adds none
    /// (libvirt would refuse a second pool over the same directory anyway).
    Other(String),
}

/// lab's libvirt storage pool for `vg`: a `dir` pool over `/dev/VG`, where LVM links each
/// active LV, so `virsh vol-list` and virt-manager show lab's thin volumes (and the VG's other
/// active LVs: a dir pool lists what is in the directory; lab only ever removes LVs with its
/// tags). libvirt's `logical` pools list no thin volume, and starting or stopping one runs
/// `vgchange` over the whole VG; a dir pool never runs an LVM command.
///
/// Storage pools have no `<metadata>` element, so lab's pool is known by its name,
/// `lab-<vg>`, together with its type and target. The pool is not marked autostart:
/// `/dev/VG` exists only while an LV of the VG is active, which libvirtd's start may precede,
/// and `lab up` starts and refreshes it anyway.
///
/// A `logical` pool of that name over the VG is what older versions of lab defined. When
/// inactive it is undefined (that runs nothing) and replaced. When active it is left as it
/// is, with an error: stopping it runs `vgchange -aln VG`, which deactivates every LV of the
/// VG not in use, other people's too, and libvirt refuses to undefine an active pool. Its
/// autostart is turned off, so it is inactive after the next reboot and the next `lab up`
/// replaces it. Someone else's pools are left alone: a pool of lab's name that is neither,
/// with an error; a `logical` pool of another name over the VG, beside lab's dir pool.
pub fn define_libvirt_pool(lv: &Libvirt, vg: &str) -> Result<LibvirtPool> {
    let name = names::storage_pool(vg);
    let dir = names::vg_dir(vg);
    let pools = lv.storage_pools()?;
    let mut replaced = false;
    if let Some(existing) = pools.iter().find(|p| p.name == name) {
        if is_lab_dir_pool(existing, vg) {
            start_lab_pool(lv, &name, vg)?;
            return Ok(LibvirtPool::Lab(name));
        }
        if !is_older_lab_pool(existing, vg) {
            bail!(
                "libvirt storage pool {name} exists but is not lab's pool of volume group {vg} \
                 (type {}, source {}, target {}): left alone",
                existing.kind,
                existing.source_name.as_deref().unwrap_or("none"),
                existing.target_path.as_deref().unwrap_or("none"),
            );
        }
        if existing.active {
            if existing.autostart {
                lv.set_storage_pool_autostart(&name, false)?;
            }
            bail!(
                "libvirt storage pool {name} is an older lab's `logical` pool over volume group \
                 {vg} and is active: left as it is, because stopping it runs `vgchange -aln \
                 {vg}`, which deactivates every LV of {vg} not in use; libvirt no longer \
                 starts it by itself (autostart off), so after the next reboot `lab up` \
                 replaces it by a `dir` pool over {dir} (a logical pool lists no thin volume)"
            );
        }
        lv.undefine_storage_pool(&name)?;
        replaced = true;
    }
    if let Some(other) = pools
        .iter()
        .find(|p| p.name != name && p.kind == "dir" && p.target_path.as_deref() == Some(&dir))
    {
        return Ok(LibvirtPool::Other(other.name.clone()));
    }
    let xml = crate::libvirt::xml::to_xml(&crate::libvirt::xml::dir_pool_for(vg));
    lv.define_storage_pool(&name, &xml)
        .map_err(|e| why_not_started(e, vg))?;
    Ok(if replaced {
        LibvirtPool::Replaced(name)
    } else {
        LibvirtPool::Defined(name)
    })
}

fn is_lab_dir_pool(p: &crate::libvirt::StoragePoolInfo, vg: &str) -> bool {
    p.name == names::storage_pool(vg)
        && p.kind == "dir"
        && p.target_path.as_deref() == Some(names::vg_dir(vg).as_str())
}

/// The pool older versions of lab defined: `logical`, over the VG.
fn is_older_lab_pool(p: &crate::libvirt::StoragePoolInfo, vg: &str) -> bool {
    p.name == names::storage_pool(vg) && p.kind == "logical" && p.source_name.as_deref() == Some(vg)
}

fn start_lab_pool(lv: &Libvirt, name: &str, vg: &str) -> Result<()> {
    lv.start_storage_pool(name)
        .map_err(|e| why_not_started(e, vg))
}

/// A pool start that failed, with the likely reason when `/dev/VG` is missing here.
fn why_not_started(e: anyhow::Error, vg: &str) -> anyhow::Error {
    let dir = names::vg_dir(vg);
    if Path::new(&dir).exists() {
        e
    } else {
        anyhow!("{e:#}: {dir} does not exist: no LV of volume group {vg} is active")
    }
}

/// lab's libvirt pool over `vg`, when there is one.
pub fn lab_libvirt_pool(lv: &Libvirt, vg: &str) -> Result<Option<crate::libvirt::StoragePoolInfo>> {
    Ok(lv
        .storage_pools()?
        .into_iter()
        .find(|p| is_lab_dir_pool(p, vg)))
}

/// Have libvirt list `/dev/VG` again after lab made or removed volumes (libvirt reads the
/// directory on refresh only). Nothing to do without lab's active pool.
pub fn refresh_libvirt_pool(lv: &Libvirt, vg: &str) -> Result<()> {
    match lab_libvirt_pool(lv, vg)? {
        Some(pool) if pool.active => lv.refresh_storage_pool(&pool.name),
        _ => Ok(()),
    }
}

/// Stop and undefine lab's libvirt pool for `vg` (stopping a dir pool runs nothing); the VG
/// and its volumes stay, active. An older lab's `logical` pool is undefined when inactive and
/// refused when active (see [`define_libvirt_pool`]).
pub fn remove_libvirt_pool(lv: &Libvirt, vg: &str) -> Result<()> {
    let name = names::storage_pool(vg);
    let pools = lv.storage_pools()?;
    match pools.iter().find(|p| p.name == name) {
        Some(p) if is_lab_dir_pool(p, vg) => lv.remove_storage_pool(&name),
        Some(p) if is_older_lab_pool(p, vg) && p.active => bail!(
            "libvirt storage pool {name} is an older lab's `logical` pool and is active: not \
             removed, because stopping it runs `vgchange -aln {vg}`"
        ),
        Some(p) if is_older_lab_pool(p, vg) => lv.undefine_storage_pool(&name),
        _ => Ok(()),
    }
}

/// lab's thin volumes among an LVM report: ownership and role come from LVM tags
/// (`lab`, `lab-profile-P`, `lab-vm-V`, `lab-role-base|clone|snapshot`); a base is sealed once
/// it is read-only (`lv_attr` permission `r`). An LV without the `lab` tag is listed
/// with no owner, so the planner never touches it.
pub fn lab_volumes(rows: &[LvRow]) -> Vec<ObservedVolume> {
    let mut out = Vec::new();
    for row in rows.iter().filter(|r| r.segtype == "thin") {
        let tag = |prefix: &str| {
            row.lv_tags
                .iter()
                .find_map(|t| t.strip_prefix(prefix).map(str::to_string))
        };
        let ours = row.lv_tags.iter().any(|t| t == names::LV_TAG);
        let owner = ours
            .then(|| tag("lab-profile-"))
            .flatten()
            .map(|profile| Owner {
                profile,
                vm: tag("lab-vm-"),
            });
        let role = owner.as_ref().and(match tag("lab-role-").as_deref() {
            Some("base") => Some(VolumeRole::Base),
            Some("clone") => Some(VolumeRole::Clone),
            Some("snapshot") => Some(VolumeRole::Snapshot),
            _ => None,
        });
        let read_only = row.lv_attr.chars().nth(1) == Some('r');
        out.push(ObservedVolume {
            name: row.lv_name.clone(),
            location: format!("{}/{}", row.vg_name, row.lv_name),
            sealed: role != Some(VolumeRole::Base) || read_only,
            owner,
            role,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::lvm::parse_lvs;

    fn fixture_pool(file: &str) -> ThinPool {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/lvm")
            .join(file);
        let rows = parse_lvs(&std::fs::read_to_string(&path).unwrap()).unwrap();
        ThinPool::find(&rows, "vg_lab", "lab-pool").unwrap()
    }

    #[test]
    fn clones_are_refused_once_a_real_pool_is_past_the_limit() {
        let limit = FillLimit::default();
        // Real captures from the guest: 50% is fine, 85% and 97% are not.
        assert_eq!(
            judge_fill(
                &fixture_pool("guest-lvs-pool-50.json"),
                Need::Headroom,
                limit
            ),
            Ok(())
        );
        for (file, shown) in [
            ("guest-lvs-pool-85.json", "85.06%"),
            ("guest-lvs-pool-97.json", "97.07%"),
        ] {
            let err = judge_fill(&fixture_pool(file), Need::Headroom, limit).unwrap_err();
            assert!(err.contains("thin pool vg_lab/lab-pool"), "{err}");
            assert!(err.contains(&format!("data is {shown} used")), "{err}");
            assert!(err.contains("lvextend -L +"), "{err}");
            assert!(err.contains("vg_lab/lab-pool"), "{err}");
        }
    }

    fn pool(data: f64, meta: f64) -> ThinPool {
        ThinPool {
            vg: "vg".into(),
            name: "pool".into(),
            active: true,
            size: Some(10 * GIB),
            metadata_size: Some(8 * MIB),
            data_percent: Some(data),
            metadata_percent: Some(meta),
            discards: lvm::PoolDiscards::Passdown,
            uuid: String::new(),
        }
    }

    #[test]
    fn could_push_past_means_less_than_the_headroom_is_left() {
        let limit = FillLimit::default();
        assert!(judge_fill(&pool(74.9, 10.0), Need::Headroom, limit).is_ok());
        // Below 80% but with less than 5% of the pool left below it.
        let err = judge_fill(&pool(76.0, 10.0), Need::Headroom, limit).unwrap_err();
        assert!(err.contains("data is 76.00% used"), "{err}");
        // 7.6 GiB used must be at most 75% of the new size: 10.13 GiB, so +1G.
        assert!(err.contains("lvextend -L +1G vg/pool"), "{err}");
        assert!(!err.contains("metadata"), "{err}");
        let err = judge_fill(&pool(90.0, 10.0), Need::Headroom, limit).unwrap_err();
        // 9 GiB at 75% is 12 GiB.
        assert!(err.contains("lvextend -L +2G vg/pool"), "{err}");
    }

    #[test]
    fn metadata_counts_as_much_as_data() {
        let err = judge_fill(&pool(10.0, 78.0), Need::Headroom, FillLimit::default()).unwrap_err();
        assert!(err.contains("metadata is 78.00% used"), "{err}");
        assert!(!err.contains("lvextend -L"), "{err}");
        // 6.24 MiB used must be at most 75%: 8.32 MiB, so +1M.
        assert!(
            err.contains("lvextend --poolmetadatasize +1M vg/pool"),
            "{err}"
        );
        let both = judge_fill(&pool(99.0, 99.0), Need::Headroom, FillLimit::default()).unwrap_err();
        assert!(
            both.contains("lvextend -L +4G vg/pool; lvextend --poolmetadatasize +3M vg/pool"),
            "{both}"
        );
    }

    #[test]
    fn data_written_at_once_is_counted() {
        let limit = FillLimit::default();
        // 10% used plus 6 GiB of 10 GiB is 70%: fine; plus 7.5 GiB is 85%: refused.
        assert!(judge_fill(&pool(10.0, 10.0), Need::Data(6 * GIB), limit).is_ok());
        let err = judge_fill(&pool(10.0, 10.0), Need::Data(7 * GIB + GIB / 2), limit).unwrap_err();
        assert!(
            err.contains("too full for writing 7.5GiB: data is 10.00% used and would reach 85.0%"),
            "{err}"
        );
        // 8.5 GiB must be at most 80%: 10.625 GiB, so +1G.
        assert!(err.contains("lvextend -L +1G vg/pool"), "{err}");
    }

    #[test]
    fn an_inactive_pool_cannot_be_judged() {
        let err = judge_fill(
            &fixture_pool("lvs-thin-pool-inactive.json"),
            Need::Headroom,
            FillLimit::default(),
        )
        .unwrap_err();
        assert!(err.contains("vg_lab/lab-pool is not active"), "{err}");
        assert!(err.contains("lvchange -ay vg_lab/lab-pool"), "{err}");
    }

    #[test]
    fn sizes_are_written_in_the_largest_exact_unit() {
        assert_eq!(lvm_size(100 * GIB), "100g");
        assert_eq!(lvm_size(256 * MIB), "256m");
        assert_eq!(lvm_size(GIB + 512), "1073742336b");
    }

    #[test]
    fn commands_carry_lab_s_tags_and_activation_skip_override() {
        let s = LvmThinStorage::new("vg_lab", "lab-pool").with_config(LvmConfig {
            config: Some("backup { backup = 0 }".into()),
            system_dir: Some("/tmp/lvm conf".into()),
        });
        let snap = s.snapshot_cmd("demo", "web1").cmdline();
        assert!(
            snap.starts_with("LVM_SUPPRESS_FD_WARNINGS=1 LVM_SYSTEM_DIR='/tmp/lvm conf' "),
            "{snap}"
        );
        assert!(
            snap.ends_with(
                " lvcreate --config 'backup { backup = 0 }' --snapshot --name lab-demo-web1 \
                 --permission rw --activate y --ignoreactivationskip --addtag lab \
                 --addtag lab-profile-demo --addtag lab-role-clone --addtag lab-vm-web1 \
                 vg_lab/lab-demo-base"
            ),
            "{snap}"
        );
        let base = s.create_base_cmd("demo", ByteSize::gib(10)).cmdline();
        assert!(
            base.ends_with(
                " --type thin --virtualsize 10g --thinpool lab-pool --name lab-demo-base \
                 --addtag lab --addtag lab-profile-demo --addtag lab-role-base vg_lab"
            ),
            "{base}"
        );
        let pool = s.create_pool_cmd(ByteSize::mib(256)).cmdline();
        assert!(
            pool.ends_with(
                " --type thin-pool --discards passdown --zero y --size 256m --name lab-pool vg_lab"
            ),
            "{pool}"
        );
    }

    #[test]
    fn a_whole_lab_snapshot_runs_thin_snapshots_and_copies_nothing() {
        let s = LvmThinStorage::new("vg_lab", "lab-pool");
        // Taken of the clone, read-only, kept active at boot, tagged with the snapshot.
        let take = s.snapshot_volume_cmd("demo", "web1", "take_2").cmdline();
        assert!(
            take.ends_with(
                " lvcreate --snapshot --name lab-demo-web1.take+2 --permission r \
                 --setactivationskip n --activate y --addtag lab --addtag lab-profile-demo \
                 --addtag lab-role-snapshot --addtag lab-vm-web1 --addtag lab-snapshot-take_2 \
                 vg_lab/lab-demo-web1"
            ),
            "{take}"
        );
        // Restored: the clone made again, by its name and tags, of the snapshot volume.
        let lay = s
            .clone_cmd(
                "demo",
                "web1",
                &names::snapshot_volume("demo", "web1", "take_2"),
            )
            .cmdline();
        assert!(
            lay.ends_with(
                " lvcreate --snapshot --name lab-demo-web1 --permission rw --activate y \
                 --ignoreactivationskip --addtag lab --addtag lab-profile-demo \
                 --addtag lab-role-clone --addtag lab-vm-web1 vg_lab/lab-demo-web1.take+2"
            ),
            "{lay}"
        );
    }

    #[test]
    fn a_snapshot_volume_is_observed_as_such_never_as_a_clone() {
        let text = include_str!("../../tests/fixtures/lvm/guest-lvs-pool-50.json");
        let mut rows = parse_lvs(text).unwrap();
        let s = LvmThinStorage::new("vg_lab", "lab-pool");
        rows[2].pool_lv = Some("lab-pool".into());
        rows[2].lv_name = names::snapshot_volume("demo", "web1", "one");
        rows[2].lv_tags = tags("demo", Some("web1"), ROLE_SNAPSHOT);
        rows[2].lv_tags.push(names::snapshot_tag("one"));
        assert!(s.is_ours(&rows[2], "demo", ROLE_SNAPSHOT, Some("web1")));
        assert!(!s.is_ours(&rows[2], "demo", ROLE_CLONE, Some("web1")));
        assert!(!s.is_ours(&rows[2], "demo", ROLE_BASE, None));
        let observed = lab_volumes(&rows);
        let v = observed
            .iter()
            .find(|v| v.name == "lab-demo-web1.one")
            .unwrap();
        assert_eq!(v.role, Some(VolumeRole::Snapshot));
        assert_eq!(v.owner.as_ref().unwrap().vm.as_deref(), Some("web1"));
    }

    #[test]
    fn ownership_needs_every_tag_and_this_pool() {
        let text = include_str!("../../tests/fixtures/lvm/guest-lvs-pool-50.json");
        let mut rows = parse_lvs(text).unwrap();
        let s = LvmThinStorage::new("vg_lab", "lab-pool");
        // The capture's tags predate role tags, and the report has no pool_lv: not lab's
        // for removal.
        assert!(!s.is_ours(&rows[0], "demo", ROLE_BASE, None));
        rows[0].pool_lv = Some("lab-pool".into());
        rows[0].lv_tags = tags("demo", None, ROLE_BASE);
        assert!(s.is_ours(&rows[0], "demo", ROLE_BASE, None));
        assert!(!s.is_ours(&rows[0], "other", ROLE_BASE, None));
        assert!(!s.is_ours(&rows[0], "demo", ROLE_CLONE, None));
        rows[2].pool_lv = Some("lab-pool".into());
        rows[2].lv_tags = tags("demo", Some("web1"), ROLE_CLONE);
        assert!(s.is_ours(&rows[2], "demo", ROLE_CLONE, Some("web1")));
        assert!(!s.is_ours(&rows[2], "demo", ROLE_CLONE, Some("db1")));
        let other_pool = LvmThinStorage::new("vg_lab", "another-pool");
        assert!(!other_pool.is_ours(&rows[2], "demo", ROLE_CLONE, Some("web1")));
        rows[1].lv_tags = vec!["lab-profile-demo".into()];
        assert_eq!(
            s.why_not_ours(&rows[1]),
            "it has no `lab` tag: someone else's"
        );
    }
}
