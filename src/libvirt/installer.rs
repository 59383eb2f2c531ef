//! The installer domain of a base build: the distribution's installer kernel and initrd
//! (with the kickstart injected) booted directly, the new base as its virtio disk, an ISO
//! as its CD-ROM when the install source is one, QEMU's user-mode network (the installer
//! reaches mirrors through the host, and the host's loopback as 10.0.2.2), and the serial
//! console logged to a file lab follows. Every way of stopping ends the domain: lab waits
//! for it to power off.

use std::path::Path;

use anyhow::Result;
use virt::domain::{DomainShutoffReason, DomainState, DomainStateReason};
use virt::enumutil::Enum;

use super::Libvirt;
use super::xml::{
    Clock, Cpu, Devices, Disk, DiskDriver, DiskSource, DiskTarget, DomainXml, Empty, Features,
    Interface, LogSource, Memory, Metadata, Model, Os, OsType, Rng, RngBackend, Serial,
    SerialTarget,
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

/// The installer's domain: a domain like a lab VM's, booting the installer's kernel, with
/// its own devices (the CD-ROM, the user-mode network, no guest agent channel).
pub fn installer_xml(spec: &InstallerSpec<'_>) -> DomainXml {
    let block = spec.disk.format == "raw";
    let mut disks = vec![Disk {
        kind: if block { "block" } else { "file" },
        device: "disk",
        driver: DiskDriver {
            name: "qemu",
            format: spec.disk.format.clone(),
            // The installer's own TRIMs (anaconda discards before it partitions) reach the
            // image.
            discard: Some("unmap"),
            detect_zeroes: None,
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
        disks.push(Disk {
            kind: "file",
            device: "cdrom",
            driver: DiskDriver {
                name: "qemu",
                format: "raw".into(),
                discard: None,
                detect_zeroes: None,
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
    DomainXml {
        kind: if spec.kvm { "kvm" } else { "qemu" }.into(),
        name: spec.name.to_string(),
        uuid: None,
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
        devices: Devices {
            disks,
            // QEMU's user-mode network: no bridge, no lab network needed, NAT through the
            // host.
            interfaces: vec![Interface {
                kind: "user",
                mac: None,
                source: None,
                model: Model { kind: "virtio" },
            }],
            serial: Serial {
                kind: "file",
                source: Some(LogSource {
                    path: spec.console.display().to_string(),
                    append: "off",
                }),
                target: SerialTarget { port: 0 },
                log: None,
            },
            channel: None,
            graphics: None,
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
    pub fn domain_owner(&self, name: &str) -> Option<Option<crate::mark::Owner>> {
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

    /// What `installer_xml` wrote when the installer had its own copy of the domain types
    /// (commit 28fe3f9): the domain it defines is unchanged, byte for byte.
    const WITH_CDROM: &str = r#"<domain type="qemu">
  <name>lab-demo-installer</name>
  <metadata>
    <lab:owner xmlns:lab="urn:lab:owner:1" profile="demo"/>
  </metadata>
  <memory unit="KiB">3145728</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch="x86_64" machine="q35">hvm</type>
    <kernel>/w/vmlinuz</kernel>
    <initrd>/w/initrd.img</initrd>
    <cmdline>console=ttyS0 inst.ks=file:/ks.cfg</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode="maximum" check="none"/>
  <clock offset="utc"/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" discard="unmap"/>
      <source file="/img/lab-demo-base.g1.qcow2"/>
      <target dev="vda" bus="virtio"/>
    </disk>
    <disk type="file" device="cdrom">
      <driver name="qemu" type="raw"/>
      <source file="/isos/cs9.iso"/>
      <target dev="sda" bus="sata"/>
      <readonly/>
    </disk>
    <interface type="user">
      <model type="virtio"/>
    </interface>
    <serial type="file">
      <source path="/w/console.log" append="off"/>
      <target port="0"/>
    </serial>
    <rng model="virtio">
      <backend model="random">/dev/urandom</backend>
    </rng>
  </devices>
</domain>"#;
    const ON_A_BLOCK_DEVICE_UNDER_KVM: &str = r#"<domain type="kvm">
  <name>lab-demo-installer</name>
  <metadata>
    <lab:owner xmlns:lab="urn:lab:owner:1" profile="demo"/>
  </metadata>
  <memory unit="KiB">3145728</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <kernel>/w/vmlinuz</kernel>
    <initrd>/w/initrd.img</initrd>
    <cmdline>console=ttyS0 inst.ks=file:/ks.cfg</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode="host-model" check="none"/>
  <clock offset="utc"/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type="block" device="disk">
      <driver name="qemu" type="raw" discard="unmap"/>
      <source dev="/dev/vg/lab-demo-base"/>
      <target dev="vda" bus="virtio"/>
    </disk>
    <interface type="user">
      <model type="virtio"/>
    </interface>
    <serial type="file">
      <source path="/w/console.log" append="off"/>
      <target port="0"/>
    </serial>
    <rng model="virtio">
      <backend model="random">/dev/urandom</backend>
    </rng>
  </devices>
</domain>"#;

    #[test]
    fn the_installer_domain_is_written_as_before() {
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
        assert_eq!(to_xml(&installer_xml(&spec)), WITH_CDROM);
        let block = Volume {
            name: "lab-demo-base".into(),
            path: "/dev/vg/lab-demo-base".into(),
            format: "raw".into(),
        };
        let on_block = InstallerSpec {
            disk: &block,
            cdrom: None,
            kvm: true,
            ..spec
        };
        assert_eq!(
            to_xml(&installer_xml(&on_block)),
            ON_A_BLOCK_DEVICE_UNDER_KVM
        );
        // And read back as lab reads any domain: the CD-ROM passes no discards and needs
        // none; the base's disk passes them down.
        let def = crate::libvirt::read::DomainDef::from_xml(WITH_CDROM).unwrap();
        assert_eq!(
            def.disk_discards(),
            [(
                "/img/lab-demo-base.g1.qcow2".to_string(),
                Some("unmap".to_string())
            )]
        );
        assert_eq!(def.disk_sources().len(), 2);
        assert_eq!(def.channel_state("org.qemu.guest_agent.0"), None);
    }
}
