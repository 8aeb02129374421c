//! imagegen: rootless, offline editing of vendor OS disk images, and the pipeline that turns
//! them into zero-touch cluster nodes.
//!
//! Layers, bottom up: `disk` (partition tables), `fs` (one `Op` vocabulary over FAT and ext4),
//! `image` (partitions + filesystems + the mount view from the image's own /etc/fstab).

pub mod addons;
pub mod agent;
pub mod arch;
pub mod argv;
pub mod board;
pub mod build;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod deb;
pub mod disk;
pub mod distro;
pub mod emit;
pub mod fetch;
pub mod flash;
pub mod fs;
pub mod identity;
pub mod image;
pub mod interrupt;
pub mod io;
pub mod personalize;
pub mod plan;
pub mod pubkey;
pub mod vpn;
