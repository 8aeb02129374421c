//! A ZeroTier node identity (type 0), made here so it can be kept in the node's identity state
//! and a reflashed node stays the same ZeroTier member.
//!
//! Written from ZeroTierOne's `node/Identity.cpp`, `node/C25519.hpp/.cpp`, `node/Address.hpp`
//! and `node/Constants.hpp` (zerotier/ZeroTierOne 36b4659f77bc480fdc510304bc53f009fde5d629):
//!
//! - the key pair is 64 bytes each way: public = X25519 public || Ed25519 public; private =
//!   X25519 secret (clamped only when used) || Ed25519 seed (C25519.cpp `_calcPubED` hashes
//!   bytes 32..64 of the private with SHA-512 and clamps, i.e. RFC 8032 key generation; the
//!   NaCl habit of appending the public key to the secret is left out);
//! - the address is the last 5 bytes (59..64) of a memory-hard hash of the public key, and the
//!   pair is only acceptable when that hash's first byte is below 17 (hashcash);
//! - addresses 0 and those starting with 0xff are reserved (`Address::isReserved`);
//! - text: `address:0:public-hex[:private-hex]`, lower-case hex, no newline (zerotier-one
//!   writes `identity.secret` with `strlen` of that string).

use std::fmt;
use std::str::FromStr;

use zerotier_pow::memory_hard_hash;

/// Bytes in a C25519 public or private key.
pub const KEY_LEN: usize = 64;
/// `ZT_IDENTITY_GEN_MEMORY`: the hash's scratch buffer (2 MiB).
const GEN_MEMORY: usize = zerotier_pow::GEN_MEMORY;
/// `ZT_IDENTITY_GEN_HASHCASH_FIRST_BYTE_LESS_THAN`.
const HASHCASH_FIRST_BYTE_LESS_THAN: u8 = 17;
/// `ZT_ADDRESS_RESERVED_PREFIX`.
const RESERVED_PREFIX: u64 = 0xff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("a ZeroTier identity is address:0:public[:private], this has {0} fields")]
    Fields(usize),
    #[error("the address {0:?} is not 10 hex digits")]
    Address(String),
    #[error("the address {0} is reserved")]
    Reserved(String),
    #[error("identity type {0:?} is not 0 (the only type zerotier-one accepts)")]
    Type(String),
    #[error("the {0} key is not 128 hex digits")]
    Key(&'static str),
}

/// A 40-bit ZeroTier address (the member id in ZeroTier Central).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(u64);

impl Address {
    fn from_bytes(b: &[u8; 5]) -> Address {
        Address(b.iter().fold(0, |a, &x| (a << 8) | u64::from(x)))
    }

    /// `Address::isReserved`: 0 and the 0xff prefix (kept for longer addresses) are never
    /// given to nodes.
    pub fn is_reserved(self) -> bool {
        self.0 == 0 || self.0 >> 32 == RESERVED_PREFIX
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:010x}", self.0)
    }
}

/// A type-0 identity, with its private key when we have it.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    address: Address,
    public: [u8; KEY_LEN],
    private: Option<[u8; KEY_LEN]>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        // Never the private key: a Debug print may land in a log.
        f.debug_struct("Identity")
            .field("address", &self.address)
            .field("has_private", &self.private.is_some())
            .finish()
    }
}

impl Identity {
    /// A new identity; `random` fills buffers with secure randomness (a seeded source in
    /// tests). Each candidate costs one memory-hard hash and about one in 15 passes.
    pub fn generate<E>(mut random: impl FnMut(&mut [u8]) -> Result<(), E>) -> Result<Identity, E> {
        let mut genmem = vec![0u8; GEN_MEMORY];
        let mut private = [0u8; KEY_LEN];
        random(&mut private[32..])?;
        let ed = ed25519_public(&private);
        loop {
            // ZeroTierOne keeps the Ed25519 half and retries new X25519 secrets
            // (`C25519::generateSatisfying`); fresh randomness per attempt does the same job.
            random(&mut private[..32])?;
            let mut public = [0u8; KEY_LEN];
            public[..32].copy_from_slice(&x25519_public(&private));
            public[32..].copy_from_slice(&ed);
            let digest = memory_hard_hash(&public, &mut genmem);
            if digest[0] >= HASHCASH_FIRST_BYTE_LESS_THAN {
                continue;
            }
            let address = address_of(&digest);
            if address.is_reserved() {
                continue;
            }
            return Ok(Identity {
                address,
                public,
                private: Some(private),
            });
        }
    }

