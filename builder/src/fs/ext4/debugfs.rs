//! A batch of `Op`s as one `debugfs -w -f` script, checked against the filesystem before
//! anything is written.
//!
//! debugfs quirks the rendering works around: `write` refuses an existing name (so `rm`
//! first), there is no `mkdir -p` (each missing ancestor gets its own `mkdir`), `write` copies
//! the host file's mode (so `sif mode` always follows, with the file-type bits), and debugfs
//! exits 0 when a command fails (so every stderr line but the banner is an error).
//!
//! File contents reach debugfs as open descriptors it inherits (`write /proc/self/fd/N`),
//! never as files on the host: a staging file would be readable by whoever can reach it
//! (a `/tmp` directory made with the default mode, files 0644: the k3s token, the NUT
//! password and private keys were readable by any local user during every build) and would
//! stay behind when the build is killed. Bytes live in a memfd, which no directory names,
//! which only this process and its children can reach (`/proc/PID/fd` is guarded like
//! ptrace), and which is gone when the last descriptor closes, however the process ends.
//! The script goes to debugfs's standard input the same way.
//!
//! debugfs runs every line of a script even after one failed, so `rm old` followed by a
//! `write` that runs out of space loses the old file (seen on fragmented free space, with a
//! clean e2fsck afterwards). A file the batch replaces or removes is therefore only moved
//! aside (`link` + `unlink`, which leave its inode and blocks alone) into a root-only
//! directory, deleted by a second run once the batch has run without an error, and put back
//! if it has not.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use ext4_view::Ext4;

use super::descriptors;
use super::e2fsprogs;
use super::read;
use super::superblock::Superblock;
use crate::fs::{Content, FileType, FsError, FsKind, Meta, Op, path};

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// Longest script line debugfs reads whole, newline included.
const MAX_LINE: usize = 8190;

/// Symlink targets shorter than this live in the inode ("fast" symlinks) and take no block.
const FAST_SYMLINK_MAX: usize = 60;

/// Where a batch keeps what it replaces or removes until it has succeeded, at the root of the
/// filesystem; a numbered name when this one is taken (an interrupted edit leaves it behind).
const ASIDE_DIR: &str = "/.imagegen-replaced";

/// What a path must look like once the batch has run; read back after debugfs.
#[derive(Debug)]
pub enum Expect {
    /// `Plan::input(staged)` holds the exact bytes written.
    File {
        staged: usize,
        meta: Meta,
    },
    Dir {
        meta: Meta,
    },
    Symlink {
        target: String,
        uid: u32,
        gid: u32,
    },
    Absent,
    /// An entry the batch did not create, only chmod/chown'd.
    Meta {
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
    },
}

pub struct Plan {
    pub script: String,
    pub expect: BTreeMap<String, Expect>,
    /// Blocks and inodes the batch may allocate, counted without credit for what it frees.
    blocks: u64,
    inodes: u64,
    /// The content of every file the batch writes, open for debugfs to inherit: a memfd for
    /// `Content::Bytes`, the host file itself for `Content::HostFile`.
    inputs: Vec<File>,
    aside: Aside,
}

/// Files the batch replaces or removes, kept until it has succeeded.
#[derive(Debug, Default)]
struct Aside {
    /// Made by the batch on the first file it moves aside.
    dir: Option<String>,
    /// (where the file was, where it is kept).
    moved: Vec<(String, String)>,
}

/// The filesystem as the batch would leave it so far: the image, overlaid with the batch's
/// earlier ops.
struct View<'a> {
    fs: &'a Ext4,
    changed: HashMap<String, Option<FileType>>,
}

impl View<'_> {
    fn lookup(&self, p: &str) -> Result<Option<FileType>, FsError> {
        match self.changed.get(p) {
            Some(t) => Ok(*t),
            None => Ok(read::lstat(self.fs, p)?.map(|s| s.file_type)),
        }
    }

    fn require_dir(&self, dir: &str) -> Result<(), FsError> {
        match self.lookup(dir)? {
            None => Err(FsError::NotFound(dir.to_string())),
            Some(FileType::Directory) => Ok(()),
            Some(_) => Err(FsError::NotADirectory(dir.to_string())),
        }
    }

    fn is_empty_dir(&self, dir: &str) -> Result<bool, FsError> {
        let on_disk = match read::lstat(self.fs, dir)? {
            Some(s) if s.file_type == FileType::Directory => read::read_dir(self.fs, dir)?,
            _ => Vec::new(),
        };
        let disk_child_left = on_disk
            .iter()
            .any(|e| !matches!(self.changed.get(&path::join(dir, &e.name)), Some(None)));
        let new_child = self
            .changed
            .iter()
            .any(|(p, t)| t.is_some() && path::split(p).is_some_and(|(parent, _)| parent == dir));
        Ok(!disk_child_left && !new_child)
    }
}

