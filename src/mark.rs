//! lab's mark: how lab recognises what it made. Every domain and network carries an owner
//! element in its libvirt `<metadata>`, every thin volume LVM tags, every image file a
//! marker file beside it (written first, so whatever an interruption leaves is
//! recognisably lab's). Nothing without the mark is ever touched.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// lab's mark on a resource: which profile (and VM) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

impl Owner {
    pub fn is(&self, profile: &str) -> bool {
        self.profile == profile
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeRole {
    Base,
    Clone,
    /// A kernel or initramfs lab boots VMs with directly (the smoke profile's).
    Boot,
    /// A VM's disk as a whole-lab snapshot froze it (a thin snapshot volume): neither a
    /// clone nor a base, so nothing that plans clones or bases ever takes it for one.
    Snapshot,
}

/// The marker beside an image file that says it is lab's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub owner: Owner,
    pub role: VolumeRole,
}

impl Marker {
    /// The marker beside `image`, when there is one lab can read: a missing or unreadable
    /// marker means the file is not lab's.
    pub fn read(image: &Path) -> Option<Marker> {
        serde_json::from_str(&std::fs::read_to_string(marker_path(image)).ok()?).ok()
    }
}

/// `<image>.lab`: where the marker of an image file lives.
pub fn marker_path(image: &Path) -> PathBuf {
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push(".lab");
    image.with_file_name(name)
}
