//! `[packages]`: the names `apt` installs must be package names, and each `.deb` (and the
//! `[zerotier] package`) must be a package, one for each architecture of the boards that
//! stage it ([`for_arch`], which reads the files: `check::staged_packages`, `build` before
//! downloading, and the plan).
use crate::arch::Arch;
use crate::config::{Invalid, Packages};
use crate::deb;
use imagegen_firstboot::names;
use std::path::{Path, PathBuf};

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

/// A span in cluster.toml, where the config keeps one.
pub type Span = Option<std::ops::Range<usize>>;

/// What is wrong, and where.
pub type Problem = (Span, String);

/// One staged package as the config gives it: what errors call it, its path as written, where.
pub struct Staged<'a> {
    pub what: &'static str,
    pub path: &'a Path,
    pub span: Span,
}

/// The packages the config stages, in install order: `[zerotier] package`, then
/// `[packages] debs`.
pub fn staged(c: &crate::config::ClusterConfig) -> Vec<Staged<'_>> {
    let zerotier = c
        .zerotier
        .iter()
        .filter_map(|z| z.package.as_ref())
        .flat_map(|p| {
            p.get_ref().0.iter().map(|path| Staged {
                what: ZEROTIER,
                path,
                span: Some(p.span()),
            })
        });
    let debs = c.packages.iter().flat_map(|pk| &pk.debs).map(|d| Staged {
        what: "packages deb",
        path: d.get_ref().as_path(),
        span: Some(d.span()),
    });
    zerotier.chain(debs).collect()
}

/// The staged packages a board of `arch` installs, with their control data: each `all`
/// package and each built for `arch`, so one cluster.toml serves a mixed cluster (an amd64
/// master and arm64 Pis) with one .deb per architecture. A package given only for other
/// architectures is an error for `arch`, never silently left out; so is a second zerotier-one
/// for the same one, and every file that is no readable package. All problems at once.
/// `resolve` makes a config path a file path.
pub fn for_arch<'a>(
    c: &'a crate::config::ClusterConfig,
    resolve: impl Fn(&Path) -> PathBuf,
    arch: Arch,
) -> Result<Vec<(Staged<'a>, deb::Control)>, Vec<Problem>> {
    let mut errors = Vec::new();
    let mut chosen: Vec<(Staged, deb::Control)> = Vec::new();
    let mut other = Vec::new();
    for s in staged(c) {
        match deb_for(s.what, &resolve(s.path), &[]) {
            Err(e) => errors.push((s.span.clone(), e)),
            Ok(control) if control.arch_problem(arch).is_none() => chosen.push((s, control)),
            Ok(control) => other.push((s, control)),
        }
    }
    let mut zerotier = chosen.iter().map(|(s, _)| s).filter(|s| s.what == ZEROTIER);
    if let (Some(_), Some(second)) = (zerotier.next(), zerotier.next()) {
        errors.push((
            second.span.clone(),
            format!(
                "{ZEROTIER} {} is a second zerotier-one for {}: give one per architecture",
                second.path.display(),
                arch.dpkg()
            ),
        ));
    }
    for (s, control) in &other {
        let served = chosen
            .iter()
            .any(|(t, c)| t.what == s.what && c.package == control.package);
        if !served {
            errors.push((
                s.span.clone(),
                format!(
                    "{} {} is {} {} for {}, and no {} for {} (or `all`) is given for this \
                     cluster's {} boards: add one",
                    s.what,
                    s.path.display(),
                    control.package,
                    control.version,
                    control.architecture,
                    control.package,
                    arch.dpkg(),
                    arch.dpkg()
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(chosen)
    } else {
        Err(errors)
    }
}
