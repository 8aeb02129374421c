//! `[packages]`: the names `apt` installs must be package names, and each `.deb` (and the
//! `[zerotier] package`) must be a package for every board that stages it ([`deb_for`], which
//! reads the file: `check::staged_packages`, `build` before downloading, and the plan).

use crate::arch::Arch;
use crate::config::{Invalid, Packages};
use crate::deb;
use imagegen_firstboot::names;
use std::path::Path;

/// Every syntax problem of `[packages]`.
pub fn problems(pk: &Packages) -> Vec<Invalid> {
    let mut out = Vec::new();
    for name in &pk.apt {
        if !names::is_package_name(name.get_ref()) {
            out.push((
                name.span(),
                format!(
                    "packages apt {:?} is not a Debian package name: {}; give the name \
                     alone, without a version or release",
                    name.get_ref(),
                    names::PACKAGE_NAME_RULE
                ),
            ));
        }
    }
    if pk.debs.len() > 99 {
        out.push((0..0, "packages: at most 99 debs".into()));
    }
    out
}

/// The control data of the `.deb` at `path` (`what` names it in errors: "packages deb"), if
/// it is a package every one of `arches` can install; else why not.
pub fn deb_for(what: &str, path: &Path, arches: &[Arch]) -> Result<deb::Control, String> {
    let shown = path.display();
    let control = deb::read(path).map_err(|e| format!("{what} {shown}: {e}"))?;
    for a in arches {
        if let Some(why) = control.arch_problem(*a) {
            return Err(format!("{what} {shown} {why}"));
        }
    }
    Ok(control)
}

/// What errors call `[zerotier] package`.
pub const ZEROTIER: &str = "zerotier package";

/// The packages the config stages, each with the label errors give it and its span when the
/// config keeps one: `[zerotier] package` and `[packages] debs`.
pub fn staged(
    c: &crate::config::ClusterConfig,
) -> Vec<(&'static str, &Path, Option<std::ops::Range<usize>>)> {
    let zerotier = c
        .zerotier
        .iter()
        .filter_map(|z| z.package.as_deref())
        .map(|p| (ZEROTIER, p, None));
    let debs = c
        .packages
        .iter()
        .flat_map(|pk| &pk.debs)
        .map(|d| ("packages deb", d.get_ref().as_path(), Some(d.span())));
    zerotier.chain(debs).collect()
}
