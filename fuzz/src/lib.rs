//! Shared by the fuzz targets: a sparse in-memory disk image and an input reader.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;

pub const SECTOR: u64 = 512;

/// A disk image of any length held as byte runs over zeros, so a few hundred bytes of fuzz
/// input can describe a multi-gigabyte image. Writes are recorded so a target can check where
/// they landed.
#[derive(Default)]
pub struct SparseImage {
    len: u64,
    /// Later runs cover earlier ones.
    runs: Vec<(u64, Vec<u8>)>,
    pos: u64,
    pub writes: Vec<Range<u64>>,
}

impl SparseImage {
    pub fn new(len: u64) -> SparseImage {
        SparseImage {
            len,
            ..SparseImage::default()
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn set_len(&mut self, len: u64) {
        self.len = len;
    }

    /// Places bytes at `at`, clipped to the image length.
    pub fn put(&mut self, at: u64, bytes: &[u8]) {
        let room = self.len.saturating_sub(at).min(bytes.len() as u64) as usize;
        if room > 0 {
            self.runs.push((at, bytes[..room].to_vec()));
        }
    }

    /// Reads what the image holds at `at` (zeros past the end).
    pub fn read_at(&self, at: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = at.saturating_add(buf.len() as u64);
        for (start, data) in &self.runs {
            let run_end = start + data.len() as u64;
            let (lo, hi) = (at.max(*start), end.min(run_end));
            if lo < hi {
                buf[(lo - at) as usize..(hi - at) as usize]
                    .copy_from_slice(&data[(lo - start) as usize..(hi - start) as usize]);
            }
        }
        let valid = self.len.saturating_sub(at).min(buf.len() as u64) as usize;
        buf[valid..].fill(0);
    }
}

impl Read for SparseImage {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.len.saturating_sub(self.pos).min(buf.len() as u64) as usize;
        self.read_at(self.pos, &mut buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SparseImage {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.pos + buf.len() as u64;
        self.writes.push(self.pos..end);
        self.len = self.len.max(end);
        self.put(self.pos, buf);
        self.pos = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SparseImage {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

/// Consumes fuzz input; reads past the end give zeros so every input decodes.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let take = n.min(self.0.len());
        let mut v = self.0[..take].to_vec();
        v.resize(n, 0);
        self.0 = &self.0[take..];
        v
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1)[0]
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes(4).try_into().unwrap())
    }

    pub fn rest(&mut self) -> Vec<u8> {
        let v = self.0.to_vec();
        self.0 = &[];
        v
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap())
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

/// The raw fields of a GPT header that say where its structures are, decoded independently
/// of the code under test.
pub struct RawHeader {
    pub my_lba: u64,
    pub alt_lba: u64,
    pub last_usable: u64,
    pub entry_lba: u64,
    pub entries: u32,
    pub entry_size: u32,
}

impl RawHeader {
    pub fn read(img: &SparseImage, lba: u64) -> RawHeader {
        let mut h = [0u8; 92];
        img.read_at(lba * SECTOR, &mut h);
        RawHeader {
            my_lba: le64(&h[24..]),
            alt_lba: le64(&h[32..]),
            last_usable: le64(&h[48..]),
            entry_lba: le64(&h[72..]),
            entries: le32(&h[80..]),
            entry_size: le32(&h[84..]),
        }
    }

    pub fn array_bytes(&self) -> u64 {
        u64::from(self.entries) * u64::from(self.entry_size)
    }
}

/// Makes the CRCs of the header at `lba` (and of its entry array, when the header's fields
/// allow reading it) valid, so the fuzzer reaches the checks behind them.
pub fn fix_gpt_crcs(img: &mut SparseImage, lba: u64) {
    let raw = RawHeader::read(img, lba);
    let mut h = [0u8; 92];
    img.read_at(lba * SECTOR, &mut h);
    if raw.entry_size == 128 && raw.entries <= 16384 {
        let mut array = vec![0u8; raw.array_bytes() as usize];
        img.read_at(raw.entry_lba.saturating_mul(SECTOR), &mut array);
        h[88..92].copy_from_slice(&crc32fast::hash(&array).to_le_bytes());
    }
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    img.put(lba * SECTOR, &h);
}

/// A protective MBR for an image of `sectors` sectors.
pub fn protective_mbr(sectors: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[446 + 4] = 0xee;
    s[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    s[446 + 12..446 + 16].copy_from_slice(&size.to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

/// Builds a GPT image from fuzz input: header and entries of the primary copy, and a backup
/// header and entries at the end, CRCs optionally made valid.
pub fn gpt_image(inp: &mut Input) -> SparseImage {
    let sectors = 3 + u64::from(inp.u32() % (1 << 24));
    let flags = inp.u8();
    let mut img = SparseImage::new(sectors * SECTOR);
    img.put(0, &protective_mbr(sectors));
    let primary = inp.bytes(92);
    let primary_entries = inp.bytes(16 * 128);
    let backup = inp.bytes(92);
    let backup_entries = inp.bytes(16 * 128);
    img.put(SECTOR, &primary);
    img.put(2 * SECTOR, &primary_entries);
    img.put((sectors - 1) * SECTOR, &backup);
    img.put(sectors.saturating_sub(33) * SECTOR, &backup_entries);
    if flags & 1 != 0 {
        fix_gpt_crcs(&mut img, 1);
    }
    if flags & 2 != 0 {
        fix_gpt_crcs(&mut img, sectors - 1);
    }
    img
}

/// Builds an MBR image from fuzz input: a length and sector 0, with the 0x55AA signature
/// unless the input asks otherwise.
pub fn mbr_image(inp: &mut Input) -> SparseImage {
    let len = u64::from(inp.u32()) * SECTOR / 4 + u64::from(inp.u8());
    let flags = inp.u8();
    let mut s = inp.bytes(512);
    if flags & 1 == 0 {
        s[510] = 0x55;
        s[511] = 0xaa;
    }
    let mut img = SparseImage::new(len);
    img.put(0, &s);
    img
}
