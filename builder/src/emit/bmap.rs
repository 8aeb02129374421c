//! The block map of the raw image in bmaptool's XML format 2.0, so `bmaptool copy` writes only
//! the blocks that matter and checks each range's sha256 as it goes. A block is left out only
//! when it is all zeros and nothing uses it (see `image::FreeSpace` for why both).

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// bmap block size; also the granularity at which free all-zero blocks are left out.
pub const BLOCK_SIZE: u64 = 4096;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

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
    mapped_blocks: u64,
}

impl BmapBuilder {
    pub fn new(image_size: u64) -> Self {
        BmapBuilder {
            image_size,
            ranges: Vec::new(),
            open: None,
            next_block: 0,
            mapped_blocks: 0,
        }
    }

    /// The next `data.len()` bytes of the image are data (a whole number of blocks, except at
    /// the end of an image whose size is not a multiple of the block size).
    pub fn mapped(&mut self, data: &[u8]) {
        let (_, hasher) = self
            .open
            .get_or_insert_with(|| (self.next_block, Sha256::new()));
        hasher.update(data);
        let blocks = (data.len() as u64).div_ceil(BLOCK_SIZE);
        self.next_block += blocks;
        self.mapped_blocks += blocks;
    }

    /// The next `len` bytes of the image are zeros that must be written all the same (they
    /// mean something to the filesystem that owns them).
    pub fn mapped_zeros(&mut self, mut len: u64) {
        while len > 0 {
            let n = len.min(ZEROS.len() as u64);
            self.mapped(&ZEROS[..n as usize]);
            len -= n;
        }
    }

    /// The next `len` bytes of the image are zeros nothing uses: flashing may skip them.
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

    /// Blocks mapped so far.
    pub fn mapped_blocks(&self) -> u64 {
        self.mapped_blocks
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

/// A block map read back from a `.bmap` file (format 2.0 with sha256 range checksums, which is
/// what [`BmapBuilder`] and bmaptool 3.x write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// Mapped byte ranges, sorted, disjoint, within the image.
    pub ranges: Vec<ByteRange>,
}

/// A mapped range of bytes `start..end` of the raw image and the sha256 of those bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    #[error("not a block map: no <{0}> element")]
    Missing(&'static str),
    #[error("unsupported block map: {0}")]
    Unsupported(String),
    #[error("invalid block map: {0}")]
    Invalid(String),
    #[error("the block map's own checksum does not match: it was edited or truncated")]
    Checksum,
}

impl Bmap {
    /// Parses and checks a bmap: its file checksum, and ranges that are sorted, disjoint and
    /// inside the image. Only the elements bmaptool itself reads are looked at; the format is
    /// flat enough that a full XML parser would add a dependency and nothing else.
    pub fn parse(text: &str) -> Result<Bmap, BmapError> {
        let number = |tag: &'static str| -> Result<u64, BmapError> {
            element(text, tag)?
                .trim()
                .parse()
                .map_err(|_| BmapError::Invalid(format!("<{tag}> is not a number")))
        };
        let version = attribute(text, "bmap", "version").unwrap_or_default();
        if !version.starts_with("2.") {
            return Err(BmapError::Unsupported(format!(
                "version {version:?} (only 2.x, with sha256 checksums, is read)"
            )));
        }
        let kind = element(text, "ChecksumType")?.trim().to_string();
        if kind != "sha256" {
            return Err(BmapError::Unsupported(format!("checksum type {kind:?}")));
        }
        let stated = element(text, "BmapFileChecksum")?.trim().to_string();
        let zeroed = text.replacen(&stated, &"0".repeat(stated.len()), 1);
        if hex::encode(Sha256::digest(zeroed.as_bytes())) != stated {
            return Err(BmapError::Checksum);
        }
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        if block_size == 0 || !block_size.is_multiple_of(512) {
            return Err(BmapError::Invalid(format!("block size {block_size}")));
        }
        let blocks = image_size.div_ceil(block_size);
        let map = element(text, "BlockMap")?;
        let mut ranges: Vec<ByteRange> = Vec::new();
        let mut rest = map;
        while let Some(open) = rest.find("<Range") {
            let after = &rest[open..];
            let tag_end = after
                .find('>')
                .ok_or_else(|| BmapError::Invalid("unterminated <Range>".into()))?;
            let close = after
                .find("</Range>")
                .ok_or_else(|| BmapError::Invalid("unterminated <Range>".into()))?;
            let tag = &after[..tag_end];
            let body = after[tag_end + 1..close].trim();
            rest = &after[close..];
            let sum = tag
                .split("chksum=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .ok_or_else(|| BmapError::Invalid(format!("range {body} has no chksum")))?;
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(sum, &mut sha256)
                .map_err(|_| BmapError::Invalid(format!("range {body}: bad chksum {sum:?}")))?;
            let bad = || BmapError::Invalid(format!("range {body:?}"));
            let (first, last) = match body.split_once('-') {
                Some((a, b)) => (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                ),
                None => {
                    let n: u64 = body.parse().map_err(|_| bad())?;
                    (n, n)
                }
            };
            if first > last || last >= blocks {
                return Err(bad());
            }
            let start = first * block_size;
            if ranges.last().is_some_and(|prev| prev.end > start) {
                return Err(BmapError::Invalid(format!(
                    "range {body} overlaps or precedes the one before"
                )));
            }
            ranges.push(ByteRange {
                start,
                end: ((last + 1) * block_size).min(image_size),
                sha256,
            });
        }
        Ok(Bmap {
            image_size,
            block_size,
            ranges,
        })
    }

