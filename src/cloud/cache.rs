//! lab's image cache: each image a profile names by URL is downloaded once, verified, and
//! kept under its checksum, shared by every profile (`lab cache list`, `lab cache rm`).
//!
//! An entry is `KEY.FORMAT` (the image, decompressed when it was published `.xz` or
//! `.zst`) and `KEY.json` (where it came from, when), KEY being the checksum of the file as
//! published (`sha512-HEX`). The record is written last, so an entry without one is not an
//! entry. A download goes to `KEY.part`, which a later run resumes with a Range request and
//! which is never read as an image; a decompression goes to `KEY.FORMAT.tmp`. Each entry has
//! a lock (`.locks/KEY.lock`), held while it is fetched or removed: two labs that want the
//! same image take turns, and the second finds it done.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::checksum::{Checksum, Hasher, find_in_sums};
use super::source::{ImageSource, file_name_of, validate_source};
use crate::lock::{Lock, Wait};
use crate::size::ByteSize;
use crate::ui;

/// The cache: `$LAB_IMAGE_CACHE`, else `/var/cache/lab/images` (what can be fetched again
/// belongs in /var/cache, and every profile shares it).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LAB_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/lab/images"))
}

/// A disk image's format, as `qemu-img -f` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }
}

/// An image ready to import: whole and verified.
#[derive(Debug, Clone)]
pub struct CachedImage {
    /// The checksum it was verified against (of the file as published); None for a local
    /// image the profile gives no checksum for.
    pub checksum: Option<Checksum>,
    /// The image itself: in the cache, or the local file the profile names.
    pub path: PathBuf,
    pub format: ImageFormat,
    /// Whether it was in the cache already (nothing downloaded).
    pub from_cache: bool,
    /// Bytes that came over the network this time (the image's, not the checksum file's).
    pub downloaded_bytes: u64,
}

/// One entry's record, `KEY.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The image's file in the cache directory (`sha512-HEX.qcow2`).
    pub file: String,
    /// The file name as published (`debian-12-generic-amd64.qcow2`).
    pub name: String,
    /// Where it came from: a URL, or the local compressed file it was decompressed from.
    pub source: String,
    /// The checksum of the file as published (`sha512:HEX`).
    pub checksum: String,
    /// The checksum file the checksum was read from, when the profile named one.
    pub checksum_url: Option<String>,
    pub format: ImageFormat,
    /// "xz" or "zstd" when it was published compressed.
    pub compression: Option<String>,
    /// Bytes of the image in the cache.
    pub size: u64,
    /// Bytes of the file as published.
    pub published_size: u64,
    /// When it was fetched, and when a lab last used it (seconds since the epoch).
    pub fetched_at: u64,
    pub last_used: u64,
}

impl Entry {
    /// The record of `image`, just made in the cache from `from` (a URL or a local path).
    #[allow(clippy::too_many_arguments)]
    fn new(
        image: &Path,
        name: &str,
        from: &str,
        checksum: &Checksum,
        source: &ImageSource,
        format: ImageFormat,
        compression: Option<&str>,
        published_size: u64,
    ) -> Entry {
        let now = crate::observe::now_secs();
        Entry {
            file: image
                .file_name()
                .map_or(String::new(), |f| f.to_string_lossy().into_owned()),
            name: name.to_string(),
            source: from.to_string(),
            checksum: checksum.to_string(),
            checksum_url: source.checksum_url.clone(),
            format,
            compression: compression.map(Into::into),
            size: fs::metadata(image).map_or(0, |m| m.len()),
            published_size,
            fetched_at: now,
            last_used: now,
        }
    }

    /// The entry's key (`sha512-HEX`), from its file name.
    pub fn key(&self) -> &str {
        self.file.split_once('.').map_or(&self.file, |(k, _)| k)
    }
}

/// The image `source` names, whole and verified, waiting for the lock of its cache entry
/// when another lab is fetching it.
pub fn ensure(source: &ImageSource, cache: &Path) -> Result<CachedImage> {
    ensure_with(source, cache, Wait::Wait)
}

