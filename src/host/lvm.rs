//! LVM facts: is lvm2 there, what `devices/issue_discards` LVM really uses, and the state
//! of a volume group, its physical volumes and a thin pool.
//!
//! The report parsers are pure functions over `--reportformat json` output, tested on
//! output captured from real LVM in `tests/fixtures/lvm/`. Quirks they handle: every value
//! is a string; `data_percent` is `""` for an inactive LV; segment fields such as
//! `discards` make rows repeat once per segment, so rows are deduplicated by `lv_uuid`; a
//! missing VG or LV exits 5 yet still prints an empty report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::Sysroot;
use super::tools::find_program;
use crate::runner::{Cmd, Exit};

/// The `lvs` columns lab reads.
pub const LVS_FIELDS: &str = "lv_name,vg_name,lv_attr,segtype,lv_size,lv_metadata_size,data_percent,metadata_percent,discards,lv_uuid,lv_tags";
pub const VGS_FIELDS: &str = "vg_name,vg_uuid,vg_size,vg_free,pv_count,lv_count";
pub const PVS_FIELDS: &str = "pv_name,vg_name,pv_size,pv_free,pv_uuid";
/// [`LVS_FIELDS`] plus what the thin backend needs to tell lab's volumes from others: the
/// pool a thin LV lives in and the origin a snapshot was taken of.
pub const THIN_LVS_FIELDS: &str = "lv_name,vg_name,lv_attr,segtype,lv_size,lv_metadata_size,data_percent,metadata_percent,discards,lv_uuid,lv_tags,pool_lv,origin";

/// LVM scans every block device; on a laptop with a sleeping USB disk that can take a
/// while, but never this long.
const LVM_TIMEOUT: Duration = Duration::from_secs(30);

/// One logical volume, deduplicated across its segments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LvRow {
    pub lv_name: String,
    pub vg_name: String,
    pub lv_attr: String,
    pub segtype: String,
    pub lv_size: Option<u64>,
    pub lv_metadata_size: Option<u64>,
    /// None when LVM prints `""`: the LV is inactive (or not a pool/snapshot).
    pub data_percent: Option<f64>,
    pub metadata_percent: Option<f64>,
    pub discards: Option<String>,
    pub lv_uuid: String,
    pub lv_tags: Vec<String>,
    /// The thin pool of a thin LV (only when the report asked for `pool_lv`).
    pub pool_lv: Option<String>,
    /// The LV a snapshot was taken of (only when the report asked for `origin`).
    pub origin: Option<String>,
}

impl LvRow {
    /// `lv_attr` character 5 is the state: `a` active.
    pub fn is_active(&self) -> bool {
        self.lv_attr.chars().nth(4) == Some('a')
    }

    /// `lv_attr` character 2 is the permission: `r` read-only.
    pub fn is_read_only(&self) -> bool {
        self.lv_attr.chars().nth(1) == Some('r')
    }