    /// Bytes the map says hold data.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
}

/// The text between `<tag>` (which may carry attributes) and `</tag>`.
fn element<'a>(text: &'a str, tag: &'static str) -> Result<&'a str, BmapError> {
    let open = format!("<{tag}");
    let start = text
        .match_indices(&open)
        .map(|(i, _)| i + open.len())
        .find(|&i| text[i..].starts_with(['>', ' ', '\t', '\n']))
        .ok_or(BmapError::Missing(tag))?;
    let body = start + text[start..].find('>').ok_or(BmapError::Missing(tag))? + 1;
    let end = body
        + text[body..]
            .find(&format!("</{tag}>"))
            .ok_or(BmapError::Missing(tag))?;
    Ok(&text[body..end])
}

fn attribute(text: &str, tag: &str, name: &str) -> Option<String> {
    let open = text.find(&format!("<{tag} "))?;
    let tag_text = &text[open..open + text[open..].find('>')?];
    let value = tag_text.split(&format!("{name}=\"")).nth(1)?;
    Some(value.split('"').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_map_reads_back() {
        let mut b = BmapBuilder::new(5 * BLOCK_SIZE + 512);
        let data = vec![7u8; 2 * BLOCK_SIZE as usize];
        b.mapped(&data);
        b.unmapped(2 * BLOCK_SIZE);
        b.mapped(&[1u8; 4096 + 512]);
        let text = b.finish();
        let map = Bmap::parse(&text).unwrap();
        assert_eq!(map.image_size, 5 * BLOCK_SIZE + 512);
        assert_eq!(map.ranges.len(), 2);
        assert_eq!(map.ranges[0].start, 0);
        assert_eq!(map.ranges[0].end, 2 * BLOCK_SIZE);
        assert_eq!(
            map.ranges[0].sha256,
            <[u8; 32]>::from(Sha256::digest(&data))
        );
        assert_eq!(map.ranges[1].start, 4 * BLOCK_SIZE);
        assert_eq!(map.ranges[1].end, 5 * BLOCK_SIZE + 512);
        assert_eq!(map.mapped_bytes(), 3 * BLOCK_SIZE + 512);
    }

    #[test]
    fn an_edited_or_foreign_map_is_refused() {
        let mut b = BmapBuilder::new(BLOCK_SIZE);
        b.mapped(&[1u8; 4096]);
        let text = b.finish();
        let edited = text.replace("<ImageSize> 4096", "<ImageSize> 8192");
        assert!(matches!(Bmap::parse(&edited), Err(BmapError::Checksum)));
        let v1 = text.replace("version=\"2.0\"", "version=\"1.4\"");
        assert!(matches!(Bmap::parse(&v1), Err(BmapError::Unsupported(_))));
        assert!(matches!(
            Bmap::parse("<html/>"),
            Err(BmapError::Unsupported(_))
        ));
    }
}
