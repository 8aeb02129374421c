//! Checks a whole batch against the filesystem before anything changes: names FAT can store,
//! parents that exist, no file/directory mix-ups, and enough free clusters. What comes out is
//! the list of steps to run and the state to read back afterwards.

use std::collections::HashMap;

use super::{Content, FatDir, Found, FsError, FsKind, Op, content_len, list, lookup, path};

pub(super) enum Step<'a> {
    Write {
        path: String,
        content: &'a Content,
        mtime: i64,
    },
    /// Made together by one `mmd`, parents first.
    Mkdirs {
        dirs: Vec<String>,
        mtime: i64,
    },
    Remove {
        path: String,
    },
}

pub(super) enum Expect<'a> {
    Absent,
    /// `mtime` is known for the directories the batch makes.
    Dir {
        mtime: Option<i64>,
    },
    File {
        content: &'a Content,
        mtime: i64,
    },
}

pub(super) struct Plan<'a> {
    pub(super) steps: Vec<Step<'a>>,
    /// The final state of every path the batch touches, in the order first touched.
    pub(super) expect: Vec<(String, Expect<'a>)>,
}

#[derive(Clone, Copy)]
enum Node {
    Absent,
    Dir,
    File { size: u64 },
}

/// The filesystem as it will be after the ops seen so far: the image, under an overlay of
/// what the batch changed. Paths are keyed in upper case, because FAT names ignore case.
struct Sim<'f, 'a> {
    root: FatDir<'f>,
    overlay: HashMap<String, (String, Node)>,
    expect: Vec<(String, Expect<'a>)>,
    expect_at: HashMap<String, usize>,
    cluster: u64,
    /// Clusters taken minus clusters given back, now and at its highest.
    net: i64,
    peak: i64,
    /// Bytes of new directory entries per directory, which may need new clusters.
    entries: HashMap<String, u64>,
}

pub(super) fn plan<'a>(fat: &super::Fat, ops: &'a [Op]) -> Result<Plan<'a>, FsError> {
    let stats = fat.stats()?;
    let mut sim = Sim {
        root: fat.root_dir(),
        overlay: HashMap::new(),
        expect: Vec::new(),
        expect_at: HashMap::new(),
        cluster: u64::from(stats.cluster_size()),
        net: 0,
        peak: 0,
        entries: HashMap::new(),
    };
    let mut steps = Vec::new();
    for op in ops {
        if let Some(step) = sim.op(op)? {
            steps.push(step);
        }
    }
    let growth: u64 = sim.entries.values().map(|b| b.div_ceil(sim.cluster)).sum();
    let needed = u64::try_from(sim.peak).unwrap_or(0) + growth;
    let free = u64::from(stats.free_clusters());
    if needed > free {
        return Err(FsError::NoSpace {
            kind: FsKind::Fat,
            needed: needed * sim.cluster,
            free: free * sim.cluster,
        });
    }
    Ok(Plan {
        steps,
        expect: sim.expect,
    })
}

fn key(p: &str) -> String {
    p.to_uppercase()
}

/// FAT long names are UTF-16 without `\ / : * ? " < > |` and control characters; Windows and
/// Linux drop trailing dots and spaces, so such a name would not read back as written.
fn check_name(p: &str, name: &str) -> Result<(), FsError> {
    let invalid = |reason: &str| FsError::InvalidPath {
        path: p.to_string(),
        reason: reason.to_string(),
    };
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || "\\/:*?\"<>|".contains(*c))
    {
        return Err(invalid(&format!("FAT names cannot contain {c:?}")));
    }
    if name.chars().any(|c| u32::from(c) > 0xFFFF) {
        return Err(invalid(
            "FAT names cannot hold characters outside the Basic Multilingual Plane",
        ));
    }
    if name.ends_with(['.', ' ']) {
        return Err(invalid("FAT names cannot end with a dot or a space"));
    }
    if name.encode_utf16().count() > 255 {
        return Err(invalid("FAT names are at most 255 UTF-16 units long"));
    }
    Ok(())
}

