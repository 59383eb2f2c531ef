//! Human output goes to stderr, data to stdout. Verbosity and colour are set once at start-up.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicI8, Ordering};
use std::time::Duration;

use anstyle::AnsiColor;

use crate::cli::ColorChoice;

static VERBOSITY: AtomicI8 = AtomicI8::new(0);
static COLOR_STDOUT: AtomicBool = AtomicBool::new(false);
static COLOR_STDERR: AtomicBool = AtomicBool::new(false);

/// Set verbosity (-1 quiet, 0 normal, 1 and up verbose) and colour for the process.
pub fn init(verbose: u8, quiet: bool, color: ColorChoice) {
    let level = if quiet { -1 } else { verbose.min(3) as i8 };
    VERBOSITY.store(level, Ordering::Relaxed);
    let wants = |is_tty: bool| match color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_tty && std::env::var_os("NO_COLOR").is_none(),
    };
    COLOR_STDOUT.store(wants(std::io::stdout().is_terminal()), Ordering::Relaxed);
    COLOR_STDERR.store(wants(std::io::stderr().is_terminal()), Ordering::Relaxed);
}

pub fn verbosity() -> i8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// A debug line (shown at -v): every external command is logged through this.
pub fn debug(args: fmt::Arguments<'_>) {
    if verbosity() >= 1 {
        eprintln!("{}", paint(Stream::Stderr, Style::Dim, &args.to_string()));
    }
}

/// A status line for people (hidden by -q).
pub fn info(args: fmt::Arguments<'_>) {
    if verbosity() >= 0 {
        eprintln!("{args}");
    }
}

pub fn warn(args: fmt::Arguments<'_>) {
    if verbosity() >= 0 {
        eprintln!(
            "{} {args}",
            paint(Stream::Stderr, Style::Yellow, "warning:")
        );
    }
}

/// An error line: always shown.
pub fn error(args: fmt::Arguments<'_>) {
    eprintln!("{} {args}", paint(Stream::Stderr, Style::Red, "error:"));
}

/// Write one JSON document to stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // A reader that stopped early (`| head`) is not lab's failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Bold,
    Dim,
    Green,
    Yellow,
    Red,
}

/// Colour `text` for `stream` when colour is on there.
pub fn paint(stream: Stream, style: Style, text: &str) -> String {
    let on = match stream {
        Stream::Stdout => COLOR_STDOUT.load(Ordering::Relaxed),
        Stream::Stderr => COLOR_STDERR.load(Ordering::Relaxed),
    };
    let ansi = match style {
        Style::Plain => return text.to_string(),
        Style::Bold => anstyle::Style::new().bold(),
        Style::Dim => anstyle::Style::new().dimmed(),
        Style::Green => AnsiColor::Green.on_default(),
        Style::Yellow => AnsiColor::Yellow.on_default(),
        Style::Red => AnsiColor::Red.on_default(),
    };
    if on {
        format!("{ansi}{text}{ansi:#}")
    } else {
        text.to_string()
    }
}

/// A plain text table: columns padded to their widest cell, an optional style per cell.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<(String, Style)>>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<(String, Style)>) {
        self.rows.push(cells);
    }

    /// Render for `stream`; the last column is never padded, so long findings do not leave
    /// trailing blanks.
    pub fn render(&self, stream: Stream) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (cell, _)) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<(String, Style)>, out: &mut String| {
            let last = cells.len().saturating_sub(1);
            for (i, (cell, style)) in cells.into_iter().enumerate() {
                let pad = if i == last {
                    0
                } else {
                    widths[i] - cell.chars().count() + 2
                };
                out.push_str(&paint(stream, style, &cell));
                out.push_str(&" ".repeat(pad));
            }
            out.push('\n');
        };
        line(
            self.header
                .iter()
                .map(|h| (h.to_uppercase(), Style::Bold))
                .collect(),
            &mut out,
        );
        for row in &self.rows {
            line(row.clone(), &mut out);
        }
        out
    }
}

/// A spinner line per VM on stderr, updated from the VM's thread (hidden with -q).
pub struct VmProgress {
    multi: MultiProgress,
    style: ProgressStyle,
}

impl VmProgress {
    pub fn new() -> VmProgress {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        if verbosity() < 0 {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        VmProgress {
            multi,
            style: ProgressStyle::with_template("{spinner} {prefix:<12} {msg}")
                .expect("valid template"),
        }
    }

    /// The line of VM `name`, ticking.
    pub fn bar(&self, name: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(self.style.clone());
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}

impl Default for VmProgress {
    fn default() -> Self {
        Self::new()
    }
}

/// How long ago, for people: "5 s ago", "3 min ago", "2 h 5 min ago", "3 days ago".
pub fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..172_800 => format!("{} h {} min ago", secs / 3600, secs / 60 % 60),
        _ => format!("{} days ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_all_but_the_last_column() {
        let mut t = Table::new(["id", "status", "finding"]);
        t.row(vec![
            ("cpu.virt".into(), Style::Plain),
            ("pass".into(), Style::Green),
            ("vmx".into(), Style::Plain),
        ]);
        t.row(vec![
            ("kvm.run".into(), Style::Plain),
            ("fail".into(), Style::Red),
            ("no".into(), Style::Plain),
        ]);
        assert_eq!(
            t.render(Stream::Stdout),
            "ID        STATUS  FINDING\ncpu.virt  pass    vmx\nkvm.run   fail    no\n"
        );
    }
}
