//! A cluster from one cluster.toml: the CA set, the minted token and the admin kubeconfig,
//! each checked by openssl, and the token by the node agent's own server verification against
//! a TLS server (`openssl s_server`) that serves `/cacerts` as k3s does.

mod common;

use common::oracle;
use imagegen::cluster::{self, Bootstrap, Trust, ca, kubeconfig, token};
use imagegen::config;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn openssl(args: &[&str]) -> (bool, String) {
    let out = oracle::output("openssl", args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn state() -> (tempfile::TempDir, Trust) {
    let dir = tempfile::tempdir().unwrap();
    let trust = Trust::load_or_create(&dir.path().join("state")).unwrap();
    (dir, trust)
}

#[test]
fn ca_set_is_what_k3s_reads_and_openssl_accepts() {
    let (dir, trust) = state();
    let tls = dir.path().join("state/_cluster/tls");
    let names: Vec<&str> = trust.tls.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "client-ca.crt",
            "client-ca.key",
            "server-ca.crt",
            "server-ca.key",
            "request-header-ca.crt",
            "request-header-ca.key",
            "etcd/peer-ca.crt",
            "etcd/peer-ca.key",
            "etcd/server-ca.crt",
            "etcd/server-ca.key",
            "service.key"
        ]
    );
    for (path, name) in ca::CAS {
        let crt = tls.join(format!("{path}.crt"));
        let crt = crt.to_str().unwrap();
        let key = tls.join(format!("{path}.key"));
        let key = key.to_str().unwrap();
        let (ok, text) = openssl(&["x509", "-in", crt, "-noout", "-text"]);
        assert!(ok, "{text}");
        for want in [
            "X509v3 Basic Constraints: critical",
            "CA:TRUE",
            "X509v3 Key Usage: critical",
            "Digital Signature, Key Encipherment, Certificate Sign",
            "X509v3 Subject Key Identifier",
            "X509v3 Authority Key Identifier",
            "ASN1 OID: prime256v1",
            "ecdsa-with-SHA256",
            &format!("Subject: CN = k3s-{name}-ca@{}", trust.created),
        ] {
            assert!(text.contains(want), "{path}: no {want:?} in\n{text}");
        }
        let (ok, text) = openssl(&["verify", "-CAfile", crt, crt]);
        assert!(ok && text.contains(": OK"), "{path}: {text}");
        // Valid ten years from now: still in 3649 days, no longer in 3651.
        let days = |d: u64| (d * 86400).to_string();
        assert!(openssl(&["x509", "-in", crt, "-noout", "-checkend", &days(3649)]).0);
        assert!(!openssl(&["x509", "-in", crt, "-noout", "-checkend", &days(3651)]).0);
        // The key is the certificate's.
        let (_, from_key) = openssl(&["pkey", "-in", key, "-pubout"]);
        let (_, from_crt) = openssl(&["x509", "-in", crt, "-noout", "-pubkey"]);
        assert_eq!(from_key, from_crt, "{path}");
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path}.key");
    }
    let svc = tls.join("service.key");
    let text = std::fs::read_to_string(&svc).unwrap();
    assert!(
        text.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{text}"
    );
    let (ok, out) = openssl(&[
        "rsa",
        "-in",
        svc.to_str().unwrap(),
        "-check",
        "-noout",
        "-text",
    ]);
    assert!(
        ok && out.contains("2048 bit") && out.contains("RSA key ok"),
        "{out}"
    );
    assert!(!tls.join("service.key.pub").exists());
    let state_mode = std::fs::metadata(dir.path().join("state/_cluster"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(state_mode & 0o777, 0o700);
    // Made once, reused.
    assert_eq!(
        Trust::load_or_create(&dir.path().join("state")).unwrap(),
        trust
    );
}

#[test]
fn token_pins_the_served_bundle() {
    let (dir, trust) = state();
    let crt = dir.path().join("state/_cluster/tls/server-ca.crt");
    let (ok, dgst) = openssl(&["dgst", "-sha256", "-r", crt.to_str().unwrap()]);
    assert!(ok);
    let hash = dgst.split_whitespace().next().unwrap();
    assert!(trust.token.starts_with(&format!("K10{hash}::server:")));
    assert_eq!(
        imagegen_firstboot::k3s::token_ca_hash(&trust.token).unwrap(),
        Some(hash.to_string())
    );
    assert_eq!(token::token_problem(&trust.token), None);
    let secret = trust.token.rsplit(':').next().unwrap();
    assert_eq!(secret.len(), 64);
    let (_, other) = state();
    assert_ne!(other.token, trust.token);
}

/// `openssl s_server -HTTP` in `dir`: it answers `GET /cacerts` with the file `dir/cacerts`,
/// which holds the whole reply (see [`reply_file`]).
struct TlsServer(Child, u16);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, cert: &Path, key: &Path) -> TlsServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(oracle::tool("openssl"))
        .current_dir(dir)
        .args(["s_server", "-quiet", "-HTTP", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    TlsServer(child, port)
}

/// Writes `body` as a whole HTTP reply for `s_server -HTTP`. With a Content-Length, as k3s
/// (Go's net/http) sends it: `-WWW` would end the body by closing the connection, which the
/// agent refuses over TLS because a cut reply looks the same.
fn reply_file(path: &Path, body: &[u8]) {
    let mut reply = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend_from_slice(body);
    std::fs::write(path, reply).unwrap();
}

/// A serving certificate for 127.0.0.1 signed by `ca` with openssl, as k3s signs its own with
/// server-ca.key.
fn serving_cert(
    work: &Path,
    ca_crt: &Path,
    ca_key: &Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = work.join("serving.key");
    let csr = work.join("serving.csr");
    let crt = work.join("serving.crt");
    let ext = work.join("ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    assert!(
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &s(&key)
        ])
        .0
    );
    assert!(
        openssl(&[
            "req",
            "-new",
            "-key",
            &s(&key),
            "-subj",
            "/CN=k3s",
            "-out",
            &s(&csr)
        ])
        .0
    );
    let (ok, out) = openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(ca_crt),
        "-CAkey",
        &s(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&crt),
    ]);
    assert!(ok, "{out}");
    (crt, key)
}

