//! FAT16/FAT32 through fatfs 0.3.6. Its `create_dir` corrupts FAT32 (rust-fatfs #117), so
//! directories are made another way.
