//! Every name lab gives a resource, derived from the profile and VM names: deterministic,
//! and valid everywhere it lands (libvirt domain and network names, Linux bridge names of 15
//! characters at most, LV names and tags, file names).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// Prefix of everything lab names, so people see at a glance what is lab's.
pub const PREFIX: &str = "lab";

/// XML namespace of lab's ownership element in libvirt `<metadata>` (lab writes it with
/// the prefix `lab:`, spelt in `libvirt::xml::Metadata`'s serde names; readers go by the
/// namespace, never the prefix).
pub const XML_NAMESPACE: &str = "urn:lab:owner:1";

/// LVM tag every lab volume carries; a second tag names the profile.
pub const LV_TAG: &str = "lab";

/// Where lab keeps runtime state (the KVM verdict cache, offline-trim work directories):
/// `$LAB_RUNTIME_DIR`, else `/run/lab`, which a reboot empties as that state wants.
pub fn runtime_dir() -> PathBuf {
    std::env::var_os("LAB_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/lab"))
}

/// The nftables table (family `ip`) that holds the profile's published ports: one per
/// profile, so `lab down` removes its own table whole and never touches another lab's rules.
pub fn forward_table(profile: &str) -> String {
    format!("{PREFIX}-{profile}")
}

/// Linux limits a network interface name to 15 bytes (IFNAMSIZ - 1).
pub const BRIDGE_MAX: usize = 15;

pub fn network(profile: &str) -> String {
    format!("{PREFIX}-{profile}")
}

pub fn domain(profile: &str, vm: &str) -> String {
    format!("{PREFIX}-{profile}-{vm}")
}

/// `lab-<profile>` when it fits in 15 bytes, else a readable head plus a hash of the whole
/// name, so two long profile names never share a bridge.
pub fn bridge(profile: &str) -> String {
    let plain = format!("{PREFIX}-{profile}");
    if plain.len() <= BRIDGE_MAX {
        return plain;
    }
    let hash = format!("{:04x}", fnv1a(profile.as_bytes()) & 0xffff);
    // "lab-" + head + "-" + 4 hex digits = 15
    let head: String = profile
        .chars()
        .take(BRIDGE_MAX - PREFIX.len() - 2 - hash.len())
        .collect();
    format!("{PREFIX}-{}-{hash}", head.trim_end_matches('-'))
}

/// The libvirt storage pool (type `dir`, over [`vg_dir`]) lab defines for a volume group,
/// so that `virsh vol-list` and virt-manager show lab's thin volumes.
pub fn storage_pool(vg: &str) -> String {
    format!("{PREFIX}-{vg}")
}

/// The directory where LVM links each active LV of `vg`: `/dev/VG`.
pub fn vg_dir(vg: &str) -> String {
    format!("/dev/{vg}")
}

pub fn base_volume(profile: &str) -> String {
    format!("{PREFIX}-{profile}-base")
}

pub fn clone_volume(profile: &str, vm: &str) -> String {
    format!("{PREFIX}-{profile}-{vm}")
}

pub fn profile_tag(profile: &str) -> String {
    format!("{PREFIX}-profile-{profile}")
}

/// LVM tag naming the VM a clone belongs to.
pub fn vm_tag(vm: &str) -> String {
    format!("{PREFIX}-vm-{vm}")
}

/// LVM tag naming a volume's role: `lab-role-base`, `lab-role-clone` or `lab-role-snapshot`.
pub fn role_tag(role: &str) -> String {
    format!("{PREFIX}-role-{role}")
}

/// A locally administered MAC in QEMU's 52:54:00 range, derived from profile and VM.
pub fn mac(profile: &str, vm: &str) -> String {
    let h = fnv1a(format!("{profile}/{vm}").as_bytes());
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (h >> 16) & 0xff,
        (h >> 8) & 0xff,
        h & 0xff
    )
}

