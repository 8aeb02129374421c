//! OpenSSH `known_hosts` lines: the builder writes the NAS keys a cluster pins, and the agent
//! reports the fingerprint of the key it trusted on first use.
//!
//! Format (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT"): an optional marker (`@cert-authority`,
//! `@revoked`), comma-separated host patterns (or a hashed `|1|salt|hash`), the key type, the
//! base64 key and an optional comment. Blank lines and lines starting with `#` are ignored.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

/// A public key as it appears in `.pub` files and known_hosts: `TYPE BASE64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: String,
    pub blob: Vec<u8>,
}

impl PublicKey {
    /// Parses `TYPE BASE64`, checking that the base64 decodes to a whole key of that type: a
    /// plain public key is a series of SSH `string`s and `mpint`s, each a 32-bit length and that
    /// many bytes, the first the key type (RFC 4253 6.6, RFC 5656 3.1, RFC 8709 4). So a line
    /// cut short or pasted from the wrong place is caught here, not by a backup that cannot
    /// log in. (Certificates, which also hold plain integers, never appear in known_hosts.)
    pub fn parse(kind: &str, base64: &str) -> Result<PublicKey, String> {
        if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{kind:?} is not an SSH key type"));
        }
        let blob = STANDARD
            .decode(base64)
            .map_err(|_| format!("the {kind} key is not valid base64 (cut short?)"))?;
        let cut = || format!("the {kind} key is cut short");
        let mut fields = Vec::new();
        let mut rest = blob.as_slice();
        // Each turn consumes at least 4 bytes: at most blob.len() / 4 turns.
        while !rest.is_empty() {
            let (len, after) = rest.split_first_chunk::<4>().ok_or_else(cut)?;
            let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| cut())?;
            if len > after.len() {
                return Err(cut());
            }
            let (field, after) = after.split_at(len);
            fields.push(field);
            rest = after;
        }
        match fields.as_slice() {
            [inner, ..] if *inner != kind.as_bytes() => Err(format!(
                "the key says it is {:?}, not {kind}",
                String::from_utf8_lossy(inner)
            )),
            [_, key, ..] => {
                if kind == "ssh-ed25519" && key.len() != 32 {
                    return Err(cut());
                }
                Ok(PublicKey {
                    kind: kind.to_owned(),
                    blob,
                })
            }
            _ => Err(cut()),
        }
    }

    /// `SHA256:...`, as `ssh-keygen -l` and ssh's own messages print it.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(Sha256::digest(&self.blob))
        )
    }

    /// `TYPE BASE64`.
    pub fn to_text(&self) -> String {
        format!("{} {}", self.kind, STANDARD.encode(&self.blob))
    }
}

/// One key line of a known_hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `@cert-authority` or `@revoked`.
    pub marker: Option<String>,
    /// The host patterns, as written (maybe hashed).
    pub hosts: String,
    pub key: PublicKey,
}

/// Parses one line; `None` for a blank or comment line.
pub fn parse_line(line: &str) -> Result<Option<Entry>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.contains("PRIVATE KEY") {
        return Err("this is a private key, not a known_hosts line".into());
    }
    let mut fields = line.split_whitespace().peekable();
    let marker = fields.next_if(|f| f.starts_with('@')).map(str::to_owned);
    if let Some(m) = &marker
        && m != "@cert-authority"
        && m != "@revoked"
    {
        return Err(format!("unknown marker {m:?}"));
    }
    let (Some(hosts), Some(kind), Some(base64)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err("not a known_hosts line (expected \"HOST KEYTYPE BASE64\")".into());
    };
    Ok(Some(Entry {
        marker,
        hosts: hosts.to_owned(),
        key: PublicKey::parse(kind, base64)?,
    }))
}

/// Every key line of `text`; an error names the first bad line (1-based).
pub fn parse(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(e) = parse_line(line).map_err(|why| (i + 1, why))? {
            out.push(e);
        }
    }
    Ok(out)
}

/// The key lines of `text` that parse, skipping any other (as ssh does).
pub fn entries(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| parse_line(l).ok().flatten())
        .collect()
}