/// The image `source` names, whole and verified: a URL from the cache (downloaded into it
/// first when it is not there), a local file where it is (decompressed into the cache when
/// it is compressed). `wait` says whether to wait for another lab fetching the same image.
pub fn ensure_with(source: &ImageSource, cache: &Path, wait: Wait) -> Result<CachedImage> {
    validate_source(source).map_err(|e| anyhow!(e))?;
    let name = source.file_name();
    let expected = match (&source.checksum, &source.checksum_url) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(url)) => match checksum_from_file(url, &name) {
            Ok(c) => Some(c),
            Err(e) if e.is::<Unreachable>() => return offline(source, cache, e),
            Err(e) => return Err(e),
        },
        (None, None) => None,
    };
    if source.is_url() {
        let expected = expected.context("a downloaded image needs a checksum")?;
        fetch(source, &name, &expected, cache, wait)
    } else {
        local(source, &name, expected, cache, wait)
    }
}

/// The checksum file cannot be reached (no network at the venue, say): the image this URL
/// and checksum file gave last time, verified when it was downloaded, with a warning; else
/// the error.
fn offline(source: &ImageSource, cache: &Path, unreachable: anyhow::Error) -> Result<CachedImage> {
    let last = entries(cache)?
        .into_iter()
        .filter(|e| e.source == source.location && e.checksum_url == source.checksum_url)
        .max_by_key(|e| e.fetched_at);
    let Some(entry) = last else {
        return Err(unreachable);
    };
    let checksum: Checksum = entry.checksum.parse()?;
    let found = hit(cache, entry.key(), &checksum).context("the cached image vanished")?;
    ui::warn(format_args!(
        "{unreachable:#}; using the image cached from {} (fetched {}, {}), as verified then",
        source.location,
        crate::plan::days_ago(entry.fetched_at, crate::observe::now_secs()),
        checksum.short()
    ));
    Ok(found)
}

/// The network failed before an answer came (as opposed to an answer lab refuses).
#[derive(Debug)]
struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// Every entry of the cache, by name.
pub fn entries(cache: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let dir = match fs::read_dir(cache) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", cache.display())),
    };
    for item in dir.flatten() {
        let path = item.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(entry) = read_entry(&path)
            && cache.join(&entry.file).is_file()
        {
            out.push(entry);
        }
    }
    out.sort_by(|a, b| (&a.name, &a.file).cmp(&(&b.name, &b.file)));
    Ok(out)
}

/// Unfinished downloads and decompressions in the cache (path, bytes): what an interrupted
/// fetch left, resumed by the next one or removed by `lab cache rm --all`.
pub fn unfinished(cache: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(dir) = fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut out: Vec<_> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "part" || e == "tmp"))
        .map(|p| {
            let len = p.metadata().map_or(0, |m| m.len());
            (p, len)
        })
        .collect();
    out.sort();
    out
}

