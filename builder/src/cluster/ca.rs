//! The cluster's certificate authorities, made before k3s first starts so that the builder can
//! mint the join token and sign the operator's kubeconfig itself.
//!
//! k3s uses CA files it finds under `/var/lib/rancher/k3s/server/tls/` at the first start of
//! the first server instead of making its own (k3s docs, "Custom CA Certificates"; k3s's
//! `contrib/util/generate-custom-ca-certs.sh`). The file names are the ones that script leaves
//! for k3s: `client-ca`, `server-ca`, `request-header-ca`, `etcd/peer-ca`, `etcd/server-ca`,
//! each a `.crt` and a `.key`, and `service.key`, the service-account issuer key.
//!
//! Each CA is self-signed, ECDSA P-256, valid ten years, as the CAs k3s makes by itself
//! (dynamiclistener's `NewSelfSignedCACert`; k3s docs: "valid for 10 years"), with the script's
//! `v3_ca` extensions: subject and authority key identifiers, `basicConstraints = critical,
//! CA:true`, `keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign`, and its
//! subject `CN=k3s-<name>-ca@<unix time>`.
//!
//! Why not the script's root and intermediate CA above them: `/cacerts` serves `server-ca.crt`
//! as it is on disk, and k3s hashes a bundle of more than one certificate differently from a
//! single one (`pkg/clientaccess/token.go`, `hashCA`: the DER of the chain's root instead of the
//! file's bytes; `imagegen_firstboot::ca_hash` follows it). One self-signed certificate gives the
//! same hash in every k3s release, including those before the chain rule, and needs no root key
//! kept anywhere.
//!
//! `service.key` is RSA 2048 in PKCS#1 PEM, what the script's `openssl genrsa -traditional 2048`
//! writes; ring cannot make RSA keys, so ssh-keygen does (`-m PEM`), as it makes the host keys.

use super::ClusterError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use std::path::Path;
use std::process::Command;
use time::OffsetDateTime;

/// Where k3s looks for the CA files on a server.
pub const TLS_DIR: &str = "/var/lib/rancher/k3s/server/tls";

/// The CAs, by their path under [`TLS_DIR`] without extension, and the name in their CN.
pub const CAS: [(&str, &str); 5] = [
    ("client-ca", "client"),
    ("server-ca", "server"),
    ("request-header-ca", "request-header"),
    ("etcd/peer-ca", "etcd-peer"),
    ("etcd/server-ca", "etcd-server"),
];
pub const SERVICE_KEY: &str = "service.key";

/// Ten years, as k3s's own CAs.
const VALIDITY_DAYS: i64 = 3650;

/// One file of the set, by its path under [`TLS_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    pub path: String,
    pub content: Vec<u8>,
    /// A private key: 0600 on the node, a secret in the plan.
    pub private: bool,
}

/// Every file of the set, in a fixed order.
pub fn file_names() -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = CAS
        .iter()
        .flat_map(|(p, _)| [(format!("{p}.crt"), false), (format!("{p}.key"), true)])
        .collect();
    v.push((SERVICE_KEY.into(), true));
    v
}

/// Makes the set in `dir` (which exists, private and empty), dated `now` (unix seconds).
pub fn generate(dir: &Path, now: i64) -> Result<(), ClusterError> {
    std::fs::create_dir_all(dir.join("etcd")).map_err(ClusterError::io(dir))?;
    let not_before = OffsetDateTime::from_unix_timestamp(now)
        .map_err(|e| ClusterError::Invalid(format!("time {now}: {e}")))?;
    for (path, name) in CAS {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(&format!("k3s-{name}-ca@{now}"));
        params.not_before = not_before;
        params.not_after = not_before + time::Duration::days(VALIDITY_DAYS);
        params.serial_number = Some(random_serial(dir)?);
        let cert = params.self_signed(&key)?;
        let crt = dir.join(format!("{path}.crt"));
        std::fs::write(&crt, cert.pem()).map_err(ClusterError::io(&crt))?;
        let k = dir.join(format!("{path}.key"));
        crate::identity::write_private(&k, key.serialize_pem().as_bytes())?;
    }
    rsa_key(&dir.join(SERVICE_KEY), 2048)
}

/// The parameters of a CA named `cn`, as the script's `v3_ca` section gives them. Used to make
/// one and, with its key, to sign with it: rcgen takes the issuer's name and key identifier
/// method from these.
pub fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    p.use_authority_key_identifier_extension = true;
    p
}

/// 16 random bytes, the top bit clear so the DER INTEGER stays positive (RFC 5280 4.1.2.2).
pub fn random_serial(for_path: &Path) -> Result<SerialNumber, ClusterError> {
    let hex = crate::identity::random_hex(16, for_path)?;
    let mut bytes = hex::decode(hex).map_err(|e| ClusterError::Invalid(e.to_string()))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn rsa_key(path: &Path, bits: u32) -> Result<(), ClusterError> {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "rsa",
            "-b",
            &bits.to_string(),
            "-m",
            "PEM",
            "-N",
            "",
        ])
        .args(["-C", "", "-f"])
        .arg(path)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ClusterError::Identity(crate::identity::IdentityError::NoSshKeygen)
            }
            _ => ClusterError::io(path)(e),
        })?;
    if !out.status.success() {
        return Err(ClusterError::Identity(
            crate::identity::IdentityError::SshKeygen(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ),
        ));
    }
    // Only the private key goes on the servers; k3s derives the public half.
    let public = path.with_extension("key.pub");
    std::fs::remove_file(&public).map_err(ClusterError::io(&public))
}

/// Reads the set from `dir`.
pub fn load(dir: &Path) -> Result<Vec<TlsFile>, ClusterError> {
    file_names()
        .into_iter()
        .map(|(path, private)| {
            let full = dir.join(&path);
            let content = std::fs::read(&full).map_err(ClusterError::io(&full))?;
            Ok(TlsFile {
                path,
                content,
                private,
            })
        })
        .collect()
}
