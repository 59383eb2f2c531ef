//! `lab stop PROFILE [VM...]`: each VM's memory saved to disk and the VM stopped (libvirt's
//! managed save), so `lab start` resumes it where it was, processes and all, even after the
//! laptop rebooted or its lid was closed.

use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::cli::{GlobalArgs, StopArgs};
use crate::error::exit;
use crate::fanout;
use crate::libvirt::Libvirt;
use crate::names;
use crate::observe::Observed;
use crate::profile::Profile;
use crate::ui::{self, Stream, Style, Table};

#[derive(Debug, Serialize)]
struct Stopped {
    vm: String,
    domain: String,
    /// `saved` (now or before), `shut off`, or `no domain`.
    state: &'static str,
    /// Milliseconds the save took (0: nothing to save).
    ms: u64,
}

pub fn stop(global: &GlobalArgs, args: &StopArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    for vm in &args.vms {
        profile.require_vm(vm)?;
    }
    let lv = Libvirt::open(&global.connect)?;
    let _lock = super::profile_lock(global, "stop", &profile.name, false)?;
    super::snapshot::finish_interrupted(&lv, &profile, false)?;
    let observed = Observed::from_libvirt(&lv)?;
    let p = profile.name.as_str();
    let vms: Vec<(String, String)> = profile
        .instances()
        .into_iter()
        .map(|(vm, _)| vm)
        .filter(|vm| args.vms.is_empty() || args.vms.contains(vm))
        .map(|vm| {
            let domain = names::domain(p, &vm);
            (vm, domain)
        })
        .collect();
    // A domain of that name without lab's mark is someone else's: refused before any VM
    // is touched.
    for (_, domain) in &vms {
        if let Some(d) = observed.domain(domain)
            && !d.owner.as_ref().is_some_and(|o| o.is(p))
        {
            bail!("domain {domain} is not lab's (no lab mark): lab stop leaves it alone");
        }
    }
    let rows = fanout::all(
        vms,
        |(vm, _)| vm.clone(),
        |(vm, domain)| {
            let t = Instant::now();
            // A save that a killed lab stop asked for goes on in libvirtd: it is waited
            // for, then the domain is looked at again (saved by then, or still running).
            lv.wait_settled(&domain, super::start::SETTLE_TIMEOUT)?;
            let state = if !lv.domain_exists(&domain) {
                "no domain"
            } else if lv.domain_running(&domain) {
                // Paused (by a killed command) or not, it is saved to resume running.
                ui::debug(format_args!("lab: save domain {domain}"));
                lv.save_domain(&domain)?;
                ui::debug(format_args!("lab: done save domain {domain}"));
                "saved"
            } else if lv.domain_saved(&domain) {
                "saved"
            } else {
                "shut off"
            };
            Ok(Stopped {
                vm,
                domain,
                state,
                ms: t.elapsed().as_millis() as u64,
            })
        },
    )?;
    if global.json {
        ui::print_json(&rows)?;
        return Ok(exit::OK);
    }
    let mut t = Table::new(["vm", "state", "took"]);
    for r in &rows {
        t.row(vec![
            (r.vm.clone(), Style::Plain),
            (r.state.to_string(), Style::Yellow),
            (format!("{:.1} s", r.ms as f64 / 1000.0), Style::Plain),
        ]);
    }
    print!("{}", t.render(Stream::Stdout));
    if rows.iter().any(|r| r.state == "saved") {
        ui::info(format_args!("lab start {p} resumes them where they were"));
    }
    Ok(exit::OK)
}