#[test]
fn the_agent_accepts_the_minted_token_against_the_served_ca() {
    let (dir, trust) = state();
    let tls = dir.path().join("state/_cluster/tls");
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    // k3s serves server-ca.crt as it is on disk.
    reply_file(
        &www.join("cacerts"),
        &std::fs::read(tls.join("server-ca.crt")).unwrap(),
    );
    let (crt, key) = serving_cert(
        dir.path(),
        &tls.join("server-ca.crt"),
        &tls.join("server-ca.key"),
    );
    let server = serve(&www, &crt, &key);
    let url = format!("https://127.0.0.1:{}", server.1);
    let hash = imagegen_firstboot::k3s::token_ca_hash(&trust.token)
        .unwrap()
        .unwrap();
    let ca = imagegen_firstboot::k3s::fetch_verified_ca(&url, Some(&hash), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the agent refused the minted token: {e}"));
    assert_eq!(ca, trust.file("server-ca.crt"));
    // Another cluster's token is refused: the check is not vacuous.
    let (_, other) = state();
    let other_hash = imagegen_firstboot::k3s::token_ca_hash(&other.token)
        .unwrap()
        .unwrap();
    let e = imagegen_firstboot::k3s::fetch_verified_ca(
        &url,
        Some(&other_hash),
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(e.is_refusal(), "{e}");
}

/// A base64 `name: value` field of a kubeconfig, decoded.
fn kubeconfig_field(text: &str, name: &str) -> Vec<u8> {
    use base64::Engine as _;
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    base64::engine::general_purpose::STANDARD
        .decode(line)
        .unwrap()
}

#[test]
fn kubeconfig_cert_is_cluster_admin_from_the_client_ca() {
    let (dir, trust) = state();
    let tls = dir.path().join("state/_cluster/tls");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let text = kubeconfig::render(&trust, "lab", "https://10.0.0.1:6443", now).unwrap();
    let field = |name: &str| kubeconfig_field(&text, name);
    assert!(text.contains("server: \"https://10.0.0.1:6443\""), "{text}");
    assert_eq!(
        field("certificate-authority-data"),
        trust.file("server-ca.crt")
    );
    let crt = dir.path().join("admin.crt");
    std::fs::write(&crt, field("client-certificate-data")).unwrap();
    let key = dir.path().join("admin.key");
    std::fs::write(&key, field("client-key-data")).unwrap();
    let client_ca = tls.join("client-ca.crt");
    let (ok, out) = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        client_ca.to_str().unwrap(),
        crt.to_str().unwrap(),
    ]);
    assert!(ok && out.contains(": OK"), "{out}");
    // Not by the server CA: the chain check is not vacuous.
    let server_ca = tls.join("server-ca.crt");
    assert!(
        !openssl(&[
            "verify",
            "-CAfile",
            server_ca.to_str().unwrap(),
            crt.to_str().unwrap()
        ])
        .0
    );
    let (_, out) = openssl(&[
        "x509",
        "-in",
        crt.to_str().unwrap(),
        "-noout",
        "-text",
        "-nameopt",
        "RFC2253",
    ]);
    assert!(
        out.contains("Subject: CN=system:admin,O=system:masters"),
        "{out}"
    );
    assert!(
        out.contains("TLS Web Client Authentication") && out.contains("CA:FALSE"),
        "{out}"
    );
    let (_, a) = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    let (_, b) = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-pubkey"]);
    assert_eq!(a, b);
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBIK8P55P+/ZVf44Hspc1HpLTmeNKtVROxzoAauOWZPf me";

fn cfg(k3s: &str, nodes: &str) -> config::ClusterConfig {
    config::parse(
        &format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\n{k3s}{nodes}"
        ),
        Path::new("cluster.toml"),
    )
    .unwrap()
}

