//! Cloud images: the download cache (`cache`, `checksum`, `source`), the base made from an
//! image (`base`), and cloud-init seeds (`seed`).

pub mod seed {
    pub fn write_seed(
        _path: &std::path::Path,
        _lab: &crate::guest::identity::LabIdentity,
        _vm: &crate::guest::identity::VmIdentity,
        _base_user_data: Option<&str>,
        _vm_user_data: Option<&str>,
        _user: &str,
    ) -> anyhow::Result<()> {
        Ok(())
    }
    pub fn seed_path(dir: &std::path::Path, domain: &str) -> std::path::PathBuf {
        dir.join(format!("{domain}.seed.iso"))
    }
    pub fn check_user_data(_text: &str) -> Result<(), String> {
        Ok(())
    }
}

pub mod base;
pub mod cache;
pub mod checksum;
pub mod source;

pub use cache::{CachedImage, ImageFormat, cache_dir, ensure, ensure_with};
pub use checksum::Checksum;
pub use source::{ImageSource, validate_source};
