//! `lab snapshot PROFILE NAME` (`--list`, `--rm`) and `lab restore PROFILE NAME`: whole-lab
//! snapshots of saved memory and frozen disk layers: qcow2 layers, or thin snapshot volumes
//! on a thin pool (see `crate::snapshot`).

use anyhow::Result;
use serde::Serialize;

use crate::cli::{GlobalArgs, RestoreArgs, SnapshotArgs};
use crate::error::{exit, usage};
use crate::libvirt::Libvirt;
use crate::profile::Profile;
use crate::size::ByteSize;
use crate::snapshot::{Snapshots, Timings, render_timings};
use crate::ui::{self, Stream, Style, Table};

#[derive(Serialize)]
struct Report<'a> {
    profile: &'a str,
    snapshot: &'a str,
    vms: usize,
    timings_ms: Timings,
}

/// A snapshot, restore or removal an earlier command left interrupted is finished first
/// (the commands that change a lab call this right after taking its lock): its VMs come
/// back as the snapshot left them, not booted afresh by the command that follows. A dry run
/// only says so.
pub(crate) fn finish_interrupted(lv: &Libvirt, profile: &Profile, dry_run: bool) -> Result<()> {
    let snaps = Snapshots::new(lv, profile);
    if dry_run {
        if snaps.interrupted() {
            ui::info(format_args!(
                "{}: a snapshot, restore or removal was interrupted: the command finishes it                  first",
                profile.name
            ));
        }
        return Ok(());
    }
    snaps.recover_interrupted()
}

pub fn snapshot(global: &GlobalArgs, args: &SnapshotArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let _lock = super::profile_lock(global, "snapshot", &profile.name, false)?;
    let snaps = Snapshots::new(&lv, &profile);
    if args.list {
        snaps.recover()?;
        let list = snaps.list();
        if global.json {
            return ui::print_json(&list).map(|_| exit::OK);
        }
        if list.is_empty() {
            ui::info(format_args!("{}: no snapshots", profile.name));
            return Ok(exit::OK);
        }
        let mut t = Table::new(["name", "taken", "vms", "memory", "layers", "on disk"]);
        for l in &list {
            t.row(vec![
                (l.name.clone(), Style::Plain),
                (
                    ui::ago(crate::observe::now_secs().saturating_sub(l.created)),
                    Style::Plain,
                ),
                (l.vms.len().to_string(), Style::Plain),
                (ByteSize(l.memory_bytes).to_string(), Style::Plain),
                (ByteSize(l.layer_bytes).to_string(), Style::Plain),
                (ByteSize(l.bytes).to_string(), Style::Plain),
            ]);
        }
        print!("{}", t.render(Stream::Stdout));
        return Ok(exit::OK);
    }
    let Some(name) = args.name.as_deref() else {
        return Err(usage("a snapshot name, or --list"));
    };
    if args.rm {
        snaps.remove(name)?;
        if global.json {
            ui::print_json(&serde_json::json!({ "removed": name }))?;
        } else {
            println!("removed snapshot {name}");
        }
        return Ok(exit::OK);
    }
    let t = snaps.take(name)?;
    report(global, &profile, name, t, "paused")
}

pub fn restore(global: &GlobalArgs, args: &RestoreArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let _lock = super::profile_lock(global, "restore", &profile.name, false)?;
    let t = Snapshots::new(&lv, &profile).restore(&args.name, &[])?;
    report(global, &profile, &args.name, t, "stopped")
}

fn report(
    global: &GlobalArgs,
    profile: &Profile,
    name: &str,
    t: Timings,
    first: &str,
) -> Result<u8> {
    let vms = profile.instances().len();
    ui::info(format_args!("{}: {}", name, render_timings(&t, first)));
    if global.json {
        ui::print_json(&Report {
            profile: &profile.name,
            snapshot: name,
            vms,
            timings_ms: t,
        })?;
    } else {
        println!(
            "{name}: {vms} VM{} in {:.2} s",
            if vms == 1 { "" } else { "s" },
            t.total as f64 / 1000.0
        );
    }
    Ok(exit::OK)
}
