//! The image cache against a real HTTP server on 127.0.0.1 (tests/support/http_server.rs),
//! real qcow2 images made by qemu-img, a real tmpfs for a full disk, and the `lab` binary
//! for `lab cache`. No libvirt.

#[path = "support/http_server.rs"]
mod http_server;
#[path = "support/lab_cli.rs"]
mod lab_cli;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256, Sha512};

use http_server::Server;
use lab::cloud::cache::{self, ImageFormat};
use lab::cloud::{Checksum, ImageSource, ensure, ensure_with};
use lab::lock::{Lock, Wait};

/// `n` bytes that compress poorly and are not text, the same on every run.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    // A boot sector's jump and zeros: what a disk begins with, never text.
    out[..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
    out[3..16].fill(0);
    out
}

/// A real qcow2 image (qemu-img) of about `mib` MiB of data.
fn qcow2(dir: &Path, mib: usize) -> Vec<u8> {
    let raw = dir.join("src.raw");
    std::fs::write(&raw, noise(mib << 20, mib as u64 + 7)).unwrap();
    let out = dir.join("src.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(&out).unwrap()
}

fn sha256(bytes: &[u8]) -> Checksum {
    Checksum::Sha256(format!("{:x}", Sha256::digest(bytes)))
}

fn sha512(bytes: &[u8]) -> Checksum {
    Checksum::Sha512(format!("{:x}", Sha512::digest(bytes)))
}

fn source(location: &str, checksum: Option<Checksum>, checksum_url: Option<String>) -> ImageSource {
    ImageSource {
        location: location.into(),
        checksum,
        checksum_url,
    }
}

/// Every file in the cache directory (the lock directory aside).
fn files(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".locks")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn qemu_format(path: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["format"].as_str().unwrap().to_string()
}

#[test]
fn a_url_is_downloaded_once_and_then_found_without_a_request() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = qcow2(work.path(), 3);
    let server = Server::start();
    server.serve("/images/debian-12-generic-amd64.qcow2", image.clone());
    let url = server.url("/images/debian-12-generic-amd64.qcow2");
    let src = source(&url, Some(sha512(&image)), None);

    let got = ensure(&src, &cache).unwrap();
    assert!(!got.from_cache);
    assert_eq!(got.downloaded_bytes, image.len() as u64);
    assert_eq!(got.format, ImageFormat::Qcow2);
    assert_eq!(got.checksum, Some(sha512(&image)));
    assert_eq!(
        got.path,
        cache.join(format!("{}.qcow2", sha512(&image).key()))
    );
    assert_eq!(std::fs::read(&got.path).unwrap(), image);
    assert_eq!(qemu_format(&got.path), "qcow2");
    assert_eq!(server.count("/images/debian-12-generic-amd64.qcow2"), 1);

    let entries = cache::entries(&cache).unwrap();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.name, "debian-12-generic-amd64.qcow2");
    assert_eq!(e.source, url);
    assert_eq!(e.checksum, sha512(&image).to_string());
    assert_eq!(e.size, image.len() as u64);
    assert!(e.fetched_at > 0 && e.last_used >= e.fetched_at);

    // Again, from another "profile": no request at all.
    let again = ensure(&src, &cache).unwrap();
    assert!(again.from_cache);
    assert_eq!(again.downloaded_bytes, 0);
    assert_eq!(again.path, got.path);
    assert_eq!(server.requests().len(), 1, "{:?}", server.requests());
    assert_eq!(
        files(&cache),
        vec![
            format!("{}.json", sha512(&image).key()),
            format!("{}.qcow2", sha512(&image).key())
        ],
        "nothing else is left in the cache"
    );
}

