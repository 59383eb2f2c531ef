//! What exists now: the libvirt objects and volumes on this host, each with lab's ownership
//! mark when lab made it. Ownership lives in the resources themselves (a `<metadata>`
//! element in lab's XML namespace, LVM tags, a marker beside image files), so there is no
//! state file to drift.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::libvirt::read::{DomainDef, NetworkDef};
use crate::libvirt::{Libvirt, NetworkInfo};
use crate::mark::{Owner, VolumeRole};
use crate::storage::ObservedVolume;

use crate::host::Sysroot;
use crate::host::net::NetFacts;
use crate::profile::{Profile, StorageBackend};
use crate::storage::Storage;
use crate::storage::lvm_thin;
use crate::storage::qcow2::Qcow2Storage;
use crate::subnet;
use crate::ui;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedDomain {
    pub name: String,
    pub owner: Option<Owner>,
    pub running: bool,
    /// Stopped with its memory saved to disk (`lab stop`): its next start resumes it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub saved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedNetwork {
    pub name: String,
    pub bridge: Option<String>,
    pub subnets: Vec<Ipv4Net>,
    pub owner: Option<Owner>,
    pub active: bool,
}

/// One listed domain as lab sees it; None when it is gone since it was listed (a
/// transient domain that ended): there is nothing to plan around.
pub fn observe_domain(dom: &virt::domain::Domain) -> Result<Option<ObservedDomain>> {
    let name = dom.name().context("reading a domain's name")?;
    let xml = match dom.xml_desc(0) {
        Ok(xml) => xml,
        Err(e) if e.code() == virt::error::ErrorNumber::NoDomain.into() => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading the XML of domain {name}")),
    };
    let def =
        DomainDef::from_xml(&xml).with_context(|| format!("reading the XML of domain {name}"))?;
    Ok(Some(ObservedDomain {
        owner: def.owner,
        running: dom.is_active().unwrap_or(false),
        saved: dom.has_managed_save(0).unwrap_or(false),
        name,
    }))
}

/// Everything lab looked at, once, before planning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Observed {
    pub domains: Vec<ObservedDomain>,
    pub networks: Vec<ObservedNetwork>,
    pub volumes: Vec<ObservedVolume>,
    /// Why the profile's kickstart base is to be built: there is none sealed, or it no
    /// longer matches what the profile would build (the rendered kickstart, the install
    /// source or the disk size changed). None when it is current, or not from a kickstart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_out_of_date: Option<String>,
    /// When the profile's kickstart base was built (seconds since the epoch, from its
    /// build record); None when unknown or not from a kickstart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_built_at: Option<u64>,
    /// Whether the direct-boot kernel and initramfs are lab's and made from what the host
    /// has now (read for direct-boot profiles only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub boot_files_current: bool,
    /// Interfaces of running lab domains that are off their bridge (the network was
    /// restarted under them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub detached_taps: Vec<DetachedTap>,
    /// lab's libvirt storage pools (over a thin pool's VG) that are defined and active.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub storage_pools: Vec<String>,
    /// The files lab wrote for the profile beside its images (read for `lab down`).
    pub files: LabFiles,
    /// The VMs of a cloud-init profile whose NoCloud seed exists.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seeded: Vec<String>,
    /// The rules of lab's forward tables, every profile's (a host port is the host's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<crate::forward::ObservedRule>,
    /// Whether the lab's bridge routes loopback addresses (a forward from 127.0.0.1 needs
    /// it; a bridge made again has it off).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub route_localnet: bool,
}

/// Files of one profile that lab wrote beside its images, as found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LabFiles {
    /// Console logs of the profile's VMs and of lab's domains of the profile.
    pub console_logs: Vec<PathBuf>,
    /// The known_hosts files of the profile's VMs.
    pub known_hosts: Vec<PathBuf>,
    /// The cloud-init seeds of the profile's VMs.
    pub seeds: Vec<PathBuf>,
    /// The identity files lab made for the lab and its VMs: host keys and certificates,
    /// the host CA, the peer key pair.
    pub identity: Vec<PathBuf>,
    pub packstack_password: Option<PathBuf>,
    /// lab's SSH key pair for the profile: the files that exist.
    pub ssh_key: Vec<PathBuf>,
    /// Unfinished images interrupted runs left.
    pub unfinished: Vec<PathBuf>,
    /// The directory of unfinished images, when it holds nothing but these.
    pub unfinished_dir: Option<PathBuf>,
    /// lab's marker files of the profile, with what each marks.
    pub marks: Vec<MarkFile>,
    /// The profile's snapshots (`lab snapshot`), each a directory under `snapshots_root`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<crate::snapshot::Listed>,
    #[serde(skip)]
    pub snapshots_root: PathBuf,
}

