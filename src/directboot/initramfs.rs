//! Linux initramfs archives: a builder over an uncompressed cpio "newc" writer.
//!
//! The kernel unpacks an uncompressed newc archive handed to it as an initrd, so the smoke
//! lab and the test guests boot the host's own kernel with a busybox userland lab assembles
//! here. Archives are deterministic: entries are sorted by path, owned by root and carry a
//! fixed mtime, so the same inputs always give the same bytes (and the same content hash).
//!
//! Why the cpio writer is hand-written: newc is one 110-byte ASCII header per entry (~60 lines), and reproducible bytes need full control of inode, mtime and owner.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::runner::Cmd;

/// The mtime of every entry: fixed so archives are reproducible.
pub const MTIME: u32 = 0;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const NEWC_MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// Writes an uncompressed cpio archive in the "newc" (SVR4, no CRC) format that the Linux
/// initramfs unpacker reads: a 110-byte ASCII header, the NUL-terminated name padded to a
/// multiple of 4, the data padded to a multiple of 4, and a `TRAILER!!!` entry at the end.
pub struct NewcWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> NewcWriter<W> {
    pub fn new(out: W) -> Self {
        NewcWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// One entry: `mode` carries the file type bits (S_IFDIR, S_IFREG, S_IFLNK) and the
    /// permissions; a symlink's data is its target.
    pub fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: newc cannot hold a file of 4 GiB or more"),
            )
        })?;
        let nlink = if mode & 0o170000 == S_IFDIR { 2 } else { 1 };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, mode, nlink, size)?;
        self.write_padded(data)
    }

    /// Write the trailer and hand back the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0, 1, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, size: u32) -> io::Result<()> {
        if name.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a cpio entry name cannot contain NUL",
            ));
        }
        let namesize = name.len() as u32 + 1;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check
        let fields = [ino, mode, 0, 0, nlink, MTIME, size, 0, 0, 0, 0, namesize, 0];
        let mut header = Vec::with_capacity(110 + name.len() + 4);
        header.extend_from_slice(NEWC_MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.write_padded(&header)
    }

    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.written += pad as u64;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// A kernel module as `/init` must load it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    /// Module name as the kernel spells it (`dm_thin_pool`).
    pub name: String,
    /// Absolute path of the (uncompressed) `.ko` inside the archive.
    pub path: String,
    /// Pulled in only as a soft dependency (`modules.softdep` "pre:"): `/init` may carry on
    /// when it does not load (crc32c_intel on a CPU without SSE4.2, say), as modprobe does.
    pub optional: bool,
}

