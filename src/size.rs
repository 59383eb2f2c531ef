//! Sizes as people write them in profiles: "4GiB", "60G", "512 MiB", "1.5T", or a number of
//! bytes. K, M, G and T are binary (as in lvcreate and qemu-img); KB, MB, GB and TB decimal.
//!
//! Why hand-written: these units are a profile contract that follows lvcreate and qemu-img; size crates read "K" as 1000 (bytesize).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn gib(n: u64) -> Self {
        ByteSize(n * GIB)
    }

    pub fn mib(n: u64) -> Self {
        ByteSize(n * MIB)
    }

    pub fn as_mib(self) -> u64 {
        self.0 / MIB
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {0:?}: write a number with a unit, such as \"512MiB\", \"4GiB\" or \"60G\"")]
pub struct SizeError(pub String);

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || SizeError(text.to_string());
        let s = text.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if num.is_empty() {
            return Err(err());
        }
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => KIB,
            "m" | "mib" => MIB,
            "g" | "gib" => GIB,
            "t" | "tib" => TIB,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(err()),
        };
        let value = if num.contains('.') {
            let f: f64 = num.parse().map_err(|_| err())?;
            let bytes = f * factor as f64;
            if !bytes.is_finite() || bytes > u64::MAX as f64 {
                return Err(err());
            }
            bytes.round() as u64
        } else {
            let n: u64 = num.parse().map_err(|_| err())?;
            n.checked_mul(factor).ok_or_else(err)?
        };
        Ok(ByteSize(value))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that shows the size exactly, else one decimal place.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, factor) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if b >= factor {
                return if b.is_multiple_of(factor) {
                    write!(f, "{}{unit}", b / factor)
                } else {
                    write!(f, "{:.1}{unit}", b as f64 / factor as f64)
                };
            }
        }
        write!(f, "{b}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"4GiB\" or \"60G\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_people_write() {
        let cases = [
            ("4GiB", 4 * GIB),
            ("60G", 60 * GIB),
            ("512 MiB", 512 * MIB),
            ("1.5T", 3 * TIB / 2),
            ("10GB", 10_000_000_000),
            ("4096", 4096),
            ("256m", 256 * MIB),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>().unwrap().0, bytes, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for text in [
            "lots",
            "",
            "G",
            "4 parsecs",
            "-1G",
            "1.2.3G",
            "99999999999T",
        ] {
            assert!(text.parse::<ByteSize>().is_err(), "{text}");
        }
    }

    #[test]
    fn displays_exact_binary_units() {
        assert_eq!(ByteSize(16 * GIB).to_string(), "16GiB");
        assert_eq!(ByteSize(1536 * MIB).to_string(), "1.5GiB");
        assert_eq!(ByteSize(100).to_string(), "100B");
    }
}
