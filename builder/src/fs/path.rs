//! Paths inside a filesystem: absolute, '/'-separated, no '.', '..' or empty components.

use super::FsError;

/// Normalizes an absolute path: collapses repeated slashes, drops '.', resolves '..' lexically
/// (never above '/'), drops a trailing slash. Rejects relative paths and names that no
/// filesystem or tool here can carry (NUL, newline, double quote).
pub fn normalize(path: &str) -> Result<String, FsError> {
    let invalid = |reason: &str| FsError::InvalidPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if !path.starts_with('/') {
        return Err(invalid("must be absolute"));
    }
    if path.contains(['\0', '\n', '"']) {
        return Err(invalid("contains NUL, newline or a double quote"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c if c.len() > 255 => return Err(invalid("a component is longer than 255 bytes")),
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Refuses a path to create or change that holds a control character. debugfs ends a script
/// line at '\r' as well as '\n' (so "/etc/a\rb" would run a different command than planned),
/// and such names are trouble for every tool that later lists them. Reading them is fine.
pub fn writable(path: &str) -> Result<(), FsError> {
    match path.chars().find(|c| c.is_control()) {
        Some(c) => Err(FsError::InvalidPath {
            path: path.to_string(),
            reason: format!(
                "contains the control character {c:?}; imagegen does not make names with \
                 control characters"
            ),
        }),
        None => Ok(()),
    }
}

/// Splits a normalized path into its parent and its last component. `None` for "/".
pub fn split(path: &str) -> Option<(&str, &str)> {
    if path == "/" {
        return None;
    }
    let i = path.rfind('/')?;
    let parent = if i == 0 { "/" } else { &path[..i] };
    Some((parent, &path[i + 1..]))
}

/// Joins a normalized directory path and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(
            normalize("//etc///ssh/./x/../sshd_config/").unwrap(),
            "/etc/ssh/sshd_config"
        );
        assert_eq!(normalize("/../..").unwrap(), "/");
        assert!(normalize("etc").is_err());
        assert!(normalize("/a\nb").is_err());
        assert!(normalize("/a\"b").is_err());
    }

    #[test]
    fn control_characters_are_readable_not_writable() {
        for c in ['\r', '\t', '\x1b', '\x7f', '\u{85}'] {
            let p = format!("/a{c}b");
            assert_eq!(normalize(&p).unwrap(), p);
            let err = writable(&p).unwrap_err().to_string();
            assert!(err.contains("control character"), "{err}");
        }
        writable("/caf\u{e9}").unwrap();
    }

    #[test]
    fn splits_and_joins() {
        assert_eq!(split("/"), None);
        assert_eq!(split("/etc"), Some(("/", "etc")));
        assert_eq!(split("/etc/ssh"), Some(("/etc", "ssh")));
        assert_eq!(join("/", "etc"), "/etc");
        assert_eq!(join("/etc", "ssh"), "/etc/ssh");
    }
}