#[test]
fn a_transfer_cut_mid_way_is_resumed_with_a_range_request() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = qcow2(work.path(), 3);
    let server = Server::start();
    server.serve("/x.qcow2", image.clone());
    let src = source(&server.url("/x.qcow2"), Some(sha256(&image)), None);

    // The connection drops after 1 MiB: lab resumes where it broke off.
    server.cut_next_after(1 << 20);
    let got = ensure(&src, &cache).unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=1048576-"));
    assert_eq!(got.downloaded_bytes, image.len() as u64);
    assert_eq!(std::fs::read(&got.path).unwrap(), image);

    // A transfer that keeps breaking: lab gives up after three tries, keeps what it got
    // (never as an image), and the next run takes it from there.
    let other = qcow2(work.path(), 2);
    server.serve("/y.qcow2", other.clone());
    let src = source(&server.url("/y.qcow2"), Some(sha256(&other)), None);
    for _ in 0..3 {
        server.cut_next_after(512 << 10);
    }
    let msg = format!("{:#}", ensure(&src, &cache).unwrap_err());
    assert!(
        msg.contains(&server.url("/y.qcow2")) && msg.contains("broke off 3 times"),
        "{msg}"
    );
    let part = cache.join(format!("{}.part", sha256(&other).key()));
    assert_eq!(part.metadata().unwrap().len(), 3 << 19);
    assert_eq!(cache::entries(&cache).unwrap().len(), 1, "only x.qcow2");
    let got = ensure(&src, &cache).unwrap();
    let last = server.requests().pop().unwrap();
    assert_eq!(last.range.as_deref(), Some("bytes=1572864-"));
    assert_eq!(std::fs::read(&got.path).unwrap(), other);
    assert!(!part.exists());
}

#[test]
fn a_part_left_by_an_earlier_run_is_resumed_and_a_server_that_ignores_range_starts_over() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let image = qcow2(work.path(), 3);
    let server = Server::start();
    server.serve("/x.qcow2", image.clone());
    let sum = sha256(&image);
    let src = source(&server.url("/x.qcow2"), Some(sum.clone()), None);
    let part = cache.join(format!("{}.part", sum.key()));

    // What a killed `lab up` left: the first 1.5 MiB.
    let had = 3 << 19;
    std::fs::write(&part, &image[..had]).unwrap();
    let got = ensure(&src, &cache).unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].range, Some(format!("bytes={had}-")));
    assert_eq!(got.downloaded_bytes, (image.len() - had) as u64);
    assert_eq!(std::fs::read(&got.path).unwrap(), image);
    assert!(!part.exists());

    // A part that is wrong at its start, and a server that answers 200 to Range: the
    // download begins again from byte 0, and the sum is right.
    cache::remove(&cache, &sum.key(), Wait::NoWait).unwrap();
    std::fs::write(&part, vec![0x55; had]).unwrap();
    server.ignore_range(true);
    let got = ensure(&src, &cache).unwrap();
    assert_eq!(got.downloaded_bytes, image.len() as u64);
    assert_eq!(std::fs::read(&got.path).unwrap(), image);
}

#[test]
fn a_checksum_mismatch_names_the_url_and_both_sums_and_keeps_nothing() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = qcow2(work.path(), 1);
    let server = Server::start();
    server.serve("/x.qcow2", image.clone());
    let url = server.url("/x.qcow2");
    let wrong = sha256(b"another image");
    let err = ensure(&source(&url, Some(wrong.clone()), None), &cache).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains(&wrong.to_string()), "{msg}");
    assert!(msg.contains(&sha256(&image).to_string()), "{msg}");
    assert!(files(&cache).is_empty(), "{:?}", files(&cache));
    assert!(cache::entries(&cache).unwrap().is_empty());

    // The next try downloads again (nothing half-made was kept to be used).
    let ok = ensure(&source(&url, Some(sha256(&image)), None), &cache).unwrap();
    assert!(!ok.from_cache);
    assert_eq!(server.count("/x.qcow2"), 2);
}

