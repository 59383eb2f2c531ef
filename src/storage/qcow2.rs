//! qcow2 backend: a base image file and one overlay per VM (`-F` always), each with a
//! marker beside it that says it is lab's. "qcow is okay for smaller images"; never
//! snapshot one that is running, and never `commit` into a shared base.
//!
//! A base lab builds (`create_base`) lives in a generation file, `lab-P-base.gN.qcow2`, and
//! `lab-P-base.qcow2` is a symbolic link to the current one. Overlays are made on the
//! generation file itself, so a rebuild, which writes generation N+1 and moves the link
//! only once it is sealed, never changes what an existing overlay reads: running clones
//! keep the old base until they are reset, and an old generation is removed once no
//! overlay is backed by it. An imported base (`import_base`) is a plain file at
//! `lab-P-base.qcow2`, as before.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::{InUse, Storage, Usage, Volume, user_of};
use crate::mark::{Marker, Owner, VolumeRole, marker_path};
use crate::names;
use crate::runner::Cmd;
use crate::size::ByteSize;
use crate::storage::ObservedVolume;

/// lab's directory of unfinished images inside the image directory.
const PARTIAL_DIR: &str = ".lab-partial";

/// Free space kept on the filesystem beyond what a new image needs up front.
const MIN_FREE: u64 = 64 * 1024 * 1024;

pub struct Qcow2Storage {
    dir: PathBuf,
}

/// What lab reads of `qemu-img info --output=json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    pub actual_size: Option<u64>,
    pub backing_filename: Option<String>,
    pub full_backing_filename: Option<String>,
    pub backing_filename_format: Option<String>,
    #[serde(default)]
    pub dirty_flag: bool,
}

pub fn parse_info(json: &str) -> Result<ImageInfo> {
    serde_json::from_str(json).context("parsing qemu-img info output")
}

/// `qemu-img info` of one image.
pub fn info(path: &Path) -> Result<ImageInfo> {
    info_as(path, None)
}

/// `qemu-img info` of one image read as `format` (probed when None).
pub fn info_as(path: &Path, format: Option<&str>) -> Result<ImageInfo> {
    let out = Cmd::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .args(format.map(|f| ["-f", f]).into_iter().flatten())
        .arg(path)
        .run()
        .with_context(|| format!("reading image {}", path.display()))?;
    parse_info(&out.stdout)
}

/// `qemu-img check`: a corrupt or unreadable image is an error naming it.
pub fn check(path: &Path) -> Result<()> {
    Cmd::new("qemu-img")
        .args(["check", "-q", "-f", "qcow2"])
        .arg(path)
        .run()
        .map(|_| ())
        .with_context(|| format!("image {} is damaged or not a qcow2 image", path.display()))
}

impl Qcow2Storage {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Qcow2Storage { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where an image is written before it is renamed into place: lab's own directory of
    /// unfinished files, one name per process, so a killed run's leftover never collides
    /// with the next run and `lab down` can clear it.
    fn partial_path(&self, final_path: &Path) -> Result<PathBuf> {
        let dir = self.dir.join(PARTIAL_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = final_path.file_name().unwrap_or_default().to_string_lossy();
        Ok(dir.join(format!("{name}.{}", std::process::id())))
    }

    /// The directory of unfinished files.
    pub fn partial_dir(&self) -> PathBuf {
        self.dir.join(PARTIAL_DIR)
    }

    /// Unfinished files of `profile` left by interrupted runs (what [`Self::clear_partial`]
    /// removes), sorted: in lab's directory of unfinished files, and clones being written
    /// beside their final name ([`Self::clone_partial_path`]).
    pub fn partial(&self, profile: &str) -> Vec<PathBuf> {
        let prefix = format!("{}-{profile}-", names::PREFIX);
        let hidden = format!(".{prefix}");
        let listed = |dir: PathBuf, keep: &dyn Fn(&str) -> bool| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| keep(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect()
        };
        let mut found = listed(self.dir.join(PARTIAL_DIR), &|n| n.starts_with(&prefix));
        found.extend(listed(self.dir.clone(), &|n| {
            n.starts_with(&hidden) && n.ends_with(".partial")
        }));
        found.sort();
        found
    }

    /// Remove unfinished files of `profile` left by interrupted runs.
    pub fn clear_partial(&self, profile: &str) -> Result<Vec<PathBuf>> {
        let removed = self.partial(profile);
        for p in &removed {
            std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
        }
        let dir = self.dir.join(PARTIAL_DIR);
        if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none()) {
            let _ = std::fs::remove_dir(&dir);
        }
        Ok(removed)
    }

