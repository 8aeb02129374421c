//! `imagegen personalize` around [`super::build::personalize`]: a compressed generic image in
//! and a raw personalized copy out (`-o`), and a warning when the image already holds a seed.

use crate::cli::PersonalizeArgs;
use crate::distro::{self, Vendor};
use crate::fetch::{self, Format};
use crate::image::Image;
use anyhow::{Context, Result, bail};
use imagegen_firstboot::seed::SEED_FILE_NAME;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub fn personalize(a: PersonalizeArgs) -> Result<()> {
    let Some(out) = a.output.clone() else {
        let format = Format::of_file(&a.image)?;
        if format != Format::Raw {
            bail!(
                "{} is compressed ({}) and cannot be changed in place: write a \
                 personalized raw copy with -o NAME.img (or flash it with --config and --node)",
                a.image.display(),
                format.name()
            );
        }
        warn_if_seeded(&a.image, &a.image, a.vendor.as_deref());
        return super::build::personalize(a);
    };
    use crate::emit::format::Format as Output;
    if let Some(Output::Xz | Output::Zstd) = Output::from_path(&out) {
        bail!(
            "-o {}: personalize writes a raw image; name it NAME.img",
            out.display()
        );
    }
    if same_file(&a.image, &out) {
        bail!(
            "-o {} is IMAGE itself; leave -o out to change IMAGE in place",
            out.display()
        );
    }
    // Made beside OUT under a hidden name and renamed over it at the end: a failure or Ctrl-C
    // leaves no half-made OUT, and an OUT that was there stays until the new one is complete.
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned());
    let scratch = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.as_deref().unwrap_or("personalized")))
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?
        .into_temp_path();
    let guard = crate::interrupt::Guard::new(&scratch);
    fetch::unpack(&a.image, &scratch)
        .with_context(|| format!("copying {} to {}", a.image.display(), out.display()))?;
    warn_if_seeded(&scratch, &a.image, a.vendor.as_deref());
    super::build::personalize(PersonalizeArgs {
        image: scratch.to_path_buf(),
        ..a
    })?;
    scratch
        .persist(&out)
        .with_context(|| format!("renaming the personalized image to {}", out.display()))?;
    drop(guard);
    Ok(())
}

/// Says so when `image` (shown as `shown`) already holds a node's seed: personalizing it again
/// replaces that node's secrets, which is right for a card being reused and wrong for a generic
/// image someone meant to keep. A check that cannot run stays silent: personalize itself
/// reports what is wrong with the image.
pub(super) fn warn_if_seeded(image: &Path, shown: &Path, vendor: Option<&str>) {
    let seed = || -> Option<String> {
        let mut img = Image::open(image).ok()?;
        let vendor = match vendor {
            Some(id) => Vendor::from_id(id).ok()?,
            None => distro::detect(&mut img).ok()?,
        };
        let path = format!("{}/{SEED_FILE_NAME}", vendor.family().boot_mount());
        img.lstat(&path).ok()?.is_some().then_some(path)
    };
    if let Some(path) = seed() {
        eprintln!(
            "warning: {} is already personalized ({path} is there); its seed is replaced",
            shown.display()
        );
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