/// A marker file of lab's and the file it marks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarkFile {
    pub mark: PathBuf,
    pub target: PathBuf,
    pub role: VolumeRole,
    pub target_exists: bool,
}

/// A running domain's interface that is off the bridge libvirt put it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetachedTap {
    pub domain: String,
    pub tap: String,
    pub bridge: String,
}

impl Observed {
    pub fn domain(&self, name: &str) -> Option<&ObservedDomain> {
        self.domains.iter().find(|d| d.name == name)
    }

    pub fn network(&self, name: &str) -> Option<&ObservedNetwork> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// Read domains and networks from libvirt.
    pub fn from_libvirt(lv: &Libvirt) -> Result<Observed> {
        let conn = lv.connect();
        let mut observed = Observed::default();
        for dom in conn
            .list_all_domains(0)
            .context("listing libvirt domains")?
        {
            observed.domains.extend(observe_domain(&dom)?);
        }
        for net in conn
            .list_all_networks(0)
            .context("listing libvirt networks")?
        {
            let Some(xml) = crate::libvirt::network_xml(&net)? else {
                continue;
            };
            let def = NetworkDef::from_xml(&xml)?;
            let owner = def.owner.clone();
            let info = NetworkInfo::from(def);
            observed.networks.push(ObservedNetwork {
                owner,
                active: net.is_active().unwrap_or(false),
                name: info.name,
                bridge: info.bridge,
                subnets: info.subnets,
            });
        }
        Ok(observed)
    }

    /// lab's qcow2 images in `dir`.
    pub fn add_image_dir(&mut self, dir: &Path) -> Result<()> {
        self.volumes.extend(crate::storage::qcow2::images_in(dir)?);
        Ok(())
    }

    /// lab's thin volumes among an LVM report.
    pub fn add_lvs(&mut self, rows: &[crate::host::lvm::LvRow]) {
        self.volumes
            .extend(crate::storage::lvm_thin::lab_volumes(rows));
    }
}

/// Everything `lab up` looks at before planning, looked at once.
/// What exists of `profile`. Its LVs are read as the host's other facts are: from the live
/// LVM, or under `--sysroot` from the LVM report recorded there, never from the live
/// machine for a tree that stands for another.
pub fn lab(lv: &Libvirt, profile: &Profile, sysroot: &Sysroot) -> Result<Observed> {
    let mut observed = Observed::from_libvirt(lv)?;
    observed
        .add_image_dir(&profile.storage.dir)
        .with_context(|| {
            format!(
                "looking for lab's images in {}",
                profile.storage.dir.display()
            )
        })?;
    if let Some(vg) = &profile.storage.vg {
        // A VG that does not exist holds nothing of lab's; LVM that cannot answer is an
        // error only when the profile insists on a thin pool.
        match crate::host::lvm::LvmSource::for_sysroot(sysroot).vg_lvs(vg) {
            Ok(rows) => observed.add_lvs(&rows),
            Err(e) if profile.storage.backend == StorageBackend::LvmThin => {
                return Err(e.context(format!("reading the LVs of volume group {vg}")));
            }
            Err(e) => ui::debug(format_args!("LVs of {vg} not read: {e:#}")),
        }
    }
    // A kickstart base is rebuilt when what it was built from changed (never needing the
    // network to tell). Kickstart bases are qcow2 images beside the profile's images.
    if profile.base.kickstart.is_some() {
        let storage = Qcow2Storage::new(&profile.storage.dir);
        match crate::kickstart::build::rebuild_reason(profile, &storage) {
            Ok(why) => observed.base_out_of_date = why,
            // The build says why, if it comes to one.
            Err(e) => ui::debug(format_args!("whether the base is current: {e:#}")),
        }
        // When it was built, for the planner to tell its age.
        observed.base_built_at = storage
            .base_record(&profile.name)
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str::<crate::kickstart::BuildRecord>(&t).ok())
            .map(|r| r.built_at)
            .filter(|&b| b > 0);
    }
    // An image base is made again when the profile names another image or checksum.
    if profile.base.image.is_some() {
        let storage = Qcow2Storage::new(&profile.storage.dir);
        match crate::cloud::base::rebuild_reason(profile, &storage) {
            Ok(why) => {
                observed.base_out_of_date =
                    why.filter(|_| storage.base(&profile.name).ok().flatten().is_some())
            }
            Err(e) => ui::debug(format_args!("whether the base is current: {e:#}")),
        }
        observed.base_built_at = crate::cloud::base::built_at(profile, &storage);
    }
    let p = profile.name.as_str();
    if profile.base.cloud_init {
        for (vm, _) in profile.instances() {
            let seed =
                crate::cloud::seed::seed_path(&profile.storage.dir, &crate::names::domain(p, &vm));
            if seed.is_file() {
                observed.seeded.push(vm);
            }
        }
    }
    // Interfaces of running lab domains that a restarted network left off its bridge.
    let running: Vec<String> = observed
        .domains
        .iter()
        .filter(|d| d.running && d.owner.as_ref().is_some_and(|o| o.is(p)))
        .map(|d| d.name.clone())
        .collect();
    for domain in running {
        for (tap, bridge) in lv.detached_interfaces(&domain, sysroot) {
            observed.detached_taps.push(crate::observe::DetachedTap {
                domain: domain.clone(),
                tap,
                bridge,
            });
        }
    }
    // Published ports: read when the profile has some, or lab's table of it exists.
    match crate::forward::observe() {
        Ok(rules) => observed.forwards = rules,
        Err(e) if profile.forwards.is_empty() => ui::debug(format_args!("nftables rules: {e:#}")),
        Err(e) => return Err(e),
    }
    observed.route_localnet = crate::forward::route_localnet(sysroot, &crate::names::bridge(p));
    if profile.direct_boot() {
        observed.boot_files_current =
            crate::directboot::boot_files_current(&profile.storage.dir, &profile.name, sysroot);
    }
    if let Some(vg) = &profile.storage.vg {
        match lvm_thin::lab_libvirt_pool(lv, vg) {
            Ok(Some(pool)) if pool.active => observed.storage_pools.push(pool.name),
            Ok(_) => {}
            Err(e) => ui::debug(format_args!("libvirt storage pools: {e:#}")),
        }
    }
    Ok(observed)
}