/// Remove the entry `key` (its image, record and unfinished download), once no lab is
/// fetching it. Bases imported from it are copies and stay as they are.
pub fn remove(cache: &Path, key: &str, wait: Wait) -> Result<()> {
    let _lock = entry_lock(cache, key, key, wait)?;
    for path in entry_files(cache, key) {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// Remove every unfinished download and decompression no lab is working on.
pub fn remove_unfinished(cache: &Path, wait: Wait) -> Result<()> {
    for (path, _) in unfinished(cache) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let key = name.split_once('.').map_or(&*name, |(k, _)| k).to_string();
        let _lock = entry_lock(cache, &key, &key, wait)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The lock file of entry `key`.
pub fn lock_path(cache: &Path, key: &str) -> PathBuf {
    cache.join(".locks").join(format!("{key}.lock"))
}

/// Every file that belongs to entry `key`.
fn entry_files(cache: &Path, key: &str) -> Vec<PathBuf> {
    let mut files = vec![cache.join(format!("{key}.json")), part_path(cache, key)];
    for f in [ImageFormat::Qcow2, ImageFormat::Raw] {
        files.push(image_path(cache, key, f));
        files.push(tmp_path(&image_path(cache, key, f)));
    }
    files
}

fn image_path(cache: &Path, key: &str, format: ImageFormat) -> PathBuf {
    cache.join(format!("{key}.{}", format.as_str()))
}

fn part_path(cache: &Path, key: &str) -> PathBuf {
    cache.join(format!("{key}.part"))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

fn read_entry(path: &Path) -> Option<Entry> {
    let text = fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(e) => Some(e),
        Err(e) => {
            ui::warn(format_args!(
                "{}: not an image cache record ({e}); ignored",
                path.display()
            ));
            None
        }
    }
}

/// Write a record whole or not at all: a reader never sees half of one.
fn write_entry(cache: &Path, key: &str, entry: &Entry) -> Result<()> {
    let path = cache.join(format!("{key}.json"));
    let tmp = cache.join(format!("{key}.json.{}.tmp", std::process::id()));
    fs::write(&tmp, serde_json::to_string_pretty(entry)? + "\n")
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// The entry `key` when it is whole (its record and its image), marked as used now.
fn hit(cache: &Path, key: &str, checksum: &Checksum) -> Option<CachedImage> {
    let mut entry = read_entry(&cache.join(format!("{key}.json")))?;
    let path = cache.join(&entry.file);
    if !path.is_file() {
        return None;
    }
    entry.last_used = crate::observe::now_secs();
    // Only the date of last use is lost when the record cannot be written (a read-only
    // cache): the image is still good.
    let _ = write_entry(cache, key, &entry);
    Some(CachedImage {
        checksum: Some(checksum.clone()),
        path,
        format: entry.format,
        from_cache: true,
        downloaded_bytes: 0,
    })
}

/// The lock of entry `key`, named `what` for whoever waits.
fn entry_lock(cache: &Path, key: &str, what: &str, wait: Wait) -> Result<Lock> {
    let command = std::iter::once("lab".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    Lock::acquire_at(
        &lock_path(cache, key),
        &format!("the image cache entry {what}"),
        &command,
        wait,
    )
}

fn create_cache(cache: &Path) -> Result<()> {
    fs::create_dir_all(cache)
        .with_context(|| format!("creating the image cache {}", cache.display()))
}

/// A URL's image: from the cache, else downloaded, verified, decompressed and recorded.
fn fetch(
    source: &ImageSource,
    name: &str,
    expected: &Checksum,
    cache: &Path,
    wait: Wait,
) -> Result<CachedImage> {
    let key = expected.key();
    if let Some(hit) = hit(cache, &key, expected) {
        ui::debug(format_args!("{name}: in the image cache ({key})"));
        return Ok(hit);
    }
    create_cache(cache)?;
    let _lock = entry_lock(cache, &key, &format!("{name} ({})", expected.short()), wait)?;
    // Another lab may have fetched it while this one waited.
    if let Some(hit) = hit(cache, &key, expected) {
        return Ok(hit);
    }
    let url = &source.location;
    let part = part_path(cache, &key);
    let got = download(url, &part, expected)?;
    let (path, format, compression) = settle(&part, cache, &key, url)?;
    let entry = Entry::new(
        &path,
        name,
        url,
        expected,
        source,
        format,
        compression,
        got.total,
    );
    write_entry(cache, &key, &entry)?;
    Ok(CachedImage {
        checksum: Some(expected.clone()),
        path,
        format,
        from_cache: false,
        downloaded_bytes: got.fetched,
    })
}

/// A local image: verified where it is, or (compressed) decompressed into the cache once.
fn local(
    source: &ImageSource,
    name: &str,
    expected: Option<Checksum>,
    cache: &Path,
    wait: Wait,
) -> Result<CachedImage> {
    let path = Path::new(&source.location);
    let head = read_head(path).with_context(|| format!("reading image {}", path.display()))?;
    let content = sniff(&head);
    let what = path.display().to_string();
    if let Content::Compressed(kind) = content {
        let checksum = match expected {
            Some(c) => c,
            // Unnamed by the profile: its own digest keys the entry.
            None => Checksum::sha256_of_file(path)?,
        };
        let key = checksum.key();
        if let Some(hit) = hit(cache, &key, &checksum) {
            return Ok(hit);
        }
        create_cache(cache)?;
        let _lock = entry_lock(cache, &key, name, wait)?;
        if let Some(hit) = hit(cache, &key, &checksum) {
            return Ok(hit);
        }
        let file = File::open(path).with_context(|| format!("opening {what}"))?;
        let published = file.metadata().map_or(0, |m| m.len());
        let (image, format) = decompress(file, kind, Some(&checksum), cache, &key, &what)?;
        let entry = Entry::new(
            &image,
            name,
            &what,
            &checksum,
            source,
            format,
            Some(kind),
            published,
        );
        write_entry(cache, &key, &entry)?;
        return Ok(CachedImage {
            checksum: Some(checksum),
            path: image,
            format,
            from_cache: false,
            downloaded_bytes: 0,
        });
    }
    let format = content.image_format(&what)?;
    if let Some(expected) = &expected {
        let actual = expected.of_file(path)?;
        if &actual != expected {
            bail!(
                "checksum mismatch for {what}: the profile expects {expected}, the file has \
                 {actual}"
            );
        }
    }
    Ok(CachedImage {
        checksum: expected,
        path: path.to_path_buf(),
        format,
        from_cache: false,
        downloaded_bytes: 0,
    })
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Qcow2,
    /// "xz" or "zstd"
    Compressed(&'static str),
    /// gzip, bzip2: compressions lab does not take.
    OtherCompression(&'static str),
    /// Readable text: an error page, a directory listing, a checksum file.
    Text,
    Empty,
    Raw,
}

impl Content {
    /// The image format, or why this is not an image (`what` names it).
    fn image_format(self, what: &str) -> Result<ImageFormat> {
        match self {
            Content::Qcow2 => Ok(ImageFormat::Qcow2),
            Content::Raw => Ok(ImageFormat::Raw),
            Content::Text => bail!(
                "{what} is not a disk image: it is text (an HTML page or a listing?), neither \
                 qcow2 nor a raw disk"
            ),
            Content::Empty => bail!("{what} is not a disk image: it is empty"),
            Content::OtherCompression(kind) => bail!(
                "{what} is {kind}-compressed: lab takes qcow2 and raw images, plain or \
                 compressed with xz or zstd"
            ),
            Content::Compressed(kind) => bail!("{what}: a {kind} stream inside {kind}"),
        }
    }
}

/// How many bytes of a file `sniff` looks at.
const HEAD: usize = 4096;

fn sniff(head: &[u8]) -> Content {
    if head.starts_with(b"QFI\xfb") {
        return Content::Qcow2;
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Content::Compressed("xz");
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Content::Compressed("zstd");
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Content::OtherCompression("gzip");
    }
    if head.starts_with(b"BZh") {
        return Content::OtherCompression("bzip2");
    }
    if head.is_empty() {
        return Content::Empty;
    }
    // A disk's first sector is boot code or zeros; a page is text, whose only invalid
    // UTF-8 may be a character cut at the end of what was read.
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    if text && !head.contains(&0) {
        Content::Text
    } else {
        Content::Raw
    }
}

fn read_head(path: &Path) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(HEAD);
    File::open(path)?.take(HEAD as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// The HTTP client: rustls with the webpki roots, redirects followed, statuses handled by
/// lab (to name them), and a read that stalls for a minute counts as a broken transfer.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(format!("lab/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Why a request failed, for people: "connection refused" rather than an io error kind.
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            "connection refused (is the server up, the port right?)".into()
        }
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::HostNotFound => "host not found (DNS has no address for it)".into(),
        ureq::Error::ConnectionFailed => "could not connect".into(),
        other => other.to_string(),
    }
}

/// "the server answered 404 Not Found"
fn status_error(status: ureq::http::StatusCode) -> String {
    format!(
        "the server answered {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_string()
}

/// The checksum that the checksum file at `url` lists for `name`. Fetched each time (it is
/// small), so a `latest` image that changed is noticed.
fn checksum_from_file(url: &str, name: &str) -> Result<Checksum> {
    let context = || format!("fetching the checksum file {url}");
    let mut resp = agent()
        .get(url)
        .call()
        .map_err(|e| anyhow!(Unreachable(describe(&e))))
        .with_context(context)?;
    if !resp.status().is_success() {
        return Err(anyhow!(status_error(resp.status()))).with_context(context);
    }
    let text = resp
        .body_mut()
        .with_config()
        .limit(4 << 20)
        .read_to_string()
        .map_err(|e| anyhow!(Unreachable(describe(&e))))
        .with_context(context)?;
    find_in_sums(&text, name).map_err(|e| anyhow!("checksum file {url}: {e}"))
}

/// What a download brought.
struct Downloaded {
    /// Bytes of the whole file.
    total: u64,
    /// Bytes that came over the network (less than `total` when a part was resumed).
    fetched: u64,
}

/// How one attempt at a download ended, when not with the whole file.
enum Failure {
    /// The transfer broke off: the part stays, and the next attempt resumes it.
    Broken(anyhow::Error),
    /// Anything else: the part is removed (or was never begun).
    Fatal(anyhow::Error),
}

/// How many times a transfer that broke off is resumed before lab gives up.
const ATTEMPTS: u32 = 3;

/// Download `url` into `part`, resuming what is there, verified against `expected`.
/// Whatever fails leaves no part but one that a later run can resume.
fn download(url: &str, part: &Path, expected: &Checksum) -> Result<Downloaded> {
    let agent = agent();
    let bar = progress_bar(&file_name_of(url));
    let started = Instant::now();
    let mut fetched = 0;
    let mut attempt = 1;
    let mut digest = Digest::new(expected);
    let total = loop {
        match attempt_download(&agent, url, part, &bar, &mut fetched, &mut digest) {
            Ok(total) => break total,
            Err(Failure::Broken(e)) if attempt < ATTEMPTS => {
                ui::warn(format_args!(
                    "{url}: {e:#}; resuming from {}",
                    ByteSize(part.metadata().map_or(0, |m| m.len()))
                ));
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(Failure::Broken(e)) => {
                bar.abandon();
                let kept = ByteSize(part.metadata().map_or(0, |m| m.len()));
                return Err(e.context(format!(
                    "downloading {url}: the transfer broke off {ATTEMPTS} times; {kept} kept in \
                     {}, resumed by the next run",
                    part.display()
                )));
            }
            Err(Failure::Fatal(e)) => {
                bar.abandon();
                let _ = fs::remove_file(part);
                return Err(e.context(format!("downloading {url}")));
            }
        }
    };
    bar.finish_and_clear();
    let actual = digest.hasher.finish();
    if &actual != expected {
        let _ = fs::remove_file(part);
        bail!(
            "downloading {url}: checksum mismatch: expected {expected}, the download has \
             {actual}; it was deleted"
        );
    }
    ui::info(format_args!(
        "downloaded {} ({}) in {:.1} s, checksum verified",
        file_name_of(url),
        ByteSize(fetched),
        started.elapsed().as_secs_f64()
    ));
    Ok(Downloaded { total, fetched })
}

/// The digest of a download's first `len` bytes, computed as they are written.
struct Digest {
    hasher: Hasher,
    len: u64,
    like: Checksum,
}

impl Digest {
    fn new(like: &Checksum) -> Digest {
        Digest {
            hasher: Hasher::like(like),
            len: 0,
            like: like.clone(),
        }
    }

    /// Made to cover the first `offset` bytes of `part` (a part left by an earlier run is
    /// read once; one this run wrote is covered already).
    fn resume_at(&mut self, part: &Path, offset: u64) -> io::Result<()> {
        if self.len == offset {
            return Ok(());
        }
        *self = Digest::new(&self.like.clone());
        let mut file = File::open(part)?.take(offset);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            self.len += n as u64;
        }
        Ok(())
    }
}

/// One request: from where `part` ends (a Range request), or from the start when there is
/// no part or the server does not resume. The whole file's length when it came whole.
fn attempt_download(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    bar: &ProgressBar,
    fetched: &mut u64,
    digest: &mut Digest,
) -> Result<u64, Failure> {
    let fatal = |e: anyhow::Error| Failure::Fatal(e);
    let mut offset = part.metadata().map_or(0, |m| m.len());
    let mut request = agent.get(url);
    if offset > 0 {
        request = request.header("Range", format!("bytes={offset}-"));
    }
    let resp = request.call().map_err(|e| {
        let e = anyhow!(describe(&e));
        // What an earlier attempt got is kept for the next one: the network may come back.
        if offset > 0 {
            Failure::Broken(e)
        } else {
            Failure::Fatal(e)
        }
    })?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let length: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    let total = match status {
        206 if offset > 0 => {
            match header("content-range").as_deref().and_then(content_range) {
                Some((start, total)) if start == offset => total.or(length.map(|l| l + offset)),
                // A range other than the one asked for: start again.
                _ => return restart(part),
            }
        }
        200 => {
            // A server that does not resume sends the whole file: begin again.
            offset = 0;
            length
        }
        // The part is as long as the file, or longer: it cannot be resumed.
        416 if offset > 0 => return restart(part),
        _ => return Err(fatal(anyhow!(status_error(resp.status())))),
    };
    let content_type = header("content-type").unwrap_or_default();
    let mut body = resp.into_body().into_reader();
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(|e| fatal(anyhow!(e).context(format!("opening {}", part.display()))))?;
    file.set_len(offset)
        .and_then(|_| file.seek(SeekFrom::Start(offset)).map(|_| ()))
        .map_err(|e| fatal(anyhow!(e).context(format!("writing {}", part.display()))))?;
    if let (Some(total), Some(dir)) = (total, part.parent()) {
        let needed = total - offset.min(total);
        if let Ok(free) = crate::host::resources::free_bytes(dir)
            && free < needed
        {
            return Err(fatal(disk_full(dir, needed, Some(free))));
        }
    }
    digest
        .resume_at(part, offset)
        .map_err(|e| fatal(anyhow!(e).context(format!("reading {}", part.display()))))?;
    match total {
        Some(t) => bar.set_length(t),
        // No length, no bar to fill or time to foresee: bytes and rate only.
        None => {
            if let Ok(style) =
                ProgressStyle::with_template("{prefix} {spinner} {bytes} {bytes_per_sec}")
            {
                bar.set_style(style);
            }
        }
    }
    bar.set_position(offset);
    let mut buf = vec![0u8; 256 << 10];
    let mut first = offset == 0;
    let mut written = offset;
    loop {
        let n = if first {
            // The first bytes decide whether this is an image at all, before any is kept.
            fill(&mut body, &mut buf[..HEAD])
        } else {
            body.read(&mut buf)
        };
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                let _ = file.sync_all();
                return Err(Failure::Broken(anyhow!(
                    "the transfer broke off after {} of {}: {e}",
                    ByteSize(written),
                    total.map_or("?".into(), |t| ByteSize(t).to_string())
                )));
            }
        };
        if first {
            first = false;
            let content = sniff(&buf[..n]);
            let html = content_type.starts_with("text/html");
            if html || matches!(content, Content::Text | Content::Empty) {
                drop(file);
                let _ = fs::remove_file(part);
                let why = if html {
                    format!("the server sent an HTML page ({content_type})")
                } else if n == 0 {
                    "the server sent nothing".to_string()
                } else {
                    "the server sent text".to_string()
                };
                return Err(fatal(anyhow!(
                    "{url} is not a disk image: {why}, not a qcow2, raw or compressed image"
                )));
            }
            if let Content::OtherCompression(_) = content {
                drop(file);
                let _ = fs::remove_file(part);
                return Err(fatal(content.image_format(url).unwrap_err()));
            }
        }
        if n == 0 {
            break;
        }
        if let Err(e) = file.write_all(&buf[..n]) {
            drop(file);
            let _ = fs::remove_file(part);
            return Err(fatal(write_error(
                e,
                part,
                total.map(|t| t - offset.min(t)),
            )));
        }
        digest.hasher.update(&buf[..n]);
        digest.len += n as u64;
        written += n as u64;
        *fetched += n as u64;
        bar.set_position(written);
    }
    if let Some(total) = total
        && written < total
    {
        return Err(Failure::Broken(anyhow!(
            "the transfer broke off after {} of {}",
            ByteSize(written),
            ByteSize(total)
        )));
    }
    file.sync_all()
        .map_err(|e| fatal(write_error(e, part, None)))?;
    Ok(written)
}

/// Start a download again from its first byte.
fn restart(part: &Path) -> Result<u64, Failure> {
    let _ = fs::remove_file(part);
    Err(Failure::Broken(anyhow!(
        "the server would not resume the download; starting again"
    )))
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`): (START, TOTAL).
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// Read until `buf` is full or the body ends.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn disk_full(dir: &Path, needed: u64, free: Option<u64>) -> anyhow::Error {
    let free = free
        .or_else(|| crate::host::resources::free_bytes(dir).ok())
        .map_or(String::new(), |f| format!(", {} free", ByteSize(f)));
    anyhow!(
        "disk full: {} needs {}{free}; free some space (or set LAB_IMAGE_CACHE to a roomier \
         directory) and run again",
        dir.display(),
        ByteSize(needed)
    )
}

/// A failed write: a full disk says so, anything else names the file.
fn write_error(e: io::Error, path: &Path, needed: Option<u64>) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        let needed = needed.map_or("the image did not fit".into(), |n| {
            format!("the image needs {}", ByteSize(n))
        });
        return anyhow!(
            "disk full writing {}: {needed}; it was removed; free some space (or set \
             LAB_IMAGE_CACHE to a roomier directory) and run again",
            path.display()
        );
    }
    anyhow!(e).context(format!("writing {}", path.display()))
}

/// A verified download made an entry's image: renamed into place, or decompressed.
/// (image, format, compression)
fn settle(
    part: &Path,
    cache: &Path,
    key: &str,
    url: &str,
) -> Result<(PathBuf, ImageFormat, Option<&'static str>)> {
    let head = read_head(part).with_context(|| format!("reading {}", part.display()))?;
    let content = sniff(&head);
    if let Content::Compressed(kind) = content {
        let file = File::open(part).with_context(|| format!("opening {}", part.display()))?;
        let result = decompress(file, kind, None, cache, key, url);
        // The compressed download has served: only the image is kept.
        let _ = fs::remove_file(part);
        let (path, format) = result?;
        return Ok((path, format, Some(kind)));
    }
    let format = match content
        .image_format(url)
        .and_then(|f| standalone(part, f, url).map(|()| f))
    {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_file(part);
            return Err(e);
        }
    };
    let path = image_path(cache, key, format);
    fs::rename(part, &path).with_context(|| format!("renaming {} into place", part.display()))?;
    Ok((path, format, None))
}

/// Whether a downloaded image stands alone. A qcow2 header can name a backing file or an
/// external data file, any path on this host: importing such an image would copy that host
/// file into the base. What a server sends is therefore refused when it names one (`what`
/// names the image).
fn standalone(path: &Path, format: ImageFormat, what: &str) -> Result<()> {
    if format != ImageFormat::Qcow2 {
        return Ok(());
    }
    let out = crate::runner::Cmd::new("qemu-img")
        .args(["info", "--output=json", "-U", "-f", "qcow2"])
        .arg(path)
        .run()
        .with_context(|| format!("{what} is not a readable qcow2 image"))?;
    let info: serde_json::Value =
        serde_json::from_str(&out.stdout).context("parsing qemu-img info output")?;
    let names = |v: &serde_json::Value| v.as_str().map(str::to_string);
    if let Some(backing) = names(&info["backing-filename"]) {
        bail!(
            "{what} is a qcow2 overlay of {backing:?}, not a whole image: refused (importing \
             it would read that file on this host)"
        );
    }
    if let Some(data) = names(&info["format-specific"]["data"]["data-file"]) {
        bail!(
            "{what} keeps its data in an external file {data:?}: refused (importing it would \
             read that file on this host)"
        );
    }
    Ok(())
}

/// A reader that digests what passes through it.
struct Digesting<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Decompress `file` (`kind`: xz or zstd) into the cache entry `key`; checked against
/// `verify` on the way when given (a local file, read once). Holes where the image has
/// zeros, so a raw disk takes no more room than its data. (image, format)
fn decompress(
    file: File,
    kind: &'static str,
    verify: Option<&Checksum>,
    cache: &Path,
    key: &str,
    what: &str,
) -> Result<(PathBuf, ImageFormat)> {
    let mut input = Digesting {
        inner: io::BufReader::with_capacity(1 << 20, file),
        hasher: verify.map_or_else(Hasher::sha256, Hasher::like),
    };
    // The format is known only once decompressed: written under a neutral name first.
    let tmp = cache.join(format!("{key}.img.tmp"));
    let bar = progress_bar(&format!("decompressing {}", file_name_of(what)));
    let result = (|| -> Result<ImageFormat> {
        let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let head = match kind {
            "xz" => copy_sparse(
                &mut liblzma::read::XzDecoder::new_multi_decoder(&mut input),
                out,
                &tmp,
                &bar,
            ),
            _ => copy_sparse(
                &mut zstd::stream::read::Decoder::new(&mut input)
                    .with_context(|| format!("reading {what}"))?,
                out,
                &tmp,
                &bar,
            ),
        }
        .with_context(|| format!("decompressing {what} ({kind})"))?;
        // What follows the compressed stream counts in the checksum too.
        io::copy(&mut input, &mut io::sink()).with_context(|| format!("reading {what}"))?;
        let format = sniff(&head).image_format(&format!("{what} (decompressed)"))?;
        standalone(&tmp, format, what)?;
        Ok(format)
    })();
    bar.finish_and_clear();
    let format = match result {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Some(expected) = verify {
        let actual = std::mem::replace(&mut input.hasher, Hasher::like(expected)).finish();
        if &actual != expected {
            let _ = fs::remove_file(&tmp);
            bail!(
                "checksum mismatch for {what}: the profile expects {expected}, the file has {actual}"
            );
        }
    }
    let path = image_path(cache, key, format);
    fs::rename(&tmp, &path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok((path, format))
}

/// Copy `r` into `out`, seeking over blocks of zeros; the first bytes written, for
/// `sniff`. A full disk is an error that says so.
fn copy_sparse(r: &mut impl Read, out: File, path: &Path, bar: &ProgressBar) -> Result<Vec<u8>> {
    const BLOCK: usize = 64 << 10;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mut buf = vec![0u8; BLOCK];
    let mut head = Vec::new();
    let mut len: u64 = 0;
    loop {
        let n = fill(r, &mut buf)?;
        if n == 0 {
            break;
        }
        if head.len() < HEAD {
            head.extend_from_slice(&buf[..n.min(HEAD - head.len())]);
        }
        let written = if buf[..n].iter().all(|&b| b == 0) {
            w.seek(SeekFrom::Current(n as i64)).map(|_| ())
        } else {
            w.write_all(&buf[..n])
        };
        written.map_err(|e| write_error(e, path, None))?;
        len += n as u64;
        bar.set_position(len);
    }
    let out = w
        .into_inner()
        .map_err(|e| write_error(e.into_error(), path, None))?;
    out.set_len(len)
        .and_then(|_| out.sync_all())
        .map_err(|e| write_error(e, path, None))?;
    Ok(head)
}

/// A bar of bytes, rate and time left on stderr; drawn only on a terminal (indicatif
/// draws nothing elsewhere) and not with -q.
fn progress_bar(what: &str) -> ProgressBar {
    let target = if ui::verbosity() < 0 {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_told_from_pages_by_their_first_bytes() {
        assert_eq!(sniff(b"QFI\xfb\0\0\0\x03"), Content::Qcow2);
        assert_eq!(
            sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Content::Compressed("xz")
        );
        assert_eq!(
            sniff(&[0x28, 0xb5, 0x2f, 0xfd, 1]),
            Content::Compressed("zstd")
        );
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Content::OtherCompression("gzip"));
        assert_eq!(sniff(b"<!DOCTYPE html><html>"), Content::Text);
        assert_eq!(sniff("Index of /images — é".as_bytes()), Content::Text);
        // Cut in the middle of a character, still text.
        assert_eq!(sniff(&"é".as_bytes()[..1]), Content::Text);
        assert_eq!(sniff(&[0u8; 512]), Content::Raw);
        let mut mbr = vec![0xeb, 0x63, 0x90];
        mbr.extend_from_slice(&[0; 509]);
        assert_eq!(sniff(&mbr), Content::Raw);
        assert_eq!(sniff(b""), Content::Empty);
        let e = Content::Text
            .image_format("http://x/y")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("http://x/y is not a disk image"), "{e}");
    }

    #[test]
    fn content_ranges_are_read() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(content_range("items 1-2/3"), None);
    }
}