#[test]
fn checksum_files_of_debian_and_fedora_are_read_and_only_they_are_fetched_again_or_not_at_all_offline()
 {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = qcow2(work.path(), 1);
    let server = Server::start();
    let other = "0".repeat(128);
    // Debian: SHA512SUMS, `HEX  NAME`.
    server.serve("/debian/debian-12-generic-amd64.qcow2", image.clone());
    let sums = format!(
        "{other}  debian-12-generic-amd64.json\n{}  debian-12-generic-amd64.qcow2\n{other}  \
         debian-12-generic-amd64.tar.xz\n",
        sha512(&image).hex()
    );
    server.serve_as("/debian/SHA512SUMS", sums.into_bytes(), "text/plain");
    let src = source(
        &server.url("/debian/debian-12-generic-amd64.qcow2"),
        None,
        Some(server.url("/debian/SHA512SUMS")),
    );
    let got = ensure(&src, &cache).unwrap();
    assert_eq!(got.checksum, Some(sha512(&image)));
    assert!(!got.from_cache);
    let got_debian_path = got.path.clone();
    let again = ensure(&src, &cache).unwrap();
    assert!(again.from_cache);
    assert_eq!(server.count("/debian/debian-12-generic-amd64.qcow2"), 1);
    assert_eq!(server.count("/debian/SHA512SUMS"), 2);
    let e = &cache::entries(&cache).unwrap()[0];
    assert_eq!(e.checksum_url, Some(server.url("/debian/SHA512SUMS")));

    // Fedora: CHECKSUM, BSD lines inside a PGP clear signature.
    let raw = noise(1 << 20, 3);
    server.serve(
        "/fedora/Fedora-Cloud-Base-Generic-41-1.4.x86_64.raw",
        raw.clone(),
    );
    let checksum = format!(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
         # Fedora-Cloud-Base-Generic-41-1.4.x86_64.raw: {} bytes\n\
         SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2) = {}\n\
         SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.raw) = {}\n\
         -----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEEw\n=x9Zq\n-----END PGP SIGNATURE-----\n",
        raw.len(),
        "1".repeat(64),
        sha256(&raw).hex()
    );
    server.serve_as("/fedora/CHECKSUM", checksum.into_bytes(), "text/plain");
    let fedora = source(
        &server.url("/fedora/Fedora-Cloud-Base-Generic-41-1.4.x86_64.raw"),
        None,
        Some(server.url("/fedora/CHECKSUM")),
    );
    let got = ensure(&fedora, &cache).unwrap();
    assert_eq!(got.checksum, Some(sha256(&raw)));
    assert_eq!(got.format, ImageFormat::Raw);
    assert_eq!(std::fs::read(&got.path).unwrap(), raw);

    // No network at the venue: the image this URL and checksum file gave last time is
    // used (it was verified when downloaded); one never fetched is an error.
    let server_url = server.url("/debian/SHA512SUMS");
    let other_src = source(
        &server.url("/debian/debian-13-generic-amd64.qcow2"),
        None,
        Some(server_url.clone()),
    );
    let listed = cache::entries(&cache).unwrap().len();
    drop(server);
    let offline = ensure(&src, &cache).unwrap();
    assert!(offline.from_cache);
    assert_eq!(offline.checksum, Some(sha512(&image)));
    assert_eq!(offline.path, got_debian_path);
    let msg = format!("{:#}", ensure(&other_src, &cache).unwrap_err());
    assert!(
        msg.contains(&server_url) && msg.contains("connection refused"),
        "{msg}"
    );
    assert_eq!(cache::entries(&cache).unwrap().len(), listed);
}

#[test]
fn checksum_files_that_do_not_list_the_image_or_are_missing_are_errors() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let server = Server::start();
    let sums = format!("{}  debian-12-generic-amd64.qcow2\n", "0".repeat(128));
    server.serve_as("/debian/SHA512SUMS", sums.into_bytes(), "text/plain");

    // A checksum file that does not list the image: an error naming both.
    let missing = source(
        &server.url("/debian/debian-13-generic-amd64.qcow2"),
        None,
        Some(server.url("/debian/SHA512SUMS")),
    );
    let msg = format!("{:#}", ensure(&missing, &cache).unwrap_err());
    assert!(
        msg.contains(&server.url("/debian/SHA512SUMS"))
            && msg.contains("no checksum for debian-13-generic-amd64.qcow2"),
        "{msg}"
    );
    assert_eq!(server.count("/debian/debian-13-generic-amd64.qcow2"), 0);
    // And one that is not there at all.
    let gone = source(
        &server.url("/debian/debian-12-generic-amd64.qcow2"),
        None,
        Some(server.url("/debian/SHA256SUMS")),
    );
    let msg = format!("{:#}", ensure(&gone, &cache).unwrap_err());
    assert!(
        msg.contains(&server.url("/debian/SHA256SUMS")) && msg.contains("404 Not Found"),
        "{msg}"
    );
}

