//! All-zero block detection, shared by the sparse writers and copiers.

/// Hole granularity: the usual filesystem block size. Zero runs shorter than this are written.
pub const BLOCK: u64 = 4096;

static ZERO_BLOCK: [u8; BLOCK as usize] = [0; BLOCK as usize];

/// Whether `data` is all zeros. Slice equality is a `memcmp`, which libc vectorises, fast
/// even in debug builds.
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(ZERO_BLOCK.len())
        .all(|c| c == &ZERO_BLOCK[..c.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_every_byte() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0u8; 4096]));
        assert!(is_zero(&[0u8; 10000]));
        assert!(is_zero(&[0u8; 100]));
        let mut v = vec![0u8; 4096];
        v[4095] = 1;
        assert!(!is_zero(&v));
        v[4095] = 0;
        v[10] = 1;
        assert!(!is_zero(&v));
        let mut v = vec![0u8; 10000];
        v[9999] = 1;
        assert!(!is_zero(&v));
    }
}
