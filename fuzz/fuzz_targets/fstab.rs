#![no_main]
//! fstab parser: any text; accepted entries must be well formed.

use imagegen::image::fstab::{self, Spec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(entries) = fstab::parse(text) {
        let lines = text.lines().count();
        for e in entries {
            assert!(e.line >= 1 && e.line <= lines);
            assert!(!e.mount_point.is_empty() && !e.fs_type.is_empty());
            match e.spec {
                Spec::Uuid(v) | Spec::PartUuid(v) => {
                    assert!(!v.is_empty() && v == v.to_ascii_lowercase())
                }
                Spec::Label(v) | Spec::PartLabel(v) => assert!(!v.is_empty()),
                Spec::Device(v) => assert!(v.starts_with("/dev/")),
                Spec::Other(_) => {}
            }
        }
    }
});
