//! The `hdparm -t` habit done right: sequential reads that bypass the page cache, bounded
//! to about three seconds, reported in MB/s (10^6 bytes per second, as disk makers count).
//!
//! The block device is read when it can be opened. When it cannot (no privilege, or a
//! hypervisor that refuses even root, as on the development VMs where `/dev/vda` gives
//! EPERM), a scratch file is written in the target's filesystem, synced, and read back with
//! `O_DIRECT`; where `O_DIRECT` is refused the file's pages are dropped with
//! `posix_fadvise(DONTNEED)` instead. The scratch file is removed whatever happens.
//!
//! A scratch read measures the filesystem and everything under it, which is what the lab
//! will get. On a virtual machine a host-side cache can still serve the read back; no guest
//! can see past that.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

/// About what `hdparm -t` spends.
pub const BUDGET: Duration = Duration::from_secs(3);
/// Largest scratch file: enough to get past a disk's own write cache.
pub const MAX_SCRATCH: u64 = 1 << 30;
/// Below this a figure says more about latency than throughput.
const MIN_SCRATCH: u64 = 16 << 20;
const CHUNK: usize = 1 << 20;
/// Logical block sizes are 512 or 4096; page alignment satisfies both.
const ALIGN: usize = 4096;
/// Buffered writes are synced this often so the write phase cannot outrun its time bound
/// by filling the page cache.
const SYNC_EVERY: u64 = 64 << 20;

/// How the figure was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Sequential `O_DIRECT` reads of the block device itself.
    Device,
    /// A scratch file written, synced and read back with `O_DIRECT`.
    ScratchDirect,
    /// A scratch file read back after `posix_fadvise(DONTNEED)`, `O_DIRECT` being refused.
    ScratchFadvise,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Sequential read rate, MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
    pub bytes_read: u64,
    pub read_seconds: f64,
    pub method: Method,
    /// The device or scratch file read.
    pub source: PathBuf,
    /// Why the device was not read, when it was not.
    pub device_error: Option<String>,
    /// Size of the scratch file and the rate it was written at (synced), when one was used.
    pub scratch_bytes: Option<u64>,
    pub write_mb_per_s: Option<f64>,
    /// Whole probe, setup and cleanup included.
    pub probe_seconds: f64,
}

impl Throughput {
    /// `"412 MB/s sequential read of a 1 GiB scratch file in /tmp/x (O_DIRECT)"`.
    pub fn describe(&self) -> String {
        let what = match self.method {
            Method::Device => format!("sequential read of {} (O_DIRECT)", self.source.display()),
            Method::ScratchDirect | Method::ScratchFadvise => {
                let dir = self
                    .source
                    .parent()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default();
                let size = crate::size::ByteSize(self.scratch_bytes.unwrap_or(0));
                let how = if self.method == Method::ScratchDirect {
                    "O_DIRECT".to_string()
                } else {
                    "O_DIRECT refused, page cache dropped with posix_fadvise".to_string()
                };
                format!("sequential read of a {size} scratch file in {dir} ({how})")
            }
        };
        format!(
            "{:.0} MB/s {what}, {} in {:.1}s",
            self.mb_per_s,
            crate::host::blockdev::human_decimal(self.bytes_read),
            self.read_seconds
        )
    }
}

