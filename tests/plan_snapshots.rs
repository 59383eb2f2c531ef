//! The plan of every shipped profile across host situations, as snapshots: a fresh host,
//! the lab already up (nothing to do), one VM missing, the preferred subnet taken, KVM
//! unusable, and (for the packstack profiles) a thin pool present.

use lab::mark::{Owner, VolumeRole};
use lab::observe::{DetachedTap, Observed, ObservedDomain, ObservedNetwork};
use lab::plan::{self, Action, HostFacts, KvmVerdict, Object, Op, Plan, Planned};
use lab::profile::{BUILT_IN, Profile, ProfileSource};
use lab::storage::ObservedVolume;
use lab::subnet::Taken;

fn profile(name: &str) -> Profile {
    let (_, text) = BUILT_IN.iter().find(|(n, _)| *n == name).unwrap();
    Profile::parse(text, ProfileSource::BuiltIn).unwrap()
}

fn good_kvm() -> KvmVerdict {
    KvmVerdict {
        usable: true,
        nested: true,
        reason: "kvm_intel runs guests, nested=Y".into(),
    }
}

/// The clock of the tests' host: 2027-01-15.
const NOW: u64 = 1_800_000_000;
const DAY: u64 = 86_400;

/// A laptop on home Wi-Fi with libvirt's default network and someone else's VM.
fn fresh_host() -> (HostFacts, Observed) {
    let host = HostFacts {
        kvm: good_kvm(),
        taken: vec![Taken {
            net: "192.168.1.0/24".parse().unwrap(),
            what: "route via wlan0".into(),
            iface: Some("wlan0".into()),
        }],
        thin_pools: vec![],
        now: NOW,
        interfaces: vec!["lo".into(), "wlan0".into(), "virbr0".into()],
        addresses: vec!["192.168.1.7".parse().unwrap()],
        listeners: vec![],
    };
    let observed = Observed {
        domains: vec![ObservedDomain {
            name: "win11".into(),
            owner: None,
            running: true,
            saved: false,
        }],
        networks: vec![ObservedNetwork {
            name: "default".into(),
            bridge: Some("virbr0".into()),
            subnets: vec!["192.168.122.0/24".parse().unwrap()],
            owner: None,
            active: true,
        }],
        volumes: vec![],
        base_out_of_date: None,
        ..Observed::default()
    };
    (host, observed)
}

/// What the host looks like after `lab up` carried out `plan`.
fn observed_after(plan: &Plan, mut observed: Observed) -> Observed {
    let owner = |vm: Option<&str>| Owner {
        profile: plan.profile.clone(),
        vm: vm.map(str::to_string),
    };
    let volume = |name: &str, vm: Option<&str>, role| ObservedVolume {
        name: name.to_string(),
        location: plan.storage.location.clone(),
        owner: Some(owner(vm)),
        role: Some(role),
        sealed: true,
    };
    for a in &plan.actions {
        match &a.action {
            Action::CreateNetwork { name } => observed.networks.push(ObservedNetwork {
                name: name.clone(),
                bridge: Some(plan.network.bridge.clone()),
                subnets: vec![plan.network.subnet],
                owner: Some(owner(None)),
                active: true,
            }),
            Action::StartNetwork { name } => {
                for n in observed.networks.iter_mut().filter(|n| &n.name == name) {
                    n.active = true;
                }
            }
            Action::BuildBase { name } => {
                observed.volumes.push(volume(name, None, VolumeRole::Base))
            }
            Action::CloneDisk { vm, name } => {
                observed
                    .volumes
                    .push(volume(name, Some(vm), VolumeRole::Clone))
            }
            Action::DefineDomain { vm, name } => observed.domains.push(ObservedDomain {
                name: name.clone(),
                owner: Some(owner(Some(vm))),
                running: true,
                saved: false,
            }),
            Action::StartDomain { name, .. } => {
                for d in observed.domains.iter_mut().filter(|d| &d.name == name) {
                    d.running = true;
                }
            }
            Action::WriteBootFiles { .. } => observed.boot_files_current = true,
            Action::WriteSeed { vm, .. } => observed.seeded.push(vm.clone()),
            Action::ReattachTap { tap, .. } => observed.detached_taps.retain(|t| &t.tap != tap),
            Action::DefinePool { name, .. } => observed.storage_pools.push(name.clone()),
            Action::StopDomain { name, .. } => {
                for d in observed.domains.iter_mut().filter(|d| &d.name == name) {
                    d.running = false;
                }
            }
            Action::MakeForward {
                mark, table, stale, ..
            } => {
                observed.forwards.retain(|r| {
                    !stale
                        .iter()
                        .any(|s| s.handle == r.handle && s.chain == r.chain)
                });
                let next = observed
                    .forwards
                    .iter()
                    .map(|r| r.handle)
                    .max()
                    .unwrap_or(0);
                for (i, (table, chain)) in mark.places(table).into_iter().enumerate() {
                    observed.forwards.push(lab::forward::ObservedRule {
                        table,
                        chain: chain.into(),
                        handle: next + 1 + i as u64,
                        mark: Some(mark.clone()),
                        shadowed: false,
                    });
                }
                observed.route_localnet = true;
            }
            Action::RemoveForward { rules, .. } => observed.forwards.retain(|r| {
                !rules
                    .iter()
                    .any(|x| x.handle == r.handle && x.table == r.table)
            }),
            Action::RemoveDomain { name, .. } => observed.domains.retain(|d| &d.name != name),
            Action::RemoveNetwork { name } => observed.networks.retain(|n| &n.name != name),
            Action::RemoveClone { name, .. } | Action::RemoveBase { name, .. } => {
                observed.volumes.retain(|v| &v.name != name)
            }
            Action::RefreshPool { .. }
            | Action::Provision { .. }
            | Action::RecloneDisk { .. }
            | Action::RemoveFile { .. }
            | Action::Keep { .. } => {}
        }
    }
    observed
}

