//! What exists now: the libvirt objects and volumes on this host, each with lab's ownership
//! mark when lab made it. Ownership lives in the resources themselves (a `<metadata>`
//! element in lab's XML namespace, LVM tags, a marker beside image files), so there is no
//! state file to drift.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::libvirt::read::{DomainDef, NetworkDef};
use crate::libvirt::{Libvirt, NetworkInfo};
use crate::names;

/// lab's mark on a resource: which profile (and VM) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

impl Owner {
    pub fn is(&self, profile: &str) -> bool {
        self.profile == profile
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedDomain {
    pub name: String,
    pub owner: Option<Owner>,
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedNetwork {
    pub name: String,
    pub bridge: Option<String>,
    pub subnets: Vec<Ipv4Net>,
    pub owner: Option<Owner>,
    pub active: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeRole {
    Base,
    Clone,
    /// A kernel or initramfs lab boots VMs with directly (the smoke profile's).
    Boot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedVolume {
    /// LV name or image file name.
    pub name: String,
    pub location: String,
    pub owner: Option<Owner>,
    pub role: Option<VolumeRole>,
    /// A base is sealed (read-only) once its build finished; an unsealed one is the
    /// leftover of an interrupted build. Clones are always "sealed".
    pub sealed: bool,
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
}

/// Files of one profile that lab wrote beside its images, as found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LabFiles {
    /// Console logs of the profile's VMs and of lab's domains of the profile.
    pub console_logs: Vec<PathBuf>,
    /// The known_hosts files of the profile's VMs.
    pub known_hosts: Vec<PathBuf>,
    pub packstack_password: Option<PathBuf>,
    /// lab's SSH key pair for the profile: the files that exist.
    pub ssh_key: Vec<PathBuf>,
    /// Unfinished images interrupted runs left.
    pub unfinished: Vec<PathBuf>,
    /// The directory of unfinished images, when it holds nothing but these.
    pub unfinished_dir: Option<PathBuf>,
    /// lab's marker files of the profile, with what each marks.
    pub marks: Vec<MarkFile>,
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

    /// Read lab's qcow2 images in `dir`: each image lab made has a marker file beside it.
    pub fn add_image_dir(&mut self, dir: &Path) -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "qcow2") {
                let marker = Marker::read(&path);
                found.push(ObservedVolume {
                    name: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    location: path.display().to_string(),
                    owner: marker.as_ref().map(|m| m.owner.clone()),
                    sealed: marker.as_ref().is_none_or(|m| m.role != VolumeRole::Base)
                        || std::fs::metadata(&path).is_ok_and(|m| m.permissions().readonly()),
                    role: marker.map(|m| m.role),
                });
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        self.volumes.extend(found);
        Ok(())
    }
}

impl Observed {
    /// lab's thin volumes among an LVM report: ownership and role come from LVM tags
    /// (`lab`, `lab-profile-P`, `lab-vm-V`, `lab-role-base|clone`); a base is sealed once
    /// it is read-only (`lv_attr` permission `r`). An LV without the `lab` tag is listed
    /// with no owner, so the planner never touches it.
    pub fn add_lvs(&mut self, rows: &[crate::host::lvm::LvRow]) {
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
                _ => None,
            });
            let read_only = row.lv_attr.chars().nth(1) == Some('r');
            self.volumes.push(ObservedVolume {
                name: row.lv_name.clone(),
                location: format!("{}/{}", row.vg_name, row.lv_name),
                sealed: role != Some(VolumeRole::Base) || read_only,
                owner,
                role,
            });
        }
    }
}

/// The marker beside an image file that says it is lab's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub owner: Owner,
    pub role: VolumeRole,
}

impl Marker {
    /// The marker beside `image`, when there is one lab can read: a missing or unreadable
    /// marker means the file is not lab's.
    pub fn read(image: &Path) -> Option<Marker> {
        serde_json::from_str(&std::fs::read_to_string(marker_path(image)).ok()?).ok()
    }
}

/// `<image>.lab`: where the marker of an image file lives.
pub fn marker_path(image: &Path) -> PathBuf {
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push(".lab");
    image.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

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
