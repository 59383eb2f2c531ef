//! The installer domain of a base build: the distribution's installer kernel and initrd
//! (with the kickstart injected) booted directly, the new base as its virtio disk, an ISO
//! as its CD-ROM when the install source is one, QEMU's user-mode network (the installer
//! reaches mirrors through the host, and the host's loopback as 10.0.2.2), and the serial
//! console logged to a file lab follows. Every way of stopping ends the domain: lab waits
//! for it to power off.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use virt::domain::{DomainShutoffReason, DomainState, DomainStateReason};
use virt::enumutil::Enum;

use super::Libvirt;
use super::xml::{
    Clock, Cpu, DiskSource, DiskTarget, Empty, Features, LogSource, Memory, Metadata, Model, Os,
    OsType, Rng, RngBackend, Serial, SerialTarget,
};
use crate::size::ByteSize;
use crate::storage::Volume;

/// What an installer domain is made of.
#[derive(Debug, Clone)]
pub struct InstallerSpec<'a> {
    pub name: &'a str,
    pub profile: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub disk: &'a Volume,
    pub cdrom: Option<&'a Path>,
    pub console: &'a Path,
    pub memory: ByteSize,
    pub vcpus: u32,
    /// KVM really works here; else TCG emulation.
    pub kvm: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename = "domain")]
pub struct InstallerXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub name: String,
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
    pub devices: InstallerDevices,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallerDevices {
    #[serde(rename = "disk")]
    pub disks: Vec<InstallerDisk>,
    pub interface: UserInterface,
    pub serial: Serial,
    pub rng: Rng,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallerDisk {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@device")]
    pub device: &'static str,
    pub driver: InstallerDiskDriver,
    pub source: DiskSource,
    pub target: DiskTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<Empty>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallerDiskDriver {
    #[serde(rename = "@name")]
    pub name: &'static str,
    #[serde(rename = "@type")]
    pub format: String,
    #[serde(rename = "@discard", skip_serializing_if = "Option::is_none")]
    pub discard: Option<&'static str>,
}

/// QEMU's user-mode network: no bridge, no lab network needed, NAT through the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInterface {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub model: Model,
}

pub fn installer_xml(spec: &InstallerSpec<'_>) -> InstallerXml {
    let block = spec.disk.format == "raw";
    let mut disks = vec![InstallerDisk {
        kind: if block { "block" } else { "file" },
        device: "disk",
        driver: InstallerDiskDriver {
            name: "qemu",
            format: spec.disk.format.clone(),
            // The installer's own TRIMs (anaconda discards before it partitions) reach the
            // image.
            discard: Some("unmap"),
        },
        source: DiskSource {
            file: (!block).then(|| spec.disk.path.display().to_string()),
            dev: block.then(|| spec.disk.path.display().to_string()),
        },
        target: DiskTarget {
            dev: "vda".into(),
            bus: "virtio",
        },
        readonly: None,
    }];
    if let Some(iso) = spec.cdrom {
        disks.push(InstallerDisk {
            kind: "file",
            device: "cdrom",
            driver: InstallerDiskDriver {
                name: "qemu",
                format: "raw".into(),
                discard: None,
            },
            source: DiskSource {
                file: Some(iso.display().to_string()),
                dev: None,
            },
            target: DiskTarget {
                dev: "sda".into(),
                bus: "sata",
            },
            readonly: Some(Empty {}),
        });
    }
    InstallerXml {
        kind: if spec.kvm { "kvm" } else { "qemu" },
        name: spec.name.to_string(),
        metadata: Metadata::owner(spec.profile, None),
        memory: Memory {
            unit: "KiB",
            value: spec.memory.bytes() / 1024,
        },
        vcpu: spec.vcpus,
        os: Os {
            kind: OsType {
                arch: "x86_64",
                machine: if spec.cdrom.is_some() { "q35" } else { "pc" },
                value: "hvm",
            },
            kernel: Some(spec.kernel.display().to_string()),
            initrd: Some(spec.initrd.display().to_string()),
            cmdline: Some(spec.cmdline.to_string()),
            boot: None,
        },
        features: Features {
            acpi: Empty {},
            apic: Empty {},
        },
        cpu: Cpu {
            mode: if spec.kvm { "host-model" } else { "maximum" }.into(),
            check: Some("none"),
            features: vec![],
        },
        clock: Clock { offset: "utc" },
        // A reboot would start the installer again from its kernel: it ends the domain
        // too, and lab tells it from a power-off by the console.
        on_poweroff: "destroy",
        on_reboot: "destroy",
        on_crash: "destroy",
        devices: InstallerDevices {
            disks,
            interface: UserInterface {
                kind: "user",
                model: Model { kind: "virtio" },
            },
            serial: Serial {
                kind: "file",
                source: LogSource {
                    path: spec.console.display().to_string(),
                    append: "off",
                },
                target: SerialTarget { port: 0 },
            },
            rng: Rng {
                model: "virtio",
                backend: RngBackend {
                    model: "random",
                    path: "/dev/urandom",
                },
            },
        },
    }
}

/// How a domain stands, as far as waiting for an installer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Shut off; the reason libvirt gives ("Shutdown" for a power-off from inside).
    Off(String),
    /// No such domain.
    Gone,
}