fn changes(plan: &Plan) -> Vec<&Planned> {
    plan.actions.iter().collect()
}

const PROFILES: [&str; 4] = [
    "smoke",
    "packstack-aio",
    "packstack-multinode",
    "debian-stack",
];

#[test]
fn a_fresh_host_gets_everything_created() {
    for name in PROFILES {
        let (host, observed) = fresh_host();
        let plan = plan::plan(&profile(name), &host, &observed).unwrap();
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        insta::assert_json_snapshot!(format!("{name}__fresh"), plan);
    }
}

#[test]
fn lab_already_up_plans_nothing() {
    for name in PROFILES {
        let (host, observed) = fresh_host();
        let p = profile(name);
        let first = plan::plan(&p, &host, &observed).unwrap();
        let up = observed_after(&first, observed);
        let second = plan::plan(&p, &host, &up).unwrap();
        assert!(second.is_empty(), "{name}: {:#?}", changes(&second));
        // Same subnet, same names, same addresses: the plan is stable.
        assert_eq!(second.network.subnet, first.network.subnet);
        assert_eq!(second.network.bridge, first.network.bridge);
        assert!(
            second.network.why_subnet.contains("already has"),
            "{}",
            second.network.why_subnet
        );
        assert_eq!(second.vms, first.vms);
        insta::assert_json_snapshot!(format!("{name}__up"), second);
    }
}

#[test]
fn one_vm_missing_brings_back_that_vm_alone() {
    for name in PROFILES {
        let (host, observed) = fresh_host();
        let p = profile(name);
        let first = plan::plan(&p, &host, &observed).unwrap();
        let mut up = observed_after(&first, observed);
        let gone = first.vms.last().unwrap().clone();
        up.domains.retain(|d| d.name != gone.domain);
        up.volumes.retain(|v| v.name != gone.disk_volume);
        let plan = plan::plan(&p, &host, &up).unwrap();
        let touched: Vec<(Op, &str)> = plan.actions.iter().map(|a| (a.op(), a.name())).collect();
        // A cloud-init VM's new disk gets a new seed before its domain.
        let seed = format!("{}/{}.seed.iso", p.storage.dir.display(), gone.domain);
        let mut want = vec![(Op::Clone, gone.disk_volume.as_str())];
        if p.base.cloud_init {
            want.push((Op::Write, seed.as_str()));
        }
        want.push((Op::Define, gone.domain.as_str()));
        want.push((Op::Start, gone.domain.as_str()));
        assert_eq!(touched, want, "{name}");
        insta::assert_json_snapshot!(format!("{name}__one_vm_missing"), plan);
    }
}

#[test]
fn a_taken_preferred_subnet_moves_the_lab_and_says_why() {
    for name in PROFILES {
        let (mut host, observed) = fresh_host();
        let p = profile(name);
        let preferred = plan::plan(&p, &host, &observed).unwrap().network.subnet;
        host.taken.push(Taken {
            net: preferred,
            what: "VPN route via wg0 (WireGuard)".into(),
            iface: Some("wg0".into()),
        });
        let plan = plan::plan(&p, &host, &observed).unwrap();
        assert_ne!(plan.network.subnet, preferred, "{name}");
        assert!(
            plan.network.why_subnet.contains("wg0"),
            "{}",
            plan.network.why_subnet
        );
        insta::assert_json_snapshot!(format!("{name}__preferred_subnet_taken"), plan);
    }
}

#[test]
fn kvm_unusable_falls_back_to_emulation_with_a_warning() {
    for name in PROFILES {
        let (mut host, observed) = fresh_host();
        host.kvm = KvmVerdict {
            usable: false,
            nested: false,
            reason: "/dev/kvm exists but a standard guest never ran".into(),
        };
        let plan = plan::plan(&profile(name), &host, &observed).unwrap();
        assert!(
            plan.vms
                .iter()
                .all(|v| v.domain_type == "qemu" && v.cpu_mode == "maximum")
        );
        assert!(
            plan.warnings[0].contains("TCG emulation"),
            "{:?}",
            plan.warnings
        );
        let nested = plan.vms.iter().filter(|v| v.nested).count();
        assert_eq!(plan.warnings.len(), 1 + nested, "{:?}", plan.warnings);
        insta::assert_json_snapshot!(format!("{name}__kvm_unusable"), plan);
    }
}

#[test]
fn an_existing_thin_pool_is_used_by_auto() {
    for name in ["packstack-aio", "packstack-multinode"] {
        let (mut host, observed) = fresh_host();
        host.thin_pools.push(("vg_lab".into(), "lab-pool".into()));
        let plan = plan::plan(&profile(name), &host, &observed).unwrap();
        assert_eq!(plan.storage.location, "vg_lab/lab-pool");
        assert!(plan.vms.iter().all(|v| !v.disk_volume.ends_with(".qcow2")));
        insta::assert_json_snapshot!(format!("{name}__thin_pool"), plan);
    }
}

#[test]
fn nested_off_on_a_kvm_host_is_a_warning_per_nested_vm() {
    let (mut host, observed) = fresh_host();
    host.kvm.nested = false;
    let plan = plan::plan(&profile("packstack-multinode"), &host, &observed).unwrap();
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    assert!(plan.warnings[0].contains("lab check --fix"));
    let cpu: Vec<&str> = plan.vms.iter().map(|v| v.cpu_mode.as_str()).collect();
    assert_eq!(cpu, ["host-model", "host-passthrough", "host-passthrough"]);
}

