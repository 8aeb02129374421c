//! ZeroTier's memory-hard identity hash (`Identity::_computeMemoryHardHash` in ZeroTierOne's
//! `node/Identity.cpp`), the proof of work behind every member address.
//!
//! A crate of its own because of build profiles, not design: the hash runs about 10 MiB of
//! Salsa20/20 per candidate key and a new identity takes about 15 candidates. Salsa20's code is
//! generic, so it is compiled in the crate that calls it, at that crate's opt-level; inside
//! `imagegen` an unoptimized test build spent about 1.1 s per candidate, 15 s of CPU in every
//! test that builds a node with `[zerotier]`. The workspace builds this crate optimized in every
//! profile.
#![forbid(unsafe_code)]

use salsa20::Salsa20;
use salsa20::cipher::{KeyIvInit, StreamCipher};
use sha2::{Digest, Sha512};

/// `ZT_IDENTITY_GEN_MEMORY`: the hash's scratch buffer (2 MiB).
pub const GEN_MEMORY: usize = 2 * 1024 * 1024;

/// `_computeMemoryHardHash`. SHA-512 of the public key keys one continuous Salsa20/20 stream
/// (key = digest[0..32], nonce = digest[32..40], block counter from 0). The stream first fills
/// `genmem` chained block by block (each 64-byte block is the previous one encrypted, so it
/// cannot be computed out of order), then 2^17 rounds each read two big-endian u64 words of
/// `genmem` as indexes (one of the digest's 8 words, one of genmem's 2^18), swap those two
/// words and encrypt the digest again.
pub fn memory_hard_hash(public: &[u8; 64], genmem: &mut [u8]) -> [u8; 64] {
    assert_eq!(
        genmem.len(),
        GEN_MEMORY,
        "the scratch buffer is GEN_MEMORY bytes"
    );
    let mut digest = [0u8; 64];
    digest.copy_from_slice(&Sha512::digest(public));
    let mut s20 = Salsa20::new_from_slices(&digest[..32], &digest[32..40])
        .expect("the key is 32 bytes and the nonce 8");

    genmem[..64].fill(0);
    s20.apply_keystream(&mut genmem[..64]);
    for i in (64..GEN_MEMORY).step_by(64) {
        genmem.copy_within(i - 64..i, i);
        s20.apply_keystream(&mut genmem[i..i + 64]);
    }

    let word = |m: &[u8], w: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&m[w * 8..w * 8 + 8]);
        u64::from_be_bytes(b)
    };
    let words = (GEN_MEMORY / 8) as u64;
    for i in (0..GEN_MEMORY / 8).step_by(2) {
        let idx1 = (word(genmem, i) % 8) as usize * 8;
        let idx2 = (word(genmem, i + 1) % words) as usize * 8;
        // A swap of 8-byte words: byte order plays no part.
        let mut tmp = [0u8; 8];
        tmp.copy_from_slice(&genmem[idx2..idx2 + 8]);
        genmem[idx2..idx2 + 8].copy_from_slice(&digest[idx1..idx1 + 8]);
        digest[idx1..idx1 + 8].copy_from_slice(&tmp);
        s20.apply_keystream(&mut digest);
    }
    digest
}
