//! `imagegen check`: everything wrong with a cluster.toml at once, each with its file and line,
//! before anything is built. The values are checked by `config::validate`; here also what the
//! files it names hold and who may read them, and what about the cluster as a whole deserves
//! a warning.

pub mod calendar;
pub mod files;
pub mod locale;
pub mod network;
pub mod packages;

use crate::config::{self, ClusterConfig, ConfigError, Loaded, Role};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// The config, when it parsed (it may still have errors).
    pub loaded: Option<Loaded>,
}

/// Checks the config at `path`. A file that cannot be read or is not TOML ends the check at
/// that error; every other problem is collected.
pub fn run(path: &Path) -> Result<Report, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let c = config::parse_unvalidated(&text, path)?;
    let mut r = Report::default();
    for (span, message) in config::validate(&c) {
        r.errors
            .push(config::at(&text, path, span, message).to_string());
    }
    let loaded = Loaded {
        dir: path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(".")),
        path: path.to_path_buf(),
        config: c,
    };
    secret_files(&loaded, &text, &mut r);
    own_files(&loaded, &text, &mut r);
    staged_packages(&loaded, &text, &mut r);
    for (span, message) in crate::addons::problems(&loaded.config, &loaded.dir) {
        r.errors.push(match span {
            Some(s) => config::at(&text, path, s, message).to_string(),
            None => format!("{}: {message}", path.display()),
        });
    }
    cluster_warnings(&loaded.config, &mut r);
    r.loaded = Some(loaded);
    Ok(r)
}

/// Each secret file the config names: it must be readable now (not halfway through a build),
/// a token must be a k3s token, and nobody but the operator should read any of them.
fn secret_files(l: &Loaded, text: &str, r: &mut Report) {
    let c = &l.config;
    let mut files: Vec<(&str, PathBuf, Option<std::ops::Range<usize>>)> = Vec::new();
    if let Some(t) = c.k3s.as_ref().and_then(|k| k.token_file.as_ref()) {
        files.push(("k3s token_file", l.resolve(t.get_ref()), Some(t.span())));
    }
    if let Some(t) = c.zerotier.as_ref().and_then(|z| z.api_token_file.as_ref()) {
        files.push((
            "zerotier api_token_file",
            l.resolve(t.get_ref()),
            Some(t.span()),
        ));
    }
    if let Some(u) = &c.ups {
        files.push(("ups password_file", l.resolve(&u.password_file), None));
    }
    if let Some(k) = c.backup.as_ref().and_then(|b| b.ssh_key_file.as_ref()) {
        files.push(("backup ssh_key_file", l.resolve(k), None));
    }
    let nets = c
        .nodes
        .iter()
        .filter_map(|n| config::Network::merged(c.network.as_ref(), n.network.as_ref()));
    for psk in nets.filter_map(|n| n.wifi.and_then(|w| w.psk_file)) {
        let path = l.resolve(psk.get_ref());
        if !files.iter().any(|(_, p, _)| *p == path) {
            files.push(("wifi psk_file", path, Some(psk.span())));
        }
    }
    for (what, p, span) in files {
        let place = |message: String| match &span {
            Some(s) => config::at(text, &l.path, s.clone(), message).to_string(),
            None => format!("{}: {message}", l.path.display()),
        };
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) => {
                r.errors.push(place(format!("{what} {}: {e}", p.display())));
                continue;
            }
        };
        if what == "k3s token_file"
            && let Some(why) =
                crate::cluster::token::token_problem(&String::from_utf8_lossy(&bytes))
        {
            r.errors.push(place(format!(
                "{what} {} is not a k3s token: {why}",
                p.display()
            )));
        }
        if what == "zerotier api_token_file"
            && let Some(why) = crate::vpn::zerotier::central::token_problem(&bytes)
        {
            r.errors
                .push(place(format!("{what} {} {why}", p.display())));
        }
        if what == "wifi psk_file"
            && let Some(why) = network::psk_problem(bytes.trim_ascii_end())
        {
            r.errors
                .push(place(format!("{what} {}: {why}", p.display())));
        }
        if let Ok(m) = std::fs::metadata(&p)
            && m.permissions().mode() & 0o077 != 0
        {
            r.warnings.push(format!(
                "{what} {} is readable by group or others (mode {:o}): chmod 600 {}",
                p.display(),
                m.permissions().mode() & 0o777,
                p.display()
            ));
        }
    }
}

/// The sources of `[[files]]`, `[[nodes.files]]` and `[firstboot] scripts` must be regular
/// files that can be read now, not halfway through a build.
fn own_files(l: &Loaded, text: &str, r: &mut Report) {
    let c = &l.config;
    let files = c.files.iter().chain(c.nodes.iter().flat_map(|n| &n.files));
    let scripts = c.firstboot.iter().flat_map(|f| &f.scripts);
    let sources = files
        .map(|f| ("files source", &f.source))
        .chain(scripts.map(|s| ("firstboot script", s)));
    for (what, source) in sources {
        let path = l.resolve(source.get_ref());
        let problem = match std::fs::File::open(&path).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() => None,
            Ok(_) => Some("is not a regular file".to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = problem {
            r.errors.push(
                config::at(
                    text,
                    &l.path,
                    source.span(),
                    format!("{what} {}: {why}", path.display()),
                )
                .to_string(),
            );
        }
    }
}

/// Each staged `.deb` must be a package for the architecture of every board it goes on (all
/// of the cluster's: the packages are the same on every node). An unknown board is said by
/// `config::validate`.
fn staged_packages(l: &Loaded, text: &str, r: &mut Report) {
    let mut arches: Vec<crate::arch::Arch> = l
        .config
        .nodes
        .iter()
        .filter_map(|n| crate::board::get(n.board.get_ref()).ok())
        .map(|b| b.arch)
        .collect();
    arches.sort();
    arches.dedup();
    for arch in arches {
        let Err(problems) = packages::for_arch(&l.config, |p| l.resolve(p), arch) else {
            continue;
        };
        for (span, message) in problems {
            let e = match span {
                Some(s) => config::at(text, &l.path, s, message).to_string(),
                None => format!("{}: {message}", l.path.display()),
            };
            // An unreadable .deb is the same error for every architecture.
            if !r.errors.contains(&e) {
                r.errors.push(e);
            }
        }
    }
}

fn cluster_warnings(c: &ClusterConfig, r: &mut Report) {
    let servers = c.nodes.iter().filter(|n| n.role == Role::Server).count();
    if c.k3s.is_some() && servers == 2 {
        r.warnings.push(
            "two servers: embedded etcd needs a majority of its members, 2 of 2, so losing \
             either server stops the cluster (no gain over one); use one server, or three"
                .into(),
        );
    }
    if let Some(w) = crate::cluster::servers::etcd_open_warning(c) {
        r.warnings.push(w);
    }
    if let Some(w) = c
        .zerotier
        .as_ref()
        .and_then(crate::vpn::zerotier::central::plain_http_warning)
    {
        r.warnings.push(w);
    }
}