    /// `lv_attr` character 10 is `k` when LVM skips the LV on normal activation (thin
    /// snapshots get this flag: only `-K` activates them).
    pub fn skips_activation(&self) -> bool {
        self.lv_attr.chars().nth(9) == Some('k')
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VgRow {
    pub vg_name: String,
    pub vg_uuid: String,
    pub vg_size: Option<u64>,
    pub vg_free: Option<u64>,
    pub pv_count: Option<u64>,
    pub lv_count: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PvRow {
    pub pv_name: String,
    pub vg_name: String,
    pub pv_size: Option<u64>,
    pub pv_free: Option<u64>,
    pub pv_uuid: String,
}

/// `{"report": [{"lv": [...]}]}`: the rows of `kind` across every report section.
fn report_rows(
    json: &str,
    kind: &str,
) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    #[derive(Deserialize)]
    struct Envelope {
        report: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let env: Envelope = serde_json::from_str(json).context("parsing LVM JSON report")?;
    let mut rows = Vec::new();
    for section in env.report {
        if let Some(list) = section.get(kind) {
            let list = list
                .as_array()
                .ok_or_else(|| anyhow!("LVM report: {kind:?} is not a list"))?;
            for row in list {
                let obj = row
                    .as_object()
                    .ok_or_else(|| anyhow!("LVM report: a {kind} row is not an object"))?;
                rows.push(obj.clone());
            }
        }
    }
    Ok(rows)
}

fn text(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> String {
    row.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

fn opt_text(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    Some(text(row, key)).filter(|s| !s.is_empty())
}

/// Sizes come as byte counts only with `--units b --nosuffix`; anything else is unknown.
fn number(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<u64> {
    text(row, key).trim().parse().ok()
}

fn percent(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<f64> {
    text(row, key).trim().parse().ok()
}

/// Parse `lvs --reportformat json --units b --nosuffix -o` [`LVS_FIELDS`].
pub fn parse_lvs(json: &str) -> anyhow::Result<Vec<LvRow>> {
    let mut out: Vec<LvRow> = Vec::new();
    for row in report_rows(json, "lv")? {
        let uuid = text(&row, "lv_uuid");
        if !uuid.is_empty() && out.iter().any(|r| r.lv_uuid == uuid) {
            continue;
        }
        out.push(LvRow {
            lv_name: text(&row, "lv_name"),
            vg_name: text(&row, "vg_name"),
            lv_attr: text(&row, "lv_attr"),
            segtype: text(&row, "segtype"),
            lv_size: number(&row, "lv_size"),
            lv_metadata_size: number(&row, "lv_metadata_size"),
            data_percent: percent(&row, "data_percent"),
            metadata_percent: percent(&row, "metadata_percent"),
            discards: opt_text(&row, "discards"),
            lv_uuid: uuid,
            lv_tags: text(&row, "lv_tags")
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            pool_lv: opt_text(&row, "pool_lv"),
            origin: opt_text(&row, "origin"),
        });
    }
    Ok(out)
}

/// Parse `vgs --reportformat json --units b --nosuffix -o` [`VGS_FIELDS`].
pub fn parse_vgs(json: &str) -> anyhow::Result<Vec<VgRow>> {
    Ok(report_rows(json, "vg")?
        .iter()
        .map(|row| VgRow {
            vg_name: text(row, "vg_name"),
            vg_uuid: text(row, "vg_uuid"),
            vg_size: number(row, "vg_size"),
            vg_free: number(row, "vg_free"),
            pv_count: number(row, "pv_count"),
            lv_count: number(row, "lv_count"),
        })
        .collect())
}

/// Parse `pvs --reportformat json --units b --nosuffix -o` [`PVS_FIELDS`].
pub fn parse_pvs(json: &str) -> anyhow::Result<Vec<PvRow>> {
    Ok(report_rows(json, "pv")?
        .iter()
        .map(|row| PvRow {
            pv_name: text(row, "pv_name"),
            vg_name: text(row, "vg_name"),
            pv_size: number(row, "pv_size"),
            pv_free: number(row, "pv_free"),
            pv_uuid: text(row, "pv_uuid"),
        })
        .collect())
}

/// What `lvm version` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LvmVersion {
    pub lvm: String,
    pub library: Option<String>,
    /// The kernel's device-mapper driver; absent when the kernel has none.
    pub driver: Option<String>,
}

/// Parse `lvm version` output (`  LVM version:     2.03.16(2) (2022-05-18)` ...).
pub fn parse_version(text: &str) -> Option<LvmVersion> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
    };
    Some(LvmVersion {
        lvm: field("LVM version:")?,
        library: field("Library version:"),
        driver: field("Driver version:"),
    })
}

/// The value `lvmconfig` prints for `key` (`issue_discards=1`, or `# issue_discards=0` for
/// `--type default`).
pub fn parse_lvmconfig_value(text: &str, key: &str) -> Option<i64> {
    text.lines().find_map(|l| {
        let l = l.trim().trim_start_matches('#').trim();
        let (k, v) = l.split_once('=')?;
        if k.trim() == key {
            v.trim().trim_matches('"').parse().ok()
        } else {
            None
        }
    })
}

/// A thin pool's discard mode (`lvs -o discards`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolDiscards {
    /// Discards free pool blocks and are passed down to the disk.
    Passdown,
    /// Discards free pool blocks but stop at the pool.
    Nopassdown,
    /// Discards are dropped: deleted data keeps its pool blocks.
    Ignore,
    Unknown(String),
}

impl PoolDiscards {
    pub fn parse(text: &str) -> Self {
        match text {
            "passdown" => PoolDiscards::Passdown,
            "nopassdown" => PoolDiscards::Nopassdown,
            "ignore" => PoolDiscards::Ignore,
            other => PoolDiscards::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            PoolDiscards::Passdown => "passdown",
            PoolDiscards::Nopassdown => "nopassdown",
            PoolDiscards::Ignore => "ignore",
            PoolDiscards::Unknown(s) => s,
        }
    }
}

/// A thin pool as lab needs to know it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThinPool {
    pub vg: String,
    pub name: String,
    pub active: bool,
    pub size: Option<u64>,
    pub metadata_size: Option<u64>,
    pub data_percent: Option<f64>,
    pub metadata_percent: Option<f64>,
    pub discards: PoolDiscards,
    pub uuid: String,
}

impl ThinPool {
    /// The pool among `rows`, when `vg/name` is a thin pool.
    pub fn find(rows: &[LvRow], vg: &str, name: &str) -> Option<ThinPool> {
        let row = rows
            .iter()
            .find(|r| r.vg_name == vg && r.lv_name == name && r.segtype == "thin-pool")?;
        Some(ThinPool {
            vg: row.vg_name.clone(),
            name: row.lv_name.clone(),
            active: row.is_active(),
            size: row.lv_size,
            metadata_size: row.lv_metadata_size,
            data_percent: row.data_percent,
            metadata_percent: row.metadata_percent,
            discards: PoolDiscards::parse(row.discards.as_deref().unwrap_or("")),
            uuid: row.lv_uuid.clone(),
        })
    }
}

/// LVM tools with the environment lab always gives them.
pub fn lvm_cmd(program: &Path) -> Cmd {
    // LVM warns on every inherited descriptor, which is noise in a captured stderr.
    Cmd::new(program)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .timeout(LVM_TIMEOUT)
}

/// `lvm version` on this machine.
pub fn live_version() -> anyhow::Result<Option<LvmVersion>> {
    let Some(lvm) = find_program("lvm") else {
        return Ok(None);
    };
    let out = lvm_cmd(&lvm).arg("version").run()?;
    parse_version(&out.stdout).map(Some).ok_or_else(|| {
        anyhow!(
            "`lvm version` printed no LVM version: {}",
            out.stdout.trim()
        )
    })
}

/// Whether the kernel has device-mapper, without which LVM cannot activate anything:
/// `/proc/misc` lists `device-mapper` once `dm_mod` is loaded. None when unknown.
pub fn device_mapper_loaded(sysroot: &Sysroot) -> Option<bool> {
    if sysroot.exists("/sys/module/dm_mod") {
        return Some(true);
    }
    let misc = sysroot.read_opt("/proc/misc")?;
    Some(
        misc.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("device-mapper")),
    )
}

/// The effective `devices/issue_discards` and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueDiscards {
    pub value: i64,
    /// The LVM configuration directory read.
    pub config_dir: PathBuf,
    /// True when no config file exists there, so the value is LVM's built-in default.
    pub built_in_default: bool,
}

