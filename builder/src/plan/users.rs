//! Account databases (/etc/passwd, shadow, group, gshadow) edited as text, the way
//! useradd would leave them, without running anything inside the image.

/// The first uid/gid useradd hands out to people (Debian's UID_MIN/GID_MIN).
const FIRST_UID: u32 = 1000;
const LAST_UID: u32 = 59999;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsersError {
    #[error("/etc/{file} line {line}: {detail}")]
    Malformed {
        file: &'static str,
        line: usize,
        detail: String,
    },
    #[error("no free uid/gid between {FIRST_UID} and {LAST_UID}")]
    Exhausted,
}

/// The four account files, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: String,
    pub shadow: String,
    pub group: String,
    pub gshadow: String,
}

/// What `add_admin` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// Whether the account existed already (it is then updated, not duplicated).
    pub existed: bool,
}

fn rows<'a>(
    text: &'a str,
    file: &'static str,
    min_fields: usize,
) -> Result<Vec<Vec<&'a str>>, UsersError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < min_fields {
                Err(UsersError::Malformed {
                    file,
                    line: i + 1,
                    detail: format!("{} fields, expected {min_fields}", f.len()),
                })
            } else {
                Ok(f)
            }
        })
        .collect()
}

fn join_lines(lines: Vec<String>) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

impl Accounts {
    /// Adds (or updates) the admin account: its own group, a locked password (SSH keys only),
    /// membership in `groups` that exist in the image. Idempotent.
    pub fn add_admin(&mut self, name: &str, groups: &[&str]) -> Result<Admin, UsersError> {
        let passwd = rows(&self.passwd, "passwd", 7)?;
        let group = rows(&self.group, "group", 4)?;
        rows(&self.shadow, "shadow", 9)?;
        rows(&self.gshadow, "gshadow", 4)?;

        let existing = passwd.iter().find(|f| f[0] == name);
        let (uid, gid, home, existed) = match existing {
            Some(f) => {
                let num = |s: &str, what: &str| {
                    s.parse::<u32>().map_err(|_| UsersError::Malformed {
                        file: "passwd",
                        line: 0,
                        detail: format!("{what} of {name} is {s:?}"),
                    })
                };
                (num(f[2], "uid")?, num(f[3], "gid")?, f[5].to_string(), true)
            }
            None => {
                let used_uids: Vec<u32> = passwd.iter().filter_map(|f| f[2].parse().ok()).collect();
                let used_gids: Vec<u32> = group.iter().filter_map(|f| f[2].parse().ok()).collect();
                // One number for both, as useradd does with USERGROUPS_ENAB.
                let id = (FIRST_UID..=LAST_UID)
                    .find(|i| !used_uids.contains(i) && !used_gids.contains(i))
                    .ok_or(UsersError::Exhausted)?;
                (id, id, format!("/home/{name}"), false)
            }
        };

        if !existed {
            let mut p: Vec<String> = self.passwd.lines().map(str::to_string).collect();
            p.retain(|l| !l.trim().is_empty());
            p.push(format!("{name}:x:{uid}:{gid}::{home}:/bin/bash"));
            self.passwd = join_lines(p);
        }
        // '!' locks password login; '*' would also block key login on some PAM setups. An
        // empty last-change field disables aging: 0 would force a password change at the
        // first login, which locks out a key-only account.
        self.shadow = upsert(&self.shadow, name, &format!("{name}:!::0:99999:7:::"));
        if !group.iter().any(|f| f[0] == name) {
            let mut g: Vec<String> = self.group.lines().map(str::to_string).collect();
            g.retain(|l| !l.trim().is_empty());
            g.push(format!("{name}:x:{gid}:"));
            self.group = join_lines(g);
        }
        if !self
            .gshadow
            .lines()
            .any(|l| l.split(':').next() == Some(name))
        {
            let mut g: Vec<String> = self.gshadow.lines().map(str::to_string).collect();
            g.retain(|l| !l.trim().is_empty());
            g.push(format!("{name}:!::"));
            self.gshadow = join_lines(g);
        }
        for g in groups {
            self.group = add_member(&self.group, g, name, 3);
            self.gshadow = add_member(&self.gshadow, g, name, 3);
        }
        Ok(Admin {
            uid,
            gid,
            home,
            existed,
        })
    }

