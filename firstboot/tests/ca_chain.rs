//! A `/cacerts` bundle that is a chain (k3s's custom CA layout: server CA, intermediate, root, as
//! `contrib/util/generate-custom-ca-certs.sh` concatenates them into `server-ca.crt`) is pinned in
//! the token by the sha256 of the root's DER (`pkg/clientaccess/token.go`, `hashCA`). The
//! certificates are made with openssl and the expected hash is openssl's (`x509 -outform DER`,
//! `dgst -sha256`) of the certificate k3s would pick; the server is `openssl s_server`. k3s itself
//! is not packaged in Debian and does not run here.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imagegen_firstboot::{ca_hash, k3s};

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let bin = common::require("/usr/bin/openssl", "openssl");
    let out = Command::new(bin)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A directory of CAs made by openssl, each `NAME.key` and `NAME.pem`.
struct Pki(tempfile::TempDir);

const CA_EXT: &str = "basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
";

impl Pki {
    fn new() -> Pki {
        Pki(tempfile::tempdir().unwrap())
    }

    fn path(&self, f: &str) -> PathBuf {
        self.0.path().join(f)
    }

    /// A certificate `name` with the extensions `ext`, self-signed or signed by `issuer`.
    fn cert(&self, name: &str, issuer: Option<&str>, ext: &str) {
        let d = self.0.path();
        std::fs::write(
            d.join(format!("{name}.cnf")),
            format!("[req]\ndistinguished_name = dn\n[dn]\n[ext]\n{ext}"),
        )
        .unwrap();
        let (key, cnf, pem) = (
            format!("{name}.key"),
            format!("{name}.cnf"),
            format!("{name}.pem"),
        );
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ],
        );
        let subj = format!("/CN=k3s-{name}");
        match issuer {
            None => {
                openssl(
                    d,
                    &[
                        "req",
                        "-x509",
                        "-new",
                        "-key",
                        &key,
                        "-subj",
                        &subj,
                        "-config",
                        &cnf,
                        "-extensions",
                        "ext",
                        "-days",
                        "3650",
                        "-out",
                        &pem,
                    ],
                );
            }
            Some(issuer) => {
                let csr = format!("{name}.csr");
                openssl(
                    d,
                    &[
                        "req", "-new", "-key", &key, "-subj", &subj, "-config", &cnf, "-out", &csr,
                    ],
                );
                openssl(
                    d,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &csr,
                        "-CA",
                        &format!("{issuer}.pem"),
                        "-CAkey",
                        &format!("{issuer}.key"),
                        "-CAcreateserial",
                        "-days",
                        "3650",
                        "-extfile",
                        &cnf,
                        "-extensions",
                        "ext",
                        "-out",
                        &pem,
                    ],
                );
            }
        }
    }

    fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("{name}.pem"))).unwrap()
    }

    /// The bundle of these certificates, in this order, as one file.
    fn bundle(&self, names: &[&str]) -> Vec<u8> {
        names.iter().flat_map(|n| self.pem(n)).collect()
    }

    /// The sha256 of the DER of certificate `name`, by openssl: the certificate's fingerprint.
    fn der_sha256(&self, name: &str) -> String {
        let der = format!("{name}.der");
        openssl(
            self.0.path(),
            &[
                "x509",
                "-in",
                &format!("{name}.pem"),
                "-outform",
                "DER",
                "-out",
                &der,
            ],
        );
        dgst(self.0.path(), &der)
    }

    /// The sha256 of a file's bytes, by openssl.
    fn bytes_sha256(&self, bytes: &[u8]) -> String {
        std::fs::write(self.path("bundle.bin"), bytes).unwrap();
        dgst(self.0.path(), "bundle.bin")
    }
}