    /// The identity a private key belongs to: both public halves and the address derived from
    /// it, as zerotier-one would. `None` when the key fails the hashcash or gives a reserved
    /// address, i.e. zerotier-one would refuse it.
    pub fn from_private(private: &[u8; KEY_LEN]) -> Option<Identity> {
        let mut public = [0u8; KEY_LEN];
        public[..32].copy_from_slice(&x25519_public(private));
        public[32..].copy_from_slice(&ed25519_public(private));
        let digest = memory_hard_hash(&public, &mut vec![0u8; GEN_MEMORY]);
        let id = Identity {
            address: address_of(&digest),
            public,
            private: Some(*private),
        };
        (digest[0] < HASHCASH_FIRST_BYTE_LESS_THAN && !id.address.is_reserved()).then_some(id)
    }

    pub fn address(&self) -> Address {
        self.address
    }

    pub fn has_private(&self) -> bool {
        self.private.is_some()
    }

    /// `Identity::locallyValidate`, the check zerotier-one makes on its own identity at start
    /// (node/Node.cpp throws `ZT_EXCEPTION_INVALID_IDENTITY` when it fails): the address is not
    /// reserved, the public key's hash passes the hashcash and ends in the address. With a
    /// private key, also that it is the one the public key was made from, which zerotier-one
    /// does not check but a corrupted state file would break later.
    pub fn locally_validate(&self) -> bool {
        if self.address.is_reserved() {
            return false;
        }
        let digest = memory_hard_hash(&self.public, &mut vec![0u8; GEN_MEMORY]);
        if digest[0] >= HASHCASH_FIRST_BYTE_LESS_THAN || address_of(&digest) != self.address {
            return false;
        }
        match &self.private {
            None => true,
            Some(p) => {
                x25519_public(p) == self.public[..32] && ed25519_public(p) == self.public[32..]
            }
        }
    }

    /// `identity.public`: `address:0:public`.
    pub fn public_string(&self) -> String {
        format!("{}:0:{}", self.address, hex::encode(self.public))
    }

    /// `identity.secret`: `address:0:public:private`; `None` without the private key.
    pub fn secret_string(&self) -> Option<String> {
        let p = self.private.as_ref()?;
        Some(format!("{}:{}", self.public_string(), hex::encode(p)))
    }
}

impl FromStr for Identity {
    type Err = ParseError;

    /// Strict where zerotier-one is lenient (it reads the address with a forgiving hex parser):
    /// what we read is what we wrote, so anything else is a damaged file.
    fn from_str(s: &str) -> Result<Identity, ParseError> {
        let fields: Vec<&str> = s.trim_end().split(':').collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(ParseError::Fields(fields.len()));
        }
        let mut a = [0u8; 5];
        if fields[0].len() != 10 || hex::decode_to_slice(fields[0], &mut a).is_err() {
            return Err(ParseError::Address(fields[0].to_string()));
        }
        let address = Address::from_bytes(&a);
        if address.is_reserved() {
            return Err(ParseError::Reserved(address.to_string()));
        }
        if fields[1] != "0" {
            return Err(ParseError::Type(fields[1].to_string()));
        }
        let key = |s: &str, which| {
            let mut k = [0u8; KEY_LEN];
            hex::decode_to_slice(s, &mut k)
                .map(|()| k)
                .map_err(|_| ParseError::Key(which))
        };
        Ok(Identity {
            address,
            public: key(fields[2], "public")?,
            private: fields.get(3).map(|p| key(p, "private")).transpose()?,
        })
    }
}

fn address_of(digest: &[u8; 64]) -> Address {
    let mut a = [0u8; 5];
    a.copy_from_slice(&digest[59..64]);
    Address::from_bytes(&a)
}

fn x25519_public(private: &[u8; KEY_LEN]) -> [u8; 32] {
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&private[..32]);
    let secret = x25519_dalek::StaticSecret::from(secret);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