/// The LVM configuration directory of `sysroot`.
pub fn config_dir(sysroot: &Sysroot) -> PathBuf {
    sysroot.path("/etc/lvm")
}

/// Read the effective `devices/issue_discards` with the real LVM parser: `lvmconfig --type
/// full`, pointed at the sysroot's `/etc/lvm` by `LVM_SYSTEM_DIR` when not live. Without any
/// config file `--type full` fails, so LVM's default is read with `--type default`.
pub fn issue_discards(sysroot: &Sysroot) -> anyhow::Result<IssueDiscards> {
    read_issue_discards(&config_dir(sysroot), !sysroot.is_live())
}

/// [`issue_discards`] of the LVM configuration directory `dir` (what `LVM_SYSTEM_DIR`
/// names), for a configuration other than the machine's own.
pub fn issue_discards_in(dir: &Path) -> anyhow::Result<IssueDiscards> {
    read_issue_discards(dir, true)
}

fn read_issue_discards(dir: &Path, set_system_dir: bool) -> anyhow::Result<IssueDiscards> {
    let lvmconfig = find_program("lvmconfig")
        .ok_or_else(|| anyhow!("lvmconfig is not installed on this machine"))?;
    let has_config = dir.join("lvm.conf").is_file() || dir.join("lvmlocal.conf").is_file();
    let mut cmd = lvm_cmd(&lvmconfig);
    if set_system_dir {
        cmd = cmd.env("LVM_SYSTEM_DIR", dir);
    }
    let kind = if has_config { "full" } else { "default" };
    let out = cmd
        .args(["--type", kind, "devices/issue_discards"])
        .run()
        .map_err(anyhow::Error::new)?;
    let value = parse_lvmconfig_value(&out.stdout, "issue_discards").ok_or_else(|| {
        anyhow!(
            "lvmconfig printed no issue_discards value: {:?}",
            out.stdout.trim()
        )
    })?;
    Ok(IssueDiscards {
        value,
        config_dir: dir.to_path_buf(),
        built_in_default: !has_config,
    })
}

