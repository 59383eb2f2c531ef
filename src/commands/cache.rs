//! `lab cache`: the cloud images lab downloaded, shared by all profiles; listed and pruned.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::cli::{CacheArgs, CacheCommand, GlobalArgs};
use crate::cloud::cache::{self, Entry};
use crate::error::{exit, usage};
use crate::plan::days_ago;
use crate::size::ByteSize;
use crate::ui::{self, Stream, Style, Table};

pub fn cache(global: &GlobalArgs, args: &CacheArgs) -> Result<u8> {
    let dir = cache::cache_dir();
    match &args.command {
        CacheCommand::List => list(global, &dir),
        CacheCommand::Rm { names, all } => remove(global, &dir, names, *all),
    }
}

/// One image in `lab cache list --json`: its record, where it is, what it takes.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    entry: &'a Entry,
    path: String,
    /// Bytes the image takes on disk (a raw image has holes).
    allocated: u64,
}

#[derive(Serialize)]
struct ListOut<'a> {
    cache: String,
    images: Vec<Listed<'a>>,
    /// What interrupted downloads left: resumed by the next fetch of their image.
    unfinished: Vec<Unfinished>,
}

#[derive(Serialize)]
struct Unfinished {
    path: String,
    bytes: u64,
}

fn list(global: &GlobalArgs, dir: &Path) -> Result<u8> {
    let entries = cache::entries(dir)?;
    let unfinished = cache::unfinished(dir);
    let listed: Vec<Listed> = entries
        .iter()
        .map(|e| {
            let path = dir.join(&e.file);
            Listed {
                entry: e,
                allocated: path.metadata().map_or(0, |m| m.blocks() * 512),
                path: path.display().to_string(),
            }
        })
        .collect();
    if global.json {
        ui::print_json(&ListOut {
            cache: dir.display().to_string(),
            images: listed,
            unfinished: unfinished
                .iter()
                .map(|(p, b)| Unfinished {
                    path: p.display().to_string(),
                    bytes: *b,
                })
                .collect(),
        })?;
        return Ok(exit::OK);
    }
    if listed.is_empty() {
        ui::info(format_args!("no images in the cache {}", dir.display()));
    } else {
        let now = crate::observe::now_secs();
        let mut t = Table::new([
            "image",
            "format",
            "on disk",
            "fetched",
            "last used",
            "checksum",
            "source",
        ]);
        for l in &listed {
            let e = l.entry;
            let format = match &e.compression {
                Some(c) => format!("{} (from {c})", e.format.as_str()),
                None => e.format.as_str().to_string(),
            };
            let short = e
                .checksum
                .parse::<crate::cloud::Checksum>()
                .map_or_else(|_| e.checksum.clone(), |c| c.short());
            t.row(vec![
                (e.name.clone(), Style::Plain),
                (format, Style::Plain),
                (ByteSize(l.allocated).to_string(), Style::Plain),
                (days_ago(e.fetched_at, now), Style::Plain),
                (days_ago(e.last_used, now), Style::Plain),
                (short, Style::Plain),
                (e.source.clone(), Style::Plain),
            ]);
        }
        print!("{}", t.render(Stream::Stdout));
        let total: u64 = listed.iter().map(|l| l.allocated).sum();
        ui::info(format_args!(
            "{} image{} in {}, {} on disk",
            listed.len(),
            if listed.len() == 1 { "" } else { "s" },
            dir.display(),
            ByteSize(total)
        ));
    }
    if !unfinished.is_empty() {
        let bytes: u64 = unfinished.iter().map(|(_, b)| b).sum();
        ui::info(format_args!(
            "{} unfinished download{} ({}): resumed by the next fetch, removed by `lab cache rm --all`",
            unfinished.len(),
            if unfinished.len() == 1 { "" } else { "s" },
            ByteSize(bytes)
        ));
    }
    Ok(exit::OK)
}

