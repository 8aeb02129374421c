//! ZeroTier: each node's identity, made once and kept in the identity state so a reflashed node
//! is the same member.

pub mod identity;