/// Write `issue_discards = 1` into an `lvmlocal.conf` (made when missing) with
/// [`set_issue_discards`], through a temporary file and a rename, so an interrupted write
/// never leaves LVM a half file; the original mode is kept.
pub fn write_issue_discards(path: &Path) -> anyhow::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    let new = set_issue_discards(old.as_deref().unwrap_or(""));
    let dir = path.parent().context("lvmlocal.conf has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(".lvmlocal.conf.lab-tmp");
    std::fs::write(&tmp, new).with_context(|| format!("writing {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Set `devices { issue_discards = 1 }` in an `lvmlocal.conf` text, keeping everything
/// else byte for byte: an `issue_discards` line inside an uncommented top-level `devices`
/// section is replaced; else the line goes into the first such section; else a section is
/// appended.
pub fn set_issue_discards(text: &str) -> String {
    let sections = devices_sections(text);
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for s in &sections {
        for &(start, end) in &s.issue_discards_lines {
            let line = &text[start..end];
            let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
            edits.push((start, end, format!("{indent}issue_discards = 1")));
        }
    }
    if edits.is_empty() {
        if let Some(s) = sections.first() {
            let close = s.close;
            let line_start = text[..close].rfind('\n').map_or(0, |i| i + 1);
            if text[line_start..close].trim().is_empty() {
                edits.push((line_start, line_start, "\tissue_discards = 1\n".to_string()));
            } else {
                edits.push((close, close, "\n\tissue_discards = 1\n".to_string()));
            }
        } else {
            let mut out = text.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str("devices {\n\tissue_discards = 1\n}\n");
            return out;
        }
    }
    let mut out = text.to_string();
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (start, end, replacement) in edits {
        out.replace_range(start..end, &replacement);
    }
    out
}

/// A top-level `devices { ... }` section: where its closing brace is, and the byte ranges
/// (without newline) of its uncommented `issue_discards = ...` lines.
struct DevicesSection {
    close: usize,
    issue_discards_lines: Vec<(usize, usize)>,
}

/// Scan LVM config text (a small grammar: `name { ... }`, `key = value`, `#` comments,
/// `"strings"`) for top-level `devices` sections.
fn devices_sections(text: &str) -> Vec<DevicesSection> {
    let bytes = text.as_bytes();
    let mut sections = Vec::new();
    let mut depth = 0usize;
    let mut current: Option<DevicesSection> = None;
    let mut last_word = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                last_word.clear();
            }
            b'{' => {
                if depth == 0 && last_word == "devices" {
                    current = Some(DevicesSection {
                        close: 0,
                        issue_discards_lines: Vec::new(),
                    });
                }
                depth += 1;
                last_word.clear();
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0
                    && let Some(mut s) = current.take()
                {
                    s.close = i;
                    sections.push(s);
                }
                last_word.clear();
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                let word = &text[start..i];
                if depth == 1
                    && word == "issue_discards"
                    && let Some(s) = current.as_mut()
                {
                    let line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
                    let only_space_before = text[line_start..start].trim().is_empty();
                    let line_end = text[i..].find('\n').map_or(text.len(), |p| i + p);
                    let rest = text[i..line_end].trim_start();
                    if only_space_before && rest.starts_with('=') {
                        s.issue_discards_lines.push((line_start, line_end));
                    }
                }
                last_word = word.to_string();
                continue;
            }
            c if c.is_ascii_whitespace() => {}
            _ => last_word.clear(),
        }
        i += 1;
    }
    sections
}

