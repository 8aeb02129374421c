//! The k3s step against a local TLS server on 127.0.0.1 that speaks k3s's unauthenticated
//! supervisor endpoints (`/cacerts`, `/ping`). k3s itself is not packaged in Debian, so it cannot
//! run here; the CA and server certificate are generated per test with rcgen, like k3s's own.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

const SECRET: &str = "server:k3s-join-secret-123";

fn node(server: &FakeK3s, token: &str, extra: &str) -> Node {
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

/// The token's secret never reached the server: not in any request's bytes as the server received
/// them (head and body, after TLS), not as an HTTP Basic credential (how k3s's own client sends
/// it), and no Authorization header at all.
fn assert_token_never_sent(server: &FakeK3s) {
    use base64::Engine;
    let secret = SECRET.split_once(':').unwrap().1;
    let basic = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let reqs = server.requests.lock().unwrap();
    assert!(!reqs.is_empty(), "the agent never asked the server");
    for r in reqs.iter() {
        let text = String::from_utf8_lossy(r);
        for needle in [secret.as_bytes(), basic.as_bytes()] {
            assert!(
                !r.windows(needle.len()).any(|w| w == needle),
                "token sent: {text}"
            );
        }
        assert!(
            !text.to_ascii_lowercase().contains("authorization"),
            "{text}"
        );
    }
}

#[test]
fn matching_ca_hash_writes_config_and_enables_agent() {
    let server = FakeK3s::start();
    let hash = hex::encode(Sha256::digest(server.ca_pem.as_bytes()));
    let n = node(&server, &format!("K10{hash}::{SECRET}"), "");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("k3s-join-secret-123"), "token in log: {log}");

    let yaml = n.read("etc/rancher/k3s/config.yaml");
    assert!(
        yaml.contains(&format!("server: \"{}\"", server.url)),
        "{yaml}"
    );
    assert!(
        yaml.contains("token-file: \"/etc/rancher/k3s/token\""),
        "{yaml}"
    );
    assert!(yaml.contains("node-name: \"pi4-a\""), "{yaml}");
    assert!(yaml.contains("node-ip: \"127.0.0.1\""), "{yaml}");
    assert!(!yaml.contains("k3s-join-secret-123"));
    assert_eq!(
        n.calls("systemctl"),
        ["enable --now --no-block k3s-agent.service"],
        "{log}"
    );
    // The image's node password is kept as it was.
    assert_eq!(
        n.read("etc/rancher/node/password"),
        "node-password-from-image\n"
    );
    let st = n.status_json();
    assert_eq!(st["steps"]["k3s"]["state"], "done");
    assert_eq!(st["steps"]["k3s"]["details"]["ca-sha256"], hash.as_str());
    let paths = server.paths();
    assert_eq!(paths.first().map(String::as_str), Some("/cacerts"));
    assert_eq!(paths.last().map(String::as_str), Some("/ping"));
    assert_token_never_sent(&server);
}

#[test]
fn mismatching_ca_hash_is_refused_and_not_retried_blindly() {
    let server = FakeK3s::start();
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
    assert!(
        reason.contains("does not match") && reason.contains(&wrong),
        "{reason}"
    );
    assert_token_never_sent(&server);

    let asked = server.requests.lock().unwrap().len();
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(log.contains("refused earlier"), "{log}");
    assert_eq!(
        server.requests.lock().unwrap().len(),
        asked,
        "retried blindly"
    );
}

#[test]
fn token_without_ca_hash_is_refused_unless_allowed() {
    let server = FakeK3s::start();
    let n = node(&server, "k3s-join-secret-123", "");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(log.contains("cannot be verified"), "{log}");
    assert!(server.requests.lock().unwrap().is_empty());

    let n = node(
        &server,
        "k3s-join-secret-123",
        "allow_unverified_token = true",
    );
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("cannot be verified"), "{log}");
    assert_eq!(
        n.calls("systemctl"),
        ["enable --now --no-block k3s-agent.service"]
    );
    assert_token_never_sent(&server);
}

/// A `/cacerts` reply cut short (no Content-Length, TCP closed without TLS close_notify, as a
/// dropped connection looks) is not the server's answer: it must not be taken for a CA mismatch
/// and remembered as a refusal. The agent retries and joins once a whole reply arrives.
#[test]
fn cut_cacerts_reply_is_retried_not_refused() {
    let cut = Arc::new(AtomicUsize::new(0));
    let c = cut.clone();
    let server = FakeK3s::start_with(move |head, pem, tls| {
        let body = if head.starts_with("GET /cacerts ") {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}",
                    &pem[..pem.len() / 2]
                );
                return Replied::Cut;
            }
            pem.to_owned()
        } else {
            "pong".to_owned()
        };
        let _ = write!(
            tls,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        Replied::Complete
    });
    let hash = hex::encode(Sha256::digest(server.ca_pem.as_bytes()));
    let n = node(&server, &format!("K10{hash}::{SECRET}"), "");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(cut.load(Ordering::SeqCst) >= 2, "{log}");
    assert!(out.status.success(), "{log}");
    let st = n.status_json();
    assert_eq!(st["steps"]["k3s"]["state"], "done", "{log}");
    assert!(st["steps"]["k3s"].get("refused_inputs").is_none(), "{st}");
    assert_token_never_sent(&server);
}