/// An initramfs being assembled: a tree of directories, files and symlinks.
///
/// Paths are absolute inside the archive (a leading `/` is optional) and resolved lexically
/// (`a/../b` is `b`). Adding an entry at a path that already holds one replaces it, except
/// for busybox applet links, which never replace what is there. Parent directories are
/// created (mode 0755) when missing.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory with these permission bits (0o755).
    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32) -> &mut Self {
        let path = archive_path(path.as_ref());
        if !path.as_os_str().is_empty() {
            self.entries.insert(
                path,
                Entry::Dir {
                    mode: mode & 0o7777,
                },
            );
        }
        self
    }

    /// A regular file with these contents and permission bits (0o644, 0o755).
    pub fn file(
        &mut self,
        path: impl AsRef<Path>,
        bytes: impl Into<Vec<u8>>,
        mode: u32,
    ) -> &mut Self {
        let path = non_root(path.as_ref());
        self.entries.insert(
            path,
            Entry::File {
                data: bytes.into(),
                mode: mode & 0o7777,
            },
        );
        self
    }

    /// A symbolic link at `path` pointing to `target` (stored as given).
    pub fn symlink(&mut self, path: impl AsRef<Path>, target: impl AsRef<str>) -> &mut Self {
        let path = non_root(path.as_ref());
        self.entries.insert(
            path,
            Entry::Symlink {
                target: target.as_ref().to_string(),
            },
        );
        self
    }

    /// Copy a host file (following symlinks) to `dest`, keeping its permission bits.
    pub fn copy_host_file(
        &mut self,
        host_path: impl AsRef<Path>,
        dest: impl AsRef<Path>,
    ) -> Result<&mut Self> {
        let host_path = host_path.as_ref();
        let data =
            fs::read(host_path).with_context(|| format!("reading {}", host_path.display()))?;
        let mode = file_mode(host_path)?;
        Ok(self.file(dest, data, mode))
    }

    /// Install `/bin/busybox` (with its libraries, should it be dynamically linked) and a
    /// symlink to it for every applet `busybox --list-full` names, where nothing else is.
    pub fn busybox(&mut self, host_busybox: impl AsRef<Path>) -> Result<&mut Self> {
        let host_busybox = host_busybox.as_ref();
        let listing = Cmd::new(host_busybox)
            .arg("--list-full")
            .run()
            .with_context(|| format!("listing the applets of {}", host_busybox.display()))?;
        let libs = shared_libraries(host_busybox)?;
        self.copy_host_file(host_busybox, "/bin/busybox")?;
        for lib in libs {
            self.copy_host_file(&lib, &lib)?;
        }
        for applet in listing
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let path = archive_path(Path::new(applet));
            if path.as_os_str().is_empty() || self.entries.contains_key(&path) {
                continue;
            }
            self.entries.insert(
                path,
                Entry::Symlink {
                    target: "/bin/busybox".to_string(),
                },
            );
        }
        Ok(self)
    }

    /// Copy a host executable to the same path in the archive, plus every shared library
    /// `ldd` says it needs, the ELF interpreter included, each at the path `ldd` printed
    /// (the dynamic loader searches those directories without an `ld.so.cache`).
    pub fn executable_with_libs(&mut self, host_path: impl AsRef<Path>) -> Result<&mut Self> {
        let host_path = host_path.as_ref();
        if !host_path.is_absolute() {
            bail!(
                "{}: an executable needs an absolute path",
                host_path.display()
            );
        }
        let libs = shared_libraries(host_path)?;
        self.copy_host_file(host_path, host_path)?;
        for lib in libs {
            self.copy_host_file(&lib, &lib)?;
        }
        Ok(self)
    }

    /// Copy the named modules (`dm-thin-pool` or `dm_thin_pool`) and everything they depend
    /// on from `modules_dir` (`/lib/modules/<version>`) to the same place in the archive,
    /// and return the order in which to `insmod` them.
    ///
    /// The order is kmod's own answer (`modprobe --show-depends`), so dependencies, aliases
    /// and "pre:" soft dependencies resolve exactly as modprobe resolves them (from the
    /// kernel's indexes only: the host's `/etc/modprobe.d` is not the guest's). A module
    /// that only a soft dependency pulls in (crc32c_intel for ext4's `crypto-crc32c`) is
    /// marked optional. Modules built into the kernel need nothing. `.ko.xz`, `.ko.zst` and
    /// `.ko.gz` are decompressed on the host (with `xz`, `zstd`, `gzip`) and stored as plain
    /// `.ko`, because busybox `insmod` hands the file to `init_module`, which wants it
    /// uncompressed.
    pub fn kernel_modules<S: AsRef<str>>(
        &mut self,
        modules_dir: impl AsRef<Path>,
        names: &[S],
    ) -> Result<Vec<KernelModule>> {
        let modules_dir = modules_dir.as_ref();
        let order = load_order(modules_dir, names)?;
        let dest_dir = Path::new("/lib/modules").join(
            modules_dir
                .file_name()
                .ok_or_else(|| anyhow!("{}: not a modules directory", modules_dir.display()))?,
        );
        let mut loads = Vec::with_capacity(order.len());
        for (rel, optional) in order {
            let name = module_name(&rel);
            let (data, stored_rel) = read_module(&modules_dir.join(&rel), &rel)?;
            let dest = dest_dir.join(&stored_rel);
            self.file(&dest, data, 0o644);
            loads.push(KernelModule {
                name,
                path: format!("/{}", archive_path(&dest).display()),
                optional,
            });
        }
        Ok(loads)
    }

    /// True when the archive holds an entry (of any kind) at this path.
    pub fn contains(&self, path: impl AsRef<Path>) -> bool {
        self.entries.contains_key(&archive_path(path.as_ref()))
    }

    /// The content and permission bits of the file at this path.
    pub fn file_entry(&self, path: impl AsRef<Path>) -> Option<(&[u8], u32)> {
        match self.entries.get(&archive_path(path.as_ref()))? {
            Entry::File { data, mode } => Some((data, *mode)),
            _ => None,
        }
    }

    /// The permission bits of the directory at this path.
    pub fn dir_mode(&self, path: impl AsRef<Path>) -> Option<u32> {
        match self.entries.get(&archive_path(path.as_ref()))? {
            Entry::Dir { mode } => Some(*mode),
            _ => None,
        }
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write(&mut out)?;
        Ok(out)
    }

    /// Write the archive to a file.
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file =
            fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = io::BufWriter::new(file);
        self.write(&mut out)
            .with_context(|| format!("writing initramfs {}", path.display()))?;
        out.flush()
            .with_context(|| format!("writing initramfs {}", path.display()))?;
        Ok(())
    }

    fn write(&self, out: &mut impl Write) -> Result<()> {
        // Missing parents become 0755 directories; a parent that is not a directory is a
        // mistake the kernel would silently turn into a half-unpacked tree.
        let mut implied = BTreeSet::new();
        for path in self.entries.keys() {
            for parent in path.ancestors().skip(1) {
                if parent.as_os_str().is_empty() {
                    break;
                }
                match self.entries.get(parent) {
                    Some(Entry::Dir { .. }) => {}
                    Some(_) => bail!(
                        "{}: its parent {} is not a directory",
                        path.display(),
                        parent.display()
                    ),
                    None => {
                        implied.insert(parent.to_path_buf());
                    }
                }
            }
        }
        let implied_dir = Entry::Dir { mode: 0o755 };
        let mut all: BTreeMap<&Path, &Entry> =
            self.entries.iter().map(|(p, e)| (p.as_path(), e)).collect();
        for path in &implied {
            all.insert(path.as_path(), &implied_dir);
        }
        let mut writer = NewcWriter::new(out);
        for (path, entry) in all {
            let name = path
                .to_str()
                .ok_or_else(|| anyhow!("{}: archive paths must be UTF-8", path.display()))?;
            match entry {
                Entry::Dir { mode } => writer.entry(name, S_IFDIR | mode, &[])?,
                Entry::File { data, mode } => writer.entry(name, S_IFREG | mode, data)?,
                Entry::Symlink { target } => {
                    writer.entry(name, S_IFLNK | 0o777, target.as_bytes())?
                }
            }
        }
        writer.finish()?;
        Ok(())
    }
}

