//! The operator's admin kubeconfig, signed by the cluster's client CA, so `kubectl` works the
//! moment the cluster is up, without SSH to a server.
//!
//! It carries what k3s gives its own admin certificate (`pkg/daemons/control/deps`,
//! `genClientCerts`: `system:admin` in the `system:masters` group, a client-auth certificate
//! from the client CA): kube-apiserver takes the CN as the user and each O as a group, and
//! `system:masters` is bound to cluster-admin. The key is ECDSA P-256 and the certificate is
//! valid a year, as k3s's own client certificates; run `imagegen kubeconfig` again for a new one.

use super::{ClusterError, Trust, ca};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

pub const ADMIN_USER: &str = "system:admin";
pub const ADMIN_GROUP: &str = "system:masters";
const VALIDITY_DAYS: i64 = 365;

/// An admin kubeconfig for cluster `name` at `server_url`, its certificate valid from `now`.
pub fn render(
    trust: &Trust,
    name: &str,
    server_url: &str,
    now: i64,
) -> Result<String, ClusterError> {
    let ca_key = KeyPair::from_pem(&String::from_utf8_lossy(trust.file("client-ca.key")))?;
    let issuer = Issuer::new(
        ca::ca_params(&format!("k3s-client-ca@{}", trust.created)),
        ca_key,
    );
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, ADMIN_GROUP);
    p.distinguished_name.push(DnType::CommonName, ADMIN_USER);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let start = OffsetDateTime::from_unix_timestamp(now)
        .map_err(|e| ClusterError::Invalid(format!("time {now}: {e}")))?;
    p.not_before = start;
    p.not_after = start + time::Duration::days(VALIDITY_DAYS);
    p.serial_number = Some(ca::random_serial(std::path::Path::new("/dev/urandom"))?);
    let cert = p.signed_by(&key, &issuer)?;

    let b64 = |b: &[u8]| STANDARD.encode(b);
    // Names and the URL are JSON strings, which YAML reads as the same strings.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let user = format!("{name}-admin");
    Ok(format!(
        "# Written by imagegen: cluster-admin ({ADMIN_USER}, group {ADMIN_GROUP}) of {name}.\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {n}\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
         users:\n\
         - name: {u}\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\n\
         contexts:\n\
         - name: {n}\n  context:\n    cluster: {n}\n    user: {u}\n\
         current-context: {n}\n",
        n = q(name),
        u = q(&user),
        url = q(server_url),
        ca = b64(trust.file("server-ca.crt")),
        crt = b64(cert.pem().as_bytes()),
        key = b64(key.serialize_pem().as_bytes()),
    ))
}
