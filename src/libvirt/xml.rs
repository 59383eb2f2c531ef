//! libvirt XML from types: serde structs for the network and domain documents lab defines,
//! serialized with quick-xml, so escaping is never a question.

use serde::Serialize;

use crate::names;

/// `<metadata><lab:owner .../></metadata>`: lab's ownership mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    #[serde(rename = "lab:owner")]
    pub owner: OwnerXml,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerXml {
    #[serde(rename = "@xmlns:lab")]
    pub xmlns: &'static str,
    #[serde(rename = "@profile")]
    pub profile: String,
    #[serde(rename = "@vm", skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

impl Metadata {
    pub fn owner(profile: &str, vm: Option<&str>) -> Self {
        Metadata {
            owner: OwnerXml {
                xmlns: names::XML_NAMESPACE,
                profile: profile.to_string(),
                vm: vm.map(str::to_string),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename = "network")]
pub struct NetworkXml {
    pub name: String,
    pub metadata: Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    pub bridge: Bridge,
    pub domain: DnsDomain,
    pub ip: Ip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Forward {
    #[serde(rename = "@mode")]
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bridge {
    #[serde(rename = "@name")]
    pub name: String,
    #[serde(rename = "@stp")]
    pub stp: &'static str,
    #[serde(rename = "@delay")]
    pub delay: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsDomain {
    #[serde(rename = "@name")]
    pub name: String,
    /// Answer for the lab's domain locally, never forward it.
    #[serde(rename = "@localOnly")]
    pub local_only: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ip {
    #[serde(rename = "@address")]
    pub address: String,
    #[serde(rename = "@prefix")]
    pub prefix: u8,
    pub dhcp: Dhcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dhcp {
    pub range: Range,
    #[serde(rename = "host", default)]
    pub hosts: Vec<DhcpHost>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Range {
    #[serde(rename = "@start")]
    pub start: String,
    #[serde(rename = "@end")]
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhcpHost {
    #[serde(rename = "@mac")]
    pub mac: String,
    #[serde(rename = "@name")]
    pub name: String,
    #[serde(rename = "@ip")]
    pub ip: String,
}

/// A domain lab defines: a lab VM ([`domain_for`]) or a base build's installer
/// (`installer::installer_xml`), which differ in their devices and boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename = "domain")]
pub struct DomainXml {
    /// "kvm", or "qemu" for TCG emulation.
    #[serde(rename = "@type")]
    pub kind: String,
    pub name: String,
    /// A lab VM's is derived from profile and VM ([`names::domain_uuid`]); libvirt picks
    /// one for the installer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub metadata: Metadata,
    pub memory: Memory,
    pub vcpu: u32,
    pub os: Os,
    pub features: Features,
    pub cpu: Cpu,
    pub clock: Clock,
    pub on_poweroff: &'static str,
    pub on_reboot: &'static str,
    pub on_crash: &'static str,
    pub devices: Devices,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Memory {
    #[serde(rename = "@unit")]
    pub unit: &'static str,
    #[serde(rename = "$text")]
    pub value: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Os {
    #[serde(rename = "type")]
    pub kind: OsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OsType {
    #[serde(rename = "@arch")]
    pub arch: &'static str,
    #[serde(rename = "@machine")]
    pub machine: &'static str,
    #[serde(rename = "$text")]
    pub value: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Boot {
    #[serde(rename = "@dev")]
    pub dev: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Features {
    pub acpi: Empty,
    pub apic: Empty,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cpu {
    #[serde(rename = "@mode")]
    pub mode: String,
    #[serde(rename = "@check", skip_serializing_if = "Option::is_none")]
    pub check: Option<&'static str>,
    #[serde(rename = "feature", default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<CpuFeature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuFeature {
    #[serde(rename = "@policy")]
    pub policy: &'static str,
    #[serde(rename = "@name")]
    pub name: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clock {
    #[serde(rename = "@offset")]
    pub offset: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Devices {
    #[serde(rename = "disk")]
    pub disks: Vec<Disk>,
    #[serde(rename = "interface")]
    pub interfaces: Vec<Interface>,
    pub serial: Serial,
    /// The guest agent's; an installer has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graphics: Option<Graphics>,
    pub rng: Rng,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// "file" or "block".
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@device")]
    pub device: &'static str,
    pub driver: DiskDriver,
    pub source: DiskSource,
    pub target: DiskTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<Empty>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskDriver {
    #[serde(rename = "@name")]
    pub name: &'static str,
    #[serde(rename = "@type")]
    pub format: String,
    /// "unmap": TRIM inside the guest reaches the image or the thin pool.
    #[serde(rename = "@discard", skip_serializing_if = "Option::is_none")]
    pub discard: Option<&'static str>,
    #[serde(rename = "@detect_zeroes", skip_serializing_if = "Option::is_none")]
    pub detect_zeroes: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskSource {
    #[serde(rename = "@file", skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(rename = "@dev", skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskTarget {
    #[serde(rename = "@dev")]
    pub dev: String,
    #[serde(rename = "@bus")]
    pub bus: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// "network", or "user" (QEMU's user-mode network, which has no MAC or source to give).
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<NetSource>,
    pub model: Model,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mac {
    #[serde(rename = "@address")]
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetSource {
    #[serde(rename = "@network")]
    pub network: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Model {
    #[serde(rename = "@type")]
    pub kind: &'static str,
}

/// The serial console, logged to a file lab reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Serial {
    /// "file" (a log only: an installer's), or "pty" (a console `lab console` attaches
    /// to, with its log written all the same).
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<LogSource>,
    pub target: SerialTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<SerialLog>,
}

/// The file a pty console's output is also written to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SerialLog {
    #[serde(rename = "@file")]
    pub file: String,
    #[serde(rename = "@append")]
    pub append: &'static str,
}

/// A display for virt-viewer and virt-manager (`[[vm]] graphics`), on the host's loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Graphics {
    /// "spice" or "vnc".
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@autoport")]
    pub autoport: &'static str,
    #[serde(rename = "@listen")]
    pub listen: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogSource {
    #[serde(rename = "@path")]
    pub path: String,
    #[serde(rename = "@append")]
    pub append: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SerialTarget {
    #[serde(rename = "@port")]
    pub port: u32,
}

/// The qemu guest agent's channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub target: ChannelTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelTarget {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@name")]
    pub name: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rng {
    #[serde(rename = "@model")]
    pub model: &'static str,
    pub backend: RngBackend,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RngBackend {
    #[serde(rename = "@model")]
    pub model: &'static str,
    #[serde(rename = "$text")]
    pub path: &'static str,
}

/// A libvirt storage pool of type `dir` over `/dev/VG`, the directory that holds a link per
/// active LV of a volume group. libvirt's `dir` backend lists the entries of its target and
/// opens regular files and block devices alike, so the VG's active LVs, thin volumes
/// included, are its volumes. It never runs an LVM command; lab never asks libvirt to build
/// or delete it (that would mkdir or rmdir the target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename = "pool")]
pub struct StoragePoolXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub name: String,
    pub target: PoolTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolTarget {
    pub path: String,
}

/// lab's pool over `vg`: named [`names::storage_pool`], a `dir` pool over `/dev/VG`.
pub fn dir_pool_for(vg: &str) -> StoragePoolXml {
    StoragePoolXml {
        kind: "dir",
        name: names::storage_pool(vg),
        target: PoolTarget {
            path: names::vg_dir(vg),
        },
    }
}

/// Direct kernel boot: what the domain boots instead of its disk's bootloader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
}

/// Serialize a document; the types above cannot fail to serialize.
pub fn to_xml<T: Serialize>(doc: &T) -> String {
    let mut out = String::new();
    let mut ser = quick_xml::se::Serializer::new(&mut out);
    ser.indent(' ', 2);
    doc.serialize(ser)
        .expect("lab's XML types always serialize");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_xml_carries_owner_and_escapes() {
        let net = NetworkXml {
            name: "lab-smoke".into(),
            metadata: Metadata::owner("sm<o>ke", None),
            forward: None,
            bridge: Bridge {
                name: "lab-smoke".into(),
                stp: "on",
                delay: 0,
            },
            domain: DnsDomain {
                name: "smoke.lab".into(),
                local_only: "yes",
            },
            ip: Ip {
                address: "10.213.7.1".into(),
                prefix: 24,
                dhcp: Dhcp {
                    range: Range {
                        start: "10.213.7.100".into(),
                        end: "10.213.7.254".into(),
                    },
                    hosts: vec![DhcpHost {
                        mac: "52:54:00:00:00:01".into(),
                        name: "node1".into(),
                        ip: "10.213.7.10".into(),
                    }],
                },
            },
        };
        let xml = to_xml(&net);
        println!("{xml}");
        assert!(
            xml.contains("<lab:owner xmlns:lab=\"urn:lab:owner:1\" profile=\"sm&lt;o&gt;ke\"/>"),
            "{xml}"
        );
        let owner = crate::libvirt::read::NetworkDef::from_xml(&xml)
            .unwrap()
            .owner
            .unwrap();
        assert_eq!(owner.profile, "sm<o>ke");
        assert!(!xml.contains("<forward"));
    }

    #[test]
    fn lab_pool_is_a_dir_pool_over_the_volume_groups_directory() {
        let xml = to_xml(&dir_pool_for("vg_lab"));
        assert_eq!(
            xml,
            "<pool type=\"dir\">\n  <name>lab-vg_lab</name>\n  <target>\n    \
             <path>/dev/vg_lab</path>\n  </target>\n</pool>"
        );
        let info = crate::libvirt::StoragePoolInfo::from_xml(&xml).unwrap();
        assert_eq!(info.name, "lab-vg_lab");
        assert_eq!(info.kind, "dir");
        assert_eq!(info.source_name, None);
        assert_eq!(info.target_path.as_deref(), Some("/dev/vg_lab"));
        assert!(!xml.contains("<source"), "{xml}");
    }

    #[test]
    fn an_older_labs_logical_pool_is_read_with_its_volume_group() {
        // What lab defined before its pool became a dir pool.
        let xml = "<pool type='logical'><name>lab-vg_lab</name><source><name>vg_lab</name>\
                   <format type='lvm2'/></source><target><path>/dev/vg_lab</path></target></pool>";
        let info = crate::libvirt::StoragePoolInfo::from_xml(xml).unwrap();
        assert_eq!(info.name, "lab-vg_lab");
        assert_eq!(info.kind, "logical");
        assert_eq!(info.source_name.as_deref(), Some("vg_lab"));
        assert_eq!(info.target_path.as_deref(), Some("/dev/vg_lab"));
        assert!(!info.active && !info.autostart);
    }
}

/// A domain document without its disks' `<backingStore>` elements: libvirt takes a
/// backing chain written in the XML as given, and a chain read back from an old definition
/// (the one saved with a VM's memory) would hide a layer put under the disk since.
pub fn without_backing_stores(xml: &str) -> anyhow::Result<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut writer = quick_xml::Writer::new(Vec::new());
    let mut skipping = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| anyhow::anyhow!("parsing domain XML: {e}"))?;
        match &event {
            Event::Eof => break,
            Event::Start(e) if skipping > 0 || e.name().into_inner() == "backingStore" => {
                skipping += 1;
                continue;
            }
            Event::End(_) if skipping > 0 => {
                skipping -= 1;
                continue;
            }
            Event::Empty(e) if skipping > 0 || e.name().into_inner() == "backingStore" => continue,
            _ if skipping > 0 => continue,
            _ => {}
        }
        writer
            .write_event(event)
            .map_err(|e| anyhow::anyhow!("writing domain XML: {e}"))?;
    }
    String::from_utf8(writer.into_inner()).map_err(|e| anyhow::anyhow!("domain XML: {e}"))
}

#[cfg(test)]
mod backing_store_tests {
    #[test]
    fn backing_stores_are_dropped_and_the_rest_kept() {
        let xml = "<domain type='kvm'><name>a&amp;b</name><devices><disk type='file' device='disk'>\
            <source file='/i/c.qcow2'/><backingStore type='file'><format type='qcow2'/>\
            <source file='/i/b.qcow2'/><backingStore/></backingStore>\
            <target dev='vda'/></disk></devices></domain>";
        let out = super::without_backing_stores(xml).unwrap();
        assert_eq!(
            out,
            "<domain type='kvm'><name>a&amp;b</name><devices><disk type='file' device='disk'>\
             <source file='/i/c.qcow2'/><target dev='vda'/></disk></devices></domain>"
        );
    }
}
