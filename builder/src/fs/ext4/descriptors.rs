//! Room in the open-file limit for the contents a debugfs batch holds open.
//!
//! Every file a batch writes stays open from planning to verification (its content reaches
//! debugfs as an inherited descriptor). Linux's usual soft limit of 1024 would cap a batch at
//! about a thousand files, so the soft limit is raised towards the hard one when a batch needs
//! it, as Go's runtime does for every program at start.

use crate::fs::FsError;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept free for everything else the process has open (the image, the tools'
/// pipes, the cache lock, ...).
const SPARE: u64 = 64;

/// Makes sure `count` more descriptors can be opened, raising the soft limit if needed.
pub fn reserve(count: usize) -> Result<(), FsError> {
    let need = count as u64 + SPARE;
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if need <= current {
        return Ok(());
    }
    let maximum = limit.maximum.unwrap_or(u64::MAX);
    if need > maximum {
        return Err(FsError::Unsupported(format!(
            "one batch writes {count} files, more than the open-file limit allows ({maximum}); \
             raise it (ulimit -n) or write fewer files at once"
        )));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(need),
            maximum: limit.maximum,
        },
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_beyond_the_hard_limit_is_refused_clearly() {
        reserve(1).unwrap();
        let err = reserve(usize::MAX / 2).unwrap_err();
        assert!(
            matches!(&err, FsError::Unsupported(m) if m.contains("ulimit -n")),
            "{err}"
        );
    }
}