    /// Where a clone is written before it is renamed into place: beside it, hidden, one
    /// name per process. Beside it and not in the directory of unfinished files, because
    /// clones are made in parallel and that directory goes when it is empty.
    fn clone_partial_path(&self, final_path: &Path) -> PathBuf {
        let name = final_path.file_name().unwrap_or_default().to_string_lossy();
        self.dir
            .join(format!(".{name}.{}.partial", std::process::id()))
    }

    fn base_path(&self, profile: &str) -> PathBuf {
        self.dir
            .join(format!("{}.qcow2", names::base_volume(profile)))
    }

    fn clone_path(&self, profile: &str, vm: &str) -> PathBuf {
        self.dir
            .join(format!("{}.qcow2", names::clone_volume(profile, vm)))
    }

    /// `lab-<profile>-base.g<n>.qcow2`: one build of the base. VM names cannot hold a dot,
    /// so no clone is ever named like this.
    fn generation_path(&self, profile: &str, n: u32) -> PathBuf {
        self.dir
            .join(format!("{}.g{n}.qcow2", names::base_volume(profile)))
    }

    /// lab's base generations of `profile`, oldest first.
    pub fn generations(&self, profile: &str) -> Vec<(u32, PathBuf)> {
        let prefix = format!("{}.g", names::base_volume(profile));
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name
                    .strip_prefix(&prefix)?
                    .strip_suffix(".qcow2")?
                    .parse::<u32>()
                    .ok()?;
                let path = e.path();
                Self::is_ours(&path, profile, VolumeRole::Base).then_some((n, path))
            })
            .collect();
        found.sort();
        found
    }

    /// The sidecar holding what a base was built from.
    fn record_path(image: &Path) -> PathBuf {
        let mut name = image.file_name().unwrap_or_default().to_os_string();
        name.push(".build");
        image.with_file_name(name)
    }

    /// Point `lab-<profile>-base.qcow2` at a generation, atomically (a new link renamed over
    /// the old one).
    fn point_base_at(&self, profile: &str, generation: &Path) -> Result<()> {
        let stable = self.base_path(profile);
        let target = generation.file_name().unwrap_or_default();
        let tmp = self.dir.join(format!(
            ".{}.link-{}",
            stable.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)
            .with_context(|| format!("linking {}", tmp.display()))?;
        std::fs::rename(&tmp, &stable).with_context(|| {
            format!("pointing {} at {}", stable.display(), generation.display())
        })?;
        if !Self::is_ours(&stable, profile, VolumeRole::Base) {
            Self::write_marker(&stable, profile, None, VolumeRole::Base)?;
        }
        Ok(())
    }

    /// Remove what an interrupted or failed build of `profile` left: unsealed generations,
    /// an unsealed plain base, and the link when it points at nothing any more.
    fn clear_unfinished(&self, profile: &str) -> Result<()> {
        // A build's temporary files beside a generation (`.lab-P-base.gN.qcow2.compact-PID`,
        // see kickstart::seal), left when it was killed.
        let hidden = format!(".{}.g", names::base_volume(profile));
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&hidden) && name.contains(".qcow2.compact-") {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        for (_, path) in self.generations(profile) {
            if !is_sealed(&path) {
                crate::ui::debug(format_args!(
                    "removing {}: an unsealed base left by an unfinished build",
                    path.display()
                ));
                remove_image(&path)?;
            }
        }
        let stable = self.base_path(profile);
        let is_link = std::fs::symlink_metadata(&stable).is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            if !stable.exists() && Self::is_ours(&stable, profile, VolumeRole::Base) {
                std::fs::remove_file(&stable)
                    .with_context(|| format!("removing {}", stable.display()))?;
                let _ = std::fs::remove_file(marker_path(&stable));
            }
        } else {
            Self::clear_unsealed_base(&stable, profile)?;
        }
        Ok(())
    }

    /// Remove the sealed, no longer current generations of `profile` that no overlay in
    /// this directory is backed by and no running domain holds.
    pub fn prune_generations(&self, profile: &str, in_use: &[InUse]) -> Result<Vec<PathBuf>> {
        let current = self.base_path(profile).canonicalize().ok();
        let old: Vec<PathBuf> = self
            .generations(profile)
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| is_sealed(p) && p.canonicalize().ok() != current)
            .collect();
        if old.is_empty() {
            return Ok(Vec::new());
        }
        let mut backing = std::collections::BTreeSet::new();
        // The images here, and the disk layers of the profile's snapshots (which sit on
        // the base a clone had when they were taken).
        let mut images: Vec<std::fs::DirEntry> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?
            .flatten()
            .collect();
        let snapshots = names::snapshots_dir(&self.dir, profile);
        for snapshot in std::fs::read_dir(&snapshots)
            .into_iter()
            .flatten()
            .flatten()
        {
            images.extend(
                std::fs::read_dir(snapshot.path())
                    .into_iter()
                    .flatten()
                    .flatten(),
            );
        }
        for entry in images {
            let path = entry.path();
            let is_image = path.extension().is_some_and(|e| e == "qcow2")
                && entry.file_type().is_ok_and(|t| t.is_file());
            if !is_image || old.contains(&path) {
                continue;
            }
            if let Ok(i) = info(&path)
                && let Some(b) = i.full_backing_filename.or(i.backing_filename)
            {
                let b = PathBuf::from(b);
                let b = if b.is_relative() { self.dir.join(b) } else { b };
                backing.insert(b.canonicalize().unwrap_or(b));
            }
        }
        let mut removed = Vec::new();
        for path in old {
            let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
            if backing.contains(&canonical) || user_of(&path, in_use).is_some() {
                continue;
            }
            crate::ui::debug(format_args!(
                "removing {}: an old base no clone uses any more",
                path.display()
            ));
            remove_image(&path)?;
            removed.push(path);
        }
        Ok(removed)
    }

    fn write_marker(path: &Path, profile: &str, vm: Option<&str>, role: VolumeRole) -> Result<()> {
        let marker = Marker {
            owner: Owner {
                profile: profile.to_string(),
                vm: vm.map(str::to_string),
            },
            role,
        };
        let mpath = marker_path(path);
        std::fs::write(&mpath, serde_json::to_string_pretty(&marker)? + "\n")
            .with_context(|| format!("writing {}", mpath.display()))
    }

    /// True when `path` carries lab's mark for `profile` in `role`.
    fn is_ours(path: &Path, profile: &str, role: VolumeRole) -> bool {
        Marker::read(path).is_some_and(|m| m.owner.is(profile) && m.role == role)
    }

    fn ensure_dir(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating image directory {}", self.dir.display()))
    }

    fn ensure_space(&self, need: u64, what: &str) -> Result<()> {
        let at = crate::host::resources::nearest_existing(&self.dir);
        let free = crate::host::resources::free_bytes(&at)
            .with_context(|| format!("measuring free space in {}", at.display()))?;
        if free < need + MIN_FREE {
            bail!(
                "{} has {} free; {what} needs {} plus {} headroom: free some space or set [storage] dir",
                at.display(),
                ByteSize(free),
                ByteSize(need),
                ByteSize(MIN_FREE)
            );
        }
        Ok(())
    }

    /// A base of lab's that is still writable was left by an interrupted build: it is
    /// removed so the build can start again. A sealed base, or anyone else's file, stays.
    fn clear_unsealed_base(path: &Path, profile: &str) -> Result<()> {
        let writable = std::fs::metadata(path).is_ok_and(|m| !m.permissions().readonly());
        if writable && Self::is_ours(path, profile, VolumeRole::Base) {
            crate::ui::debug(format_args!(
                "removing {}: an unsealed base left by an interrupted build",
                path.display()
            ));
            std::fs::remove_file(path)
                .with_context(|| format!("removing unfinished base {}", path.display()))?;
        }
        Ok(())
    }

    /// Refuse to write over anything: a path that exists is either lab's (an error the
    /// caller reports) or someone else's (never touched).
    fn refuse_existing(path: &Path) -> Result<()> {
        if path.exists() {
            match Marker::read(path) {
                Some(m) => bail!(
                    "{} already exists (lab's, of profile {})",
                    path.display(),
                    m.owner.profile
                ),
                None => bail!(
                    "{} already exists and is not lab's: lab will not touch it",
                    path.display()
                ),
            }
        }
        Ok(())
    }

    /// Rewrite a VM's overlay without the blocks its guest freed, keeping the backing
    /// file (`convert -B`): compaction that never touches the shared base.
    pub fn compact(&self, profile: &str, vm: &str, in_use: &[InUse]) -> Result<Usage> {
        let path = self.clone_path(profile, vm);
        if !Self::is_ours(&path, profile, VolumeRole::Clone) {
            bail!("{} is not a clone of lab's: not compacted", path.display());
        }
        if let Some(u) = user_of(&path, in_use) {
            bail!(
                "{} is in use by running domain {}: stop it before compacting",
                path.display(),
                u.domain
            );
        }
        // The overlay's own base (an old generation after a rebuild), never the current one.
        let base = info(&path)?
            .full_backing_filename
            .map(PathBuf::from)
            .unwrap_or_else(|| self.base_path(profile));
        let tmp = self.partial_path(&path)?;
        let result = Cmd::new("qemu-img")
            .args(["convert", "-O", "qcow2", "-B"])
            .arg(&base)
            .args(["-F", "qcow2"])
            .arg(&path)
            .arg(&tmp)
            .run();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("compacting {}", path.display()));
        }
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("replacing {} with its compacted copy", path.display()))?;
        self.usage(&Volume {
            name: names::clone_volume(profile, vm),
            path,
            format: "qcow2".into(),
        })
    }
}

