//! The VPN the nodes talk over: what the builder makes for it ahead of first boot.

pub mod wireguard;
pub mod zerotier;
