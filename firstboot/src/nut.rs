//! A client of the NUT network protocol (TCP, one request line, one reply line) and `ups-watch`,
//! which shuts the node down when the UPS server says the battery is critical.
//!
//! Shutdown happens on `FSD`, or `OB` together with `LB`; status words are space-separated and
//! unknown ones are ignored. A lost connection is retried and never shuts down by itself: a network
//! blip must not power off the cluster.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::command;
use crate::config::UpsSection;
use crate::root::Root;
use crate::status::{self, Update};

#[derive(Debug, thiserror::Error)]
pub enum NutError {
    #[error("connection to upsd: {0}")]
    Io(#[from] io::Error),
    /// `ERR <code>` from upsd.
    #[error("upsd answered ERR {0}")]
    Server(String),
    #[error("upsd sent an unexpected line {0:?}")]
    Protocol(String),
}

pub struct NutClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl NutClient {
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<NutClient, NutError> {
        let addr = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other("host has no address"))?;
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(NutClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    fn request(&mut self, line: &str) -> Result<String, NutError> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let reply = reply.trim_end().to_owned();
        match reply.strip_prefix("ERR ") {
            Some(code) => Err(NutError::Server(code.to_owned())),
            None => Ok(reply),
        }
    }

    fn expect_ok(&mut self, line: &str) -> Result<(), NutError> {
        let r = self.request(line)?;
        if r.starts_with("OK") {
            Ok(())
        } else {
            Err(NutError::Protocol(r))
        }
    }

    /// `USERNAME`, `PASSWORD`, `LOGIN`: registers this node with upsd, so the primary's upsmon
    /// waits (up to HOSTSYNC) for it to log out before cutting power.
    pub fn login(&mut self, user: &str, password: &str, ups: &str) -> Result<(), NutError> {
        self.expect_ok(&format!("USERNAME {}", quote(user)))?;
        self.expect_ok(&format!("PASSWORD {}", quote(password)))?;
        self.expect_ok(&format!("LOGIN {}", quote(ups)))
    }

    /// The words of `ups.status`.
    pub fn status(&mut self, ups: &str) -> Result<Vec<String>, NutError> {
        let r = self.request(&format!("GET VAR {} ups.status", quote(ups)))?;
        let prefix = format!("VAR {ups} ups.status ");
        let value = r
            .strip_prefix(&prefix)
            .ok_or_else(|| NutError::Protocol(r.clone()))?;
        Ok(unquote(value)
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect())
    }

    pub fn logout(&mut self) -> Result<(), NutError> {
        self.request("LOGOUT").map(drop)
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn unquote(s: &str) -> String {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

/// `FSD`, or on battery with a low battery.
pub fn is_critical(words: &[String]) -> bool {
    let has = |w: &str| words.iter().any(|x| x == w);
    has("FSD") || (has("OB") && has("LB"))
}

/// What `watch` ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEnd {
    ShutdownStarted,
}

/// Watches the UPS until it is critical, then logs out and runs the shutdown command once.
/// On the UPS server (`primary`), NUT's own primary upsmon shuts down last, after the others: this
/// only reports.
pub fn watch(root: &Root, boot: &Path, node: &str, ups: &UpsSection) -> io::Result<WatchEnd> {
    let poll = Duration::from_millis(ups.poll_interval_ms);
    let timeout = poll.max(Duration::from_secs(2));
    let record = |u: Update| {
        if let Err(e) = status::set(root, boot, node, "ups-watch", u) {
            eprintln!("ups-watch: cannot update status: {e}");
        }
    };
    let password = match root.read_to_string(&ups.password_file) {
        Ok(p) => Some(p.trim_end_matches(['\r', '\n']).to_owned()),
        Err(e) => {
            let msg = format!(
                "cannot read password file {}: {e}; monitoring without login",
                ups.password_file.display()
            );
            eprintln!("ups-watch: {msg}");
            record(Update::failed(msg));
            None
        }
    };
    let target = format!("{}@{}:{}", ups.ups, ups.host, ups.port);
    let mut last_words: Option<Vec<String>> = None;
    let mut connected_once = false;
    let mut down_logged = false;
    loop {
        let mut client = match NutClient::connect(&ups.host, ups.port, timeout) {
            Ok(c) => c,
            Err(e) => {
                if !down_logged {
                    eprintln!("ups-watch: cannot reach upsd {target}: {e}; retrying");
                    down_logged = true;
                }
                thread::sleep(poll);
                continue;
            }
        };
        down_logged = false;
        eprintln!(
            "ups-watch: {} upsd {target}",
            if connected_once {
                "reconnected to"
            } else {
                "connected to"
            }
        );
        connected_once = true;
        if let Some(pw) = &password {
            match client.login(&ups.user, pw, &ups.ups) {
                Ok(()) => record(Update::done(BTreeMap::new())),
                Err(NutError::Server(code)) => {
                    let msg = format!(
                        "login as {:?} refused by upsd ({code}): check the UPS password; \
                         monitoring without login, so the UPS server will not wait for this node",
                        ups.user
                    );
                    eprintln!("ups-watch: error: {msg}");
                    record(Update::failed(msg));
                }
                Err(e) => {
                    eprintln!("ups-watch: login: {e}; reconnecting");
                    thread::sleep(poll);
                    continue;
                }
            }
        }
        loop {
            match client.status(&ups.ups) {
                Ok(words) => {
                    let changed = last_words.as_ref() != Some(&words);
                    if changed {
                        eprintln!("ups-watch: {target} status {}", words.join(" "));
                        last_words = Some(words.clone());
                    }
                    if is_critical(&words) {
                        if ups.primary {
                            if changed {
                                eprintln!(
                                    "ups-watch: critical; upsmon primary shuts this node down last"
                                );
                            }
                        } else {
                            // Logging out first ends the primary's HOSTSYNC wait for us.
                            if let Err(e) = client.logout() {
                                eprintln!("ups-watch: logout before shutdown: {e}");
                            }
                            shutdown(root, &ups.shutdown_command);
                            return Ok(WatchEnd::ShutdownStarted);
                        }
                    }
                }
                // Stale or missing data is no reason to power off; keep asking.
                Err(NutError::Server(code)) => {
                    if last_words.take().is_some() {
                        eprintln!("ups-watch: {target}: ERR {code}");
                    }
                }
                Err(e) => {
                    eprintln!("ups-watch: lost upsd {target}: {e}; reconnecting");
                    last_words = None;
                    break;
                }
            }
            thread::sleep(poll);
        }
        thread::sleep(poll);
    }
}

fn shutdown(root: &Root, argv: &[String]) {
    eprintln!("ups-watch: UPS critical: running {}", argv.join(" "));
    let result = command::resolve(&argv[0]).and_then(|p| {
        Command::new(p)
            .args(&argv[1..])
            .current_dir(root.dir())
            .status()
            .map_err(|source| command::CommandError::Spawn {
                program: argv[0].clone(),
                source,
            })
    });
    match result {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("ups-watch: shutdown command exited {s}"),
        Err(e) => eprintln!("ups-watch: shutdown command: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn critical_words() {
        assert!(is_critical(&w("OB LB")));
        assert!(is_critical(&w("ALARM LB DISCHRG OB")));
        assert!(is_critical(&w("FSD OL")));
        assert!(!is_critical(&w("OB")));
        assert!(!is_critical(&w("OL CHRG BOOST LB")));
    }

    #[test]
    fn quoting() {
        assert_eq!(unquote(r#""a \"b\" \\c""#), r#"a "b" \c"#);
        assert_eq!(quote(r#"p"w"#), r#""p\"w""#);
    }
}
