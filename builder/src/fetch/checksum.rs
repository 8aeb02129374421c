//! Vendor checksum files: which ones to look for next to a download, and how to read them.
//!
//! Formats seen in the wild (vendor-images.md section 0): Raspberry Pi OS `hash  name`,
//! Ubuntu `SHA256SUMS` `hash *name`, Armbian `.sha` `hash name` (one space), and bare
//! `hash` lines. BSD-style `SHA256 (name) = hash` lines are accepted too. Debian's cloud
//! images publish `SHA512SUMS` only (cloud.debian.org/images/cloud/bookworm/latest/), in
//! `sha512sum`'s `hash  name` format, so the same lines are read with sha512 digests.

pub use crate::io::hash::Algorithm;

/// A digest that vouches for an image: pinned by the user or read from a checksum file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub algorithm: Algorithm,
    /// Lowercase hex.
    pub hex: String,
}

/// Checks and normalises a hex digest in `algorithm` (an `algorithm:` prefix allowed).
pub fn parse_hex(algorithm: Algorithm, s: &str) -> Option<String> {
    let s = s.trim();
    let s = s
        .strip_prefix(algorithm.name())
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(s);
    (s.len() == algorithm.hex_len() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| s.to_ascii_lowercase())
}

/// Checks and normalises a sha256 given by the user or a board file.
pub fn parse_sha256(s: &str) -> Option<String> {
    parse_hex(Algorithm::Sha256, s)
}

/// Where a vendor publishes the checksum of `url`, and in which digest, most specific first:
/// the per-file `.sha256` (Raspberry Pi OS), the per-file `.sha` (Armbian, sha256), then the
/// directory's `SHA256SUMS` (Ubuntu), then its `SHA512SUMS` (Debian, which has no
/// SHA256SUMS: cloud.debian.org/images/cloud/bookworm/latest/). sha256 first: it is what
/// the cache is keyed by, so a sha256-verified download costs one digest, not two.
pub fn candidates(url: &str) -> Vec<(String, Algorithm)> {
    let base = url.split(['?', '#']).next().unwrap_or(url);
    let mut out = vec![
        (format!("{base}.sha256"), Algorithm::Sha256),
        (format!("{base}.sha"), Algorithm::Sha256),
    ];
    if let Some((dir, _)) = base.rsplit_once('/') {
        out.push((format!("{dir}/SHA256SUMS"), Algorithm::Sha256));
        out.push((format!("{dir}/SHA512SUMS"), Algorithm::Sha512));
    }
    out
}

/// The file name a checksum line must name: the last path segment of the URL.
pub fn file_name(url: &str) -> &str {
    let base = url.split(['?', '#']).next().unwrap_or(url);
    base.rsplit('/').next().unwrap_or(base)
}

/// The digest in `algorithm` that `text` gives for `name`: the line naming it (paths and a
/// `*` or `./` prefix ignored), or else the only line, when the file has a single bare hash.
/// Lines of another digest's length are not this algorithm's and are skipped.
pub fn find(text: &str, name: &str, algorithm: Algorithm) -> Option<String> {
    let mut bare = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((hash, listed)) = parse_line(line, algorithm) else {
            continue;
        };
        match listed {
            Some(listed) if basename(listed) == name => return Some(hash),
            Some(_) => {}
            None => bare.push(hash),
        }
    }
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        .count();
    if bare.len() == 1 && lines == 1 {
        bare.pop()
    } else {
        None
    }
}

/// The digest that a checksum file of unknown kind (a board's `checksum_url`) gives for
/// `name`, in the first algorithm that it lists the file in.
pub fn find_any(text: &str, name: &str) -> Option<Expected> {
    [Algorithm::Sha256, Algorithm::Sha512]
        .into_iter()
        .find_map(|algorithm| find(text, name, algorithm).map(|hex| Expected { algorithm, hex }))
}

