//! Where a profile's image comes from (`[base] image`, `checksum`, `checksum_url`), and
//! whether that is enough to trust it.

use super::checksum::Checksum;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// A local path (absolute, once the profile is loaded) or an `http(s)://` URL.
    pub location: String,
    pub checksum: Option<Checksum>,
    /// The distribution's checksum file that lists the image's file name.
    pub checksum_url: Option<String>,
}

impl ImageSource {
    pub fn is_url(&self) -> bool {
        is_http(&self.location)
    }

    /// The image's file name as published (`debian-12-generic-amd64.qcow2`): the last
    /// segment of the URL's path, percent-decoded, or the local file's name. The name a
    /// checksum file lists it under.
    pub fn file_name(&self) -> String {
        file_name_of(&self.location)
    }
}

fn is_http(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// The last path segment of a URL or a path.
pub(crate) fn file_name_of(location: &str) -> String {
    let path = if is_http(location) {
        let rest = location.split_once("://").map_or(location, |(_, r)| r);
        let rest = rest.split(['?', '#']).next().unwrap_or(rest);
        rest.split_once('/').map_or("", |(_, p)| p)
    } else {
        location
    };
    let last = path.rsplit('/').next().unwrap_or("");
    percent_encoding::percent_decode_str(last)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whether `source` can be trusted as written: a URL needs exactly one of `checksum` and
/// `checksum_url` (an unverified download is never used; two sources of truth could
/// disagree), a checksum URL is fetched over http(s), and a URL names a file. The message
/// is for the profile line that is wrong.
pub fn validate_source(source: &ImageSource) -> Result<(), String> {
    if let Some(url) = &source.checksum_url
        && !is_http(url)
    {
        return Err(format!(
            "{url}: checksum_url is fetched over http:// or https://; for a checksum you have, \
             write checksum = \"sha256:HEX\" (or sha512)"
        ));
    }
    if source.checksum.is_some() && source.checksum_url.is_some() {
        return Err(
            "give checksum or checksum_url, not both: lab cannot tell which one to believe".into(),
        );
    }
    if source.is_url() {
        if source.checksum.is_none() && source.checksum_url.is_none() {
            return Err(format!(
                "{}: a downloaded image must be verifiable: add checksum = \"sha256:HEX\" (or \
                 sha512), or checksum_url = the checksum file published beside it (SHA512SUMS, \
                 CHECKSUM)",
                source.location
            ));
        }
        let name = source.file_name();
        if name.is_empty() {
            return Err(format!(
                "{}: the URL names no file (it ends in /)",
                source.location
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(location: &str, checksum: Option<&str>, url: Option<&str>) -> ImageSource {
        ImageSource {
            location: location.into(),
            checksum: checksum.map(|c| c.parse().unwrap()),
            checksum_url: url.map(Into::into),
        }
    }

    #[test]
    fn a_url_needs_one_checksum_and_a_local_path_none() {
        let sum = format!("sha256:{}", "a".repeat(64));
        let url =
            "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-generic-amd64.qcow2";
        let sums = "https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS";
        assert_eq!(validate_source(&source(url, Some(&sum), None)), Ok(()));
        assert_eq!(validate_source(&source(url, None, Some(sums))), Ok(()));
        let e = validate_source(&source(url, None, None)).unwrap_err();
        assert!(e.contains("must be verifiable") && e.contains(url), "{e}");
        let e = validate_source(&source(url, Some(&sum), Some(sums))).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = validate_source(&source(url, None, Some("/tmp/SHA512SUMS"))).unwrap_err();
        assert!(e.contains("fetched over http"), "{e}");
        let e = validate_source(&source("https://example.org/images/", Some(&sum), None));
        assert!(e.unwrap_err().contains("names no file"));
        assert_eq!(validate_source(&source("/srv/x.qcow2", None, None)), Ok(()));
        assert_eq!(
            validate_source(&source("/srv/x.qcow2", Some(&sum), None)),
            Ok(())
        );
    }

    #[test]
    fn the_file_name_is_the_last_segment_decoded() {
        let s = source(
            "https://example.org/pub/Fedora%20Cloud.qcow2?mirror=1#x",
            None,
            None,
        );
        assert_eq!(s.file_name(), "Fedora Cloud.qcow2");
        assert_eq!(file_name_of("http://host:8080/a/b.raw.xz"), "b.raw.xz");
        assert_eq!(file_name_of("/var/lib/x.qcow2"), "x.qcow2");
        assert_eq!(file_name_of("http://host"), "");
    }
}