/// The entries `name` names: by published name, cache file, or checksum (whole, or 8 hex
/// digits or more of it).
fn matching<'a>(entries: &'a [Entry], name: &str) -> Vec<&'a Entry> {
    let (algo, hex) = match name
        .split_once([':', '-'])
        .filter(|(algo, _)| *algo == "sha256" || *algo == "sha512")
    {
        Some((algo, hex)) => (Some(algo), hex.to_ascii_lowercase()),
        None => (None, name.to_ascii_lowercase()),
    };
    let by_checksum = hex.len() >= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    entries
        .iter()
        .filter(|e| {
            e.name == name
                || e.file == name
                || (by_checksum
                    && e.checksum.split_once(':').is_some_and(|(a, h)| {
                        algo.is_none_or(|algo| algo == a) && h.starts_with(&hex)
                    }))
        })
        .collect()
}

#[derive(Serialize)]
struct Removed {
    name: String,
    file: String,
    checksum: String,
    bytes: u64,
}

fn remove(global: &GlobalArgs, dir: &Path, names: &[String], all: bool) -> Result<u8> {
    let entries = cache::entries(dir)?;
    // Every name is checked before anything is removed: a typo removes nothing.
    let chosen: Vec<&Entry> = if all {
        entries.iter().collect()
    } else {
        let mut chosen: Vec<&Entry> = Vec::new();
        for name in names {
            match matching(&entries, name).as_slice() {
                [] => {
                    let known = if entries.is_empty() {
                        format!("the cache {} is empty", dir.display())
                    } else {
                        format!(
                            "cached: {}",
                            entries
                                .iter()
                                .map(|e| e.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    return Err(usage(format!("{name}: no such cached image ({known})")));
                }
                [one] => {
                    if !chosen.iter().any(|c| c.file == one.file) {
                        chosen.push(one);
                    }
                }
                many => {
                    return Err(usage(format!(
                        "{name} names {} cached images: give the checksum of one ({})",
                        many.len(),
                        many.iter()
                            .map(|e| e.checksum.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        chosen
    };
    let mut removed = Vec::new();
    for e in chosen {
        let bytes = dir.join(&e.file).metadata().map_or(0, |m| m.blocks() * 512);
        cache::remove(dir, e.key(), global.wait())?;
        if !global.json {
            println!("removed {} ({}, {})", e.name, e.checksum, ByteSize(bytes));
        }
        removed.push(Removed {
            name: e.name.clone(),
            file: e.file.clone(),
            checksum: e.checksum.clone(),
            bytes,
        });
    }
    if all {
        cache::remove_unfinished(dir, global.wait())?;
    }
    if global.json {
        ui::print_json(
            &serde_json::json!({ "cache": dir.display().to_string(), "removed": removed }),
        )?;
    } else if removed.is_empty() {
        ui::info(format_args!("no images in the cache {}", dir.display()));
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::ImageFormat;

    fn entry(name: &str, hex: char) -> Entry {
        let hex: String = std::iter::repeat_n(hex, 64).collect();
        Entry {
            file: format!("sha256-{hex}.qcow2"),
            name: name.into(),
            source: format!("https://example.org/{name}"),
            checksum: format!("sha256:{hex}"),
            checksum_url: None,
            format: ImageFormat::Qcow2,
            compression: None,
            size: 1,
            published_size: 1,
            fetched_at: 0,
            last_used: 0,
        }
    }

    #[test]
    fn an_image_is_named_by_name_file_or_checksum() {
        let entries = [
            entry("debian.qcow2", 'a'),
            entry("debian.qcow2", 'b'),
            entry("fedora.raw", 'c'),
        ];
        let names = |n: &str| -> Vec<char> {
            matching(&entries, n)
                .iter()
                .map(|e| e.checksum.chars().last().unwrap())
                .collect()
        };
        assert_eq!(names("fedora.raw"), ['c']);
        assert_eq!(
            names("debian.qcow2"),
            ['a', 'b'],
            "two latest downloads of one name"
        );
        assert_eq!(names("sha256:bbbbbbbb"), ['b']);
        assert_eq!(names("sha256-bbbbbbbbbb"), ['b']);
        assert_eq!(names("aaaaaaaa"), ['a']);
        assert_eq!(names(&entries[1].file), ['b']);
        assert!(
            names("aaaa").is_empty(),
            "too short a prefix to be a checksum"
        );
        assert!(names("sha512:aaaaaaaa").is_empty(), "another algorithm");
        assert!(names("ubuntu.img").is_empty());
    }
}
