//! The syntax of `[cluster] timezone`, `locale` and `keymap`. Whether the image has that zone
//! or locale is known only with the image open: `plan::locale` says so at build time.

/// Why `tz` cannot be a zone name of tzdata ("Europe/Berlin", "Etc/UTC"), or None. A name is a
/// relative path below /usr/share/zoneinfo (tzfile(5)); `..` or a leading `/` would point the
/// /etc/localtime link outside it.
pub fn timezone_problem(tz: &str) -> Option<String> {
    if tz.is_empty() {
        return Some("empty; give a zone such as \"Europe/Berlin\" or \"Etc/UTC\"".into());
    }
    if tz.starts_with('/') {
        return Some("a zone name is relative, e.g. \"Europe/Berlin\", not a path".into());
    }
    for part in tz.split('/') {
        let ok = !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'.'));
        if !ok {
            return Some(format!(
                "{part:?} is not part of a tzdata zone name (letters, digits, _ - + . \
                 between slashes, as in \"America/Argentina/Buenos_Aires\")"
            ));
        }
    }
    None
}

/// Why `locale` is not a glibc locale name (`language[_TERRITORY][.codeset][@modifier]`, as
/// in /usr/share/i18n/SUPPORTED, or C, C.UTF-8, POSIX), or None.
pub fn locale_problem(locale: &str) -> Option<String> {
    const RULE: &str = "expected language[_TERRITORY][.CODESET][@MODIFIER], e.g. \"en_US.UTF-8\"";
    if matches!(locale, "C" | "POSIX" | "C.UTF-8" | "C.utf8") {
        return None;
    }
    let (rest, modifier) = match locale.split_once('@') {
        Some((r, m)) => (r, Some(m)),
        None => (locale, None),
    };
    let (rest, codeset) = match rest.split_once('.') {
        Some((r, c)) => (r, Some(c)),
        None => (rest, None),
    };
    let (lang, territory) = match rest.split_once('_') {
        Some((l, t)) => (l, Some(t)),
        None => (rest, None),
    };
    let ok = (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && territory.is_none_or(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_uppercase()))
        && codeset.is_none_or(|c| {
            !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && modifier.is_none_or(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphanumeric()));
    (!ok).then(|| RULE.to_string())
}

/// Why `keymap` is not an XKB layout list (keyboard(5) XKBLAYOUT: "de", "us", "gb,de"), or
/// None.
pub fn keymap_problem(keymap: &str) -> Option<String> {
    let ok = keymap.split(',').all(|l| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    });
    (!ok).then(|| {
        "expected an XKB layout such as \"us\" or \"de\" (several separated by commas), as \
         XKBLAYOUT in /etc/default/keyboard"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for tz in [
            "Europe/Berlin",
            "Etc/GMT+1",
            "UTC",
            "America/Argentina/Buenos_Aires",
        ] {
            assert_eq!(timezone_problem(tz), None, "{tz}");
        }
        for tz in [
            "",
            "/etc/passwd",
            "../../etc/shadow",
            "Europe//Berlin",
            "Europe/Ber lin",
        ] {
            assert!(timezone_problem(tz).is_some(), "{tz}");
        }
        for l in [
            "en_US.UTF-8",
            "de_DE",
            "de_DE@euro",
            "C.UTF-8",
            "POSIX",
            "ast_ES.UTF-8",
        ] {
            assert_eq!(locale_problem(l), None, "{l}");
        }
        for l in ["", "en_us.UTF-8", "english", "en_US.", "en_US.UTF 8", "EN"] {
            assert!(locale_problem(l).is_some(), "{l}");
        }
        for k in ["de", "us", "gb,de"] {
            assert_eq!(keymap_problem(k), None, "{k}");
        }
        for k in ["", "DE", "de,", "de nodeadkeys"] {
            assert!(keymap_problem(k).is_some(), "{k}");
        }
    }
}
