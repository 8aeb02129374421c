//! `[[files]]`, `[[nodes.files]]` and `[firstboot] scripts`: the operator's own files, placed
//! like every other change. Cluster files are the same on every node (public); a node's own are
//! [`Kind::Node`], so `personalize` seeds them. Owners are names of the image's own accounts,
//! resolved here where the image is open: the same name has other ids in other images.

use super::{Kind, Plan, PlanError, users::Accounts};
use crate::check::files::{DEFAULT_MODE, dest_problem, parse_mode, parse_owner, staged_name};
use crate::config::FileEntry;
use imagegen_firstboot::config::SCRIPTS_DIR;
use std::path::{Path, PathBuf};

/// Plans the cluster's files and, unless `node` is None (a generic image), the node's own.
/// `accounts` is the image's account database as the plan leaves it (the admin added).
pub fn plan(
    cluster: &[FileEntry],
    node: Option<&[FileEntry]>,
    config_dir: &Path,
    accounts: &Accounts,
    p: &mut Plan,
) -> Result<(), PlanError> {
    let node = node.unwrap_or_default().iter().map(|f| (f, Kind::Node));
    for (f, kind) in cluster.iter().map(|f| (f, Kind::Public)).chain(node) {
        let dest = f.dest.get_ref();
        if let Some(why) = dest_problem(dest) {
            return Err(PlanError::Invalid(format!("files dest {dest:?} {why}")));
        }
        let mode = match &f.mode {
            Some(m) => {
                parse_mode(m.get_ref()).map_err(|e| PlanError::Invalid(format!("files {e}")))?
            }
            None => DEFAULT_MODE,
        };
        let (uid, gid) = match &f.owner {
            Some(o) => owner_ids(accounts, o.get_ref())?,
            None => (0, 0),
        };
        let source = config_dir.join(f.source.get_ref());
        let content = read_source(&source, "files source")?;
        parent_dirs(dest, p);
        p.file(dest, content, mode).owner(uid, gid).kind(kind);
    }
    Ok(())
}

/// Stages the scripts as `SCRIPTS_DIR/NN-name`, root 0755; returns their paths on the node, in
/// order, for node.toml.
pub fn scripts(
    sources: &[PathBuf],
    config_dir: &Path,
    p: &mut Plan,
) -> Result<Vec<PathBuf>, PlanError> {
    let mut staged = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let name = staged_name(i, s).ok_or_else(|| {
            PlanError::Invalid(format!(
                "firstboot script {}: its file name must be letters, digits, '.', '_' and '-'",
                s.display()
            ))
        })?;
        let content = read_source(&config_dir.join(s), "firstboot script")?;
        let dest = format!("{SCRIPTS_DIR}/{name}");
        p.dir(SCRIPTS_DIR, 0o755);
        p.file(&dest, content, 0o755);
        staged.push(PathBuf::from(dest));
    }
    Ok(staged)
}

/// Missing parents of `dest` made root 0755, as `mkdir -p` would; existing ones are left as
/// they are (`Op::Mkdir` with parents).
fn parent_dirs(dest: &str, p: &mut Plan) {
    if let Some(parent) = Path::new(dest).parent().and_then(Path::to_str)
        && parent != "/"
    {
        p.dir(parent, 0o755);
    }
}

/// The bytes of a source, read now: a node file travels in the seed by content, and a source
/// that vanished is a build error naming it, not a half-built image.
fn read_source(path: &Path, what: &str) -> Result<Vec<u8>, PlanError> {
    if !path.is_file() {
        return Err(PlanError::Invalid(format!(
            "{what} {} does not exist or is not a regular file",
            path.display()
        )));
    }
    std::fs::read(path).map_err(|source| PlanError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// "user:group" or "user" (its primary group) -> ids from the image's own databases.
fn owner_ids(acc: &Accounts, owner: &str) -> Result<(u32, u32), PlanError> {
    let (user, group) = parse_owner(owner).map_err(|e| PlanError::Invalid(format!("files {e}")))?;
    let entry = |db: &str, name: &str, uid_field: usize| -> Option<Vec<String>> {
        db.lines()
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(name) && f.len() > uid_field)
    };
    let pw = entry(&acc.passwd, user, 3).ok_or_else(|| {
        PlanError::Invalid(format!(
            "files owner {owner:?}: the image has no user {user:?} in /etc/passwd"
        ))
    })?;
    let id = |s: &str, what: &str| {
        s.parse::<u32>().map_err(|_| {
            PlanError::Invalid(format!(
                "files owner {owner:?}: {what} id {s:?} is not a number"
            ))
        })
    };
    let uid = id(&pw[2], "user")?;
    let gid = match group {
        Some(g) => {
            let gr = entry(&acc.group, g, 2).ok_or_else(|| {
                PlanError::Invalid(format!(
                    "files owner {owner:?}: the image has no group {g:?} in /etc/group"
                ))
            })?;
            id(&gr[2], "group")?
        }
        None => id(&pw[3], "group")?,
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_come_from_the_images_databases() {
        let acc = Accounts {
            passwd: "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n"
                .into(),
            shadow: String::new(),
            group: "root:x:0:\nwww-data:x:33:\nadm:x:4:\n".into(),
            gshadow: String::new(),
        };
        assert_eq!(owner_ids(&acc, "www-data:adm").unwrap(), (33, 4));
        assert_eq!(owner_ids(&acc, "www-data").unwrap(), (33, 33));
        let e = owner_ids(&acc, "nobody:root").unwrap_err().to_string();
        assert!(e.contains("\"nobody\"") && e.contains("/etc/passwd"), "{e}");
        let e = owner_ids(&acc, "root:wheel").unwrap_err().to_string();
        assert!(e.contains("\"wheel\"") && e.contains("/etc/group"), "{e}");
    }
}