/// Double-quoted for debugfs's parser, where `""` inside quotes is a literal quote.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The path under which debugfs, a child of this process, opens the inherited `fd`.
fn inherited(fd: RawFd) -> String {
    format!("/proc/self/fd/{fd}")
}

fn io_context(what: &Path, e: std::io::Error) -> FsError {
    FsError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", what.display()),
    ))
}

/// Whether `writes` file contents can be handed to debugfs: a descriptor each, opened by
/// debugfs through /proc/self/fd.
fn can_hand_over(writes: usize) -> Result<(), FsError> {
    descriptors::reserve(writes)?;
    if !Path::new("/proc/self/fd").is_dir() {
        return Err(FsError::Unsupported(
            "imagegen hands file contents to debugfs through /proc/self/fd, and /proc \
             is not mounted here; mount it (mount -t proc proc /proc)"
                .into(),
        ));
    }
    Ok(())
}

impl Plan {
    /// Checks `ops` against the filesystem (parents, types, emptiness, names) and renders the
    /// script. Nothing is written to the image.
    pub fn new(fs: &Ext4, sb: &Superblock, ops: &[Op], epoch: i64) -> Result<Plan, FsError> {
        let writes = ops
            .iter()
            .filter(|op| matches!(op, Op::WriteFile { .. }))
            .count();
        if writes > 0 {
            can_hand_over(writes)?;
        }
        let mut plan = Plan {
            script: String::new(),
            expect: BTreeMap::new(),
            blocks: 0,
            inodes: 0,
            inputs: Vec::with_capacity(writes),
            aside: Aside::default(),
        };
        let mut view = View {
            fs,
            changed: HashMap::new(),
        };
        for op in ops {
            let p = path::normalize(op.path())?;
            path::writable(&p)?;
            match op {
                Op::Mkdir { meta, parents, .. } => plan.add_dir(&mut view, p, meta, *parents)?,
                Op::WriteFile { content, meta, .. } => {
                    plan.add_file(&mut view, p, content, meta, epoch, sb)?
                }
                Op::Symlink { target, meta, .. } => {
                    plan.add_symlink(&mut view, p, target, meta, epoch, sb)?
                }
                Op::Remove { .. } => plan.add_remove(&mut view, p)?,
                Op::SetMeta { mode, owner, .. } => {
                    plan.add_set_meta(&view, p, *mode, *owner, epoch)?
                }
            }
        }
        plan.finish(epoch, sb)?;
        Ok(plan)
    }

    /// `mkdir`, with missing parents when `parents`.
    fn add_dir(
        &mut self,
        view: &mut View<'_>,
        p: String,
        meta: &Meta,
        parents: bool,
    ) -> Result<(), FsError> {
        if p == "/" {
            return if parents {
                Ok(())
            } else {
                Err(FsError::AlreadyExists(p))
            };
        }
        if parents {
            let mut at = String::new();
            for name in p.split('/').skip(1) {
                at = path::join(if at.is_empty() { "/" } else { &at }, name);
                match view.lookup(&at)? {
                    None => self.mkdir(view, &at, meta),
                    Some(FileType::Directory) => {}
                    Some(_) => return Err(FsError::NotADirectory(at)),
                }
            }
        } else {
            let Some((parent, _)) = path::split(&p) else {
                return Err(FsError::AlreadyExists(p));
            };
            view.require_dir(parent)?;
            if view.lookup(&p)?.is_some() {
                return Err(FsError::AlreadyExists(p));
            }
            self.mkdir(view, &p, meta);
        }
        Ok(())
    }

