//! SSH public key files as operators have them, turned into authorized_keys lines: OpenSSH's
//! one-line format, and RFC 4716 (`---- BEGIN SSH2 PUBLIC KEY ----`), which `ssh-keygen -e`,
//! PuTTYgen and commercial SSH tools write and sshd does not read.

use crate::config;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PubkeyError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: &'static str },
    #[error("the RFC 4716 key at line {line}: {reason}")]
    Rfc4716 { line: usize, reason: String },
}

const BEGIN: &str = "---- BEGIN SSH2 PUBLIC KEY ----";
const END: &str = "---- END SSH2 PUBLIC KEY ----";

/// Every key in a public key file, one authorized_keys line each. An RFC 4716 key becomes
/// `TYPE BASE64`, as `ssh-keygen -i -m RFC4716` prints it: its headers (Comment:, Subject:)
/// are dropped, since their free text has no place on an authorized_keys line that sshd
/// parses. Empty lines and `#` comments are skipped.
pub fn authorized_keys_lines(text: &str) -> Result<Vec<String>, PubkeyError> {
    let mut keys = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    while let Some((n, line)) = lines.next() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == BEGIN {
            let key = rfc4716_body(&mut lines)
                .and_then(|body| openssh_line(&body))
                .map_err(|reason| PubkeyError::Rfc4716 { line: n, reason })?;
            keys.push(key);
            continue;
        }
        if let Some(reason) = config::ssh_key_problem(line) {
            return Err(PubkeyError::Line { line: n, reason });
        }
        keys.push(line.to_string());
    }
    Ok(keys)
}

/// The base64 body of an RFC 4716 key, from the line after BEGIN up to END.
fn rfc4716_body<'a>(lines: &mut impl Iterator<Item = (usize, &'a str)>) -> Result<String, String> {
    let mut body = String::new();
    let mut continued = false;
    for (_, line) in lines {
        if continued {
            // RFC 4716 3.3: a header line ending in a backslash goes on on the next line.
            continued = line.ends_with('\\');
        } else if line == END {
            return Ok(body);
        } else if line.contains(':') {
            // A header ("Comment: ..."); base64 has no ':'.
            continued = line.ends_with('\\');
        } else {
            body.push_str(line);
        }
    }
    Err(format!("no {END:?} line"))
}

/// `TYPE BASE64` for the SSH wire-format public key blob in `body`: the blob starts with the
/// key type as an SSH string (RFC 4253 6.6), and is the same bytes OpenSSH base64-encodes.
fn openssh_line(body: &str) -> Result<String, String> {
    let blob = STANDARD
        .decode(body)
        .map_err(|e| format!("its body is not base64 ({e})"))?;
    let kind = blob
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| blob.get(4..4usize.checked_add(n)?))
        .filter(|k| k.len() < blob.len() - 4)
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()) && config::is_key_type(k))
        .ok_or("its body is not an SSH public key")?;
    Ok(format!("{kind} {}", STANDARD.encode(&blob)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by `ssh-keygen -e -m RFC4716 -f id.pub`; the expected lines are what
    // `ssh-keygen -i -m RFC4716 -f` printed for them (OpenSSH 9.2).
    const ED25519: &str = "---- BEGIN SSH2 PUBLIC KEY ----\r
Comment: \"256-bit ED25519, converted by root@vm from OpenSSH\"\r
AAAAC3NzaC1lZDI1NTE5AAAAINWRLEg/zzOVQBeNGQg5Ead3y3EqPrk5EfkqjoILXLxB\r
---- END SSH2 PUBLIC KEY ----\r
";
    const ED25519_OPENSSH: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINWRLEg/zzOVQBeNGQg5Ead3y3EqPrk5EfkqjoILXLxB";

    #[test]
    fn rfc4716_becomes_what_ssh_keygen_prints() {
        assert_eq!(authorized_keys_lines(ED25519).unwrap(), [ED25519_OPENSSH]);
        // Continued headers, a multi-line body, and an OpenSSH line after it.
        let text = format!(
            "{BEGIN}\nx-note: a long \\\nheader: still it\nComment: me\nAAAAC3NzaC1lZDI1NTE5AAAAINWRLE\ng/zzOVQBeNGQg5Ead3y3EqPrk5EfkqjoILXLxB\n{END}\n\n{ED25519_OPENSSH} \"q\" \\x\n"
        );
        assert_eq!(
            authorized_keys_lines(&text).unwrap(),
            [
                ED25519_OPENSSH.to_string(),
                format!("{ED25519_OPENSSH} \"q\" \\x")
            ]
        );
    }

    #[test]
    fn broken_keys_say_where() {
        let e = authorized_keys_lines(&format!("{BEGIN}\nAAAA\n")).unwrap_err();
        assert!(
            e.to_string().contains("line 1") && e.to_string().contains("END"),
            "{e}"
        );
        let e = authorized_keys_lines(&format!("\n{BEGIN}\n!!\n{END}\n")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the RFC 4716 key at line 2: its body is not base64"),
            "{e}"
        );
        // Base64 of something that is not a key blob: a length past the end, then an
        // unknown type.
        for body in ["AAAA/3Nz", "AAAAA2Zvbw=="] {
            let e = authorized_keys_lines(&format!("{BEGIN}\n{body}\n{END}\n")).unwrap_err();
            assert!(
                e.to_string().contains("not an SSH public key"),
                "{body}: {e}"
            );
        }
        let e = authorized_keys_lines("ssh-ed25519 AAAA x\nhello\n").unwrap_err();
        assert_eq!(
            e,
            PubkeyError::Line {
                line: 2,
                reason: config::ssh_key_problem("hello").unwrap()
            }
        );
    }
}
