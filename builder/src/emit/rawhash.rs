//! The sha256 of the whole raw image, computed on its own thread: it is the longest serial
//! step (every byte, holes included, at about 1 GB/s), and off the reading thread it overlaps
//! with the per-range hashing and the compressor.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{self, JoinHandle};

use crate::io::BUFFER_SIZE;
use crate::io::hash::HashWriter;

/// Buffers in flight between the reader and the hashing thread (each `BUFFER_SIZE`).
const BUFFERS: usize = 4;

enum Piece {
    Data(Vec<u8>),
    Zeros(u64),
}

pub struct RawHasher {
    pieces: SyncSender<Piece>,
    free: Receiver<Vec<u8>>,
    thread: JoinHandle<(u64, String)>,
}

impl RawHasher {
    pub fn spawn() -> io::Result<RawHasher> {
        let (pieces, todo) = sync_channel::<Piece>(BUFFERS);
        let (give_back, free) = sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            // Cannot block: the channel has room for all of them.
            let _ = give_back.send(vec![0; BUFFER_SIZE]);
        }
        let thread = thread::Builder::new()
            .name("raw-sha256".into())
            .spawn(move || {
                let mut hash = HashWriter::new(io::sink());
                static ZEROS: [u8; BUFFER_SIZE] = [0; BUFFER_SIZE];
                for piece in todo {
                    match piece {
                        Piece::Data(buf) => {
                            let _ = hash.write_all(&buf);
                            // The reader may be gone after an error; nothing to do then.
                            let _ = give_back.send(buf);
                        }
                        Piece::Zeros(mut left) => {
                            while left > 0 {
                                let n = usize::try_from(left)
                                    .map_or(BUFFER_SIZE, |n| n.min(BUFFER_SIZE));
                                let _ = hash.write_all(&ZEROS[..n]);
                                left -= n as u64;
                            }
                        }
                    }
                }
                let count = hash.count();
                (count, hash.finish().1)
            })?;
        Ok(RawHasher {
            pieces,
            free,
            thread,
        })
    }

    /// A buffer to read the next chunk into; waits while all are being hashed.
    pub fn buffer(&self) -> io::Result<Vec<u8>> {
        let mut buf = self.free.recv().map_err(|_| gone())?;
        buf.resize(BUFFER_SIZE, 0);
        Ok(buf)
    }

    /// Hashes `buf[..len]` and takes the buffer back for reuse.
    pub fn data(&self, mut buf: Vec<u8>, len: usize) -> io::Result<()> {
        buf.truncate(len);
        self.pieces.send(Piece::Data(buf)).map_err(|_| gone())
    }

    pub fn zeros(&self, len: u64) -> io::Result<()> {
        self.pieces.send(Piece::Zeros(len)).map_err(|_| gone())
    }

    /// Bytes hashed and the digest.
    pub fn finish(self) -> io::Result<(u64, String)> {
        drop(self.pieces);
        self.thread.join().map_err(|_| gone())
    }
}

fn gone() -> io::Error {
    io::Error::other("the sha256 thread stopped unexpectedly")
}
