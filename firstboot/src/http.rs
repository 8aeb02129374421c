//! The agent's HTTP requests (k3s `/cacerts` and `/ping`, the ZeroTier local API), made with the
//! builder's client: ureq with rustls.
//!
//! The agent used to carry its own HTTP/1.1 over rustls (about 470 lines with its tests) to stay
//! small. Issue 10 chose one client for builder and agent instead: one HTTP stack to review and
//! keep patched, for a measured size cost well inside the 8 MiB budget (BENCHMARKS.md, "Agent
//! size"). What stays here is the agent's policy, which ureq leaves to its caller:
//!
//! - the trust per request, explicit: plain HTTP only for loopback APIs, any certificate only to
//!   fetch `/cacerts` (whose sha256 `k3s` then checks against the join token), and otherwise
//!   exactly the roots given (the token-verified CA). Under "any certificate" ureq does not check
//!   the handshake signature either; that check proved nothing there, as whoever sits in between
//!   signs with the key of a certificate of his own making. The second `/cacerts` fetch, trusting
//!   only the pinned CA, is what refuses him (k3s_join.rs, the man-in-the-middle test);
//! - one deadline per request (`timeout_global`: resolve, connect, handshake, sending and every
//!   read together): a server that sends a byte a second never trips a per-read timeout, and
//!   would otherwise hold `run` past its time budget;
//! - a reply is complete only when its end is known. ureq fails a body shorter than its
//!   `Content-Length` and a chunked body without its last chunk, but ends a body that has
//!   neither at any close of the connection, and over TLS a close without close_notify is a cut,
//!   not an end (RFC 8446 section 6.1 requires close_notify before closing the write side). Such
//!   replies are refused over TLS: k3s (Go's net/http) always sends a length or chunks;
//! - a reply body under 1 MiB; no redirects followed; no proxy from the environment.

use std::io;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use ureq::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use url::Url;

const MAX_BODY: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0:?}")]
    Url(String),
    #[error("{url}: plain HTTP for an https URL, or TLS for an http one")]
    Scheme { url: String },
    #[error("{url}: {source}")]
    Request { url: String, source: ureq::Error },
    /// The connection ended before the reply did.
    #[error("{url}: reply cut short ({why})")]
    Truncated { url: String, why: &'static str },
    #[error("CA bundle contains no PEM certificate")]
    NoCa,
    #[error("CA bundle is not well-formed PEM: {0}")]
    BadPem(String),
    #[error("CA bundle holds a certificate that cannot be a trust anchor")]
    BadCa,
}

impl HttpError {
    /// The TLS error behind this failure, if the handshake or a record was refused. ureq reports
    /// one as `Rustls`, or as the `io::Error` rustls wraps it in during the handshake.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            HttpError::Request {
                source: ureq::Error::Rustls(e),
                ..
            } => Some(e),
            HttpError::Request {
                source: ureq::Error::Io(e),
                ..
            } => e.get_ref()?.downcast_ref::<rustls::Error>(),
            _ => None,
        }
    }
}

/// How to treat the server's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Plain HTTP (only for loopback APIs).
    Plain,
    /// TLS, any certificate: only to fetch a CA whose hash is then checked.
    AnyCertificate,
    /// TLS verified against exactly these roots (PEM bundle).
    Roots(Vec<CertificateDer<'static>>),
}

impl Trust {
    /// The certificates of a PEM bundle. Every certificate section must parse, and each must be
    /// usable as a trust anchor: a bundle cut in the middle of one is an error, not a shorter
    /// bundle (ureq would silently skip a certificate it cannot use).
    pub fn from_pem(pem: &[u8]) -> Result<Trust, HttpError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HttpError::BadPem(e.to_string()))?;
        if certs.is_empty() {
            return Err(HttpError::NoCa);
        }
        let mut store = rustls::RootCertStore::empty();
        let (_, unusable) = store.add_parsable_certificates(certs.iter().cloned());
        if unusable > 0 {
            return Err(HttpError::BadCa);
        }
        Ok(Trust::Roots(certs))
    }

    fn tls_config(&self) -> TlsConfig {
        let tls = TlsConfig::builder();
        match self {
            Trust::Plain => tls,
            Trust::AnyCertificate => tls.disable_verification(true),
            Trust::Roots(certs) => tls.root_certs(RootCerts::new_with_certs(
                &certs
                    .iter()
                    .map(|c| Certificate::from_der(c).to_owned())
                    .collect::<Vec<_>>(),
            )),
        }
        .build()
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// An `http://` or `https://` URL with a host; IPv6 hosts in brackets (`https://[fd00::1]:6443`).
pub fn parse_url(url: &str) -> Option<Url> {
    let u = Url::parse(url).ok()?;
    (matches!(u.scheme(), "http" | "https") && u.host().is_some()).then_some(u)
}

/// A GET. `trust` must be `Plain` for `http://` URLs and a TLS mode for `https://`; `timeout`
/// bounds the whole request, from resolving the host to the last byte of the reply.
pub fn get(
    url: &str,
    headers: &[(&str, &str)],
    trust: &Trust,
    timeout: Duration,
) -> Result<Response, HttpError> {
    request(url, headers, None, trust, timeout)
}

/// A POST of `body`; otherwise as [`get`].
pub fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    trust: &Trust,
    timeout: Duration,
) -> Result<Response, HttpError> {
    request(url, headers, Some(body), trust, timeout)
}

