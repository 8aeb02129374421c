//! Getting the vendor base image: download (resumable, retried), verify it against a pinned
//! sha256 or the vendor's checksum file (sha256, or sha512 where that is all the vendor
//! publishes), keep it in a content-addressed cache keyed by sha256, and unpack it once into
//! a sparse raw image that later builds reuse.
//!
//! Nothing is used, or stored under `blobs/` or `raw/`, before its digest has been checked;
//! an image that cannot be checked is refused unless the caller opts out (`insecure`).

mod cache;
mod checksum;
mod http;
mod known_hash;
mod sparse;
mod unpack;

pub use crate::io::sparse_writer::SparseWriter;
pub use cache::default_dir as default_cache_dir;
pub use checksum::{Algorithm, Expected, find as find_checksum, parse_sha256};
pub use sparse::copy_sparse;
pub use unpack::{Format, Step, decode, unpack, unpack_scratch};

use crate::io::hash::Digests;
use cache::Cache;
pub use http::Answer;
use http::Client;
use known_hash::KnownHashes;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the base image comes from: `--base` or a board file's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Url(String),
    File(PathBuf),
}

impl Source {
    /// `http://` and `https://` are URLs; anything else is a local path.
    pub fn parse(s: &str) -> Source {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            Source::Url(s.to_string())
        } else {
            Source::File(PathBuf::from(s))
        }
    }
}

impl std::str::FromStr for Source {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Source::parse(s))
    }
}

/// How downloads behave. `Default` uses the XDG cache directory and production time-outs.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub cache_dir: PathBuf,
    /// Further attempts after a connection error, time-out, 408, 429 or 5xx.
    pub retries: u32,
    /// First delay between attempts; doubled each time up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for any single read from the server (a stalled transfer fails after it,
    /// and the next attempt resumes).
    pub timeout: Duration,
    /// Use an image that no sha256 vouches for.
    pub insecure: bool,
    /// Never touch the network (`--offline`): URLs are served from the cache only, as
    /// verified when they were downloaded.
    pub offline: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            cache_dir: default_cache_dir()
                .unwrap_or_else(|| std::env::temp_dir().join("imagegen-cache")),
            retries: 5,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            insecure: false,
            offline: false,
        }
    }
}

/// What vouches for the source image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The sha256 the caller pinned.
    Pinned,
    /// The vendor's checksum file at this URL (sha256 or sha512).
    ChecksumFile(String),
    /// A local file without a pinned hash: the user vouches for it.
    LocalFile,
    /// Nothing (`insecure`).
    Unverified,
}

