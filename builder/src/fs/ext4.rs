//! ext4: read in process through ext4-view, write through e2fsprogs (debugfs) on the
//! whole-disk image at the partition offset.
