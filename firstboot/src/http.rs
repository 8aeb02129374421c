//! A minimal HTTP/1.1 client over std `TcpStream`, optionally wrapped in rustls.
//!
//! The agent makes a handful of small GET/POST requests (k3s `/cacerts` and `/ping`, the ZeroTier
//! local API), each on its own `Connection: close` connection. A general client (ureq) would bring
//! more code than these needs, and the agent ships to every SD card; this one is about 200 lines and
//! lets the TLS policy (accept-anything for `/cacerts`, pinned CA for `/ping`) be explicit per request.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

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
    #[error("CA bundle contains no PEM certificate")]
    NoCa,
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
    pub fn from_pem(pem: &[u8]) -> Result<Trust, HttpError> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
            .filter_map(Result::ok)
            .collect();
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
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(io_err)?;
    tcp.set_read_timeout(Some(timeout)).map_err(io_err)?;
    tcp.set_write_timeout(Some(timeout)).map_err(io_err)?;

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
    if u.tls {
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
        read_all(&mut s, &mut raw).map_err(io_err)?;
    } else {
        let mut s = tcp;
        s.write_all(req.as_bytes()).map_err(io_err)?;
        s.write_all(body).map_err(io_err)?;
        read_all(&mut s, &mut raw).map_err(io_err)?;
    }
    parse_response(&raw).ok_or_else(|| HttpError::Malformed {
        url: url.to_owned(),
    })
}

/// Reads to EOF. Servers that close without TLS close_notify (common) end the body the same way.
fn read_all(r: &mut impl Read, out: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_BODY {
                    return Err(io::Error::other("response larger than 1 MiB"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !out.is_empty() => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
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
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
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
    }

    #[test]
    fn chunked_body() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npong\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"pong"[..]));
    }
}
