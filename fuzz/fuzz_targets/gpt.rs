#![no_main]
//! GPT reader: fuzzed primary and backup headers and entries, CRCs optionally valid.

use imagegen::disk::{self, TableKind};
use imagegen_fuzz::{Input, gpt_image};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut img = gpt_image(&mut Input(data));
    if let Ok(t) = disk::read_from(&mut img) {
        assert_eq!(t.kind, TableKind::Gpt);
        let mut spans: Vec<(u64, u64)> = t.partitions.iter().map(|p| (p.start, p.size)).collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap accepted: {t:?}");
        }
        for p in &t.partitions {
            assert!(p.size > 0 && p.start + p.size <= img.len(), "{t:?}");
            assert_eq!(p.partuuid.len(), 36);
        }
    }
});
