//! `lab ready PROFILE`: the one page to read before going on stage.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cli::{GlobalArgs, ReadyArgs};
use crate::error::exit;
use crate::fanout;
use crate::guest::connect::{key, unreachable_hint};
use crate::guest::packstack;
use crate::guest::ready::{
    Finding, Readiness, http_status, openstack_endpoints, render, vm_readiness,
};
use crate::libvirt::Libvirt;
use crate::names;
use crate::profile::Profile;
use crate::ui;

/// `lab ready PROFILE`: every VM reachable over SSH, nesting VMs with a usable /dev/kvm,
/// every provisioning step recorded, and for packstack the OpenStack endpoints answering.
pub fn ready(global: &GlobalArgs, args: &ReadyArgs) -> Result<u8> {
    let started = Instant::now();
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let key = key(&profile).map_err(|e| format!("{e:#}"));
    let hint = unreachable_hint(&profile);
    let timeout = Duration::from_secs(args.timeout);
    let instances = profile.instances();
    let mut findings: Vec<Finding> = fanout::each(
        &instances,
        |(vm, _)| vm.clone(),
        |(vm, spec)| Ok(vm_readiness(&lv, &profile, vm, spec, &key, &hint, timeout)),
    )
    .into_iter()
    .zip(&instances)
    // A VM whose readiness could not be told (lab panicked) is not ready.
    .flat_map(|(r, (vm, _))| {
        r.unwrap_or_else(|e| {
            vec![Finding {
                vm: vm.clone(),
                check: "ssh".into(),
                ok: false,
                detail: format!("{e:#}"),
            }]
        })
    })
    .collect();
    if packstack::is_packstack(&profile) {
        let controller = profile
            .instances()
            .into_iter()
            .find(|(_, spec)| matches!(spec.role.as_deref(), Some("controller" | "allinone")))
            .map(|(vm, _)| vm);
        if let Some(vm) = controller {
            let domain = names::domain(&profile.name, &vm);
            match lv.lease(&domain, &names::mac(&profile.name, &vm)) {
                Some(ip) => {
                    for (service, url) in openstack_endpoints(&ip.to_string()) {
                        let (ok, detail) = match http_status(&url, timeout) {
                            Ok(code) if code < 500 => (true, format!("{url}: HTTP {code}")),
                            Ok(code) => (false, format!("{url}: HTTP {code}")),
                            Err(e) => (false, format!("{url}: {e:#}")),
                        };
                        findings.push(Finding {
                            vm: vm.clone(),
                            check: format!("endpoint {service}"),
                            ok,
                            detail,
                        });
                    }
                }
                None => findings.push(Finding {
                    vm: vm.clone(),
                    check: "endpoints".into(),
                    ok: false,
                    detail: "the controller has no IP: the endpoints cannot be asked".into(),
                }),
            }
        }
    }
    let ready = !findings.is_empty() && findings.iter().all(|f| f.ok);
    let report = Readiness {
        profile: profile.name.clone(),
        ready,
        findings,
        ms: started.elapsed().as_millis() as u64,
    };
    if global.json {
        ui::print_json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    Ok(if ready { exit::OK } else { exit::CHECK_FAILED })
}
