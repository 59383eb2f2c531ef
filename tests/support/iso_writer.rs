//! A minimal ISO 9660 writer for tests: a primary volume descriptor and a directory tree
//! with names as mastering tools record them without Rock Ridge (upper case, `;1`, a dot
//! when there is no extension). Enough for lab to read an installer's kernel and initrd
//! out of, and for QEMU to attach as a CD-ROM.
//!
//! Include it with `#[path = "support/iso_writer.rs"] mod iso_writer;`.

#![allow(dead_code)]

use std::collections::BTreeMap;

const SECTOR: usize = 2048;

/// An image holding `files` (paths relative to the root, `/` separated).
pub fn iso_image(volume_id: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    // Directories, each with its children (name, is_dir), in order.
    let mut dirs: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    dirs.insert(String::new(), Vec::new());
    for (path, _) in files {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 0..parts.len() {
            let parent = parts[..i].join("/");
            let child = parts[i].to_string();
            let is_dir = i + 1 < parts.len();
            let list = dirs.entry(parent).or_default();
            if !list.iter().any(|(n, _)| *n == child) {
                list.push((child, is_dir));
            }
            if is_dir {
                dirs.entry(parts[..=i].join("/")).or_default();
            }
        }
    }
    // Sectors: 16 descriptor, 17 terminator, then one per directory, then the files.
    let mut dir_sector: BTreeMap<String, u32> = BTreeMap::new();
    let mut next = 18u32;
    for d in dirs.keys() {
        dir_sector.insert(d.clone(), next);
        next += 1;
    }
    let mut file_sector: BTreeMap<String, u32> = BTreeMap::new();
    for (path, data) in files {
        file_sector.insert(path.to_string(), next);
        next += data.len().div_ceil(SECTOR).max(1) as u32;
    }
    let total = next as usize;
    let mut image = vec![0u8; total * SECTOR];

    for (dir, children) in &dirs {
        let own = dir_sector[dir];
        let parent = match dir.rsplit_once('/') {
            Some((p, _)) => dir_sector[p],
            None if dir.is_empty() => own,
            None => dir_sector[""],
        };
        let mut block = Vec::new();
        block.extend(record(&[0], own, SECTOR as u32, true));
        block.extend(record(&[1], parent, SECTOR as u32, true));
        let mut sorted = children.clone();
        sorted.sort();
        for (name, is_dir) in sorted {
            let path = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            if is_dir {
                block.extend(record(
                    name.to_uppercase().as_bytes(),
                    dir_sector[&path],
                    SECTOR as u32,
                    true,
                ));
            } else {
                let size = files.iter().find(|(p, _)| *p == path).unwrap().1.len();
                block.extend(record(
                    iso_file_name(&name).as_bytes(),
                    file_sector[&path],
                    size as u32,
                    false,
                ));
            }
        }
        assert!(block.len() <= SECTOR, "a test directory fits one sector");
        let at = own as usize * SECTOR;
        image[at..at + block.len()].copy_from_slice(&block);
    }
    for (path, data) in files {
        let at = file_sector[*path] as usize * SECTOR;
        image[at..at + data.len()].copy_from_slice(data);
    }

    let pvd = &mut image[16 * SECTOR..17 * SECTOR];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    pvd[8..40].fill(b' ');
    pvd[40..72].fill(b' ');
    pvd[40..40 + volume_id.len()].copy_from_slice(volume_id.as_bytes());
    both32(&mut pvd[80..88], total as u32);
    both16(&mut pvd[120..124], 1);
    both16(&mut pvd[124..128], 1);
    both16(&mut pvd[128..132], SECTOR as u16);
    let root = record(&[0], dir_sector[""], SECTOR as u32, true);
    pvd[156..156 + root.len()].copy_from_slice(&root);
    pvd[881] = 1;
    let term = &mut image[17 * SECTOR..18 * SECTOR];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    image
}

/// `vmlinuz` -> `VMLINUZ.;1`, `initrd.img` -> `INITRD.IMG;1`.
fn iso_file_name(name: &str) -> String {
    let upper = name.to_uppercase();
    if upper.contains('.') {
        format!("{upper};1")
    } else {
        format!("{upper}.;1")
    }
}

fn both32(out: &mut [u8], v: u32) {
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..8].copy_from_slice(&v.to_be_bytes());
}

fn both16(out: &mut [u8], v: u16) {
    out[..2].copy_from_slice(&v.to_le_bytes());
    out[2..4].copy_from_slice(&v.to_be_bytes());
}

fn record(name: &[u8], extent: u32, size: u32, dir: bool) -> Vec<u8> {
    let pad = usize::from(name.len().is_multiple_of(2));
    let len = 33 + name.len() + pad;
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    both32(&mut r[2..10], extent);
    both32(&mut r[10..18], size);
    // 2026-01-01 00:00:00 UTC
    r[18..25].copy_from_slice(&[126, 1, 1, 0, 0, 0, 0]);
    r[25] = if dir { 2 } else { 0 };
    both16(&mut r[28..32], 1);
    r[32] = name.len() as u8;
    r[33..33 + name.len()].copy_from_slice(name);
    r
}
