//! Vendor checksum files: which ones to look for next to a download, and how to read them.
//!
//! Formats seen in the wild (vendor-images.md section 0): Raspberry Pi OS `hash  name`,
//! Ubuntu `SHA256SUMS` `hash *name`, Armbian `.sha` `hash name` (one space), and bare
//! `hash` lines. BSD-style `SHA256 (name) = hash` lines are accepted too.

/// Checks and normalises a sha256 given by the user or a board file.
pub fn parse_sha256(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// Where a vendor publishes the checksum of `url`, most specific first: the per-file
/// `.sha256` (Raspberry Pi OS), the per-file `.sha` (Armbian), then the directory's
/// `SHA256SUMS` (Ubuntu, Debian).
pub fn candidates(url: &str) -> Vec<String> {
    let base = url.split(['?', '#']).next().unwrap_or(url);
    let mut out = vec![format!("{base}.sha256"), format!("{base}.sha")];
    if let Some((dir, _)) = base.rsplit_once('/') {
        out.push(format!("{dir}/SHA256SUMS"));
    }
    out
}

/// The file name a checksum line must name: the last path segment of the URL.
pub fn file_name(url: &str) -> &str {
    let base = url.split(['?', '#']).next().unwrap_or(url);
    base.rsplit('/').next().unwrap_or(base)
}

/// The sha256 that `text` gives for `name`: the line naming it (paths and a `*` or `./`
/// prefix ignored), or else the only line, when the file has a single bare hash.
pub fn find(text: &str, name: &str) -> Option<String> {
    let mut bare = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((hash, listed)) = parse_line(line) else {
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

/// (hash, file name if the line has one)
fn parse_line(line: &str) -> Option<(String, Option<&str>)> {
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        let (listed, hash) = rest.rsplit_once(") = ")?;
        return Some((parse_sha256(hash)?, Some(listed)));
    }
    let (hash, rest) = match line.split_once([' ', '\t']) {
        Some((hash, rest)) => (hash, Some(rest)),
        None => (line, None),
    };
    let hash = parse_sha256(hash)?;
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
            assert_eq!(find(&text, name).as_deref(), Some(H1), "{text:?}");
        }
    }

    #[test]
    fn refuses_what_does_not_name_the_file() {
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
                "https://h/d/img.xz.sha256",
                "https://h/d/img.xz.sha",
                "https://h/d/SHA256SUMS"
            ]
        );
        assert_eq!(file_name(url), "img.xz");
        assert_eq!(
            parse_sha256(&format!("sha256:{}", H1.to_uppercase())).as_deref(),
            Some(H1)
        );
        assert_eq!(parse_sha256("abc"), None);
    }
}
