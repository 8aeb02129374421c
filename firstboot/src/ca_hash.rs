//! The CA hash k3s pins in a `K10<hash>::` token, computed the way k3s computes it.
//!
//! k3s (`pkg/clientaccess/token.go`, `hashCA`, used by `validateCACerts` when a node joins and by
//! `FormatTokenBytes` when the server writes its token) hashes a `/cacerts` bundle in one of two
//! ways:
//!
//! - one certificate: the sha256 of the bundle's bytes as served (the PEM file on disk);
//! - more than one: the certificates after the first are sorted into roots (no authority key id,
//!   or one equal to their own subject key id) and intermediates; if Go's `x509.Verify` builds a
//!   chain from the first certificate to one of those roots, the sha256 of that root's DER;
//!   if it cannot, the sha256 of the bytes again.
//!
//! A bundle that does not parse hashes to nothing in k3s (`validateCACerts` ignores the error and
//! compares with ""), so it matches no token. This module walks the chain as `Verify` does
//! (`crypto/x509/verify.go`: `Verify`, `buildChains`, `alreadyInChain`, `isValid` with the
//! default key usage `ExtKeyUsageServerAuth`; `x509.go`: `CheckSignatureFrom`), with
//! these differences, each chosen so the agent never refuses what k3s accepts on a node whose
//! clock is right:
//!
//! - validity dates are not checked: a board without a real-time clock boots with a stale time
//!   until NTP syncs, and a refusal is remembered (the TLS check makes the same choice); k3s
//!   checks the dates again itself when it joins;
//! - name constraints and certificate policies are not evaluated: a cluster CA carries no names
//!   for them to constrain;
//! - ECDSA with SHA-512 is not verifiable with `ring`: such a chain hashes as its bytes.

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_PKCS1_SHA1WITHRSA, OID_PKIX_AUTHORITY_INFO_ACCESS, OID_SHA1_WITH_RSA,
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_CERTIFICATE_POLICIES, OID_X509_EXT_CRL_DISTRIBUTION_POINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_INHIBIT_ANY_POLICY, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_NAME_CONSTRAINTS, OID_X509_EXT_POLICY_CONSTRAINTS, OID_X509_EXT_POLICY_MAPPINGS,
    OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::FromDer;

/// Go's `maxChainSignatureChecks`: a bundle crafted to make chain building explode stops here.
const MAX_SIGNATURE_CHECKS: usize = 100;

