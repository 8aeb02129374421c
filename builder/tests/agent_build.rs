//! The agents the README's set-up builds (`ci/build-agents`), and how `imagegen build` finds
//! them with no --agent (issue 9). Oracles: binutils' `readelf` for ELF machines and glibc
//! symbol versions, `qemu-aarch64-static` running the aarch64 agent, and `debugfs` reading the
//! agent back out of the node image.

mod agents;
mod common;

use common::oracle;
use imagegen_firstboot::units::AGENT_BINARY_PATH;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

/// The oldest glibc on any vendor release imagegen supports. Raspberry Pi OS bookworm
/// (Debian 12): 2.36; Raspberry Pi OS trixie (Debian 13): 2.41; Armbian bookworm: 2.36;
/// Ubuntu 24.04: 2.39; Debian 12 cloud: 2.36. An agent needing a newer symbol version does not
/// even start on the 2.36 ones ("version `GLIBC_2.37' not found").
const GLIBC_FLOOR: (u32, u32) = (2, 36);

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Runs binutils' `readelf` (it reads foreign-architecture ELF files too).
fn readelf(args: &[&str], file: &Path) -> String {
    let out = Command::new("readelf")
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run readelf ({e}): apt-get install binutils"));
    assert!(
        out.status.success(),
        "readelf {args:?} {file:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `Machine:` line of `readelf -h`.
fn elf_machine(file: &Path) -> String {
    readelf(&["-h"], file)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Machine:"))
        .unwrap_or_else(|| panic!("no Machine: in readelf -h {file:?}"))
        .trim()
        .to_string()
}

/// What `readelf -h` calls each architecture.
fn machine_name(arch: &str) -> &'static str {
    match arch {
        "x86_64" => "Advanced Micro Devices X86-64",
        "aarch64" => "AArch64",
        other => panic!("no readelf name for {other}"),
    }
}

/// The highest `GLIBC_x.y[.z]` in the version-needs section (`.gnu.version_r`) of
/// `readelf -V`: the oldest glibc the binary starts on.
fn highest_glibc(file: &Path) -> (u32, u32, u32) {
    let text = readelf(&["-V"], file);
    let needs = text
        .split("Version needs section")
        .nth(1)
        .unwrap_or_else(|| panic!("{file:?} has no version needs section:\n{text}"));
    needs
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut n = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((n.next()??, n.next()??, n.next().flatten().unwrap_or(0)))
        })
        .max()
        .unwrap_or_else(|| panic!("{file:?} needs no GLIBC_ version:\n{needs}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn agents_are_stripped_start_on_the_oldest_supported_glibc_and_run() {
    let Some(imagegen) = agents::imagegen_with_agents(&agents::ARCHES) else {
        return;
    };
    for arch in agents::ARCHES {
        let agent = agents::agent(&imagegen, arch);
        assert_eq!(elf_machine(&agent), machine_name(arch), "{agent:?}");
        let glibc = highest_glibc(&agent);
        let size = fs::metadata(&agent).unwrap().len();
        eprintln!(
            "agent {arch}: {size} bytes, needs GLIBC_{}.{}.{}",
            glibc.0, glibc.1, glibc.2
        );
        assert!(
            (glibc.0, glibc.1) <= GLIBC_FLOOR,
            "{agent:?} needs GLIBC_{}.{}, newer than the {}.{} of Debian 12 based nodes",
            glibc.0,
            glibc.1,
            GLIBC_FLOOR.0,
            GLIBC_FLOOR.1
        );
        // The `agent` profile strips symbols: it ships to SD cards.
        assert!(
            !readelf(&["-S", "-W"], &agent).contains(".symtab"),
            "{agent:?} is not stripped"
        );
    }

    // The aarch64 agent starts and parses its command line under user-mode emulation, with the
    // arm64 glibc of libc6-arm64-cross (or the multiarch one) as its loader's root.
    let qemu = "qemu-aarch64-static";
    let out = Command::new(qemu)
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(agents::agent(&imagegen, "aarch64"))
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {qemu} ({e}): apt-get install qemu-user-static"));
    assert!(out.status.success(), "{qemu}: {}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("imagegen-firstboot {}", env!("CARGO_PKG_VERSION"))
    );
    let help = Command::new(qemu)
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(agents::agent(&imagegen, "aarch64"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for sub in ["run", "ups-watch", "backup", "status"] {
        assert!(help.contains(sub), "{sub} in:\n{help}");
    }
    let native = Command::new(agents::agent(&imagegen, "x86_64"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(native.status.success(), "{}", stderr(&native));
}

/// An operator's machine: a home with an SSH key (for `--board` builds), a cache, an output
/// directory, and a `bin/` for imagegen copies with nothing beside them unless a test puts it
/// there.
struct Operator {
    dir: TempDir,
}

impl Operator {
    fn new() -> Operator {
        let dir = tempfile::Builder::new()
            .prefix("agentbuild-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let op = Operator { dir };
        for d in ["home/.ssh", "out", "bin", "lib/imagegen"] {
            fs::create_dir_all(op.path(d)).unwrap();
        }
        oracle::ssh_keygen(&op.path("home/.ssh/id_ed25519"), "tester@laptop");
        op
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `bin/imagegen`: this test run's imagegen, linked (or copied) where nothing is beside it.
    fn imagegen_bin(&self) -> PathBuf {
        let bin = self.path("bin/imagegen");
        if !bin.exists() && fs::hard_link(env!("CARGO_BIN_EXE_imagegen"), &bin).is_err() {
            fs::copy(env!("CARGO_BIN_EXE_imagegen"), &bin).unwrap();
        }
        bin
    }

    fn run(&self, imagegen: &Path, args: &[&str]) -> Output {
        Command::new(imagegen)
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.path("home"))
            .env("USER", "tester")
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .expect("run imagegen")
    }

    fn out_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A failed build: exit status 1, one `error:` line with every needle, nothing written.
    fn fails(&self, imagegen: &Path, args: &[&str], needles: &[&str]) -> String {
        let out = self.run(imagegen, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "imagegen {args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one error line: {err}");
        assert!(err.starts_with("error: "), "{err}");
        for n in needles {
            assert!(err.contains(n), "{n:?} in: {err}");
        }
        assert_eq!(self.out_entries(), Vec::<String>::new(), "{err}");
        err
    }

    /// A cluster config by `imagegen init`, with its secrets.
    fn cluster(&self) -> PathBuf {
        let config = self.path("cluster.toml");
        let out = self.run(&self.imagegen_bin(), &["init", s(&config)]);
        assert!(out.status.success(), "{}", stderr(&out));
        common::set_operator_key(&config);
        fs::create_dir_all(self.path("secrets")).unwrap();
        fs::write(
            self.path("secrets/k3s-token"),
            "K10aa54f2c0e8d3b7a1f9e6c5d4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a3c2d1::server:agent-test\n",
        )
        .unwrap();
        fs::write(self.path("secrets/nut-password"), "nut-agent-test\n").unwrap();
        config
    }
}

/// A 64-byte ELF header for `machine` (62 x86-64, 183 aarch64) with `tag` after it: enough
/// for imagegen to tell the architecture, and distinct bytes per stand-in.
fn elf_stub(path: &Path, machine: u16, tag: &str) {
    let mut h = b"\x7fELF\x02\x01\x01".to_vec();
    h.extend([0; 9]);
    h.extend(2u16.to_le_bytes());
    h.extend(machine.to_le_bytes());
    h.extend(1u32.to_le_bytes());
    h.extend([0; 40]);
    h.extend(tag.as_bytes());
    fs::write(path, h).unwrap();
}

/// The agent in a built raw image, read by debugfs from the ext4 root at partition `root`.
fn installed_agent(img: &Path, root: u32) -> Vec<u8> {
    let start = oracle::partition(img, root).start;
    let out = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    oracle::debugfs(
        img,
        start,
        &format!("dump \"{AGENT_BINARY_PATH}\" {}", s(out.path())),
    );
    fs::read(out.path()).unwrap()
}

/// The `source` the manifest records for the node's agent input.
fn manifest_agent_source(img: &Path, arch: &str) -> String {
    let path = format!("{}.manifest.json", s(img));
    let m: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let input = m["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .find(|i| i["name"] == format!("agent-{arch}").as_str())
        .unwrap_or_else(|| panic!("no agent-{arch} input in {path}"));
    input["source"].as_str().unwrap().to_string()
}

#[test]
fn board_build_with_no_agent_installs_the_aarch64_agent_built_beside_imagegen() {
    let Some(imagegen) = agents::imagegen_with_agents(&["aarch64"]) else {
        return;
    };
    let op = Operator::new();
    let base = common::cached_fixture("rpios-bookworm");
    let img = op.path("out/rpi4.img");
    let out = op.run(
        &imagegen,
        &[
            "build",
            "--board",
            "rpi4",
            "--base",
            s(&base),
            "--cache-dir",
            s(&op.path("cache")),
            "-o",
            s(&img),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let installed = installed_agent(&img, 2);
    let agent = agents::agent(&imagegen, "aarch64");
    assert!(
        installed == fs::read(&agent).unwrap(),
        "{AGENT_BINARY_PATH} in the image is not {agent:?}"
    );
    let copy = op.path("installed-agent");
    fs::write(&copy, &installed).unwrap();
    assert_eq!(elf_machine(&copy), "AArch64");
    assert_eq!(manifest_agent_source(&img, "aarch64"), s(&agent));
}

#[test]
fn an_agent_for_another_architecture_is_refused_naming_both() {
    let op = Operator::new();
    let imagegen = op.imagegen_bin();
    elf_stub(&op.path("amd64-agent"), 62, "given amd64");
    elf_stub(&op.path("amd64-agent-2"), 62, "given amd64 again");
    let base = common::cached_fixture("rpios-bookworm");
    let build = |agents: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["build", "--board", "rpi4", "--base", s(&base)]
            .map(String::from)
            .to_vec();
        v.extend(["--cache-dir".into(), s(&op.path("cache")).into()]);
        v.extend(["-o".into(), s(&op.path("out/rpi4.img")).into()]);
        for a in agents {
            v.extend(["--agent".to_string(), s(&op.path(a)).to_string()]);
        }
        v
    };
    let run = |v: Vec<String>, needles: &[&str]| {
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        op.fails(&imagegen, &v, needles)
    };

    // Only an x86_64 agent, for an aarch64 board.
    run(
        build(&["amd64-agent"]),
        &[
            "is for x86_64 but board rpi4 is aarch64",
            s(&op.path("amd64-agent")),
        ],
    );
    // No agent at all: how to get one, and where imagegen looked.
    let err = run(
        build(&[]),
        &[
            "no imagegen-firstboot agent for aarch64 (board rpi4)",
            "bash ci/build-agents",
            "--agent",
            s(&op.path("bin")),
            s(&op.path("lib/imagegen")),
        ],
    );
    assert!(!err.contains("x86_64"), "{err}");
    // Two for one architecture.
    run(
        build(&["amd64-agent", "amd64-agent-2"]),
        &["two --agent binaries for x86_64"],
    );
    // A file named for one architecture that is built for another.
    elf_stub(&op.path("bin/imagegen-firstboot-aarch64"), 62, "misnamed");
    run(
        build(&[]),
        &["imagegen-firstboot-aarch64 is named for aarch64 but its ELF header says x86_64"],
    );
}

#[test]
fn an_agent_given_for_one_architecture_keeps_the_agent_found_for_the_other() {
    let op = Operator::new();
    let imagegen = op.imagegen_bin();
    let config = op.cluster();
    // Found: x86_64 in the installed layout's lib/imagegen, aarch64 beside the binary.
    // Given: another aarch64 agent, which must replace the found one and nothing else.
    elf_stub(
        &op.path("lib/imagegen/imagegen-firstboot-x86_64"),
        62,
        "found x86_64",
    );
    elf_stub(
        &op.path("bin/imagegen-firstboot-aarch64"),
        183,
        "found aarch64",
    );
    elf_stub(&op.path("given-arm64"), 183, "given aarch64");

    let master = common::cached_fixture("ubuntu-cloud-amd64");
    let pi = common::cached_fixture("rpios-bookworm");
    for (node, base, root, arch, want) in [
        (
            "master",
            &master,
            1,
            "x86_64",
            op.path("lib/imagegen/imagegen-firstboot-x86_64"),
        ),
        ("pi4-a", &pi, 2, "aarch64", op.path("given-arm64")),
    ] {
        let img = op.path(&format!("out/{node}.img"));
        let out = op.run(
            &imagegen,
            &[
                "build",
                "-c",
                s(&config),
                "--node",
                node,
                "--base",
                s(base),
                "--agent",
                "given-arm64",
                "--cache-dir",
                s(&op.path("cache")),
                "--state-dir",
                s(&op.path("state")),
                "-o",
                s(&img),
            ],
        );
        assert!(out.status.success(), "{node}: {}", stderr(&out));
        assert!(
            installed_agent(&img, root) == fs::read(&want).unwrap(),
            "{node}: {AGENT_BINARY_PATH} is not {want:?}"
        );
        let source = manifest_agent_source(&img, arch);
        assert!(
            source.ends_with(want.file_name().unwrap().to_str().unwrap()),
            "{node}: manifest says the agent came from {source}"
        );
    }

    // `imagegen boards` shows what a build would use, and where it looked.
    let boards = op.run(&imagegen, &["boards"]);
    assert!(boards.status.success(), "{}", stderr(&boards));
    let text = String::from_utf8_lossy(&boards.stdout);
    for needle in [
        format!(
            "agent x86_64   {}",
            s(&op.path("lib/imagegen/imagegen-firstboot-x86_64"))
        ),
        format!(
            "agent aarch64  {}",
            s(&op.path("bin/imagegen-firstboot-aarch64"))
        ),
        "imagegen-firstboot-aarch64".into(),
        "../lib/imagegen".into(),
    ] {
        assert!(text.contains(&needle), "{needle:?} in:\n{text}");
    }
    let help = op.run(&imagegen, &["build", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("imagegen-firstboot-aarch64") && help.contains("ci/build-agents"),
        "{help}"
    );
}
