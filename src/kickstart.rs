//! Kickstart templates: where they are found.

use std::path::PathBuf;

/// The templates shipped inside the binary.
pub const BUILT_IN: &[(&str, &str)] = &[(
    "centos-stream9.ks.j2",
    include_str!("../kickstart/centos-stream9.ks.j2"),
)];

/// Directories searched for a template, in order, before the built-in ones.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("kickstart")];
    if let Some(config) = crate::profile::config_home() {
        dirs.push(config.join("lab/kickstart"));
    }
    dirs.push(PathBuf::from("/etc/lab/kickstart"));
    dirs
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
