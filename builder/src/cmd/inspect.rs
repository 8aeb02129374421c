//! `imagegen inspect`: what is in an image, as a table or JSON.

use super::escape::escape;
use crate::cli::InspectArgs;
use crate::disk::{PartType, TableKind};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

#[derive(Debug, Serialize)]
struct Inspection {
    image: String,
    size: u64,
    table: &'static str,
    disk_id: String,
    partitions: Vec<PartitionView>,
    os: Option<BTreeMap<String, String>>,
    /// fstab entries naming a partition this image does not have.
    unresolved_mounts: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PartitionView {
    number: u32,
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    part_type: String,
    partuuid: String,
    name: Option<String>,
    bootable: bool,
    mount_point: Option<String>,
    filesystem: Option<FsView>,
}

#[derive(Debug, Serialize)]
struct FsView {
    kind: String,
    variant: String,
    label: Option<String>,
    uuid: Option<String>,
    size: u64,
    free: u64,
    block_size: u32,
    features: Vec<String>,
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let (mut image, raw) = super::open_to_read(&a.image)?;
    // The raw image's size, also for a compressed one.
    let size = std::fs::metadata(raw.path())?.len();
    let mut partitions = Vec::new();
    for i in 0..image.slots().len() {
        let slot = &image.slots()[i];
        let p = slot.partition.clone();
        let has_fs = slot.fs_kind.is_some();
        let filesystem = if has_fs {
            let info = image
                .info(i)
                .with_context(|| format!("reading the filesystem of partition {}", p.number))?;
            Some(FsView {
                kind: info.kind.to_string(),
                variant: info.variant,
                label: info.label,
                uuid: info.uuid,
                size: info.size_bytes,
                free: info.free_bytes,
                block_size: info.block_size,
                features: info.features,
            })
        } else {
            None
        };
        partitions.push(PartitionView {
            number: p.number,
            start: p.start,
            size: p.size,
            part_type: match &p.part_type {
                PartType::Mbr(t) => format!("0x{t:02x}"),
                PartType::Gpt(g) => g.clone(),
            },
            partuuid: p.partuuid,
            name: p.name,
            bootable: p.bootable,
            mount_point: image.mount_point(i).map(str::to_string),
            filesystem,
        });
    }
    let os = image.os_release().context("reading /etc/os-release")?;
    let view = Inspection {
        image: a.image.display().to_string(),
        size,
        table: match image.table().kind {
            TableKind::Mbr => "mbr",
            TableKind::Gpt => "gpt",
        },
        disk_id: image.table().disk_id.clone(),
        partitions,
        os,
        unresolved_mounts: image.unresolved_mounts.clone(),
    };
    let mut out = super::stdout();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &view)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &view)?;
    }
    // A write error left in the buffer would be lost when it is dropped.
    out.flush()?;
    Ok(())
}

fn print_table(out: &mut impl Write, v: &Inspection) -> std::io::Result<()> {
    writeln!(
        out,
        "{}: {} bytes, {} disk id {}",
        v.image, v.size, v.table, v.disk_id
    )?;
    if let Some(os) = &v.os {
        let name = os
            .get("PRETTY_NAME")
            .or_else(|| os.get("NAME"))
            .map_or("unknown", String::as_str);
        writeln!(out, "OS: {}", escape(name))?;
    }
    writeln!(
        out,
        "{:>3} {:>12} {:>12} {:<10} {:<8} {:<16} {:<38} {:>10} MOUNT",
        "#", "START", "SIZE", "TYPE", "FS", "LABEL", "UUID", "FREE"
    )?;
    for p in &v.partitions {
        let ty = if p.part_type.len() > 10 {
            &p.part_type[..8]
        } else {
            &p.part_type
        };
        let (fs, label, uuid, free) = match &p.filesystem {
            Some(f) => (
                f.variant.as_str(),
                f.label.as_deref().unwrap_or("-"),
                f.uuid.as_deref().unwrap_or("-"),
                f.free.to_string(),
            ),
            None => ("-", "-", "-", "-".to_string()),
        };
        writeln!(
            out,
            "{:>3} {:>12} {:>12} {:<10} {:<8} {:<16} {:<38} {:>10} {}",
            p.number,
            p.start,
            p.size,
            escape(ty),
            fs,
            escape(label),
            escape(uuid),
            free,
            escape(p.mount_point.as_deref().unwrap_or("-"))
        )?;
    }
    for p in &v.partitions {
        if let Some(f) = &p.filesystem
            && !f.features.is_empty()
        {
            writeln!(out, "p{} features: {}", p.number, f.features.join(" "))?;
        }
    }
    for m in &v.unresolved_mounts {
        writeln!(
            out,
            "note: fstab mounts {} from a disk that is not in this image",
            escape(m)
        )?;
    }
    Ok(())
}