impl RunState {
    pub fn powered_off(&self) -> bool {
        matches!(self, RunState::Off(r) if r == "Shutdown")
    }
}

impl Libvirt {
    /// Where a domain stands: running, off (and why), or gone.
    pub fn run_state(&self, name: &str) -> Result<RunState> {
        let Ok(dom) = self.connect().lookup_domain_by_name(name) else {
            return Ok(RunState::Gone);
        };
        let (state, reason) = dom
            .state()
            .map_err(|e| anyhow::anyhow!("reading the state of domain {name}: {}", e.message()))?;
        Ok(match state {
            Enum::Known(DomainState::Shutoff) => RunState::Off(match reason {
                Enum::Known(DomainStateReason::Shutoff(Enum::Known(r))) => match r {
                    DomainShutoffReason::Shutdown => "Shutdown".into(),
                    other => format!("{other:?}"),
                },
                other => format!("{other:?}"),
            }),
            Enum::Known(DomainState::Crashed) => RunState::Off("Crashed".into()),
            _ => RunState::Running,
        })
    }

    /// The owner mark of a domain, when it exists.
    pub fn domain_owner(&self, name: &str) -> Option<Option<crate::state::Owner>> {
        let dom = self.connect().lookup_domain_by_name(name).ok()?;
        Some(
            dom.xml_desc(0)
                .ok()
                .and_then(|x| super::read::DomainDef::from_xml(&x).ok())
                .and_then(|d| d.owner),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::xml::to_xml;

    #[test]
    fn the_installer_boots_its_kernel_with_the_base_as_disk() {
        let disk = Volume {
            name: "lab-demo-base".into(),
            path: "/img/lab-demo-base.g1.qcow2".into(),
            format: "qcow2".into(),
        };
        let spec = InstallerSpec {
            name: "lab-demo-installer",
            profile: "demo",
            kernel: Path::new("/w/vmlinuz"),
            initrd: Path::new("/w/initrd.img"),
            cmdline: "console=ttyS0 inst.ks=file:/ks.cfg",
            disk: &disk,
            cdrom: Some(Path::new("/isos/cs9.iso")),
            console: Path::new("/w/console.log"),
            memory: ByteSize::gib(3),
            vcpus: 2,
            kvm: false,
        };
        let xml = to_xml(&installer_xml(&spec));
        for needle in [
            "<domain type=\"qemu\">",
            "<name>lab-demo-installer</name>",
            "<lab:owner xmlns:lab=\"urn:lab:owner:1\" profile=\"demo\"/>",
            "<memory unit=\"KiB\">3145728</memory>",
            "<kernel>/w/vmlinuz</kernel>",
            "<initrd>/w/initrd.img</initrd>",
            "<cmdline>console=ttyS0 inst.ks=file:/ks.cfg</cmdline>",
            "<on_reboot>destroy</on_reboot>",
            "<source file=\"/img/lab-demo-base.g1.qcow2\"/>",
            "<target dev=\"vda\" bus=\"virtio\"/>",
            "<disk type=\"file\" device=\"cdrom\">",
            "<source file=\"/isos/cs9.iso\"/>",
            "<readonly/>",
            "<interface type=\"user\">",
            "<source path=\"/w/console.log\" append=\"off\"/>",
        ] {
            assert!(xml.contains(needle), "{needle} missing from\n{xml}");
        }
        let owner = crate::libvirt::read::DomainDef::from_xml(&xml)
            .unwrap()
            .owner
            .unwrap();
        assert_eq!(owner.profile, "demo");
        let without = to_xml(&installer_xml(&InstallerSpec {
            cdrom: None,
            ..spec
        }));
        assert!(!without.contains("cdrom"), "{without}");
    }
}
