//! The k3s step against a local TLS server on 127.0.0.1 that speaks k3s's unauthenticated
//! supervisor endpoints (`/cacerts`, `/ping`). k3s itself is not packaged in Debian, so it cannot
//! run here; the CA and server certificate are generated per test with rcgen, like k3s's own.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

const SECRET: &str = "server:k3s-join-secret-123";

struct FakeServer {
    url: String,
    ca_pem: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn start_server() -> FakeServer {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "k3s-server-ca");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let srv_key = rcgen::KeyPair::generate().unwrap();
    let srv_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&srv_key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![srv_cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(srv_key.serialize_der())),
    )
    .unwrap();
    let config = Arc::new(config);
    let ca_pem = ca.pem();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (reqs, pem) = (requests.clone(), ca_pem.clone());
    thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            // A client that rejects our certificate ends the handshake here: nothing to record.
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            if !head.ends_with(b"\r\n\r\n") {
                continue;
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            reqs.lock().unwrap().push(text.clone());
            let body = if text.starts_with("GET /cacerts ") {
                pem.clone()
            } else if text.starts_with("GET /ping ") {
                "pong".to_owned()
            } else {
                String::new()
            };
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    FakeServer {
        url,
        ca_pem,
        requests,
    }
}

fn node(server: &FakeServer, token: &str, extra: &str) -> Node {
    let n = Node::new(&format!(
        r#"
[node]
name = "pi4-a"
role = "agent"
cluster = "test"

[k3s]
server_url = "{}"
node_ip_from = "default-route"
{extra}

[agent]
time_budget_secs = 10
"#,
        server.url
    ));
    n.write("etc/rancher/k3s/token", &format!("{token}\n"));
    n.write("etc/rancher/node/password", "node-password-from-image\n");
    n
}

fn assert_token_never_sent(server: &FakeServer) {
    let reqs = server.requests.lock().unwrap();
    assert!(!reqs.is_empty(), "the agent never asked the server");
    for r in reqs.iter() {
        assert!(!r.contains("k3s-join-secret-123"), "token sent: {r}");
        assert!(!r.to_ascii_lowercase().contains("authorization"), "{r}");
    }
}

#[test]
fn matching_ca_hash_writes_config_and_enables_agent() {
    let server = start_server();
    let hash = hex::encode(Sha256::digest(server.ca_pem.as_bytes()));
    let n = node(&server, &format!("K10{hash}::{SECRET}"), "");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("k3s-join-secret-123"), "token in log: {log}");

    let yaml = n.read("etc/rancher/k3s/config.yaml");
    assert!(yaml.contains(&format!("server: \"{}\"", server.url)), "{yaml}");
    assert!(yaml.contains("token-file: \"/etc/rancher/k3s/token\""), "{yaml}");
    assert!(yaml.contains("node-name: \"pi4-a\""), "{yaml}");
    assert!(yaml.contains("node-ip: \"127.0.0.1\""), "{yaml}");
    assert!(!yaml.contains("k3s-join-secret-123"));
    assert_eq!(
        n.calls("systemctl"),
        ["enable --now k3s-agent.service"],
        "{log}"
    );
    // The image's node password is kept as it was.
    assert_eq!(n.read("etc/rancher/node/password"), "node-password-from-image\n");
    let st = n.status_json();
    assert_eq!(st["steps"]["k3s"]["state"], "done");
    assert_eq!(st["steps"]["k3s"]["details"]["ca-sha256"], hash.as_str());
    let paths: Vec<String> = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.split(' ').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(paths.first().map(String::as_str), Some("/cacerts"));
    assert_eq!(paths.last().map(String::as_str), Some("/ping"));
    assert_token_never_sent(&server);
}

#[test]
fn mismatching_ca_hash_is_refused_and_not_retried_blindly() {
    let server = start_server();
    let wrong = hex::encode(Sha256::digest(b"some other cluster's CA"));
    let n = node(&server, &format!("K10{wrong}::{SECRET}"), "");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("does not match"), "{log}");
    assert!(!n.root().join("etc/rancher/k3s/config.yaml").exists());
    assert!(n.calls("systemctl").is_empty());
    let st = n.status_json();
    assert_eq!(st["steps"]["k3s"]["state"], "failed");
    let reason = st["steps"]["k3s"]["reason"].as_str().unwrap();
    assert!(reason.contains("does not match") && reason.contains(&wrong), "{reason}");
    assert_token_never_sent(&server);

    let asked = server.requests.lock().unwrap().len();
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(log.contains("refused earlier"), "{log}");
    assert_eq!(server.requests.lock().unwrap().len(), asked, "retried blindly");
}

#[test]
fn token_without_ca_hash_is_refused_unless_allowed() {
    let server = start_server();
    let n = node(&server, "k3s-join-secret-123", "");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(log.contains("cannot be verified"), "{log}");
    assert!(server.requests.lock().unwrap().is_empty());

    let n = node(&server, "k3s-join-secret-123", "allow_unverified_token = true");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("cannot be verified"), "{log}");
    assert_eq!(n.calls("systemctl"), ["enable --now k3s-agent.service"]);
    assert_token_never_sent(&server);
}
