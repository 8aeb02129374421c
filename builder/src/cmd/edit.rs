//! ls, cat, cp, mkdir, ln, rm, grow.

use super::escape::escape;
use super::split_target;
use crate::build::epoch as edit_epoch;
use crate::cli::{CatArgs, CpArgs, GrowArgs, LnArgs, LsArgs, MkdirArgs, RmArgs, SizeArg};
use crate::fs::{Content, FileType, Meta, Op};
use crate::image::{self, Image};
use anyhow::{Context, Result, bail};
use std::io::Write;

fn open(image: &std::path::Path) -> Result<Image> {
    Image::open(image).with_context(|| format!("opening {}", image.display()))
}

/// Opens the image to change it, once no other imagegen is changing it.
fn open_for_write(image: &std::path::Path) -> Result<Image> {
    Image::open_for_write(image).with_context(|| format!("opening {}", image.display()))
}

pub fn ls(a: LsArgs) -> Result<()> {
    let (img, path) = split_target(&a.target)?;
    let (mut image, _raw) = super::open_to_read(&img)?;
    let entries = image.read_dir(&path)?;
    let mut out = super::stdout();
    for e in entries {
        if a.long {
            let t = match e.stat.file_type {
                FileType::Directory => 'd',
                FileType::Symlink => 'l',
                FileType::Regular => '-',
                FileType::Other => '?',
            };
            writeln!(
                out,
                "{t}{:04o} {:>5}:{:<5} {:>10} {}",
                e.stat.mode,
                e.stat.uid,
                e.stat.gid,
                e.stat.size,
                escape(&e.name)
            )?;
        } else {
            writeln!(out, "{}", escape(&e.name))?;
        }
    }
    // A write error left in the buffer would be lost when it is dropped.
    out.flush()?;
    Ok(())
}

pub fn cat(a: CatArgs) -> Result<()> {
    let (img, path) = split_target(&a.target)?;
    let (mut image, _raw) = super::open_to_read(&img)?;
    let mut out = super::stdout();
    image.read_to(&path, &mut out)?;
    out.flush()?;
    Ok(())
}

pub fn cp(a: CpArgs) -> Result<()> {
    let (img, path) = split_target(&a.target)?;
    let meta =
        std::fs::metadata(&a.source).with_context(|| format!("reading {}", a.source.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", a.source.display());
    }
    let mut image = open_for_write(&img)?;
    let epoch = edit_epoch(&image)?;
    let (uid, gid) = a.owner.unwrap_or((0, 0));
    let op = Op::WriteFile {
        path,
        content: Content::HostFile(a.source),
        meta: Meta {
            mode: a.mode.unwrap_or(0o644),
            uid,
            gid,
            mtime: epoch,
        },
    };
    image.apply(&[op], epoch)?;
    Ok(())
}

pub fn mkdir(a: MkdirArgs) -> Result<()> {
    let (img, path) = split_target(&a.target)?;
    let mut image = open_for_write(&img)?;
    let epoch = edit_epoch(&image)?;
    let (uid, gid) = a.owner.unwrap_or((0, 0));
    let op = Op::Mkdir {
        path,
        meta: Meta {
            mode: a.mode.unwrap_or(0o755),
            uid,
            gid,
            mtime: epoch,
        },
        parents: a.parents,
    };
    image.apply(&[op], epoch)?;
    Ok(())
}

pub fn ln(a: LnArgs) -> Result<()> {
    let (img, path) = split_target(&a.target)?;
    let mut image = open_for_write(&img)?;
    if !a.force && image.lstat(&path)?.is_some() {
        bail!("{path}: already exists (use --force to replace it)");
    }
    let epoch = edit_epoch(&image)?;
    let op = Op::Symlink {
        path,
        target: a.link_target,
        meta: Meta::root(0o777, epoch),
    };
    image.apply(&[op], epoch)?;
    Ok(())
}

pub fn rm(a: RmArgs) -> Result<()> {
    let (img, path) = split_target(&a.target)?;
    let mut image = open_for_write(&img)?;
    let epoch = edit_epoch(&image)?;
    image.apply(&[Op::Remove { path }], epoch)?;
    Ok(())
}

pub fn grow(a: GrowArgs) -> Result<()> {
    let old = std::fs::metadata(&a.image)
        .with_context(|| format!("opening {}", a.image.display()))?
        .len();
    let new = match a.size {
        SizeArg::Absolute(n) => n,
        SizeArg::Relative(n) => old.checked_add(n).with_context(|| {
            format!("the new size ({old} + {n} bytes) is too large for any disk image")
        })?,
    };
    let epoch = {
        let image = open(&a.image)?;
        edit_epoch(&image)?
    };
    let g = image::grow(&a.image, new, epoch)
        .with_context(|| format!("growing {}", a.image.display()))?;
    eprintln!(
        "grew {} from {} to {} bytes; partition {} from {} to {} bytes",
        a.image.display(),
        g.old_image_size,
        g.new_image_size,
        g.partition,
        g.old_partition_size,
        g.new_partition_size
    );
    Ok(())
}
