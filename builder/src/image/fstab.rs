//! /etc/fstab parsing (fstab(5)).
//!
//! Follows what libmount accepts, since that is what mounts the image's filesystems at boot:
//! fields separated by any run of spaces and tabs; `#` lines and blank lines ignored; the
//! first three fields required, options, freq and passno optional; `\ooo` octal escapes inside
//! fields; tag values optionally quoted (`UUID="..."`). Where libmount silently skips a line it
//! cannot parse, this parser fails with the line number: imagegen must not guess the mount
//! view of an image it is about to edit.

/// What the first field of an fstab line refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// Filesystem UUID, lowercase (blkid prints FAT volume ids in uppercase; compare
    /// case-insensitively or lowercase the other side).
    Uuid(String),
    /// Partition UUID, lowercase.
    PartUuid(String),
    /// Filesystem label, case preserved.
    Label(String),
    /// GPT partition name, case preserved.
    PartLabel(String),
    /// A device path under /dev that is not one of the /dev/disk/by-{uuid,partuuid,label,
    /// partlabel} links (those map to the variants above).
    Device(String),
    /// Anything else: `proc`, `tmpfs`, `none`, `server:/export`, `ID=...`.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    pub spec: Spec,
    /// With octal escapes decoded (`/mnt/my\040disk` gives `/mnt/my disk`).
    pub mount_point: String,
    pub fs_type: String,
    /// The comma-separated options, in order; empty when the field is absent.
    pub options: Vec<String>,
    /// 1-based line number in the file.
    pub line: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FstabError {
    #[error("fstab line {line}: {reason}")]
    Line { line: usize, reason: String },
}

fn bad(line: usize, reason: impl Into<String>) -> FstabError {
    FstabError::Line {
        line,
        reason: reason.into(),
    }
}

/// Parses the text of an fstab file.
pub fn parse(text: &str) -> Result<Vec<FstabEntry>, FstabError> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim_matches([' ', '\t']);
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        entries.push(parse_line(content, line)?);
    }
    Ok(entries)
}

fn parse_line(content: &str, line: usize) -> Result<FstabEntry, FstabError> {
    let mut fields = content.split([' ', '\t']).filter(|f| !f.is_empty());
    let mut next = |name: &str| -> Result<Option<String>, FstabError> {
        fields
            .next()
            .map(|f| unescape(f).map_err(|e| bad(line, format!("{name} field: {e}"))))
            .transpose()
    };
    let spec = next("device")?.unwrap_or_default();
    let Some(mount_point) = next("mount point")? else {
        return Err(bad(
            line,
            format!(
                "`{content}` has no mount point (expected: device mount-point type [options [freq [passno]]])"
            ),
        ));
    };
    let Some(fs_type) = next("type")? else {
        return Err(bad(
            line,
            format!(
                "`{content}` has no filesystem type (expected: device mount-point type [options [freq [passno]]])"
            ),
        ));
    };
    let options = match next("options")? {
        Some(o) => o.split(',').map(str::to_string).collect(),
        None => Vec::new(),
    };
    for name in ["freq (dump)", "passno (fsck order)"] {
        if let Some(n) = next(name)?
            && n.parse::<i32>().is_err()
        {
            return Err(bad(line, format!("{name} `{n}` is not a number")));
        }
    }
    if let Some(extra) = next("trailing")?
        && !extra.starts_with('#')
    {
        return Err(bad(
            line,
            format!("unexpected seventh field `{extra}` (fstab has at most six)"),
        ));
    }
    Ok(FstabEntry {
        spec: parse_spec(&spec).map_err(|e| bad(line, e))?,
        mount_point,
        fs_type,
        options,
        line,
    })
}

