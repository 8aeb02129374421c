#![no_main]
//! Growing the last partition of a fuzzed MBR or GPT image enlarged by a fuzzed amount:
//! every write must land inside the partition table structures, and the result must read
//! back with the grown partition ending where the free space ends.

use std::ops::Range;

use imagegen::disk::{self, TableKind, gpt::Gpt};
use imagegen_fuzz::{Input, RawHeader, SECTOR, gpt_image, mbr_image};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let want_gpt = inp.u8() & 1 == 1;
    let extra = u64::from(inp.u32() % (1 << 26));
    let mut img = if want_gpt {
        gpt_image(&mut inp)
    } else {
        mbr_image(&mut inp)
    };
    let Ok(before) = disk::read_from(&mut img) else {
        return;
    };
    let old_len = img.len();
    let from_backup = before.kind == TableKind::Gpt
        && Gpt::read_from(&mut img, old_len).is_ok_and(|g| g.from_backup);
    let primary = RawHeader::read(&img, 1);

    let new_len = old_len + extra;
    img.set_len(new_len);
    img.writes.clear();
    let result = disk::grow_last_partition_in(&mut img);
    let sectors = new_len / SECTOR;

    // MBR: the four entries; the boot code and disk id before them are never ours.
    let mut allowed: Vec<Range<u64>> = Vec::new();
    allowed.push(446..510);
    // A GPT read from its backup must not be written at all; otherwise the primary header,
    // which passed validation, says where its structures are.
    if before.kind == TableKind::Gpt && !from_backup {
        let array_sectors = primary.array_bytes().div_ceil(SECTOR);
        let entry_start = primary.entry_lba * SECTOR;
        allowed.push(SECTOR..SECTOR + 92);
        allowed.push(entry_start..entry_start + primary.array_bytes());
        allowed.push((sectors - 1) * SECTOR..(sectors - 1) * SECTOR + 92);
        if let Some(backup_array) = (sectors - 1).checked_sub(array_sectors) {
            let at = backup_array * SECTOR;
            allowed.push(at..at + primary.array_bytes());
        }
    }
    for w in &img.writes {
        assert!(
            allowed.iter().any(|a| a.start <= w.start && w.end <= a.end),
            "write {w:?} outside {allowed:?}"
        );
    }

    let Ok(grown) = result else {
        return;
    };
    assert!(!from_backup, "grew a GPT whose primary copy is damaged");
    let after = disk::read_from(&mut img).expect("grown table reads back");
    assert_eq!(after.kind, before.kind);
    assert_eq!(after.disk_id, before.disk_id);
    let last = before
        .partitions
        .iter()
        .max_by_key(|p| p.start)
        .expect("grew something");
    assert_eq!(grown.number, last.number);
    assert_eq!(grown.start, last.start);
    let end = match after.kind {
        TableKind::Mbr => sectors * SECTOR,
        // The last usable sector is just before the backup entry array.
        TableKind::Gpt => (sectors - 1 - primary.array_bytes().div_ceil(SECTOR)) * SECTOR,
    };
    assert!(grown.start + grown.size >= last.start + last.size);
    assert_eq!(grown.start + grown.size, end, "{before:?} -> {after:?}");
    for (a, b) in before.partitions.iter().zip(&after.partitions) {
        if a.number != grown.number {
            assert_eq!(a, b);
        } else {
            assert_eq!(*b, grown);
        }
    }
});
