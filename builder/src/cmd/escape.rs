//! Text from inside an image, made safe to print: file names, labels and fstab entries are
//! whatever the image's maker chose, and a name holding ESC sequences or '\r' would drive
//! the terminal of whoever lists it (retitle it, hide lines, fake output).
//!
//! Control characters are written as GNU `ls -b` writes them: C escapes for the common ones,
//! three octal digits per byte for the rest, and a backslash doubled so the output stays
//! unambiguous.

use std::borrow::Cow;

/// A name with its control characters escaped, and backslashes doubled so that `a\rb` and
/// a name holding '\r' print differently.
pub fn escape(name: &str) -> Cow<'_, str> {
    escape_with(name, &[], true)
}

/// A message with its control characters escaped but those in `keep` (e.g. the newlines of a
/// tool's report); backslashes stay as they are.
pub fn escape_controls<'a>(text: &'a str, keep: &[char]) -> Cow<'a, str> {
    escape_with(text, keep, false)
}

fn escape_with<'a>(text: &'a str, keep: &[char], backslash: bool) -> Cow<'a, str> {
    let needs = |c: char| (c.is_control() && !keep.contains(&c)) || (backslash && c == '\\');
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs(c) {
            out.push(c);
            continue;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\x0b' => out.push_str("\\v"),
            '\x0c' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:03o}"));
                }
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_gnu_ls_b() {
        assert_eq!(escape("plain-name.conf"), "plain-name.conf");
        assert!(matches!(escape("caf\u{e9}"), Cow::Borrowed(_)));
        assert_eq!(escape("a\rb"), "a\\rb");
        assert_eq!(escape("c\x1b[31md"), "c\\033[31md");
        assert_eq!(escape("del\x7f"), "del\\177");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("c1\u{85}"), "c1\\302\\205");
        assert_eq!(
            escape_controls("two\nlines\x1b \\", &['\n']),
            "two\nlines\\033 \\"
        );
    }
}
