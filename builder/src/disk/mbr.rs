//! MBR (DOS) partition tables.