#[test]
fn foreign_objects_with_lab_s_names_are_refused_not_touched() {
    let p = profile("smoke");
    let (host, mut observed) = fresh_host();
    observed.domains.push(ObservedDomain {
        name: "lab-smoke-node2".into(),
        owner: None,
        running: false,
        saved: false,
    });
    let err = plan::plan(&p, &host, &observed).unwrap_err();
    assert!(
        err.0.contains("lab-smoke-node2 exists and is not lab's"),
        "{err}"
    );

    let (host, mut observed) = fresh_host();
    observed.networks.push(ObservedNetwork {
        name: "lab-smoke".into(),
        bridge: Some("virbr9".into()),
        subnets: vec![],
        owner: Some(Owner {
            profile: "someone-else".into(),
            vm: None,
        }),
        active: true,
    });
    let err = plan::plan(&p, &host, &observed).unwrap_err();
    assert!(
        err.0.contains("network lab-smoke exists and is not lab's"),
        "{err}"
    );
}

#[test]
fn vms_dropped_from_the_profile_are_left_alone_and_said() {
    let p = profile("smoke");
    let (host, observed) = fresh_host();
    let first = plan::plan(&p, &host, &observed).unwrap();
    let mut up = observed_after(&first, observed);
    up.domains.push(ObservedDomain {
        name: "lab-smoke-node4".into(),
        owner: Some(Owner {
            profile: "smoke".into(),
            vm: Some("node4".into()),
        }),
        running: true,
        saved: false,
    });
    let plan = plan::plan(&p, &host, &up).unwrap();
    assert!(plan.is_empty());
    let kept = plan
        .unchanged
        .iter()
        .find(|a| a.name() == "lab-smoke-node4")
        .unwrap();
    assert!(kept.why.contains("no longer in the profile"));
}

/// The plan for profile `name` once the lab is up and `change` has happened to it.
fn plan_after_up(name: &str, change: impl FnOnce(&mut Observed)) -> Plan {
    let p = profile(name);
    let (host, observed) = fresh_host();
    let first = plan::plan(&p, &host, &observed).unwrap();
    let mut up = observed_after(&first, observed);
    change(&mut up);
    plan::plan(&p, &host, &up).unwrap()
}

#[test]
fn a_base_left_unsealed_by_an_interrupted_build_is_built_again() {
    let plan = plan_after_up("smoke", |up| {
        for v in &mut up.volumes {
            if v.role == Some(VolumeRole::Base) {
                v.sealed = false;
            }
        }
    });
    let ops: Vec<(Op, Object)> = plan.actions.iter().map(|a| (a.op(), a.object())).collect();
    assert_eq!(ops, [(Op::Build, Object::Base)]);
}

#[test]
fn a_kickstart_base_whose_inputs_changed_is_built_again_and_clones_are_kept() {
    let plan = plan_after_up("packstack-aio", |up| {
        up.base_out_of_date = Some("the rendered kickstart changed".into());
    });
    let ops: Vec<(Op, Object)> = plan.actions.iter().map(|a| (a.op(), a.object())).collect();
    assert_eq!(ops, [(Op::Build, Object::Base)], "{:#?}", plan.actions);
    let why = &plan.actions[0].why;
    assert!(
        why.starts_with("out of date (the rendered kickstart changed): install from kickstart"),
        "{why}"
    );
    assert!(why.contains("keep the old base until `lab reset`"), "{why}");
}

#[test]
fn the_lab_s_own_bridge_route_and_address_are_no_collision() {
    let p = profile("smoke");
    let (mut host, observed) = fresh_host();
    let first = plan::plan(&p, &host, &observed).unwrap();
    let up = observed_after(&first, observed);
    // What the kernel shows once the lab's network is up.
    host.taken.push(Taken {
        net: first.network.subnet,
        what: format!("route via {}", first.network.bridge),
        iface: Some(first.network.bridge.clone()),
    });
    host.taken.push(Taken {
        net: ipnet::Ipv4Net::from(first.network.gateway),
        what: format!("host address {}", first.network.gateway),
        iface: None,
    });
    let again = plan::plan(&p, &host, &up).unwrap();
    assert_eq!(again.network.subnet, first.network.subnet);
    assert!(again.is_empty(), "{:?}", again.actions);
    // Someone else's route on the same subnet is a collision all the same.
    host.taken.push(Taken {
        net: first.network.subnet,
        what: "VPN route via tun0".into(),
        iface: Some("tun0".into()),
    });
    let moved = plan::plan(&p, &host, &up);
    assert!(moved.is_err(), "the lab's network now collides with a VPN");
}

#[test]
fn a_dns_server_a_vpn_put_inside_the_lab_s_subnet_collides() {
    let p = profile("smoke");
    let (mut host, observed) = fresh_host();
    let first = plan::plan(&p, &host, &observed).unwrap();
    let up = observed_after(&first, observed);
    let dns = ipnet::Ipv4Net::from(names_host(first.network.subnet, 53));
    host.taken.push(Taken {
        net: dns,
        what: format!("DNS server in /etc/resolv.conf ({})", dns.addr()),
        iface: None,
    });
    let err = plan::plan(&p, &host, &up).unwrap_err().0;
    assert!(err.contains("DNS server in /etc/resolv.conf"), "{err}");
}

/// Host number `n` of `subnet`.
fn names_host(subnet: ipnet::Ipv4Net, n: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(subnet.network()) + n)
}

#[test]
fn a_lab_bridge_left_without_its_network_is_named_with_its_fix() {
    let p = profile("smoke");
    let (mut host, observed) = fresh_host();
    let bridge = plan::plan(&p, &host, &observed).unwrap().network.bridge;
    host.interfaces.push(bridge.clone());
    let err = plan::plan(&p, &host, &observed).unwrap_err().0;
    assert!(err.contains(&format!("bridge {bridge} exists")), "{err}");
    assert!(err.contains(&format!("ip link delete {bridge}")), "{err}");
}