/// The archive form of a path: relative to the root, `.` and `..` resolved lexically.
fn archive_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn non_root(path: &Path) -> PathBuf {
    let resolved = archive_path(path);
    assert!(
        !resolved.as_os_str().is_empty(),
        "{}: only a directory can be the archive root",
        path.display()
    );
    resolved
}

fn file_mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(meta.permissions().mode() & 0o7777)
}

/// The shared libraries (ELF interpreter included) `ldd` lists for a host binary; none for
/// a static one.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Cmd::new("ldd")
        .arg(binary)
        .capture()
        .with_context(|| format!("listing the libraries of {}", binary.display()))?;
    let text = format!("{}{}", out.stdout, out.stderr);
    if !out.success() {
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), text.trim());
    }
    parse_ldd(&out.stdout).with_context(|| format!("libraries of {}", binary.display()))
}

/// Parse `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` lines and the bare
/// interpreter line `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
fn parse_ldd(stdout: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((soname, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} is not found", soname.trim());
                }
                rest.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        // "linux-vdso.so.1 (0x...)" and "libx.so => (0x...)": no file to copy.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Module name the kernel uses for a file: `dm-thin-pool.ko.xz` is `dm_thin_pool`.
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|suffix| base.strip_suffix(suffix))
        .unwrap_or(base);
    normalise_module(stem)
}

fn normalise_module(name: &str) -> String {
    name.replace('-', "_")
}

/// The modules to load for `names`, in kmod's load order, each once: (path relative to
/// `modules_dir`, optional). Optional means only a soft dependency asks for it.
fn load_order<S: AsRef<str>>(modules_dir: &Path, names: &[S]) -> Result<Vec<(String, bool)>> {
    let version = modules_dir
        .file_name()
        .and_then(|v| v.to_str())
        .ok_or_else(|| anyhow!("{}: not a modules directory", modules_dir.display()))?;
    let kmod = Kmod::new(modules_dir, version)?;
    let mut order: Vec<(String, bool)> = Vec::new();
    for name in names {
        let name = name.as_ref();
        let all = kmod.show_depends(&kmod.full, name)?;
        let hard: BTreeSet<String> = kmod
            .show_depends(&kmod.hard, name)?
            .iter()
            .map(|rel| module_name(rel))
            .collect();
        for rel in all {
            let optional = !hard.contains(&module_name(&rel));
            match order.iter_mut().find(|(r, _)| *r == rel) {
                // Needed for real after all: a hard dependency is never optional.
                Some(seen) => seen.1 &= optional,
                None => order.push((rel, optional)),
            }
        }
    }
    Ok(order)
}

/// `modprobe --show-depends` over one kernel's modules directory, wherever it is: modprobe
/// reads `ROOT/lib/modules/VERSION`, so a scratch root links that to the directory. A
/// second root links everything but `modules.softdep`, for the hard dependencies alone.
/// An empty configuration directory keeps the host's `/etc/modprobe.d` out.
struct Kmod {
    modprobe: PathBuf,
    version: String,
    _scratch: tempfile::TempDir,
    config: PathBuf,
    full: PathBuf,
    hard: PathBuf,
}

