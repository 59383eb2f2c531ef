//! Where VM disks come from: one interface, two backends. A base image is made once and
//! sealed; each VM gets a clone of it in milliseconds (a thin snapshot, or a qcow2 overlay).

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::mark::{Owner, VolumeRole};
use crate::size::ByteSize;

pub mod fstrim;
pub mod lvm_thin;
pub mod qcow2;

/// A disk lab made, as a domain will see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub name: String,
    /// A file (qcow2) or a block device (`/dev/VG/LV`).
    pub path: PathBuf,
    /// The format libvirt is told: "qcow2" or "raw".
    pub format: String,
}

/// A disk some running domain has open: never cloned from, snapshotted or compacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    pub domain: String,
    pub path: PathBuf,
}

/// Space used on the host by a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub virtual_size: u64,
    /// Bytes the host really holds for it (file allocation, or thin data in use).
    pub allocated: u64,
}

/// The operations `lab up`, `reset`, `down` and `trim` need from storage.
pub trait Storage: Send + Sync {
    /// "qcow2 in DIR" or "thin pool VG/POOL", for messages.
    fn describe(&self) -> String;

    /// Every volume in this storage, lab's (with owner and role) and others.
    fn observe(&self) -> Result<Vec<ObservedVolume>>;

    /// A new, empty base of `size` for `profile`, to be filled by a build and then sealed.
    /// Where a sealed base exists already (a rebuild), a backend whose clones depend on
    /// their base (qcow2) makes the new one beside it, and `seal_base` makes it the one
    /// new clones get: clones of the old base keep it until they are removed.
    fn create_base(&self, profile: &str, size: ByteSize) -> Result<Volume>;

    /// A base made from an existing image (converted, never used in place), its format
    /// probed by qemu-img.
    fn import_base(&self, profile: &str, image: &std::path::Path) -> Result<Volume> {
        self.import_base_as(profile, image, None)
    }

    /// `import_base` of an image whose format (`qcow2`, `raw`) is known: it is passed to
    /// qemu-img rather than probed, so a raw image that happens to begin like another
    /// format is still read as the raw disk it is.
    fn import_base_as(
        &self,
        profile: &str,
        image: &std::path::Path,
        format: Option<&str>,
    ) -> Result<Volume>;

    /// Make the base read-only: from now on only clones change. After a rebuild, the
    /// newly built base becomes the one new clones are made from.
    fn seal_base(&self, profile: &str) -> Result<()>;

    /// Remove a base whose build did not finish (never a sealed one): what a failed or
    /// timed-out build leaves is gone at once. The default suits backends that build in
    /// place (no sealed base exists while a build runs).
    fn discard_unfinished_base(&self, profile: &str) -> Result<()> {
        if self.base(profile)?.is_none() {
            self.remove_base(profile)?;
        }
        Ok(())
    }

    /// Keep `record` (a short JSON text: what the base was built from) with `volume`, the
    /// base being built. Backends that cannot keep one ignore it, and lab then cannot tell
    /// that such a base is out of date.
    fn record_base(&self, volume: &Volume, record: &str) -> Result<()> {
        let _ = (volume, record);
        Ok(())
    }

    /// The record of the sealed base of `profile`, when it has one.
    fn base_record(&self, profile: &str) -> Result<Option<String>> {
        let _ = profile;
        Ok(None)
    }

    /// The base of `profile`, when it exists.
    fn base(&self, profile: &str) -> Result<Option<Volume>>;

    /// A VM's existing clone, when there is one of lab's.
    fn clone_volume(&self, profile: &str, vm: &str) -> Result<Option<Volume>>;

    /// A VM's disk as a clone of the base; refused when the base is in use.
    fn clone_base(&self, profile: &str, vm: &str, in_use: &[InUse]) -> Result<Volume> {
        self.clone_base_sized(profile, vm, None, in_use)
    }

    /// A VM's disk as a clone of the base, `size` large when given (a cloud image of 2 GiB
    /// cloned into a VM disk of 20: the guest grows its filesystem into the rest). A size
    /// below the base's is refused: a clone never cuts its base short. The clone appears
    /// at its size or not at all.
    fn clone_base_sized(
        &self,
        profile: &str,
        vm: &str,
        size: Option<crate::size::ByteSize>,
        in_use: &[InUse],
    ) -> Result<Volume>;

    /// Remove a VM's clone; only ever a volume that carries lab's mark for this profile.
    fn remove_clone(&self, profile: &str, vm: &str, in_use: &[InUse]) -> Result<()>;

    /// Remove the base; only lab's, and never while a clone of it exists.
    fn remove_base(&self, profile: &str) -> Result<()>;

    fn usage(&self, volume: &Volume) -> Result<Usage>;
}

/// The domain holding `path` open, if any.
pub fn user_of<'a>(path: &std::path::Path, in_use: &'a [InUse]) -> Option<&'a InUse> {
    in_use.iter().find(|u| {
        u.path == path
            || (u.path.canonicalize().ok().is_some()
                && u.path.canonicalize().ok() == path.canonicalize().ok())
    })
}

/// A volume lab found in storage: an image file or a thin volume, with its mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedVolume {
    /// LV name or image file name.
    pub name: String,
    pub location: String,
    pub owner: Option<Owner>,
    pub role: Option<VolumeRole>,
    /// A base is sealed (read-only) once its build finished; an unsealed one is the
    /// leftover of an interrupted build. Clones are always "sealed".
    pub sealed: bool,
}
