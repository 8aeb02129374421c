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

impl Plan {
    /// Checks `ops` against the filesystem (parents, types, emptiness, names) and renders the
    /// script. Nothing is written to the image.
    pub fn new(fs: &Ext4, sb: &Superblock, ops: &[Op], epoch: i64) -> Result<Plan, FsError> {
        let writes = ops
            .iter()
            .filter(|op| matches!(op, Op::WriteFile { .. }))
            .count();
        if writes > 0 {
            descriptors::reserve(writes)?;
            if !Path::new("/proc/self/fd").is_dir() {
                return Err(FsError::Unsupported(
                    "imagegen hands file contents to debugfs through /proc/self/fd, and /proc \
                     is not mounted here; mount it (mount -t proc proc /proc)"
                        .into(),
                ));
            }
        }
        let mut plan = Plan {
            script: String::new(),
            expect: BTreeMap::new(),
            blocks: 0,
            inodes: 0,
            inputs: Vec::with_capacity(writes),
        };
        let mut view = View {
            fs,
            changed: HashMap::new(),
        };
        let bs = u64::from(sb.block_size);
        for op in ops {
            let p = path::normalize(op.path())?;
            match op {
                Op::Mkdir { meta, parents, .. } => {
                    if p == "/" {
                        if *parents {
                            continue;
                        }
                        return Err(FsError::AlreadyExists(p));
                    }
                    if *parents {
                        let mut at = String::new();
                        for name in p.split('/').skip(1) {
                            at = path::join(if at.is_empty() { "/" } else { &at }, name);
                            match view.lookup(&at)? {
                                None => plan.mkdir(&mut view, &at, meta),
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
                        plan.mkdir(&mut view, &p, meta);
                    }
                }
                Op::WriteFile { content, meta, .. } => {
                    plan.make_room(&view, &p)?;
                    let (staged, size) = plan.stage(content)?;
                    let q = quote(&p);
                    let fd = plan.inputs[staged].as_raw_fd();
                    plan.cmd(format!("write {} {q}", quote(&inherited(fd))));
                    plan.set_meta(&q, S_IFREG | (meta.mode & 0o7777), meta, epoch, sb);
                    let data = size.div_ceil(bs);
                    // Extent index blocks for large or fragmented files, and the parent
                    // directory growing by a block.
                    plan.blocks += data + data / 1024 + 2;
                    plan.inodes += 1;
                    view.changed.insert(p.clone(), Some(FileType::Regular));
                    plan.expect.insert(
                        p,
                        Expect::File {
                            staged,
                            meta: *meta,
                        },
                    );
                }
                Op::Symlink { target, meta, .. } => {
                    if target.is_empty() || target.contains(['\n', '\0']) {
                        return Err(FsError::InvalidPath {
                            path: target.clone(),
                            reason: "a symlink target must be non-empty, without NUL or newline"
                                .into(),
                        });
                    }
                    if target.len() >= sb.block_size as usize {
                        return Err(FsError::InvalidPath {
                            path: target.clone(),
                            reason: format!(
                                "a symlink target must be shorter than the block size ({})",
                                sb.block_size
                            ),
                        });
                    }
                    plan.make_room(&view, &p)?;
                    let q = quote(&p);
                    plan.cmd(format!("symlink {q} {}", quote(target)));
                    plan.set_owner_times(&q, meta, epoch, sb);
                    plan.blocks += 2 + u64::from(target.len() >= FAST_SYMLINK_MAX);
                    plan.inodes += 1;
                    view.changed.insert(p.clone(), Some(FileType::Symlink));
                    plan.expect.insert(
                        p,
                        Expect::Symlink {
                            target: target.clone(),
                            uid: meta.uid,
                            gid: meta.gid,
                        },
                    );
                }
                Op::Remove { .. } => {
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
                            plan.cmd(format!("rmdir {}", quote(&p)));
                        }
                        Some(_) => plan.cmd(format!("rm {}", quote(&p))),
                    }
                    view.changed.insert(p.clone(), None);
                    plan.expect.insert(p, Expect::Absent);
                }
                Op::SetMeta { mode, owner, .. } => {
                    let type_bits = match view.lookup(&p)? {
                        None => return Err(FsError::NotFound(p)),
                        Some(FileType::Regular) => S_IFREG,
                        Some(FileType::Directory) => S_IFDIR,
                        Some(FileType::Symlink) => S_IFLNK,
                        Some(FileType::Other) if mode.is_some() => {
                            return Err(FsError::Unsupported(format!(
                                "{p}: imagegen does not change the mode of device nodes, fifos \
                                 or sockets"
                            )));
                        }
                        Some(FileType::Other) => 0,
                    };
                    let q = quote(&p);
                    if let Some(mode) = mode {
                        plan.cmd(format!("sif {q} mode 0{:o}", type_bits | (mode & 0o7777)));
                    }
                    if let Some((uid, gid)) = owner {
                        plan.cmd(format!("sif {q} uid {uid}\nsif {q} gid {gid}"));
                    }
                    plan.cmd(format!("sif {q} ctime @{epoch}"));
                    plan.merge_meta(p, *mode, *owner);
                }
            }
        }
        // Creating or removing entries sets a directory's mtime to the clock (the epoch), so
        // the times of the directories this batch made are set last.
        let dirs: Vec<(String, Meta)> = plan
            .expect
            .iter()
            .filter_map(|(p, e)| match e {
                Expect::Dir { meta } => Some((p.clone(), *meta)),
                _ => None,
            })
            .collect();
        for (p, meta) in dirs {
            plan.times(&quote(&p), meta.mtime, epoch, sb);
        }
        // debugfs reads its script with fgets into a BUFSIZ (8192) buffer: a longer line would
        // be cut into two commands (seen with 1.47.0).
        if let Some(line) = plan.script.lines().find(|l| l.len() >= MAX_LINE) {
            return Err(FsError::InvalidPath {
                path: line.chars().take(200).collect::<String>() + "...",
                reason: format!("a path and target together must stay under {MAX_LINE} bytes"),
            });
        }
        Ok(plan)
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

    /// Checks that `p` can be (re)created as a file or symlink, and removes what is there.
    fn make_room(&mut self, view: &View<'_>, p: &str) -> Result<(), FsError> {
        let Some((parent, _)) = path::split(p) else {
            return Err(FsError::IsADirectory(p.to_string()));
        };
        view.require_dir(parent)?;
        match view.lookup(p)? {
            None => {}
            Some(FileType::Directory) => return Err(FsError::IsADirectory(p.to_string())),
            Some(FileType::Other) => return Err(FsError::AlreadyExists(p.to_string())),
            Some(FileType::Regular | FileType::Symlink) => {
                self.cmd(format!("rm {}", quote(p)));
            }
        }
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

    /// Runs the script on the image. The image may be partly changed if this fails.
    pub fn run(&self, image: &Path, offset: u64, epoch: i64) -> Result<(), FsError> {
        run_script(&self.script, &self.inputs, image, offset, epoch)
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
            detail: format!(
                "{} ({}); the filesystem may be partly changed, start again from the \
                 unmodified image",
                errors.join("; "),
                out.status
            ),
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

    #[test]
    fn quotes_for_debugfs() {
        assert_eq!(quote("/a b"), "\"/a b\"");
        assert_eq!(quote("x\"y"), "\"x\"\"y\"");
    }
}
