//! The domain and network lab defines for a plan: the plan's VMs and network, in libvirt's
//! XML types (`xml`).

use std::path::Path;

use super::xml::*;
use crate::plan::{Plan, VmPlan};
use crate::profile::NetMode;
use crate::storage::Volume;

/// The lab network of a plan: isolated (no `<forward>`) or NAT, a DHCP range for
/// strangers and a fixed lease per VM (its MAC, its address, its name in DNS).
pub fn network_for(plan: &Plan) -> NetworkXml {
    let n = &plan.network;
    NetworkXml {
        name: n.name.clone(),
        metadata: Metadata::owner(&plan.profile, None),
        forward: match n.mode {
            NetMode::Isolated => None,
            NetMode::Nat => Some(Forward { mode: "nat".into() }),
        },
        bridge: Bridge {
            name: n.bridge.clone(),
            stp: "on",
            delay: 0,
        },
        domain: DnsDomain {
            name: n.domain.clone(),
            local_only: "yes",
        },
        ip: Ip {
            address: n.gateway.to_string(),
            prefix: n.subnet.prefix_len(),
            dhcp: Dhcp {
                range: Range {
                    start: n.dhcp_range.0.to_string(),
                    end: n.dhcp_range.1.to_string(),
                },
                hosts: plan
                    .vms
                    .iter()
                    .map(|vm| DhcpHost {
                        mac: vm.mac.clone(),
                        name: vm.name.clone(),
                        ip: vm.ip.to_string(),
                    })
                    .collect(),
            },
        },
    }
}