const THREE: &str = "[[nodes]]\nname = \"m1\"\nboard = \"x86-64\"\nrole = \"server\"\naddress = \"10.0.0.1\"\n\
[[nodes]]\nname = \"m2\"\nboard = \"x86-64\"\nrole = \"server\"\n\
[[nodes]]\nname = \"pi\"\nboard = \"rpi4\"\nrole = \"agent\"\n";

#[test]
fn the_first_server_starts_the_cluster_the_others_register() {
    let c = cfg("[k3s]\n", THREE);
    let b = Bootstrap::of(&c).unwrap().unwrap();
    assert_eq!(
        b,
        Bootstrap::New {
            first: "m1".into(),
            server_url: "https://10.0.0.1:6443".into()
        }
    );
    let c = cfg("[k3s]\nserver_url = \"https://[fd00::1]:6443\"\n", THREE);
    assert_eq!(
        Bootstrap::of(&c).unwrap().unwrap().server_url(),
        "https://[fd00::1]:6443"
    );
    let c = cfg(
        "[k3s]\nserver_url = \"https://k.lan:6443\"\ntoken_file = \"t\"\n",
        THREE,
    );
    assert_eq!(
        Bootstrap::of(&c).unwrap().unwrap(),
        Bootstrap::Join {
            server_url: "https://k.lan:6443".into()
        }
    );
    assert_eq!(cluster::url_for_host("fd00::2"), "https://[fd00::2]:6443");
}

#[test]
fn servers_get_the_ca_set_agents_the_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let c = cfg("[k3s]\n", THREE);
    let k = c.k3s.as_ref().unwrap();
    let server = cluster::node_files(k, None, config::Role::Server, &state).unwrap();
    let agent = cluster::node_files(k, None, config::Role::Agent, &state).unwrap();
    let trust = Trust::load(&state).unwrap();
    assert_eq!(agent.len(), 1);
    assert_eq!(agent[0].path, cluster::TOKEN_PATH);
    assert_eq!(agent[0].content, trust.token.as_bytes());
    assert!(agent[0].secret && agent[0].mode == 0o600);
    assert_eq!(server[0], agent[0]);
    assert_eq!(server.len(), 1 + trust.tls.len());
    for f in &server[1..] {
        assert!(
            f.path.starts_with("/var/lib/rancher/k3s/server/tls/"),
            "{}",
            f.path
        );
        let private = f.path.ends_with(".key");
        assert_eq!(
            (f.secret, f.mode),
            if private {
                (true, 0o600)
            } else {
                (false, 0o644)
            }
        );
    }
    // Joining: the given token, no CAs, and not made in the state either.
    let tok = dir.path().join("tok");
    std::fs::write(&tok, format!("{}\n", trust.token)).unwrap();
    let other = dir.path().join("other");
    let joined = cluster::node_files(k, Some(&tok), config::Role::Server, &other).unwrap();
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].content, trust.token.as_bytes());
    assert!(!other.exists());
}

/// The node.toml the builder makes for `name` (no identity, a Debian cloud image).
fn node_config(c: &config::ClusterConfig, name: &str) -> imagegen_firstboot::config::NodeConfig {
    let n = c.nodes.iter().find(|n| n.name.get_ref() == name).unwrap();
    let board = imagegen::board::get(n.board.get_ref()).unwrap();
    imagegen::plan::node_config(&imagegen::plan::NodeSpec {
        name,
        role: n.role,
        board: &board,
        vendor: imagegen::distro::Vendor::DebianCloud,
        config: c,
        config_dir: Path::new("."),
        agent: None,
        k3s_binary: None,
        generic: false,
        identity: None,
        epoch: 0,
    })
    .unwrap()
}

