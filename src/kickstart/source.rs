//! Install sources: a local installer ISO, or an install tree (`.treeinfo` plus
//! `images/pxeboot/`) at a file://, http:// or https:// URL. lab takes the installer's kernel
//! and initrd from it and tells the installer where the rest is.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};

use crate::error::usage;
use crate::runner::Cmd;

/// Where the installer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallSource {
    /// A local ISO, attached to the installer as a CD-ROM (`cdrom` in the kickstart).
    Iso(PathBuf),
    /// An install tree on this host: read locally, served to the installer over HTTP.
    LocalTree { url: String, dir: PathBuf },
    /// An install tree on a web server, which the installer reaches itself (`url`).
    RemoteTree(String),
}

/// The installer's kernel and initrd, fetched into a scratch directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImages {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Where the pxeboot images are when `.treeinfo` does not say.
pub const KERNEL_PATH: &str = "images/pxeboot/vmlinuz";
pub const INITRD_PATH: &str = "images/pxeboot/initrd.img";

impl fmt::Display for InstallSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallSource::Iso(p) => write!(f, "{}", p.display()),
            InstallSource::LocalTree { url, .. } => f.write_str(url),
            InstallSource::RemoteTree(url) => f.write_str(url),
        }
    }
}

impl InstallSource {
    /// An install source as a profile gives it: a URL (file, http, https) or an ISO path.
    pub fn parse(text: &str) -> Result<InstallSource> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(InstallSource::Iso(PathBuf::from(text)));
        };
        let url = if text.ends_with('/') {
            text.to_string()
        } else {
            format!("{text}/")
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let path = percent_decode_str(rest.strip_prefix("localhost").unwrap_or(rest))
                    .decode_utf8_lossy()
                    .into_owned();
                if !path.starts_with('/') {
                    return Err(usage(format!(
                        "install tree {text}: a file:// URL needs an absolute path (file:///srv/tree/)"
                    )));
                }
                Ok(InstallSource::LocalTree {
                    url,
                    dir: PathBuf::from(path),
                })
            }
            "http" | "https" => Ok(InstallSource::RemoteTree(url)),
            other => Err(usage(format!(
                "install source {text}: lab reads install trees over file://, http:// and \
                 https://, not {other}://"
            ))),
        }
    }

    /// The kickstart installation method: `cdrom` for an ISO, `url` for a tree.
    pub fn method(&self) -> &'static str {
        match self {
            InstallSource::Iso(_) => "cdrom",
            _ => "url",
        }
    }

    /// The URL the kickstart names with `url --url`: only a tree the installer reaches by
    /// itself. A tree on this host is served on a port chosen at build time and named with
    /// `inst.repo=` on the kernel command line, so the kickstart (and its hash) does not
    /// change from one build to the next.
    pub fn installer_url(&self) -> Option<String> {
        match self {
            InstallSource::RemoteTree(url) => Some(url.clone()),
            _ => None,
        }
    }

    /// What identifies this source's content without downloading it, for the build
    /// record: the ISO by path, size and modification time; a local tree by its
    /// `.treeinfo`; a remote tree by its URL (`lab up` must not need the network to know
    /// that its base is current).
    pub fn identity(&self) -> Result<String> {
        match self {
            InstallSource::Iso(path) => {
                use std::os::unix::fs::MetadataExt;
                let meta = std::fs::metadata(path)
                    .map_err(|e| usage(format!("install ISO {}: {e}", path.display())))?;
                Ok(format!(
                    "iso {} size={} mtime={}",
                    path.display(),
                    meta.size(),
                    meta.mtime()
                ))
            }
            InstallSource::LocalTree { url, dir } => {
                let treeinfo = read_local_treeinfo(url, dir)?;
                Ok(format!(
                    "tree {url} treeinfo-sha256={:x}",
                    Sha256::digest(treeinfo.as_bytes())
                ))
            }
            InstallSource::RemoteTree(url) => Ok(format!("tree {url}")),
        }
    }

    /// Refuse a source that cannot be used, before anything is made.
    pub fn check(&self) -> Result<()> {
        match self {
            InstallSource::Iso(path) if !path.is_file() => Err(usage(format!(
                "install ISO {} does not exist",
                path.display()
            ))),
            InstallSource::LocalTree { url, dir } => read_local_treeinfo(url, dir).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Copy the installer's kernel and initrd into `dest`.
    pub fn fetch_boot_images(&self, dest: &Path) -> Result<BootImages> {
        let kernel = dest.join("vmlinuz");
        let initrd = dest.join("initrd.img");
        match self {
            InstallSource::Iso(iso) => {
                self.check()?;
                for (inside, to) in [(KERNEL_PATH, &kernel), (INITRD_PATH, &initrd)] {
                    extract_from_iso(iso, inside, to)?;
                }
            }
            InstallSource::LocalTree { url, dir } => {
                let treeinfo = read_local_treeinfo(url, dir)?;
                let (k, i) = boot_paths(&treeinfo);
                for (rel, to) in [(k, &kernel), (i, &initrd)] {
                    let from = dir.join(&rel);
                    std::fs::copy(&from, to).with_context(|| {
                        format!(
                            "copying {} from install tree {url} ({})",
                            rel,
                            from.display()
                        )
                    })?;
                }
            }
            InstallSource::RemoteTree(url) => {
                let treeinfo_file = dest.join(".treeinfo");
                download(&format!("{url}.treeinfo"), &treeinfo_file).map_err(|e| {
                    anyhow::anyhow!(
                        "{url} is not an install tree: no .treeinfo there ({e:#}); give the \
                         directory that holds .treeinfo and images/pxeboot/"
                    )
                })?;
                let treeinfo = std::fs::read_to_string(&treeinfo_file)
                    .with_context(|| format!("reading {}", treeinfo_file.display()))?;
                let (k, i) = boot_paths(&treeinfo);
                for (rel, to) in [(k, &kernel), (i, &initrd)] {
                    download(&format!("{url}{rel}"), to)
                        .with_context(|| format!("fetching {rel} from install tree {url}"))?;
                }
            }
        }
        Ok(BootImages { kernel, initrd })
    }
}

/// `.treeinfo` of a tree on this host; its absence is the error that says this is no tree.
fn read_local_treeinfo(url: &str, dir: &Path) -> Result<String> {
    let path = dir.join(".treeinfo");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(usage(format!(
            "{url} is not an install tree: {} does not exist (a tree has .treeinfo and \
             images/pxeboot/)",
            path.display()
        ))),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The kernel and initrd `.treeinfo` names for x86_64 (`[images-x86_64]`), else the
/// pxeboot defaults. Paths are relative to the tree and never leave it.
pub fn boot_paths(treeinfo: &str) -> (String, String) {
    let mut section = String::new();
    let (mut kernel, mut initrd) = (None, None);
    for line in treeinfo.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if section != "images-x86_64" {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().trim_start_matches('/').to_string();
            if value.split('/').any(|c| c == "..") || value.is_empty() {
                continue;
            }
            match key.trim() {
                "kernel" => kernel = Some(value),
                "initrd" => initrd = Some(value),
                _ => {}
            }
        }
    }
    (
        kernel.unwrap_or_else(|| KERNEL_PATH.into()),
        initrd.unwrap_or_else(|| INITRD_PATH.into()),
    )
}

/// One file out of an ISO 9660 image, read by lab itself: no mount (the kernel may lack
/// iso9660, and mounting needs a loop device), no external tool.
fn extract_from_iso(iso: &Path, inside: &str, to: &Path) -> Result<()> {
    match super::iso9660::extract(iso, inside, to) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(to);
            match e.downcast_ref::<super::iso9660::IsoError>() {
                Some(super::iso9660::IsoError::Missing { .. }) => Err(usage(format!(
                    "{} has no /{inside}: not an installer ISO (it needs images/pxeboot/)",
                    iso.display()
                ))),
                Some(super::iso9660::IsoError::NotIso(_)) => Err(usage(format!("{e}"))),
                None => Err(e.context(format!("reading /{inside} from {}", iso.display()))),
            }
        }
    }
}