    /// Locks the password of every account except `keep` that has a usable one, so no vendor
    /// default password (Armbian's root 1234, Ubuntu's ubuntu) survives. Returns who was locked.
    pub fn lock_passwords_except(&mut self, keep: &str) -> Vec<String> {
        let mut locked = Vec::new();
        let lines: Vec<String> = self
            .shadow
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                if f.len() >= 2 && f[0] != keep && usable_password(f[1]) {
                    locked.push(f[0].to_string());
                    let new = format!("!{}", f[1]);
                    f[1] = &new;
                    return f.join(":");
                }
                l.to_string()
            })
            .collect();
        self.shadow = join_lines(lines);
        locked
    }

    /// Names of accounts with a uid in the human range other than `except`.
    pub fn human_users(&self, except: &str) -> Vec<String> {
        self.passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let uid: u32 = f.get(2)?.parse().ok()?;
                (f[0] != except && (FIRST_UID..=LAST_UID).contains(&uid)).then(|| f[0].to_string())
            })
            .collect()
    }
}

fn usable_password(field: &str) -> bool {
    !(field.is_empty() || field.starts_with('!') || field.starts_with('*'))
}

fn upsert(text: &str, name: &str, line: &str) -> String {
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            if l.split(':').next() == Some(name) {
                found = true;
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        lines.push(line.to_string());
    }
    join_lines(lines)
}

/// Adds `user` to the comma-separated member list in field `field` of group `group`, if that
/// group exists.
fn add_member(text: &str, group: &str, user: &str, field: usize) -> String {
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f: Vec<String> = l.split(':').map(str::to_string).collect();
            if f[0] == group && f.len() > field {
                let mut members: Vec<&str> =
                    f[field].split(',').filter(|m| !m.is_empty()).collect();
                if !members.contains(&user) {
                    members.push(user);
                }
                f[field] = members.join(",");
            }
            f.join(":")
        })
        .collect();
    join_lines(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn debian() -> Accounts {
        Accounts {
            passwd: "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n"
                .into(),
            shadow: "root:*:19000:0:99999:7:::\npi:$y$j9T$abc:19000:0:99999:7:::\n".into(),
            group: "root:x:0:\nsudo:x:27:pi\nadm:x:4:pi\npi:x:1000:\n".into(),
            gshadow: "root:*::\nsudo:*::pi\nadm:*::pi\npi:!::\n".into(),
        }
    }

    /// pwck/grpck from the shadow package check the files as the system would. `-R` makes
    /// them read a root directory of ours instead of the host's /etc (it needs root, as CI has).
    fn check_with_pwck(a: &Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        for (n, t) in [
            ("passwd", &a.passwd),
            ("shadow", &a.shadow),
            ("group", &a.group),
            ("gshadow", &a.gshadow),
        ] {
            std::fs::write(etc.join(n), t).unwrap();
        }
        for tool in ["pwck", "grpck"] {
            let out = Command::new(tool)
                .args(["-r", "-q", "-R"])
                .arg(dir.path())
                .output()
                .unwrap_or_else(|e| panic!("{tool} (package passwd) must be installed: {e}"));
            assert!(
                out.status.success(),
                "{tool}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn adds_an_admin_next_to_the_vendor_user() {
        let mut a = debian();
        let admin = a.add_admin("ops", &["sudo", "adm", "nonexistent"]).unwrap();
        assert_eq!((admin.uid, admin.gid, admin.existed), (1001, 1001, false));
        assert!(a.passwd.contains("ops:x:1001:1001::/home/ops:/bin/bash\n"));
        assert!(a.shadow.contains("ops:!::0:99999:7:::\n"));
        assert!(a.group.contains("sudo:x:27:pi,ops\n"));
        assert!(a.gshadow.contains("sudo:*::pi,ops\n"));
        check_with_pwck(&a);
        // Idempotent.
        let before = a.clone();
        let again = a.add_admin("ops", &["sudo", "adm"]).unwrap();
        assert!(again.existed);
        assert_eq!(a, before);
    }

    #[test]
    fn locks_vendor_passwords() {
        let mut a = debian();
        a.add_admin("ops", &[]).unwrap();
        assert_eq!(a.lock_passwords_except("ops"), vec!["pi".to_string()]);
        assert!(a.shadow.contains("pi:!$y$j9T$abc:"));
        assert_eq!(a.human_users("ops"), vec!["pi".to_string()]);
        check_with_pwck(&a);
    }

    #[test]
    fn malformed_lines_are_reported() {
        let mut a = debian();
        a.passwd.push_str("broken\n");
        let e = a.add_admin("ops", &[]).unwrap_err();
        assert_eq!(
            e,
            UsersError::Malformed {
                file: "passwd",
                line: 3,
                detail: "1 fields, expected 7".into()
            }
        );
    }
}
