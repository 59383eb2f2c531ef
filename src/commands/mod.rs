//! The commands: one file each. A command reads its arguments, observes, plans, applies
//! through the library, and prints: human status on stderr, data on stdout.

pub mod base;
pub mod cache;
pub mod check;
pub mod console;
pub mod down;
pub mod man;
pub mod pool;
pub mod profiles;
pub mod ready;
pub mod reset;
pub mod snapshot;
pub mod ssh;
pub mod start;
pub mod status;
pub mod stop;
pub mod trim;
pub mod up;

use crate::apply;
use crate::cli::GlobalArgs;
use crate::ui::{self, Stream, Style, Table};

pub(crate) fn vm_table(vms: &[apply::VmState]) -> String {
    let mut t = Table::new(["vm", "ip", "state", "console"]);
    for v in vms {
        t.row(vec![
            (v.name.clone(), Style::Plain),
            (v.ip.clone().unwrap_or_else(|| "-".into()), Style::Plain),
            (
                v.state.clone(),
                if v.state == "running" {
                    Style::Green
                } else {
                    Style::Yellow
                },
            ),
            (v.console.clone(), Style::Plain),
        ]);
    }
    t.render(Stream::Stdout)
}

/// What `--dry-run` prints: the plan as data (`--json`) or as text for people.
pub(crate) fn show_plan<T: serde::Serialize>(
    global: &GlobalArgs,
    plan: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if global.json {
        ui::print_json(plan)
    } else {
        print!("{}", text(plan));
        Ok(())
    }
}

/// The profile's lock for `lab VERB PROFILE`, held for the whole command; none for a
/// `--dry-run`, which changes nothing.
pub(crate) fn profile_lock(
    global: &GlobalArgs,
    verb: &str,
    profile: &str,
    dry_run: bool,
) -> anyhow::Result<Option<crate::lock::Lock>> {
    if dry_run {
        return Ok(None);
    }
    crate::lock::Lock::profile(profile, &format!("lab {verb} {profile}"), global.wait()).map(Some)
}
