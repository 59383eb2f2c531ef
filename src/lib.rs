//! lab: a nested-virtualisation demo lab on a Linux laptop.
//!
//! The map. Every command observes what exists, computes a plan (a pure function), and
//! applies it; the folders are the rooms of that architecture:
//!
//! | where | what |
//! |---|---|
//! | `main.rs`, `cli.rs` | entry point; the command line (clap types only) |
//! | `commands/` | one file per command: arguments, observe, plan, apply, report |
//! | `observe.rs` | what exists (lab's libvirt objects, images, LVs, files) and the host's facts |
//! | `plan.rs` | pure: (profile, host facts, observed) -> typed actions, for up, reset, down |
//! | `apply.rs` | carries out every action of a plan, with progress |
//! | `profile.rs`, `dirs.rs` | the TOML profile: schema, validation, where it is found |
//! | `guest/` | inside the VMs over SSH: connect, the VM's identity, provisioning steps, packstack, readiness |
//! | `cloud/` | cloud images: the download cache, image bases, NoCloud seeds (`seed`) and the ISO writer (`iso`) |
//! | `directboot/` | the smoke guest: the host's kernel and the initramfs lab makes |
//! | `kickstart/` | templates (lookup in `templates.rs`), installer builds, sealing, sources |
//! | `snapshot.rs` | whole-lab snapshots of qcow2 labs: saved memory plus frozen disk layers |
//! | `storage/` | one trait, backends `qcow2` and `lvm_thin`, the one offline fstrim engine |
//! | `trim.rs` | `lab trim`: online through the guest agent, offline through storage, the discard chain |
//! | `libvirt/` | the narrow driver, XML types to write (`xml`, `define`) and read (`read`), consoles |
//! | `host/`, `check/` | host facts read from a sysroot only; `lab check`'s verdicts on them |
//! | `mark.rs`, `names.rs` | lab's ownership mark; every name lab gives a resource, with why |
//! | `runner.rs`, `fanout.rs` | one way to run a command (data, with a pasteable failure); one per-VM fan-out |
//! | `lock.rs`, `ui.rs`, `error.rs`, `size.rs`, `subnet.rs` | locks, output, exit statuses, sizes, subnet choice |

use std::process::ExitCode;

use clap::Parser;

pub mod apply;
pub mod check;
pub mod cli;
pub mod cloud;
pub mod commands;
pub mod directboot;
pub mod dirs;
pub mod error;
pub mod fanout;
pub mod forward;
pub mod guest;
pub mod host;
pub mod kickstart;
pub mod libvirt;
pub mod lock;
pub mod mark;
pub mod names;
pub mod observe;
pub mod plan;
pub mod profile;
pub mod runner;
pub mod size;
pub mod snapshot;
pub mod storage;
pub mod subnet;
pub mod trim;
pub mod ui;

use cli::{Cli, Command};

/// Parse the command line, run, and turn the outcome into lab's exit status.
pub fn main_entry() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(err.exit_code().clamp(0, 255) as u8);
        }
    };
    // libvirt prints every error on stderr itself unless told not to; lab reports them.
    virt::error::clear_error_callback();
    ui::init(cli.global.verbose, cli.global.quiet, cli.global.color);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            ui::error(format_args!("{err:#}"));
            ExitCode::from(error::exit_status(&err))
        }
    }
}

/// Run one parsed command; Ok carries the exit status the command chose.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Check(args) => commands::check::check(&cli.global, &args),
        Command::Up(args) => commands::up::up(&cli.global, &args),
        Command::Profiles => commands::profiles::profiles(&cli.global),
        Command::Status(args) => commands::status::status(&cli.global, &args),
        Command::Reset(args) => commands::reset::reset(&cli.global, &args),
        Command::Stop(args) => commands::stop::stop(&cli.global, &args),
        Command::Start(args) => commands::start::start(&cli.global, &args),
        Command::Snapshot(args) => commands::snapshot::snapshot(&cli.global, &args),
        Command::Restore(args) => commands::snapshot::restore(&cli.global, &args),
        Command::Down(args) => commands::down::down(&cli.global, &args),
        Command::Pool(args) => commands::pool::pool(&cli.global, &args),
        Command::Base(args) => commands::base::base(&cli.global, &args),
        Command::Cache(args) => commands::cache::cache(&cli.global, &args),
        Command::Trim(args) => commands::trim::trim(&cli.global, &args),
        Command::Ssh(args) => commands::ssh::ssh_command(&cli.global, &args),
        Command::Console(args) => commands::console::console(&cli.global, &args),
        Command::Ready(args) => commands::ready::ready(&cli.global, &args),
        Command::Completions { shell } => commands::man::completions(shell),
        Command::Man { dir } => commands::man::man(dir.as_deref()),
    }
}