    /// A regular file, its content handed to debugfs through an inherited descriptor.
    fn add_file(
        &mut self,
        view: &mut View<'_>,
        p: String,
        content: &Content,
        meta: &Meta,
        epoch: i64,
        sb: &Superblock,
    ) -> Result<(), FsError> {
        self.make_room(view, &p)?;
        let (staged, size) = self.stage(content)?;
        let q = quote(&p);
        let fd = self.inputs[staged].as_raw_fd();
        self.cmd(format!("write {} {q}", quote(&inherited(fd))));
        self.set_meta(&q, S_IFREG | (meta.mode & 0o7777), meta, epoch, sb);
        let bs = u64::from(sb.block_size);
        let data = size.div_ceil(bs);
        // The parent directory growing: a block, or an htree leaf and index.
        self.blocks += data + map_blocks(data, bs, sb.has_extents()) + 2;
        self.inodes += 1;
        view.changed.insert(p.clone(), Some(FileType::Regular));
        self.expect.insert(
            p,
            Expect::File {
                staged,
                meta: *meta,
            },
        );
        Ok(())
    }

    fn add_symlink(
        &mut self,
        view: &mut View<'_>,
        p: String,
        target: &str,
        meta: &Meta,
        epoch: i64,
        sb: &Superblock,
    ) -> Result<(), FsError> {
        // Control characters for the same reason as in paths (`path::writable`).
        if target.is_empty() || target.chars().any(char::is_control) {
            return Err(FsError::InvalidPath {
                path: target.to_string(),
                reason: "a symlink target must be non-empty, without control characters".into(),
            });
        }
        if target.len() >= sb.block_size as usize {
            return Err(FsError::InvalidPath {
                path: target.to_string(),
                reason: format!(
                    "a symlink target must be shorter than the block size ({})",
                    sb.block_size
                ),
            });
        }
        self.make_room(view, &p)?;
        let q = quote(&p);
        self.cmd(format!("symlink {q} {}", quote(target)));
        self.set_owner_times(&q, meta, epoch, sb);
        self.blocks += 2 + u64::from(target.len() >= FAST_SYMLINK_MAX);
        self.inodes += 1;
        view.changed.insert(p.clone(), Some(FileType::Symlink));
        self.expect.insert(
            p,
            Expect::Symlink {
                target: target.to_string(),
                uid: meta.uid,
                gid: meta.gid,
            },
        );
        Ok(())
    }

    /// A file, symlink or empty directory removed.
    fn add_remove(&mut self, view: &mut View<'_>, p: String) -> Result<(), FsError> {
        if p == "/" {
            return Err(FsError::InvalidPath {
                path: p,
                reason: "cannot remove the root directory".into(),
            });
        }
        match view.lookup(&p)? {
            None => return Err(FsError::NotFound(p)),
            Some(FileType::Directory) => {
                if !view.is_empty_dir(&p)? {
                    return Err(FsError::NotEmpty(p));
                }
                self.cmd(format!("rmdir {}", quote(&p)));
            }
            Some(_) => self.discard(view, &p)?,
        }
        view.changed.insert(p.clone(), None);
        self.expect.insert(p, Expect::Absent);
        Ok(())
    }

    /// The mode and/or owner of what is at `p` changed.
    fn add_set_meta(
        &mut self,
        view: &View<'_>,
        p: String,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
        epoch: i64,
    ) -> Result<(), FsError> {
        let type_bits = match view.lookup(&p)? {
            None => return Err(FsError::NotFound(p)),
            Some(FileType::Regular) => S_IFREG,
            Some(FileType::Directory) => S_IFDIR,
            Some(FileType::Symlink) => S_IFLNK,
            Some(FileType::Other) if mode.is_some() => {
                return Err(FsError::Unsupported(format!(
                    "{p}: imagegen does not change the mode of device nodes, fifos or sockets"
                )));
            }
            Some(FileType::Other) => 0,
        };
        let q = quote(&p);
        if let Some(mode) = mode {
            self.cmd(format!("sif {q} mode 0{:o}", type_bits | (mode & 0o7777)));
        }
        if let Some((uid, gid)) = owner {
            self.cmd(format!("sif {q} uid {uid}\nsif {q} gid {gid}"));
        }
        self.cmd(format!("sif {q} ctime @{epoch}"));
        self.merge_meta(p, mode, owner);
        Ok(())
    }