/// The files lab wrote for `profile` beside its images: console logs and host keys of its
/// VMs (and of lab's domains of the profile it no longer names), the packstack password,
/// lab's SSH key, unfinished images, and lab's marker files with what they mark.
pub fn lab_files(profile: &Profile, observed: &Observed) -> crate::observe::LabFiles {
    use crate::mark::Marker;
    use crate::observe::MarkFile;
    let p = profile.name.as_str();
    let dir = &profile.storage.dir;
    let mut domains: Vec<String> = profile
        .instances()
        .into_iter()
        .map(|(vm, _)| crate::names::domain(p, &vm))
        .collect();
    for d in &observed.domains {
        if d.owner.as_ref().is_some_and(|o| o.is(p)) && !domains.contains(&d.name) {
            domains.push(d.name.clone());
        }
    }
    let existing = |paths: Vec<std::path::PathBuf>| -> Vec<std::path::PathBuf> {
        paths.into_iter().filter(|f| f.exists()).collect()
    };
    let key = crate::guest::ssh::lab_key_path(dir, p);
    let mut marks = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let mark = entry.path();
        let Some(target) = mark
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".lab"))
            .map(|t| dir.join(t))
        else {
            continue;
        };
        let Some(marker) = Marker::read(&target) else {
            continue;
        };
        if marker.owner.is(p) {
            marks.push(MarkFile {
                target_exists: target.exists(),
                mark,
                target,
                role: marker.role,
            });
        }
    }
    marks.sort_by(|a, b| a.mark.cmp(&b.mark));
    let qcow2 = Qcow2Storage::new(dir);
    let unfinished = qcow2.partial(p);
    let snapshots_root = crate::names::snapshots_dir(dir, p);
    crate::observe::LabFiles {
        console_logs: existing(
            domains
                .iter()
                .map(|d| crate::libvirt::console::console_log(dir, d))
                .collect(),
        ),
        known_hosts: existing(
            domains
                .iter()
                .map(|d| crate::guest::ssh::known_hosts_path(dir, d))
                .collect(),
        ),
        seeds: existing(
            domains
                .iter()
                .map(|d| crate::cloud::seed::seed_path(dir, d))
                .collect(),
        ),
        identity: existing(crate::guest::identity::files(dir, p, &domains)),
        packstack_password: Some(crate::names::packstack_password(dir, p)).filter(|f| f.exists()),
        ssh_key: existing(vec![crate::guest::ssh::pub_path(&key), key]),
        unfinished_dir: Some(qcow2.partial_dir()).filter(|d| {
            std::fs::read_dir(d)
                .is_ok_and(|entries| entries.flatten().all(|e| unfinished.contains(&e.path())))
        }),
        unfinished,
        marks,
        snapshots: crate::snapshot::listed_in(&snapshots_root, p),
        snapshots_root,
    }
}

/// What the planner needs to know of the host.
pub fn host_facts(sysroot: &Sysroot, profile: &Profile) -> HostFacts {
    let net = NetFacts::read(sysroot);
    let mut thin_pools = Vec::new();
    if let (Some(vg), Some(pool)) = (&profile.storage.vg, &profile.storage.pool)
        && thin_pool_exists(sysroot, vg, pool)
    {
        thin_pools.push((vg.clone(), pool.clone()));
    }
    HostFacts {
        kvm: crate::check::kvm::verdict_cached(sysroot),
        taken: subnet::taken_by_host(&net),
        thin_pools,
        now: now_secs(),
        interfaces: net.ifaces.iter().map(|i| i.name.clone()).collect(),
        addresses: net.local_addrs.clone(),
        listeners: crate::host::ports::listeners_on(
            sysroot,
            &profile
                .forwards()
                .iter()
                .map(|f| f.host_port)
                .collect::<Vec<_>>(),
        ),
    }
}

