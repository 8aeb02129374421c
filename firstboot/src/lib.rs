//! The on-board agent of imagegen nodes. Its library owns the node config schema
//! (`/etc/imagegen/node.toml`) and the secret seed format, which the builder writes with these same
//! types, and the systemd units the builder installs.

#![forbid(unsafe_code)]

pub mod attempts;
pub mod backoff;
pub mod backup;
pub mod ca_hash;
pub mod command;
pub mod config;
pub mod http;
pub mod k3s;
pub mod known_hosts;
pub mod names;
pub mod nut;
pub mod packages;
pub mod root;
pub mod run;
pub mod scripts;
pub mod seed;
pub mod status;
pub mod units;
pub mod ups;
pub mod wireguard;
pub mod zerotier;
