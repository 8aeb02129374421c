//! `[cluster] timezone`, `locale` and `keymap`, applied where every family's image keeps them.
//! All six families are Debian or Ubuntu userlands with the same three packages behind these
//! settings, so one implementation serves them: tzdata (/etc/localtime, a link into
//! /usr/share/zoneinfo, and /etc/timezone: tzset(3), Debian's tzdata maintainer scripts),
//! locales (/etc/default/locale read by pam_env, /etc/locale.gen read by locale-gen; Ubuntu's
//! locale-gen reads /etc/locale.gen too, locale-gen(8) of locales 2.35-0ubuntu3) and
//! keyboard-configuration (/etc/default/keyboard, keyboard(5)). cloud-init, where it runs,
//! is told to leave the locale alone (`locale: false` in distro::cloud::user_data) and is given
//! no timezone or keyboard, so it changes none of them.

use super::{Plan, PlanError};
use crate::config::Cluster;
use crate::fs::FileType;
use crate::image::{Image, ImageError};

/// Runs locale-gen once, on the first boot, for the locale the build enabled in
/// /etc/locale.gen: compiling a locale needs localedef on the node's own architecture, which
/// the build host may not have.
pub const LOCALE_GEN_UNIT: &str = "imagegen-locale-gen.service";
/// Left by [`LOCALE_GEN_UNIT`] once it ran.
pub const LOCALE_GEN_DONE: &str = "/var/lib/imagegen/locale-generated";
const LOCALE_GEN: &str = "/usr/sbin/locale-gen";

/// The changes for the cluster's time zone, locale and keyboard layout: the same on every node
/// (public).
pub fn plan(image: &mut Image, c: &Cluster, p: &mut Plan) -> Result<(), PlanError> {
    if let Some(tz) = &c.timezone {
        timezone(image, tz.get_ref(), p)?;
    }
    if let Some(l) = &c.locale {
        locale(image, l.get_ref(), p)?;
    }
    if let Some(k) = &c.keymap {
        keymap(image, k.get_ref(), p)?;
    }
    Ok(())
}

fn timezone(image: &mut Image, tz: &str, p: &mut Plan) -> Result<(), PlanError> {
    invalid(crate::check::locale::timezone_problem(tz), "timezone", tz)?;
    let zone = format!("/usr/share/zoneinfo/{tz}");
    match image.lstat(&zone)? {
        Some(s) if s.file_type != FileType::Directory => {}
        _ => {
            return Err(PlanError::Invalid(format!(
                "timezone {tz:?} is not in this image's /usr/share/zoneinfo: give a zone of \
                 tzdata such as \"Europe/Berlin\" (timedatectl list-timezones)"
            )));
        }
    }
    // Relative, as Debian's tzdata writes it: the link stays right wherever the filesystem is
    // mounted (the build reads it on the host).
    p.symlink("/etc/localtime", &format!("../usr/share/zoneinfo/{tz}"));
    p.file("/etc/timezone", format!("{tz}\n").into_bytes(), 0o644);
    Ok(())
}

fn locale(image: &mut Image, locale: &str, p: &mut Plan) -> Result<(), PlanError> {
    invalid(
        crate::check::locale::locale_problem(locale),
        "locale",
        locale,
    )?;
    // glibc 2.35+ has C.UTF-8 built in (Debian 12, Ubuntu 24.04): nothing to generate.
    if !matches!(locale, "C" | "POSIX" | "C.UTF-8" | "C.utf8") {
        let supported = read_optional(image, "/usr/share/i18n/SUPPORTED")?.ok_or_else(|| {
            PlanError::Invalid(format!(
                "locale {locale:?}: this image has no /usr/share/i18n/SUPPORTED (the locales \
                 package), so only C.UTF-8 can be set"
            ))
        })?;
        let entry = supported
            .lines()
            .find(|l| l.split_whitespace().next() == Some(locale))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .ok_or_else(|| {
                PlanError::Invalid(format!(
                    "locale {locale:?} is not in this image's /usr/share/i18n/SUPPORTED: give \
                     one listed there, such as \"en_US.UTF-8\""
                ))
            })?;
        let list = read_optional(image, "/etc/locale.gen")?.unwrap_or_default();
        if let Some(new) = enable_locale(&list, &entry) {
            if image.lstat(LOCALE_GEN)?.is_none() {
                return Err(PlanError::Invalid(format!(
                    "locale {locale:?}: this image has no {LOCALE_GEN} to generate it with \
                     (the locales package)"
                )));
            }
            p.file("/etc/locale.gen", new.into_bytes(), 0o644);
            p.file(
                &format!("/etc/systemd/system/{LOCALE_GEN_UNIT}"),
                locale_gen_unit().into_bytes(),
                0o644,
            );
            let wants = "/etc/systemd/system/multi-user.target.wants";
            p.dir(wants, 0o755);
            p.symlink(
                &format!("{wants}/{LOCALE_GEN_UNIT}"),
                &format!("/etc/systemd/system/{LOCALE_GEN_UNIT}"),
            );
        }
    }
    p.file(
        "/etc/default/locale",
        format!("# Written by imagegen from [cluster] locale.\nLANG={locale}\n").into_bytes(),
        0o644,
    );
    Ok(())
}