/// A base image ready to be copied (with [`copy_sparse`]) into a build's working image.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The raw disk image. Shared by later builds: never modify it, copy it.
    pub raw_path: PathBuf,
    /// Size of the raw disk image.
    pub raw_size: u64,
    /// The verified download in the cache, or the local file as given.
    pub source_path: PathBuf,
    /// sha256 of the source file (for the manifest), whatever digest verified it.
    pub source_sha256: String,
    /// The sha256 of a local file came from the cache's record of it (its device, inode,
    /// size, mtime and ctime unchanged since it was hashed), not from reading it again.
    pub source_sha256_remembered: bool,
    pub format: Format,
    pub verification: Verification,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{url}: the server has no such file (HTTP {status}); check the URL or the board file's \
         base image"
    )]
    NotFound { url: String, status: u16 },
    #[error("{url}: HTTP {status} after {attempts} attempt(s)")]
    Http {
        url: String,
        status: u16,
        attempts: u32,
    },
    #[error("{url}: {reason} (after {attempts} attempt(s); run again to resume the download)")]
    Network {
        url: String,
        reason: String,
        attempts: u32,
    },
    #[error(
        "{url}: the server did not answer within {limit:?} ({phase}), after {attempts} \
         attempt(s); check the network, then run again to resume the download"
    )]
    TimedOut {
        url: String,
        phase: String,
        limit: Duration,
        attempts: u32,
    },
    #[error("{algorithm} mismatch for {what}: expected {expected}, got {actual}; {action}")]
    Mismatch {
        algorithm: Algorithm,
        what: String,
        expected: String,
        actual: String,
        action: &'static str,
    },
    #[error(
        "cannot verify {url}: no checksum found (tried {tried}); pin its sha256, give the \
         vendor's checksum URL, or pass --insecure to use it unverified"
    )]
    Unverifiable { url: String, tried: String },
    #[error("{checksum_url} does not list {name}; is it the checksum file for this image?")]
    NotListed { checksum_url: String, name: String },
    #[error(
        "--offline: {what} is not in the cache {cache}; build once without --offline to \
         download it"
    )]
    Offline { what: String, cache: PathBuf },
    #[error("--offline: {url} is not asked")]
    OfflineRequest { url: String },
    #[error("'{0}' is not a sha256 (64 hex digits)")]
    BadSha256(String),
    #[error("{path}: not a valid {format:?} image: {reason}")]
    Corrupt {
        path: PathBuf,
        format: Format,
        reason: String,
    },
    #[error("{tool} failed: {reason}")]
    Tool { tool: &'static str, reason: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl FetchError {
    fn io(path: &Path, action: &'static str, source: std::io::Error) -> FetchError {
        FetchError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    fn network(url: &str, reason: String, attempts: u32) -> FetchError {
        FetchError::Network {
            url: url.to_string(),
            reason,
            attempts,
        }
    }

    fn after_attempts(mut self, n: u32) -> FetchError {
        match &mut self {
            FetchError::Http { attempts, .. }
            | FetchError::Network { attempts, .. }
            | FetchError::TimedOut { attempts, .. } => *attempts = n,
            _ => {}
        }
        self
    }
}

/// POSTs JSON to an API with the download client (same time-outs, retries, TLS roots), and
/// returns the answer whatever its status. Refused with `--offline`.
pub fn post_json(
    opts: &FetchOptions,
    url: &str,
    authorization: &str,
    body: &[u8],
) -> Result<Answer, FetchError> {
    if opts.offline {
        return Err(FetchError::OfflineRequest {
            url: url.to_string(),
        });
    }
    Client::new(opts).post_json(url, authorization, body)
}

/// Gets the base image `source`, verified and unpacked, from the cache when it is there.
///
/// Verification: `expected` (a pinned sha256) when given; else for a URL the checksum file
/// at `checksum_url`, or the first of `URL.sha256`, `URL.sha`, `SHA256SUMS` and
/// `SHA512SUMS` beside it that lists it. A local file is used as given unless `expected` or
/// `checksum_url` is set.
pub fn fetch_base(
    source: &Source,
    expected: Option<&str>,
    checksum_url: Option<&str>,
    opts: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let expected = expected
        .map(|e| match parse_sha256(e) {
            Some(hex) => Ok(Expected {
                algorithm: Algorithm::Sha256,
                hex,
            }),
            None => Err(FetchError::BadSha256(e.to_string())),
        })
        .transpose()?;
    let cache = Cache::open(&opts.cache_dir)?;
    let client = Client::new(opts);
    let offline = |what: &str| FetchError::Offline {
        what: what.to_string(),
        cache: opts.cache_dir.clone(),
    };
    let mut remembered = false;
    let (source_path, source_sha256, verification) = match source {
        Source::File(_) if opts.offline && expected.is_none() && checksum_url.is_some() => {
            return Err(offline(&format!(
                "the checksum file {}",
                checksum_url.unwrap_or_default()
            )));
        }
        Source::File(path) => {
            let known = KnownHashes::new(cache.local_dir());
            let (path, sha, verification, was_known) =
                local(&client, &known, path, expected, checksum_url)?;
            remembered = was_known;
            (path, sha, verification)
        }
        Source::Url(url) if opts.offline => {
            let cached = match &expected {
                Some(e) => cache.find(e).map(|sha| (sha, Verification::Pinned)),
                None => cache.known(url).map(|k| {
                    let v = k
                        .checksum_url
                        .map_or(Verification::Pinned, Verification::ChecksumFile);
                    (k.sha256, v)
                }),
            };
            let (sha, verification) = cached.ok_or_else(|| offline(url))?;
            (cache.blob(&sha), sha, verification)
        }
        Source::Url(url) => {
            let (want, verification) = match expected {
                Some(e) => (Some(e), Verification::Pinned),
                None => match vendor_checksum(&client, url, checksum_url)? {
                    Some((hash, from)) => (Some(hash), Verification::ChecksumFile(from)),
                    None if opts.insecure => (None, Verification::Unverified),
                    None => {
                        return Err(FetchError::Unverifiable {
                            url: url.clone(),
                            tried: checksum::candidates(url)
                                .into_iter()
                                .map(|(c, _)| c)
                                .collect::<Vec<_>>()
                                .join(", "),
                        });
                    }
                },
            };
            let (path, sha) = download(&cache, &client, url, want.as_ref(), &verification)?;
            (path, sha, verification)
        }
    };
    let raw = cache.raw(&source_sha256);
    let format = Format::of_file(&source_path)?;
    let raw_path = match format {
        // Already raw: copying it into the cache would only cost disk.
        Format::Raw => source_path.clone(),
        _ if raw.exists() => raw,
        _ => {
            let tmp = cache.tmp_dir().join(format!("{source_sha256}.img"));
            let unpacked = unpack(&source_path, &tmp);
            if let Err(e) = unpacked {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            cache.commit(&tmp, &raw)?;
            raw
        }
    };
    let raw_size = std::fs::metadata(&raw_path)
        .map_err(|e| FetchError::io(&raw_path, "cannot read", e))?
        .len();
    Ok(Fetched {
        raw_path,
        raw_size,
        source_path,
        source_sha256,
        source_sha256_remembered: remembered,
        format,
        verification,
    })
}

/// A local file, verified when a digest for it was given; also returns whether its sha256 was
/// remembered rather than computed.
fn local(
    client: &Client,
    known: &KnownHashes,
    path: &Path,
    expected: Option<Expected>,
    checksum_url: Option<&str>,
) -> Result<(PathBuf, String, Verification, bool), FetchError> {
    let (want, verification) = match (expected, checksum_url) {
        (Some(e), _) => (Some(e), Verification::Pinned),
        (None, Some(c)) => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let want = checksum_from(client, c, &name)?;
            (Some(want), Verification::ChecksumFile(c.to_string()))
        }
        (None, None) => (None, Verification::LocalFile),
    };
    // Only the sha256 is remembered: a file vouched for by another digest is read again.
    let (remembered, pending) = match want.as_ref().map(|w| w.algorithm) {
        None | Some(Algorithm::Sha256) => known.lookup(path),
        Some(_) => (None, None),
    };
    let was_known = remembered.is_some();
    let got = match remembered {
        Some(sha256) => Digests::of_sha256(sha256),
        None => {
            let also: Vec<Algorithm> = want.iter().map(|w| w.algorithm).collect();
            let got = crate::io::hash::digest_file(path, &also)
                .map_err(|e| FetchError::io(path, "cannot read", e))?;
            if let Some(pending) = pending {
                known.store(pending, &got.sha256);
            }
            got
        }
    };
    if let Some(want) = &want {
        verify(
            want,
            &got,
            path.display().to_string(),
            "the file is not the image you meant, or it is damaged",
        )?;
    }
    Ok((path.to_path_buf(), got.sha256, verification, was_known))
}

/// The one place a digest is compared: `what` names the file (and where the expected digest
/// came from), `action` says what was done and what to do.
fn verify(
    want: &Expected,
    got: &Digests,
    what: String,
    action: &'static str,
) -> Result<(), FetchError> {
    // Not computed would be a bug here; it fails closed like a mismatch.
    let actual = got.get(want.algorithm).unwrap_or("nothing (not computed)");
    if actual == want.hex {
        return Ok(());
    }
    Err(FetchError::Mismatch {
        algorithm: want.algorithm,
        what,
        expected: want.hex.clone(),
        actual: actual.to_string(),
        action,
    })
}

/// The digest a checksum file of unknown kind (given by URL) lists for `name`.
fn checksum_from(client: &Client, url: &str, name: &str) -> Result<Expected, FetchError> {
    let text = client.get_text(url)?.ok_or_else(|| FetchError::NotFound {
        url: url.to_string(),
        status: 404,
    })?;
    checksum::find_any(&text, name).ok_or_else(|| FetchError::NotListed {
        checksum_url: url.to_string(),
        name: name.to_string(),
    })
}

/// The vendor's digest for `url` and where it came from, or `None` if there is none.
fn vendor_checksum(
    client: &Client,
    url: &str,
    checksum_url: Option<&str>,
) -> Result<Option<(Expected, String)>, FetchError> {
    let name = checksum::file_name(url);
    if let Some(c) = checksum_url {
        return checksum_from(client, c, name).map(|h| Some((h, c.to_string())));
    }
    for (candidate, algorithm) in checksum::candidates(url) {
        let text = match client.get_text(&candidate) {
            // Object stores (S3 and the like) answer 403 for a file that is not there.
            Err(FetchError::Http { status: 403, .. }) => None,
            other => other?,
        };
        if let Some(hex) = text.and_then(|t| checksum::find(&t, name, algorithm)) {
            return Ok(Some((Expected { algorithm, hex }, candidate)));
        }
    }
    Ok(None)
}

/// The verified blob for `url`, downloading it unless the cache has it.
fn download(
    cache: &Cache,
    client: &Client,
    url: &str,
    want: Option<&Expected>,
    verification: &Verification,
) -> Result<(PathBuf, String), FetchError> {
    let vouched_by = match verification {
        Verification::ChecksumFile(c) => Some(c.as_str()),
        _ => None,
    };
    if let Some(sha) = want.and_then(|w| cache.find(w)) {
        cache.remember_url(url, &sha, vouched_by)?;
        return Ok((cache.blob(&sha), sha));
    }
    let (part, _) = cache.partial(url);
    // The cache's sha256 and the digest that vouches for the file, in one pass.
    let also: Vec<Algorithm> = want.iter().map(|w| w.algorithm).collect();
    let (got, _) = client.download(cache, url, &also)?;
    if let Some(want) = want {
        // Nothing was pinned when the hash came from the vendor's checksum file: advising to
        // update a pin would send the user looking for one.
        let (what, action) = match verification {
            Verification::ChecksumFile(from) => (
                format!("{url} (checked against {from})"),
                "the download was deleted; try again, and if it fails again the server is \
                 serving another file than its checksum file lists",
            ),
            _ => (
                url.to_string(),
                "the download was deleted. If the vendor replaced the image, update the \
                 pinned sha256; otherwise try again",
            ),
        };
        verify(want, &got, what, action).inspect_err(|_| http::discard_partial(cache, url))?;
    }
    // Content-addressed: even an unverified (insecure) download is named by what it is.
    let blob = cache.blob(&got.sha256);
    cache.commit(&part, &blob)?;
    http::discard_partial(cache, url);
    if let Some(want) = want {
        cache.remember(want, &got.sha256)?;
        cache.remember_url(url, &got.sha256, vouched_by)?;
    }
    Ok((blob, got.sha256))
}