/// Measure: the device when given and readable, else a scratch file in `scratch_dir`.
pub fn probe(
    device: Option<&Path>,
    scratch_dir: Option<&Path>,
    budget: Duration,
) -> anyhow::Result<Throughput> {
    let started = Instant::now();
    let mut device_error = None;
    if let Some(dev) = device {
        match read_device(dev, budget) {
            Ok((bytes, elapsed)) => {
                return Ok(Throughput {
                    mb_per_s: rate(bytes, elapsed),
                    bytes_read: bytes,
                    read_seconds: elapsed.as_secs_f64(),
                    method: Method::Device,
                    source: dev.to_path_buf(),
                    device_error: None,
                    scratch_bytes: None,
                    write_mb_per_s: None,
                    probe_seconds: started.elapsed().as_secs_f64(),
                });
            }
            Err(e) => {
                device_error = Some(format!(
                    "{} could not be read: {}",
                    dev.display(),
                    plain_io(&e)
                ))
            }
        }
    }
    let Some(dir) = scratch_dir else {
        bail!(
            "{}, and there is no filesystem to hold a scratch file",
            device_error.unwrap_or_else(|| "no device to read".to_string())
        );
    };
    let mut result = scratch(dir, budget, true)?;
    result.device_error = device_error;
    result.probe_seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// `Operation not permitted` rather than `Operation not permitted (os error 1)`.
fn plain_io(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64().max(1e-6);
    bytes as f64 / secs / 1e6
}

/// A 1 MiB buffer at a 4 KiB boundary, as `O_DIRECT` requires, in safe Rust: over-allocate
/// and slice.
struct AlignedBuf {
    raw: Vec<u8>,
    offset: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        let raw = vec![0u8; CHUNK + ALIGN];
        let offset = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, offset }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.offset..self.offset + CHUNK]
    }

    fn as_ref(&self) -> &[u8] {
        &self.raw[self.offset..self.offset + CHUNK]
    }

    /// Incompressible, so a disk or host that compresses or deduplicates zeros cannot
    /// flatter the figure. Filled once; [`AlignedBuf::stamp`] makes each chunk differ.
    fn fill_pattern(&mut self, seed: u64) {
        let mut x = seed | 1;
        for word in self.as_mut().chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
    }

    /// Write the chunk's number into the head of every 4 KiB block, so no two blocks of
    /// the scratch file are alike and block-level deduplication has nothing to fold.
    fn stamp(&mut self, chunk: u64) {
        for (i, block) in self.as_mut().chunks_exact_mut(ALIGN).enumerate() {
            block[..8].copy_from_slice(&chunk.to_le_bytes());
            block[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        }
    }
}

fn read_device(dev: &Path, budget: Duration) -> io::Result<(u64, Duration)> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let (bytes, elapsed) = read_sequential(&mut file, u64::MAX, budget)?;
    if bytes == 0 {
        return Err(io::Error::other("nothing could be read"));
    }
    Ok((bytes, elapsed))
}

/// Read from the start until `limit` bytes, the end, or `budget`.
fn read_sequential(file: &mut File, limit: u64, budget: Duration) -> io::Result<(u64, Duration)> {
    let mut buf = AlignedBuf::new();
    let started = Instant::now();
    let mut total = 0u64;
    while total < limit {
        let n = match file.read(buf.as_mut()) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        if started.elapsed() >= budget {
            break;
        }
    }
    Ok((total, started.elapsed()))
}

/// Bytes an unprivileged user may still write in the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c is a valid NUL-terminated path and st points to writable memory of the
    // right type; statvfs fills it completely on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so st is initialised.
    let st = unsafe { st.assume_init() };
    // fsblkcnt_t and c_ulong are 32 bits on some targets.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Removes the scratch file when the probe ends, however it ends.
