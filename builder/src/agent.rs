//! Which `imagegen-firstboot` binary goes into a node, per CPU architecture.
//!
//! The search order, written down here only ([`SEARCH_ORDER`] is what `imagegen build --help`
//! and `imagegen boards` print, [`search_dirs`] and [`AgentSet::discover`] implement it):
//!
//! 1. `--agent PATH|URL#sha256=HEX`: its ELF header says its architecture, and it replaces
//!    what was found for that architecture only, so agents found for the others stay.
//! 2. The directory of the imagegen binary: `imagegen-firstboot-<arch>` for every
//!    [`Arch::ALL`], then a plain `imagegen-firstboot` (its ELF header says the architecture)
//!    for an architecture not named yet. `cargo build --release` and `bash ci/build-agents`
//!    leave exactly this beside `target/release/imagegen`.
//! 3. `<that directory>/../lib/imagegen/`, the same names: an installed layout such as
//!    `/usr/local/bin/imagegen` with `/usr/local/lib/imagegen/imagegen-firstboot-aarch64`.
//!
//! The first file found for an architecture wins. A node whose architecture has no agent is
//! refused before anything is downloaded.

use crate::arch::{self, Arch, ElfError};
use crate::board::Board;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The search order, for help texts. Keep it in step with the module documentation.
pub const SEARCH_ORDER: &str = "Agents (imagegen-firstboot, one per CPU architecture; the first \
found for an architecture wins): 1. --agent, which replaces that architecture's agent only; \
2. beside the imagegen binary: imagegen-firstboot-x86_64, imagegen-firstboot-aarch64, \
imagegen-firstboot-arm, then imagegen-firstboot (architecture read from its ELF header); \
3. the same names in ../lib/imagegen/ next to imagegen's directory. In a source checkout, \
`bash ci/build-agents` puts the x86_64 and aarch64 agents beside target/release/imagegen.";

/// What to do when no agent exists for an architecture, for error messages.
const HOW_TO_GET_ONE: &str = "build the agents with `bash ci/build-agents` in imagegen's source \
tree (it puts them beside target/release/imagegen), or give one with --agent PATH or --agent \
URL#sha256=HEX";

/// An agent binary for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub arch: Arch,
    pub path: PathBuf,
    /// Where it came from (path or URL), for the manifest and messages.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("opening agent {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent {path}: {source}")]
    NotAgent { path: PathBuf, source: ElfError },
    #[error("{path} is named for {named} but its ELF header says {actual}")]
    Misnamed {
        path: PathBuf,
        named: Arch,
        actual: Arch,
    },
    #[error("two --agent binaries for {arch} ({first} and {second}); give one per architecture")]
    Twice {
        arch: Arch,
        first: String,
        second: String,
    },
    #[error(
        "{given} but board {board} is {arch}, and no {arch} agent was found ({looked}); give \
         one with --agent, or run `bash ci/build-agents` in imagegen's source tree"
    )]
    WrongArch {
        /// "--agent A is for x86_64", one per agent given.
        given: String,
        board: String,
        arch: Arch,
        looked: String,
    },
    #[error("no imagegen-firstboot agent for {arch} (board {board}): {looked}; {HOW_TO_GET_ONE}")]
    Missing {
        board: String,
        arch: Arch,
        looked: String,
    },
}

/// The directories searched, in order, for an imagegen binary at `exe`.
pub fn search_dirs(exe: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_path_buf());
        // `..` taken lexically: the running binary's path has its symlinks resolved already.
        if let Some(prefix) = dir.parent() {
            dirs.push(prefix.join("lib/imagegen"));
        }
    }
    dirs
}

/// [`search_dirs`] of the running binary; none when the OS cannot say where it is.
pub fn default_search_dirs() -> Vec<PathBuf> {
    // On Linux this is /proc/self/exe, symlinks resolved: a symlink in ~/bin to the checkout's
    // target/release/imagegen finds the agents in target/release.
    std::env::current_exe()
        .map(|exe| search_dirs(&exe))
        .unwrap_or_default()
}

