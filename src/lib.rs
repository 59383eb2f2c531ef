//! lab: a nested-virtualisation demo lab on a Linux laptop.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

pub mod apply;
pub mod check;
pub mod cli;
pub mod commands;
pub mod directboot;
pub mod dirs;
pub mod error;
pub mod fanout;
pub mod guest;
pub mod host;
pub mod kickstart;
pub mod libvirt;
pub mod lock;
pub mod names;
pub mod observe;
pub mod plan;
pub mod profile;
pub mod runner;
pub mod size;
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
        Command::Down(args) => commands::down::down(&cli.global, &args),
        Command::Pool(args) => commands::pool::pool(&cli.global, &args),
        Command::Base(args) => commands::base::base(&cli.global, &args),
        Command::Trim(args) => commands::trim::trim(&cli.global, &args),
        Command::Ssh(args) => commands::ssh::ssh_command(&cli.global, &args),
        Command::Ready(args) => commands::ready::ready(&cli.global, &args),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "lab", &mut std::io::stdout());
            Ok(error::exit::OK)
        }
        Command::Man { dir } => {
            man_pages(dir.as_deref())?;
            Ok(error::exit::OK)
        }
    }
}

/// lab.1 (with the exit statuses, which clap does not know) into `dir`, with a page per
/// command and subcommand beside it; without `dir`, lab.1 alone on stdout.
fn man_pages(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;

    // No `lab help` page: `lab help X` is `lab X --help`, and the pages say that already.
    let cmd = Cli::command().disable_help_subcommand(true);
    let mut rendered = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut rendered)?;
    let mut page = String::from_utf8(rendered)?;
    let at = page.find("\n.SH VERSION").map_or(page.len(), |i| i + 1);
    page.insert_str(at, MAN_EXIT_STATUS);
    let Some(dir) = dir else {
        std::io::stdout().write_all(page.as_bytes())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Every command's page (lab-up.1, lab-base-build.1, ...); its lab.1 is replaced below.
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing manual pages into {}", dir.display()))?;
    let top = dir.join("lab.1");
    std::fs::write(&top, page).with_context(|| format!("writing {}", top.display()))?;
    Ok(())
}

/// The EXIT STATUS and SEE ALSO sections of lab.1, in roff.
const MAN_EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success; for \fBlab check\fR, nothing failed; for \fBlab ready\fR, everything is ready.
.TP
\fB1\fR
lab itself failed (the message says what and where); for \fBlab trim\fR, an image could not be trimmed; for \fBlab up\fR, a provisioning step failed.
.TP
\fB2\fR
Usage error: a bad flag, an unknown profile, a path that does not exist, a broken profile.
.TP
\fB3\fR
\fBlab check\fR: at least one check failed; \fBlab ready\fR: something is not ready.
.TP
\fB4\fR
\fB\-\-no\-wait\fR: another lab command holds a lock this one needs (the message names it); nothing was changed.
.PP
\fBlab ssh\fR \fIPROFILE VM\fR \fB\-\- \fICOMMAND\fR exits with the command's own status.
.SH "SEE ALSO"
\fBlab\-check\fR(1), \fBlab\-up\fR(1), \fBlab\-trim\fR(1), \fBvirsh\fR(1)
.PP
The full reference: docs/reference.md in lab's source.
"#;