struct ScratchFile(PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The scratch file's size: up to [`MAX_SCRATCH`], never more than a quarter of the free
/// space, whole chunks.
pub fn scratch_size(available: u64) -> Option<u64> {
    let size = (available / 4).min(MAX_SCRATCH) / CHUNK as u64 * CHUNK as u64;
    (size >= MIN_SCRATCH).then_some(size)
}

fn drop_cache(file: &File) {
    // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// `try_direct` false takes the path of a filesystem that refuses `O_DIRECT`.
fn scratch(dir: &Path, budget: Duration, try_direct: bool) -> anyhow::Result<Throughput> {
    let available =
        available_bytes(dir).with_context(|| format!("reading free space of {}", dir.display()))?;
    let Some(size) = scratch_size(available) else {
        bail!(
            "only {} free in {}: too little for a scratch file",
            crate::size::ByteSize(available),
            dir.display()
        );
    };
    let path = dir.join(format!(".lab-throughput-{}.tmp", std::process::id()));
    let create = |direct: bool| {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true).mode(0o600);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        opts.open(&path)
    };
    let first = if try_direct {
        create(true)
    } else {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (mut file, direct) = match first {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = create(false)
                .with_context(|| format!("creating scratch file {}", path.display()))?;
            (f, false)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(
                anyhow::Error::new(e).context(format!("creating scratch file {}", path.display()))
            );
        }
    };
    let _guard = ScratchFile(path.clone());

    // Writes are usually the slower half: they get two thirds of the budget.
    let write_budget = budget * 2 / 3;
    let mut buf = AlignedBuf::new();
    buf.fill_pattern(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
    let started = Instant::now();
    let mut written = 0u64;
    let mut since_sync = 0u64;
    while written < size && started.elapsed() < write_budget {
        buf.stamp(written / CHUNK as u64);
        file.write_all(buf.as_ref())
            .with_context(|| format!("writing scratch file {}", path.display()))?;
        written += CHUNK as u64;
        since_sync += CHUNK as u64;
        if !direct && since_sync >= SYNC_EVERY {
            file.sync_data()
                .with_context(|| format!("syncing scratch file {}", path.display()))?;
            since_sync = 0;
        }
    }
    file.sync_all()
        .with_context(|| format!("syncing scratch file {}", path.display()))?;
    let write_elapsed = started.elapsed();
    if !direct {
        drop_cache(&file);
    }
    drop(file);

    let mut opts = OpenOptions::new();
    opts.read(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let mut reader = opts
        .open(&path)
        .with_context(|| format!("reopening scratch file {}", path.display()))?;
    if !direct {
        drop_cache(&reader);
    }
    let read_budget = budget.saturating_sub(write_elapsed).max(budget / 4);
    let (bytes, elapsed) = read_sequential(&mut reader, written, read_budget)
        .with_context(|| format!("reading back scratch file {}", path.display()))?;
    if bytes == 0 {
        bail!("reading back scratch file {} gave no data", path.display());
    }
    Ok(Throughput {
        mb_per_s: rate(bytes, elapsed),
        bytes_read: bytes,
        read_seconds: elapsed.as_secs_f64(),
        method: if direct {
            Method::ScratchDirect
        } else {
            Method::ScratchFadvise
        },
        source: path,
        device_error: None,
        scratch_bytes: Some(written),
        write_mb_per_s: Some(rate(written, write_elapsed)),
        probe_seconds: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_size_is_bounded_by_free_space_and_a_gib() {
        assert_eq!(scratch_size(100 << 30), Some(MAX_SCRATCH));
        assert_eq!(scratch_size(400 << 20), Some(100 << 20));
        assert_eq!(scratch_size(10 << 20), None);
        assert_eq!(
            scratch_size((401 << 20) + 5).map(|s| s % CHUNK as u64),
            Some(0)
        );
    }

    #[test]
    fn aligned_buffer_is_aligned() {
        let mut buf = AlignedBuf::new();
        assert_eq!(buf.as_mut().as_ptr() as usize % ALIGN, 0);
        assert_eq!(buf.as_ref().len(), CHUNK);
        buf.fill_pattern(7);
        assert!(buf.as_ref().iter().any(|&b| b != 0));
    }

    #[test]
    fn an_unreadable_device_falls_back_to_a_scratch_file_which_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-disk");
        let t = probe(Some(&missing), Some(dir.path()), Duration::from_millis(400)).unwrap();
        assert!(t.mb_per_s > 0.0, "{t:?}");
        assert!(matches!(
            t.method,
            Method::ScratchDirect | Method::ScratchFadvise
        ));
        assert!(
            t.device_error.as_deref().unwrap().contains("No such file"),
            "{t:?}"
        );
        assert!(t.bytes_read > 0 && t.bytes_read <= t.scratch_bytes.unwrap());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "scratch file left behind: {left:?}");
        assert!(
            t.describe().contains("MB/s sequential read of a"),
            "{}",
            t.describe()
        );
    }

    #[test]
    fn without_o_direct_the_cache_is_dropped_and_the_method_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let t = scratch(dir.path(), Duration::from_millis(300), false).unwrap();
        assert_eq!(t.method, Method::ScratchFadvise);
        assert!(t.mb_per_s > 0.0);
        assert!(t.describe().contains("posix_fadvise"), "{}", t.describe());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn no_device_and_no_directory_is_an_error_not_a_panic() {
        let err = probe(Some(Path::new("/no/such/dev")), None, BUDGET).unwrap_err();
        assert!(err.to_string().contains("could not be read"), "{err}");
    }

    #[test]
    fn an_unwritable_directory_is_an_error() {
        let err = probe(None, Some(Path::new("/no/such/dir")), BUDGET).unwrap_err();
        assert!(format!("{err:#}").contains("/no/such/dir"), "{err:#}");
    }
}
