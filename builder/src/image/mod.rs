//! An image: its partition table, the filesystems on its partitions, and the mount view
//! given by the root filesystem's own /etc/fstab.

pub mod fstab;
