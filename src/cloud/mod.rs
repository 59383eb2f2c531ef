//! Cloud images: the download cache (`cache`, `checksum`, `source`), the base made from an
//! image (`base`), and cloud-init seeds (`seed`).

pub mod iso;
pub mod seed;

pub mod base;
pub mod cache;
pub mod checksum;
pub mod source;

pub use cache::{CachedImage, ImageFormat, cache_dir, ensure, ensure_with};
pub use checksum::Checksum;
pub use source::{ImageSource, validate_source};
