//! Writing a small ISO 9660 image with a Joliet tree: what a NoCloud seed is (a `cidata`
//! volume holding `meta-data` and `user-data`), and what the tests attach as an installer
//! CD-ROM.
//!
//! Two directory trees over the same file data: the primary one with names as mastering
//! tools record them without Rock Ridge (upper case, `;1`, a dot when there is no
//! extension), which lab's own reader (`kickstart::iso9660`) and any firmware read, and a
//! Joliet one (UCS-2) with the names exactly as given, which Linux mounts by preference, so
//! cloud-init finds `meta-data` and `user-data` and not `META_DATA.;1`.
//!
//! Why written here: a seed is two small files, and the alternatives are an external tool on
//! every host (genisoimage, xorriso) or a crate for a few hundred lines of layout. No path
//! tables are written (size 0): Linux, QEMU, blkid and lab's reader walk the directories.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

pub const SECTOR: usize = 2048;

/// An image of volume `volume_id` holding `files` (paths relative to the root, `/`
/// separated). Directories are made as the paths need them.
pub fn image(volume_id: &str, files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    if volume_id.is_empty() || volume_id.len() > 16 || !volume_id.is_ascii() {
        bail!("ISO volume id {volume_id:?}: 1 to 16 ASCII characters");
    }
    let tree = Tree::of(files)?;
    // Sectors: 16 primary, 17 Joliet, 18 terminator, then each tree's directories, then
    // the files (shared by both trees).
    let mut next = 19u32;
    let mut primary: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let mut joliet: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for (table, names) in [(&mut primary, Names::Primary), (&mut joliet, Names::Joliet)] {
        for (dir, children) in &tree.dirs {
            let size = tree.dir_bytes(children, names);
            table.insert(dir.as_str(), (next, size));
            next += size / SECTOR as u32;
        }
    }
    let mut file_sector: BTreeMap<&str, u32> = BTreeMap::new();
    for (path, data) in files {
        file_sector.insert(path, next);
        next += data.len().div_ceil(SECTOR).max(1) as u32;
    }
    let total = next as usize;
    let mut out = vec![0u8; total * SECTOR];

    for (table, names) in [(&primary, Names::Primary), (&joliet, Names::Joliet)] {
        for (dir, children) in &tree.dirs {
            let (own, size) = table[dir.as_str()];
            let parent = table[parent_of(dir)];
            let mut records = vec![
                record(&[0], own, size, true),
                record(&[1], parent.0, parent.1, true),
            ];
            for (name, is_dir) in children {
                let path = join(dir, name);
                let (extent, len) = if *is_dir {
                    table[path.as_str()]
                } else {
                    let data = files.iter().find(|(p, _)| *p == path).expect("a file").1;
                    (file_sector[path.as_str()], data.len() as u32)
                };
                records.push(record(&names.encode(name, *is_dir), extent, len, *is_dir));
            }
            let mut at = own as usize * SECTOR;
            for r in records {
                // A record never crosses a sector boundary: the rest of the sector stays 0.
                if at % SECTOR + r.len() > SECTOR {
                    at = at.next_multiple_of(SECTOR);
                }
                out[at..at + r.len()].copy_from_slice(&r);
                at += r.len();
            }
        }
    }
    for (path, data) in files {
        let at = file_sector[path] as usize * SECTOR;
        out[at..at + data.len()].copy_from_slice(data);
    }

    let root = |table: &BTreeMap<&str, (u32, u32)>| {
        let (extent, size) = table[""];
        record(&[0], extent, size, true)
    };
    descriptor(
        &mut out[16 * SECTOR..17 * SECTOR],
        1,
        &pad_ascii(volume_id, 32),
        total as u32,
        &root(&primary),
        &[],
    );
    // Joliet level 3 (UCS-2, escape sequence %/E).
    descriptor(
        &mut out[17 * SECTOR..18 * SECTOR],
        2,
        &pad_ucs2(volume_id, 32),
        total as u32,
        &root(&joliet),
        b"%/E",
    );
    let term = &mut out[18 * SECTOR..19 * SECTOR];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    Ok(out)
}