/// /etc/locale.gen with `entry` ("de_DE.UTF-8 UTF-8") enabled: its commented line uncommented,
/// or the line added. None when it is enabled already (then the image has generated it).
pub fn enable_locale(text: &str, entry: &str) -> Option<String> {
    let same = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ") == entry;
    if text.lines().any(same) {
        return None;
    }
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix('#') {
            Some(rest) if !found && same(rest) => {
                found = true;
                entry.to_string()
            }
            _ => l.to_string(),
        })
        .collect();
    if !found {
        lines.push(entry.to_string());
    }
    Some(lines.join("\n") + "\n")
}

fn locale_gen_unit() -> String {
    format!(
        "# Written by imagegen: generates the locale [cluster] locale enabled in\n\
         # /etc/locale.gen, once, on the node (localedef runs on the node's architecture).\n\
         [Unit]\n\
         Description=Generate the locales of /etc/locale.gen (imagegen, first boot)\n\
         ConditionPathExists=!{LOCALE_GEN_DONE}\n\
         After=local-fs.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={LOCALE_GEN}\n\
         ExecStartPost=/bin/mkdir -p /var/lib/imagegen\n\
         ExecStartPost=/usr/bin/touch {LOCALE_GEN_DONE}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

fn keymap(image: &mut Image, keymap: &str, p: &mut Plan) -> Result<(), PlanError> {
    invalid(
        crate::check::locale::keymap_problem(keymap),
        "keymap",
        keymap,
    )?;
    let layout = format!("\"{keymap}\"");
    let text = match read_optional(image, "/etc/default/keyboard")? {
        // A variant belongs to the layout it was chosen for.
        Some(t) => {
            let t = crate::distro::set_shell_var(&t, "XKBLAYOUT", &layout);
            crate::distro::set_shell_var(&t, "XKBVARIANT", "\"\"")
        }
        None => format!(
            "# Written by imagegen from [cluster] keymap; see keyboard(5).\n\
             XKBMODEL=\"pc105\"\nXKBLAYOUT={layout}\nXKBVARIANT=\"\"\nXKBOPTIONS=\"\"\n\
             BACKSPACE=\"guess\"\n"
        ),
    };
    p.file("/etc/default/keyboard", text.into_bytes(), 0o644);
    Ok(())
}

/// `build` of a config that `check` was not run on still refuses a bad name.
fn invalid(problem: Option<String>, what: &str, value: &str) -> Result<(), PlanError> {
    match problem {
        Some(why) => Err(PlanError::Invalid(format!("{what} {value:?}: {why}"))),
        None => Ok(()),
    }
}

pub(super) fn read_optional(image: &mut Image, path: &str) -> Result<Option<String>, PlanError> {
    match image.read_file(path) {
        Ok(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| PlanError::Invalid(format!("{path} is not UTF-8 text"))),
        Err(ImageError::Fs(crate::fs::FsError::NotFound(_))) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locale_gen_lines() {
        let list = "# comment\n# de_DE.UTF-8 UTF-8\n#  en_US.UTF-8   UTF-8\nen_GB.UTF-8 UTF-8\n";
        assert_eq!(
            enable_locale(list, "en_US.UTF-8 UTF-8").unwrap(),
            "# comment\n# de_DE.UTF-8 UTF-8\nen_US.UTF-8 UTF-8\nen_GB.UTF-8 UTF-8\n"
        );
        assert_eq!(enable_locale(list, "en_GB.UTF-8 UTF-8"), None);
        assert_eq!(
            enable_locale("", "fr_FR.UTF-8 UTF-8").unwrap(),
            "fr_FR.UTF-8 UTF-8\n"
        );
        assert_eq!(
            enable_locale("# fr_FR ISO-8859-1\n", "fr_FR.UTF-8 UTF-8").unwrap(),
            "# fr_FR ISO-8859-1\nfr_FR.UTF-8 UTF-8\n"
        );
    }
}