#[test]
fn the_plan_is_the_same_every_time() {
    for name in PROFILES {
        let (host, observed) = fresh_host();
        let a = plan::plan(&profile(name), &host, &observed).unwrap();
        let b = plan::plan(&profile(name), &host, &observed).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn a_running_vm_cut_off_its_bridge_gets_its_tap_put_back() {
    let plan = plan_after_up("smoke", |up| {
        for n in &mut up.networks {
            if n.name == "lab-smoke" {
                n.active = false;
            }
        }
        up.detached_taps.push(DetachedTap {
            domain: "lab-smoke-node2".into(),
            tap: "vnet7".into(),
            bridge: "lab-smoke".into(),
        });
    });
    let actions: Vec<&Action> = plan.actions.iter().map(|a| &a.action).collect();
    assert_eq!(
        actions,
        [
            &Action::StartNetwork {
                name: "lab-smoke".into()
            },
            &Action::ReattachTap {
                vm: "node2".into(),
                tap: "vnet7".into(),
                bridge: "lab-smoke".into()
            }
        ]
    );
    let text = plan::render(&plan);
    assert!(
        text.contains("  attach  tap      vnet7  (off bridge lab-smoke"),
        "{text}"
    );
}

#[test]
fn boot_files_are_written_only_when_not_current() {
    let plan = plan_after_up("smoke", |up| up.boot_files_current = false);
    let ops: Vec<(Op, Object)> = plan.actions.iter().map(|a| (a.op(), a.object())).collect();
    assert_eq!(ops, [(Op::Write, Object::Boot)]);
    // Nothing of the kind for a profile that boots from its disk.
    let (host, observed) = fresh_host();
    let plan = plan::plan(&profile("packstack-aio"), &host, &observed).unwrap();
    assert!(plan.actions.iter().all(|a| a.object() != Object::Boot));
}

#[test]
fn the_libvirt_pool_of_a_thin_pool_is_defined_then_refreshed_when_volumes_are_made() {
    let p = profile("packstack-aio");
    let (mut host, observed) = fresh_host();
    host.thin_pools.push(("vg_lab".into(), "lab-pool".into()));
    let first = plan::plan(&p, &host, &observed).unwrap();
    let last = first.actions.last().unwrap();
    assert_eq!(
        last.action,
        Action::DefinePool {
            vg: "vg_lab".into(),
            name: "lab-vg_lab".into()
        }
    );
    let mut up = observed_after(&first, observed);
    let again = plan::plan(&p, &host, &up).unwrap();
    assert!(again.is_empty(), "{:#?}", again.actions);
    assert!(again.unchanged.iter().any(|a| a.object() == Object::Pool));
    up.volumes.retain(|v| v.role != Some(VolumeRole::Clone));
    let reclone = plan::plan(&p, &host, &up).unwrap();
    assert!(matches!(
        reclone.actions.last().unwrap().action,
        Action::RefreshPool { .. }
    ));
}

#[test]
fn provisioning_is_planned_per_vm_with_its_steps_unless_declined() {
    let (host, observed) = fresh_host();
    let p = profile("packstack-multinode");
    let plan = plan::plan(&p, &host, &observed).unwrap();
    let steps: Vec<(&str, Vec<String>)> = plan
        .provision
        .iter()
        .map(|a| match &a.action {
            Action::Provision { vm, steps } => (vm.as_str(), steps.clone()),
            other => panic!("not provisioning: {other:?}"),
        })
        .collect();
    // Every VM takes the lab's identity first (a kickstart base), then the RDO
    // repositories (CRB first), SELinux permissive and the locale; packstack runs on the
    // controller only.
    let every_vm = ["identity", "rdo-release", "selinux-permissive", "locale"];
    let mut controller: Vec<String> = every_vm.iter().map(|s| s.to_string()).collect();
    controller.push("packstack".into());
    let compute: Vec<String> = every_vm.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        steps,
        [
            ("controller", controller),
            ("compute1", compute.clone()),
            ("compute2", compute),
        ]
    );
    let text = plan::render(&plan);
    assert!(
        text.contains(
            "Then in the VMs:\n  run     steps    controller  (identity first \
             (controller.packstack-multinode.lab, /etc/hosts of the lab's 3 VMs, a fresh \
             machine-id, a host key signed by the lab's CA, root's lab peer key: a clone of \
             the base has none); rdo-release, selinux-permissive, locale, packstack;"
        ),
        "{text}"
    );
    let declined = plan::up(&p, &host, &observed, plan::UpOptions { provision: false }).unwrap();
    assert!(declined.provision.is_empty());
    assert_eq!(declined.actions, plan.actions);
}

#[test]
fn a_kickstart_base_built_long_ago_is_a_warning_told_from_observed_data() {
    let old = plan_after_up("packstack-aio", |up| {
        up.base_built_at = Some(NOW - 45 * DAY);
    });
    assert!(old.is_empty(), "{:#?}", old.actions);
    assert_eq!(
        old.warnings,
        [
            "the base of packstack-aio was built 45 days ago: `lab base build packstack-aio \
          --force` patches it (VMs made before keep the old base until `lab reset`)"
        ]
    );
    let recent = plan_after_up("packstack-aio", |up| {
        up.base_built_at = Some(NOW - 30 * DAY);
    });
    assert!(recent.warnings.is_empty(), "{:?}", recent.warnings);
    // A base out of date is rebuilt: its action says so, no warning besides.
    let rebuilt = plan_after_up("packstack-aio", |up| {
        up.base_built_at = Some(NOW - 45 * DAY);
        up.base_out_of_date = Some("the rendered kickstart changed".into());
    });
    assert!(rebuilt.warnings.is_empty(), "{:?}", rebuilt.warnings);
    // Not a kickstart base: no age told.
    let smoke = plan_after_up("smoke", |up| up.base_built_at = Some(NOW - 45 * DAY));
    assert!(smoke.warnings.is_empty(), "{:?}", smoke.warnings);
}

#[test]
fn reset_stops_every_target_then_reclones_and_starts_each() {
    let p = profile("smoke");
    let (host, observed) = fresh_host();
    let first = plan::plan(&p, &host, &observed).unwrap();
    let mut up = observed_after(&first, observed);
    let plan = plan::reset(&p, &host, &up, &["node2".into(), "node3".into()]).unwrap();
    let lines: Vec<String> = plan
        .actions
        .iter()
        .map(|a| format!("{} {} {}", a.op(), a.object(), a.name()))
        .collect();
    assert_eq!(
        lines,
        [
            "stop domain lab-smoke-node2",
            "stop domain lab-smoke-node3",
            "reclone disk lab-smoke-node2.qcow2",
            "start domain lab-smoke-node2",
            "reclone disk lab-smoke-node3.qcow2",
            "start domain lab-smoke-node3",
        ]
    );
    let kept: Vec<&str> = plan.unchanged.iter().map(|a| a.name()).collect();
    assert_eq!(kept, ["lab-smoke-initrd.img", "lab-smoke-node1"]);
    assert!(plan.provision.is_empty());
    let text = plan::render(&plan);
    assert!(
        text.contains("  reclone disk     lab-smoke-node2.qcow2  (dropped and cloned again from lab-smoke-base.qcow2)"),
        "{text}"
    );
    // All VMs by default; a shut-off VM needs no stop; stale boot files are made first.
    up.boot_files_current = false;
    for d in &mut up.domains {
        if d.name == "lab-smoke-node1" {
            d.running = false;
        }
    }
    let all = plan::reset(&p, &host, &up, &[]).unwrap();
    let ops: Vec<(Op, &str)> = all.actions.iter().map(|a| (a.op(), a.name())).collect();
    assert_eq!(ops[0], (Op::Write, "lab-smoke-initrd.img"));
    assert_eq!(
        ops.iter().filter(|(op, _)| *op == Op::Stop).count(),
        2,
        "{ops:?}"
    );
    assert_eq!(ops.iter().filter(|(op, _)| *op == Op::Reclone).count(), 3);
}

#[test]
fn reset_refuses_a_vm_the_profile_lacks_or_that_is_not_up() {
    let p = profile("smoke");
    let (host, observed) = fresh_host();
    let err = plan::reset(&p, &host, &observed, &["node9".into()]).unwrap_err();
    assert_eq!(
        err.0,
        "profile smoke has no VM \"node9\": its VMs are node1, node2, node3"
    );
    let err = plan::reset(&p, &host, &observed, &["node1".into()]).unwrap_err();
    assert_eq!(
        err.0,
        "node1 is not up (no domain lab-smoke-node1): run `lab up smoke` first"
    );
}

#[test]
fn down_removes_only_what_carries_the_profile_s_mark_and_keeps_the_base_without_purge() {
    use lab::observe::{LabFiles, MarkFile};
    let p = profile("smoke");
    let (host, observed) = fresh_host();
    let first = plan::plan(&p, &host, &observed).unwrap();
    let mut up = observed_after(&first, observed);
    // Someone else's domain with a lab-like name, and another profile's.
    up.domains.push(ObservedDomain {
        name: "lab-smoke-node9".into(),
        owner: None,
        running: true,
        saved: false,
    });
    up.domains.push(ObservedDomain {
        name: "lab-other-node1".into(),
        owner: Some(Owner {
            profile: "other".into(),
            vm: Some("node1".into()),
        }),
        running: true,
        saved: false,
    });
    let dir = std::path::Path::new("/var/lib/lab/images");
    up.files = LabFiles {
        console_logs: vec![dir.join("lab-smoke-node1.console.log")],
        known_hosts: vec![dir.join("lab-smoke-node1.known_hosts")],
        seeds: vec![],
        identity: vec![],
        packstack_password: None,
        ssh_key: vec![
            dir.join("lab-smoke-ssh-key.pub"),
            dir.join("lab-smoke-ssh-key"),
        ],
        unfinished: vec![dir.join(".lab-partial/lab-smoke-node2.qcow2")],
        unfinished_dir: Some(dir.join(".lab-partial")),
        marks: vec![
            MarkFile {
                mark: dir.join("lab-smoke-initrd.img.lab"),
                target: dir.join("lab-smoke-initrd.img"),
                role: VolumeRole::Boot,
                target_exists: true,
            },
            MarkFile {
                mark: dir.join("lab-smoke-node4.qcow2.lab"),
                target: dir.join("lab-smoke-node4.qcow2"),
                role: VolumeRole::Clone,
                target_exists: false,
            },
        ],
        snapshots: vec![lab::snapshot::Listed {
            name: "provisioned".into(),
            created: 1_700_000_000,
            state: lab::snapshot::State::Complete,
            vms: vec!["node1".into(), "node2".into(), "node3".into()],
            bytes: 3 * 256 * 1024 * 1024 + 3 * 1024 * 1024,
            memory_bytes: 3 * 256 * 1024 * 1024,
            layer_bytes: 3 * 1024 * 1024,
        }],
        snapshots_root: dir.join("lab-smoke.snapshots"),
    };
    let down = plan::down(&p, &up, false);
    let lines: Vec<String> = down
        .actions
        .iter()
        .map(|a| format!("{} {} {}", a.op(), a.object(), a.name()))
        .collect();
    assert_eq!(
        lines,
        [
            "remove domain lab-smoke-node1",
            "remove domain lab-smoke-node2",
            "remove domain lab-smoke-node3",
            "remove network lab-smoke",
            "remove disk /var/lib/lab/images",
            "remove disk /var/lib/lab/images",
            "remove disk /var/lib/lab/images",
            "remove file /var/lib/lab/images/lab-smoke-node1.console.log",
            "remove file /var/lib/lab/images/lab-smoke-node1.known_hosts",
            "remove file /var/lib/lab/images/.lab-partial/lab-smoke-node2.qcow2",
            "remove file /var/lib/lab/images/.lab-partial",
            "remove file /var/lib/lab/images/lab-smoke-node4.qcow2.lab",
            "remove file /var/lib/lab/images/lab-smoke.snapshots/provisioned",
        ]
    );
    let kept: Vec<String> = down
        .unchanged
        .iter()
        .map(|a| format!("{} {}", a.object(), a.name()))
        .collect();
    assert_eq!(
        kept,
        [
            "base /var/lib/lab/images",
            "file /var/lib/lab/images/lab-smoke-ssh-key.pub",
            "file /var/lib/lab/images/lab-smoke-ssh-key",
            "file /var/lib/lab/images/lab-smoke-initrd.img",
        ]
    );
    let text = plan::render_down(&down);
    assert!(text.starts_with("Will do:\n  remove  domain   lab-smoke-node1  (lab's, running: powered off and undefined)\n"), "{text}");
    assert!(
        text.contains(
            "lab-smoke.snapshots/provisioned  (snapshot provisioned: 3 VMs, 768MiB of memory \
             and 3MiB of disk layers)\n"
        ),
        "{text}"
    );
    assert!(text.contains("\nLeaves alone:\n  base     /var/lib/lab/images  (kept for the next `lab up` (--purge removes it))\n"), "{text}");

    let purge = plan::down(&p, &up, true);
    assert!(purge.unchanged.is_empty(), "{:#?}", purge.unchanged);
    let purged: Vec<String> = purge
        .actions
        .iter()
        .skip(7)
        .map(|a| format!("{} {} {}", a.op(), a.object(), a.name()))
        .collect();
    assert_eq!(
        purged,
        [
            "remove base /var/lib/lab/images",
            "remove file /var/lib/lab/images/lab-smoke-node1.console.log",
            "remove file /var/lib/lab/images/lab-smoke-node1.known_hosts",
            "remove file /var/lib/lab/images/lab-smoke-ssh-key.pub",
            "remove file /var/lib/lab/images/lab-smoke-ssh-key",
            "remove file /var/lib/lab/images/.lab-partial/lab-smoke-node2.qcow2",
            "remove file /var/lib/lab/images/.lab-partial",
            "remove file /var/lib/lab/images/lab-smoke-initrd.img",
            "remove file /var/lib/lab/images/lab-smoke-node4.qcow2.lab",
            "remove file /var/lib/lab/images/lab-smoke.snapshots/provisioned",
        ]
    );
    // Nothing of the profile's: nothing to do.
    let (_, bare) = fresh_host();
    let none = plan::down(&p, &bare, true);
    assert!(none.is_empty());
    assert_eq!(
        plan::render_down(&none),
        "Nothing to do: lab owns nothing of profile smoke to remove.\n"
    );
}

/// A lab of a cloud image with cloud-init: each new disk gets a seed (a new identity)
/// before its domain is defined; a lab that is up plans nothing; a seed that went missing
/// is made again alone; a reset makes a new seed for each disk it makes anew; down removes
/// the seeds.
#[test]
fn cloud_init_vms_get_a_seed_with_every_new_disk() {
    let p = Profile::parse(
        "name = \"cloudy\"\n[base]\nimage = \"https://cloud.example.org/debian-12-genericcloud-amd64.qcow2\"\n\
         checksum_url = \"https://cloud.example.org/SHA512SUMS\"\ncloud_init = true\ndisk = \"8GiB\"\n\
         [[vm]]\nname = \"web\"\n[[vm]]\nname = \"db\"\ndisk = \"12GiB\"\n",
        ProfileSource::BuiltIn,
    )
    .unwrap();
    let lines = |plan: &Plan| -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| format!("{} {} {}", a.op(), a.object(), a.name()))
            .collect()
    };
    let (host, observed) = fresh_host();
    let first = plan::plan(&p, &host, &observed).unwrap();
    let dir = "/var/lib/lab/images";
    assert_eq!(
        lines(&first)[2..],
        [
            "clone disk lab-cloudy-web.qcow2".to_string(),
            format!("write seed {dir}/lab-cloudy-web.seed.iso"),
            "define domain lab-cloudy-web".into(),
            "start domain lab-cloudy-web".into(),
            "clone disk lab-cloudy-db.qcow2".into(),
            format!("write seed {dir}/lab-cloudy-db.seed.iso"),
            "define domain lab-cloudy-db".into(),
            "start domain lab-cloudy-db".into(),
        ]
    );
    assert_eq!(first.vms[1].disk, lab::size::ByteSize::gib(12));
    let text = plan::render(&first);
    assert!(
        text.contains("web.cloudy.lab with the lab's /etc/hosts and keys"),
        "{text}"
    );
    let mut up = observed_after(&first, observed);
    assert!(plan::plan(&p, &host, &up).unwrap().is_empty());
    up.seeded.retain(|vm| vm != "db");
    assert_eq!(
        lines(&plan::plan(&p, &host, &up).unwrap()),
        [format!("write seed {dir}/lab-cloudy-db.seed.iso")]
    );
    up.seeded.push("db".into());
    let reset = plan::reset(&p, &host, &up, &["db".into()]).unwrap();
    assert_eq!(
        lines(&reset),
        [
            "stop domain lab-cloudy-db".to_string(),
            "reclone disk lab-cloudy-db.qcow2".into(),
            format!("write seed {dir}/lab-cloudy-db.seed.iso"),
            "start domain lab-cloudy-db".into(),
        ]
    );
}

