//! /etc/fstab parsing (fstab(5)).