impl Storage for Qcow2Storage {
    fn describe(&self) -> String {
        format!("qcow2 in {}", self.dir.display())
    }

    fn observe(&self) -> Result<Vec<ObservedVolume>> {
        images_in(&self.dir)
    }

    fn create_base(&self, profile: &str, size: ByteSize) -> Result<Volume> {
        let stable = self.base_path(profile);
        self.clear_unfinished(profile)?;
        let stable_is_link =
            std::fs::symlink_metadata(&stable).is_ok_and(|m| m.file_type().is_symlink());
        if !stable_is_link {
            // A plain file: an imported base (rebuilt only once removed) or someone else's.
            Self::refuse_existing(&stable)?;
        } else if !Self::is_ours(&stable, profile, VolumeRole::Base) {
            bail!(
                "{} exists and is not lab's: lab will not touch it",
                stable.display()
            );
        }
        let n = self.generations(profile).last().map_or(1, |(n, _)| n + 1);
        let path = self.generation_path(profile, n);
        Self::refuse_existing(&path)?;
        self.ensure_dir()?;
        self.ensure_space(0, &format!("base image {}", path.display()))?;
        // The mark goes first: whatever an interruption leaves behind is recognisably lab's.
        Self::write_marker(&path, profile, None, VolumeRole::Base)?;
        Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg(size.bytes().to_string())
            .run()
            .with_context(|| format!("creating base image {}", path.display()))?;
        if !stable.exists() {
            // A first build: the name shows an unfinished base until it is sealed.
            self.point_base_at(profile, &path)?;
        }
        Ok(volume(names::base_volume(profile), path))
    }