    /// What comes after every op: the times of the directories made, the room the aside
    /// directory needs, and the check of the script's line lengths.
    fn finish(&mut self, epoch: i64, sb: &Superblock) -> Result<(), FsError> {
        // Creating or removing entries sets a directory's mtime to the clock (the epoch), so
        // the times of the directories this batch made are set last.
        let dirs: Vec<(String, Meta)> = self
            .expect
            .iter()
            .filter_map(|(p, e)| match e {
                Expect::Dir { meta } => Some((p.clone(), *meta)),
                _ => None,
            })
            .collect();
        for (p, meta) in dirs {
            self.times(&quote(&p), meta.mtime, epoch, sb);
        }
        if !self.aside.moved.is_empty() {
            // The directory's own block and inode, the root growing by a block, and its
            // entries (short numeric names, at most 16 bytes each).
            let bs = u64::from(sb.block_size);
            self.blocks += 2 + (self.aside.moved.len() as u64 * 16).div_ceil(bs);
            self.inodes += 1;
        }
        // debugfs reads its script with fgets into a BUFSIZ (8192) buffer: a longer line would
        // be cut into two commands (seen with 1.47.0).
        if let Some(line) = self.script.lines().find(|l| l.len() >= MAX_LINE) {
            return Err(FsError::InvalidPath {
                path: line.chars().take(200).collect::<String>() + "...",
                reason: format!("a path and target together must stay under {MAX_LINE} bytes"),
            });
        }
        Ok(())
    }

    fn cmd(&mut self, line: String) {
        self.script.push_str(&line);
        self.script.push('\n');
    }

    pub fn is_empty(&self) -> bool {
        self.script.is_empty()
    }

    fn mkdir(&mut self, view: &mut View<'_>, p: &str, meta: &Meta) {
        let q = quote(p);
        self.cmd(format!("mkdir {q}"));
        self.cmd(format!(
            "sif {q} mode 0{:o}",
            S_IFDIR | (meta.mode & 0o7777)
        ));
        self.cmd(format!(
            "sif {q} uid {}\nsif {q} gid {}",
            meta.uid, meta.gid
        ));
        // Its own block, and its parent growing by one.
        self.blocks += 2;
        self.inodes += 1;
        view.changed
            .insert(p.to_string(), Some(FileType::Directory));
        self.expect
            .insert(p.to_string(), Expect::Dir { meta: *meta });
    }

    /// Checks that `p` can be (re)created as a file or symlink, and clears what is there.
    fn make_room(&mut self, view: &mut View<'_>, p: &str) -> Result<(), FsError> {
        let Some((parent, _)) = path::split(p) else {
            return Err(FsError::IsADirectory(p.to_string()));
        };
        view.require_dir(parent)?;
        match view.lookup(p)? {
            None => {}
            Some(FileType::Directory) => return Err(FsError::IsADirectory(p.to_string())),
            Some(FileType::Other) => return Err(FsError::AlreadyExists(p.to_string())),
            Some(FileType::Regular | FileType::Symlink) => self.discard(view, p)?,
        }
        Ok(())
    }

    /// Takes the non-directory at `p` out of the tree: deleted when this batch made it,
    /// otherwise moved aside until the batch has succeeded.
    fn discard(&mut self, view: &mut View<'_>, p: &str) -> Result<(), FsError> {
        if view.changed.contains_key(p) {
            self.cmd(format!("rm {}", quote(p)));
            return Ok(());
        }
        let dir = match &self.aside.dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = (0..)
                    .map(|i| match i {
                        0 => ASIDE_DIR.to_string(),
                        i => format!("{ASIDE_DIR}-{i}"),
                    })
                    .find_map(|d| match view.lookup(&d) {
                        Ok(None) => Some(Ok(d)),
                        Ok(Some(_)) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .expect("an unused name")?;
                let q = quote(&dir);
                // Root-only: what it keeps may be a secret (an old /etc/shadow).
                self.cmd(format!("mkdir {q}"));
                self.cmd(format!("sif {q} mode 0{:o}", S_IFDIR | 0o700));
                self.cmd(format!("sif {q} uid 0\nsif {q} gid 0"));
                view.changed.insert(dir.clone(), Some(FileType::Directory));
                self.aside.dir = Some(dir.clone());
                dir
            }
        };
        let kept = path::join(&dir, &self.aside.moved.len().to_string());
        // `link` and `unlink` change no link count: the inode moves, untouched.
        self.cmd(format!("link {} {}", quote(p), quote(&kept)));
        self.cmd(format!("unlink {}", quote(p)));
        self.aside.moved.push((p.to_string(), kept));
        Ok(())
    }

