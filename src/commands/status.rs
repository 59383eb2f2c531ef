//! `lab status [PROFILE]`: what lab owns, per profile. It only reads: it never waits for
//! a lock.

use anyhow::Result;
use serde::Serialize;

use crate::cli::{GlobalArgs, StatusArgs};
use crate::error::exit;
use crate::libvirt::{Libvirt, Pause};
use crate::observe::Observed;
use crate::storage::Storage;
use crate::storage::lvm_thin::LvmThinStorage;
use crate::ui::{self, Stream, Style, Table};

#[derive(Serialize)]
struct StatusVm {
    name: String,
    domain: String,
    /// `running`, `paused`, `saved` or `shut off`.
    state: String,
    /// What libvirt is doing to a paused VM on its own: `saving` its memory (a `lab stop`
    /// goes on in libvirtd after lab was killed) or `starting` it from saved memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    doing: Option<&'static str>,
    ip: Option<String>,
    disk: Option<String>,
    disk_allocated: Option<u64>,
}

/// A published port: `host` on the host reaches `vm:port` at `target`.
#[derive(Serialize)]
struct StatusForward {
    name: String,
    vm: String,
    port: u16,
    host: String,
    target: String,
    proto: &'static str,
    /// All of its rules are there, none below libvirt's (else an interrupted `lab up` left
    /// half, or libvirt rewrote its chains: the next `lab up` or `lab start` makes it
    /// whole, `lab down` removes what is there).
    whole: bool,
    /// Where its missing rules belong, `TABLE CHAIN` (`filter LIBVIRT_FWI`: libvirt's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<String>,
}

#[derive(Serialize)]
struct StatusLab {
    profile: String,
    network: Option<String>,
    network_active: bool,
    vms: Vec<StatusVm>,
    forwards: Vec<StatusForward>,
    snapshots: Vec<crate::snapshot::Listed>,
}

fn new_lab(profile: &str) -> StatusLab {
    StatusLab {
        profile: profile.to_string(),
        network: None,
        network_active: false,
        vms: vec![],
        forwards: vec![],
        snapshots: vec![],
    }
}

/// `lab status [PROFILE]`: what lab owns, grouped by profile.
pub fn status(global: &GlobalArgs, args: &StatusArgs) -> Result<u8> {
    let lv = Libvirt::open(&global.connect)?;
    let observed = Observed::from_libvirt(&lv)?;
    let mut labs: std::collections::BTreeMap<String, StatusLab> = Default::default();
    let wanted = |p: &str| args.profile.as_deref().is_none_or(|w| w == p);
    for n in &observed.networks {
        if let Some(o) = n.owner.as_ref().filter(|o| wanted(&o.profile)) {
            let lab = labs
                .entry(o.profile.clone())
                .or_insert_with(|| new_lab(&o.profile));
            lab.network = Some(n.name.clone());
            lab.network_active = n.active;
        }
    }
    for d in &observed.domains {
        let Some(o) = d.owner.as_ref().filter(|o| wanted(&o.profile)) else {
            continue;
        };
        let lab = labs
            .entry(o.profile.clone())
            .or_insert_with(|| new_lab(&o.profile));
        let vm = o.vm.clone().unwrap_or_else(|| d.name.clone());
        let disk = lv.domain_disks(&d.name).into_iter().next();
        let mac = crate::names::mac(&o.profile, &vm);
        let pause = lv.domain_pause(&d.name);
        lab.vms.push(StatusVm {
            ip: if d.running {
                lv.lease(&d.name, &mac).map(|ip| ip.to_string())
            } else {
                None
            },
            disk_allocated: disk.as_deref().and_then(disk_allocated),
            disk,
            state: if pause.is_some() {
                "paused"
            } else if d.running {
                "running"
            } else if d.saved {
                "saved"
            } else {
                "shut off"
            }
            .into(),
            doing: match pause {
                Some(Pause::Saving) => Some("saving"),
                Some(Pause::StartingUp) => Some("starting"),
                _ => None,
            },
            domain: d.name.clone(),
            name: vm,
        });
    }
    let rules = crate::forward::observe().unwrap_or_else(|e| {
        ui::warn(format_args!("published ports not read: {e:#}"));
        Vec::new()
    });
    for r in &rules {
        let Some(m) = r.mark.as_ref().filter(|m| wanted(&m.profile)) else {
            continue;
        };
        let lab = labs
            .entry(m.profile.clone())
            .or_insert_with(|| new_lab(&m.profile));
        let name = m.name();
        if lab.forwards.iter().any(|f| f.name == name) {
            continue;
        }
        let table = crate::names::forward_table(&m.profile);
        let mut missing = Vec::new();
        let places = m.places(&table);
        for (i, place) in places.iter().enumerate() {
            let want = places.iter().filter(|q| *q == place).count();
            let have = rules
                .iter()
                .filter(|o| {
                    o.mark.as_ref() == Some(m)
                        && !o.shadowed
                        && (&o.table, o.chain.as_str()) == (&place.0, place.1)
                })
                .count();
            if have < want && !places[..i].contains(place) {
                missing.push(format!("{} {}", place.0, place.1));
            }
        }
        lab.forwards.push(StatusForward {
            whole: missing.is_empty(),
            missing,
            vm: m.vm.clone(),
            port: m.port,
            host: format!("{}:{}", m.host_address, m.host_port),
            target: format!("{}:{}", m.target, m.port),
            proto: m.proto.as_str(),
            name,
        });
    }
    let mut labs: Vec<StatusLab> = labs.into_values().collect();
    for lab in &mut labs {
        lab.vms.sort_by(|a, b| a.name.cmp(&b.name));
        lab.snapshots = snapshots(lab);
    }
    if global.json {
        ui::print_json(&labs)?;
        return Ok(exit::OK);
    }
    if labs.is_empty() {
        ui::info(format_args!(
            "lab owns nothing{} on {}",
            args.profile
                .as_deref()
                .map(|p| format!(" for profile {p}"))
                .unwrap_or_default(),
            global.connect
        ));
        return Ok(exit::OK);
    }
    for lab in &labs {
        println!(
            "{}: network {} ({})",
            lab.profile,
            lab.network.as_deref().unwrap_or("-"),
            if lab.network_active {
                "active"
            } else {
                "inactive"
            }
        );
        let mut t = Table::new(["vm", "state", "ip", "disk use", "disk"]);
        for v in &lab.vms {
            t.row(vec![
                (v.name.clone(), Style::Plain),
                (
                    match v.doing {
                        Some(doing) => format!("{}, {doing}", v.state),
                        None => v.state.clone(),
                    },
                    if v.state == "running" {
                        Style::Green
                    } else {
                        Style::Yellow
                    },
                ),
                (v.ip.clone().unwrap_or_else(|| "-".into()), Style::Plain),
                (
                    v.disk_allocated
                        .map(|b| crate::size::ByteSize(b).to_string())
                        .unwrap_or_else(|| "-".into()),
                    Style::Plain,
                ),
                (v.disk.clone().unwrap_or_else(|| "-".into()), Style::Plain),
            ]);
        }
        print!("{}", t.render(Stream::Stdout));
        for f in &lab.forwards {
            println!(
                "forward {} -> {}:{} ({}, {}){}",
                f.host,
                f.vm,
                f.port,
                f.target,
                f.proto,
                if f.whole {
                    String::new()
                } else {
                    format!(
                        ": not whole (missing in {}), lab up or lab start completes it",
                        f.missing.join(", ")
                    )
                }
            );
        }
        for l in &lab.snapshots {
            println!(
                "snapshot {} ({}, {})",
                l.name,
                ui::ago(crate::observe::now_secs().saturating_sub(l.created)),
                crate::snapshot::describe(l)
            );
        }
    }
    Ok(exit::OK)
}