impl<'a> Sim<'_, 'a> {
    fn op(&mut self, op: &'a Op) -> Result<Option<Step<'a>>, FsError> {
        let p = path::normalize(op.path())?;
        path::writable(&p)?;
        match op {
            Op::WriteFile { content, meta, .. } => {
                let (parent, name) = path::split(&p).ok_or(FsError::IsADirectory(p.clone()))?;
                check_name(&p, name)?;
                self.need_dir(parent)?;
                match self.state(&p)? {
                    Node::Dir => return Err(FsError::IsADirectory(p)),
                    Node::File { size } => self.give(self.clusters(size)),
                    Node::Absent => self.add_entry(parent, name),
                }
                let size = content_len(content)?;
                if size > u64::from(u32::MAX) {
                    return Err(FsError::Unsupported(format!(
                        "{p}: {size} bytes is more than a FAT file can hold (4 GiB - 1)"
                    )));
                }
                self.take(self.clusters(size));
                self.set(&p, Node::File { size });
                self.expect(
                    &p,
                    Expect::File {
                        content,
                        mtime: meta.mtime,
                    },
                );
                Ok(Some(Step::Write {
                    path: p,
                    content,
                    mtime: meta.mtime,
                }))
            }
            Op::Mkdir { meta, parents, .. } => {
                let mut dirs = Vec::new();
                if *parents {
                    let mut at = String::from("/");
                    for name in p.split('/').filter(|c| !c.is_empty()) {
                        let next = path::join(&at, name);
                        match self.state(&next)? {
                            Node::Dir => {}
                            Node::File { .. } => return Err(FsError::NotADirectory(next)),
                            Node::Absent => {
                                self.mkdir(&at, name, &next, meta.mtime)?;
                                dirs.push(next.clone());
                            }
                        }
                        at = next;
                    }
                } else {
                    let (parent, name) =
                        path::split(&p).ok_or(FsError::AlreadyExists(p.clone()))?;
                    self.need_dir(parent)?;
                    if !matches!(self.state(&p)?, Node::Absent) {
                        return Err(FsError::AlreadyExists(p));
                    }
                    self.mkdir(parent, name, &p, meta.mtime)?;
                    dirs.push(p);
                }
                Ok((!dirs.is_empty()).then_some(Step::Mkdirs {
                    dirs,
                    mtime: meta.mtime,
                }))
            }
            Op::Remove { .. } => {
                if p == "/" {
                    return Err(FsError::InvalidPath {
                        path: p,
                        reason: "the root directory cannot be removed".into(),
                    });
                }
                match self.state(&p)? {
                    Node::Absent => return Err(FsError::NotFound(p)),
                    Node::File { size } => self.give(self.clusters(size)),
                    Node::Dir => {
                        if !self.is_empty(&p)? {
                            return Err(FsError::NotEmpty(p));
                        }
                    }
                }
                if let Some((parent, _)) = path::split(&p) {
                    self.entries_changed(parent);
                }
                self.set(&p, Node::Absent);
                self.expect(&p, Expect::Absent);
                Ok(Some(Step::Remove { path: p }))
            }
            Op::SetMeta { .. } => match self.state(&p)? {
                // FAT has no owners or permission bits to set.
                Node::Absent => Err(FsError::NotFound(p)),
                _ => Ok(None),
            },
            Op::Symlink { target, .. } => Err(FsError::Unsupported(format!(
                "FAT filesystems cannot hold symlinks ({p} -> {target}); put the link on an \
                 ext4 filesystem or write a copy of its target instead"
            ))),
        }
    }

    fn mkdir(&mut self, parent: &str, name: &str, p: &str, mtime: i64) -> Result<(), FsError> {
        check_name(p, name)?;
        // mmd stores a non-ASCII name that fits 8.3 as a short name in a DOS code page, which
        // does not read back as the same name.
        if !name.is_ascii() {
            return Err(FsError::InvalidPath {
                path: p.to_string(),
                reason: "FAT directory names must be ASCII (files may have any name)".into(),
            });
        }
        self.add_entry(parent, name);
        self.take(1);
        self.set(p, Node::Dir);
        self.expect(p, Expect::Dir { mtime: Some(mtime) });
        Ok(())
    }

    fn state(&self, p: &str) -> Result<Node, FsError> {
        if let Some((_, node)) = self.overlay.get(&key(p)) {
            return Ok(*node);
        }
        // Below a directory the batch removed (or a file), the image's entries do not count.
        if let Some((parent, _)) = path::split(p)
            && !matches!(self.state(parent)?, Node::Dir)
        {
            return Ok(Node::Absent);
        }
        Ok(match lookup(&self.root, p)? {
            None => Node::Absent,
            Some(f) if f.is_dir() => Node::Dir,
            Some(f) => Node::File {
                size: f.stat().size,
            },
        })
    }

    fn need_dir(&self, p: &str) -> Result<(), FsError> {
        match self.state(p)? {
            Node::Dir => Ok(()),
            Node::Absent => Err(FsError::NotFound(p.to_string())),
            Node::File { .. } => Err(FsError::NotADirectory(p.to_string())),
        }
    }

    fn is_empty(&self, p: &str) -> Result<bool, FsError> {
        let mut children: HashMap<String, String> = HashMap::new();
        if let Some(Found::Entry(e)) = lookup(&self.root, p)?
            && e.is_dir()
        {
            for child in list(&e.to_dir())? {
                let c = path::join(p, &child.name);
                children.insert(key(&c), c);
            }
        }
        let parent_key = key(p);
        for (path, _) in self.overlay.values() {
            if path::split(path).is_some_and(|(parent, _)| key(parent) == parent_key) {
                children.insert(key(path), path.clone());
            }
        }
        for c in children.values() {
            if !matches!(self.state(c)?, Node::Absent) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn set(&mut self, p: &str, node: Node) {
        self.overlay.insert(key(p), (p.to_string(), node));
    }

    fn expect(&mut self, p: &str, e: Expect<'a>) {
        match self.expect_at.get(&key(p)) {
            Some(&i) => self.expect[i].1 = e,
            None => {
                self.expect_at.insert(key(p), self.expect.len());
                self.expect.push((p.to_string(), e));
            }
        }
    }

    /// A new name costs its 8.3 entry plus one LFN entry per 13 UTF-16 units.
    fn add_entry(&mut self, parent: &str, name: &str) {
        let slots = 1 + name.encode_utf16().count().div_ceil(13) as u64;
        *self.entries.entry(key(parent)).or_default() += 32 * slots;
        self.entries_changed(parent);
    }

    /// fatfs stamps the batch's epoch on a directory whose entries it writes; mtools does not.
    /// Which one wrote last is not worth predicting here, so such a directory's time is not
    /// read back.
    fn entries_changed(&mut self, dir: &str) {
        if let Some(&i) = self.expect_at.get(&key(dir))
            && let Expect::Dir { mtime } = &mut self.expect[i].1
        {
            *mtime = None;
        }
    }

    fn clusters(&self, size: u64) -> u64 {
        size.div_ceil(self.cluster)
    }

    fn take(&mut self, n: u64) {
        self.net = self.net.saturating_add_unsigned(n);
        self.peak = self.peak.max(self.net);
    }

    fn give(&mut self, n: u64) {
        self.net = self.net.saturating_sub_unsigned(n);
    }
}