    fn set_meta(&mut self, q: &str, mode: u32, meta: &Meta, epoch: i64, sb: &Superblock) {
        self.cmd(format!("sif {q} mode 0{mode:o}"));
        self.set_owner_times(q, meta, epoch, sb);
    }

    fn set_owner_times(&mut self, q: &str, meta: &Meta, epoch: i64, sb: &Superblock) {
        self.cmd(format!(
            "sif {q} uid {}\nsif {q} gid {}",
            meta.uid, meta.gid
        ));
        self.times(q, meta.mtime, epoch, sb);
    }

    fn times(&mut self, q: &str, mtime: i64, epoch: i64, sb: &Superblock) {
        self.cmd(format!("sif {q} mtime @{mtime}"));
        self.cmd(format!("sif {q} atime @{epoch}"));
        self.cmd(format!("sif {q} ctime @{epoch}"));
        // 128-byte inodes have no creation time.
        if sb.inode_size > 128 {
            self.cmd(format!("sif {q} crtime @{epoch}"));
        }
    }

    fn merge_meta(&mut self, p: String, mode: Option<u32>, owner: Option<(u32, u32)>) {
        let entry = self.expect.entry(p).or_insert(Expect::Meta {
            mode: None,
            owner: None,
        });
        match entry {
            Expect::File { meta, .. } | Expect::Dir { meta } => {
                if let Some(m) = mode {
                    meta.mode = m & 0o7777;
                }
                if let Some((u, g)) = owner {
                    (meta.uid, meta.gid) = (u, g);
                }
            }
            Expect::Symlink { uid, gid, .. } => {
                if let Some((u, g)) = owner {
                    (*uid, *gid) = (u, g);
                }
            }
            Expect::Meta { mode: m, owner: o } => {
                *m = mode.map(|m| m & 0o7777).or(*m);
                *o = owner.or(*o);
            }
            // Unreachable (a removed path fails SetMeta's lookup); kept total.
            Expect::Absent => *entry = Expect::Meta { mode, owner },
        }
    }

    /// The content written by the op whose `Expect::File` says `staged`, from its start.
    pub fn input(&self, staged: usize) -> Result<&File, FsError> {
        let mut file = &self.inputs[staged];
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }

    /// Opens `content` for debugfs to inherit; returns its index in `inputs` and its size.
    fn stage(&mut self, content: &Content) -> Result<(usize, u64), FsError> {
        let (file, size) = match content {
            Content::Bytes(bytes) => {
                let mut file = memfd("imagegen-content")?;
                file.write_all(bytes)?;
                (file, bytes.len() as u64)
            }
            Content::HostFile(host) => {
                // Opened once: the size checked here is that of the file debugfs reads, and
                // odd host names never reach the script.
                let file = File::open(host).map_err(|e| io_context(host, e))?;
                let meta = file.metadata().map_err(|e| io_context(host, e))?;
                if !meta.is_file() {
                    return Err(io_context(
                        host,
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
                    ));
                }
                (file, meta.len())
            }
        };
        self.inputs.push(file);
        Ok((self.inputs.len() - 1, size))
    }

    /// Fails with `NoSpace` if the batch might not fit (`margin` blocks kept spare for
    /// directory and extent growth the estimate does not see).
    pub fn check_space(&self, sb: &Superblock) -> Result<(), FsError> {
        const MARGIN_BLOCKS: u64 = 64;
        let bs = u64::from(sb.block_size);
        let needed = (self.blocks + MARGIN_BLOCKS) * bs;
        let free = sb.free_blocks * bs;
        if self.blocks > 0 && needed > free {
            return Err(FsError::NoSpace {
                kind: FsKind::Ext4,
                needed,
                free,
            });
        }
        if self.inodes > sb.free_inodes {
            return Err(FsError::Unsupported(format!(
                "no free inodes left on the ext4 filesystem: {} needed, {} free; grow the \
                 filesystem or remove files first",
                self.inodes, sb.free_inodes
            )));
        }
        Ok(())
    }

