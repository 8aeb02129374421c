//! A client of the NUT network protocol (TCP, one request line, one reply line) and `ups-watch`,
//! which shuts the node down when the UPS server says the battery is critical.
//!
//! Shutdown happens on `FSD`, or `OB` together with `LB`; status words are space-separated and
//! unknown ones are ignored. A lost connection is retried and is no reason to power off by itself:
//! a network blip must not power off the cluster. But a UPS last seen on battery that gives no
//! status for `[ups] dead_time_secs` is taken as critical, as upsmon does (upsmon(8), "DEAD
//! UPSES": "If this happens while that UPS was last known to be on battery, it is assumed to have
//! gone critical"): the UPS server may have gone down with the battery, and nobody else will say so.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::command;
use crate::config::UpsSection;
use crate::root::Root;
use crate::status::{self, Update};

/// Longest reply line accepted. NUT's own parser caps a word at 512 bytes
/// (`PCONF_DEFAULT_WORDLEN_LIMIT`, common/parseconf.h); a `VAR` line is a few of those.
pub const MAX_LINE: usize = 4096;

/// Longest password or name NUT keeps whole: parseconf stops a word at 512 bytes.
const MAX_WORD: usize = 512;

/// Consecutive logins that break the connection before the watch goes on without logging in.
const LOGIN_ATTEMPTS: u32 = 3;

/// How long the watch goes without logging in after logins kept failing, before trying again.
const RELOGIN_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum NutError {
    #[error("connection to upsd: {0}")]
    Io(#[from] io::Error),
    /// `ERR <code>` from upsd.
    #[error("upsd answered ERR {0}")]
    Server(String),
    #[error("upsd sent an unexpected line {0:?}")]
    Protocol(String),
    #[error("upsd sent a line longer than {MAX_LINE} bytes")]
    LineTooLong,
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
        let reply = self.read_line()?;
        match reply.strip_prefix("ERR ") {
            Some(code) => Err(NutError::Server(code.to_owned())),
            None => Ok(reply),
        }
    }

    /// One reply line, at most [`MAX_LINE`] bytes: a server that never ends its line must not
    /// grow the agent without bound.
    fn read_line(&mut self) -> Result<String, NutError> {
        let mut buf = Vec::new();
        (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if buf.last() != Some(&b'\n') {
            if buf.len() > MAX_LINE {
                return Err(NutError::LineTooLong);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let line = String::from_utf8_lossy(&buf);
        Ok(line.trim_end().to_owned())
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

/// A word quoted for NUT's parser, on the wire and in its config files alike (upsd parses both
/// with common/parseconf.c): inside double quotes a backslash takes the next character
/// literally, and `\`, `"` and `#` must be escaped. The `#` is NUT 2.8.0's rule: its parser
/// rejects an unescaped `#` inside quotes ("Unbalanced word due to unescaped # in quotes"), and
/// upsd then drops the rest of that client's line; NUT's own encoder, `pconf_encode`, escapes the
/// same three characters. The word must pass [`check_word`].
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '\\' | '"' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Whether NUT can carry `s` unchanged as one word: parseconf silently drops every byte outside
/// printable ASCII (`addchar`, CVE-2012-2944) and stops a word at 512 bytes, so such a password
/// would be stored as a different one.
pub fn check_word(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > MAX_WORD {
        return Err(format!("it is longer than {MAX_WORD} bytes"));
    }
    if let Some(c) = s.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "it contains {c:?}; NUT keeps only printable ASCII (space to '~')"
        ));
    }
    Ok(())
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

/// The last status upsd gave, and when: the DEAD rule needs it across lost connections.
struct Known {
    words: Vec<String>,
    at: Instant,
}

/// Whether to log in on the next connection.
enum LoginState {
    /// The UPS server: its upsmon is the primary client; no password needed to read the status.
    NotNeeded,
    /// No usable password: watching only, which the status already says.
    Unusable,
    Try {
        password: String,
        /// Consecutive logins that broke the connection.
        broken: u32,
        /// Watching without login until then, after logins kept failing.
        pause_until: Option<Instant>,
    },
}

/// Watches the UPS until it is critical, then logs out and runs the shutdown command once.
/// On the UPS server (`primary`), NUT's own primary upsmon shuts down last, after the others: this
/// only reports, and does not log in, so upsmon does not wait for it (upsmon(8): the primary
/// waits until it is the only client logged into the UPS, or HOSTSYNC runs out).
pub fn watch(root: &Root, boot: &Path, node: &str, ups: &UpsSection) -> io::Result<WatchEnd> {
    let mut w = Watch::new(root, boot, node, ups);
    loop {
        // Kept until the pause below ends, so the connection lasts as long as it always has.
        let mut client = w.connect();
        if let Some(c) = &mut client
            && let Login::Watching { relogin_at } = w.log_in(c)
            && w.read_status(c, relogin_at)
        {
            return Ok(WatchEnd::ShutdownStarted);
        }
        if w.shut_down_if_dead(None) {
            return Ok(WatchEnd::ShutdownStarted);
        }
        thread::sleep(w.poll);
    }
}

/// Where `ups-watch` records its state in the status.
struct StatusWriter<'a> {
    root: &'a Root,
    boot: &'a Path,
    node: &'a str,
}

impl StatusWriter<'_> {
    fn record(&self, u: Update) {
        if let Err(e) = status::set(self.root, self.boot, self.node, "ups-watch", u) {
            eprintln!("ups-watch: cannot update status: {e}");
        }
    }
}

/// How a login on a new connection went.
enum Login {
    /// Read the status on this connection; with no login until `relogin_at`, then try again.
    Watching { relogin_at: Option<Instant> },
    /// The login broke the connection.
    Broken,
}

/// The state of one `watch`, kept across connections.
struct Watch<'a> {
    root: &'a Root,
    ups: &'a UpsSection,
    status: StatusWriter<'a>,
    poll: Duration,
    dead_time: Duration,
    /// Connect and reply timeouts.
    timeout: Duration,
    /// `ups@host:port`, for messages.
    target: String,
    login: LoginState,
    known: Option<Known>,
    /// The status last logged, so only changes are.
    shown: Option<Vec<String>>,
    connected_once: bool,
    down_logged: bool,
}

