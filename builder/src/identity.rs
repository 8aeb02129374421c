//! A node's identity: the things that must stay the same when a dead node is replaced by
//! flashing the same build again (SSH host keys, so users' known_hosts still match; the k3s
//! node password, so the server accepts the same name). Generated on the first build into a
//! state directory (0700) and reused by every rebuild.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Host key types sshd loads by default.
const HOST_KEY_TYPES: &[(&str, &[&str])] = &[
    ("ed25519", &["-t", "ed25519"]),
    ("ecdsa", &["-t", "ecdsa", "-b", "256"]),
    ("rsa", &["-t", "rsa", "-b", "3072"]),
];

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "ssh-keygen is needed to make the node's SSH host keys: install OpenSSH's client tools \
         (Debian: apt-get install openssh-client)"
    )]
    NoSshKeygen,
    #[error("ssh-keygen failed: {0}")]
    SshKeygen(String),
    #[error("{0} is readable by others; the state directory holds private keys: chmod 700 it")]
    TooOpen(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// "ed25519", "ecdsa", "rsa".
    pub kind: String,
    pub private: Vec<u8>,
    pub public: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub host_keys: Vec<HostKey>,
    /// The node's own key for sending backups to the NAS, used when the config names no
    /// shared one; its .pub must be authorized on the NAS.
    pub backup_key: HostKey,
    pub backup_key_pub_path: PathBuf,
    /// What k3s keeps in /etc/rancher/node/password and the server remembers per node name.
    pub k3s_node_password: String,
    /// The state directory it lives in, which also holds what the nodes share (the cluster's
    /// CA set and token, see `crate::cluster`).
    pub state_dir: PathBuf,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The node's identity from `state_dir/<node>/`, made there on first use.
pub fn load_or_create(state_dir: &Path, node: &str) -> Result<Identity, IdentityError> {
    make_private_dir(state_dir)?;
    let dir = state_dir.join(node);
    make_private_dir(&dir)?;
    let mut host_keys = Vec::new();
    for (kind, args) in HOST_KEY_TYPES {
        let private = dir.join(format!("ssh_host_{kind}_key"));
        let public = dir.join(format!("ssh_host_{kind}_key.pub"));
        if !private.exists() || !public.exists() {
            generate(&private, args, node)?;
        }
        host_keys.push(HostKey {
            kind: (*kind).to_string(),
            private: fs::read(&private).map_err(io(&private))?,
            public: fs::read(&public).map_err(io(&public))?,
        });
    }
    let bk = dir.join("backup_key");
    if !bk.exists() || !bk.with_extension("pub").exists() {
        generate(&bk, &["-t", "ed25519"], node)?;
    }
    let backup_key = HostKey {
        kind: "ed25519".into(),
        private: fs::read(&bk).map_err(io(&bk))?,
        public: fs::read(bk.with_extension("pub")).map_err(io(&bk))?,
    };
    let pw_path = dir.join("k3s-node-password");
    let k3s_node_password = match fs::read_to_string(&pw_path) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pw = random_hex(16, &pw_path)?;
            write_private(&pw_path, format!("{pw}\n").as_bytes())?;
            pw
        }
        Err(e) => return Err(io(&pw_path)(e)),
    };
    Ok(Identity {
        host_keys,
        backup_key,
        backup_key_pub_path: bk.with_extension("pub"),
        k3s_node_password,
        state_dir: state_dir.to_path_buf(),
    })
}

/// The default state directory: beside the config file.
pub fn default_dir(config_dir: &Path) -> PathBuf {
    config_dir.join(".imagegen-state")
}

pub(crate) fn make_private_dir(dir: &Path) -> Result<(), IdentityError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = fs::metadata(dir).map_err(io(dir))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(IdentityError::TooOpen(dir.display().to_string()));
            }
            Ok(())
        }
        Err(e) => Err(io(dir)(e)),
    }
}

fn generate(private: &Path, args: &[&str], node: &str) -> Result<(), IdentityError> {
    // ssh-keygen refuses to overwrite; a half-made pair from an interrupted run goes first.
    let public = private.with_extension("pub");
    for p in [private, public.as_path()] {
        if p.exists() {
            fs::remove_file(p).map_err(io(p))?;
        }
    }
    let out = Command::new("ssh-keygen")
        .args(args)
        .args(["-q", "-N", "", "-C"])
        .arg(format!("root@{node}"))
        .arg("-f")
        .arg(private)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => IdentityError::NoSshKeygen,
            _ => io(private)(e),
        })?;
    if !out.status.success() {
        return Err(IdentityError::SshKeygen(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

pub(crate) fn random_hex(bytes: usize, for_path: &Path) -> Result<String, IdentityError> {
    let mut buf = vec![0u8; bytes];
    let mut f = fs::File::open("/dev/urandom").map_err(io(Path::new("/dev/urandom")))?;
    std::io::Read::read_exact(&mut f, &mut buf).map_err(io(for_path))?;
    Ok(hex::encode(buf))
}

pub(crate) fn write_private(path: &Path, content: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(content).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_per_node_distinct_between_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a1 = load_or_create(&state, "a").unwrap();
        let a2 = load_or_create(&state, "a").unwrap();
        let b = load_or_create(&state, "b").unwrap();
        assert_eq!(a1, a2);
        assert_ne!(a1.k3s_node_password, b.k3s_node_password);
        for (x, y) in a1.host_keys.iter().zip(&b.host_keys) {
            assert_ne!(x.private, y.private);
        }
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // ssh-keygen itself reads the key back and derives the same public key.
        let key = state.join("a/ssh_host_ed25519_key");
        let out = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success());
        let derived = String::from_utf8(out.stdout).unwrap();
        let stored = String::from_utf8(a1.host_keys[0].public.clone()).unwrap();
        assert!(stored.starts_with(derived.trim()), "{stored} vs {derived}");
    }

    #[test]
    fn an_open_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            load_or_create(&state, "a"),
            Err(IdentityError::TooOpen(_))
        ));
    }
}
