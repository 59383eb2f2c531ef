//! An image's checksum: what a profile writes (`sha256:HEX`, `sha512:HEX`), what a
//! distribution's checksum file says (Debian's `SHA512SUMS`, Fedora's `CHECKSUM`), and the
//! streaming digest that checks a download while it is written.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256, Sha512};

/// A digest of a file as published, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checksum {
    Sha256(String),
    Sha512(String),
}

impl Checksum {
    /// "sha256" or "sha512".
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "sha256",
            Checksum::Sha512(_) => "sha512",
        }
    }

    pub fn hex(&self) -> &str {
        match self {
            Checksum::Sha256(h) | Checksum::Sha512(h) => h,
        }
    }

    /// The name of the image cache's entry for this checksum (`sha512-HEX`): one checksum,
    /// one entry, whatever URL it came from.
    pub fn key(&self) -> String {
        format!("{}-{}", self.algorithm(), self.hex())
    }

    /// "sha512:0123abcd…", for tables.
    pub fn short(&self) -> String {
        format!(
            "{}:{}…",
            self.algorithm(),
            &self.hex()[..12.min(self.hex().len())]
        )
    }

    /// A checksum of `hex` (either algorithm, told apart by length).
    fn from_hex(hex: &str) -> Option<Checksum> {
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let hex = hex.to_ascii_lowercase();
        match hex.len() {
            64 => Some(Checksum::Sha256(hex)),
            128 => Some(Checksum::Sha512(hex)),
            _ => None,
        }
    }

    /// The same algorithm's digest of the file at `path`.
    pub fn of_file(&self, path: &Path) -> Result<Checksum> {
        digest_file(Hasher::like(self), path)
    }

    /// The sha256 of the file at `path`.
    pub fn sha256_of_file(path: &Path) -> Result<Checksum> {
        digest_file(Hasher::sha256(), path)
    }
}

fn digest_file(mut hasher: Hasher, path: &Path) -> Result<Checksum> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