/// Decodes `\ooo` octal escapes (fstab(5): `\040` for a space, `\011` for a tab). A backslash
/// not followed by three octal digits stays as it is, as in libmount.
fn unescape(field: &str) -> Result<String, String> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(code) = b.get(i + 1..i + 4).and_then(octal)
        {
            out.push(code);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{field}` decodes to invalid UTF-8"))
}

fn octal(d: &[u8]) -> Option<u8> {
    d.iter()
        .try_fold(0u16, |acc, &c| match c {
            b'0'..=b'7' => Some(acc * 8 + u16::from(c - b'0')),
            _ => None,
        })
        .and_then(|v| u8::try_from(v).ok())
}

type MakeSpec = fn(String) -> Spec;

fn parse_spec(spec: &str) -> Result<Spec, String> {
    if let Some((tag, value)) = spec.split_once('=') {
        let make: Option<MakeSpec> = match tag {
            "UUID" => Some(|v| Spec::Uuid(v.to_ascii_lowercase())),
            "PARTUUID" => Some(|v| Spec::PartUuid(v.to_ascii_lowercase())),
            "LABEL" => Some(Spec::Label),
            "PARTLABEL" => Some(Spec::PartLabel),
            _ => None,
        };
        if let Some(make) = make {
            let value = unquote(value).ok_or_else(|| format!("unbalanced quotes in `{spec}`"))?;
            if value.is_empty() {
                return Err(format!("`{spec}` has an empty {tag} value"));
            }
            return Ok(make(value.to_string()));
        }
    }
    if let Some(rest) = spec.strip_prefix("/dev/disk/") {
        let links: [(&str, MakeSpec); 4] = [
            ("by-uuid/", |v| Spec::Uuid(v.to_ascii_lowercase())),
            ("by-partuuid/", |v| Spec::PartUuid(v.to_ascii_lowercase())),
            ("by-label/", Spec::Label),
            ("by-partlabel/", Spec::PartLabel),
        ];
        for (dir, make) in links {
            if let Some(name) = rest.strip_prefix(dir)
                && !name.is_empty()
                && !name.contains('/')
            {
                return Ok(make(udev_unescape(name)));
            }
        }
    }
    if spec.starts_with("/dev/") {
        return Ok(Spec::Device(spec.to_string()));
    }
    Ok(Spec::Other(spec.to_string()))
}

/// Strips one pair of matching double or single quotes, as blkid does for tag values.
fn unquote(v: &str) -> Option<&str> {
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            return rest.strip_suffix(q);
        }
        if v.ends_with(q) {
            return None;
        }
    }
    Some(v)
}

/// udev names /dev/disk/by-label links with unsafe bytes as `\xHH` (a space is `\x20`).
fn udev_unescape(name: &str) -> String {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i..i + 4)
            .filter(|s| s[0] == b'\\' && s[1] == b'x')
            .and_then(|s| std::str::from_utf8(&s[2..]).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raspberry_pi_os_bookworm() {
        // As written by pi-gen, with the disk id of 2025-05-13-raspios-bookworm-arm64-lite.
        let text = "proc            /proc           proc    defaults          0       0\n\
                    PARTUUID=D9C86127-01  /boot/firmware  vfat    defaults          0       2\n\
                    PARTUUID=d9c86127-02  /               ext4    defaults,noatime  0       1\n\
                    # a swapfile is not a swap partition, no need to use a\n";
        let e = parse(text).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].spec, Spec::Other("proc".into()));
        assert_eq!(e[1].spec, Spec::PartUuid("d9c86127-01".into()));
        assert_eq!(e[1].mount_point, "/boot/firmware");
        assert_eq!(e[1].line, 2);
        assert_eq!(e[2].options, ["defaults", "noatime"]);
        assert_eq!(e[2].fs_type, "ext4");
    }

    #[test]
    fn ubuntu_cloud_labels_and_missing_fields() {
        let text = "LABEL=cloudimg-rootfs\t/\t ext4\tdiscard,commit=30,errors=remount-ro\t0 1\r\n\
                    \n   \t\n\
                    LABEL=BOOT\t/boot\text4\tdefaults\n\
                    LABEL=UEFI\t/boot/efi\tvfat\n";
        let e = parse(text).unwrap();
        assert_eq!(e[0].spec, Spec::Label("cloudimg-rootfs".into()));
        assert_eq!(e[0].options[2], "errors=remount-ro");
        assert_eq!(e[1].spec, Spec::Label("BOOT".into()));
        assert_eq!(e[1].line, 4);
        assert_eq!(e[2].options, Vec::<String>::new());
        assert_eq!(e[2].line, 5);
    }

    #[test]
    fn escapes_quotes_and_links() {
        let text = "UUID=\"ABCD-1234\" /mnt/my\\040disk vfat ro 0 0 # trailing comment\n\
                    LABEL='MyLabel' /a ext4\n\
                    LABEL=a\\040b /b ext4\n\
                    /dev/disk/by-uuid/0FC63DAF-8483 /c ext4\n\
                    /dev/disk/by-label/my\\x20root /d ext4\n\
                    /dev/disk/by-partlabel/Root /e ext4\n\
                    /dev/disk/by-partuuid/AB-01 /f ext4\n\
                    /dev/mmcblk0p2 /g ext4\n\
                    tmpfs /tmp tmpfs mode=1777\n\
                    host:/export /nfs nfs\n\
                    none swap swap sw\n";
        let e = parse(text).unwrap();
        assert_eq!(e[0].spec, Spec::Uuid("abcd-1234".into()));
        assert_eq!(e[0].mount_point, "/mnt/my disk");
        assert_eq!(e[1].spec, Spec::Label("MyLabel".into()));
        assert_eq!(e[2].spec, Spec::Label("a b".into()));
        assert_eq!(e[3].spec, Spec::Uuid("0fc63daf-8483".into()));
        assert_eq!(e[4].spec, Spec::Label("my root".into()));
        assert_eq!(e[5].spec, Spec::PartLabel("Root".into()));
        assert_eq!(e[6].spec, Spec::PartUuid("ab-01".into()));
        assert_eq!(e[7].spec, Spec::Device("/dev/mmcblk0p2".into()));
        assert_eq!(e[8].spec, Spec::Other("tmpfs".into()));
        assert_eq!(e[9].spec, Spec::Other("host:/export".into()));
        assert_eq!(e[10].mount_point, "swap");
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, line, needle) in [
            ("# c\n/dev/sda1\n", 2, "no mount point"),
            ("\n\n/dev/sda1 /\n", 3, "no filesystem type"),
            ("/dev/sda1 / ext4 defaults x 1\n", 1, "freq"),
            ("/dev/sda1 / ext4 defaults 0 y\n", 1, "passno"),
            ("/dev/sda1 / ext4 defaults 0 1 extra\n", 1, "seventh"),
            ("UUID= / ext4\n", 1, "empty UUID"),
            ("UUID=\"abc / ext4\n", 1, "unbalanced"),
            ("LABEL=\\377 / ext4\n", 1, "UTF-8"),
        ] {
            let err = parse(text).unwrap_err();
            let FstabError::Line {
                line: l,
                ref reason,
            } = err;
            assert_eq!(l, line, "{text:?}: {err}");
            assert!(reason.contains(needle), "{text:?}: {err}");
        }
    }
}
