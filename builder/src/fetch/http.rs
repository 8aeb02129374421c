//! HTTP(S) downloads: retries with backoff, bounded time-outs, and resumption of an
//! interrupted transfer (RFC 9110 `Range` + `If-Range`).

use super::cache::{Cache, PartialMeta};
use super::{FetchError, FetchOptions};
use crate::io::BUFFER_SIZE;
use crate::io::hash::{Algorithm, Digester, Digests, digest_file};
use crate::io::progress::{ProgressWriter, bar};
use crate::io::tee::Tee;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;
use ureq::http::{Response, StatusCode};
use ureq::{Agent, Body};

/// Statuses worth retrying, as curl `--retry` does.
fn transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

pub struct Client {
    agent: Agent,
    retries: u32,
    backoff: Duration,
    backoff_max: Duration,
    timeout: Duration,
    connect_timeout: Duration,
}

/// One attempt's failure: whether trying again can help.
enum Failure {
    Retry(FetchError),
    Fatal(FetchError),
}

impl Client {
    pub fn new(opts: &FetchOptions) -> Client {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_resolve(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.timeout))
            .timeout_per_write(Some(opts.timeout))
            .user_agent(concat!("imagegen/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: config.into(),
            retries: opts.retries,
            backoff: opts.backoff,
            backoff_max: opts.backoff_max,
            timeout: opts.timeout,
            connect_timeout: opts.connect_timeout,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are used up.
    fn with_retries<T>(
        &self,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, FetchError> {
        let mut delay = self.backoff;
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e)) if tries > self.retries => {
                    return Err(e.after_attempts(tries));
                }
                Err(Failure::Retry(e)) => {
                    eprintln!("{e}; retrying in {delay:?}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.backoff_max);
                }
            }
        }
    }