/// The name ssh looks a host up by in known_hosts: the host alone on port 22, else
/// `[host]:port` (sshd(8), SSH_KNOWN_HOSTS FILE FORMAT). ssh lowercases host names first.
/// None for a host that cannot be written as a pattern (empty, or with a character that
/// would end the field or make it a pattern).
pub fn host_name(host: &str, port: Option<u16>) -> Option<String> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_ascii_lowercase();
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'%');
    if host.is_empty() || !host.bytes().all(plain) {
        return None;
    }
    Some(match port {
        None | Some(22) => host,
        Some(p) => format!("[{host}]:{p}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ssh-keygen -t ed25519`, and what `ssh-keygen -lf` says of it.
    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBIK8P55P+/ZVf44Hspc1HpLTmeNKtVROxzoAauOWZPf";
    const FINGERPRINT: &str = "SHA256:dglGM4+QNgNhFp4WUTycmPxVxzLK4XAMciq1O2kOkS8";

    #[test]
    fn fingerprints_match_ssh_keygen() {
        let k = PublicKey::parse("ssh-ed25519", KEY).unwrap();
        assert_eq!(k.fingerprint(), FINGERPRINT);
        assert_eq!(k.to_text(), format!("ssh-ed25519 {KEY}"));
        // `ssh-keygen -t rsa -b 1024` and `-t ecdsa`, with `ssh-keygen -lf`'s fingerprints.
        for (kind, b64, fp) in [
            (
                "ssh-rsa",
                "AAAAB3NzaC1yc2EAAAADAQABAAAAgQCipJpDmL7Enamb4xDSredJN3yDn4aW4RHAkSs+zqno1VdAG7C1O5yyPtNOdeIPKqT6ewQp8SEQPDUh/ZqKN0uyt9ryVw6N/pihyWiC0xhI7pehpDCCKVNxD6Hgd5rh8QWiU7jbt/nyiKz4JS9uYGytl6TNCv8aZd91uotb29FNsQ==",
                "SHA256:eGI2Wte0rXaOR4CQBQL2/AATkOU34uTx04aGQZ7PgEQ",
            ),
            (
                "ecdsa-sha2-nistp256",
                "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBIq5k32rDWG5FUJys+ZlPvEThdlcqX5yD4/pOWRVQ3PFAMDGee/LBd3nVD7tcFJeASJpumRc4Fgg2i20Fx0d58A=",
                "SHA256:Sf/sc4JZz8lZsfrDJWx9kw5fMTdmIubn7zFRflD26B4",
            ),
        ] {
            assert_eq!(PublicKey::parse(kind, b64).unwrap().fingerprint(), fp);
            assert!(PublicKey::parse(kind, &b64[..b64.len() - 8]).is_err());
        }
    }

    #[test]
    fn bad_keys_are_refused_without_panicking() {
        for (kind, b64) in [
            ("ssh-rsa", KEY),
            ("ssh-ed25519", &KEY[..20]),
            ("ssh-ed25519", &KEY[..48]),
            ("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5"),
            ("ssh-ed25519", "AAAA"),
            ("ssh-ed25519", "/////w=="),
            ("ssh-ed25519", "not base64!"),
            ("", KEY),
        ] {
            assert!(PublicKey::parse(kind, b64).is_err(), "{kind} {b64}");
        }
    }

    #[test]
    fn lines_and_files() {
        let text =
            format!("# NAS\n\n|1|abc=|def= ssh-ed25519 {KEY}\n@revoked * ssh-ed25519 {KEY} old\n");
        let e = parse(&text).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].hosts, "|1|abc=|def=");
        assert_eq!(e[1].marker.as_deref(), Some("@revoked"));
        let bad = format!("nas ssh-ed25519 {KEY}\nssh-ed25519 {KEY}\n");
        assert_eq!(parse(&bad).unwrap_err().0, 2);
        assert_eq!(entries(&bad).len(), 1);
        assert!(parse_line("-----BEGIN OPENSSH PRIVATE KEY-----").is_err());
        assert!(parse_line(&format!("@bogus nas ssh-ed25519 {KEY}")).is_err());
    }

    #[test]
    fn host_names_as_ssh_looks_them_up() {
        assert_eq!(host_name("NAS.lan", None).as_deref(), Some("nas.lan"));
        assert_eq!(host_name("nas", Some(22)).as_deref(), Some("nas"));
        assert_eq!(
            host_name("127.0.0.1", Some(2222)).as_deref(),
            Some("[127.0.0.1]:2222")
        );
        assert_eq!(
            host_name("[fd00::1]", Some(2222)).as_deref(),
            Some("[fd00::1]:2222")
        );
        for bad in ["", "nas lan", "*.lan", "a,b", "!nas"] {
            assert_eq!(host_name(bad, None), None, "{bad}");
        }
    }
}
