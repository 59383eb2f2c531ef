//! `lab console PROFILE VM`: the VM's serial console, interactive, for when its network is
//! cut. libvirt's own console client (virsh) attaches to the VM's pty; the console log goes
//! on being written all the while.

use anyhow::{Result, bail};

use crate::cli::{ConsoleArgs, GlobalArgs};
use crate::error::usage;
use crate::libvirt::Libvirt;
use crate::libvirt::console::console_log;
use crate::names;
use crate::observe::Observed;
use crate::profile::Profile;
use crate::runner::Cmd;
use crate::ui;

/// The key that leaves the console (virsh's).
pub const ESCAPE: &str = "Ctrl+]";

pub fn console(global: &GlobalArgs, args: &ConsoleArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    profile.require_vm(&args.vm)?;
    let p = profile.name.as_str();
    let domain = names::domain(p, &args.vm);
    let lv = Libvirt::open(&global.connect)?;
    let observed = Observed::from_libvirt(&lv)?;
    match observed.domain(&domain) {
        None => bail!(usage(format!(
            "{} of {p} has no domain: `lab up {}` first",
            args.vm,
            profile.cli_name()
        ))),
        Some(d) if !d.owner.as_ref().is_some_and(|o| o.is(p)) => {
            bail!("domain {domain} is not lab's (no lab mark): lab console leaves it alone")
        }
        Some(d) if !d.running => bail!(usage(format!(
            "{} of {p} is not running{}: `lab {} {}` first",
            args.vm,
            if d.saved { " (saved by lab stop)" } else { "" },
            if d.saved { "start" } else { "up" },
            profile.cli_name()
        ))),
        Some(_) => {}
    }
    ui::info(format_args!(
        "{}'s serial console (domain {domain}); leave with {ESCAPE}. Its log goes on in {}",
        args.vm,
        console_log(&profile.storage.dir, &domain).display()
    ));
    let mut cmd = Cmd::new("virsh")
        .args(["-c", &global.connect, "console", "--force", &domain])
        .std_command();
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    bail!("starting virsh console (install libvirt-clients): {err}")
}