/// The hex sha256 k3s would put in a token for this `/cacerts` bundle, or `None` where k3s's
/// `hashCA` fails (no certificate, or one it cannot parse).
pub fn of_bundle(pem: &[u8]) -> Option<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ders = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let certs = ders
        .iter()
        .map(|d| match X509Certificate::from_der(d) {
            Ok(([], c)) => Some(Cert::new(c)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let hashed: &[u8] = match certs.as_slice() {
        [] => return None,
        [_] => pem,
        [leaf, others @ ..] => match root_of(leaf, others) {
            Some(root) => root.x.as_raw(),
            None => pem,
        },
    };
    Some(hex::encode(Sha256::digest(hashed)))
}

struct Cert<'a> {
    x: X509Certificate<'a>,
    subject_key_id: &'a [u8],
    authority_key_id: &'a [u8],
}

impl<'a> Cert<'a> {
    fn new(x: X509Certificate<'a>) -> Cert<'a> {
        let (mut subject_key_id, mut authority_key_id): (&[u8], &[u8]) = (&[], &[]);
        for ext in x.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => subject_key_id = k.0,
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    if let Some(k) = &a.key_identifier {
                        authority_key_id = k.0;
                    }
                }
                _ => {}
            }
        }
        Cert {
            x,
            subject_key_id,
            authority_key_id,
        }
    }

    /// `BasicConstraintsValid && IsCA`, and `MaxPathLen` (-1 for none).
    fn basic_constraints(&self) -> Option<(bool, Option<u32>)> {
        match self.x.basic_constraints() {
            Ok(Some(b)) => Some((b.value.ca, b.value.path_len_constraint)),
            _ => None,
        }
    }

    /// Go marks a critical extension it does not understand as unhandled, and `isValid` then
    /// refuses the certificate (`crypto/x509/parser.go`, `processExtensions`).
    fn has_unhandled_critical_extension(&self) -> bool {
        let handled = [
            OID_X509_EXT_KEY_USAGE,
            OID_X509_EXT_BASIC_CONSTRAINTS,
            OID_X509_EXT_SUBJECT_ALT_NAME,
            OID_X509_EXT_NAME_CONSTRAINTS,
            OID_X509_EXT_CRL_DISTRIBUTION_POINTS,
            OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
            OID_X509_EXT_EXTENDED_KEY_USAGE,
            OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
            OID_X509_EXT_CERTIFICATE_POLICIES,
            OID_X509_EXT_POLICY_CONSTRAINTS,
            OID_X509_EXT_POLICY_MAPPINGS,
            OID_X509_EXT_INHIBIT_ANY_POLICY,
            OID_PKIX_AUTHORITY_INFO_ACCESS,
        ];
        self.x
            .extensions()
            .iter()
            .any(|e| e.critical && !handled.contains(&e.oid))
    }

    /// Go's `CheckSignatureFrom`: the parent must be a CA (a v3 certificate without basic
    /// constraints is not), allowed to sign certificates if it has a key usage, and the
    /// signature must verify with an algorithm Go accepts (SHA-1 is refused since Go 1.18).
    fn signed_by(&self, parent: &Cert) -> bool {
        let v3 = parent.x.version().0 == 2;
        match parent.basic_constraints() {
            Some((false, _)) => return false,
            None if v3 => return false,
            _ => {}
        }
        if let Ok(Some(ku)) = parent.x.key_usage()
            && ku.value.flags != 0
            && !ku.value.key_cert_sign()
        {
            return false;
        }
        let alg = &self.x.signature_algorithm.algorithm;
        if *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA {
            return false;
        }
        self.x.verify_signature(Some(parent.x.public_key())).is_ok()
    }

    /// Go's `alreadyInChain`: same subject, same key and same alternative names as a
    /// certificate already in the chain (a loop through cross-signatures).
    fn already_in(&self, chain: &[&Cert]) -> bool {
        let san = |c: &Cert| -> Option<Vec<u8>> {
            c.x.extensions()
                .iter()
                .find(|e| e.oid == OID_X509_EXT_SUBJECT_ALT_NAME)
                .map(|e| e.value.to_vec())
        };
        chain.iter().any(|c| {
            c.x.subject().as_raw() == self.x.subject().as_raw()
                && c.x.public_key().raw == self.x.public_key().raw
                && san(c) == san(self)
        })
    }

    /// Go's `isValid` with `Verify`'s default key usage: a certificate that lists extended key
    /// usages must list server auth or any. A chain holding one that does not is never built.
    fn allows_server_auth(&self) -> bool {
        match self.x.extended_key_usage() {
            Ok(Some(eku)) => {
                let e = eku.value;
                let listed = e.any
                    || e.server_auth
                    || e.client_auth
                    || e.code_signing
                    || e.email_protection
                    || e.time_stamping
                    || e.ocsp_signing
                    || !e.other.is_empty();
                !listed || e.any || e.server_auth
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Root,
    Intermediate,
}

/// The root of the first chain Go's `Verify` would return for `leaf`, the rest of the bundle
/// sorted as `hashCA` sorts it.
fn root_of<'c>(leaf: &'c Cert<'c>, others: &'c [Cert<'c>]) -> Option<&'c Cert<'c>> {
    if leaf.has_unhandled_critical_extension() {
        return None;
    }
    let is_root =
        |c: &Cert| c.authority_key_id.is_empty() || c.authority_key_id == c.subject_key_id;
    // A pool holds each certificate once, in the order added (`CertPool.AddCert`).
    let mut roots: Vec<&Cert> = Vec::new();
    let mut intermediates: Vec<&Cert> = Vec::new();
    for c in others {
        let pool = if is_root(c) {
            &mut roots
        } else {
            &mut intermediates
        };
        if !pool.iter().any(|p| p.x.as_raw() == c.x.as_raw()) {
            pool.push(c);
        }
    }
    let chains: Vec<Vec<&Cert>> = if roots.iter().any(|r| r.x.as_raw() == leaf.x.as_raw()) {
        vec![vec![leaf]]
    } else {
        let mut checks = 0;
        build_chains(&[leaf], &roots, &intermediates, &mut checks)
    };
    chains
        .into_iter()
        .find(|chain| chain.iter().all(|c| c.allows_server_auth()))
        .and_then(|chain| chain.last().copied())
}

/// Go's `buildChains`: roots first, then intermediates, each pool's candidates in the order of
/// `findPotentialParents` (key ids that match, then where only one side has one, then the rest).
fn build_chains<'c>(
    chain: &[&'c Cert<'c>],
    roots: &[&'c Cert<'c>],
    intermediates: &[&'c Cert<'c>],
    checks: &mut usize,
) -> Vec<Vec<&'c Cert<'c>>> {
    let child = *chain.last().expect("a chain starts with its leaf");
    let mut found = Vec::new();
    for (kind, pool) in [(Kind::Root, roots), (Kind::Intermediate, intermediates)] {
        for parent in potential_parents(child, pool) {
            if parent.already_in(chain) {
                continue;
            }
            *checks += 1;
            if *checks > MAX_SIGNATURE_CHECKS {
                return found;
            }
            if !child.signed_by(parent) || !valid_as(parent, kind, chain) {
                continue;
            }
            let mut longer = chain.to_vec();
            longer.push(parent);
            match kind {
                Kind::Root => found.push(longer),
                Kind::Intermediate => {
                    found.extend(build_chains(&longer, roots, intermediates, checks))
                }
            }
        }
    }
    found
}

fn potential_parents<'c>(child: &Cert, pool: &[&'c Cert<'c>]) -> Vec<&'c Cert<'c>> {
    let by_name = pool
        .iter()
        .copied()
        .filter(|p| p.x.subject().as_raw() == child.x.issuer().as_raw());
    let (mut matching, mut one, mut mismatch) = (Vec::new(), Vec::new(), Vec::new());
    for p in by_name {
        let (ski, aki) = (p.subject_key_id, child.authority_key_id);
        if ski == aki {
            matching.push(p);
        } else if ski.is_empty() != aki.is_empty() {
            one.push(p);
        } else {
            mismatch.push(p);
        }
    }
    matching.extend(one);
    matching.extend(mismatch);
    matching
}

/// Go's `isValid` for an issuer, without dates or name constraints (see the module comment).
fn valid_as(c: &Cert, kind: Kind, chain_below: &[&Cert]) -> bool {
    if c.has_unhandled_critical_extension() {
        return false;
    }
    let bc = c.basic_constraints();
    if kind == Kind::Intermediate && !matches!(bc, Some((true, _))) {
        return false;
    }
    if let Some((_, Some(max))) = bc {
        let intermediates_below = chain_below.len() - 1;
        if intermediates_below > max as usize {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_bundle_has_no_hash() {
        assert_eq!(of_bundle(b""), None);
        assert_eq!(of_bundle(b"hello"), None);
        assert_eq!(
            of_bundle(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            None
        );
    }
}
