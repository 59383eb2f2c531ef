//! `lab profiles`: every profile lab can find, in search order.

use anyhow::Result;
use serde::Serialize;

use crate::cli::GlobalArgs;
use crate::error::exit;
use crate::profile::{self, Profile};
use crate::ui::{self, Stream, Style, Table};

#[derive(Serialize)]
struct ProfileEntry {
    name: String,
    description: String,
    source: String,
    /// A profile of the same name found earlier in the search order hides this one.
    shadowed: bool,
    error: Option<String>,
}

/// `lab profiles`: every profile lab can find, in search order.
pub fn profiles(global: &GlobalArgs) -> Result<u8> {
    let mut entries: Vec<ProfileEntry> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for dir in profile::search_dirs() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = read
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for path in files {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let loaded = Profile::load_from(&path.display().to_string(), &[]);
            entries.push(ProfileEntry {
                shadowed: !seen.insert(name.clone()),
                description: loaded
                    .as_ref()
                    .map(|p| p.description.clone())
                    .unwrap_or_default(),
                error: loaded.err().map(|e| e.to_string()),
                source: path.display().to_string(),
                name,
            });
        }
    }
    for (name, text) in profile::BUILT_IN {
        let loaded = Profile::parse(text, profile::ProfileSource::BuiltIn);
        entries.push(ProfileEntry {
            name: name.to_string(),
            description: loaded
                .as_ref()
                .map(|p| p.description.clone())
                .unwrap_or_default(),
            source: "built-in".into(),
            shadowed: !seen.insert(name.to_string()),
            error: loaded.err().map(|e| e.to_string()),
        });
    }
    if global.json {
        ui::print_json(&entries)?;
        return Ok(exit::OK);
    }
    let mut table = Table::new(["profile", "from", "description"]);
    for e in &entries {
        let note = match (&e.error, e.shadowed) {
            (Some(err), _) => format!("BROKEN: {err}"),
            (None, true) => format!("(hidden by an earlier one) {}", e.description),
            (None, false) => e.description.clone(),
        };
        let style = if e.error.is_some() {
            Style::Red
        } else if e.shadowed {
            Style::Dim
        } else {
            Style::Plain
        };
        table.row(vec![
            (e.name.clone(), style),
            (e.source.clone(), style),
            (note, style),
        ]);
    }
    print!("{}", table.render(Stream::Stdout));
    Ok(exit::OK)
}
