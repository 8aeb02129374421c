//! The cluster's join token, minted by the builder: `K10<ca-hash>::server:<secret>`.
//!
//! The format is k3s's (`pkg/clientaccess/token.go`): `K10`, the hex sha256 of the CA bundle
//! the server serves at `/cacerts`, `::`, then the credentials, here the `server` user and its
//! password, as in the token k3s itself writes to `server/token`. `/cacerts` serves the bytes
//! of `server/tls/server-ca.crt` unchanged (`pkg/server/handlers`, `CACerts`, `os.ReadFile`
//! of `Runtime.ServerCA`), and the hash is k3s's `hashCA` of those bytes, computed by the same
//! function the node agent checks `/cacerts` with (`imagegen_firstboot::ca_hash`).

use super::ClusterError;
use std::path::Path;

const SECRET_FILE: &str = "token-secret";

/// The full token for a server CA bundle and a secret; `None` when the bundle holds no
/// certificate k3s can parse.
pub fn mint(server_ca_bundle: &[u8], secret: &str) -> Option<String> {
    let hash = imagegen_firstboot::ca_hash::of_bundle(server_ca_bundle)?;
    Some(format!("K10{hash}::server:{secret}"))
}

/// Makes the random secret in `dir`: 32 bytes as hex, the length of the passwords k3s makes
/// for itself is 16 bytes; more costs nothing.
pub fn create_secret(dir: &Path) -> Result<(), ClusterError> {
    let path = dir.join(SECRET_FILE);
    let secret = crate::identity::random_hex(32, &path)?;
    crate::identity::write_private(&path, format!("{secret}\n").as_bytes())?;
    Ok(())
}

pub fn load_secret(dir: &Path) -> Result<String, ClusterError> {
    let path = dir.join(SECRET_FILE);
    let s = std::fs::read_to_string(&path).map_err(ClusterError::io(&path))?;
    let s = s.trim();
    // It goes after "server:" in a token k3s splits at the first ':' of the credentials.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ClusterError::Invalid(format!(
            "{} must hold letters and digits only",
            path.display()
        )));
    }
    Ok(s.to_string())
}

/// Why `token` is not a k3s join token, or `None`. Follows k3s's `parseToken`: `K10<hash>::`
/// then `user:password`, or a bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`; or a bare password
/// (which k3s accepts but cannot verify the server with: refused here, see the message).
pub fn token_problem(token: &str) -> Option<String> {
    let t = token.trim();
    if t.is_empty() {
        return Some("it is empty".into());
    }
    if t.contains(char::is_whitespace) {
        return Some("it has spaces or several lines; a k3s token is one word".into());
    }
    if !t.starts_with("K10") {
        return Some(
            "it has no K10<ca-hash>:: prefix, so the nodes could not verify the server before \
             sending it; use the full token from the server's /var/lib/rancher/k3s/server/token"
                .into(),
        );
    }
    match imagegen_firstboot::k3s::token_ca_hash(t) {
        Err(why) => Some(why),
        Ok(None) => Some(
            "its CA hash is empty (K10::...), so the nodes could not verify the server; use \
             the full token from the server's /var/lib/rancher/k3s/server/token"
                .into(),
        ),
        Ok(Some(_)) => {
            let creds = t.split_once("::").map_or("", |(_, c)| c);
            let bootstrap = creds.split_once('.').is_some_and(|(id, secret)| {
                id.len() == 6
                    && secret.len() == 16
                    && (id.bytes().chain(secret.bytes()))
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
            let basic = creds
                .split_once(':')
                .is_some_and(|(_, password)| !password.is_empty());
            (!bootstrap && !basic).then(|| {
                "after K10<hash>:: k3s expects user:password (server:...) or a bootstrap \
                 token (abcdef.0123456789abcdef)"
                    .into()
            })
        }
    }
}