    /// An imported base is a generation too (`lab-P-base.gN.qcow2`, the stable name a link
    /// to it once sealed): when the base is made again (its link removed by hand, say), the
    /// clones made from the old one keep reading the old one, never a new base under the
    /// same name.
    fn import_base_as(&self, profile: &str, image: &Path, format: Option<&str>) -> Result<Volume> {
        let stable = self.base_path(profile);
        self.clear_unfinished(profile)?;
        let stable_is_link =
            std::fs::symlink_metadata(&stable).is_ok_and(|m| m.file_type().is_symlink());
        if !stable_is_link {
            // A plain file: an older lab's imported base (rebuilt only once removed), or
            // someone else's.
            Self::refuse_existing(&stable)?;
        } else if !Self::is_ours(&stable, profile, VolumeRole::Base) {
            bail!(
                "{} exists and is not lab's: lab will not touch it",
                stable.display()
            );
        }
        // A current base stays until the new generation is sealed (a newer image, or
        // another one the profile now names): its clones keep reading it.
        let src = info_as(image, format)?;
        self.ensure_dir()?;
        self.ensure_space(
            src.actual_size.unwrap_or(src.virtual_size),
            &format!("importing {}", image.display()),
        )?;
        let n = self.generations(profile).last().map_or(1, |(n, _)| n + 1);
        let path = self.generation_path(profile, n);
        Self::refuse_existing(&path)?;
        let tmp = self.partial_path(&path)?;
        let result = Cmd::new("qemu-img")
            .args(["convert", "-O", "qcow2", "-f", &src.format])
            .arg(image)
            .arg(&tmp)
            .run();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("importing {}", image.display()));
        }
        Self::write_marker(&path, profile, None, VolumeRole::Base)?;
        std::fs::rename(&tmp, &path)?;
        if !stable.exists() {
            // A first base, or one whose link was removed: the name shows the unfinished
            // base until it is sealed.
            self.point_base_at(profile, &path)?;
        }
        Ok(volume(names::base_volume(profile), stable))
    }

    fn seal_base(&self, profile: &str) -> Result<()> {
        if let Some((_, newest)) = self.generations(profile).last()
            && !is_sealed(newest)
        {
            check(newest)?;
            set_read_only(newest)?;
            // From here on new clones get this build; clones of the old one keep theirs.
            self.point_base_at(profile, newest)?;
            self.prune_generations(profile, &[])?;
            return Ok(());
        }
        let path = self.base_path(profile);
        if !Self::is_ours(&path, profile, VolumeRole::Base) {
            bail!(
                "{} is not lab's base for {profile}: not sealed",
                path.display()
            );
        }
        check(&path)?;
        set_read_only(&path)
    }

    fn discard_unfinished_base(&self, profile: &str) -> Result<()> {
        self.clear_unfinished(profile)
    }

    fn record_base(&self, volume: &Volume, record: &str) -> Result<()> {
        // Beside the generation the name points at, where `base_record` reads it.
        let image = volume
            .path
            .canonicalize()
            .unwrap_or_else(|_| volume.path.clone());
        let path = Self::record_path(&image);
        std::fs::write(&path, record).with_context(|| format!("writing {}", path.display()))
    }

    fn base_record(&self, profile: &str) -> Result<Option<String>> {
        let Some(base) = self.base(profile)? else {
            return Ok(None);
        };
        let image = base.path.canonicalize().unwrap_or(base.path);
        match std::fs::read_to_string(Self::record_path(&image)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("reading the build record of {}", image.display()))
            }
        }
    }

    /// The sealed base; an unsealed one is no base yet.
    fn base(&self, profile: &str) -> Result<Option<Volume>> {
        let path = self.base_path(profile);
        let sealed = std::fs::metadata(&path).is_ok_and(|m| m.permissions().readonly());
        Ok((sealed && Self::is_ours(&path, profile, VolumeRole::Base))
            .then(|| volume(names::base_volume(profile), path)))
    }

    fn clone_volume(&self, profile: &str, vm: &str) -> Result<Option<Volume>> {
        let path = self.clone_path(profile, vm);
        Ok(
            (path.exists() && Self::is_ours(&path, profile, VolumeRole::Clone))
                .then(|| volume(names::clone_volume(profile, vm), path)),
        )
    }

    fn clone_base_sized(
        &self,
        profile: &str,
        vm: &str,
        size: Option<ByteSize>,
        in_use: &[InUse],
    ) -> Result<Volume> {
        let base = self.base_path(profile);
        if !base.exists() {
            bail!(
                "base image {} is missing: build it first (lab up builds it)",
                base.display()
            );
        }
        if !Self::is_ours(&base, profile, VolumeRole::Base) {
            bail!(
                "{} is not lab's base for {profile}: not cloned",
                base.display()
            );
        }
        if self.base(profile)?.is_none() {
            bail!(
                "base image {} is unfinished (not sealed): lab up builds it again",
                base.display()
            );
        }
        if let Some(u) = user_of(&base, in_use) {
            bail!(
                "base image {} is in use by running domain {}: a qcow2 image is never \
                 snapshotted while it runs",
                base.display(),
                u.domain
            );
        }
        check(&base)?;
        let base_size = info(&base)?.virtual_size;
        if let Some(size) = size
            && size.bytes() < base_size
        {
            bail!(
                "{vm}: a disk of {size} is smaller than its base {} ({} virtual): give the VM \
                 {} or more",
                base.display(),
                ByteSize(base_size),
                ByteSize(base_size)
            );
        }
        let path = self.clone_path(profile, vm);
        Self::refuse_existing(&path)?;
        self.ensure_space(0, &format!("clone {}", path.display()))?;
        // The overlay names the generation file, not the link: a rebuild moves the link and
        // this overlay keeps reading the base it was made from.
        let backing = base
            .canonicalize()
            .with_context(|| format!("resolving {}", base.display()))?;
        // The mark goes first: whatever an interruption leaves behind is recognisably lab's.
        Self::write_marker(&path, profile, Some(vm), VolumeRole::Clone)?;
        // Written aside and renamed into place: a `qemu-img` that outlives a killed lab
        // finishes a file of its own, never the clone the next run makes.
        let partial = self.clone_partial_path(&path);
        // Grown at creation (a larger virtual size than the backing file's), so the
        // clone is never seen at the wrong size.
        let created = Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&backing)
            .arg(&partial)
            .args(
                size.filter(|s| s.bytes() > base_size)
                    .map(|s| s.bytes().to_string()),
            )
            .run();
        if let Err(e) = created {
            let _ = std::fs::remove_file(&partial);
            return Err(e).with_context(|| format!("cloning {} for {vm}", base.display()));
        }
        std::fs::rename(&partial, &path)
            .with_context(|| format!("moving {} to {}", partial.display(), path.display()))?;
        Ok(volume(names::clone_volume(profile, vm), path))
    }

    fn remove_clone(&self, profile: &str, vm: &str, in_use: &[InUse]) -> Result<()> {
        let path = self.clone_path(profile, vm);
        if !path.exists() {
            let _ = std::fs::remove_file(marker_path(&path));
            return Ok(());
        }
        if !Self::is_ours(&path, profile, VolumeRole::Clone) {
            bail!("{} is not lab's: left alone", path.display());
        }
        if let Some(u) = user_of(&path, in_use) {
            bail!(
                "{} is in use by running domain {}: stop it first",
                path.display(),
                u.domain
            );
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        let _ = std::fs::remove_file(marker_path(&path));
        // The last clone of an old base lets it go.
        self.prune_generations(profile, in_use)?;
        Ok(())
    }

    fn remove_base(&self, profile: &str) -> Result<()> {
        let path = self.base_path(profile);
        if !path.exists() {
            self.clear_unfinished(profile)?;
            let _ = std::fs::remove_file(marker_path(&path));
            return Ok(());
        }
        if !Self::is_ours(&path, profile, VolumeRole::Base) {
            bail!("{} is not lab's: left alone", path.display());
        }
        let clones: Vec<String> = self
            .observe()?
            .into_iter()
            .filter(|v| {
                v.role == Some(VolumeRole::Clone) && v.owner.as_ref().is_some_and(|o| o.is(profile))
            })
            .map(|v| v.name)
            .collect();
        if !clones.is_empty() {
            bail!(
                "base {} still has clones ({}): remove them first",
                path.display(),
                clones.join(", ")
            );
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        let _ = std::fs::remove_file(marker_path(&path));
        let _ = std::fs::remove_file(Self::record_path(&path));
        for (_, generation) in self.generations(profile) {
            remove_image(&generation)?;
        }
        Ok(())
    }

    fn usage(&self, volume: &Volume) -> Result<Usage> {
        let i = info(&volume.path)?;
        Ok(Usage {
            virtual_size: i.virtual_size,
            allocated: allocated_bytes(&volume.path).unwrap_or(i.actual_size.unwrap_or(0)),
        })
    }
}

/// Bytes the filesystem really holds for a file (its blocks, not its length).
pub fn allocated_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(meta.blocks() * 512)
}