/// Where the state of volume groups and thin pools comes from.
pub enum LvmSource {
    /// This machine's LVM, through the runner.
    Live { lvm: PathBuf },
    /// A report recorded into a sysroot (a recorded fake for tests).
    Recorded(RecordedLvs),
    /// No source: the reason, for a skip.
    Unavailable(String),
}

/// A recorded fake for tests: `lvs`/`vgs`/`pvs` JSON reports stored in a fixture sysroot at
/// `<sysroot>/.lab-recorded/{lvs,vgs,pvs}.json`, shaped like real LVM output, because a
/// `lab check --sysroot` run cannot ask the live LVM about the machine the tree describes
/// (and thin pools cannot even be activated on the development VMs, which lack
/// device-mapper).
pub struct RecordedLvs {
    dir: PathBuf,
}

pub const RECORDED_DIR: &str = "/.lab-recorded";

impl RecordedLvs {
    pub fn open(sysroot: &Sysroot) -> Option<Self> {
        let dir = sysroot.path(RECORDED_DIR);
        dir.join("lvs.json")
            .is_file()
            .then_some(RecordedLvs { dir })
    }

    fn read(&self, name: &str) -> anyhow::Result<Option<String>> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        }
    }
}

impl LvmSource {
    /// Live LVM on the live machine; the recorded reports under a sysroot.
    pub fn for_sysroot(sysroot: &Sysroot) -> LvmSource {
        if sysroot.is_live() {
            match find_program("lvm") {
                Some(lvm) => LvmSource::Live { lvm },
                None => LvmSource::Unavailable("lvm2 is not installed".into()),
            }
        } else {
            match RecordedLvs::open(sysroot) {
                Some(rec) => LvmSource::Recorded(rec),
                None => LvmSource::Unavailable(format!(
                    "under --sysroot LVM state comes from {}/lvs.json, which {} lacks",
                    RECORDED_DIR.trim_start_matches('/'),
                    sysroot.root().display()
                )),
            }
        }
    }

    /// A label for findings: `lvs` or `recorded report`.
    pub fn label(&self) -> &'static str {
        match self {
            LvmSource::Live { .. } => "lvs",
            LvmSource::Recorded(_) => "recorded lvs report",
            LvmSource::Unavailable(_) => "none",
        }
    }

    /// Every LV of `vg` (empty when the VG does not exist).
    pub fn vg_lvs(&self, vg: &str) -> anyhow::Result<Vec<LvRow>> {
        match self {
            LvmSource::Live { lvm } => parse_lvs(&report(lvm, "lvs", LVS_FIELDS, &[vg])?),
            LvmSource::Recorded(rec) => {
                let json = rec.read("lvs.json")?.unwrap_or_default();
                Ok(parse_lvs(&json)?
                    .into_iter()
                    .filter(|r| r.vg_name == vg)
                    .collect())
            }
            LvmSource::Unavailable(why) => bail!("{why}"),
        }
    }

    /// Rows of `vg/lv` (empty when either does not exist).
    pub fn lvs(&self, vg: &str, lv: &str) -> anyhow::Result<Vec<LvRow>> {
        match self {
            LvmSource::Live { lvm } => {
                let json = report(lvm, "lvs", LVS_FIELDS, &[&format!("{vg}/{lv}")])?;
                parse_lvs(&json)
            }
            LvmSource::Recorded(rec) => {
                let json = rec.read("lvs.json")?.unwrap_or_default();
                Ok(parse_lvs(&json)?
                    .into_iter()
                    .filter(|r| r.vg_name == vg && r.lv_name == lv)
                    .collect())
            }
            LvmSource::Unavailable(why) => bail!("{why}"),
        }
    }

    /// The volume group, None when it does not exist.
    pub fn vg(&self, vg: &str) -> anyhow::Result<Option<VgRow>> {
        let rows = match self {
            LvmSource::Live { lvm } => parse_vgs(&report(lvm, "vgs", VGS_FIELDS, &[vg])?)?,
            LvmSource::Recorded(rec) => match rec.read("vgs.json")? {
                Some(json) => parse_vgs(&json)?,
                // Without vgs.json, a VG exists when the recorded lvs report has LVs in it.
                None => parse_lvs(&rec.read("lvs.json")?.unwrap_or_default())?
                    .iter()
                    .filter(|r| r.vg_name == vg)
                    .take(1)
                    .map(|r| VgRow {
                        vg_name: r.vg_name.clone(),
                        vg_uuid: String::new(),
                        vg_size: None,
                        vg_free: None,
                        pv_count: None,
                        lv_count: None,
                    })
                    .collect(),
            },
            LvmSource::Unavailable(why) => bail!("{why}"),
        };
        Ok(rows.into_iter().find(|r| r.vg_name == vg))
    }

    /// The physical volumes of `vg`.
    pub fn pvs(&self, vg: &str) -> anyhow::Result<Vec<PvRow>> {
        let rows = match self {
            LvmSource::Live { lvm } => parse_pvs(&report(
                lvm,
                "pvs",
                PVS_FIELDS,
                &["-S", &format!("vg_name={vg}")],
            )?)?,
            LvmSource::Recorded(rec) => match rec.read("pvs.json")? {
                Some(json) => parse_pvs(&json)?,
                None => Vec::new(),
            },
            LvmSource::Unavailable(why) => bail!("{why}"),
        };
        Ok(rows.into_iter().filter(|r| r.vg_name == vg).collect())
    }
}

