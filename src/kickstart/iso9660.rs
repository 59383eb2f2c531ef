//! Reading one file out of an ISO 9660 image, without mounting it (the kernel may lack
//! iso9660, and mounting needs privileges and a loop device) and without an external tool.
//!
//! The primary volume descriptor's directory tree is walked; a name matches its Rock Ridge
//! name (`NM`) when the image has one, else its ISO 9660 name with the version (`;1`) and
//! a trailing dot dropped, compared without regard to case (`VMLINUZ.;1` is `vmlinuz`).
//! Installer ISOs hold their kernel and initrd in single extents; a multi-extent file is
//! refused.
//!
//! Why hand-written: lab needs one lookup by name in ~250 lines, and the Rust ISO 9660 crates are young or idle (iso9660 0.1.1, iso9660_simple "WIP").

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

pub const SECTOR: u64 = 2048;

/// A directory entry: where its data is and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub extent: u32,
    pub size: u32,
    pub dir: bool,
    /// Part of a file recorded in several extents.
    pub multi_extent: bool,
}

/// Why a file could not be read from an image.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("{0} is not an ISO 9660 image (no primary volume descriptor)")]
    NotIso(String),
    #[error("{iso} has no /{path}")]
    Missing { iso: String, path: String },
}

/// Copy `/path` (e.g. `images/pxeboot/vmlinuz`) out of `iso` into `dest`.
pub fn extract(iso: &Path, path: &str, dest: &Path) -> Result<()> {
    let mut file = File::open(iso).with_context(|| format!("opening {}", iso.display()))?;
    let entry = lookup(&mut file, iso, path)?;
    if entry.dir {
        bail!("{}: /{path} is a directory", iso.display());
    }
    if entry.multi_extent {
        bail!(
            "{}: /{path} is recorded in several extents, which lab does not read",
            iso.display()
        );
    }
    file.seek(SeekFrom::Start(u64::from(entry.extent) * SECTOR))?;
    let mut out = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let copied = std::io::copy(&mut (&mut file).take(u64::from(entry.size)), &mut out)
        .with_context(|| format!("copying /{path} out of {}", iso.display()))?;
    if copied != u64::from(entry.size) {
        bail!(
            "{}: /{path} is cut short ({copied} of {} bytes)",
            iso.display(),
            entry.size
        );
    }
    out.flush()?;
    Ok(())
}

/// The entry of `/path` in the image.
pub fn lookup(file: &mut File, iso: &Path, path: &str) -> Result<Entry> {
    let mut current = root(file, iso)?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !current.dir {
            break;
        }
        let entries = read_dir(file, &current)?;
        match entries.into_iter().find(|e| same_name(&e.name, part)) {
            Some(e) => current = e,
            None => {
                return Err(IsoError::Missing {
                    iso: iso.display().to_string(),
                    path: path.trim_start_matches('/').to_string(),
                }
                .into());
            }
        }
    }
    Ok(current)
}

/// The root directory, from the primary volume descriptor (sector 16 on).
fn root(file: &mut File, iso: &Path) -> Result<Entry> {
    let not_iso = || IsoError::NotIso(iso.display().to_string());
    for sector in 16..64u64 {
        let mut block = [0u8; SECTOR as usize];
        file.seek(SeekFrom::Start(sector * SECTOR))?;
        if file.read_exact(&mut block).is_err() {
            return Err(not_iso().into());
        }
        if &block[1..6] != b"CD001" {
            return Err(not_iso().into());
        }
        match block[0] {
            1 => {
                return parse_record(&block[156..190]).ok_or_else(|| not_iso().into());
            }
            255 => return Err(not_iso().into()),
            _ => {}
        }
    }
    Err(not_iso().into())
}

/// The entries of a directory, without `.` and `..`.
fn read_dir(file: &mut File, dir: &Entry) -> Result<Vec<Entry>> {
    let mut data = vec![0u8; dir.size as usize];
    file.seek(SeekFrom::Start(u64::from(dir.extent) * SECTOR))?;
    file.read_exact(&mut data)
        .context("reading an ISO 9660 directory")?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let len = data[at] as usize;
        if len == 0 {
            // Records never cross a sector: the rest of this one is padding.
            at = (at / SECTOR as usize + 1) * SECTOR as usize;
            continue;
        }
        let Some(record) = data.get(at..at + len) else {
            break;
        };
        if let Some(e) = parse_record(record)
            && e.name != "."
            && e.name != ".."
        {
            out.push(e);
        }
        at += len;
    }
    Ok(out)
}