    /// Runs the script on the image, then deletes what it moved aside. If the script fails,
    /// what it moved aside is put back, but what it made may remain.
    pub fn run(&self, image: &Path, offset: u64, epoch: i64) -> Result<(), FsError> {
        let failed = match run_script(&self.script, &self.inputs, image, offset, epoch) {
            Ok(()) => return self.commit(image, offset, epoch),
            Err(e) => e,
        };
        let outcome = if self.aside.dir.is_none() {
            "the filesystem may be partly changed, start again from the unmodified image"
                .to_string()
        } else {
            match self.roll_back(image, offset, epoch) {
                Ok(()) => "every file it replaced or removed is back as it was, but what it \
                           made may remain"
                    .to_string(),
                Err(e) => format!(
                    "putting back the files it replaced or removed failed too ({e}); the \
                     originals are kept in {} on that filesystem",
                    self.aside.dir.as_deref().unwrap_or(ASIDE_DIR)
                ),
            }
        };
        Err(match failed {
            FsError::Tool { tool, detail } => FsError::Tool {
                tool,
                detail: format!("{detail}; {outcome}"),
            },
            other => other,
        })
    }

    /// Deletes what the batch moved aside: it succeeded.
    fn commit(&self, image: &Path, offset: u64, epoch: i64) -> Result<(), FsError> {
        let Some(dir) = &self.aside.dir else {
            return Ok(());
        };
        let mut script = String::new();
        for (_, kept) in &self.aside.moved {
            script.push_str(&format!("rm {}\n", quote(kept)));
        }
        script.push_str(&format!("rmdir {}\n", quote(dir)));
        run_script(&script, &[], image, offset, epoch).map_err(|e| FsError::Tool {
            tool: "debugfs".into(),
            detail: format!(
                "the changes are written, but deleting the files they replaced failed ({e}); \
                 those are in {dir} on that filesystem"
            ),
        })
    }

    /// Puts back what the batch moved aside, after it failed somewhere.
    fn roll_back(&self, image: &Path, offset: u64, epoch: i64) -> Result<(), FsError> {
        let mut script = String::new();
        let mut stuck = Vec::new();
        for (original, kept) in self.aside.moved.iter().rev() {
            // Not moved: the batch failed before it got there, or the link failed.
            let Some((kept_ino, _)) = inode_of(image, offset, kept, epoch)? else {
                continue;
            };
            let (o, k) = (quote(original), quote(kept));
            match inode_of(image, offset, original, epoch)? {
                // The unlink failed: the original is still in place.
                Some((ino, _)) if ino == kept_ino => script.push_str(&format!("unlink {k}\n")),
                // The batch made a directory there; left for the user to sort out.
                Some((_, true)) => stuck.push(format!("{original} is a directory now")),
                Some((_, false)) => {
                    script.push_str(&format!("rm {o}\nlink {k} {o}\nunlink {k}\n"));
                }
                None => script.push_str(&format!("link {k} {o}\nunlink {k}\n")),
            }
        }
        if stuck.is_empty()
            && let Some(dir) = &self.aside.dir
            && inode_of(image, offset, dir, epoch)?.is_some()
        {
            script.push_str(&format!("rmdir {}\n", quote(dir)));
        }
        if let Err(e) = run_script(&script, &[], image, offset, epoch) {
            stuck.push(e.to_string());
        }
        if stuck.is_empty() {
            return Ok(());
        }
        Err(FsError::Tool {
            tool: "debugfs".into(),
            detail: stuck.join("; "),
        })
    }
}