/// The architecture an agent binary is for, from its ELF header.
pub fn agent_arch(path: &Path) -> Result<Arch, AgentError> {
    let open = |source| AgentError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(path)
        .map_err(open)?
        .take(64)
        .read_to_end(&mut head)
        .map_err(open)?;
    arch::elf_arch(&head).map_err(|source| AgentError::NotAgent {
        path: path.to_path_buf(),
        source,
    })
}

/// The agents a build may use, at most one per architecture, and how they were found.
#[derive(Debug, Clone, Default)]
pub struct AgentSet {
    agents: Vec<Agent>,
    /// Architectures whose agent came from --agent.
    given: Vec<Arch>,
    /// The directories searched, in order.
    searched: Vec<PathBuf>,
}

impl AgentSet {
    /// Looks for agents in `dirs`, in order (see the module documentation).
    pub fn discover(dirs: &[PathBuf]) -> Result<AgentSet, AgentError> {
        let mut set = AgentSet {
            searched: dirs.to_vec(),
            ..AgentSet::default()
        };
        for dir in dirs {
            for named in Arch::ALL {
                let path = dir.join(format!("imagegen-firstboot-{named}"));
                if !path.is_file() || set.get(named).is_some() {
                    continue;
                }
                // A misnamed file is a packaging mistake: using it for the architecture its
                // header says would hide it, using it for its name would brick the node.
                let actual = agent_arch(&path)?;
                if actual != named {
                    return Err(AgentError::Misnamed {
                        path,
                        named,
                        actual,
                    });
                }
                set.agents.push(Agent {
                    arch: actual,
                    source: path.display().to_string(),
                    path,
                });
            }
            let plain = dir.join("imagegen-firstboot");
            if plain.is_file() {
                let arch = agent_arch(&plain)?;
                if set.get(arch).is_none() {
                    set.agents.push(Agent {
                        arch,
                        source: plain.display().to_string(),
                        path: plain,
                    });
                }
            }
        }
        Ok(set)
    }

    /// Adds an `--agent`: it replaces a found agent of its architecture; two given for one
    /// architecture are refused.
    pub fn give(&mut self, agent: Agent) -> Result<(), AgentError> {
        if self.given.contains(&agent.arch) {
            let first = self.get(agent.arch).map(|a| a.source.clone());
            return Err(AgentError::Twice {
                arch: agent.arch,
                first: first.unwrap_or_default(),
                second: agent.source,
            });
        }
        self.given.push(agent.arch);
        self.agents.retain(|a| a.arch != agent.arch);
        self.agents.push(agent);
        Ok(())
    }

    pub fn get(&self, arch: Arch) -> Option<&Agent> {
        self.agents.iter().find(|a| a.arch == arch)
    }

    /// Every agent, one per architecture, in no particular order.
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    pub fn searched(&self) -> &[PathBuf] {
        &self.searched
    }

    /// The agent for `board`. Without one, the error names what was given for other
    /// architectures (an `--agent` for the wrong board is the likely mistake), where imagegen
    /// looked, and how to get one.
    pub fn for_board(&self, board: &Board) -> Result<&Agent, AgentError> {
        if let Some(a) = self.get(board.arch) {
            return Ok(a);
        }
        let looked = self.looked_for(board.arch);
        let given: Vec<String> = self
            .agents
            .iter()
            .filter(|a| self.given.contains(&a.arch))
            .map(|a| format!("--agent {} is for {}", a.source, a.arch))
            .collect();
        if given.is_empty() {
            Err(AgentError::Missing {
                board: board.id.clone(),
                arch: board.arch,
                looked,
            })
        } else {
            Err(AgentError::WrongArch {
                given: given.join(", "),
                board: board.id.clone(),
                arch: board.arch,
                looked,
            })
        }
    }