fn is_sealed(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().readonly())
}

fn set_read_only(path: &Path) -> Result<()> {
    let mut perms = std::fs::metadata(path)?.permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(path, perms)
        .with_context(|| format!("making {} read-only", path.display()))
}

/// An image of lab's with its marker and build record.
fn remove_image(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let _ = std::fs::remove_file(marker_path(path));
    let _ = std::fs::remove_file(Qcow2Storage::record_path(path));
    Ok(())
}

fn volume(name: String, path: PathBuf) -> Volume {
    Volume {
        name,
        path,
        format: "qcow2".into(),
    }
}

/// lab's qcow2 images in `dir` (and any other qcow2 image, with no owner): each image lab
/// made has a marker file beside it.
pub fn images_in(dir: &Path) -> Result<Vec<ObservedVolume>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "qcow2") {
            let marker = Marker::read(&path);
            found.push(ObservedVolume {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                location: path.display().to_string(),
                owner: marker.as_ref().map(|m| m.owner.clone()),
                sealed: marker.as_ref().is_none_or(|m| m.role != VolumeRole::Base)
                    || std::fs::metadata(&path).is_ok_and(|m| m.permissions().readonly()),
                role: marker.map(|m| m.role),
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_left_half_written_is_unfinished_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let s = Qcow2Storage::new(dir.path());
        let left = dir.path().join(".lab-demo-web1.qcow2.4242.partial");
        let theirs = dir.path().join(".lab-other-web1.qcow2.4242.partial");
        std::fs::write(&left, b"").unwrap();
        std::fs::write(&theirs, b"").unwrap();
        assert_eq!(s.partial("demo"), vec![left.clone()]);
        assert_eq!(s.clear_partial("demo").unwrap(), vec![left.clone()]);
        assert!(!left.exists());
        assert!(theirs.exists(), "another profile's file is left alone");
    }

    #[test]
    fn info_is_parsed_from_real_output() {
        let text = include_str!("../../tests/fixtures/qemu-img/info-overlay.json");
        let i = parse_info(text).unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 1 << 30);
        assert_eq!(i.backing_filename.as_deref(), Some("base.qcow2"));
        assert_eq!(i.backing_filename_format.as_deref(), Some("qcow2"));
        let base =
            parse_info(include_str!("../../tests/fixtures/qemu-img/info-base.json")).unwrap();
        assert_eq!(base.backing_filename, None);
    }
}