fn request(
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    trust: &Trust,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let parsed = parse_url(url).ok_or_else(|| HttpError::Url(url.to_owned()))?;
    let tls = parsed.scheme() == "https";
    if tls == matches!(trust, Trust::Plain) {
        return Err(HttpError::Scheme {
            url: url.to_owned(),
        });
    }
    let failed = |source| HttpError::Request {
        url: url.to_owned(),
        source,
    };
    // One agent per request: each has its own trust, and no connection outlives its request.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .https_only(tls)
        .timeout_global(Some(timeout))
        .user_agent("imagegen-firstboot")
        .tls_config(trust.tls_config())
        .build()
        .into();
    // The caller's header names go out as written (zerotier-one has always been sent
    // `X-ZT1-Auth`); ureq would write them in lower case.
    let sent = match body {
        None => with_headers(agent.get(parsed.as_str()), headers).call(),
        Some(b) => with_headers(agent.post(parsed.as_str()), headers).send(b),
    };
    let mut reply = sent.map_err(failed)?;
    if tls && ends_only_at_close(&reply) {
        return Err(HttpError::Truncated {
            url: url.to_owned(),
            why: "over TLS, a body with neither Content-Length nor chunks cannot be told from a cut one",
        });
    }
    let body = reply
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                HttpError::Truncated {
                    url: url.to_owned(),
                    why: "the connection ended before the whole body",
                }
            }
            e => failed(e),
        })?;
    Ok(Response {
        status: reply.status().as_u16(),
        body,
    })
}

fn with_headers<B>(
    mut r: ureq::RequestBuilder<B>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<B> {
    for (k, v) in headers {
        r = r.header_raw(k, v.as_bytes());
    }
    r
}

/// Whether the reply's body runs to the end of the connection (RFC 9112 section 6.3: no
/// Content-Length, no chunked Transfer-Encoding, and a status that has a body).
fn ends_only_at_close(reply: &ureq::http::Response<ureq::Body>) -> bool {
    let s = reply.status();
    let h = reply.headers();
    let chunked = h.get_all(TRANSFER_ENCODING).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"))
    });
    !(s.is_informational() || s == 204 || s == 304 || chunked || h.contains_key(CONTENT_LENGTH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("https://[fd00::1]:6443/cacerts").unwrap();
        assert_eq!(
            (
                u.scheme(),
                u.host_str(),
                u.port_or_known_default(),
                u.path()
            ),
            ("https", Some("[fd00::1]"), Some(6443), "/cacerts")
        );
        let u = parse_url("http://127.0.0.1:9993").unwrap();
        assert_eq!(
            (
                u.scheme(),
                u.host_str(),
                u.port_or_known_default(),
                u.path()
            ),
            ("http", Some("127.0.0.1"), Some(9993), "/")
        );
        assert!(parse_url("ftp://x").is_none());
        assert!(parse_url("https://[::1:6443").is_none());
        assert!(parse_url("https://").is_none());
        assert!(parse_url("https://h:65536").is_none());
        // The socket address the requests and `k3s`'s route lookup use.
        let addrs = |u| parse_url(u).unwrap().socket_addrs(|| None).unwrap();
        assert_eq!(
            addrs("https://[fd00::1]"),
            ["[fd00::1]:443".parse().unwrap()]
        );
        assert_eq!(
            addrs("https://[::1]:6443/"),
            ["[::1]:6443".parse().unwrap()]
        );
        assert_eq!(addrs("http://127.0.0.1"), ["127.0.0.1:80".parse().unwrap()]);
    }

    #[test]
    fn cut_pem_is_not_a_shorter_bundle() {
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(Trust::from_pem(pem), Err(HttpError::BadPem(_))));
        assert!(matches!(Trust::from_pem(b"hello"), Err(HttpError::NoCa)));
        // Well-formed PEM around bytes that are no certificate.
        let junk = b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(matches!(Trust::from_pem(junk), Err(HttpError::BadCa)));
    }

    #[test]
    fn trust_must_fit_the_scheme() {
        let t = Duration::from_secs(1);
        for (url, trust) in [
            ("https://127.0.0.1:1/", Trust::Plain),
            ("http://127.0.0.1:1/", Trust::AnyCertificate),
        ] {
            assert!(matches!(
                get(url, &[], &trust, t),
                Err(HttpError::Scheme { .. })
            ));
        }
    }
}