    /// "looked for imagegen-firstboot-aarch64 and imagegen-firstboot in DIR, DIR".
    fn looked_for(&self, arch: Arch) -> String {
        if self.searched.is_empty() {
            return "imagegen cannot tell where its own binary is, so it looked nowhere".into();
        }
        let dirs: Vec<String> = self
            .searched
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        format!(
            "looked for imagegen-firstboot-{arch} and imagegen-firstboot in {}",
            dirs.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(path: &Path, machine: u16) {
        let mut h = b"\x7fELF\x02\x01\x01".to_vec();
        h.extend([0; 9]);
        h.extend(2u16.to_le_bytes());
        h.extend(machine.to_le_bytes());
        h.extend([0; 44]);
        std::fs::write(path, h).unwrap();
    }

    fn board(id: &str) -> Board {
        crate::board::get(id).unwrap()
    }

    #[test]
    fn installed_layout() {
        assert_eq!(
            search_dirs(Path::new("/usr/local/bin/imagegen")),
            [
                PathBuf::from("/usr/local/bin"),
                PathBuf::from("/usr/local/lib/imagegen")
            ]
        );
    }

    #[test]
    fn the_help_text_names_every_architecture() {
        for arch in Arch::ALL {
            let name = format!("imagegen-firstboot-{arch},");
            assert!(SEARCH_ORDER.contains(&name), "{name} in {SEARCH_ORDER}");
        }
    }

    #[test]
    fn first_found_wins_per_architecture() {
        let bin = tempfile::tempdir().unwrap();
        let lib = tempfile::tempdir().unwrap();
        elf(&bin.path().join("imagegen-firstboot"), 62);
        elf(&bin.path().join("imagegen-firstboot-x86_64"), 62);
        elf(&lib.path().join("imagegen-firstboot-x86_64"), 62);
        elf(&lib.path().join("imagegen-firstboot"), 183);
        let set =
            AgentSet::discover(&[bin.path().to_path_buf(), lib.path().to_path_buf()]).unwrap();
        assert_eq!(
            set.get(Arch::X86_64).unwrap().path,
            bin.path().join("imagegen-firstboot-x86_64")
        );
        assert_eq!(
            set.get(Arch::Aarch64).unwrap().path,
            lib.path().join("imagegen-firstboot")
        );
        assert!(set.get(Arch::Arm).is_none());
        assert_eq!(set.agents().len(), 2);
    }

    #[test]
    fn a_misnamed_or_broken_agent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        elf(&dir.path().join("imagegen-firstboot-aarch64"), 62);
        let err = AgentSet::discover(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(matches!(err, AgentError::Misnamed { .. }), "{err}");
        assert!(err.to_string().contains("x86_64"), "{err}");
        std::fs::write(dir.path().join("imagegen-firstboot-aarch64"), "#!/bin/sh\n").unwrap();
        let err = AgentSet::discover(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(err.to_string().contains("not an ELF file"), "{err}");
    }

    #[test]
    fn given_replaces_one_architecture_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        elf(&dir.path().join("imagegen-firstboot-x86_64"), 62);
        elf(&dir.path().join("imagegen-firstboot-aarch64"), 183);
        let mut set = AgentSet::discover(&[dir.path().to_path_buf()]).unwrap();
        let given = Agent {
            arch: Arch::Aarch64,
            path: "/given/arm".into(),
            source: "/given/arm".into(),
        };
        set.give(given.clone()).unwrap();
        assert_eq!(set.for_board(&board("rpi4")).unwrap(), &given);
        assert_eq!(
            set.for_board(&board("x86-64")).unwrap().path,
            dir.path().join("imagegen-firstboot-x86_64")
        );
        let err = set.give(given).unwrap_err();
        assert!(matches!(err, AgentError::Twice { .. }), "{err}");
    }

    #[test]
    fn missing_agents_say_where_imagegen_looked_and_what_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = AgentSet::discover(&[dir.path().to_path_buf()]).unwrap();
        let err = set.for_board(&board("rpi4")).unwrap_err().to_string();
        for needle in [
            "aarch64",
            "rpi4",
            "ci/build-agents",
            "--agent",
            &dir.path().display().to_string(),
        ] {
            assert!(err.contains(needle), "{needle:?} in {err}");
        }
        set.give(Agent {
            arch: Arch::X86_64,
            path: "amd64-agent".into(),
            source: "amd64-agent".into(),
        })
        .unwrap();
        let err = set.for_board(&board("rpi4")).unwrap_err().to_string();
        assert!(
            err.starts_with("--agent amd64-agent is for x86_64 but board rpi4 is aarch64"),
            "{err}"
        );
    }
}
