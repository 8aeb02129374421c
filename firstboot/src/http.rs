//! A minimal HTTP/1.1 client over std `TcpStream`, optionally wrapped in rustls.
//!
//! The agent makes a handful of small GET/POST requests (k3s `/cacerts` and `/ping`, the ZeroTier
//! local API), each on its own `Connection: close` connection. A general client (ureq) would bring
//! more code than these needs, and the agent ships to every SD card; this one is about 200 lines and
//! lets the TLS policy (accept-anything for `/cacerts`, pinned CA for `/ping`) be explicit per request.
//!
//! Two rules keep a misbehaving server from deciding for the agent:
//! - one deadline per request, for connect, handshake, sending and every read together: a server
//!   that sends a byte a second never trips a per-read timeout, and would otherwise hold `run` past
//!   its time budget;
//! - a reply is complete only when its end is known: all `Content-Length` bytes, the last chunk,
//!   or, when the body runs to the end of the connection, a clean end (TLS close_notify, or TCP
//!   FIN for plain HTTP). A TLS connection cut without close_notify is a truncation (RFC 8446
//!   section 6.1 requires close_notify before closing the write side), not a short body.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};

const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0:?}")]
    Url(String),
    #[error("{url}: {source}")]
    Io { url: String, source: io::Error },
    #[error("{url}: TLS setup: {source}")]
    Tls { url: String, source: rustls::Error },
    #[error("{url}: malformed HTTP response")]
    Malformed { url: String },
    /// The connection ended before the reply did.
    #[error("{url}: reply cut short ({why})")]
    Truncated { url: String, why: &'static str },
    #[error("CA bundle contains no PEM certificate")]
    NoCa,
    #[error("CA bundle is not well-formed PEM: {0}")]
    BadPem(String),
}

impl HttpError {
    /// The TLS error behind this failure, if the handshake or a record was refused.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            HttpError::Io { source, .. } => source.get_ref()?.downcast_ref::<rustls::Error>(),
            HttpError::Tls { source, .. } => Some(source),
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
    /// The certificates of a PEM bundle. Every certificate section must parse: a bundle cut in
    /// the middle of one is an error, not a shorter bundle.
    pub fn from_pem(pem: &[u8]) -> Result<Trust, HttpError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HttpError::BadPem(e.to_string()))?;
        if certs.is_empty() {
            return Err(HttpError::NoCa);
        }
        Ok(Trust::Roots(certs))
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

struct Url<'a> {
    tls: bool,
    host: &'a str,
    port: u16,
    path: &'a str,
}

/// The host (an IPv6 literal without its brackets) and port (default 443 or 80) of an `http://` or
/// `https://` URL, as a socket address wants them; `None` when the URL is not one of those.
pub fn host_port(url: &str) -> Option<(&str, u16)> {
    parse_url(url).map(|u| (u.host, u.port))
}

fn parse_url(url: &str) -> Option<Url<'_>> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(Url {
        tls,
        host,
        port,
        path,
    })
}

/// One request. `trust` must be `Plain` for `http://` URLs and a TLS mode for `https://`.
/// `timeout` bounds the whole request, from connect to the last byte of the reply.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    trust: &Trust,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let u = parse_url(url).ok_or_else(|| HttpError::Url(url.to_owned()))?;
    let io_err = |source| HttpError::Io {
        url: url.to_owned(),
        source,
    };
    let addr = (u.host, u.port)
        .to_socket_addrs()
        .map_err(io_err)?
        .next()
        .ok_or_else(|| io_err(io::Error::other("host has no address")))?;
    let deadline = Instant::now() + timeout;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(io_err)?;
    let tcp = DeadlineStream { tcp, deadline };

    let host_header = if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    };
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\nUser-Agent: imagegen-firstboot\r\nContent-Length: {}\r\n",
        u.path,
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");

    let mut raw = Vec::new();
    let clean_end = if u.tls {
        let config = tls_config(trust).map_err(|source| HttpError::Tls {
            url: url.to_owned(),
            source,
        })?;
        let name =
            ServerName::try_from(u.host.to_owned()).map_err(|_| HttpError::Url(url.to_owned()))?;
        let conn = ClientConnection::new(config, name).map_err(|source| HttpError::Tls {
            url: url.to_owned(),
            source,
        })?;
        let mut s = StreamOwned::new(conn, tcp);
        s.write_all(req.as_bytes()).map_err(io_err)?;
        s.write_all(body).map_err(io_err)?;
        s.flush().map_err(io_err)?;
        read_reply(&mut s, &mut raw).map_err(io_err)?
    } else {
        let mut s = tcp;
        s.write_all(req.as_bytes()).map_err(io_err)?;
        s.write_all(body).map_err(io_err)?;
        read_reply(&mut s, &mut raw).map_err(io_err)?
    };
    match parse_response(&raw, clean_end) {
        Parsed::Complete(r) => Ok(r),
        Parsed::Incomplete(why) => Err(HttpError::Truncated {
            url: url.to_owned(),
            why,
        }),
        Parsed::Malformed => Err(HttpError::Malformed {
            url: url.to_owned(),
        }),
    }
}

