//! `lab man [--dir DIR]` (hidden): manual pages made from the command line itself, which
//! the setup script installs; `lab completions SHELL`: a shell completion script.

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::exit;

/// `lab completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "lab", &mut std::io::stdout());
    Ok(exit::OK)
}

/// `lab man [--dir DIR]`.
pub fn man(dir: Option<&std::path::Path>) -> Result<u8> {
    man_pages(dir)?;
    Ok(exit::OK)
}

/// lab.1 (with the exit statuses, which clap does not know) into `dir`, with a page per
/// command and subcommand beside it; without `dir`, lab.1 alone on stdout.
fn man_pages(dir: Option<&std::path::Path>) -> Result<()> {
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