impl<'a> Watch<'a> {
    fn new(root: &'a Root, boot: &'a Path, node: &'a str, ups: &'a UpsSection) -> Watch<'a> {
        let poll = Duration::from_millis(ups.poll_interval_ms);
        let dead_time = Duration::from_secs(ups.dead_time_secs);
        let status = StatusWriter { root, boot, node };
        let login = if ups.primary {
            // Reported done with the first status read.
            LoginState::NotNeeded
        } else {
            match read_password(root, ups) {
                Ok(password) => LoginState::Try {
                    password,
                    broken: 0,
                    pause_until: None,
                },
                Err(why) => {
                    let msg = format!("{why}; monitoring without login");
                    eprintln!("ups-watch: {msg}");
                    status.record(Update::failed(msg));
                    LoginState::Unusable
                }
            }
        };
        Watch {
            root,
            ups,
            status,
            poll,
            dead_time,
            // Long enough for a slow link, short enough that the DEAD rule is checked about on
            // time.
            timeout: poll
                .max(Duration::from_secs(2))
                .min(dead_time.max(Duration::from_secs(1))),
            target: format!("{}@{}:{}", ups.ups, ups.host, ups.port),
            login,
            known: None,
            shown: None,
            connected_once: false,
            down_logged: false,
        }
    }

    /// A connection to upsd; a failure is logged once until a connection succeeds again.
    fn connect(&mut self) -> Option<NutClient> {
        let target = &self.target;
        match NutClient::connect(&self.ups.host, self.ups.port, self.timeout) {
            Ok(c) => {
                self.down_logged = false;
                eprintln!(
                    "ups-watch: {} upsd {target}",
                    if self.connected_once {
                        "reconnected to"
                    } else {
                        "connected to"
                    }
                );
                self.connected_once = true;
                Some(c)
            }
            Err(e) => {
                if !self.down_logged {
                    eprintln!("ups-watch: cannot reach upsd {target}: {e}; retrying");
                    self.down_logged = true;
                }
                None
            }
        }
    }

    /// Logs in on a new connection when a password is to be tried.
    fn log_in(&mut self, client: &mut NutClient) -> Login {
        let LoginState::Try {
            password,
            broken,
            pause_until,
        } = &mut self.login
        else {
            return Login::Watching { relogin_at: None };
        };
        if pause_until.is_some_and(|t| Instant::now() < t) {
            return Login::Watching {
                relogin_at: *pause_until,
            };
        }
        let user = &self.ups.user;
        match client.login(user, password, &self.ups.ups) {
            Ok(()) => {
                *broken = 0;
                *pause_until = None;
                self.status.record(Update::done(BTreeMap::new()));
            }
            Err(NutError::Server(code)) => {
                let msg = format!(
                    "login as {user:?} refused by upsd ({code}): check the UPS password; \
                     monitoring without login, so the UPS server will not wait for this node"
                );
                // Status first, then the log: whoever reads the log line (an operator, a
                // test) then finds the status saying the same.
                self.status.record(Update::failed(msg.clone()));
                eprintln!("ups-watch: error: {msg}");
            }
            Err(e) => {
                *broken += 1;
                eprintln!("ups-watch: login: {e} (attempt {broken})");
                if *broken >= LOGIN_ATTEMPTS {
                    // A login that keeps breaking the connection would otherwise be retried
                    // forever without ever reading the status.
                    let msg = format!(
                        "login as {user:?} keeps failing ({e}); monitoring without login and \
                         trying again every {} min, so the UPS server will not wait for this node",
                        RELOGIN_AFTER.as_secs() / 60
                    );
                    self.status.record(Update::failed(msg.clone()));
                    eprintln!("ups-watch: error: {msg}");
                    *pause_until = Some(Instant::now() + RELOGIN_AFTER);
                }
                return Login::Broken;
            }
        }
        Login::Watching { relogin_at: None }
    }

    /// Reads the status every poll interval until the connection is lost, a paused login is due
    /// again, or the shutdown started (`true`).
    fn read_status(&mut self, client: &mut NutClient, relogin_at: Option<Instant>) -> bool {
        loop {
            match client.status(&self.ups.ups) {
                Ok(words) => {
                    if self.seen(words, client) {
                        return true;
                    }
                }
                // Stale or missing data (DATA-STALE, DRIVER-NOT-CONNECTED) is a failed status
                // fetch: by itself no reason to power off, but it counts towards the dead time.
                Err(NutError::Server(code)) => {
                    if self.shown.take().is_some() {
                        eprintln!("ups-watch: {}: ERR {code}", self.target);
                    }
                    if self.shut_down_if_dead(Some(client)) {
                        return true;
                    }
                }
                Err(e) => {
                    eprintln!("ups-watch: lost upsd {}: {e}; reconnecting", self.target);
                    self.shown = None;
                    return false;
                }
            }
            if relogin_at.is_some_and(|t| Instant::now() >= t) {
                // Watching without login after logins kept failing: time to try again.
                let _ = client.logout();
                return false;
            }
            thread::sleep(self.poll);
        }
    }

    /// One status read: logged when it changed, remembered for the DEAD rule, and acted on when
    /// critical. `true` when the shutdown started.
    fn seen(&mut self, words: Vec<String>, client: &mut NutClient) -> bool {
        let changed = self.shown.as_ref() != Some(&words);
        if changed {
            eprintln!("ups-watch: {} status {}", self.target, words.join(" "));
            self.shown = Some(words.clone());
        }
        if self.known.is_none() && matches!(self.login, LoginState::NotNeeded) {
            self.status.record(Update::done(BTreeMap::from([(
                "login".to_owned(),
                "none: on the UPS server, upsmon is the primary client".to_owned(),
            )])));
        }
        let critical = is_critical(&words);
        self.known = Some(Known {
            words,
            at: Instant::now(),
        });
        if !critical {
            return false;
        }
        if self.ups.primary {
            if changed {
                eprintln!("ups-watch: critical; upsmon primary shuts this node down last");
            }
            return false;
        }
        // Logging out first ends the primary's HOSTSYNC wait for us.
        if let Err(e) = client.logout() {
            eprintln!("ups-watch: logout before shutdown: {e}");
        }
        shutdown(self.root, &self.ups.shutdown_command);
        true
    }

    /// The DEAD rule: when the UPS was last seen on battery and has given no status for longer
    /// than the dead time, it is taken as critical (except on the UPS server). `true` when the
    /// shutdown started.
    fn shut_down_if_dead(&self, client: Option<&mut NutClient>) -> bool {
        let Some(k) = &self.known else {
            return false;
        };
        if !(k.words.iter().any(|w| w == "OB") && k.at.elapsed() > self.dead_time)
            || self.ups.primary
        {
            return false;
        }
        eprintln!(
            "ups-watch: {} gave no status for more than {}s and was last seen on battery \
             ({}): taking it as dead and critical (upsmon DEADTIME)",
            self.target,
            self.dead_time.as_secs(),
            k.words.join(" ")
        );
        if let Some(c) = client {
            let _ = c.logout();
        }
        shutdown(self.root, &self.ups.shutdown_command);
        true
    }
}

/// The password from `[ups] password_file`, checked to be one NUT can carry.
fn read_password(root: &Root, ups: &UpsSection) -> Result<String, String> {
    let path = ups.password_file.display();
    let p = root
        .read_to_string(&ups.password_file)
        .map_err(|e| format!("cannot read password file {path}: {e}"))?;
    let p = p.trim_end_matches(['\r', '\n']).to_owned();
    check_word(&p).map_err(|why| format!("password in {path} cannot be sent to upsd: {why}"))?;
    Ok(p)
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
        assert_eq!(quote(r#"a b#c\"#), r#""a b\#c\\""#);
    }

    #[test]
    fn words_nut_cannot_carry() {
        assert!(check_word(r#"pa ss#wo"rd\x~"#).is_ok());
        assert!(check_word("").is_err());
        assert!(check_word("tab\there").is_err());
        assert!(check_word("caf\u{e9}").is_err());
        assert!(check_word(&"x".repeat(513)).is_err());
    }
}
