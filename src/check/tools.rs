//! `tools.*`: the programs a lab runs, with their versions.

use super::{Check, CheckContext, Report};
use crate::host::tools::{self, TOOLS};

pub fn check(ctx: &CheckContext<'_>, report: &mut Report) {
    if !ctx.sysroot.is_live() {
        for tool in TOOLS {
            report.push(Check::skip(
                &id(tool.program),
                "not probed under --sysroot: tools are looked for on the live machine",
            ));
        }
        return;
    }
    let mut facts = Vec::new();
    for tool in TOOLS {
        let v = tools::probe(tool.program);
        let check = match (&v.version, &v.error) {
            (Some(version), _) => Check::pass(
                &id(tool.program),
                format!("{} {version} ({})", tool.program, tool.why),
            ),
            (None, None) => Check::pass(
                &id(tool.program),
                format!(
                    "{} present, version not recognised: {}",
                    tool.program,
                    v.first_line.as_deref().unwrap_or("")
                ),
            ),
            (None, Some(err)) => Check::fail(
                &id(tool.program),
                format!("{}: {err}; lab needs it: it {}", tool.program, tool.why),
                format!(
                    "apt install {} (Fedora/CentOS: dnf install {})",
                    tool.debian, tool.fedora
                ),
            ),
        };
        report.push(check);
        facts.push(v);
    }
    report.fact("tools", facts);
}

fn id(program: &str) -> String {
    match program {
        "qemu-system-x86_64" => "tools.qemu-system".into(),
        other => format!("tools.{other}"),
    }
}