/// The identity is the first provisioning step of every VM of a kickstart base, one with no
/// steps of its own too; a cloud-init VM takes it from its seed only, never over SSH.
#[test]
fn the_identity_step_comes_first_for_kickstart_vms_only() {
    let (host, observed) = fresh_host();
    let steps = |p: &Profile| -> Vec<(String, Vec<String>)> {
        plan::plan(p, &host, &observed)
            .unwrap()
            .provision
            .iter()
            .map(|a| match &a.action {
                Action::Provision { vm, steps } => (vm.clone(), steps.clone()),
                other => panic!("not provisioning: {other:?}"),
            })
            .collect()
    };
    let kickstart = Profile::parse(
        "name = \"ks\"\n[base]\nos = \"centos-stream9\"\nkickstart = \"centos-stream9.ks.j2\"\n\
         install = \"http://example.invalid/os/\"\n[network]\ndomain = \"demo.example\"\n\
         [[vm]]\nname = \"a\"\n[[vm]]\nname = \"b\"\n\
         [[provision]]\nname = \"only-a\"\nrun = \"true\"\nvm = \"a\"\n",
        ProfileSource::BuiltIn,
    )
    .unwrap();
    assert_eq!(
        steps(&kickstart),
        [
            (
                "a".to_string(),
                vec!["identity".to_string(), "only-a".into()]
            ),
            ("b".to_string(), vec!["identity".to_string()]),
        ]
    );
    let plan = plan::plan(&kickstart, &host, &observed).unwrap();
    assert!(
        plan.provision[1]
            .why
            .starts_with("identity first (b.demo.example, /etc/hosts of the lab's 2 VMs,"),
        "{}",
        plan.provision[1].why
    );
    let declined = plan::up(
        &kickstart,
        &host,
        &observed,
        plan::UpOptions { provision: false },
    )
    .unwrap();
    assert!(declined.provision.is_empty());

    let cloud = Profile::parse(
        "name = \"cloudy\"\n[base]\nimage = \"https://cloud.example.org/debian-12-genericcloud-amd64.qcow2\"\n\
         checksum_url = \"https://cloud.example.org/SHA512SUMS\"\ncloud_init = true\n\
         [[vm]]\nname = \"web\"\n[[vm]]\nname = \"db\"\n\
         [[provision]]\nname = \"app\"\nrun = \"true\"\nvm = \"web\"\n",
        ProfileSource::BuiltIn,
    )
    .unwrap();
    assert_eq!(
        steps(&cloud),
        [("web".to_string(), vec!["app".to_string()])]
    );
}