/// Directories (by path, the root being "") and their children (name, is a directory), in
/// name order.
struct Tree {
    dirs: BTreeMap<String, Vec<(String, bool)>>,
}

impl Tree {
    fn of(files: &[(&str, &[u8])]) -> Result<Tree> {
        let mut dirs: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        dirs.insert(String::new(), Vec::new());
        for (path, _) in files {
            let parts: Vec<&str> = path.split('/').collect();
            if parts.iter().any(|p| p.is_empty() || p.chars().count() > 64) {
                bail!("{path:?}: not a relative path of names of 1 to 64 characters");
            }
            for i in 0..parts.len() {
                let parent = parts[..i].join("/");
                let is_dir = i + 1 < parts.len();
                let list = dirs.entry(parent).or_default();
                match list.iter().find(|(n, _)| n == parts[i]) {
                    Some((_, was_dir)) if *was_dir != is_dir || !is_dir => {
                        bail!("{path:?}: named twice, or both a file and a directory")
                    }
                    Some(_) => {}
                    None => list.push((parts[i].to_string(), is_dir)),
                }
                if is_dir {
                    dirs.entry(parts[..=i].join("/")).or_default();
                }
            }
        }
        for children in dirs.values_mut() {
            children.sort();
        }
        Ok(Tree { dirs })
    }

    /// The bytes a directory takes in `names`' tree: whole sectors, records packed without
    /// crossing a sector boundary.
    fn dir_bytes(&self, children: &[(String, bool)], names: Names) -> u32 {
        let mut lens = vec![record_len(1), record_len(1)];
        lens.extend(
            children
                .iter()
                .map(|(n, d)| record_len(names.encode(n, *d).len())),
        );
        let mut at = 0usize;
        for len in lens {
            if at % SECTOR + len > SECTOR {
                at = at.next_multiple_of(SECTOR);
            }
            at += len;
        }
        at.next_multiple_of(SECTOR) as u32
    }
}

#[derive(Clone, Copy)]
enum Names {
    Primary,
    Joliet,
}

impl Names {
    fn encode(self, name: &str, is_dir: bool) -> Vec<u8> {
        match self {
            Names::Primary => primary_name(name, is_dir).into_bytes(),
            Names::Joliet => {
                let name = if is_dir {
                    name.to_string()
                } else {
                    format!("{name};1")
                };
                name.encode_utf16().flat_map(u16::to_be_bytes).collect()
            }
        }
    }
}

/// `vmlinuz` -> `VMLINUZ.;1`, `initrd.img` -> `INITRD.IMG;1`, `meta-data` ->
/// `META_DATA.;1`: d-characters only, as ISO 9660 allows.
fn primary_name(name: &str, is_dir: bool) -> String {
    let clean: String = name
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9' | '_' | '.') => c,
            _ => '_',
        })
        .take(30)
        .collect();
    if is_dir {
        clean.replace('.', "_")
    } else if clean.contains('.') {
        format!("{clean};1")
    } else {
        format!("{clean}.;1")
    }
}

