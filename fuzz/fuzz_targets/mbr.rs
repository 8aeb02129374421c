#![no_main]
//! MBR reader: any sector 0 over any image length.

use imagegen::disk::{self, TableKind};
use imagegen_fuzz::{Input, mbr_image};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut img = mbr_image(&mut Input(data));
    if let Ok(t) = disk::read_from(&mut img) {
        imagegen_fuzz_check(&t, img.len());
    }
});

fn imagegen_fuzz_check(t: &disk::PartitionTable, len: u64) {
    let mut spans: Vec<(u64, u64)> = t.partitions.iter().map(|p| (p.start, p.size)).collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlap accepted: {t:?}");
    }
    for p in &t.partitions {
        assert!(
            p.size > 0 && p.start > 0 && p.start + p.size <= len,
            "{t:?}"
        );
        if t.kind == TableKind::Mbr {
            assert!(p.number <= 4);
            assert_eq!(p.partuuid, format!("{}-{:02}", t.disk_id, p.number));
        }
    }
    assert!(t.partitions.windows(2).all(|w| w[0].number < w[1].number));
}
