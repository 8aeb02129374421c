//! ZeroTier: each node's identity, made once and kept in the identity state so a reflashed node
//! is the same member with the same address.

pub mod central;
pub mod identity;

use std::fs;
use std::io::Read;
use std::path::Path;

use crate::cluster::NodeFile;
use crate::identity::{io, make_private_dir, write_private};
pub use identity::Identity;

/// zerotier-one's home on Debian and Raspberry Pi OS (the agent's `[zerotier] home` default).
pub const HOME: &str = "/var/lib/zerotier-one";
/// The node's identity in its state directory, in zerotier-one's own `identity.secret` format.
pub const STATE_FILE: &str = "zerotier-identity.secret";

#[derive(Debug, thiserror::Error)]
pub enum ZeroTierError {
    #[error(transparent)]
    State(#[from] crate::identity::IdentityError),
    #[error(
        "{path} is not a ZeroTier identity zerotier-one would accept ({why}); restore it from a \
         backup, or remove it to make a new one (the node then becomes a new member with a new \
         address)"
    )]
    Damaged { path: String, why: String },
}

/// The node's ZeroTier identity from `state_dir/<node>/`, made there on first use.
pub fn load_or_create(state_dir: &Path, node: &str) -> Result<Identity, ZeroTierError> {
    make_private_dir(state_dir)?;
    let dir = state_dir.join(node);
    make_private_dir(&dir)?;
    let path = dir.join(STATE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let damaged = |why: String| ZeroTierError::Damaged {
                path: path.display().to_string(),
                why,
            };
            let id: Identity = text.parse().map_err(|e| damaged(format!("{e}")))?;
            if !id.has_private() {
                return Err(damaged("it has no private key".into()));
            }
            if !id.locally_validate() {
                return Err(damaged("it fails ZeroTier's own validation".into()));
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let urandom = Path::new("/dev/urandom");
            let mut f = fs::File::open(urandom).map_err(io(urandom))?;
            let id = Identity::generate(|buf| f.read_exact(buf).map_err(io(urandom)))?;
            let text = id
                .secret_string()
                .expect("a generated identity has its key");
            write_private(&path, text.as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(io(&path)(e).into()),
    }
}

/// The node's member address, printed for the operator (it is what ZeroTier Central lists);
/// returned for the manifest. Read after [`load_or_create`] checked the state in the same
/// build, so without hashing again.
pub fn announce(id: &crate::identity::Identity, node: &str) -> Result<String, ZeroTierError> {
    let path = id.state_dir.join(node).join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    let address = text
        .parse::<Identity>()
        .map_err(|e| ZeroTierError::Damaged {
            path: path.display().to_string(),
            why: e.to_string(),
        })?
        .address()
        .to_string();
    eprintln!("node {node}: ZeroTier member {address}");
    Ok(address)
}

/// `identity.secret` (root 0600) and `identity.public` in zerotier-one's home. zerotier-one
/// loads an existing identity.secret and only generates one when it is missing (node/Node.cpp,
/// `Node::Node`), rewriting identity.public if it differs; on Linux it first chowns its home
/// to the `zerotier-one` user it drops to (one.cpp `dropPrivileges`), so root-owned files are
/// fine. No trailing newline: that is how zerotier-one writes them.
pub fn image_files(id: &Identity) -> Vec<NodeFile> {
    vec![
        NodeFile {
            path: format!("{HOME}/identity.secret"),
            content: id
                .secret_string()
                .expect("the state holds the private key")
                .into_bytes(),
            mode: 0o600,
            secret: true,
        },
        NodeFile {
            path: format!("{HOME}/identity.public"),
            content: id.public_string().into_bytes(),
            mode: 0o644,
            secret: false,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn kept_in_the_state_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = load_or_create(&state, "a").unwrap();
        let path = state.join("a").join(STATE_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            a.secret_string().unwrap()
        );
        assert_eq!(load_or_create(&state, "a").unwrap(), a);
        let files = image_files(&a);
        assert_eq!(files[0].content, a.secret_string().unwrap().into_bytes());
        assert!(files[0].secret && files[0].mode == 0o600);
        assert!(!files[1].secret && files[1].mode == 0o644);
    }

    #[test]
    fn a_damaged_state_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        make_private_dir(&state).unwrap();
        make_private_dir(&state.join("a")).unwrap();
        let path = state.join("a").join(STATE_FILE);
        // ZeroTierOne's KNOWN_BAD_IDENTITY (selftest.cpp): well-formed, wrong address.
        let bad = "9e4df28b72:0:ac3d46abe0c21f3cfe7a6c8d6a85cfcffcb82fbd55af6a4d6350657c68200843fa2e16f9418bbd9702cae365f2af5fb4c420908b803a681d4daef6114d78a2d7:bd8dd6e4ce7022d2f812797a80c6ee8ad180dc4ebf301dec8b06d1be08832bddd63a2f1cfa7b2c504474c75bdc8898ba476ef92e8e2d0509f8441985171ff16e";
        write_private(&path, bad.as_bytes()).unwrap();
        let e = load_or_create(&state, "a").unwrap_err().to_string();
        assert!(e.contains("fails ZeroTier's own validation"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        write_private(&path, b"garbage").unwrap();
        assert!(matches!(
            load_or_create(&state, "a"),
            Err(ZeroTierError::Damaged { .. })
        ));
    }
}