/// One directory record: extent, size, flags, and its name (Rock Ridge's when there).
pub fn parse_record(record: &[u8]) -> Option<Entry> {
    let len = *record.first()? as usize;
    if len < 34 || record.len() < len {
        return None;
    }
    let extent = u32::from_le_bytes(record[2..6].try_into().ok()?);
    let size = u32::from_le_bytes(record[10..14].try_into().ok()?);
    let flags = record[25];
    let name_len = record[32] as usize;
    let raw = record.get(33..33 + name_len)?;
    let iso_name = match raw {
        [0] => ".".to_string(),
        [1] => "..".to_string(),
        _ => String::from_utf8_lossy(raw).into_owned(),
    };
    // The system use area follows the name, padded to an even offset.
    let su_start = 33 + name_len + (1 - name_len % 2);
    let name = record
        .get(su_start..len)
        .and_then(rock_ridge_name)
        .unwrap_or(iso_name);
    Some(Entry {
        name,
        extent,
        size,
        dir: flags & 0x02 != 0,
        multi_extent: flags & 0x80 != 0,
    })
}

/// The Rock Ridge alternate name (`NM` entries, continued while flagged) in a system use
/// area.
fn rock_ridge_name(area: &[u8]) -> Option<String> {
    let mut name = Vec::new();
    let mut found = false;
    let mut at = 0;
    while at + 4 <= area.len() {
        let sig = &area[at..at + 2];
        let len = area[at + 2] as usize;
        if len < 4 || at + len > area.len() {
            break;
        }
        if sig == b"NM" && len >= 5 {
            let flags = area[at + 4];
            // CURRENT (.) and PARENT (..) carry no name of their own.
            if flags & 0x06 == 0 {
                name.extend_from_slice(&area[at + 5..at + len]);
                found = true;
            }
        }
        if sig == b"ST" {
            break;
        }
        at += len;
    }
    (found && !name.is_empty()).then(|| String::from_utf8_lossy(&name).into_owned())
}

/// ISO 9660 names carry a version (`;1`) and a dot when they have no extension, in
/// upper case: compare what is left, without regard to case.
pub fn same_name(recorded: &str, wanted: &str) -> bool {
    let base = recorded.split(';').next().unwrap_or(recorded);
    let base = base.strip_suffix('.').unwrap_or(base);
    base.eq_ignore_ascii_case(wanted) || recorded == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_names_match_what_people_write() {
        assert!(same_name("VMLINUZ.;1", "vmlinuz"));
        assert!(same_name("INITRD.IMG;1", "initrd.img"));
        assert!(same_name("PXEBOOT", "pxeboot"));
        assert!(same_name("initrd.img", "initrd.img"));
        assert!(!same_name("INITRD.IMG;1", "initrd"));
    }

    #[test]
    fn a_rock_ridge_name_wins_over_the_iso_name() {
        // A record for "VMLINUZ.;1" whose system use area says NM "vmlinuz".
        let name = b"VMLINUZ.;1";
        let mut r = vec![0u8; 33];
        r[2..6].copy_from_slice(&40u32.to_le_bytes());
        r[10..14].copy_from_slice(&1234u32.to_le_bytes());
        r[32] = name.len() as u8;
        r.extend_from_slice(name);
        if r.len() % 2 == 1 {
            r.push(0);
        }
        r.extend_from_slice(b"PX\x0c\x01\0\0\0\0\0\0\0\0");
        r.extend_from_slice(b"NM\x0c\x01\0vmlinuz");
        r[0] = r.len() as u8;
        let e = parse_record(&r).unwrap();
        assert_eq!(
            e,
            Entry {
                name: "vmlinuz".into(),
                extent: 40,
                size: 1234,
                dir: false,
                multi_extent: false
            }
        );
    }

    #[test]
    fn a_file_that_is_no_iso_is_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("x.iso");
        std::fs::write(&iso, vec![0u8; 40_000]).unwrap();
        let err = extract(&iso, "images/pxeboot/vmlinuz", &dir.path().join("k")).unwrap_err();
        assert!(
            err.to_string().contains("is not an ISO 9660 image"),
            "{err}"
        );
    }
}