/// The UUID of a VM's domain, derived from profile and VM (RFC 9562 version 8, from
/// SHA-256): defining the domain again updates it instead of colliding. A `lab up` killed
/// while libvirtd still defines its domains, and run again, redefines them to the same.
pub fn domain_uuid(profile: &str, vm: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut b: [u8; 16] = Sha256::digest(format!("lab-domain/{profile}/{vm}").as_bytes())[..16]
        .try_into()
        .expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The address of the `index`-th VM (0-based): .10, .11, ...; the gateway is .1 and the
/// DHCP range for strangers sits above the VMs.
pub fn vm_ip(subnet: Ipv4Net, index: usize) -> Option<Ipv4Addr> {
    let host = 10u32 + index as u32;
    let addr = u32::from(subnet.network()) + host;
    let ip = Ipv4Addr::from(addr);
    (subnet.contains(&ip) && ip != subnet.broadcast()).then_some(ip)
}

/// FNV-1a: tiny and stable across releases and platforms (unlike std's hasher).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Where lab keeps the packstack password it made up for a lab (mode 0600), until
/// `lab down`.
pub fn packstack_password(dir: &std::path::Path, profile: &str) -> std::path::PathBuf {
    dir.join(format!("{}-{profile}.packstack-password", PREFIX))
}

/// A VM's NoCloud seed (the `cidata` ISO on its CD-ROM), beside its disk.
pub fn seed(dir: &std::path::Path, domain: &str) -> std::path::PathBuf {
    dir.join(format!("{domain}.seed.iso"))
}

/// The lab's SSH host CA (private key; `.pub` beside it): it signs every VM's host key, so
/// lab and the VMs trust a VM's new key at once, after a reset too. One per profile, kept
/// until `lab down`.
pub fn host_ca(dir: &std::path::Path, profile: &str) -> std::path::PathBuf {
    dir.join(format!("{PREFIX}-{profile}-host-ca"))
}

/// The lab-wide key pair root of every VM logs in to the others with (private key; `.pub`
/// beside it).
pub fn peer_key(dir: &std::path::Path, profile: &str) -> std::path::PathBuf {
    dir.join(format!("{PREFIX}-{profile}-peer-key"))
}

/// A VM's SSH host key as lab made it (private key; `.pub` and the CA's `-cert.pub`
/// beside it, as ssh-keygen names them). Made anew with each seed.
pub fn host_key(dir: &std::path::Path, domain: &str) -> std::path::PathBuf {
    dir.join(format!("{domain}.host-key"))
}

/// The directory of a profile's whole-lab snapshots, one subdirectory each, beside its
/// images. A VM name cannot hold a dot, so no clone, log or key of a VM is ever named so.
pub fn snapshots_dir(dir: &std::path::Path, profile: &str) -> std::path::PathBuf {
    dir.join(format!("{PREFIX}-{profile}.snapshots"))
}

/// A VM's disk as whole-lab snapshot `snapshot` froze it, on a thin pool: `lab-P-VM.SNAP`.
/// No clone or base name holds a dot (profile and VM names cannot), so it is never taken
/// for one. LVM refuses LV names holding its sub-volume suffixes (`_tdata`, `_rimage`,
/// ...), which a snapshot name with `_` could spell: `_` is written `+`, which no snapshot
/// name holds, so two snapshots never share an LV. At most 4 + 32 + 1 + 32 + 1 + 40 = 110
/// characters, within LVM's 127.
pub fn snapshot_volume(profile: &str, vm: &str, snapshot: &str) -> String {
    format!(
        "{}.{}",
        clone_volume(profile, vm),
        snapshot.replace('_', "+")
    )
}

/// LVM tag naming the whole-lab snapshot a snapshot volume belongs to.
pub fn snapshot_tag(snapshot: &str) -> String {
    format!("{PREFIX}-snapshot-{snapshot}")
}

/// A snapshot's name is a plain word: it is a directory name and a command-line word, so
/// nothing that could climb out of the directory or need quoting.
pub fn snapshot_name_ok(name: &str) -> bool {
    name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_name_is_a_plain_word() {
        for good in ["provisioned", "before-demo", "take_2", "7"] {
            assert!(snapshot_name_ok(good), "{good}");
        }
        for bad in [
            "",
            "../up",
            "a/b",
            ".hidden",
            "-flag",
            "with space",
            "é",
            &"x".repeat(41),
        ] {
            assert!(!snapshot_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn a_snapshot_volume_is_never_a_clone_s_name_and_spells_no_lvm_suffix() {
        assert_eq!(
            snapshot_volume("demo", "web1", "before-demo"),
            "lab-demo-web1.before-demo"
        );
        assert_eq!(
            snapshot_volume("demo", "web1", "x_tdata"),
            "lab-demo-web1.x+tdata"
        );
        assert_ne!(
            snapshot_volume("demo", "web1", "a_b"),
            snapshot_volume("demo", "web1", "a-b")
        );
        let longest = snapshot_volume(&"p".repeat(32), &"v".repeat(32), &"s".repeat(40));
        assert_eq!(longest.len(), 110);
        assert_eq!(snapshot_tag("take_2"), "lab-snapshot-take_2");
    }

    #[test]
    fn a_domain_uuid_is_stable_per_vm_and_differs_between_vms() {
        let a = domain_uuid("demo", "web1");
        assert_eq!(a, domain_uuid("demo", "web1"));
        assert_ne!(a, domain_uuid("demo", "web2"));
        assert_ne!(a, domain_uuid("other", "web1"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert!("89ab".contains(&a[19..20]), "RFC 9562 variant: {a}");
    }

    #[test]
    fn bridge_names_fit_and_stay_distinct() {
        assert_eq!(bridge("smoke"), "lab-smoke");
        let a = bridge("packstack-aio");
        let b = bridge("packstack-multinode");
        assert!(a.len() <= BRIDGE_MAX && b.len() <= BRIDGE_MAX, "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a, bridge("packstack-aio"));
        let long = bridge("a-very-long-profile-name-indeed-32");
        assert_eq!(long.len(), BRIDGE_MAX, "{long}");
        assert!(long.starts_with("lab-a-very-"), "{long}");
    }

    #[test]
    fn macs_are_stable_and_local() {
        let m = mac("smoke", "node1");
        assert_eq!(m, mac("smoke", "node1"));
        assert_ne!(m, mac("smoke", "node2"));
        assert!(m.starts_with("52:54:00:"));
        assert_eq!(m.len(), 17);
    }

    #[test]
    fn vm_addresses_start_at_ten_and_stay_in_the_subnet() {
        let net: Ipv4Net = "10.213.7.0/24".parse().unwrap();
        assert_eq!(vm_ip(net, 0).unwrap().to_string(), "10.213.7.10");
        assert_eq!(vm_ip(net, 244).unwrap().to_string(), "10.213.7.254");
        assert_eq!(vm_ip(net, 245), None);
        let small: Ipv4Net = "10.213.7.0/28".parse().unwrap();
        assert_eq!(vm_ip(small, 5), None);
    }
}