impl Kmod {
    fn new(modules_dir: &Path, version: &str) -> Result<Self> {
        let modprobe = crate::host::tools::find_program("modprobe")
            .ok_or_else(|| anyhow!("modprobe is not installed: install kmod"))?;
        let modules_dir = modules_dir
            .canonicalize()
            .with_context(|| format!("reading {}", modules_dir.display()))?;
        let scratch = tempfile::Builder::new()
            .prefix("lab-kmod-")
            .tempdir()
            .context("creating a scratch directory")?;
        let config = scratch.path().join("modprobe.d");
        let full = scratch.path().join("full");
        let hard = scratch.path().join("hard");
        let link = |from: &Path, to: &Path| {
            std::os::unix::fs::symlink(from, to)
                .with_context(|| format!("linking {} to {}", to.display(), from.display()))
        };
        fs::create_dir(&config).context("creating a scratch directory")?;
        fs::create_dir_all(full.join("lib/modules")).context("creating a scratch directory")?;
        link(&modules_dir, &full.join("lib/modules").join(version))?;
        let hard_dir = hard.join("lib/modules").join(version);
        fs::create_dir_all(&hard_dir).context("creating a scratch directory")?;
        let entries = fs::read_dir(&modules_dir)
            .with_context(|| format!("reading {}", modules_dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", modules_dir.display()))?;
            if entry.file_name() != "modules.softdep" {
                link(&entry.path(), &hard_dir.join(entry.file_name()))?;
            }
        }
        Ok(Kmod {
            modprobe,
            version: version.to_string(),
            _scratch: scratch,
            config,
            full,
            hard,
        })
    }

    /// What modprobe would `insmod` for `name` under `root`, in order, as paths relative to
    /// the modules directory; nothing for a built-in module.
    fn show_depends(&self, root: &Path, name: &str) -> Result<Vec<String>> {
        let out = Cmd::new(&self.modprobe)
            .arg("--show-depends")
            .arg("--config")
            .arg(&self.config)
            .arg("--dirname")
            .arg(root)
            .arg("--set-version")
            .arg(&self.version)
            .arg(name)
            .run()
            .with_context(|| {
                format!(
                    "kernel module {} is neither in modules.dep nor built in",
                    normalise_module(name)
                )
            })?;
        let prefix = format!("{}/lib/modules/{}/", root.display(), self.version);
        let mut paths = Vec::new();
        for line in out.stdout.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("insmod") => {
                    let path = words.next().unwrap_or_default();
                    let rel = path.strip_prefix(&prefix).ok_or_else(|| {
                        anyhow!("modprobe named {path}, outside {prefix} (for {name})")
                    })?;
                    paths.push(rel.to_string());
                }
                Some("builtin") | None => {}
                // `install` commands come from modprobe.d, which lab does not hand over.
                Some(_) => bail!("modprobe said {line:?} for {name}, not insmod or builtin"),
            }
        }
        Ok(paths)
    }
}