/// Whether `vg/pool` is a thin pool on the host the sysroot describes.
fn thin_pool_exists(sysroot: &Sysroot, vg: &str, pool: &str) -> bool {
    let source = crate::host::lvm::LvmSource::for_sysroot(sysroot);
    source
        .lvs(vg, pool)
        .is_ok_and(|rows| crate::host::lvm::ThinPool::find(&rows, vg, pool).is_some())
}

/// What lab knows of the host when it plans.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    pub kvm: crate::host::kvm::KvmVerdict,
    /// Networks the host's routes, addresses and VPNs use (libvirt networks are observed
    /// state: the planner adds all but the lab's own).
    pub taken: Vec<crate::subnet::Taken>,
    /// Thin pools that exist, as (VG, pool).
    pub thin_pools: Vec<(String, String)>,
    /// The host's clock, in seconds since the epoch (the base's age is told from it); 0
    /// when unknown.
    pub now: u64,
    /// The host's network interfaces, by name (a lab bridge without its network is one).
    pub interfaces: Vec<String>,
    /// The host's own IPv4 addresses (loopback ones left out), where a forward may publish.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<std::net::Ipv4Addr>,
    /// Listening TCP sockets on the host ports the profile publishes, with their holders.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<crate::host::ports::Listener>,
}

/// The host's clock, in seconds since the epoch (0 if it is before 1970).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mark::{Marker, marker_path};

    #[test]
    fn thin_volumes_are_lab_s_by_their_tags() {
        use crate::host::lvm::parse_lvs;
        // Captured from a real thin pool in the TCG guest harness: tags "lab,lab-profile-demo".
        let text = include_str!("../tests/fixtures/lvm/guest-lvs-pool-50.json");
        let mut rows = parse_lvs(text).unwrap();
        let mut observed = Observed::default();
        observed.add_lvs(&rows);
        let names: Vec<&str> = observed.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            ["lab-demo-base", "lab-demo-db1", "lab-demo-web1"],
            "the pool itself is no volume"
        );
        assert!(
            observed
                .volumes
                .iter()
                .all(|v| v.owner.as_ref().is_some_and(|o| o.is("demo")))
        );
        // Without role tags lab does not claim a role for them.
        assert!(observed.volumes.iter().all(|v| v.role.is_none()));

        // Tagged as lab writes them now: base read-only, clones with their VM.
        rows[0].lv_tags = vec![
            "lab".into(),
            "lab-profile-demo".into(),
            "lab-role-base".into(),
        ];
        rows[0].lv_attr = "Vri-a-t---".into();
        rows[2].lv_tags = vec![
            "lab".into(),
            "lab-profile-demo".into(),
            "lab-role-clone".into(),
            "lab-vm-web1".into(),
        ];
        // Someone else's LV with lab-like tags but without the `lab` tag.
        rows[1].lv_tags = vec!["lab-profile-demo".into()];
        let mut observed = Observed::default();
        observed.add_lvs(&rows);
        let base = &observed.volumes[0];
        assert_eq!((base.role, base.sealed), (Some(VolumeRole::Base), true));
        assert_eq!(observed.volumes[1].owner, None);
        let clone = &observed.volumes[2];
        assert_eq!(clone.role, Some(VolumeRole::Clone));
        assert_eq!(clone.owner.as_ref().unwrap().vm.as_deref(), Some("web1"));
        assert_eq!(clone.location, "vg_lab/lab-demo-web1");
    }

    #[test]
    fn images_without_a_marker_are_not_lab_s() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("theirs.qcow2"), b"").unwrap();
        let ours = dir.path().join("lab-smoke-base.qcow2");
        std::fs::write(&ours, b"").unwrap();
        let marker = Marker {
            owner: Owner {
                profile: "smoke".into(),
                vm: None,
            },
            role: VolumeRole::Base,
        };
        std::fs::write(marker_path(&ours), serde_json::to_string(&marker).unwrap()).unwrap();
        let mut observed = Observed::default();
        observed.add_image_dir(dir.path()).unwrap();
        assert_eq!(observed.volumes.len(), 2);
        assert_eq!(observed.volumes[0].name, "lab-smoke-base.qcow2");
        assert_eq!(observed.volumes[0].role, Some(VolumeRole::Base));
        assert_eq!(observed.volumes[1].name, "theirs.qcow2");
        assert_eq!(observed.volumes[1].owner, None);
    }
}
