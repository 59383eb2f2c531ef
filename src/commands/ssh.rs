//! `lab ssh PROFILE VM [-- COMMAND]`: log in to a lab VM, or run one command in it.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cli::{GlobalArgs, SshArgs};
use crate::error::exit;
use crate::guest::connect::{CONNECT, key, locate, target, unreachable_hint};
use crate::guest::ssh::{Target, Unanswered};
use crate::libvirt::Libvirt;
use crate::profile::Profile;

/// `lab ssh PROFILE VM [-- COMMAND...]`.
pub fn ssh_command(global: &GlobalArgs, args: &SshArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    locate(&lv, &profile, &args.vm)?;
    let key = key(&profile)?;
    let t = target(&lv, &profile, &args.vm, &key)?;
    let mut cmd = t.command(!args.command.is_empty(), CONNECT);
    if !args.command.is_empty() {
        cmd = cmd.arg("--").arg(Target::remote(&args.command));
    }
    let mut std = cmd.std_command();
    if args.command.is_empty() {
        // An interactive session: ssh gets the terminal; lab's process becomes ssh.
        use std::os::unix::process::CommandExt;
        let err = std.exec();
        bail!("starting ssh: {err}");
    }
    let status = std
        .status()
        .context("starting ssh (install openssh-client)")?;
    match status.code() {
        // ssh's own failures and a remote command's 255 look alike: a second, quiet
        // connection tells them apart, and says why ssh failed when it did.
        Some(255) => match t.probe(CONNECT, CONNECT + Duration::from_secs(5)) {
            Ok(()) => Ok(255),
            Err(Unanswered::HostKey(refused)) => bail!("{refused}"),
            Err(Unanswered::Other(_)) => bail!(
                "could not reach {} of {} over SSH at {} (ssh exit status 255){}",
                t.vm,
                profile.name,
                t.ip,
                unreachable_hint(&profile)
            ),
        },
        Some(code) => Ok(u8::try_from(code).unwrap_or(exit::FAILURE)),
        None => bail!("ssh to {} was {}", t.vm, crate::runner::Exit::of(status)),
    }
}