/// Read a module file, decompressing it; returns the bytes and the `.ko` relative path.
fn read_module(file: &Path, rel: &str) -> Result<(Vec<u8>, String)> {
    let decompressor = [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")]
        .into_iter()
        .find(|(suffix, _)| rel.ends_with(suffix));
    let Some((suffix, tool)) = decompressor else {
        let data = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        return Ok((data, rel.to_string()));
    };
    let stored = rel.strip_suffix(suffix).unwrap_or(rel).to_string();
    let scratch = tempfile::Builder::new()
        .prefix("lab-initramfs-")
        .tempdir()
        .context("creating a scratch directory")?;
    let base = Path::new(rel)
        .file_name()
        .ok_or_else(|| anyhow!("{rel}: no file name"))?;
    let packed = scratch.path().join(base);
    let unpacked = scratch
        .path()
        .join(Path::new(&stored).file_name().unwrap_or(base));
    fs::copy(file, &packed).with_context(|| format!("reading {}", file.display()))?;
    // The runner captures output as text, so the tools write files, not stdout.
    let cmd = match tool {
        "zstd" => Cmd::new("zstd")
            .arg("-q")
            .arg("-d")
            .arg(&packed)
            .arg("-o")
            .arg(&unpacked),
        _ => Cmd::new(tool).arg("-d").arg(&packed),
    };
    cmd.run()
        .with_context(|| format!("decompressing kernel module {}", file.display()))?;
    let data = fs::read(&unpacked).with_context(|| format!("reading {}", unpacked.display()))?;
    Ok((data, stored))
}

/// A fake kernel modules directory that kmod reads as a real one, for tests: one tiny ELF
/// object per line of `dep` (`modules.dep` syntax: `kernel/x.ko: kernel/y.ko ...`), each
/// exporting a symbol the modules that depend on it use, carrying its aliases (`alias` lines)
/// and soft dependencies (`softdep` lines) in its `.modinfo`, compressed when its name says
/// so (`.ko.xz`, `.ko.zst`, `.ko.gz`); `builtin` is `modules.builtin`. `depmod` then writes
/// the indexes, as it does for a real kernel. Needs `cc` and kmod's `depmod`.
#[cfg(test)]
pub(crate) fn fake_module_tree(dir: &Path, dep: &str, softdep: &str, alias: &str, builtin: &str) {
    let symbol = |name: &str| format!("lab_fake_{name}");
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in alias.lines() {
        if let ["alias", pattern, module] = line.split_whitespace().collect::<Vec<_>>()[..] {
            aliases
                .entry(normalise_module(module))
                .or_default()
                .push(pattern.to_string());
        }
    }
    let mut softdeps: BTreeMap<String, String> = BTreeMap::new();
    for line in softdep.lines() {
        if let Some(rest) = line.strip_prefix("softdep ")
            && let Some((module, deps)) = rest.split_once(' ')
        {
            softdeps.insert(normalise_module(module), deps.to_string());
        }
    }
    let src = tempfile::tempdir().unwrap();
    for line in dep.lines().filter(|l| !l.trim().is_empty()) {
        let (rel, deps) = line.split_once(':').unwrap();
        let name = module_name(rel);
        let deps: Vec<String> = deps.split_whitespace().map(module_name).collect();
        let mut modinfo = format!("license=GPL\\0name={name}\\0");
        for pattern in aliases.get(&name).into_iter().flatten() {
            modinfo.push_str(&format!("alias={pattern}\\0"));
        }
        if let Some(soft) = softdeps.get(&name) {
            modinfo.push_str(&format!("softdep={soft}\\0"));
        }
        let mut c = String::new();
        for d in &deps {
            c.push_str(&format!("extern void {}(void);\n", symbol(d)));
        }
        c.push_str(&format!("void {}(void) {{\n", symbol(&name)));
        for d in &deps {
            c.push_str(&format!("    {}();\n", symbol(d)));
        }
        c.push_str("}\n");
        c.push_str(&format!(
            "static const char exports[] __attribute__((section(\"__ksymtab_strings\"), used, aligned(1))) = \"{}\";\n",
            symbol(&name)
        ));
        c.push_str(&format!(
            "static const char modinfo[] __attribute__((section(\".modinfo\"), used, aligned(1))) = \"{modinfo}\";\n"
        ));
        let source = src.path().join(format!("{name}.c"));
        fs::write(&source, c).unwrap();
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let compressed = rel.rsplit_once('.').filter(|(_, s)| *s != "ko");
        let object = match compressed {
            Some((plain, _)) => dir.join(plain),
            None => path.clone(),
        };
        Cmd::new("cc")
            .arg("-c")
            .arg("-o")
            .arg(&object)
            .arg(&source)
            .run()
            .unwrap();
        if let Some((_, suffix)) = compressed {
            // xz and gzip replace the file; zstd keeps it unless told.
            let cmd = match suffix {
                "xz" => Cmd::new("xz"),
                "zst" => Cmd::new("zstd").args(["-q", "--rm"]),
                _ => Cmd::new("gzip"),
            };
            cmd.arg(&object).run().unwrap();
            assert!(path.exists());
        }
    }
    fs::write(dir.join("modules.builtin"), builtin).unwrap();
    // depmod reads BASE/lib/modules/VERSION (and wants VERSION to look like one): a
    // scratch base links that to `dir`.
    let version = "0.0.0-lab-fake";
    let base = tempfile::tempdir().unwrap();
    fs::create_dir_all(base.path().join("lib/modules")).unwrap();
    std::os::unix::fs::symlink(
        dir.canonicalize().unwrap(),
        base.path().join("lib/modules").join(version),
    )
    .unwrap();
    let depmod = crate::host::tools::find_program("depmod").expect("kmod's depmod is installed");
    Cmd::new(depmod)
        .arg("-b")
        .arg(base.path())
        .arg(version)
        .run()
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse a newc archive back: (name, mode, data) per entry, trailer excluded.
    fn parse_newc(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut pos = 0usize;
        let field = |at: usize, i: usize| {
            let text = std::str::from_utf8(&bytes[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
            u32::from_str_radix(text, 16).unwrap() as usize
        };
        loop {
            assert_eq!(&bytes[pos..pos + 6], NEWC_MAGIC, "magic at offset {pos}");
            let mode = field(pos, 1) as u32;
            let mtime = field(pos, 5);
            let size = field(pos, 6);
            let namesize = field(pos, 11);
            assert_eq!(mtime, MTIME as usize);
            let name_start = pos + 110;
            let name = std::str::from_utf8(&bytes[name_start..name_start + namesize - 1]).unwrap();
            assert_eq!(
                bytes[name_start + namesize - 1],
                0,
                "name is NUL-terminated"
            );
            let data_start = (name_start + namesize).next_multiple_of(4);
            if name == TRAILER {
                assert_eq!(bytes.len(), (data_start).next_multiple_of(4));
                return entries;
            }
            let data = bytes[data_start..data_start + size].to_vec();
            entries.push((name.to_string(), mode, data));
            pos = (data_start + size).next_multiple_of(4);
        }
    }

    fn sample() -> Initramfs {
        let mut ramfs = Initramfs::new();
        ramfs
            .file("/init", "#!/bin/sh\necho hi\n", 0o755)
            .dir("/proc", 0o555)
            .file("etc/lvm/lvm.conf", "devices {}\n", 0o644)
            .symlink("/bin/sh", "busybox")
            .file("/odd/./a/../b", [0u8, 1, 2, 3, 4], 0o600);
        ramfs
    }

    #[test]
    fn newc_layout_is_what_the_kernel_reads() {
        let bytes = sample().to_bytes().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse_newc(&bytes);
        let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
        // Parents are implied, sorted before their children.
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "etc",
                "etc/lvm",
                "etc/lvm/lvm.conf",
                "init",
                "odd",
                "odd/b",
                "proc"
            ]
        );
        let get = |name: &str| entries.iter().find(|(n, _, _)| n == name).unwrap();
        assert_eq!(get("bin").1, S_IFDIR | 0o755);
        assert_eq!(get("proc").1, S_IFDIR | 0o555);
        assert_eq!(get("init").1, S_IFREG | 0o755);
        assert_eq!(get("init").2, b"#!/bin/sh\necho hi\n");
        assert_eq!(get("bin/sh").1, S_IFLNK | 0o777);
        assert_eq!(get("bin/sh").2, b"busybox");
        assert_eq!(get("odd/b").2, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn same_inputs_give_the_same_bytes_whatever_the_order() {
        let a = sample().to_bytes().unwrap();
        let mut other = Initramfs::new();
        other
            .file("/odd/b", [0u8, 1, 2, 3, 4], 0o600)
            .symlink("/bin/sh", "busybox")
            .file("etc/lvm/lvm.conf", "devices {}\n", 0o644)
            .dir("/proc", 0o555)
            .file("/init", "#!/bin/sh\necho hi\n", 0o755);
        assert_eq!(a, other.to_bytes().unwrap());
        other.file("/init", "#!/bin/sh\necho bye\n", 0o755);
        assert_ne!(a, other.to_bytes().unwrap());
    }

    #[test]
    fn a_file_cannot_be_a_parent() {
        let mut ramfs = Initramfs::new();
        ramfs.file("/bin", "x", 0o644).file("/bin/sh", "y", 0o755);
        let err = ramfs.to_bytes().unwrap_err().to_string();
        assert!(
            err.contains("bin/sh: its parent bin is not a directory"),
            "{err}"
        );
    }

    fn cpio_installed() -> bool {
        Cmd::new("cpio").arg("--version").capture().is_ok()
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_the_archive() {
        if !cpio_installed() {
            // scripts/setup-host.sh installs cpio; the layout test above still checks the
            // format byte by byte without it.
            eprintln!("cpio is not installed: skipping the cross-check with GNU cpio");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("initramfs.cpio");
        sample().write_to(&archive).unwrap();
        let bytes = fs::read(&archive).unwrap();

        let listing = Cmd::new("cpio")
            .arg("-t")
            .stdin(bytes.clone())
            .run()
            .unwrap();
        let listed: Vec<&str> = listing.stdout.lines().collect();
        assert_eq!(
            listed,
            [
                "bin",
                "bin/sh",
                "etc",
                "etc/lvm",
                "etc/lvm/lvm.conf",
                "init",
                "odd",
                "odd/b",
                "proc"
            ]
        );

        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        Cmd::new("cpio")
            .args(["-i", "-d", "--quiet", "-D"])
            .arg(&root)
            .stdin(bytes)
            .run()
            .unwrap();
        assert_eq!(
            fs::read_to_string(root.join("init")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(file_mode(&root.join("init")).unwrap(), 0o755);
        assert_eq!(fs::read(root.join("odd/b")).unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(file_mode(&root.join("odd/b")).unwrap(), 0o600);
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            PathBuf::from("busybox")
        );
        assert!(root.join("proc").is_dir());
    }

    #[test]
    fn ldd_output_gives_libraries_and_interpreter() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd6a1f2000)\n\
                   \tlibudev.so.1 => /lib/x86_64-linux-gnu/libudev.so.1 (0x00007f0e1c9a0000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1c7bf000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1cb2e000)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libudev.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let err = parse_ldd("\tlibfoo.so.3 => not found\n").unwrap_err();
        assert!(
            err.to_string().contains("libfoo.so.3 is not found"),
            "{err}"
        );
    }

    #[test]
    fn a_dynamic_host_executable_brings_its_libraries() {
        let sh = Path::new("/bin/sh");
        let mut ramfs = Initramfs::new();
        ramfs.executable_with_libs(sh).unwrap();
        assert!(ramfs.contains("/bin/sh"));
        let libs = shared_libraries(sh).unwrap();
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "the ELF interpreter is among {libs:?}"
        );
        for lib in &libs {
            assert!(ramfs.contains(lib), "{} is in the archive", lib.display());
        }
        let Some(Entry::File { data, mode }) = ramfs.entries.get(Path::new("bin/sh")) else {
            panic!("bin/sh is a file");
        };
        assert_eq!(data, &fs::read(sh).unwrap());
        assert_eq!(*mode & 0o111, 0o111);
    }

    #[test]
    fn busybox_applets_link_to_busybox_without_replacing_files() {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            eprintln!("busybox is not installed: skipping (scripts/setup-host.sh installs it)");
            return;
        }
        let mut ramfs = Initramfs::new();
        ramfs.file("/sbin/fstrim", "real fstrim", 0o755);
        ramfs.busybox(busybox).unwrap();
        assert!(matches!(
            ramfs.entries.get(Path::new("bin/busybox")),
            Some(Entry::File { .. })
        ));
        let listing = Cmd::new(busybox).arg("--list-full").run().unwrap().stdout;
        let mut links = 0;
        for applet in listing.lines().filter(|l| !l.is_empty()) {
            match ramfs.entries.get(Path::new(applet)) {
                Some(Entry::Symlink { target }) => {
                    assert_eq!(target, "/bin/busybox");
                    links += 1;
                }
                Some(Entry::File { .. }) => {
                    assert!(
                        applet == "sbin/fstrim" || applet == "bin/busybox",
                        "{applet}"
                    )
                }
                other => panic!("{applet}: {other:?}"),
            }
        }
        assert!(links > 100, "{links} applet links");
    }

    /// A fake modules directory shaped like the Debian kernel's dm-thin-pool corner.
    /// `compress_bufio` names the suffix (xz, zst, gz) dm-bufio is compressed with.
    fn fake_modules(dir: &Path, compress_bufio: Option<&str>) {
        let dep = "\
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/persistent-data/dm-persistent-data.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/libcrc32c.ko
kernel/drivers/md/dm-thin-pool.ko: kernel/drivers/md/persistent-data/dm-persistent-data.ko kernel/drivers/md/dm-bio-prison.ko kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/libcrc32c.ko
kernel/drivers/md/dm-bio-prison.ko:
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
";
        let dep = match compress_bufio {
            Some(suffix) => dep.replace("dm-bufio.ko", &format!("dm-bufio.ko.{suffix}")),
            None => dep.to_string(),
        };
        fake_module_tree(
            dir,
            &dep,
            "# comment\nsoftdep libcrc32c pre: crc32c\nsoftdep ext4 pre: crypto-crc32c post: nothing\n",
            "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias crypto-crc32c crc32c_generic\nalias pci:v*d* dm_mod\n",
            "kernel/lib/crc32.ko\n",
        );
    }

    /// (module, what it needs) from the `modules.dep` depmod wrote.
    fn module_deps(dir: &Path) -> Vec<(String, Vec<String>)> {
        fs::read_to_string(dir.join("modules.dep"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, deps)| {
                (
                    module_name(m),
                    deps.split_whitespace().map(module_name).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn modules_load_after_their_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("6.1.0-test");
        fs::create_dir(&modules).unwrap();
        fake_modules(&modules, None);
        let mut ramfs = Initramfs::new();
        let order = ramfs
            .kernel_modules(&modules, &["dm-thin-pool", "crc32", "ext4"])
            .unwrap();
        let names: Vec<(&str, bool)> = order
            .iter()
            .map(|m| (m.name.as_str(), m.optional))
            .collect();
        assert_eq!(
            names,
            // kmod's order: libcrc32c's "pre:" soft dependencies (both modules the alias
            // crc32c names) just before it, each dependency before what needs it.
            [
                ("dm_mod", false),
                ("dm_bufio", false),
                ("crc32c_intel", true),
                ("crc32c_generic", true),
                ("libcrc32c", false),
                ("dm_persistent_data", false),
                ("dm_bio_prison", false),
                ("dm_thin_pool", false),
                ("jbd2", false),
                ("ext4", false),
            ]
        );
        let deps = module_deps(&modules);
        for (i, module) in order.iter().enumerate() {
            let (_, needs) = deps.iter().find(|(m, _)| *m == module.name).unwrap();
            for dep in needs {
                let at = order.iter().position(|m| &m.name == dep).unwrap();
                assert!(at < i, "{dep} loads before {}", module.name);
            }
            assert!(
                ramfs.contains(&module.path),
                "{} is in the archive",
                module.path
            );
        }
        assert_eq!(
            order[7].path,
            "/lib/modules/6.1.0-test/kernel/drivers/md/dm-thin-pool.ko"
        );
        let err = ramfs.kernel_modules(&modules, &["no-such"]).unwrap_err();
        assert!(err.to_string().contains("no_such is neither"), "{err}");
    }

    #[test]
    fn a_soft_dependency_needed_for_real_is_not_optional() {
        let dir = tempfile::tempdir().unwrap();
        fake_modules(dir.path(), None);
        let order = Initramfs::new()
            .kernel_modules(dir.path(), &["libcrc32c", "crc32c_generic"])
            .unwrap();
        let generic = order.iter().find(|m| m.name == "crc32c_generic").unwrap();
        assert!(!generic.optional);
        let intel = order.iter().find(|m| m.name == "crc32c_intel").unwrap();
        assert!(intel.optional);
    }

    #[test]
    fn compressed_modules_are_stored_decompressed() {
        // kmod says which compressions it reads (`+XZ +ZSTD -ZLIB`): a kernel shipping
        // modules in another comes with a kmod that reads it.
        let kmod = Cmd::new("modprobe").arg("--version").run().unwrap().stdout;
        let mut tried = 0;
        for (suffix, tool, feature) in [
            ("xz", "xz", "+XZ"),
            ("zst", "zstd", "+ZSTD"),
            ("gz", "gzip", "+ZLIB"),
        ] {
            if Cmd::new(tool).arg("--version").capture().is_err() {
                eprintln!("{tool} is not installed: not trying .ko.{suffix}");
                continue;
            }
            if !kmod.contains(feature) {
                eprintln!("this kmod does not read .ko.{suffix} ({kmod:?}): not trying it");
                continue;
            }
            tried += 1;
            let dir = tempfile::tempdir().unwrap();
            fake_modules(dir.path(), Some(suffix));
            let mut ramfs = Initramfs::new();
            let order = ramfs.kernel_modules(dir.path(), &["dm_bufio"]).unwrap();
            let bufio = order.iter().find(|m| m.name == "dm_bufio").unwrap();
            assert!(
                bufio.path.ends_with("/kernel/drivers/md/dm-bufio.ko"),
                "{suffix}: {}",
                bufio.path
            );
            let stored = ramfs.entries.get(&archive_path(Path::new(&bufio.path)));
            let Some(Entry::File { data, .. }) = stored else {
                panic!("{} is a file", bufio.path);
            };
            assert!(
                data.starts_with(b"\x7fELF"),
                "{suffix}: stored decompressed"
            );
            let needle = b"name=dm_bufio\0";
            assert!(
                data.windows(needle.len()).any(|w| w == needle),
                "{suffix}: the dm_bufio module"
            );
        }
        // Debian's kmod reads xz and zstd, so at least one format is always exercised.
        assert!(
            tried > 0,
            "none of xz, zstd, gzip is installed and read by kmod"
        );
    }

    #[test]
    fn the_hosts_dm_thin_modules_resolve() {
        let Some(modules) = fs::read_dir("/lib/modules")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("modules.dep").exists())
        else {
            eprintln!("no /lib/modules/*/modules.dep: skipping (linux-image-amd64 provides one)");
            return;
        };
        let order = Initramfs::new()
            .kernel_modules(&modules, &["dm-thin-pool", "virtio_blk"])
            .unwrap();
        let pos = |name: &str| order.iter().position(|m| m.name == name);
        let thin = pos("dm_thin_pool").expect("dm_thin_pool is a module");
        let dm = pos("dm_mod").expect("dm_mod is a module");
        assert!(dm < thin);
        assert!(pos("virtio_blk").is_some());
    }
}