/// Download a URL to a file with curl (retries, no partial file left on failure).
fn download(url: &str, to: &Path) -> Result<()> {
    let result = Cmd::new("curl")
        .args([
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--retry",
            "3",
            "--connect-timeout",
            "20",
            "--output",
        ])
        .arg(to)
        .arg(url)
        .run();
    if let Err(e) = result {
        let _ = std::fs::remove_file(to);
        if e.is_not_found() {
            bail!("curl is not installed; lab downloads install trees with it: install curl");
        }
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_told_apart() {
        assert_eq!(
            InstallSource::parse("/isos/CentOS-Stream-9.iso").unwrap(),
            InstallSource::Iso("/isos/CentOS-Stream-9.iso".into())
        );
        assert_eq!(
            InstallSource::parse("file:///srv/my%20tree").unwrap(),
            InstallSource::LocalTree {
                url: "file:///srv/my%20tree/".into(),
                dir: "/srv/my tree".into()
            }
        );
        let remote = InstallSource::parse("https://mirror.example/BaseOS/x86_64/os").unwrap();
        assert_eq!(remote.method(), "url");
        assert_eq!(
            remote.installer_url().as_deref(),
            Some("https://mirror.example/BaseOS/x86_64/os/")
        );
        assert!(InstallSource::parse("ftp://x/y").is_err());
        assert!(InstallSource::parse("file://relative/path").is_err());
        assert_eq!(InstallSource::parse("a.iso").unwrap().method(), "cdrom");
    }

    #[test]
    fn treeinfo_names_the_boot_images() {
        let text = "[general]\nname = CentOS Stream 9\n[images-x86_64]\nefiboot.img = images/efiboot.img\n\
                    initrd = images/pxeboot/initrd.img\nkernel = images/pxeboot/vmlinuz\n\
                    [images-aarch64]\nkernel = nope\n";
        assert_eq!(
            boot_paths(text),
            (
                "images/pxeboot/vmlinuz".to_string(),
                "images/pxeboot/initrd.img".to_string()
            )
        );
        let (k, i) = boot_paths("[images-x86_64]\nkernel = ../../etc/passwd\n");
        assert_eq!((k.as_str(), i.as_str()), (KERNEL_PATH, INITRD_PATH));
    }

    #[test]
    fn a_remote_tree_is_fetched_over_http() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("boot/x86")).unwrap();
        std::fs::write(
            tree.join(".treeinfo"),
            "[images-x86_64]\nkernel = boot/x86/linux\ninitrd = boot/x86/initrd\n",
        )
        .unwrap();
        std::fs::write(tree.join("boot/x86/linux"), "KERNEL").unwrap();
        std::fs::write(tree.join("boot/x86/initrd"), "INITRD").unwrap();
        // lab's own tree server stands in for a mirror.
        let server = crate::kickstart::serve::TreeServer::start(&tree).unwrap();
        let source = InstallSource::parse(&server.host_url()).unwrap();
        assert!(matches!(source, InstallSource::RemoteTree(_)));
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let images = source.fetch_boot_images(&out).unwrap();
        assert_eq!(std::fs::read_to_string(&images.kernel).unwrap(), "KERNEL");
        assert_eq!(std::fs::read_to_string(&images.initrd).unwrap(), "INITRD");
        assert_eq!(
            source.identity().unwrap(),
            format!("tree {}", server.host_url())
        );

        std::fs::remove_file(tree.join(".treeinfo")).unwrap();
        let err = format!("{:#}", source.fetch_boot_images(&out).unwrap_err());
        assert!(
            err.contains("is not an install tree: no .treeinfo there"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_without_treeinfo_is_no_tree() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let source = InstallSource::parse(&url).unwrap();
        let err = source.check().unwrap_err().to_string();
        assert!(err.contains("is not an install tree"), "{err}");
        assert!(err.contains(".treeinfo does not exist"), "{err}");
        std::fs::write(dir.path().join(".treeinfo"), "[general]\n").unwrap();
        source.check().unwrap();
        assert!(source.identity().unwrap().contains("treeinfo-sha256="));
    }
}