    fn classify(&self, url: &str, err: ureq::Error) -> Failure {
        match err {
            ureq::Error::Timeout(phase) => {
                let limit = match phase {
                    ureq::Timeout::Connect | ureq::Timeout::Resolve => self.connect_timeout,
                    _ => self.timeout,
                };
                Failure::Retry(FetchError::TimedOut {
                    url: url.to_string(),
                    phase: phase.to_string(),
                    limit,
                    attempts: 1,
                })
            }
            e @ (ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_)
            | ureq::Error::Tls(_)
            | ureq::Error::Rustls(_)) => {
                let reason = e.to_string();
                match e {
                    // A certificate problem will not fix itself.
                    ureq::Error::Tls(_) | ureq::Error::Rustls(_) => {
                        Failure::Fatal(FetchError::network(url, reason, 1))
                    }
                    _ => Failure::Retry(FetchError::network(url, reason, 1)),
                }
            }
            e => Failure::Fatal(FetchError::network(url, e.to_string(), 1)),
        }
    }

    fn status_failure(&self, url: &str, status: StatusCode) -> Failure {
        let e = FetchError::Http {
            url: url.to_string(),
            status: status.as_u16(),
            attempts: 1,
        };
        if transient(status.as_u16()) {
            Failure::Retry(e)
        } else {
            Failure::Fatal(e)
        }
    }

    /// A small text file (a checksum list). `Ok(None)` when the server says it has no
    /// such file.
    pub fn get_text(&self, url: &str) -> Result<Option<String>, FetchError> {
        self.with_retries(|| {
            let mut resp = self
                .agent
                .get(url)
                .call()
                .map_err(|e| self.classify(url, e))?;
            let status = resp.status();
            if matches!(status.as_u16(), 404 | 410) {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(self.status_failure(url, status));
            }
            // Checksum lists are tiny; a bigger answer is not one.
            Ok(Some(self.small_body(url, &mut resp)?))
        })
    }

    /// POSTs a JSON `body` with an `Authorization` header to an API and returns its answer,
    /// whatever the status: what a status means is the API's business. Network errors, 429
    /// and 5xx are retried like downloads; only idempotent requests may come here. The
    /// header does not follow a redirect (ureq's default `RedirectAuthHeaders::Never`), so a
    /// secret in it reaches the host it was meant for only.
    pub fn post_json(
        &self,
        url: &str,
        authorization: &str,
        body: &[u8],
    ) -> Result<Answer, FetchError> {
        self.with_retries(|| {
            let mut resp = self
                .agent
                .post(url)
                .header("Authorization", authorization)
                .header("Content-Type", "application/json")
                .header("Accept", "application/json")
                .send(body)
                .map_err(|e| self.classify(url, e))?;
            let status = resp.status();
            if transient(status.as_u16()) {
                return Err(self.status_failure(url, status));
            }
            // An API's answer is small; a bigger one is not the API's.
            Ok(Answer {
                status: status.as_u16(),
                body: self.small_body(url, &mut resp)?,
            })
        })
    }

    /// A body of at most 1 MiB, as text.
    fn small_body(
        &self,
        url: &str,
        resp: &mut ureq::http::Response<ureq::Body>,
    ) -> Result<String, Failure> {
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| self.classify(url, e))?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Downloads `url` into the cache's partial file, resuming what an earlier attempt or
    /// run left there. Returns the digests (sha256 and those in `also`) and size of the
    /// complete file, which stays in `partial/` until the caller has verified it.
    pub fn download(
        &self,
        cache: &Cache,
        url: &str,
        also: &[Algorithm],
    ) -> Result<(Digests, u64), FetchError> {
        let (part, meta_path) = cache.partial(url);
        self.with_retries(|| self.attempt(url, &part, &meta_path, also))
    }

    fn attempt(
        &self,
        url: &str,
        part: &Path,
        meta_path: &Path,
        also: &[Algorithm],
    ) -> Result<(Digests, u64), Failure> {
        let meta = Cache::read_meta(meta_path).filter(|m| m.url == url);
        let have = match (&meta, fs::metadata(part)) {
            (Some(_), Ok(m)) => m.len(),
            _ => 0,
        };
        let validator = meta
            .as_ref()
            .and_then(|m| m.etag.clone().or_else(|| m.last_modified.clone()));
        let mut req = self.agent.get(url);
        let resuming = have > 0 && validator.is_some();
        if let (true, Some(v)) = (resuming, &validator) {
            req = req
                .header("Range", format!("bytes={have}-"))
                .header("If-Range", v.as_str());
        }
        let resp = req.call().map_err(|e| self.classify(url, e))?;
        let status = resp.status().as_u16();
        match status {
            206 if resuming => {
                let starts_at = content_range_start(&resp);
                if starts_at != Some(have) {
                    // Not the range we asked for: start over rather than splice.
                    discard(part, meta_path);
                    return Err(Failure::Retry(FetchError::network(
                        url,
                        format!("server answered a resume at {have} with a different range"),
                        1,
                    )));
                }
                self.receive(url, resp, part, meta_path, Start::Resume(have), also)
            }
            200 => {
                let meta = PartialMeta {
                    url: url.to_string(),
                    etag: header(&resp, "etag").filter(|e| !e.starts_with("W/")),
                    last_modified: header(&resp, "last-modified"),
                };
                self.receive(url, resp, part, meta_path, Start::Fresh(meta), also)
            }
            416 if resuming => {
                // We may already have everything: the caller's verification decides.
                let total = header(&resp, "content-range")
                    .and_then(|v| v.strip_prefix("bytes */").and_then(|n| n.parse().ok()));
                if total == Some(have) {
                    let digests = digest_file(part, also)
                        .map_err(|e| Failure::Fatal(FetchError::io(part, "cannot read", e)))?;
                    return Ok((digests, have));
                }
                discard(part, meta_path);
                Err(Failure::Retry(FetchError::network(
                    url,
                    "server refused to resume; starting over".to_string(),
                    1,
                )))
            }
            404 | 410 => Err(Failure::Fatal(FetchError::NotFound {
                url: url.to_string(),
                status,
            })),
            _ => Err(self.status_failure(url, resp.status())),
        }
    }

    /// Writes the body to `part` (appending when resuming), hashing everything that ends up
    /// in the file: sha256 and the digests in `also`.
    fn receive(
        &self,
        url: &str,
        resp: Response<Body>,
        part: &Path,
        meta_path: &Path,
        start: Start,
        also: &[Algorithm],
    ) -> Result<(Digests, u64), Failure> {
        let io_fail = |e: io::Error| Failure::Fatal(FetchError::io(part, "cannot write", e));
        let length = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
        let (file, offset) = match &start {
            Start::Fresh(meta) => {
                let f = File::create(part).map_err(io_fail)?;
                Cache::write_meta(meta_path, meta).map_err(Failure::Fatal)?;
                (f, 0)
            }
            Start::Resume(offset) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(part)
                    .map_err(io_fail)?;
                (f, *offset)
            }
        };
        // Digest state cannot be saved, so re-hash what the earlier attempt left.
        let mut hasher = Digester::new(also);
        if offset > 0 {
            let mut old = File::open(part).map_err(io_fail)?.take(offset);
            io::copy(&mut old, &mut hasher).map_err(io_fail)?;
        }
        let progress = bar("fetch", Some(file_label(url)), length.map(|l| l + offset));
        progress.set_position(offset);
        let mut out = ProgressWriter::new(
            BufWriter::with_capacity(BUFFER_SIZE, Tee::new(file, hasher)),
            progress,
        );
        let mut body = resp.into_body().into_reader();
        let copied = copy(&mut body, &mut out);
        let (out, progress) = out.into_parts();
        let flushed = out.into_inner();
        let tee = match flushed {
            Ok(tee) => tee,
            Err(e) => return Err(io_fail(e.into_error())),
        };
        if let Err(e) = copied {
            return Err(match e {
                CopyError::Write(e) => io_fail(e),
                CopyError::Read(e) => self.classify(url, ureq::Error::from(e)),
            });
        }
        // The hasher saw only what the file accepted: the digest describes the bytes on disk.
        let (file, hasher) = tee.into_inner();
        file.sync_all().map_err(io_fail)?;
        let size = fs::metadata(part).map_err(io_fail)?.len();
        progress.finish();
        Ok((hasher.finish(), size))
    }
}

/// What an API answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Where a transfer starts: from zero (with what the server said about the file, kept so a
/// later run can resume), or after the bytes an earlier attempt left.
enum Start {
    Fresh(PartialMeta),
    Resume(u64),
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// `io::copy` that says which side failed: a read error is the network's, a write error
/// is the disk's.
fn copy(r: &mut impl Read, w: &mut impl Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// The first byte of `Content-Range: bytes <first>-<last>/<total>`.
fn content_range_start(resp: &Response<Body>) -> Option<u64> {
    let v = header(resp, "content-range")?;
    let range = v.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

fn discard(part: &Path, meta_path: &Path) {
    let _ = fs::remove_file(part);
    let _ = fs::remove_file(meta_path);
}

/// Removes a partial download and its sidecar (after a checksum mismatch).
pub fn discard_partial(cache: &Cache, url: &str) {
    let (part, meta) = cache.partial(url);
    discard(&part, &meta);
}

fn file_label(url: &str) -> &str {
    super::checksum::file_name(url)
}
