//! Work on a stream's bytes moved to a thread of its own: the producer reads into recycled
//! buffers and sends them over a bounded channel; the thread runs a body that sees each piece
//! in order (data with its offset, or a run of zeros) and returns its result at the end.
//!
//! What it is for: the hashes the output stage must compute (the sha256 of every byte of the
//! raw image, holes included; the bmap's per-range sha256; the sha256 of the compressed
//! output) are serial and otherwise sit on the thread that feeds the compressor, so on a
//! machine with a core to spare they slow it (BENCHMARKS.md, note 3). The channel holds a few
//! buffers, so memory stays at `BUFFERS * BUFFER_SIZE` and the producer waits rather than
//! queueing the image in memory when the thread falls behind.

use std::io;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{self, JoinHandle};

use super::BUFFER_SIZE;

/// Buffers in flight between the producer and the thread (each `BUFFER_SIZE`).
const BUFFERS: usize = 4;

/// One piece of the stream, as the thread's body sees it.
pub enum Chunk<'a> {
    Data { pos: u64, bytes: &'a [u8] },
    Zeros { pos: u64, len: u64 },
}

enum Piece {
    Data { pos: u64, buf: Vec<u8> },
    Zeros { pos: u64, len: u64 },
}

/// The pieces sent to the thread, handed to its body in order.
pub struct Chunks {
    todo: Receiver<Piece>,
    give_back: SyncSender<Vec<u8>>,
}

impl Chunks {
    /// Calls `f` on every piece until the producer finishes, giving each buffer back after.
    pub fn for_each(self, mut f: impl FnMut(Chunk<'_>)) {
        for piece in self.todo {
            match piece {
                Piece::Data { pos, buf } => {
                    f(Chunk::Data { pos, bytes: &buf });
                    // The producer may be gone after an error; nothing to do then.
                    let _ = self.give_back.send(buf);
                }
                Piece::Zeros { pos, len } => f(Chunk::Zeros { pos, len }),
            }
        }
    }
}

/// The producer's end.
pub struct Offload<T> {
    pieces: SyncSender<Piece>,
    free: Receiver<Vec<u8>>,
    thread: JoinHandle<T>,
}

impl<T: Send + 'static> Offload<T> {
    /// Starts a thread named `name` running `body`, which returns once its `Chunks` end.
    pub fn spawn(
        name: &str,
        body: impl FnOnce(Chunks) -> T + Send + 'static,
    ) -> io::Result<Offload<T>> {
        let (pieces, todo) = sync_channel::<Piece>(BUFFERS);
        let (give_back, free) = sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            // Cannot block: the channel has room for all of them.
            let _ = give_back.send(vec![0; BUFFER_SIZE]);
        }
        let chunks = Chunks { todo, give_back };
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || body(chunks))?;
        Ok(Offload {
            pieces,
            free,
            thread,
        })
    }

    /// A `BUFFER_SIZE` buffer to fill; waits while all are with the thread.
    pub fn buffer(&self) -> io::Result<Vec<u8>> {
        let mut buf = self.free.recv().map_err(|_| gone())?;
        buf.resize(BUFFER_SIZE, 0);
        Ok(buf)
    }

    /// Sends `buf[..len]`, the bytes at `pos`; the buffer comes back through `buffer`.
    pub fn data(&self, pos: u64, mut buf: Vec<u8>, len: usize) -> io::Result<()> {
        buf.truncate(len);
        self.pieces
            .send(Piece::Data { pos, buf })
            .map_err(|_| gone())
    }

    /// Sends a copy of `bytes`, the bytes at `pos`.
    pub fn copy(&self, mut pos: u64, bytes: &[u8]) -> io::Result<()> {
        for part in bytes.chunks(BUFFER_SIZE) {
            let mut buf = self.buffer()?;
            buf[..part.len()].copy_from_slice(part);
            self.data(pos, buf, part.len())?;
            pos += part.len() as u64;
        }
        Ok(())
    }

    /// Sends `len` zeros at `pos`, without a buffer.
    pub fn zeros(&self, pos: u64, len: u64) -> io::Result<()> {
        self.pieces
            .send(Piece::Zeros { pos, len })
            .map_err(|_| gone())
    }

    /// Ends the stream and returns what the body returned.
    pub fn finish(self) -> io::Result<T> {
        drop(self.pieces);
        self.thread.join().map_err(|_| gone())
    }
}

fn gone() -> io::Error {
    io::Error::other("a worker thread of the output stage stopped unexpectedly")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_sees_every_piece_in_order() {
        let offload = Offload::spawn("test", |chunks| {
            let mut seen = Vec::new();
            chunks.for_each(|c| match c {
                Chunk::Data { pos, bytes } => seen.push((pos, bytes.to_vec())),
                Chunk::Zeros { pos, len } => seen.push((pos, vec![0; len as usize])),
            });
            seen
        })
        .unwrap();
        // More pieces than buffers: the producer must get them back to go on.
        let big = vec![7u8; BUFFER_SIZE * (BUFFERS + 2) + 5];
        offload.copy(0, &big).unwrap();
        offload.zeros(big.len() as u64, 3).unwrap();
        let mut buf = offload.buffer().unwrap();
        buf[..2].copy_from_slice(b"ab");
        offload.data(big.len() as u64 + 3, buf, 2).unwrap();
        let seen = offload.finish().unwrap();
        let mut all = Vec::new();
        for (pos, bytes) in seen {
            assert_eq!(pos, all.len() as u64);
            all.extend(bytes);
        }
        let mut want = big;
        want.extend([0, 0, 0, b'a', b'b']);
        assert_eq!(all, want);
    }

    #[test]
    fn a_dead_thread_is_an_error_not_a_hang() {
        let offload = Offload::spawn("test", |_chunks| ()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut failed = false;
        for _ in 0..BUFFERS + 2 {
            failed |= offload.zeros(0, 1).is_err();
        }
        assert!(failed);
    }
}
