//! Where kickstart templates are found: `./kickstart`, `~/.config/lab/kickstart`,
//! `/etc/lab/kickstart`, then the ones built into lab; a name with a `/` is a path.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::error::usage;

/// The templates shipped inside the binary.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "centos-stream9.ks.j2",
        include_str!("../../kickstart/centos-stream9.ks.j2"),
    ),
    ("fedora.ks.j2", include_str!("../../kickstart/fedora.ks.j2")),
];

/// Directories searched for a template, in order, before the built-in ones.
pub fn search_dirs() -> Vec<PathBuf> {
    crate::dirs::search_dirs("kickstart")
}

/// Where a template lives: a file, or built in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    File(PathBuf),
    BuiltIn(&'static str),
}

/// Find a template by name (searched) or path (taken as is).
pub fn find_template(name: &str) -> Option<TemplateSource> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(TemplateSource::File(p));
    }
    for dir in search_dirs() {
        let p = dir.join(name);
        if p.is_file() {
            return Some(TemplateSource::File(p));
        }
    }
    BUILT_IN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| TemplateSource::BuiltIn(text))
}

/// The text of a template and the name errors call it by.
pub(crate) fn template_text(name: &str) -> Result<(String, String)> {
    match find_template(name) {
        Some(TemplateSource::File(path)) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading kickstart template {}", path.display()))?;
            Ok((path.display().to_string(), text))
        }
        Some(TemplateSource::BuiltIn(text)) => Ok((format!("{name} (built in)"), text.into())),
        None => Err(usage(not_found(name))),
    }
}

/// What lab says of a template it cannot find: where it looked, and what is built in.
pub fn not_found(name: &str) -> String {
    format!(
        "no kickstart template {name:?}: looked in {} and the built-in templates ({})",
        search_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        BUILT_IN
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    )
}
