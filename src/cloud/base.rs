//! A base made from a cloud image: fetched (or found) and verified in the image cache,
//! imported into the profile's storage, sealed, and recorded with what it came from, so a
//! profile that names another image (or another checksum) gets a new base.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cloud::{CachedImage, cache_dir, ensure_with};
use crate::lock::Wait;
use crate::profile::Profile;
use crate::storage::{Storage, Volume};

/// What an image base was made from, kept beside it as its build record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `[base] image` as the profile gave it (a URL, or the local path made absolute).
    pub image: String,
    /// The checksum the image was verified against (`sha512:…`), when it had one.
    pub checksum: Option<String>,
    /// When it was imported (seconds since the epoch).
    pub built_at: u64,
}

impl ImageRecord {
    /// The record of what the profile asks for now (its checksum as written, when it
    /// writes one: with `checksum_url` the checksum is only known by fetching).
    fn wanted(profile: &Profile) -> Option<(String, Option<String>)> {
        let b = &profile.base;
        Some((b.image.clone()?, b.checksum.clone()))
    }
}

/// Fetch or find the profile's image, verified, and import it as the profile's base,
/// sealed and recorded. What was fetched, for the caller's timings. Waits for another lab
/// that is fetching the same image.
pub fn import(storage: &dyn Storage, profile: &Profile) -> Result<(Volume, CachedImage)> {
    import_with(storage, profile, Wait::Wait)
}

/// `import`, waiting for another lab fetching the same image or not (`--no-wait`).
pub fn import_with(
    storage: &dyn Storage,
    profile: &Profile,
    wait: Wait,
) -> Result<(Volume, CachedImage)> {
    let source = profile
        .image_source()
        .with_context(|| format!("profile {} has no [base] image", profile.name))?;
    let cached = ensure_with(&source, &cache_dir(), wait)?;
    let volume =
        storage.import_base_as(&profile.name, &cached.path, Some(cached.format.as_str()))?;
    storage.seal_base(&profile.name)?;
    let record = ImageRecord {
        image: source.location.clone(),
        checksum: cached.checksum.as_ref().map(ToString::to_string),
        built_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    storage.record_base(&volume, &serde_json::to_string(&record)?)?;
    Ok((volume, cached))
}

/// Why the image base of `profile` is to be made again: none sealed, or the profile now
/// names another image or another checksum than the base was made from. None when it is
/// current. Never needs the network.
pub fn rebuild_reason(profile: &Profile, storage: &dyn Storage) -> Result<Option<String>> {
    if storage.base(&profile.name)?.is_none() {
        return Ok(Some("there is no sealed base".into()));
    }
    let Some((image, checksum)) = ImageRecord::wanted(profile) else {
        return Ok(None);
    };
    let Some(text) = storage.base_record(&profile.name)? else {
        return Ok(None);
    };
    let Ok(recorded) = serde_json::from_str::<ImageRecord>(&text) else {
        // A kickstart base's record: the profile moved to an image.
        return Ok(Some("it was not made from an image".into()));
    };
    if recorded.image != image {
        return Ok(Some(format!(
            "the image changed: {} (was {})",
            image, recorded.image
        )));
    }
    if let Some(c) = checksum
        && recorded.checksum.as_deref() != Some(c.as_str())
    {
        return Ok(Some(format!(
            "the checksum changed: {c} (was {})",
            recorded.checksum.as_deref().unwrap_or("none")
        )));
    }
    Ok(None)
}

/// When the image base was imported, from its record.
pub fn built_at(profile: &Profile, storage: &dyn Storage) -> Option<u64> {
    storage
        .base_record(&profile.name)
        .ok()
        .flatten()
        .and_then(|t| serde_json::from_str::<ImageRecord>(&t).ok())
        .map(|r| r.built_at)
}