/// Run an LVM report command and judge its output with [`judge_report`].
fn report(lvm: &Path, command: &str, fields: &str, targets: &[&str]) -> anyhow::Result<String> {
    let out = lvm_cmd(lvm)
        .args([
            command,
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            fields,
        ])
        .args(targets.iter().copied())
        .capture()?;
    judge_report(command, &out.stdout, &out.stderr, out.exit())
}

/// A missing VG or LV exits 5 with an empty but valid report and says "not found" (or
/// "Failed to find"): that is an answer. Any other failure, such as a user without root
/// who gets an equally empty report because LVM could not take its lock, is an error:
/// taking it for "no such VG" would be a lie.
pub fn judge_report(
    command: &str,
    stdout: &str,
    stderr: &str,
    exit: Exit,
) -> anyhow::Result<String> {
    let parsed = serde_json::from_str::<serde_json::Value>(stdout).is_ok();
    let absent = stderr.contains("not found") || stderr.contains("Failed to find");
    if parsed && (exit.success() || absent) {
        return Ok(stdout.to_string());
    }
    let said: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    bail!("`lvm {command}` failed ({exit}): {}", said.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/lvm")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn an_inactive_thin_pool_has_no_fill() {
        let rows = parse_lvs(&fixture("lvs-thin-pool-inactive.json")).unwrap();
        assert_eq!(rows.len(), 1);
        let pool = ThinPool::find(&rows, "vg_lab", "lab-pool").unwrap();
        assert!(!pool.active);
        assert_eq!(pool.data_percent, None);
        assert_eq!(pool.metadata_percent, None);
        assert_eq!(pool.size, Some(524_288_000));
        assert_eq!(pool.metadata_size, Some(8_388_608));
        assert_eq!(pool.discards, PoolDiscards::Passdown);
    }

    #[test]
    fn discard_modes_are_read() {
        for (file, mode) in [
            ("lvs-thin-pool-nopassdown.json", PoolDiscards::Nopassdown),
            ("lvs-thin-pool-ignore.json", PoolDiscards::Ignore),
        ] {
            let rows = parse_lvs(&fixture(file)).unwrap();
            assert_eq!(
                ThinPool::find(&rows, "vg_lab", "lab-pool")
                    .unwrap()
                    .discards,
                mode
            );
        }
    }

    #[test]
    fn segment_rows_are_deduplicated_by_uuid() {
        let json = fixture("lvs-vg-all-segments.json");
        let raw = report_rows(&json, "lv").unwrap();
        assert_eq!(raw.len(), 7, "the capture repeats `plain` once per segment");
        let rows = parse_lvs(&json).unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows.iter().filter(|r| r.lv_name == "plain").count(), 1);
        let base = rows.iter().find(|r| r.lv_name == "base").unwrap();
        assert_eq!(base.segtype, "thin");
        assert_eq!(base.lv_tags, ["lab", "lab-owner=packstack", "lab.base"]);
        assert_eq!(base.lv_metadata_size, None);
        // A thin LV is not a pool; a hidden sub-LV is not the pool either.
        assert!(ThinPool::find(&rows, "vg_lab", "base").is_none());
        assert!(ThinPool::find(&rows, "vg_lab", "lab-pool").is_some());
    }

    #[test]
    fn a_missing_lv_or_vg_is_an_empty_report() {
        assert!(
            parse_lvs(&fixture("lvs-lv-missing.json"))
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_lvs(&fixture("lvs-vg-missing.json"))
                .unwrap()
                .is_empty()
        );
        assert!(parse_vgs(&fixture("vgs-missing.json")).unwrap().is_empty());
        assert!(parse_pvs(&fixture("pvs-none.json")).unwrap().is_empty());
    }

    /// The exit status the capture recorded in the last line of a `.stderr` fixture.
    fn captured(stem: &str) -> (String, String, Exit) {
        let stderr = fixture(&format!("{stem}.stderr"));
        let code = stderr
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("exit status "))
            .and_then(|c| c.parse().ok())
            .expect("the fixture ends with its exit status");
        (fixture(&format!("{stem}.json")), stderr, Exit::Code(code))
    }

    #[test]
    fn not_found_is_an_answer_but_no_lock_is_an_error() {
        for stem in ["vgs-missing", "lvs-vg-missing", "lvs-lv-missing"] {
            let (out, err, code) = captured(stem);
            assert_eq!(code, Exit::Code(5), "{stem}");
            let json = judge_report("vgs", &out, &err, code).unwrap();
            assert!(report_rows(&json, "vg").unwrap().is_empty());
        }
        let (out, err, code) = captured("vgs-non-root");
        let e = judge_report("vgs", &out, &err, code)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit status 5"), "{e}");
        assert!(e.contains("Can't get lock for vg_lab"), "{e}");
        assert!(judge_report("vgs", "", "", Exit::Code(0)).is_err());
        assert!(judge_report("vgs", &fixture("vgs.json"), "", Exit::Code(0)).is_ok());
    }

    #[test]
    fn vgs_and_pvs_are_read_as_numbers() {
        let vg = parse_vgs(&fixture("vgs.json")).unwrap().remove(0);
        assert_eq!(vg.vg_name, "vg_lab");
        assert_eq!(vg.vg_size, Some(3_212_836_864));
        assert_eq!(vg.vg_free, Some(2_357_198_848));
        assert_eq!(vg.pv_count, Some(2));
        let pvs = parse_pvs(&fixture("pvs.json")).unwrap();
        let names: Vec<&str> = pvs.iter().map(|p| p.pv_name.as_str()).collect();
        assert_eq!(names, ["/dev/loop0", "/dev/loop1"]);
        assert_eq!(pvs[1].pv_size, Some(1_069_547_520));
    }

    #[test]
    fn recorded_active_pools_carry_their_fill() {
        let rows = parse_lvs(&fixture("lvs-thin-pool-85-recorded-fake.json")).unwrap();
        let pool = ThinPool::find(&rows, "vg_lab", "lab-pool").unwrap();
        assert!(pool.active);
        assert_eq!(pool.data_percent, Some(85.31));
        assert_eq!(pool.metadata_percent, Some(21.07));
    }

    #[test]
    fn lvm_version_without_and_with_a_device_mapper_driver() {
        let v = parse_version(&fixture("lvm-version.txt")).unwrap();
        assert_eq!(v.lvm, "2.03.16(2) (2022-05-18)");
        assert_eq!(v.library.as_deref(), Some("1.02.185 (2022-05-18)"));
        assert_eq!(v.driver, None, "captured on a kernel without device-mapper");
        let v = parse_version(&fixture("lvm-version-with-driver-recorded-fake.txt")).unwrap();
        assert_eq!(v.driver.as_deref(), Some("4.48.0"));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn lvmconfig_values_full_and_default() {
        assert_eq!(
            parse_lvmconfig_value(&fixture("lvmconfig-full-0.txt"), "issue_discards"),
            Some(0)
        );
        assert_eq!(
            parse_lvmconfig_value(&fixture("lvmconfig-full-1.txt"), "issue_discards"),
            Some(1)
        );
        assert_eq!(
            parse_lvmconfig_value(&fixture("lvmconfig-default.txt"), "issue_discards"),
            Some(0)
        );
        assert_eq!(parse_lvmconfig_value("", "issue_discards"), None);
    }

    #[test]
    fn pool_discards_round_trip() {
        for s in ["passdown", "nopassdown", "ignore", "weird"] {
            assert_eq!(PoolDiscards::parse(s).as_str(), s);
        }
    }

    #[test]
    fn issue_discards_line_in_devices_is_replaced_in_place() {
        let text = "# local\ndevices {\n\t# issue_discards = 0\n\tissue_discards = 0 # off\n\tscan = [ \"/dev\" ]\n}\nglobal {\n\tissue_discards = 0\n}\n";
        let out = set_issue_discards(text);
        assert_eq!(
            out,
            "# local\ndevices {\n\t# issue_discards = 0\n\tissue_discards = 1\n\tscan = [ \"/dev\" ]\n}\nglobal {\n\tissue_discards = 0\n}\n"
        );
    }

    #[test]
    fn issue_discards_goes_into_an_existing_devices_section() {
        let text = "devices {\n\tscan = [ \"/dev\" ]\n}\n";
        assert_eq!(
            set_issue_discards(text),
            "devices {\n\tscan = [ \"/dev\" ]\n\tissue_discards = 1\n}\n"
        );
        let one_line = "devices { scan = [ \"/dev\" ] }\n";
        assert_eq!(
            set_issue_discards(one_line),
            "devices { scan = [ \"/dev\" ] \n\tissue_discards = 1\n}\n"
        );
    }

    #[test]
    fn commented_or_nested_devices_sections_are_not_edited() {
        let text = "# devices {\n#\tissue_discards = 0\n# }\nlocal {\n\tdevices {\n\t}\n}";
        assert_eq!(
            set_issue_discards(text),
            format!("{text}\n\ndevices {{\n\tissue_discards = 1\n}}\n")
        );
        assert_eq!(
            set_issue_discards(""),
            "devices {\n\tissue_discards = 1\n}\n"
        );
    }

    #[test]
    fn the_debian_lvmlocal_conf_gets_a_devices_section_and_keeps_the_rest() {
        let debian = fixture("lvmlocal.conf-debian12");
        let out = set_issue_discards(&debian);
        assert!(
            out.starts_with(&debian),
            "the original text is kept byte for byte"
        );
        assert!(
            out.ends_with("\ndevices {\n\tissue_discards = 1\n}\n"),
            "{out}"
        );
    }

    #[test]
    fn the_fixed_text_reads_back_through_real_lvmconfig() {
        if find_program("lvmconfig").is_none() {
            eprintln!("lvmconfig not installed: skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/lvm")).unwrap();
        let conf = dir.path().join("etc/lvm/lvmlocal.conf");
        std::fs::write(&conf, "devices {\n\tissue_discards = 0\n}\n").unwrap();
        let root = Sysroot::at(dir.path()).unwrap();
        assert_eq!(issue_discards(&root).unwrap().value, 0);
        let fixed = set_issue_discards(&std::fs::read_to_string(&conf).unwrap());
        std::fs::write(&conf, fixed).unwrap();
        let now = issue_discards(&root).unwrap();
        assert_eq!(now.value, 1);
        assert!(!now.built_in_default);
    }

    #[test]
    fn without_any_config_lvm_defaults_apply() {
        if find_program("lvmconfig").is_none() {
            eprintln!("lvmconfig not installed: skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = Sysroot::at(dir.path()).unwrap();
        let d = issue_discards(&root).unwrap();
        assert_eq!(d.value, 0);
        assert!(d.built_in_default);
    }

    #[test]
    fn device_mapper_from_proc_misc() {
        let dir = tempfile::tempdir().unwrap();
        let root = Sysroot::at(dir.path()).unwrap();
        assert_eq!(device_mapper_loaded(&root), None);
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/misc"), "237 loop-control\n232 kvm\n").unwrap();
        assert_eq!(device_mapper_loaded(&root), Some(false));
        std::fs::write(dir.path().join("proc/misc"), "236 device-mapper\n232 kvm\n").unwrap();
        assert_eq!(device_mapper_loaded(&root), Some(true));
    }
}