/// A server that sends its reply a byte a second never trips a per-read timeout; the agent's
/// run must still end within its time budget.
#[test]
fn dripping_server_cannot_hold_run_past_its_budget() {
    let server = FakeK3s::start_with(|_, _, tls| {
        // 40 s of drip at most, so a regression fails the test instead of hanging it.
        for b in b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong"
            .iter()
            .cycle()
            .take(40)
        {
            if tls.write_all(&[*b]).and_then(|()| tls.flush()).is_err() {
                break;
            }
            thread::sleep(Duration::from_secs(1));
        }
        Replied::Cut
    });
    let hash = hex::encode(Sha256::digest(server.ca_pem.as_bytes()));
    let n = node(&server, &format!("K10{hash}::{SECRET}"), "");
    n.write(
        "etc/imagegen/node.toml",
        &n.read("etc/imagegen/node.toml")
            .replace("time_budget_secs = 10", "time_budget_secs = 3"),
    );
    let t = Instant::now();
    let out = n.command(&["run"]).output().unwrap();
    let took = t.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} with a 3 s budget: {log}"
    );
    assert_eq!(n.status_json()["steps"]["k3s"]["state"], "pending", "{log}");
}

/// The other side of the rule above: a whole `/cacerts` whose hash matches the token, served by a
/// server whose own certificate does not chain to it, is a definite answer and stays refused.
#[test]
fn server_certificate_outside_the_pinned_ca_is_refused() {
    let other_ca = {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    };
    let served = other_ca.clone();
    let server = FakeK3s::start_with(move |_, _, tls| {
        let _ = write!(
            tls,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{served}",
            served.len()
        );
        Replied::Complete
    });
    let hash = hex::encode(Sha256::digest(other_ca.as_bytes()));
    let n = node(&server, &format!("K10{hash}::{SECRET}"), "");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("does not chain to"), "{log}");
    let st = n.status_json();
    assert_eq!(st["steps"]["k3s"]["state"], "failed");
    assert!(st["steps"]["k3s"]["refused_inputs"].is_string(), "{st}");
    assert_token_never_sent(&server);
}

/// A man in the middle: it replays the real server's `/cacerts` (the CA whose hash is in the
/// token, so the hash check passes) but cannot show a certificate from that CA, only one from
/// its own. The second `/cacerts` fetch, which trusts only the pinned CA, must refuse it before
/// the token is sent, and the status must say why.
#[test]
fn man_in_the_middle_replaying_the_real_cacerts_is_refused() {
    let real = FakeK3s::start();
    let replayed = imagegen_firstboot::http::get(
        &format!("{}/cacerts", real.url),
        &[],
        &imagegen_firstboot::http::Trust::AnyCertificate,
        Duration::from_secs(5),
    )
    .unwrap()
    .body;
    assert_eq!(replayed, real.ca_pem.as_bytes());
    let replayed = String::from_utf8(replayed).unwrap();
    // The stand-in makes its own CA for its certificate: that is the other CA.
    let mitm = FakeK3s::start_with(move |head, _own_ca, tls| k3s_reply(head, &replayed, tls));
    assert_ne!(mitm.ca_pem, real.ca_pem);

    let hash = hex::encode(Sha256::digest(real.ca_pem.as_bytes()));
    let n = node(&mitm, &format!("K10{hash}::{SECRET}"), "");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(!n.root().join("etc/rancher/k3s/config.yaml").exists());
    assert!(n.calls("systemctl").is_empty());
    let st = n.status_json();
    let k3s = &st["steps"]["k3s"];
    assert_eq!(k3s["state"], "failed", "{log}");
    assert!(k3s["refused_inputs"].is_string(), "{st}");
    let reason = k3s["reason"].as_str().unwrap();
    // BadSignature, not UnknownIssuer: both stand-in CAs are named `k3s-server-ca`, as a man in
    // the middle would name his, so the chain is built and its signature fails.
    for why in [
        "does not chain",
        "invalid peer certificate",
        "token was not sent",
    ] {
        assert!(reason.contains(why), "{why:?} not in {reason:?}");
    }
    let boot = n.read("boot/firmware/imagegen-status.txt");
    assert!(boot.contains("token was not sent"), "{boot}");
    // The agent only ever asked the man in the middle, and never with the token.
    assert_eq!(mitm.paths(), ["/cacerts"], "{log}");
    assert_token_never_sent(&mitm);
    assert_eq!(real.paths(), ["/cacerts"], "only the test's replay fetch");
}

/// An IPv6 `server_url`: the brackets are URL syntax, so the socket address and the route lookup
/// for `node-ip` use the bare address while the URL and `Host` keep them; the stand-in listens
/// on `[::1]` with a certificate made out to `::1`.
#[test]
fn ipv6_server_url_joins() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        let msg = format!("IPv6 loopback unavailable here ({e}); see `ip -6 addr show lo`");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("SKIPPED ipv6_server_url_joins: {msg}");
        return;
    }
    let server = FakeK3s::start_on("::1", k3s_reply);
    assert!(server.url.starts_with("https://[::1]:"), "{}", server.url);
    let hash = hex::encode(Sha256::digest(server.ca_pem.as_bytes()));
    let n = node(&server, &format!("K10{hash}::{SECRET}"), "");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let st = n.status_json();
    assert_eq!(st["steps"]["k3s"]["state"], "done", "{log}");
    assert_eq!(st["steps"]["k3s"]["details"]["node-ip"], "::1", "{st}");
    let yaml = n.read("etc/rancher/k3s/config.yaml");
    assert!(
        yaml.contains(&format!("server: \"{}\"", server.url)),
        "{yaml}"
    );
    assert!(yaml.contains("node-ip: \"::1\""), "{yaml}");
    assert_eq!(server.paths().last().map(String::as_str), Some("/ping"));
    let port = server.url.rsplit(':').next().unwrap();
    let first = String::from_utf8_lossy(&server.requests.lock().unwrap()[0]).into_owned();
    // Field names are case-insensitive (RFC 9110 section 5.1); ureq writes them in lower case.
    let host = first.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("host").then(|| v.trim())
    });
    assert_eq!(host, Some(format!("[::1]:{port}").as_str()), "{first}");
    assert_token_never_sent(&server);
}