#[test]
fn xz_and_zstd_images_are_decompressed_once_and_checked_as_published() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = qcow2(work.path(), 2);
    let mut xz = Vec::new();
    {
        use std::io::Write;
        let mut enc = liblzma::write::XzEncoder::new(&mut xz, 1);
        enc.write_all(&image).unwrap();
        enc.finish().unwrap();
    }
    let zst = zstd::encode_all(&image[..], 3).unwrap();
    // A raw disk with long runs of zeros, the way disk images are.
    let mut raw = noise(1 << 20, 9);
    raw.extend(vec![0u8; 4 << 20]);
    raw.extend(noise(1 << 20, 10));
    let raw_zst = zstd::encode_all(&raw[..], 3).unwrap();
    let server = Server::start();
    server.serve("/a.qcow2.xz", xz.clone());
    server.serve("/a.qcow2.zst", zst.clone());
    server.serve("/b.raw.zst", raw_zst.clone());

    for (path, published) in [("/a.qcow2.xz", &xz), ("/a.qcow2.zst", &zst)] {
        let src = source(&server.url(path), Some(sha256(published)), None);
        let got = ensure(&src, &cache).unwrap();
        assert_eq!(got.format, ImageFormat::Qcow2, "{path}");
        assert_eq!(got.downloaded_bytes, published.len() as u64);
        assert_eq!(std::fs::read(&got.path).unwrap(), image, "{path}");
        assert_eq!(qemu_format(&got.path), "qcow2");
        assert!(ensure(&src, &cache).unwrap().from_cache);
        assert_eq!(server.count(path), 1);
    }
    let src = source(&server.url("/b.raw.zst"), Some(sha512(&raw_zst)), None);
    let got = ensure(&src, &cache).unwrap();
    assert_eq!(got.format, ImageFormat::Raw);
    assert_eq!(std::fs::read(&got.path).unwrap(), raw);
    {
        use std::os::unix::fs::MetadataExt;
        let m = got.path.metadata().unwrap();
        assert!(
            m.blocks() * 512 < 4 << 20,
            "the zeros are holes: {} bytes allocated",
            m.blocks() * 512
        );
    }
    let entries = cache::entries(&cache).unwrap();
    let compressions: Vec<_> = entries.iter().map(|e| e.compression.clone()).collect();
    assert_eq!(entries.len(), 3);
    assert!(compressions.contains(&Some("xz".into())));
    assert!(compressions.contains(&Some("zstd".into())));
    assert!(
        cache::unfinished(&cache).is_empty(),
        "no compressed download is kept"
    );

    // The checksum is the published file's: one of the decompressed image is a mismatch.
    let wrong = source(&server.url("/a.qcow2.xz"), Some(sha512(&image)), None);
    let msg = format!("{:#}", ensure(&wrong, &cache).unwrap_err());
    assert!(msg.contains("checksum mismatch"), "{msg}");
}

#[test]
fn a_raw_image_is_imported_as_raw() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let raw = noise(2 << 20, 5);
    let server = Server::start();
    server.serve("/disk.img", raw.clone());
    let got = ensure(
        &source(&server.url("/disk.img"), Some(sha256(&raw)), None),
        &cache,
    )
    .unwrap();
    assert_eq!(got.format, ImageFormat::Raw);
    assert!(got.path.extension().is_some_and(|e| e == "raw"));

    use lab::storage::Storage;
    let storage = lab::storage::qcow2::Qcow2Storage::new(work.path().join("images"));
    let base = storage
        .import_base_as("rawdemo", &got.path, Some(got.format.as_str()))
        .unwrap();
    let info = lab::storage::qcow2::info(&base.path).unwrap();
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.virtual_size, raw.len() as u64);
}

