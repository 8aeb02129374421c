//! The one definition of a valid host name, node name and user name, used by the builder when
//! it checks cluster.toml and by the agent when it loads node.toml, so the two never disagree.

/// A DNS label by RFC 1123: 1-63 of `a-z`, `0-9` and `-`, not starting or ending with `-`.
/// Only lowercase: names are compared as strings (k3s node names, `seen` lists) and k3s
/// refuses uppercase node names.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A host name by RFC 1123: dot-separated labels, at most 253 characters in all.
pub fn is_hostname(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// A node name becomes the node's hostname and its k3s node name: a single label.
pub fn is_node_name(s: &str) -> bool {
    is_label(s)
}

/// What [`is_node_name`] accepts, for messages.
pub const NODE_NAME_RULE: &str =
    "1-63 of a-z, 0-9 and '-', not starting or ending with '-' (RFC 1123 host name label)";

/// A Debian package name by policy 5.6.7 (which refers to 5.6.1): lower-case letters, digits,
/// '+', '-' and '.', at least two characters, starting with a letter or digit. The agent hands
/// these to apt-get, where a leading '-' would be an option.
pub fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
        })
}

/// What [`is_package_name`] accepts, for messages.
pub const PACKAGE_NAME_RULE: &str = "lower-case letters, digits, '+', '-' and '.', at least two \
     characters, starting with a letter or digit (Debian policy 5.6.1)";

/// Debian useradd's default `NAME_REGEX` `^[a-z][-a-z0-9_]*\$?$` without the trailing `$`
/// (machine accounts), at most 32 characters. Strict enough to be pasted into sshd_config's
/// `AllowUsers` without a space or pattern character changing its meaning.
pub fn is_user_name(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= 32
        && matches!(b.next(), Some(c) if c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// What [`is_user_name`] accepts, for messages.
pub const USER_NAME_RULE: &str =
    "1-32 of a-z, 0-9, '-' and '_', starting with a letter (Debian useradd's NAME_REGEX)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for good in ["htop", "g++", "libc6", "python3.11", "0ad", "nfs-common"] {
            assert!(is_package_name(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "Htop",
            "-x",
            "htop=3.2",
            "htop/bookworm",
            "a b",
            "+x",
        ] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn node_names() {
        let l63 = "a".repeat(63);
        let l64 = "a".repeat(64);
        let accepted = ["pi", "pi4-a", "a", "0", "1pi", "a-b-c", "x9", l63.as_str()];
        let refused = [
            "",
            "pi-",
            "-pi",
            "-",
            "Pi",
            "PI4",
            "pi_4",
            "pi.lan",
            "pi 4",
            "pi\n",
            "pï",
            l64.as_str(),
        ];
        for n in accepted {
            assert!(is_node_name(n), "{n:?} should be accepted");
            assert!(is_hostname(n), "{n:?} should be a hostname");
        }
        for n in refused {
            assert!(!is_node_name(n), "{n:?} should be refused");
        }
    }

    #[test]
    fn host_names() {
        let l63 = "a".repeat(63);
        let max = [l63.as_str(); 4].join(".")[..253].to_string();
        let too_long = format!("{max}a");
        for n in ["pi.lan", "nas.example.org", "10.0.0.1", max.as_str()] {
            assert!(is_hostname(n), "{n:?} should be accepted");
        }
        let long_label = format!("{}.lan", "a".repeat(64));
        for n in [
            "",
            ".",
            "pi.",
            ".pi",
            "pi..lan",
            "pi-.lan",
            "pi.-lan",
            "Pi.lan",
            long_label.as_str(),
            too_long.as_str(),
        ] {
            assert!(!is_hostname(n), "{n:?} should be refused");
        }
    }

    #[test]
    fn user_names() {
        let u32 = format!("a{}", "b".repeat(31));
        let u33 = format!("a{}", "b".repeat(32));
        for u in ["ops", "a", "admin-1", "ad_min", "ops-", "o_", u32.as_str()] {
            assert!(is_user_name(u), "{u:?} should be accepted");
        }
        for u in [
            "",
            "1ops",
            "-ops",
            "_ops",
            "Ops",
            "oPs",
            "ops$",
            "op s",
            "ops,root",
            "op*",
            "ops\n",
            "öps",
            u33.as_str(),
        ] {
            assert!(!is_user_name(u), "{u:?} should be refused");
        }
    }
}