fn ed25519_public(private: &[u8; KEY_LEN]) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&private[32..]);
    ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    // From ZeroTierOne's own self-test: zerotier/ZeroTierOne, selftest.cpp (commit
    // 36b4659f77bc480fdc510304bc53f009fde5d629), KNOWN_GOOD_IDENTITY and KNOWN_BAD_IDENTITY.
    // The bad one is the good one with the address's first digit changed (8e -> 9e).
    const KNOWN_GOOD: &str = "8e4df28b72:0:ac3d46abe0c21f3cfe7a6c8d6a85cfcffcb82fbd55af6a4d6350657c68200843fa2e16f9418bbd9702cae365f2af5fb4c420908b803a681d4daef6114d78a2d7:bd8dd6e4ce7022d2f812797a80c6ee8ad180dc4ebf301dec8b06d1be08832bddd63a2f1cfa7b2c504474c75bdc8898ba476ef92e8e2d0509f8441985171ff16e";
    const KNOWN_BAD: &str = "9e4df28b72:0:ac3d46abe0c21f3cfe7a6c8d6a85cfcffcb82fbd55af6a4d6350657c68200843fa2e16f9418bbd9702cae365f2af5fb4c420908b803a681d4daef6114d78a2d7:bd8dd6e4ce7022d2f812797a80c6ee8ad180dc4ebf301dec8b06d1be08832bddd63a2f1cfa7b2c504474c75bdc8898ba476ef92e8e2d0509f8441985171ff16e";

    #[test]
    fn zerotier_known_good_identity_validates() {
        let id: Identity = KNOWN_GOOD.parse().unwrap();
        assert!(id.locally_validate());
        assert_eq!(id.address().to_string(), "8e4df28b72");
        assert_eq!(id.secret_string().unwrap(), KNOWN_GOOD);
        // Without the private key too, as identity.public is read.
        let public: Identity = id.public_string().parse().unwrap();
        assert!(!public.has_private());
        assert!(public.locally_validate());
    }

    #[test]
    fn zerotier_known_bad_identity_is_refused() {
        let id: Identity = KNOWN_BAD.parse().unwrap();
        assert!(!id.locally_validate());
    }

    #[test]
    fn the_known_good_identity_follows_from_its_private_key() {
        let good: Identity = KNOWN_GOOD.parse().unwrap();
        let private = good.private.unwrap();
        let derived = Identity::from_private(&private).unwrap();
        assert_eq!(derived.secret_string().unwrap(), KNOWN_GOOD);
        assert_eq!(derived, good);
    }

    #[test]
    fn a_private_key_not_matching_the_public_is_refused() {
        let mut id: Identity = KNOWN_GOOD.parse().unwrap();
        id.private.as_mut().unwrap()[40] ^= 1;
        assert!(!id.locally_validate());
    }

    #[test]
    fn malformed_text_is_refused() {
        let pubhex = &KNOWN_GOOD[13..13 + 128];
        for (text, want) in [
            ("8e4df28b72:0", ParseError::Fields(2)),
            ("8e4df28b7:0:", ParseError::Address("8e4df28b7".into())),
            (
                &format!("0000000000:0:{pubhex}"),
                ParseError::Reserved("0000000000".into()),
            ),
            (
                &format!("ff4df28b72:0:{pubhex}"),
                ParseError::Reserved("ff4df28b72".into()),
            ),
            (
                &format!("8e4df28b72:1:{pubhex}"),
                ParseError::Type("1".into()),
            ),
            ("8e4df28b72:0:abcd", ParseError::Key("public")),
            (
                &format!("8e4df28b72:0:{pubhex}:00"),
                ParseError::Key("private"),
            ),
            (
                &format!("8e4df28b72:0:{pubhex}:{pubhex}:x"),
                ParseError::Fields(5),
            ),
        ] {
            assert_eq!(text.parse::<Identity>(), Err(want), "{text}");
        }
    }

    /// A fixed, seeded byte source (SHA-512 in counter mode) so a failure can be reproduced.
    fn seeded(seed: u8) -> impl FnMut(&mut [u8]) -> Result<(), std::convert::Infallible> {
        use sha2::{Digest, Sha512};
        let mut counter = 0u64;
        move |buf: &mut [u8]| {
            for chunk in buf.chunks_mut(64) {
                let block = Sha512::new()
                    .chain_update([seed])
                    .chain_update(counter.to_le_bytes())
                    .finalize();
                chunk.copy_from_slice(&block[..chunk.len()]);
                counter += 1;
            }
            Ok(())
        }
    }

    /// Every seed walks the retry path as a real build does (a candidate passes about one
    /// time in 15); zerotier-pow is optimized even in test builds, so this stays quick.
    #[test]
    fn generated_identities_validate_and_round_trip() {
        let mut addresses = std::collections::HashSet::new();
        for seed in 0..6 {
            let Ok(id) = Identity::generate(seeded(seed));
            assert!(id.locally_validate(), "seed {seed}");
            let secret = id.secret_string().unwrap();
            let back: Identity = secret.parse().unwrap();
            assert_eq!(back, id);
            assert_eq!(back.secret_string().unwrap(), secret);
            assert!(secret.starts_with(&id.public_string()));
            assert_eq!(
                Identity::from_private(&id.private.unwrap()).as_ref(),
                Some(&id)
            );
            assert!(addresses.insert(id.address()));
        }
    }
}