/// The k3s config.yaml the agent writes on each kind of node, from the node.toml the builder
/// makes for it.
#[test]
fn rendered_k3s_config_per_role() {
    let c = cfg("[k3s]\n", THREE);
    let render = |name: &str| {
        let node = node_config(&c, name);
        // What the builder writes, the agent reads back.
        let node =
            imagegen_firstboot::config::NodeConfig::from_toml_str(&node.to_toml_string().unwrap())
                .unwrap();
        imagegen_firstboot::k3s::render_config(&node, Some(&("10.0.0.9".into(), None)))
    };
    let head = "# Written by imagegen-firstboot from /etc/imagegen/node.toml.\n";
    assert_eq!(
        render("m1"),
        format!(
            "{head}cluster-init: true\ntls-san:\n  - \"10.0.0.1\"\n\
             token-file: \"/etc/rancher/k3s/token\"\nnode-name: \"m1\"\nnode-ip: \"10.0.0.9\"\n"
        )
    );
    assert_eq!(
        render("m2"),
        format!(
            "{head}server: \"https://10.0.0.1:6443\"\ntls-san:\n  - \"10.0.0.1\"\n\
             token-file: \"/etc/rancher/k3s/token\"\nnode-name: \"m2\"\nnode-ip: \"10.0.0.9\"\n"
        )
    );
    assert_eq!(
        render("pi"),
        format!(
            "{head}server: \"https://10.0.0.1:6443\"\n\
             token-file: \"/etc/rancher/k3s/token\"\nnode-name: \"pi\"\nnode-ip: \"10.0.0.9\"\n"
        )
    );
}

/// `imagegen kubeconfig` end to end: refused (nothing written) before any build made the
/// cluster's state; after it, a 0600 kubeconfig whose server is the registration address and
/// whose CA is the state's server CA, and whose client key matches its certificate (openssl).
#[test]
fn kubeconfig_command_writes_a_private_file_from_the_cluster_state() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\n[k3s]\n{THREE}"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let out = dir.path().join("lab.kubeconfig");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_imagegen"))
            .arg("kubeconfig")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap()
    };
    let refused = run();
    assert!(!refused.status.success());
    assert!(!out.exists(), "a refused kubeconfig left {}", out.display());

    let trust = Trust::load_or_create(&state).unwrap();
    let done = run();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("server: \"https://10.0.0.1:6443\""), "{text}");
    let field = |name: &str| kubeconfig_field(&text, name);
    assert_eq!(
        field("certificate-authority-data"),
        trust.file("server-ca.crt")
    );
    let (crt, key) = (dir.path().join("a.crt"), dir.path().join("a.key"));
    std::fs::write(&crt, field("client-certificate-data")).unwrap();
    std::fs::write(&key, field("client-key-data")).unwrap();
    let (ok, crt_pub) = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-pubkey"]);
    assert!(ok, "{crt_pub}");
    let (ok, key_pub) = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert!(ok, "{key_pub}");
    assert_eq!(crt_pub, key_pub, "the client key is not the certificate's");
}

/// `[k3s] init_server`: how the first server of a running HA cluster is replaced. The named
/// server starts the cluster; the first one listed then registers at it like the others,
/// instead of starting a second cluster on its empty disk. Wrong uses are refused at their line.
#[test]
fn init_server_moves_cluster_init_off_the_first_server() {
    let three = THREE.replace(
        "name = \"m2\"\nboard = \"x86-64\"\nrole = \"server\"\n",
        "name = \"m2\"\nboard = \"x86-64\"\nrole = \"server\"\naddress = \"10.0.0.2\"\n",
    );
    let c = cfg("[k3s]\ninit_server = \"m2\"\n", &three);
    assert_eq!(
        Bootstrap::of(&c).unwrap().unwrap(),
        Bootstrap::New {
            first: "m2".into(),
            server_url: "https://10.0.0.2:6443".into()
        }
    );
    let (m1, m2) = (node_config(&c, "m1"), node_config(&c, "m2"));
    assert!(!m1.node.cluster_init && m2.node.cluster_init);
    assert_eq!(
        m1.k3s.unwrap().server_url.as_deref(),
        Some("https://10.0.0.2:6443")
    );
    assert_eq!(m2.k3s.unwrap().server_url, None);

    for (k3s, why, line) in [
        ("init_server = \"pi\"\n", "is not a server", 9),
        ("init_server = \"m9\"\n", "is no node of this config", 9),
        (
            "server_url = \"https://k.lan:6443\"\ntoken_file = \"t\"\ninit_server = \"m2\"\n",
            "remove one of the two",
            11,
        ),
    ] {
        let text = format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\n\
             \n\n[k3s]\n{k3s}{three}"
        );
        let e = config::parse(&text, Path::new("cluster.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(why) && e.contains(&format!("cluster.toml:{line}")),
            "{k3s}: {e}"
        );
    }
}
