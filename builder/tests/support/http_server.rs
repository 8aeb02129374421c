//! A small HTTP/1.1 file server on 127.0.0.1 for download tests: ETag, Range and If-Range,
//! plus scripted faults (cut a transfer, stall, answer an error status). Every request is
//! logged so tests can check what the client asked for.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What to do to the next request for a path, instead of serving it normally.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Send the headers and this many body bytes, then close the connection.
    CutAfter(usize),
    /// Send the headers and this many body bytes, then go silent for this long.
    StallAfter(usize, Duration),
    /// Answer with this status and no body.
    Status(u16),
}

#[derive(Clone, Debug, Default)]
pub struct Route {
    pub body: Vec<u8>,
    pub etag: Option<String>,
    pub faults: VecDeque<Fault>,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    log: Vec<Logged>,
}

pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        // Lives as long as the test process; each connection gets its own thread.
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                thread::spawn(move || {
                    let _ = serve(conn, &state);
                });
            }
        });
        Server { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn put(&self, path: &str, body: &[u8], etag: Option<&str>) {
        let route = Route {
            body: body.to_vec(),
            etag: etag.map(str::to_string),
            faults: VecDeque::new(),
        };
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), route);
    }

    pub fn remove(&self, path: &str) {
        self.state.lock().unwrap().routes.remove(path);
    }

    pub fn fault(&self, path: &str, fault: Fault) {
        let mut st = self.state.lock().unwrap();
        st.routes
            .get_mut(path)
            .expect("fault on a path that is not served")
            .faults
            .push_back(fault);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn requests_for(&self, path: &str) -> Vec<Logged> {
        self.log().into_iter().filter(|l| l.path == path).collect()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

/// A request's method, path and headers (names lower-cased), up to the blank line.
pub fn read_head(
    reader: &mut impl BufRead,
) -> std::io::Result<(String, String, HashMap<String, String>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok((method, path, headers))
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let (_, path, headers) = read_head(&mut reader)?;
    let path = if path.is_empty() { "/".into() } else { path };
    let (route, fault) = {
        let mut st = state.lock().unwrap();
        st.log.push(Logged {
            path: path.clone(),
            headers: headers.clone(),
        });
        match st.routes.get_mut(&path) {
            Some(r) => {
                let fault = r.faults.pop_front();
                (Some(r.clone()), fault)
            }
            None => (None, None),
        }
    };
    let mut out = conn;
    let Some(route) = route else {
        return respond(&mut out, "404 Not Found", &[], b"not found\n");
    };
    if let Some(Fault::Status(code)) = fault {
        return respond(&mut out, &format!("{code} Scripted"), &[], b"");
    }
    let len = route.body.len();
    let mut extra = Vec::new();
    if let Some(etag) = &route.etag {
        extra.push(format!("ETag: {etag}"));
    }
    let range_ok = match (headers.get("if-range"), &route.etag) {
        (None, _) => true,
        (Some(v), Some(etag)) => v == etag,
        (Some(_), None) => false,
    };
    let start = headers
        .get("range")
        .filter(|_| range_ok)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let (status, body) = match start {
        Some(s) if s >= len => {
            extra.push(format!("Content-Range: bytes */{len}"));
            return respond(&mut out, "416 Range Not Satisfiable", &extra, b"");
        }
        Some(s) => {
            extra.push(format!("Content-Range: bytes {s}-{}/{len}", len - 1));
            ("206 Partial Content", &route.body[s..])
        }
        None => ("200 OK", &route.body[..]),
    };
    write_head(&mut out, status, &extra, body.len())?;
    match fault {
        Some(Fault::CutAfter(n)) => {
            out.write_all(&body[..n.min(body.len())])?;
            out.flush()?;
            out.shutdown(std::net::Shutdown::Both)
        }
        Some(Fault::StallAfter(n, pause)) => {
            out.write_all(&body[..n.min(body.len())])?;
            out.flush()?;
            thread::sleep(pause);
            Ok(())
        }
        _ => out.write_all(body),
    }
}

fn write_head(
    out: &mut TcpStream,
    status: &str,
    extra: &[String],
    len: usize,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    extra: &[String],
    body: &[u8],
) -> std::io::Result<()> {
    write_head(out, status, extra, body.len())?;
    out.write_all(body)
}
