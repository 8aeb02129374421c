//! Reads every change of a batch back through ext4-view, independently of debugfs.

use ext4_view::Ext4;

use super::debugfs::{Expect, Plan};
use super::read;
use crate::fs::{FileType, FsError, Meta, Stat};

pub fn verify(fs: &Ext4, plan: &Plan) -> Result<(), FsError> {
    for (path, e) in &plan.expect {
        let fail = |detail: String| FsError::Verify {
            path: path.clone(),
            detail,
        };
        let stat = read::lstat(fs, path)?;
        let stat = match (e, stat) {
            (Expect::Absent, None) => continue,
            (Expect::Absent, Some(s)) => {
                return Err(fail(format!(
                    "expected it removed, found a {:?}",
                    s.file_type
                )));
            }
            (_, None) => return Err(fail("expected it to exist, found nothing".into())),
            (_, Some(s)) => s,
        };
        match e {
            Expect::File { staged, meta } => {
                want_type(&stat, FileType::Regular).map_err(fail)?;
                want_meta(&stat, meta).map_err(fail)?;
                let mut src = plan.input(*staged)?;
                if !read::same_content(fs, path, &mut src)? {
                    return Err(fail("content differs from what was written".into()));
                }
            }
            Expect::Dir { meta } => {
                want_type(&stat, FileType::Directory).map_err(fail)?;
                want_meta(&stat, meta).map_err(fail)?;
            }
            Expect::Symlink { target, uid, gid } => {
                want_type(&stat, FileType::Symlink).map_err(fail)?;
                want_owner(&stat, *uid, *gid).map_err(fail)?;
                let found = read::read_link(fs, path)?;
                if &found != target {
                    return Err(fail(format!("target is {found:?}, expected {target:?}")));
                }
            }
            Expect::Meta { mode, owner } => {
                if let Some(mode) = mode {
                    want_mode(&stat, *mode).map_err(fail)?;
                }
                if let Some((uid, gid)) = owner {
                    want_owner(&stat, *uid, *gid).map_err(fail)?;
                }
            }
            Expect::Absent => {}
        }
    }
    Ok(())
}

fn want_type(stat: &Stat, t: FileType) -> Result<(), String> {
    if stat.file_type == t {
        Ok(())
    } else {
        Err(format!("expected a {t:?}, found a {:?}", stat.file_type))
    }
}

fn want_mode(stat: &Stat, mode: u32) -> Result<(), String> {
    if stat.mode == mode & 0o7777 {
        Ok(())
    } else {
        Err(format!(
            "mode is {:#o}, expected {:#o}",
            stat.mode,
            mode & 0o7777
        ))
    }
}

fn want_owner(stat: &Stat, uid: u32, gid: u32) -> Result<(), String> {
    if (stat.uid, stat.gid) == (uid, gid) {
        Ok(())
    } else {
        Err(format!(
            "owner is {}:{}, expected {uid}:{gid}",
            stat.uid, stat.gid
        ))
    }
}

fn want_meta(stat: &Stat, meta: &Meta) -> Result<(), String> {
    want_mode(stat, meta.mode)?;
    want_owner(stat, meta.uid, meta.gid)?;
    if stat.mtime != meta.mtime {
        return Err(format!("mtime is {}, expected {}", stat.mtime, meta.mtime));
    }
    Ok(())
}