/// A TCP stream whose every read and write gets only what is left until one deadline.
struct DeadlineStream {
    tcp: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete reply within the request's time limit",
            ));
        }
        Ok(left)
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        self.tcp.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// Reads until the reply is complete or the connection ends. Returns whether it ended cleanly:
/// `Ok(0)` is TCP FIN on plain streams and close_notify under rustls, which reports a TCP close
/// without close_notify as `UnexpectedEof`.
fn read_reply(r: &mut impl Read, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_BODY {
                    return Err(io::Error::other("response larger than 1 MiB"));
                }
                // Done as soon as Content-Length says so; a server that keeps the connection
                // open after a whole reply does not hold us until the deadline.
                if let Parsed::Complete(_) = parse_response(out, false) {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

enum Parsed {
    Complete(Response),
    Incomplete(&'static str),
    Malformed,
}

/// `clean_end`: the connection has ended cleanly after `raw`, which then delimits a body that
/// has neither a length nor chunks.
fn parse_response(raw: &[u8], clean_end: bool) -> Parsed {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Parsed::Incomplete("no end of headers");
    };
    match parse_complete(raw, end, clean_end) {
        Some(Ok(r)) => Parsed::Complete(r),
        Some(Err(why)) => Parsed::Incomplete(why),
        None => Parsed::Malformed,
    }
}

fn parse_complete(
    raw: &[u8],
    end: usize,
    clean_end: bool,
) -> Option<Result<Response, &'static str>> {
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let (k, v) = l.split_once(':')?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().ok()?);
        }
    }
    let body = if chunked {
        match dechunk(rest)? {
            Some(b) => b,
            None => return Some(Err("chunked body without its last chunk")),
        }
    } else if let Some(n) = length {
        match rest.get(..n) {
            Some(b) => b.to_vec(),
            None => return Some(Err("fewer bytes than Content-Length")),
        }
    } else if clean_end {
        rest.to_vec()
    } else {
        return Some(Err("connection closed without TLS close_notify"));
    };
    Some(Ok(Response { status, body }))
}

/// `None`: not chunked encoding; `Some(None)`: cut before the last chunk.
fn dechunk(mut rest: &[u8]) -> Option<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Some(None);
        };
        let size_str = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(Some(body));
        }
        match (rest.get(..size), rest.get(size..size + 2)) {
            (Some(chunk), Some(b"\r\n")) => body.extend_from_slice(chunk),
            (Some(_), Some(_)) => return None,
            _ => return Some(None),
        }
        rest = &rest[size + 2..];
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config(trust: &Trust) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match trust {
        Trust::Plain => return Err(rustls::Error::General("https URL with plain trust".into())),
        Trust::AnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::Roots(certs) => {
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c.clone())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// Accepts any certificate but still checks the handshake signature, so the peer at least holds the
/// key of the certificate it shows. Used only to fetch `/cacerts`, whose hash is then compared
/// with the one pinned in the join token before anything secret is sent.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("https://[fd00::1]:6443/cacerts").unwrap();
        assert_eq!(
            (u.tls, u.host, u.port, u.path),
            (true, "fd00::1", 6443, "/cacerts")
        );
        let u = parse_url("http://127.0.0.1:9993").unwrap();
        assert_eq!(
            (u.tls, u.host, u.port, u.path),
            (false, "127.0.0.1", 9993, "/")
        );
        assert!(parse_url("ftp://x").is_none());
        assert_eq!(host_port("https://[fd00::1]"), Some(("fd00::1", 443)));
        assert_eq!(host_port("https://[::1]:6443/"), Some(("::1", 6443)));
        assert_eq!(host_port("https://[::1:6443"), None);
        assert_eq!(host_port("https://"), None);
    }

    #[test]
    fn chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npong\r\n0\r\n\r\n";
        let Parsed::Complete(r) = parse_response(raw, false) else {
            panic!("not complete")
        };
        assert_eq!((r.status, r.body.as_slice()), (200, &b"pong"[..]));
        let cut = &raw[..raw.len() - 5];
        assert!(matches!(parse_response(cut, true), Parsed::Incomplete(_)));
    }

    #[test]
    fn body_to_end_of_connection_needs_a_clean_end() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n-----BEGIN";
        assert!(matches!(parse_response(raw, false), Parsed::Incomplete(_)));
        assert!(matches!(parse_response(raw, true), Parsed::Complete(_)));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc";
        assert!(matches!(parse_response(short, true), Parsed::Incomplete(_)));
    }

    #[test]
    fn cut_pem_is_not_a_shorter_bundle() {
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(Trust::from_pem(pem), Err(HttpError::BadPem(_))));
        assert!(matches!(Trust::from_pem(b"hello"), Err(HttpError::NoCa)));
    }
}