/// The inode number at `p` and whether it is a directory, by debugfs (ext4-view does not
/// expose inode numbers); `None` when nothing is there.
fn inode_of(
    image: &Path,
    offset: u64,
    p: &str,
    epoch: i64,
) -> Result<Option<(u64, bool)>, FsError> {
    let out = e2fsprogs::run(
        "debugfs",
        [
            "-R".to_string(),
            format!("stat {}", quote(p)),
            e2fsprogs::device(image, offset)?,
        ],
        epoch,
    )?;
    // "Inode: 12   Type: regular    Mode:  0644   Flags: 0x80000"
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(first) = stdout.lines().find(|l| l.starts_with("Inode: ")) else {
        return Ok(None);
    };
    let mut words = first.split_whitespace();
    let ino = words.nth(1).and_then(|n| n.parse().ok());
    let is_dir = words.nth(1) == Some("directory");
    match ino {
        Some(ino) => Ok(Some((ino, is_dir))),
        None => Err(FsError::Tool {
            tool: "debugfs".into(),
            detail: format!("unexpected stat output: {first:?}"),
        }),
    }
}

/// Blocks a file of `data` blocks may need besides its data, however the free space is laid
/// out. With extents, each data block may land in its own one-block hole (the free space left
/// by deleted small files), so the worst case is an extent per block: the inode holds 4, a
/// tree block `(bs - 12) / 12`. debugfs appends, which fills each leaf before starting the
/// next (e2fsprogs 1.47.0 wrote 3000 one-block extents into 37 leaves of 84 and one index
/// block); one spare block per level covers a split. Without extents, the block map's
/// indirect blocks hold `bs / 4` pointers each after the inode's 12 direct ones.
fn map_blocks(data: u64, bs: u64, extents: bool) -> u64 {
    if extents {
        let per = (bs - 12) / 12;
        let (mut entries, mut total) = (data, 0);
        while entries > 4 {
            entries = entries.div_ceil(per);
            total += entries + 1;
        }
        total
    } else {
        let per = bs / 4;
        let mut rest = data.saturating_sub(12);
        let mut total = 0;
        // Single, double and triple indirect: level k maps up to per^k blocks through k
        // levels of pointer blocks.
        let mut span = 1u64;
        for depth in 1..=3 {
            if rest == 0 {
                break;
            }
            span = span.saturating_mul(per);
            let covered = rest.min(span);
            let mut level = covered;
            for _ in 0..depth {
                level = level.div_ceil(per);
                total += level;
            }
            rest -= covered;
        }
        total
    }
}

/// An anonymous, close-on-exec memory file.
fn memfd(name: &str) -> Result<File, FsError> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(std::io::Error::from)?;
    Ok(File::from(fd))
}

