//! lab: a nested-virtualisation demo lab on a Linux laptop.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

pub mod apply;
pub mod check;
pub mod cli;
pub mod commands;
pub mod commands_base;
pub mod commands_ssh;
pub mod commands_trim;
pub mod error;
pub mod fanout;
pub mod host;
pub mod initramfs;
pub mod kickstart;
pub mod libvirt;
pub mod lock;
pub mod names;
pub mod packstack;
pub mod plan;
pub mod profile;
pub mod provision;
pub mod runner;
pub mod size;
pub mod smoke;
pub mod ssh;
pub mod state;
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
        Command::Check(args) => commands::check(&cli.global, &args),
        Command::Up(args) => commands::up(&cli.global, &args),
        Command::Profiles => commands::profiles(&cli.global),
        Command::Status(args) => commands::status(&cli.global, &args),
        Command::Reset(args) => commands::reset(&cli.global, &args),
        Command::Down(args) => commands::down(&cli.global, &args),
        Command::Pool(args) => commands::pool(&cli.global, &args),
        Command::Base(args) => commands_base::base(&cli.global, &args),
        Command::Trim(args) => commands_trim::trim(&cli.global, &args),
        Command::Ssh(args) => commands_ssh::ssh_command(&cli.global, &args),
        Command::Ready(args) => commands_ssh::ready(&cli.global, &args),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "lab", &mut std::io::stdout());
            Ok(error::exit::OK)
        }
    }
}