/// A lab VM's domain: its clone as a virtio disk with discards passed down, virtio-net on
/// the lab network, the serial console logged to a file, a guest agent channel, and a CPU
/// that can nest where KVM works. A cloud-init VM also gets its NoCloud `seed` as a
/// read-only IDE CD-ROM: the i440fx machine's IDE is what every cloud kernel reads (Debian's
/// cloud kernel has no AHCI, so a SATA CD-ROM on q35 would go unseen).
pub fn domain_for(
    plan: &Plan,
    vm: &VmPlan,
    disk: &Volume,
    boot: Option<&DirectBoot>,
    seed: Option<&Path>,
    console_log: &Path,
) -> DomainXml {
    let block = disk.format == "raw";
    let cpu = Cpu {
        mode: vm.cpu_mode.clone(),
        check: Some("none"),
        features: vec![],
    };
    DomainXml {
        kind: vm.domain_type.clone(),
        name: vm.domain.clone(),
        uuid: Some(crate::names::domain_uuid(&plan.profile, &vm.name)),
        metadata: Metadata::owner(&plan.profile, Some(&vm.name)),
        memory: Memory {
            unit: "KiB",
            value: vm.memory.bytes() / 1024,
        },
        vcpu: vm.vcpus,
        os: Os {
            kind: OsType {
                arch: "x86_64",
                machine: "pc",
                value: "hvm",
            },
            kernel: boot.map(|b| b.kernel.clone()),
            initrd: boot.map(|b| b.initrd.clone()),
            cmdline: boot.map(|b| b.cmdline.clone()),
            boot: boot.is_none().then_some(Boot { dev: "hd" }),
        },
        features: Features {
            acpi: Empty {},
            apic: Empty {},
        },
        cpu,
        clock: Clock { offset: "utc" },
        on_poweroff: "destroy",
        on_reboot: "restart",
        on_crash: "destroy",
        devices: Devices {
            disks: vec![Disk {
                kind: if block { "block" } else { "file" },
                device: "disk",
                driver: DiskDriver {
                    name: "qemu",
                    format: disk.format.clone(),
                    discard: Some("unmap"),
                    detect_zeroes: Some("unmap"),
                },
                source: DiskSource {
                    file: (!block).then(|| disk.path.display().to_string()),
                    dev: block.then(|| disk.path.display().to_string()),
                },
                target: DiskTarget {
                    dev: "vda".into(),
                    bus: "virtio",
                },
                readonly: None,
            }]
            .into_iter()
            .chain(seed.map(|seed| Disk {
                kind: "file",
                device: "cdrom",
                driver: DiskDriver {
                    name: "qemu",
                    format: "raw".into(),
                    discard: None,
                    detect_zeroes: None,
                },
                source: DiskSource {
                    file: Some(seed.display().to_string()),
                    dev: None,
                },
                target: DiskTarget {
                    dev: "hdc".into(),
                    bus: "ide",
                },
                readonly: Some(Empty {}),
            }))
            .collect(),
            interfaces: vec![Interface {
                kind: "network",
                mac: Some(Mac {
                    address: vm.mac.clone(),
                }),
                source: Some(NetSource {
                    network: plan.network.name.clone(),
                }),
                model: Model { kind: "virtio" },
            }],
            // A pty `lab console` attaches to, its output logged all the same.
            serial: Serial {
                kind: "pty",
                source: None,
                target: SerialTarget { port: 0 },
                log: Some(SerialLog {
                    file: console_log.display().to_string(),
                    // Kept across a resume from saved memory (no boot prints its ready
                    // line again); lab empties it before each boot instead.
                    append: "on",
                }),
            },
            channel: Some(Channel {
                kind: "unix",
                target: ChannelTarget {
                    kind: "virtio",
                    name: "org.qemu.guest_agent.0",
                },
            }),
            graphics: vm.graphics.map(|g| Graphics {
                kind: g.as_str(),
                autoport: "yes",
                listen: "127.0.0.1",
            }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_domain_and_network_from_the_plan() {
        use crate::plan::{HostFacts, plan};
        use crate::profile::{BUILT_IN, Profile, ProfileSource};
        let p = Profile::parse(BUILT_IN[0].1, ProfileSource::BuiltIn).unwrap();
        let pl = plan(&p, &HostFacts::default(), &Default::default()).unwrap();
        let disk = Volume {
            name: "lab-smoke-node1.qcow2".into(),
            path: "/img/lab-smoke-node1.qcow2".into(),
            format: "qcow2".into(),
        };
        let boot = DirectBoot {
            kernel: "/img/k".into(),
            initrd: "/img/i".into(),
            cmdline: "console=ttyS0 lab.vm=node1".into(),
        };
        let vm = &pl.vms[0];
        let dom = to_xml(&domain_for(
            &pl,
            vm,
            &disk,
            Some(&boot),
            None,
            Path::new("/img/c.log"),
        ));
        for needle in [
            "<domain type=\"qemu\">".to_string(),
            "<name>lab-smoke-node1</name>".into(),
            format!(
                "<uuid>{}</uuid>",
                crate::names::domain_uuid("smoke", "node1")
            ),
            "profile=\"smoke\" vm=\"node1\"".into(),
            "<memory unit=\"KiB\">262144</memory>".into(),
            "<cpu mode=\"maximum\" check=\"none\"/>".into(),
            "<cmdline>console=ttyS0 lab.vm=node1</cmdline>".into(),
            "discard=\"unmap\"".into(),
            "<source file=\"/img/lab-smoke-node1.qcow2\"/>".into(),
            format!("<mac address=\"{}\"/>", vm.mac),
            "<source network=\"lab-smoke\"/>".into(),
            "<log file=\"/img/c.log\" append=\"on\"/>".into(),
            "name=\"org.qemu.guest_agent.0\"".into(),
        ] {
            assert!(dom.contains(&needle), "{needle} missing from\n{dom}");
        }
        assert!(!dom.contains("<boot"), "direct boot has no boot device");
        let block = Volume {
            name: "lab-smoke-node1".into(),
            path: "/dev/vg/lab-smoke-node1".into(),
            format: "raw".into(),
        };
        let dom = to_xml(&domain_for(
            &pl,
            vm,
            &block,
            None,
            None,
            Path::new("/img/c.log"),
        ));
        assert!(
            dom.contains("<disk type=\"block\" device=\"disk\">"),
            "{dom}"
        );
        assert!(
            dom.contains("<source dev=\"/dev/vg/lab-smoke-node1\"/>"),
            "{dom}"
        );
        assert!(dom.contains("<boot dev=\"hd\"/>"), "{dom}");
        assert!(!dom.contains("cdrom"), "no seed, no CD-ROM: {dom}");
        let seeded = to_xml(&domain_for(
            &pl,
            vm,
            &disk,
            None,
            Some(Path::new("/img/lab-smoke-node1.seed.iso")),
            Path::new("/img/c.log"),
        ));
        let cdrom = seeded
            .split("<disk type=\"file\" device=\"cdrom\">")
            .nth(1)
            .and_then(|rest| rest.split("</disk>").next())
            .unwrap_or_default();
        for needle in [
            "<driver name=\"qemu\" type=\"raw\"/>",
            "<source file=\"/img/lab-smoke-node1.seed.iso\"/>",
            "<target dev=\"hdc\" bus=\"ide\"/>",
            "<readonly/>",
        ] {
            assert!(cdrom.contains(needle), "{needle} missing from\n{seeded}");
        }

        let net = to_xml(&network_for(&pl));
        assert!(!net.contains("<forward"), "isolated by default: {net}");
        for vm in &pl.vms {
            let host = format!(
                "<host mac=\"{}\" name=\"{}\" ip=\"{}\"/>",
                vm.mac, vm.name, vm.ip
            );
            assert!(net.contains(&host), "{host} missing from\n{net}");
        }
        assert!(net.contains(&format!("<bridge name=\"{}\"", pl.network.bridge)));
    }
}
