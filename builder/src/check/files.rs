//! `[[files]]`, `[[nodes.files]]` and `[firstboot] scripts`: the syntax of what the operator
//! adds. Whether a source exists is checked with the other files the config names
//! (`check::own_files`, and again by `plan::files` at build time); whether an owner exists is
//! known only with the image open (`plan::files`).

use crate::config::{FileEntry, Firstboot, Invalid};
use std::path::{Component, Path};

/// The mode `[[files]]` gives when it names none.
pub const DEFAULT_MODE: u32 = 0o644;

/// Kernel and runtime filesystems mounted over the image's directories on the node: a file put
/// there by the build would be hidden (proc(5), sysfs(5), devtmpfs, and /run, a tmpfs by
/// systemd's file-hierarchy(7)).
const HIDDEN_AT_RUNTIME: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// "0644", "644" or "0o644" -> the permission bits.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let ok = (3..=4).contains(&digits.len()) && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !ok {
        return Err(format!(
            "mode {s:?} is not an octal permission such as \"0644\" or \"0755\""
        ));
    }
    u32::from_str_radix(digits, 8).map_err(|e| format!("mode {s:?}: {e}"))
}

/// "user:group" -> (user, Some(group)); "user" -> (user, None): the user's primary group.
pub fn parse_owner(s: &str) -> Result<(&str, Option<&str>), String> {
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 32
            && n.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && n.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
            })
    };
    if !name_ok(user) || !group.is_none_or(name_ok) {
        return Err(format!(
            "owner {s:?} is not \"USER:GROUP\" or \"USER\" (names as in the image's /etc/passwd \
             and /etc/group, such as \"root:root\" or \"www-data:www-data\")"
        ));
    }
    Ok((user, group))
}

/// Why `dest` cannot be where a file goes on the node, or None.
pub fn dest_problem(dest: &str) -> Option<String> {
    if !dest.starts_with('/') {
        return Some("must be an absolute path on the node, such as \"/etc/motd\"".into());
    }
    if dest.ends_with('/') || dest == "/" {
        return Some("names a directory; give the file's full path".into());
    }
    let p = Path::new(dest);
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || dest
            .split('/')
            .skip(1)
            .any(|part| part.is_empty() || part == ".")
    {
        return Some("must not contain \"..\", \".\" or empty components".into());
    }
    if let Some(fs) = HIDDEN_AT_RUNTIME.iter().find(|d| p.starts_with(d)) {
        return Some(format!(
            "is under {fs}, which the node mounts a kernel or runtime filesystem over: the file \
             would never be seen"
        ));
    }
    None
}

/// Every syntax problem of one `[[files]]` entry.
pub fn problems(f: &FileEntry) -> Vec<Invalid> {
    let mut out = Vec::new();
    let dest = f.dest.get_ref();
    if let Some(why) = dest_problem(dest) {
        out.push((f.dest.span(), format!("files dest {dest:?} {why}")));
    }
    if let Some(m) = &f.mode
        && let Err(why) = parse_mode(m.get_ref())
    {
        out.push((m.span(), format!("files {why}")));
    }
    if let Some(o) = &f.owner
        && let Err(why) = parse_owner(o.get_ref())
    {
        out.push((o.span(), format!("files {why}")));
    }
    out
}

/// The name a script is staged under: its position (from 01) and its own file name, so the
/// directory lists them in the order they run.
pub fn staged_name(index: usize, source: &Path) -> Option<String> {
    let name = source.file_name()?.to_str()?;
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    ok.then(|| format!("{:02}-{name}", index + 1))
}

/// Every syntax problem of `[firstboot]`.
pub fn script_problems(fb: &Firstboot) -> Vec<Invalid> {
    let mut out = Vec::new();
    for (i, s) in fb.scripts.iter().enumerate() {
        if staged_name(i, s.get_ref()).is_none() {
            out.push((
                s.span(),
                format!(
                    "firstboot script {}: its file name must be letters, digits, '.', '_' and \
                     '-' (it names the script in the node's status)",
                    s.get_ref().display()
                ),
            ));
        }
    }
    if fb.scripts.len() > 99 {
        out.push((0..0, "firstboot: at most 99 scripts".into()));
    }
    if let Some(t) = &fb.timeout_secs
        && !(1..=imagegen_firstboot::config::MAX_SCRIPT_TIMEOUT_SECS).contains(t.get_ref())
    {
        out.push((
            t.span(),
            format!(
                "firstboot timeout_secs must be 1 to {} (each script runs within the agent's \
                 run, which systemd ends after 300 s)",
                imagegen_firstboot::config::MAX_SCRIPT_TIMEOUT_SECS
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        for bad in ["", "rw-r--r--", "0888", "12", "07777x", "100644"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_owner("root:root"), Ok(("root", Some("root"))));
        assert_eq!(parse_owner("www-data"), Ok(("www-data", None)));
        for bad in ["", ":root", "root:", "Root", "a b", "0:0x", "a:b:c"] {
            assert!(parse_owner(bad).is_err(), "{bad}");
        }
        assert_eq!(dest_problem("/etc/motd"), None);
        assert_eq!(dest_problem("/opt/app/config.yaml"), None);
        for bad in [
            "etc/motd",
            "/etc/",
            "/",
            "/etc/../shadow",
            "/etc/./x",
            "/etc//x",
            "/proc/x",
            "/sys/kernel/x",
            "/dev/x",
            "/run/x",
        ] {
            assert!(dest_problem(bad).is_some(), "{bad}");
        }
        assert_eq!(dest_problem("/developer/x"), None);
        assert_eq!(
            staged_name(0, Path::new("scripts/setup.sh")).as_deref(),
            Some("01-setup.sh")
        );
        assert_eq!(staged_name(1, Path::new("a b.sh")), None);
        assert_eq!(staged_name(1, Path::new("..")), None);
    }
}
