//! libvirt XML read back: serde types for the parts of a domain's and a network's
//! definition lab looks at (disks, interfaces, channels, lab's owner mark; a network's
//! bridge and addresses). Everything else libvirt adds (ids, aliases, addresses, backing
//! chains, elements of later versions) is skipped. The types lab writes are in `xml.rs`.

use std::fmt;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::mark::Owner;
use crate::names;

/// A domain's definition as libvirt gives it back, live (`virsh dumpxml`) or inactive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DomainDef {
    /// lab's mark, when lab made the domain.
    #[serde(skip)]
    pub owner: Option<Owner>,
    #[serde(default)]
    pub devices: Devices,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
    pub channels: Vec<Channel>,
}

/// Devices in any order: libvirt writes them grouped by kind, but a definition written by
/// hand need not be, and quick-xml's derived lists only take one uninterrupted run each.
impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Devices, D::Error> {
        struct Elements;
        impl<'de> Visitor<'de> for Elements {
            type Value = Devices;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a domain's <devices>")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Devices, A::Error> {
                let mut devices = Devices::default();
                while let Some(element) = map.next_key::<String>()? {
                    match element.as_str() {
                        "disk" => devices.disks.push(map.next_value()?),
                        "interface" => devices.interfaces.push(map.next_value()?),
                        "channel" => devices.channels.push(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(devices)
            }
        }
        de.deserialize_map(Elements)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Disk {
    /// "disk", "cdrom", ...
    #[serde(rename = "@device")]
    pub device: Option<String>,
    pub driver: Option<DiskDriver>,
    /// The image the disk writes to. A running domain's `<backingStore>` chain is not
    /// read: the domain only reads those files.
    pub source: Option<DiskSource>,
    pub target: Option<Target>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DiskDriver {
    /// "unmap" passes the guest's discards down; absent, QEMU ignores them.
    #[serde(rename = "@discard")]
    pub discard: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DiskSource {
    #[serde(rename = "@file")]
    pub file: Option<String>,
    #[serde(rename = "@dev")]
    pub dev: Option<String>,
}

/// A disk's or an interface's `<target dev=.../>`: the guest's disk name, the host's tap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Target {
    #[serde(rename = "@dev")]
    pub dev: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub source: Option<InterfaceSource>,
    /// The tap, in a running domain.
    pub target: Option<Target>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct InterfaceSource {
    #[serde(rename = "@network")]
    pub network: Option<String>,
    /// The bridge libvirt put the tap on, in a running domain.
    #[serde(rename = "@bridge")]
    pub bridge: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Channel {
    pub target: Option<ChannelTarget>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ChannelTarget {
    #[serde(rename = "@name")]
    pub name: Option<String>,
    /// "connected" or "disconnected" in a running domain; absent in a stopped one.
    #[serde(rename = "@state")]
    pub state: Option<String>,
}

impl DomainDef {
    pub fn from_xml(xml: &str) -> Result<DomainDef> {
        let mut def: DomainDef =
            quick_xml::de::from_str(xml).context("parsing a libvirt domain's XML")?;
        def.owner = lab_owner(xml);
        Ok(def)
    }

    /// The image each disk writes to (file or block device). Backing files are left out:
    /// a running domain only reads them, so a base behind running clones may still be
    /// cloned.
    pub fn disk_sources(&self) -> Vec<String> {
        self.devices
            .disks
            .iter()
            .filter_map(|d| d.source.as_ref())
            .flat_map(|s| [&s.file, &s.dev])
            .flatten()
            .cloned()
            .collect()
    }

    /// (image, `discard` attribute) of each disk that is not a CD-ROM.
    pub fn disk_discards(&self) -> Vec<(String, Option<String>)> {
        self.devices
            .disks
            .iter()
            .filter(|d| d.device.as_deref() != Some("cdrom"))
            .filter_map(|d| {
                let source = d.source.as_ref()?;
                let image = source.file.as_ref().or(source.dev.as_ref())?;
                Some((
                    image.clone(),
                    d.driver.as_ref().and_then(|dr| dr.discard.clone()),
                ))
            })
            .collect()
    }

    /// (tap, bridge) of each interface that names both: those of a running domain.
    pub fn interface_links(&self) -> Vec<(String, String)> {
        self.devices
            .interfaces
            .iter()
            .filter_map(|i| {
                let tap = i.target.as_ref()?.dev.clone()?;
                let bridge = i.source.as_ref()?.bridge.clone()?;
                Some((tap, bridge))
            })
            .collect()
    }

    /// The state of the channel named `name`: Some("connected"), Some("disconnected"),
    /// Some("") for a channel without a state (a stopped domain); None when the domain has
    /// no such channel.
    pub fn channel_state(&self, name: &str) -> Option<&str> {
        self.devices
            .channels
            .iter()
            .filter_map(|c| c.target.as_ref())
            .find(|t| t.name.as_deref() == Some(name))
            .map(|t| t.state.as_deref().unwrap_or_default())
    }
}

/// A network's definition as libvirt gives it back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NetworkDef {
    /// lab's mark, when lab made the network.
    #[serde(skip)]
    pub owner: Option<Owner>,
    pub name: String,
    pub bridge: Option<Bridge>,
    #[serde(default, rename = "ip")]
    pub ips: Vec<Ip>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Bridge {
    #[serde(rename = "@name")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Ip {
    #[serde(rename = "@family")]
    pub family: Option<String>,
    #[serde(rename = "@address")]
    pub address: Option<String>,
    #[serde(rename = "@netmask")]
    pub netmask: Option<String>,
    #[serde(rename = "@prefix")]
    pub prefix: Option<u8>,
}

impl NetworkDef {
    pub fn from_xml(xml: &str) -> Result<NetworkDef> {
        let mut def: NetworkDef =
            quick_xml::de::from_str(xml).context("parsing a libvirt network's XML")?;
        def.owner = lab_owner(xml);
        Ok(def)
    }

    pub fn bridge_name(&self) -> Option<&str> {
        self.bridge.as_ref()?.name.as_deref()
    }

    /// The IPv4 subnets of its addresses (a prefix, a netmask, or libvirt's default /24).
    pub fn subnets(&self) -> Vec<Ipv4Net> {
        self.ips
            .iter()
            .filter(|ip| ip.family.as_deref().unwrap_or("ipv4") == "ipv4")
            .filter_map(|ip| {
                let addr: Ipv4Addr = ip.address.as_deref()?.parse().ok()?;
                let prefix = match (ip.prefix, ip.netmask.as_deref()) {
                    (Some(p), _) => p,
                    (None, Some(mask)) => {
                        u32::from(mask.parse::<Ipv4Addr>().ok()?).count_ones() as u8
                    }
                    (None, None) => 24,
                };
                Ipv4Net::new(addr, prefix).ok().map(|n| n.trunc())
            })
            .collect()
    }
}

/// lab's owner element anywhere in a libvirt XML document, found by namespace (whatever
/// prefix the document uses), never by name. Not through serde: quick-xml's deserializer
/// sees local names only, and libvirt keeps a metadata element's namespace binding where
/// it was written (on the element, or on `<metadata>` or the root), so `<x:owner>` under a
/// binding on `<metadata>` and `<o:owner xmlns:o="urn:someone" xmlns:lab="...">` can only
/// be told apart with the namespaces resolved.
fn lab_owner(xml: &str) -> Option<Owner> {
    let mut reader = NsReader::from_str(xml);
    loop {
        match reader.read_resolved_event() {
            Ok((ResolveResult::Bound(ns), Event::Empty(e) | Event::Start(e)))
                if ns.into_inner() == names::XML_NAMESPACE
                    && e.local_name().into_inner() == "owner" =>
            {
                let mut profile = None;
                let mut vm = None;
                for attr in e.attributes().flatten() {
                    let value = attr
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .ok()?
                        .into_owned();
                    match attr.key.local_name().into_inner() {
                        "profile" => profile = Some(value),
                        "vm" => vm = Some(value),
                        _ => {}
                    }
                }
                return Some(Owner {
                    profile: profile?,
                    vm,
                });
            }
            Ok((_, Event::Eof)) | Err(_) => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from libvirt 9.0.0 (qemu:///system, QEMU 7.2 under TCG): see
    /// `tests/fixtures/libvirt/README.md`.
    const RUNNING: &str = include_str!("../../tests/fixtures/libvirt/domain-running.xml");
    const INACTIVE: &str = include_str!("../../tests/fixtures/libvirt/domain-inactive.xml");
    const NAMESPACES: &str =
        include_str!("../../tests/fixtures/libvirt/domain-metadata-namespaces.xml");
    const TEST_DRIVER: &str = include_str!("../../tests/fixtures/libvirt/test-driver-domain.xml");
    const NETWORK: &str = include_str!("../../tests/fixtures/libvirt/network-running.xml");
    const AGENT: &str = "org.qemu.guest_agent.0";

    fn owner(profile: &str, vm: Option<&str>) -> Option<Owner> {
        Some(Owner {
            profile: profile.into(),
            vm: vm.map(str::to_string),
        })
    }

    #[test]
    fn a_running_domain_is_read_as_libvirt_gives_it() {
        let d = DomainDef::from_xml(RUNNING).unwrap();
        assert_eq!(d.owner, owner("xrcap", Some("node1")));
        assert_eq!(
            d.disk_sources(),
            [
                "/tmp/xr-cap/lab-xrcap-node1.qcow2",
                "/dev/loop0",
                "/tmp/xr-cap/install.iso"
            ],
            "the backing file is left out"
        );
        assert_eq!(
            d.disk_discards(),
            [
                (
                    "/tmp/xr-cap/lab-xrcap-node1.qcow2".to_string(),
                    Some("unmap".to_string())
                ),
                ("/dev/loop0".to_string(), Some("unmap".to_string())),
            ],
            "the CD-ROM is left out"
        );
        let targets: Vec<_> = d
            .devices
            .disks
            .iter()
            .map(|d| d.target.as_ref().and_then(|t| t.dev.as_deref()))
            .collect();
        assert_eq!(targets, [Some("vda"), Some("vdb"), Some("hdc")]);
        assert_eq!(
            d.interface_links(),
            [("vnet0".to_string(), "lab-xrcap".to_string())]
        );
        assert_eq!(
            d.devices.interfaces[0]
                .source
                .as_ref()
                .and_then(|s| s.network.as_deref()),
            Some("lab-xrcap")
        );
        assert_eq!(d.channel_state(AGENT), Some("disconnected"));
        assert_eq!(d.channel_state("org.example.other"), None);
    }

    #[test]
    fn a_stopped_domain_has_no_taps_and_no_channel_state() {
        let d = DomainDef::from_xml(INACTIVE).unwrap();
        assert_eq!(d.owner, owner("xrcap", Some("node1")));
        assert_eq!(
            d.disk_sources(),
            [
                "/tmp/xr-cap/lab-xrcap-node1.qcow2",
                "/dev/loop0",
                "/tmp/xr-cap/install.iso"
            ]
        );
        assert_eq!(d.interface_links(), []);
        assert_eq!(d.channel_state(AGENT), Some(""));
    }

    #[test]
    fn the_test_drivers_domain_is_read_too() {
        let d = DomainDef::from_xml(TEST_DRIVER).unwrap();
        assert_eq!(d.owner, None);
        assert_eq!(d.disk_sources(), ["/guest/diskimage1"]);
        assert_eq!(d.disk_discards(), [("/guest/diskimage1".to_string(), None)]);
        assert_eq!(d.interface_links(), [], "a tap without a bridge");
        assert_eq!(d.channel_state(AGENT), None);
    }

    #[test]
    fn a_domain_without_devices_has_nothing_to_read() {
        let d = DomainDef::from_xml("<domain type='test'><name>x</name></domain>").unwrap();
        assert_eq!(d, DomainDef::default());
        assert!(DomainDef::from_xml("not xml <").is_err());
    }

    #[test]
    fn devices_are_read_in_any_order() {
        let xml = "<domain><devices>
  <disk type='file' device='disk'><source file='/img/a.qcow2'/></disk>
  <controller type='usb'/>
  <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>
  <disk type='block' device='disk'><source dev='/dev/vg/b'/></disk>
  <interface type='bridge'><source bridge='br0'/><target dev='vnet1'/></interface>
  <metadata/>
</devices></domain>";
        let d = DomainDef::from_xml(xml).unwrap();
        assert_eq!(d.disk_sources(), ["/img/a.qcow2", "/dev/vg/b"]);
        assert_eq!(d.channel_state(AGENT), Some("connected"));
        assert_eq!(
            d.interface_links(),
            [("vnet1".to_string(), "br0".to_string())]
        );
    }

    #[test]
    fn interface_links_are_the_taps_and_their_bridges() {
        let xml = "<domain><devices>
  <disk type='file' device='disk'><source file='/img/vm.qcow2'/><target dev='vda'/></disk>
  <interface type='network'>
    <mac address='52:54:00:52:ef:39'/>
    <source network='lab-mt' portid='0f' bridge='lab-mt'/>
    <target dev='vnet46'/>
    <model type='virtio'/>
  </interface>
  <interface type='network'><source network='lab-x'/></interface>
</devices></domain>";
        assert_eq!(
            DomainDef::from_xml(xml).unwrap().interface_links(),
            [("vnet46".to_string(), "lab-mt".to_string())]
        );
    }

    #[test]
    fn disk_sources_are_the_images_domains_write() {
        let xml = "<domain><devices>
  <disk type='file' device='disk'><source file='/img/vm.qcow2'/>
    <backingStore type='file'><source file='/img/base.qcow2'/></backingStore></disk>
  <disk type='block' device='disk'><source dev='/dev/vg/lv'/></disk>
  <interface type='network'><source network='lab-x'/></interface>
</devices></domain>";
        assert_eq!(
            DomainDef::from_xml(xml).unwrap().disk_sources(),
            ["/img/vm.qcow2", "/dev/vg/lv"]
        );
    }

    #[test]
    fn lab_s_owner_is_found_by_namespace_wherever_libvirt_binds_it() {
        // libvirt kept the bindings where they were written: lab's namespace bound on
        // <metadata> as `x`, and a foreign `o:owner` that binds lab's namespace unused.
        let d = DomainDef::from_xml(NAMESPACES).unwrap();
        assert_eq!(d.owner, owner("p", Some("v")));
        let foreign_only = NAMESPACES.replace("<x:owner profile=\"p\" vm=\"v\"/>", "");
        assert_eq!(DomainDef::from_xml(&foreign_only).unwrap().owner, None);
    }

    /// The `<metadata>` lab writes (`xml::Metadata`) for `owner`.
    fn metadata(owner: &Owner) -> String {
        let m = crate::libvirt::xml::Metadata::owner(&owner.profile, owner.vm.as_deref());
        quick_xml::se::to_string_with_root("metadata", &m).unwrap()
    }

    #[test]
    fn owner_round_trips_through_xml_whatever_the_prefix() {
        let owner = Owner {
            profile: "smoke".into(),
            vm: Some("node1".into()),
        };
        let doc = format!("<domain><name>x</name>{}</domain>", metadata(&owner));
        assert_eq!(lab_owner(&doc), Some(owner.clone()));
        // libvirt may rewrite the prefix; the namespace is what counts.
        let other = doc
            .replace("<lab:owner", "<x:owner")
            .replace("xmlns:lab=", "xmlns:x=");
        assert_eq!(lab_owner(&other), Some(owner.clone()));
        assert_eq!(DomainDef::from_xml(&other).unwrap().owner, Some(owner));
    }

    #[test]
    fn a_lookalike_in_another_namespace_is_not_lab_s() {
        let doc = "<domain><metadata><o:owner xmlns:o='urn:someone-else' profile='smoke'/>\
                   </metadata></domain>";
        assert_eq!(lab_owner(doc), None);
        assert_eq!(lab_owner("<network><name>lab-smoke</name></network>"), None);
        assert_eq!(lab_owner("not xml <"), None);
    }

    #[test]
    fn hostile_names_are_escaped_in_xml() {
        let owner = Owner {
            profile: "a\"<b>&".into(),
            vm: None,
        };
        assert_eq!(
            lab_owner(&format!("<d>{}</d>", metadata(&owner))),
            Some(owner)
        );
    }

    #[test]
    fn a_running_network_gives_name_bridge_subnets_and_owner() {
        let n = NetworkDef::from_xml(NETWORK).unwrap();
        assert_eq!(n.name, "lab-xrcap");
        assert_eq!(n.bridge_name(), Some("lab-xrcap"));
        assert_eq!(n.subnets(), ["10.213.77.0/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(n.owner, owner("xrcap", None));
    }
}