fn forwarding(extra: &str) -> Profile {
    Profile::parse(
        &format!(
            "name = \"fwd\"\n[base]\nkernel = \"host\"\n[[vm]]\nname = \"web\"\n\
             [[forward]]\nvm = \"web\"\nport = 80\nhost_port = 8080\n{extra}"
        ),
        ProfileSource::BuiltIn,
    )
    .unwrap()
}

fn forward_actions(plan: &Plan) -> Vec<&Planned> {
    plan.actions
        .iter()
        .filter(|a| a.object() == Object::Forward)
        .collect()
}

#[test]
fn a_forward_is_made_once_and_then_kept() {
    let p = forwarding("");
    let (host, observed) = fresh_host();
    let first = plan::plan(&p, &host, &observed).unwrap();
    let made = forward_actions(&first);
    assert_eq!(made.len(), 1, "{:#?}", first.actions);
    assert_eq!(made[0].op(), Op::Create);
    assert_eq!(made[0].name(), "127.0.0.1:8080->web:80");
    // After the VM is ready: the last action of the plan.
    assert_eq!(first.actions.last().unwrap().object(), Object::Forward);
    let after = observed_after(&first, observed);
    let again = plan::plan(&p, &host, &after).unwrap();
    assert!(again.actions.is_empty(), "{:#?}", again.actions);
    assert!(
        again
            .unchanged
            .iter()
            .any(|a| a.object() == Object::Forward && a.name() == "127.0.0.1:8080->web:80")
    );
    // The bridge made again (route_localnet off): made again, and said why.
    let mut bridge_new = after.clone();
    bridge_new.route_localnet = false;
    let plan = plan::plan(&p, &host, &bridge_new).unwrap();
    assert!(forward_actions(&plan)[0].why.contains("route loopback"));
    // Half of it (an interrupted hand): made again, its half deleted in the same step.
    let mut half = after.clone();
    half.forwards.retain(|r| r.chain == "output");
    let plan = plan::plan(&p, &host, &half).unwrap();
    let a = forward_actions(&plan);
    assert_eq!(a.len(), 1);
    assert!(a[0].why.contains("half made"), "{}", a[0].why);
    match &a[0].action {
        Action::MakeForward { stale, .. } => assert_eq!(stale.len(), 1),
        other => panic!("{other:?}"),
    }
    // Dropped from the profile: removed by lab up.
    let mut without = forwarding("");
    without.forwards.clear();
    let plan = plan::plan(&without, &host, &after).unwrap();
    let a = forward_actions(&plan);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].op(), Op::Remove);
    // lab down: the forward before the domains, with the profile's table.
    let down = plan::down(&p, &after, false);
    assert_eq!(down.actions[0].object(), Object::Forward);
    match &down.actions[0].action {
        Action::RemoveForward {
            rules, drop_table, ..
        } => {
            assert_eq!(rules.len(), 2);
            assert_eq!(drop_table.as_deref(), Some("lab-fwd"));
        }
        other => panic!("{other:?}"),
    }
}

