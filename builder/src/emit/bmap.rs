//! The block map of the raw image in bmaptool's XML format 2.0, so `bmaptool copy` writes only
//! the blocks that hold data and checks each range's sha256 as it goes.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// bmap block size; also the granularity at which all-zero blocks become holes.
pub const BLOCK_SIZE: u64 = 4096;

/// A run of mapped blocks, inclusive, with the sha256 of its bytes.
struct MappedRange {
    first: u64,
    last: u64,
    sha256: [u8; 32],
}

/// Builds the map while the image streams by, one block run at a time, in order.
///
/// Memory grows with the number of mapped ranges (48 bytes each), not with the image size: an
/// image with data in every other block of 8 GiB would need 48 MiB, real images a few KiB.
pub struct BmapBuilder {
    image_size: u64,
    ranges: Vec<MappedRange>,
    open: Option<(u64, Sha256)>,
    next_block: u64,
}

impl BmapBuilder {
    pub fn new(image_size: u64) -> Self {
        BmapBuilder {
            image_size,
            ranges: Vec::new(),
            open: None,
            next_block: 0,
        }
    }

    /// The next `data.len()` bytes of the image are data (a whole number of blocks, except at
    /// the end of an image whose size is not a multiple of the block size).
    pub fn mapped(&mut self, data: &[u8]) {
        let (_, hasher) = self
            .open
            .get_or_insert_with(|| (self.next_block, Sha256::new()));
        hasher.update(data);
        self.next_block += (data.len() as u64).div_ceil(BLOCK_SIZE);
    }

    /// The next `len` bytes of the image are a hole or zeros.
    pub fn unmapped(&mut self, len: u64) {
        self.close();
        self.next_block += len.div_ceil(BLOCK_SIZE);
    }

    fn close(&mut self) {
        if let Some((first, hasher)) = self.open.take() {
            self.ranges.push(MappedRange {
                first,
                last: self.next_block - 1,
                sha256: hasher.finalize().into(),
            });
        }
    }

    /// The bmap file. Its BmapFileChecksum is the sha256 of the file with that field written as
    /// zeros, which is how bmaptool checks it.
    pub fn finish(mut self) -> String {
        self.close();
        let blocks = self.image_size.div_ceil(BLOCK_SIZE);
        let mapped: u64 = self.ranges.iter().map(|r| r.last - r.first + 1).sum();
        let placeholder = "0".repeat(64);

        let mut xml = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            xml,
            "<?xml version=\"1.0\" ?>\n\
             <!-- Block map of a raw disk image, for bmaptool: only the listed blocks hold\n     \
             data, everything else reads as zeros. Written by imagegen. -->\n\
             <bmap version=\"2.0\">\n    \
             <ImageSize> {size} </ImageSize>\n    \
             <BlockSize> {BLOCK_SIZE} </BlockSize>\n    \
             <BlocksCount> {blocks} </BlocksCount>\n    \
             <MappedBlocksCount> {mapped} </MappedBlocksCount>\n    \
             <ChecksumType> sha256 </ChecksumType>\n    \
             <!-- sha256 of this file with the value below replaced by zeros. -->\n    \
             <BmapFileChecksum> {placeholder} </BmapFileChecksum>\n    \
             <BlockMap>\n",
            size = self.image_size,
        );
        for r in &self.ranges {
            let sum = hex::encode(r.sha256);
            if r.first == r.last {
                let _ = writeln!(xml, "        <Range chksum=\"{sum}\"> {} </Range>", r.first);
            } else {
                let _ = writeln!(
                    xml,
                    "        <Range chksum=\"{sum}\"> {}-{} </Range>",
                    r.first, r.last
                );
            }
        }
        xml.push_str("    </BlockMap>\n</bmap>\n");

        let checksum = hex::encode(Sha256::digest(xml.as_bytes()));
        xml.replacen(&placeholder, &checksum, 1)
    }
}