fn parent_of(dir: &str) -> &str {
    match dir.rsplit_once('/') {
        Some((p, _)) => p,
        None => "",
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// A primary (1) or supplementary (2) volume descriptor.
fn descriptor(d: &mut [u8], kind: u8, volume_id: &[u8], total: u32, root: &[u8], escape: &[u8]) {
    d[0] = kind;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    let system = if kind == 1 {
        pad_ascii("LINUX", 32)
    } else {
        pad_ucs2("LINUX", 32)
    };
    d[8..40].copy_from_slice(&system);
    d[40..72].copy_from_slice(volume_id);
    both32(&mut d[80..88], total);
    d[88..88 + escape.len()].copy_from_slice(escape);
    both16(&mut d[120..124], 1);
    both16(&mut d[124..128], 1);
    both16(&mut d[128..132], SECTOR as u16);
    d[156..156 + root.len()].copy_from_slice(root);
    // Volume set, publisher, preparer, application, files: blank.
    let blank = if kind == 1 {
        pad_ascii("", 623)
    } else {
        pad_ucs2("", 623)
    };
    d[190..813].copy_from_slice(&blank);
    // Creation, modification, expiration, effective dates: "not specified".
    for at in [813, 830, 847, 864] {
        d[at..at + 16].fill(b'0');
        d[at + 16] = 0;
    }
    d[881] = 1;
}

fn pad_ascii(s: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(len).collect();
    v.resize(len, b' ');
    v
}

fn pad_ucs2(s: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .take(len)
        .collect();
    while v.len() < len {
        v.extend([0, b' ']);
    }
    v.truncate(len);
    v
}

fn both32(out: &mut [u8], v: u32) {
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..8].copy_from_slice(&v.to_be_bytes());
}

fn both16(out: &mut [u8], v: u16) {
    out[..2].copy_from_slice(&v.to_le_bytes());
    out[2..4].copy_from_slice(&v.to_be_bytes());
}

/// A directory record is even in length: a pad byte follows an even-length name.
fn record_len(name: usize) -> usize {
    33 + name + usize::from(name.is_multiple_of(2))
}

fn record(name: &[u8], extent: u32, size: u32, dir: bool) -> Vec<u8> {
    let len = record_len(name.len());
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    both32(&mut r[2..10], extent);
    both32(&mut r[10..18], size);
    // 2026-01-01 00:00:00 UTC: a fixed date keeps the image a function of its files.
    r[18..25].copy_from_slice(&[126, 1, 1, 0, 0, 0, 0]);
    r[25] = if dir { 2 } else { 0 };
    both16(&mut r[28..32], 1);
    r[32] = name.len() as u8;
    r[33..33 + name.len()].copy_from_slice(name);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_iso_9660_in_the_primary_tree_and_stay_exact_in_joliet() {
        assert_eq!(primary_name("vmlinuz", false), "VMLINUZ.;1");
        assert_eq!(primary_name("initrd.img", false), "INITRD.IMG;1");
        assert_eq!(primary_name("meta-data", false), "META_DATA.;1");
        assert_eq!(primary_name("pxeboot", true), "PXEBOOT");
        let j = Names::Joliet.encode("user-data", false);
        let back: Vec<u16> = j
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16(&back).unwrap(), "user-data;1");
    }

    #[test]
    fn lab_reads_back_what_it_wrote_nested_and_in_a_directory_of_many_sectors() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..120).map(|i| format!("file-number-{i:03}")).collect();
        let mut files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        let big = vec![7u8; 5000];
        files.push(("images/pxeboot/vmlinuz", &big));
        files.push(("meta-data", b"instance-id: i-1\n"));
        let iso = dir.path().join("t.iso");
        std::fs::write(&iso, image("cidata", &files).unwrap()).unwrap();
        let out = dir.path().join("out");
        crate::kickstart::iso9660::extract(&iso, "images/pxeboot/vmlinuz", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), big);
        crate::kickstart::iso9660::extract(&iso, "meta_data", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"instance-id: i-1\n");
        crate::kickstart::iso9660::extract(&iso, "FILE_NUMBER_119", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"x");
    }

    #[test]
    fn blkid_sees_a_cidata_iso9660_volume() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("seed.iso");
        std::fs::write(&iso, image("cidata", &[("meta-data", b"a: 1\n")]).unwrap()).unwrap();
        let got = crate::runner::Cmd::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&iso)
            .run()
            .expect("blkid (util-linux) reads the image");
        assert!(got.stdout.contains("TYPE=iso9660"), "{}", got.stdout);
        assert!(got.stdout.contains("LABEL=cidata"), "{}", got.stdout);
    }

    #[test]
    fn bad_paths_and_volume_ids_are_refused() {
        assert!(image("", &[]).is_err());
        assert!(image("x", &[("a//b", b"")]).is_err());
        assert!(image("x", &[("a", b""), ("a/b", b"")]).is_err());
        assert!(image("x", &[("a", b""), ("a", b"")]).is_err());
    }
}