/// A socket listening on `addr`:8080, held by `holder`.
fn listener(addr: &str, holder: &str) -> lab::host::ports::Listener {
    lab::host::ports::Listener {
        addr: addr.parse().unwrap(),
        port: 8080,
        inode: 4242,
        holder: Some(holder.into()),
    }
}

#[test]
fn a_host_port_someone_holds_is_refused_naming_them() {
    let p = forwarding("");
    let (mut host, observed) = fresh_host();
    host.listeners
        .push(listener("0.0.0.0", "process 981 (python3)"));
    let err = plan::plan(&p, &host, &observed).unwrap_err().to_string();
    assert!(
        err.contains(
            "port 127.0.0.1:8080 is taken by process 981 (python3), listening on 0.0.0.0:8080"
        ),
        "{err}"
    );
    assert!(err.starts_with("built-in profile fwd:"), "{err}");
    // Another lab's forward on it.
    let (host, mut observed) = fresh_host();
    for chain in ["output", "postrouting"] {
        observed.forwards.push(lab::forward::ObservedRule {
            table: "lab-other".into(),
            chain: chain.into(),
            handle: 3,
            mark: lab::forward::ForwardMark::parse(
                "lab other/api:80 10.213.4.11 127.0.0.1:8080 tcp",
            ),
            shadowed: false,
        });
    }
    let err = plan::plan(&p, &host, &observed).unwrap_err().to_string();
    assert!(
        err.contains("is published by lab profile other (to its VM api)"),
        "{err}"
    );
}