#[test]
fn a_page_that_is_not_an_image_is_refused_naming_the_url() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let server = Server::start();
    let html = b"<!DOCTYPE html>\n<html><body>Moved: see the mirror list</body></html>\n".to_vec();
    server.serve_as(
        "/latest/image.qcow2",
        html.clone(),
        "text/html; charset=utf-8",
    );
    let url = server.url("/latest/image.qcow2");
    let msg = format!(
        "{:#}",
        ensure(&source(&url, Some(sha256(&html)), None), &cache).unwrap_err()
    );
    assert!(msg.contains(&format!("{url} is not a disk image")), "{msg}");
    assert!(msg.contains("HTML page"), "{msg}");
    assert!(files(&cache).is_empty(), "{:?}", files(&cache));

    // Text served as bytes is text all the same.
    let text = b"404 page not found\n".to_vec();
    server.serve("/text.img", text.clone());
    let url = server.url("/text.img");
    let msg = format!(
        "{:#}",
        ensure(&source(&url, Some(sha256(&text)), None), &cache).unwrap_err()
    );
    assert!(msg.contains(&format!("{url} is not a disk image")), "{msg}");
    assert!(files(&cache).is_empty(), "{:?}", files(&cache));
}

#[test]
fn http_errors_and_a_refused_connection_name_the_url() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let server = Server::start();
    let sum = Some(sha256(b"x"));
    let url = server.url("/missing.qcow2");
    let msg = format!(
        "{:#}",
        ensure(&source(&url, sum.clone(), None), &cache).unwrap_err()
    );
    assert!(
        msg.contains(&url) && msg.contains("the server answered 404 Not Found"),
        "{msg}"
    );
    server.status("/busy.qcow2", 503);
    let url = server.url("/busy.qcow2");
    let msg = format!(
        "{:#}",
        ensure(&source(&url, sum.clone(), None), &cache).unwrap_err()
    );
    assert!(msg.contains(&url) && msg.contains("503"), "{msg}");

    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/x.qcow2");
    let msg = format!(
        "{:#}",
        ensure(&source(&url, sum, None), &cache).unwrap_err()
    );
    assert!(
        msg.contains(&url) && msg.contains("connection refused"),
        "{msg}"
    );
    assert!(files(&cache).is_empty(), "{:?}", files(&cache));
}

/// A tmpfs of `size` mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs on {} (as root)",
            dir.display()
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_naming_the_url_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(work.path().join("small"), "1m");
    let cache = disk.0.join("cache");
    let raw = noise(3 << 20, 11);
    let server = Server::start();
    server.serve("/big.raw", raw.clone());
    let url = server.url("/big.raw");
    let src = source(&url, Some(sha256(&raw)), None);

    // The server says how long the image is: refused before a byte is written.
    let msg = format!("{:#}", ensure(&src, &cache).unwrap_err());
    assert!(msg.contains(&url) && msg.contains("disk full"), "{msg}");
    assert!(files(&cache).is_empty(), "{:?}", files(&cache));

    // It does not: the write that fills the disk stops it.
    server.no_length(true);
    let msg = format!("{:#}", ensure(&src, &cache).unwrap_err());
    assert!(msg.contains(&url) && msg.contains("disk full"), "{msg}");
    assert!(files(&cache).is_empty(), "{:?}", files(&cache));
    assert!(cache::entries(&cache).unwrap().is_empty());
}

#[test]
fn a_local_image_is_verified_where_it_is() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = qcow2(work.path(), 1);
    let path = work.path().join("mine.qcow2");
    std::fs::write(&path, &image).unwrap();
    let loc = path.display().to_string();

    let got = ensure(&source(&loc, Some(sha256(&image)), None), &cache).unwrap();
    assert_eq!(got.path, path, "used in place (the import copies it)");
    assert_eq!(got.format, ImageFormat::Qcow2);
    let got = ensure(&source(&loc, None, None), &cache).unwrap();
    assert_eq!(got.checksum, None);

    let wrong = sha256(b"x");
    let msg = format!(
        "{:#}",
        ensure(&source(&loc, Some(wrong.clone()), None), &cache).unwrap_err()
    );
    assert!(
        msg.contains(&loc) && msg.contains("checksum mismatch") && msg.contains(&wrong.to_string()),
        "{msg}"
    );
    assert!(path.exists(), "the user's file is never removed");

    // A compressed local image is decompressed into the cache, once.
    let xz_path = work.path().join("mine.qcow2.xz");
    let mut xz = Vec::new();
    {
        use std::io::Write;
        let mut enc = liblzma::write::XzEncoder::new(&mut xz, 1);
        enc.write_all(&image).unwrap();
        enc.finish().unwrap();
    }
    std::fs::write(&xz_path, &xz).unwrap();
    let src = source(&xz_path.display().to_string(), Some(sha256(&xz)), None);
    let got = ensure(&src, &cache).unwrap();
    assert!(got.path.starts_with(&cache));
    assert_eq!(std::fs::read(&got.path).unwrap(), image);
    assert!(ensure(&src, &cache).unwrap().from_cache);
    let bad = source(&xz_path.display().to_string(), Some(sha512(&image)), None);
    let msg = format!("{:#}", ensure(&bad, &cache).unwrap_err());
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert_eq!(cache::entries(&cache).unwrap().len(), 1);
    assert!(cache::unfinished(&cache).is_empty());
}