impl FromStr for Checksum {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Checksum> {
        let (algo, hex) = s
            .split_once(':')
            .with_context(|| format!("{s:?}: write sha256:HEX or sha512:HEX"))?;
        let algo = algo.to_ascii_lowercase();
        let (want, parsed) = match algo.as_str() {
            "sha256" => (
                64,
                Checksum::from_hex(hex).filter(|c| c.algorithm() == "sha256"),
            ),
            "sha512" => (
                128,
                Checksum::from_hex(hex).filter(|c| c.algorithm() == "sha512"),
            ),
            _ => bail!("{s:?}: lab checks sha256 and sha512 checksums (sha256:HEX or sha512:HEX)"),
        };
        parsed.with_context(|| {
            format!(
                "{algo}:{hex}: a {algo} checksum is {want} hex digits (this is {})",
                hex.len()
            )
        })
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

/// A digest being computed, fed as bytes arrive.
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    /// A digest of the same algorithm as `checksum`.
    pub fn like(checksum: &Checksum) -> Hasher {
        match checksum {
            Checksum::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Checksum::Sha512(_) => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn sha256() -> Hasher {
        Hasher::Sha256(Sha256::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Checksum {
        match self {
            Hasher::Sha256(h) => Checksum::Sha256(format!("{:x}", h.finalize())),
            Hasher::Sha512(h) => Checksum::Sha512(format!("{:x}", h.finalize())),
        }
    }
}

/// The checksum a distribution's checksum file gives for `file_name`. Both forms are read:
/// GNU coreutils' `HEX  NAME` (`HEX *NAME` in binary mode; Debian's `SHA512SUMS`) and BSD's
/// `SHA256 (NAME) = HEX` (Fedora's `CHECKSUM`). Comments and the lines of a PGP clear
/// signature are skipped, so a signed file reads as its checksums. A name is compared
/// without a leading `./` or directory. The error says what the file lists instead.
pub fn find_in_sums(text: &str, file_name: &str) -> std::result::Result<Checksum, String> {
    let mut listed = Vec::new();
    let mut in_signature = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN PGP SIGNATURE") {
            in_signature = true;
        }
        if line.starts_with("-----END PGP SIGNATURE") {
            in_signature = false;
            continue;
        }
        if in_signature || line.is_empty() || line.starts_with('#') || line.starts_with("-----") {
            continue;
        }
        let Some((name, checksum)) = parse_sum_line(line) else {
            continue;
        };
        let name = name.rsplit('/').next().unwrap_or(name);
        if name == file_name {
            return Ok(checksum);
        }
        listed.push(name.to_string());
    }
    if listed.is_empty() {
        return Err("it lists no sha256 or sha512 checksums".into());
    }
    listed.truncate(8);
    Err(format!(
        "it lists no checksum for {file_name} (it lists {})",
        listed.join(", ")
    ))
}

/// One checksum line, GNU or BSD form: (name, checksum).
fn parse_sum_line(line: &str) -> Option<(&str, Checksum)> {
    // BSD: `SHA256 (name) = hex`
    if let Some((algo, rest)) = line.split_once(" (")
        && let Some((name, hex)) = rest.rsplit_once(") = ")
    {
        let checksum = Checksum::from_hex(hex.trim())?;
        return (checksum.algorithm() == algo.to_ascii_lowercase()).then_some((name, checksum));
    }
    // GNU: `hex  name` or `hex *name`
    let (hex, name) = line.split_once(char::is_whitespace)?;
    let name = name.trim_start();
    let name = name.strip_prefix('*').unwrap_or(name);
    Some((name, Checksum::from_hex(hex)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_profile_checksum_is_checked_for_algorithm_and_length() {
        let c: Checksum = format!("sha256:{}", H256.to_uppercase()).parse().unwrap();
        assert_eq!(c, Checksum::Sha256(H256.into()), "stored lowercase");
        assert_eq!(c.to_string(), format!("sha256:{H256}"));
        assert_eq!(c.key(), format!("sha256-{H256}"));
        assert_eq!(format!("SHA256:{H256}").parse::<Checksum>().unwrap(), c);
        let e = "md5:abc".parse::<Checksum>().unwrap_err().to_string();
        assert!(e.contains("sha256 and sha512"), "{e}");
        let e = "sha512:abc".parse::<Checksum>().unwrap_err().to_string();
        assert!(e.contains("128 hex digits (this is 3)"), "{e}");
        let e = format!("sha512:{H256}").parse::<Checksum>().unwrap_err();
        assert!(e.to_string().contains("128 hex digits (this is 64)"));
        assert!("sha256".parse::<Checksum>().is_err());
        assert!(
            format!("sha256:{}g", &H256[1..])
                .parse::<Checksum>()
                .is_err()
        );
    }

    #[test]
    fn the_digest_of_bytes_fed_in_pieces() {
        let mut h = Hasher::sha256();
        h.update(b"te");
        h.update(b"st");
        assert_eq!(h.finish(), Checksum::Sha256(H256.into()));
    }

    #[test]
    fn debian_sha512sums_and_fedora_checksum_files_are_read() {
        let a = "a".repeat(128);
        let b = "b".repeat(128);
        let debian = format!(
            "{a}  debian-12-generic-amd64.json\n{b}  debian-12-generic-amd64.qcow2\n{a}  debian-12-generic-amd64.raw\n"
        );
        assert_eq!(
            find_in_sums(&debian, "debian-12-generic-amd64.qcow2"),
            Ok(Checksum::Sha512(b.clone()))
        );
        let c = "c".repeat(64);
        let fedora = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             # Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2: 491322368 bytes\n\
             SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2) = {c}\n\
             SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.raw.xz) = {}\n\
             -----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n",
            "d".repeat(64)
        );
        assert_eq!(
            find_in_sums(&fedora, "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2"),
            Ok(Checksum::Sha256(c))
        );
        assert_eq!(
            find_in_sums(&format!("{a} *./dir/x.img\n"), "x.img"),
            Ok(Checksum::Sha512(a))
        );
        let e = find_in_sums(&debian, "other.qcow2").unwrap_err();
        assert!(
            e.contains("no checksum for other.qcow2")
                && e.contains("debian-12-generic-amd64.qcow2"),
            "{e}"
        );
        let e = find_in_sums("<html><body>Not Found</body></html>\n", "x").unwrap_err();
        assert!(e.contains("lists no sha256 or sha512"), "{e}");
        // A BSD line whose algorithm does not match its digest's length is not trusted.
        assert!(find_in_sums(&format!("MD5 (x) = {}\n", "e".repeat(64)), "x").is_err());
    }
}