#[test]
fn a_forward_on_a_host_address_of_the_room_also_opens_libvirts_chains() {
    let p = forwarding("host_address = \"192.168.1.7\"");
    let (host, observed) = fresh_host();
    let first = plan::plan(&p, &host, &observed).unwrap();
    let made = forward_actions(&first);
    assert_eq!(made.len(), 1, "{:#?}", first.actions);
    assert_eq!(made[0].name(), "192.168.1.7:8080->web:80");
    let after = observed_after(&first, observed);
    let places: Vec<(&str, &str)> = after
        .forwards
        .iter()
        .map(|r| (r.table.as_str(), r.chain.as_str()))
        .collect();
    assert_eq!(
        places,
        [
            ("lab-fwd", "output"),
            ("lab-fwd", "postrouting"),
            ("lab-fwd", "prerouting"),
            ("lab-fwd", "forward"),
            ("lab-fwd", "forward"),
            ("filter", "LIBVIRT_FWI"),
            ("filter", "LIBVIRT_FWO"),
        ]
    );
    let again = plan::plan(&p, &host, &after).unwrap();
    assert!(again.actions.is_empty(), "{:#?}", again.actions);
    // libvirt put its rules back above lab's (its network restarted), or flushed its
    // chains (libvirtd restarted): put back on top, all of the forward in one step.
    for broken in [
        |r: &mut lab::forward::ObservedRule| r.shadowed = r.chain == "LIBVIRT_FWI",
        |r: &mut lab::forward::ObservedRule| {
            if r.table == "filter" {
                r.handle = 0;
            }
        },
    ] {
        let mut libvirt_again = after.clone();
        libvirt_again.forwards.iter_mut().for_each(broken);
        libvirt_again.forwards.retain(|r| r.handle != 0);
        let plan = plan::plan(&p, &host, &libvirt_again).unwrap();
        let a = forward_actions(&plan);
        assert_eq!(a.len(), 1, "{:#?}", plan.actions);
        assert!(a[0].why.contains("libvirt"), "{}", a[0].why);
        match &a[0].action {
            Action::MakeForward { stale, .. } => {
                assert_eq!(stale.len(), libvirt_again.forwards.len())
            }
            other => panic!("{other:?}"),
        }
    }
    // lab down: all seven, libvirt's chains included, and another lab's left alone there.
    let mut two = after.clone();
    two.forwards.push(lab::forward::ObservedRule {
        table: "filter".into(),
        chain: "LIBVIRT_FWI".into(),
        handle: 99,
        mark: lab::forward::ForwardMark::parse("lab other/api:80 10.213.4.11 0.0.0.0:9090 tcp"),
        shadowed: false,
    });
    let down = plan::down(&p, &two, false);
    match &down.actions[0].action {
        Action::RemoveForward {
            rules, drop_table, ..
        } => {
            assert_eq!(rules.len(), 7, "{rules:?}");
            assert!(rules.iter().all(|r| r.handle != 99), "{rules:?}");
            assert_eq!(drop_table.as_deref(), Some("lab-fwd"));
        }
        other => panic!("{other:?}"),
    }
    // Its table deleted by hand: lab's rules in libvirt's chains still go, no table named.
    two.forwards.retain(|r| r.table != "lab-fwd");
    let down = plan::down(&p, &two, false);
    match &down.actions[0].action {
        Action::RemoveForward {
            rules, drop_table, ..
        } => {
            assert_eq!(rules.len(), 2, "{rules:?}");
            assert_eq!(drop_table, &None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_forward_on_an_address_the_host_lacks_or_one_taken_is_refused() {
    let (mut host, observed) = fresh_host();
    let p = forwarding("host_address = \"192.168.1.99\"");
    let err = plan::plan(&p, &host, &observed).unwrap_err().to_string();
    assert!(
        err.contains(
            "forward 192.168.1.99:8080->web:80: 192.168.1.99 is not an address of this \
             host (its addresses: 192.168.1.7); nothing was made"
        ),
        "{err}"
    );
    // 0.0.0.0: a socket on any address of the port holds it.
    let all = forwarding("host_address = \"0.0.0.0\"");
    host.listeners
        .push(listener("10.251.224.1", "process 77 (dnsmasq)"));
    let err = plan::plan(&all, &host, &observed).unwrap_err().to_string();
    assert!(
        err.contains(
            "port 0.0.0.0:8080 is taken by process 77 (dnsmasq), listening on 10.251.224.1:8080"
        ),
        "{err}"
    );
    // ... and so does another lab's forward on a loopback address of it.
    let (host, mut observed) = fresh_host();
    observed.forwards.push(lab::forward::ObservedRule {
        table: "lab-other".into(),
        chain: "output".into(),
        handle: 3,
        mark: lab::forward::ForwardMark::parse("lab other/api:80 10.213.4.11 127.0.0.1:8080 tcp"),
        shadowed: false,
    });
    let err = plan::plan(&all, &host, &observed).unwrap_err().to_string();
    assert!(
        err.contains("127.0.0.1:8080 is published by lab profile other (to its VM api)"),
        "{err}"
    );
}