/// The lab's snapshots. They sit beside its clones: in the directory of a VM's disk image,
/// or, for a lab on a thin pool (or with no VM left), in the image directory of the
/// profile of that name, when lab finds it.
fn snapshots(lab: &StatusLab) -> Vec<crate::snapshot::Listed> {
    let mut dirs: Vec<std::path::PathBuf> = lab
        .vms
        .iter()
        .filter_map(|v| v.disk.as_deref())
        .filter(|d| thin_volume_of(d).is_none())
        .filter_map(|d| std::path::Path::new(d).parent().map(|p| p.to_path_buf()))
        .collect();
    if let Ok(p) = crate::profile::Profile::load(&lab.profile) {
        dirs.push(p.storage.dir);
    }
    dirs.sort();
    dirs.dedup();
    dirs.iter()
        .flat_map(|d| {
            crate::snapshot::listed_in(&crate::names::snapshots_dir(d, &lab.profile), &lab.profile)
        })
        .collect()
}

/// What the host holds for a VM's disk: an image file's blocks, or a thin volume's data in
/// use (read from LVM: a block device's own size says nothing of that).
fn disk_allocated(path: &str) -> Option<u64> {
    match thin_volume_of(path) {
        Some((vg, lv)) => LvmThinStorage::new(vg, "")
            .usage(&crate::storage::Volume {
                name: lv.to_string(),
                path: path.into(),
                format: "raw".into(),
            })
            .ok()
            .map(|u| u.allocated),
        None => crate::storage::qcow2::allocated_bytes(std::path::Path::new(path)).ok(),
    }
}

/// `/dev/VG/LV` (or `/dev/mapper/...` is not ours): the VG and LV of a disk path.
fn thin_volume_of(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/dev/")?;
    let (vg, lv) = rest.split_once('/')?;
    (!vg.is_empty() && vg != "mapper" && !lv.is_empty() && !lv.contains('/')).then_some((vg, lv))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_path_under_dev_vg_is_a_volume() {
        assert_eq!(
            thin_volume_of("/dev/vg_lab/lab-demo-web1"),
            Some(("vg_lab", "lab-demo-web1"))
        );
        assert_eq!(thin_volume_of("/dev/mapper/vg_lab-lab--demo--web1"), None);
        assert_eq!(
            thin_volume_of("/var/lib/lab/images/lab-demo-web1.qcow2"),
            None
        );
        assert_eq!(thin_volume_of("/dev/vda"), None);
    }
}