#[test]
fn two_labs_fetching_one_image_take_turns_and_no_wait_fails_at_once() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let image = qcow2(work.path(), 2);
    let server = Server::start();
    server.serve("/x.qcow2", image.clone());
    let sum = sha256(&image);
    let src = source(&server.url("/x.qcow2"), Some(sum.clone()), None);

    // Another lab holds the entry.
    let lock_path = cache::lock_path(&cache, &sum.key());
    let held = Lock::acquire_at(
        &lock_path,
        "the image cache entry x",
        "lab up other",
        Wait::Wait,
    )
    .unwrap();
    let t = std::time::Instant::now();
    let err = ensure_with(&src, &cache, Wait::NoWait).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(err.is::<lab::error::Busy>(), "{err:#}");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("`lab up other`") && msg.contains("not waiting"),
        "{msg}"
    );

    // Two labs wait for it; once it is free, one downloads and the other finds it done.
    let labs: Vec<_> = (0..2)
        .map(|_| {
            let (src, cache) = (src.clone(), cache.clone());
            std::thread::spawn(move || ensure(&src, &cache).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(server.count("/x.qcow2"), 0, "they wait for the holder");
    drop(held);
    let got: Vec<_> = labs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(server.count("/x.qcow2"), 1);
    assert_eq!(got.iter().filter(|g| g.from_cache).count(), 1);
    assert_eq!(got[0].path, got[1].path);
    assert_eq!(std::fs::read(&got[0].path).unwrap(), image);
}

fn lab_cache(cache: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(lab_cli::LAB)
        .arg("cache")
        .args(args)
        .env("LAB_IMAGE_CACHE", cache)
        .env("LAB_LOCK", cache.join("lab.lock"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn lab_cache_lists_and_removes_images() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let a = qcow2(work.path(), 1);
    let b = noise(1 << 20, 21);
    let server = Server::start();
    server.serve("/debian-12-generic-amd64.qcow2", a.clone());
    server.serve("/fedora.raw", b.clone());
    let a_src = source(
        &server.url("/debian-12-generic-amd64.qcow2"),
        Some(sha512(&a)),
        None,
    );
    ensure(&a_src, &cache).unwrap();
    ensure(
        &source(&server.url("/fedora.raw"), Some(sha256(&b)), None),
        &cache,
    )
    .unwrap();
    // An interrupted download of a third.
    std::fs::write(
        cache.join(format!("{}.part", sha256(b"c").key())),
        b"partial",
    )
    .unwrap();

    let (code, out, err) = lab_cache(&cache, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["cache"], cache.display().to_string());
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{out}");
    let deb = &images[0];
    assert_eq!(deb["name"], "debian-12-generic-amd64.qcow2");
    assert_eq!(deb["source"], server.url("/debian-12-generic-amd64.qcow2"));
    assert_eq!(deb["checksum"], sha512(&a).to_string());
    assert_eq!(deb["format"], "qcow2");
    assert_eq!(deb["size"], a.len());
    assert_eq!(
        deb["path"],
        cache
            .join(format!("{}.qcow2", sha512(&a).key()))
            .display()
            .to_string()
    );
    assert!(deb["fetched_at"].as_u64().unwrap() > 0);
    assert!(deb["last_used"].as_u64().unwrap() > 0);
    assert_eq!(images[1]["format"], "raw");
    assert_eq!(v["unfinished"].as_array().unwrap().len(), 1);

    let (code, out, err) = lab_cache(&cache, &["list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("IMAGE "), "{out}");
    assert!(
        out.contains("debian-12-generic-amd64.qcow2") && out.contains("fedora.raw"),
        "{out}"
    );
    assert!(
        err.contains("2 images in") && err.contains("1 unfinished download"),
        "{err}"
    );

    // A name that is not there removes nothing.
    let (code, _, err) = lab_cache(&cache, &["rm", "fedora.raw", "no-such.qcow2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no-such.qcow2: no such cached image"), "{err}");
    assert_eq!(cache::entries(&cache).unwrap().len(), 2);

    // By name, then by checksum prefix.
    let (code, out, err) = lab_cache(&cache, &["rm", "fedora.raw"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed fedora.raw"), "{out}");
    let left = cache::entries(&cache).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].name, "debian-12-generic-amd64.qcow2");
    let prefix = format!("sha512:{}", &sha512(&a).hex()[..10]);
    let (code, out, _) = lab_cache(&cache, &["rm", &prefix, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["removed"][0]["name"], "debian-12-generic-amd64.qcow2");
    assert!(cache::entries(&cache).unwrap().is_empty());

    // Fetched again when wanted; --all clears images and unfinished downloads.
    assert!(!ensure(&a_src, &cache).unwrap().from_cache);
    let (code, _, err) = lab_cache(&cache, &["rm", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        files(&cache).iter().all(|f| f == "lab.lock"),
        "{:?}",
        files(&cache)
    );
    let (code, _, err) = lab_cache(&cache, &["rm"]);
    assert_eq!(code, 2, "a name or --all: {err}");
}

#[test]
fn lab_base_build_imports_a_downloaded_raw_image_once() {
    let t = RawImageLab::new("rawbase", 2 << 20, 31);
    let (server, raw, images) = (&t.server, &t.raw, &t.images);
    let lab = |args: &[&str]| {
        let out = t.lab().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "lab {args:?}: {stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let p = t.profile.to_str().unwrap();
    let (stdout, stderr) = lab(&["base", "build", p]);
    assert!(stderr.contains("downloaded disk.raw"), "{stderr}");
    let base = PathBuf::from(stdout.trim());
    assert!(base.starts_with(images), "{stdout}");
    let info = lab::storage::qcow2::info(&base).unwrap();
    assert_eq!(info.format, "qcow2");
    assert_eq!(
        info.virtual_size,
        raw.len() as u64,
        "read as the raw disk it is"
    );

    // Current: nothing fetched, not even the checksum file.
    let (_, stderr) = lab(&["base", "build", p]);
    assert!(stderr.contains("the base is current"), "{stderr}");
    // Made again: the checksum file is fetched, the image comes from the cache.
    let (_, stderr) = lab(&["base", "build", p, "--force"]);
    assert!(!stderr.contains("downloaded"), "{stderr}");
    assert_eq!(server.count("/cloud/disk.raw"), 1);
    assert_eq!(server.count("/cloud/SHA256SUMS"), 2);
    lab(&["base", "rm", p]);
}

#[test]
fn a_downloaded_qcow2_that_reads_another_file_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let secret = work.path().join("host-file.raw");
    std::fs::write(&secret, noise(1 << 20, 41)).unwrap();
    let made = |name: &str, opts: &[&str]| {
        let path = work.path().join(name);
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .args(opts)
            .arg(&path)
            .arg("1M")
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read(&path).unwrap()
    };
    let overlay = made(
        "overlay.qcow2",
        &["-b", secret.to_str().unwrap(), "-F", "raw"],
    );
    let data_file = format!("data_file={}", work.path().join("data.raw").display());
    let external = made("external.qcow2", &["-o", &data_file]);
    let server = Server::start();
    server.serve("/overlay.qcow2", overlay.clone());
    server.serve("/external.qcow2", external.clone());
    for (path, bytes, says) in [
        ("/overlay.qcow2", &overlay, "is a qcow2 overlay of"),
        (
            "/external.qcow2",
            &external,
            "keeps its data in an external file",
        ),
    ] {
        let url = server.url(path);
        let msg = format!(
            "{:#}",
            ensure(&source(&url, Some(sha256(bytes)), None), &cache).unwrap_err()
        );
        assert!(msg.contains(&url) && msg.contains(says), "{msg}");
        assert!(files(&cache).is_empty(), "{:?}", files(&cache));
    }
}

/// `lab base build` killed (SIGKILL) in the middle of a download: nothing of it is taken
/// for an image (no cache entry, no base), and the next run resumes the part where it
/// stopped (a Range request from there) and finishes the base.
#[test]
fn a_download_killed_midway_is_resumed_by_the_next_run_and_never_used_half() {
    let t = RawImageLab::new("killed", 4 << 20, 53);
    let (server, raw, images, cache_dir) = (&t.server, &t.raw, &t.images, &t.cache);
    let p = t.profile.to_str().unwrap();
    let lab = || {
        let mut c = t.lab();
        c.args(["base", "build", p]);
        c
    };
    // A transfer that hangs after 1 MiB; lab is killed while it waits for the rest.
    let stalled = 1 << 20;
    server.stall_next_after("/cloud/disk.raw", stalled);
    let mut child = lab()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let part_size = || -> u64 {
        walk(cache_dir)
            .iter()
            .filter(|f| f.to_string_lossy().ends_with(".part"))
            .map(|f| f.metadata().map_or(0, |m| m.len()))
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while part_size() < stalled as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "lab never wrote the first MiB: {:?}",
            walk(cache_dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Nothing half-downloaded is an image: no cache entry, no base.
    assert!(cache::entries(cache_dir).unwrap().is_empty());
    assert!(
        !walk(images)
            .iter()
            .any(|f| f.to_string_lossy().contains("base")),
        "{:?}",
        walk(images)
    );
    // The next run resumes where the killed one stopped, and finishes.
    let out = lab().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ranges: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.path == "/cloud/disk.raw")
        .filter_map(|r| r.range.clone())
        .collect();
    assert_eq!(ranges, [format!("bytes={stalled}-")], "{ranges:?}");
    let entries = cache::entries(cache_dir).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].size, raw.len() as u64);
}

/// A profile whose base is a raw image of `size` bytes of noise served over HTTP with a
/// SHA256SUMS, in a directory of its own, and `lab` run with its own image cache, lock and
/// runtime directory there.
struct RawImageLab {
    work: tempfile::TempDir,
    server: Server,
    raw: Vec<u8>,
    profile: PathBuf,
    images: PathBuf,
    cache: PathBuf,
}

impl RawImageLab {
    fn new(name: &str, size: usize, seed: u64) -> RawImageLab {
        let work = tempfile::tempdir().unwrap();
        let raw = noise(size, seed);
        let server = Server::start();
        server.serve("/cloud/disk.raw", raw.clone());
        server.serve_as(
            "/cloud/SHA256SUMS",
            format!("{}  disk.raw\n", sha256(&raw).hex()).into_bytes(),
            "text/plain",
        );
        let images = work.path().join("images");
        let profile = work.path().join(format!("{name}.toml"));
        std::fs::write(
            &profile,
            format!(
                "name = \"{name}{}\"\n[storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n[base]\n\
                 image = \"{}\"\nchecksum_url = \"{}\"\n[[vm]]\nname = \"a\"\n",
                std::process::id() % 100_000,
                images.display(),
                server.url("/cloud/disk.raw"),
                server.url("/cloud/SHA256SUMS"),
            ),
        )
        .unwrap();
        RawImageLab {
            cache: work.path().join("cache"),
            work,
            server,
            raw,
            profile,
            images,
        }
    }

    fn lab(&self) -> Command {
        let mut c = Command::new(lab_cli::LAB);
        c.env("LAB_IMAGE_CACHE", &self.cache)
            .env("LAB_LOCK", self.work.path().join("lab.lock"))
            .env("LAB_RUNTIME_DIR", self.work.path().join("run"));
        c
    }
}

/// Every file under `dir` (none when it does not exist).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