/// Runs `script` with `debugfs -w -f -`, `inputs` inherited at their descriptor numbers.
fn run_script(
    script: &str,
    inputs: &[File],
    image: &Path,
    offset: u64,
    epoch: i64,
) -> Result<(), FsError> {
    let mut stdin = memfd("imagegen-debugfs-script")?;
    stdin.write_all(script.as_bytes())?;
    stdin.seek(SeekFrom::Start(0))?;
    let mut cmd = e2fsprogs::command("debugfs", epoch);
    cmd.args(["-w", "-f", "-", &e2fsprogs::device(image, offset)?])
        .stdin(Stdio::from(stdin));
    // Every descriptor here is close-on-exec, so no other child of this process (and no
    // thread spawning one meanwhile) inherits a secret; only debugfs gets these.
    let fds: Vec<RawFd> = inputs.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: between fork and exec the closure only calls fcntl, which is
    // async-signal-safe, on descriptors this process owns; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = e2fsprogs::output(cmd, "debugfs")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let banner = |i: usize, l: &str| i == 0 && l.starts_with("debugfs ");
    let errors: Vec<&str> = stderr
        .lines()
        .enumerate()
        .filter(|&(i, l)| !(banner(i, l) || l.trim().is_empty()))
        .map(|(_, l)| l.trim_end())
        .collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(FsError::Tool {
            tool: "debugfs".into(),
            detail: format!("{} ({})", errors.join("; "), out.status),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty 8 MiB ext4 with 4 KiB blocks, made by mkfs.ext4.
    fn scratch_fs() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let mkfs = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&image)
            .status()
            .expect("mkfs.ext4 is missing: install e2fsprogs");
        assert!(mkfs.success());
        (dir, image)
    }

    /// debugfs exits 0 when a command fails; the error must still surface.
    #[test]
    fn failed_commands_are_errors() {
        let (_dir, image) = scratch_fs();
        run_script("mkdir /a\n", &[], &image, 0, 0).unwrap();
        let err = run_script("mkdir /a/b\nmkdir /a\nmkdir /none/c\n", &[], &image, 0, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mkdir: File not found by ext2_lookup"),
            "{err}"
        );
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    fn refuses_lines_debugfs_would_split() {
        let (_dir, image) = scratch_fs();
        let fs = super::read::load(std::fs::File::open(&image).unwrap(), 0, 8 << 20).unwrap();
        let sb = Superblock::read(&std::fs::File::open(&image).unwrap(), 0).unwrap();
        let name = "n".repeat(255);
        let dir = format!("/{}", [name.as_str(); 15].join("/"));
        let ops = [
            Op::Mkdir {
                path: dir.clone(),
                meta: Meta::root(0o755, 0),
                parents: true,
            },
            Op::Symlink {
                path: path::join(&dir, &name),
                target: "t".repeat(4095),
                meta: Meta::root(0o777, 0),
            },
        ];
        let err = Plan::new(&fs, &sb, &ops, 0).err().expect("refused");
        assert!(
            matches!(&err, FsError::InvalidPath { reason, .. } if reason.contains("8190")),
            "{err}"
        );
    }

    /// What a failed batch replaced or removed is put back: debugfs runs every line even
    /// after one failed, so the failure here comes last, after the replacement and removal.
    #[test]
    fn a_failed_batch_puts_back_what_it_replaced() {
        let (_dir, image) = scratch_fs();
        let load = || {
            let fs = super::read::load(std::fs::File::open(&image).unwrap(), 0, 8 << 20).unwrap();
            let sb = Superblock::read(&std::fs::File::open(&image).unwrap(), 0).unwrap();
            (fs, sb)
        };
        let write = |p: &str, text: &str| Op::WriteFile {
            path: p.into(),
            content: Content::Bytes(text.as_bytes().to_vec()),
            meta: Meta::root(0o600, 0),
        };
        let (fs, sb) = load();
        let setup = [write("/victim", "original\n"), write("/gone", "kept\n")];
        Plan::new(&fs, &sb, &setup, 0)
            .unwrap()
            .run(&image, 0, 0)
            .unwrap();

        let (fs, sb) = load();
        let batch = [
            write("/victim", "replacement\n"),
            Op::Remove {
                path: "/gone".into(),
            },
            write("/new", "made\n"),
        ];
        let mut plan = Plan::new(&fs, &sb, &batch, 0).unwrap();
        plan.cmd("mkdir /no/such/dir".into());
        let err = plan.run(&image, 0, 0).unwrap_err().to_string();
        assert!(
            err.contains("mkdir /no/such/dir") || err.contains("ext2_lookup"),
            "{err}"
        );
        assert!(err.contains("back as it was"), "{err}");

        let (fs, _) = load();
        let read = |p: &str| String::from_utf8(fs.read(p).unwrap()).unwrap();
        assert_eq!(read("/victim"), "original\n");
        assert_eq!(read("/gone"), "kept\n");
        assert!(!fs.exists(ASIDE_DIR).unwrap());
        e2fsprogs::check(&image, 0, 0).unwrap();
    }

    #[test]
    fn worst_case_maps() {
        // An extent per block: 4 in the inode, then leaves of 340 (4 KiB) under the inode.
        assert_eq!(map_blocks(4, 4096, true), 0);
        assert_eq!(map_blocks(5, 4096, true), 2);
        assert_eq!(map_blocks(340 * 4, 4096, true), 5);
        assert_eq!(map_blocks(340 * 4 + 1, 4096, true), 6 + 2);
        // 1 KiB blocks: 84 extents a leaf.
        assert_eq!(map_blocks(6958, 1024, true), 83 + 1 + 1 + 1);
        // Block maps: 12 direct, then 1024 per indirect block (4 KiB).
        assert_eq!(map_blocks(12, 4096, false), 0);
        assert_eq!(map_blocks(13, 4096, false), 1);
        assert_eq!(map_blocks(12 + 1024 + 1, 4096, false), 1 + 2);
    }

    #[test]
    fn quotes_for_debugfs() {
        assert_eq!(quote("/a b"), "\"/a b\"");
        assert_eq!(quote("x\"y"), "\"x\"\"y\"");
    }
}
