//! Small composable `Read`/`Write` adapters for the streaming pipeline (hash, progress) and
//! the sparse-file helpers (data extents), one per file.
//! Each stage of fetch -> unpack -> emit wraps the next instead of re-reading data.

pub mod compare;
pub mod copy_range;
pub mod extents;
pub mod hash;
pub mod hash_thread;
pub mod offload;
pub mod progress;
pub mod sparse_writer;
pub mod tee;
pub mod window;
pub mod zero;

/// Buffer size for streaming copies: large enough to amortize syscalls and let the xz/zstd
/// and sha256 code work on big chunks, small enough for the 256 MiB memory budget.
pub const BUFFER_SIZE: usize = 256 * 1024;