fn dgst(dir: &Path, file: &str) -> String {
    let out = openssl(dir, &["dgst", "-sha256", "-r", file]);
    String::from_utf8(out)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The custom-CA layout: root -> intermediate -> server-ca.
fn custom_ca() -> Pki {
    let pki = Pki::new();
    pki.cert("root", None, CA_EXT);
    pki.cert("intermediate", Some("root"), CA_EXT);
    pki.cert("server-ca", Some("intermediate"), CA_EXT);
    pki
}

#[test]
fn a_chain_hashes_as_its_root_der() {
    let pki = custom_ca();
    let bundle = pki.bundle(&["server-ca", "intermediate", "root"]);
    let root = pki.der_sha256("root");
    assert_eq!(ca_hash::of_bundle(&bundle), Some(root.clone()));
    assert_ne!(pki.bytes_sha256(&bundle), root);
    // The order of the certificates after the first does not matter to k3s's pools.
    let reordered = pki.bundle(&["server-ca", "root", "intermediate"]);
    assert_eq!(ca_hash::of_bundle(&reordered), Some(root));
}

#[test]
fn one_certificate_hashes_as_its_bytes() {
    let pki = custom_ca();
    for name in ["root", "server-ca"] {
        let pem = pki.pem(name);
        assert_eq!(ca_hash::of_bundle(&pem), Some(pki.bytes_sha256(&pem)));
    }
}

/// Where Go's `Verify` finds no chain, `hashCA` falls back to the bytes of the whole bundle.
#[test]
fn a_bundle_without_a_valid_chain_hashes_as_its_bytes() {
    let bytes_hash = |pki: &Pki, bundle: &[u8]| {
        assert_eq!(
            ca_hash::of_bundle(bundle),
            Some(pki.bytes_sha256(bundle)),
            "{}",
            String::from_utf8_lossy(bundle)
        );
    };
    // The intermediate is missing.
    let pki = custom_ca();
    bytes_hash(&pki, &pki.bundle(&["server-ca", "root"]));
    // A root of the same name but another key: the signature does not verify.
    let other = Pki::new();
    other.cert("root", None, CA_EXT);
    let mut bundle = pki.bundle(&["server-ca", "intermediate"]);
    bundle.extend(other.pem("root"));
    bytes_hash(&pki, &bundle);
    // The root allows no intermediate below it (pathlen:0).
    let pki = Pki::new();
    pki.cert(
        "root",
        None,
        &CA_EXT.replace("CA:TRUE", "CA:TRUE, pathlen:0"),
    );
    pki.cert("intermediate", Some("root"), CA_EXT);
    pki.cert("server-ca", Some("intermediate"), CA_EXT);
    bytes_hash(&pki, &pki.bundle(&["server-ca", "intermediate", "root"]));
    // The intermediate may not sign certificates (no keyCertSign).
    let pki = Pki::new();
    pki.cert("root", None, CA_EXT);
    pki.cert(
        "intermediate",
        Some("root"),
        &CA_EXT.replace(", keyCertSign", ""),
    );
    pki.cert("server-ca", Some("intermediate"), CA_EXT);
    bytes_hash(&pki, &pki.bundle(&["server-ca", "intermediate", "root"]));
    // The intermediate is for client authentication only: Verify asks for server auth.
    let pki = Pki::new();
    pki.cert("root", None, CA_EXT);
    pki.cert(
        "intermediate",
        Some("root"),
        &format!("{CA_EXT}extendedKeyUsage = clientAuth\n"),
    );
    pki.cert("server-ca", Some("intermediate"), CA_EXT);
    bytes_hash(&pki, &pki.bundle(&["server-ca", "intermediate", "root"]));
    // ... while server auth in the list keeps the chain.
    let pki = Pki::new();
    pki.cert("root", None, CA_EXT);
    pki.cert(
        "intermediate",
        Some("root"),
        &format!("{CA_EXT}extendedKeyUsage = clientAuth, serverAuth\n"),
    );
    pki.cert("server-ca", Some("intermediate"), CA_EXT);
    assert_eq!(
        ca_hash::of_bundle(&pki.bundle(&["server-ca", "intermediate", "root"])),
        Some(pki.der_sha256("root"))
    );
}

/// `openssl s_server -HTTP` in `dir`: it answers `GET /cacerts` with the file `dir/cacerts`,
/// which holds the whole reply. Framed with a Content-Length as k3s (Go's net/http) sends it:
/// `-WWW` would end the body by closing the connection, which the agent refuses over TLS
/// because a cut reply looks the same.
struct TlsServer(Child, u16);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `bundle` at `/cacerts` with a serving certificate for 127.0.0.1 signed by
/// `server-ca`, as k3s signs its own.
fn serve(pki: &Pki, bundle: &[u8]) -> TlsServer {
    let d = pki.0.path();
    let www = d.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut reply = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        bundle.len()
    )
    .into_bytes();
    reply.extend_from_slice(bundle);
    std::fs::write(www.join("cacerts"), reply).unwrap();
    pki.cert(
        "serving",
        Some("server-ca"),
        "basicConstraints = CA:FALSE\nsubjectAltName = IP:127.0.0.1\n",
    );
    let port = common::free_port();
    let child = Command::new(common::require("/usr/bin/openssl", "openssl"))
        .current_dir(&www)
        .args(["s_server", "-quiet", "-HTTP", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(d.join("serving.pem"))
        .arg("-key")
        .arg(d.join("serving.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(common::eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    TlsServer(child, port)
}

#[test]
fn the_agent_joins_a_chained_ca_by_its_root_hash_and_refuses_the_bytes_hash() {
    let pki = custom_ca();
    let bundle = pki.bundle(&["server-ca", "intermediate", "root"]);
    let server = serve(&pki, &bundle);
    let url = format!("https://127.0.0.1:{}", server.1);
    let token = |hash: &str| format!("K10{hash}::server:secret");

    let root = pki.der_sha256("root");
    let pinned = k3s::token_ca_hash(&token(&root)).unwrap().unwrap();
    let served = k3s::fetch_verified_ca(&url, Some(&pinned), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the agent refused what k3s accepts: {e}"));
    assert_eq!(served, bundle);

    // k3s compares the token with the root's hash, so a token made from the bytes of this
    // bundle matches nothing k3s computes: refused, before anything is sent.
    let bytes = pki.bytes_sha256(&bundle);
    let pinned = k3s::token_ca_hash(&token(&bytes)).unwrap().unwrap();
    let e = k3s::fetch_verified_ca(&url, Some(&pinned), Duration::from_secs(10)).unwrap_err();
    assert!(e.is_refusal(), "{e}");
    assert!(e.to_string().contains(&root), "{e}");
}
