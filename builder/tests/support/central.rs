//! A stand-in for ZeroTier Central's member API on 127.0.0.1, following its OpenAPI document
//! (docs.zerotier.com/openapi/central/v1.json): `POST /api/v1/network/{networkID}/member/
//! {memberID}` with `Authorization: token <token>` answers 200 and the member as JSON; a
//! missing or wrong token 401, an unknown network 404, each with a JSON `message` as Central
//! does. Every request is recorded whole (method, path, headers, body). Bounded: each
//! connection has a read time-out and a body limit, so a test cannot hang on it.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

struct State {
    token: String,
    networks: Vec<String>,
    log: Vec<Request>,
}

pub struct Central {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Central {
    /// Serves `networks`, accepting `token` only.
    pub fn start(token: &str, networks: &[&str]) -> Central {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            networks: networks.iter().map(|n| n.to_string()).collect(),
            log: Vec::new(),
        }));
        let shared = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                thread::spawn(move || {
                    let _ = serve(conn, &state);
                });
            }
        });
        Central { addr, state }
    }

    /// The `api_url` to give imagegen.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

const MAX_BODY: usize = 64 << 10;

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let (method, path, headers) = super::http_server::read_head(&mut reader)?;
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let request = Request {
        method,
        path,
        headers,
        body,
    };
    let (status, answer) = {
        let mut st = state.lock().unwrap();
        st.log.push(request.clone());
        answer(&st, &request)
    };
    let body = answer.to_string();
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

fn answer(st: &State, r: &Request) -> (&'static str, serde_json::Value) {
    let message = |m: &str| serde_json::json!({ "message": m });
    if r.headers.get("authorization") != Some(&format!("token {}", st.token)) {
        return ("401 Unauthorized", message("Unauthorized"));
    }
    let parts: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let ["api", "v1", "network", network, "member", member] = parts[..] else {
        return ("404 Not Found", message("Not Found"));
    };
    if r.method != "POST" {
        return ("405 Method Not Allowed", message("Method Not Allowed"));
    }
    if !st.networks.iter().any(|n| n == network) {
        return ("404 Not Found", message("Network not found"));
    }
    let Ok(sent) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
        return ("400 Bad Request", message("invalid JSON"));
    };
    let config = &sent["config"];
    (
        "200 OK",
        serde_json::json!({
            "id": format!("{network}-{member}"),
            "networkId": network,
            "nodeId": member,
            "name": sent["name"],
            "config": {
                "authorized": config["authorized"].as_bool().unwrap_or(false),
                "ipAssignments": config["ipAssignments"].as_array().cloned().unwrap_or_default(),
                "noAutoAssignIps": config["noAutoAssignIps"].as_bool().unwrap_or(false),
            },
        }),
    )
}