/// (hash, file name if the line has one)
fn parse_line(line: &str, algorithm: Algorithm) -> Option<(String, Option<&str>)> {
    let tag = format!("{} (", algorithm.name().to_ascii_uppercase());
    if let Some(rest) = line.strip_prefix(tag.as_str()) {
        let (listed, hash) = rest.rsplit_once(") = ")?;
        return Some((parse_hex(algorithm, hash)?, Some(listed)));
    }
    let (hash, rest) = match line.split_once([' ', '\t']) {
        Some((hash, rest)) => (hash, Some(rest)),
        None => (line, None),
    };
    let hash = parse_hex(algorithm, hash)?;
    // `hash  name` and `hash *name` (text and binary mode of sha256sum), `hash name`.
    let listed = rest
        .map(|r| r.trim_start_matches([' ', '\t']))
        .map(|r| r.strip_prefix('*').unwrap_or(r))
        .filter(|r| !r.is_empty());
    Some((hash, listed))
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const H2: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn reads_each_vendor_format() {
        let name = "disk.img.xz";
        for text in [
            format!("{H1}  disk.img.xz\n"),
            format!("{H2} *other.img\n{H1} *disk.img.xz\n"),
            format!("{H1} disk.img.xz"),
            format!("{H2}  ./sub/other\n{H1}  ./sub/disk.img.xz\n"),
            format!("SHA256 (disk.img.xz) = {H1}\n"),
            format!("{H1}\n"),
            format!("{}  disk.img.xz\n", H1.to_uppercase()),
        ] {
            assert_eq!(
                find(&text, name, Algorithm::Sha256).as_deref(),
                Some(H1),
                "{text:?}"
            );
        }
    }

    #[test]
    fn refuses_what_does_not_name_the_file() {
        let find = |text: &str, name| find(text, name, Algorithm::Sha256);
        assert_eq!(find(&format!("{H1}  other.img.xz\n"), "disk.img.xz"), None);
        assert_eq!(find(&format!("{H1}\n{H2}\n"), "disk.img.xz"), None);
        assert_eq!(find("not a checksum  disk.img.xz\n", "disk.img.xz"), None);
        assert_eq!(find("<html>404</html>", "disk.img.xz"), None);
    }

    #[test]
    fn candidate_urls_and_names() {
        let url = "https://h/d/img.xz?x=1";
        assert_eq!(
            candidates(url),
            [
                ("https://h/d/img.xz.sha256".to_string(), Algorithm::Sha256),
                ("https://h/d/img.xz.sha".to_string(), Algorithm::Sha256),
                ("https://h/d/SHA256SUMS".to_string(), Algorithm::Sha256),
                ("https://h/d/SHA512SUMS".to_string(), Algorithm::Sha512),
            ]
        );
        assert_eq!(file_name(url), "img.xz");
        assert_eq!(
            parse_sha256(&format!("sha256:{}", H1.to_uppercase())).as_deref(),
            Some(H1)
        );
        assert_eq!(parse_sha256("abc"), None);
    }

    // FIPS 180-2 SHA-512 of "abc" and of "", so the two lines differ.
    const S1: &str = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                      2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
    const S2: &str = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
                      47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";

    /// Debian's SHA512SUMS: `sha512sum` text mode, one line per file of the directory.
    fn debian_sums() -> String {
        [
            ("debian-12-generic-amd64.json", S2),
            ("debian-12-generic-amd64.qcow2", S1),
            ("debian-12-generic-amd64.raw", S2),
            ("debian-12-genericcloud-amd64.qcow2", S2),
        ]
        .iter()
        .map(|(name, hash)| format!("{hash}  {name}\n"))
        .collect()
    }

    #[test]
    fn reads_debians_sha512sums() {
        let sums = debian_sums();
        let name = "debian-12-generic-amd64.qcow2";
        assert_eq!(find(&sums, name, Algorithm::Sha512).as_deref(), Some(S1));
        assert_eq!(
            find_any(&sums, name),
            Some(Expected {
                algorithm: Algorithm::Sha512,
                hex: S1.to_string()
            })
        );
        // The name must match whole: not a prefix of a longer one, not another image.
        assert_eq!(
            find(&sums, "debian-12-generic-amd64", Algorithm::Sha512),
            None
        );
        assert_eq!(
            find(&sums, "debian-12-generic-arm64.qcow2", Algorithm::Sha512),
            None
        );
        for text in [
            format!("{S1} *{name}\n"),
            format!("SHA512 ({name}) = {S1}\n"),
            format!("{}  {name}\n", S1.to_uppercase()),
            format!("{S1}\n"),
        ] {
            assert_eq!(
                find(&text, name, Algorithm::Sha512).as_deref(),
                Some(S1),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_digest_of_the_wrong_length_is_not_read_as_another() {
        let name = "disk.img";
        // A sha512 is not taken for a sha256 (nor its first 64 digits), nor the reverse.
        assert_eq!(
            find(&format!("{S1}  {name}\n"), name, Algorithm::Sha256),
            None
        );
        assert_eq!(
            find(&format!("{H1}  {name}\n"), name, Algorithm::Sha512),
            None
        );
        assert_eq!(
            find(
                &format!("SHA256 ({name}) = {S1}\n"),
                name,
                Algorithm::Sha512
            ),
            None
        );
        // A truncated line is no digest at all.
        assert_eq!(
            find(
                &format!("{}  {name}\n", &S1[..127]),
                name,
                Algorithm::Sha512
            ),
            None
        );
        assert_eq!(
            find_any(&format!("{H1}  {name}\n"), name).map(|e| e.algorithm),
            Some(Algorithm::Sha256)
        );
        assert_eq!(
            parse_hex(Algorithm::Sha512, &format!("sha512:{}", S1.to_uppercase())).as_deref(),
            Some(S1)
        );
        assert_eq!(parse_hex(Algorithm::Sha512, &format!("sha256:{S1}")), None);
    }
}
