//! `[addons]`: the HelmChart manifests the first server gets, validated against the HelmChart
//! CRD's OpenAPI schema from k3s's helm-controller source (`tests/fixtures/`), as the API server
//! would validate them, and the etcd snapshot settings the servers' node.toml carries.

mod common;

use common::oracle;
use imagegen::addons;
use imagegen::config;
use serde_json::Value;
use std::path::Path;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKh3zm4jTyWkG2JCU6t4CiTqB2OtWqy8iOiOPc6FnUOu ops@laptop";

/// The CRD's schema for `HelmChart` v1.
fn helmchart_schema() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/helm.cattle.io_helmcharts.yaml"),
    )
    .unwrap();
    let crd: Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(crd["spec"]["names"]["kind"], "HelmChart");
    let v1 = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1")
        .unwrap();
    v1["schema"]["openAPIV3Schema"].clone()
}

/// Fields the schema does not declare, which the API server would prune silently (structural
/// schemas: an object without `x-kubernetes-preserve-unknown-fields` or `additionalProperties`
/// keeps only its declared properties). JSON Schema lets them pass, so a misspelt field would
/// validate and do nothing.
fn pruned(value: &Value, schema: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if schema["x-kubernetes-preserve-unknown-fields"] == true {
                return;
            }
            let props = schema["properties"].as_object();
            let extra = &schema["additionalProperties"];
            for (k, v) in map {
                let path = format!("{at}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(s) => pruned(v, s, &path, out),
                    None if extra.is_object() => pruned(v, extra, &path, out),
                    None if extra == &Value::Bool(true) => {}
                    // `metadata` is `type: object` alone: the API server's own ObjectMeta.
                    None if props.is_none() && at == ".metadata" => {}
                    None => out.push(path),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pruned(v, &schema["items"], &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn validate(manifest: &Value) -> Result<(), String> {
    let schema = helmchart_schema();
    let validator = jsonschema::validator_for(&schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(manifest)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    let mut unknown = Vec::new();
    pruned(manifest, &schema, "", &mut unknown);
    if errors.is_empty() && unknown.is_empty() {
        Ok(())
    } else {
        Err(format!("invalid: {errors:?}; pruned: {unknown:?}"))
    }
}

/// A cluster.toml in `dir` with every add-on, a values file and an airgap chart for monitoring.
fn cluster(dir: &Path) -> config::Loaded {
    std::fs::write(
        dir.join("monitoring.yaml"),
        "grafana:\n  adminPassword: \"s3cret\"\n",
    )
    .unwrap();
    // A chart archive as `helm pull` leaves it: a gzipped tar of the chart's directory.
    let chart = dir.join("kube-prometheus-stack");
    std::fs::create_dir(&chart).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: kube-prometheus-stack\nversion: 88.5.3\n",
    )
    .unwrap();
    oracle::run(
        "tar",
        &[
            "-C",
            dir.to_str().unwrap(),
            "-czf",
            dir.join("kps.tgz").to_str().unwrap(),
            "kube-prometheus-stack",
        ],
    );
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\n\
             [k3s]\nserver_url = \"https://10.0.0.1:6443\"\n\
             [backup]\ntarget = \"ssh://backup@nas.lan/volume1/backups\"\n\
             [addons.monitoring]\nvalues = \"monitoring.yaml\"\nchart = \"kps.tgz\"\n\
             [addons.dashboard]\n\
             [addons.nfs_storage]\npath = \"/volume1/k3s\"\n\
             [addons.etcd_snapshots]\nschedule = \"0 */4 * * *\"\nretention = 9\n\
             [[nodes]]\nname = \"master\"\nboard = \"x86-64\"\nrole = \"server\"\n\
             [[nodes]]\nname = \"s2\"\nboard = \"x86-64\"\nrole = \"server\"\n\
             [[nodes]]\nname = \"pi\"\nboard = \"rpi4\"\nrole = \"agent\"\n"
        ),
    )
    .unwrap();
    config::load(&path).unwrap()
}

#[test]
fn every_manifest_is_a_valid_helmchart_on_the_first_server_only() {
    let dir = tempfile::tempdir().unwrap();
    let l = cluster(dir.path());
    let ms = addons::manifests(&l.config, "master", &l.dir).unwrap();
    let paths: Vec<&str> = ms.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/var/lib/rancher/k3s/server/manifests/imagegen-monitoring.json",
            "/var/lib/rancher/k3s/server/manifests/imagegen-dashboard.json",
            "/var/lib/rancher/k3s/server/manifests/imagegen-nfs-storage.json",
        ]
    );
    for m in &ms {
        let v: Value = serde_json::from_slice(&m.content).unwrap();
        validate(&v).unwrap_or_else(|e| panic!("{}: {e}", m.path));
        assert_eq!(v["apiVersion"], "helm.cattle.io/v1");
        assert_eq!(v["kind"], "HelmChart");
        assert_eq!(v["metadata"]["namespace"], "kube-system");
        assert!(v["spec"]["version"].as_str().unwrap().contains('.'));
        assert!(v["spec"]["repo"].as_str().unwrap().starts_with("https://"));
    }
    let monitoring: Value = serde_json::from_slice(&ms[0].content).unwrap();
    assert!(ms[0].secret, "user values may hold passwords");
    assert!(!ms[1].secret);
    assert_eq!(
        monitoring["spec"]["valuesContent"],
        "grafana:\n  adminPassword: \"s3cret\"\n"
    );
    use base64::Engine as _;
    let embedded = base64::engine::general_purpose::STANDARD
        .decode(monitoring["spec"]["chartContent"].as_str().unwrap())
        .unwrap();
    assert_eq!(embedded, std::fs::read(dir.path().join("kps.tgz")).unwrap());
    let nfs: Value = serde_json::from_slice(&ms[2].content).unwrap();
    assert_eq!(nfs["spec"]["set"]["nfs.server"], "nas.lan");
    assert_eq!(nfs["spec"]["set"]["nfs.path"], "/volume1/k3s");

    for other in ["s2", "pi"] {
        assert!(
            addons::manifests(&l.config, other, &l.dir)
                .unwrap()
                .is_empty()
        );
    }
}

/// The schema check is not vacuous: a wrong type and a misspelt field are both caught.
#[test]
fn the_schema_check_refuses_what_the_api_server_would() {
    let dir = tempfile::tempdir().unwrap();
    let l = cluster(dir.path());
    let ms = addons::manifests(&l.config, "master", &l.dir).unwrap();
    let good: Value = serde_json::from_slice(&ms[1].content).unwrap();
    let mut wrong_type = good.clone();
    wrong_type["spec"]["createNamespace"] = Value::from("yes");
    assert!(validate(&wrong_type).is_err());
    let mut misspelt = good.clone();
    misspelt["spec"]["valuescontent"] = Value::from("a: 1\n");
    let e = validate(&misspelt).unwrap_err();
    assert!(e.contains(".spec.valuescontent"), "{e}");
}

/// Servers snapshot etcd on the add-on's schedule and back the snapshots up; agents do not.
#[test]
fn etcd_snapshots_on_servers_in_the_backups() {
    let dir = tempfile::tempdir().unwrap();
    let l = cluster(dir.path());
    for n in &l.config.nodes {
        let board = imagegen::board::get(n.board.get_ref()).unwrap();
        let spec = imagegen::plan::NodeSpec {
            name: n.name.get_ref(),
            role: n.role,
            board: &board,
            vendor: imagegen::distro::Vendor::DebianCloud,
            config: &l.config,
            config_dir: &l.dir,
            agent: None,
            k3s_binary: None,
            generic: false,
            identity: None,
            epoch: 0,
        };
        let node = imagegen::plan::node_config(&spec).unwrap();
        let node =
            imagegen_firstboot::config::NodeConfig::from_toml_str(&node.to_toml_string().unwrap())
                .unwrap();
        let k = node.k3s.unwrap();
        let paths = node.backup.unwrap().paths;
        let has = paths.contains(&addons::SNAPSHOT_DIR.into());
        match n.role {
            config::Role::Server => {
                assert_eq!(k.etcd_snapshot_schedule, "0 */4 * * *");
                assert_eq!(k.etcd_snapshot_retention, 9);
                assert!(has, "{paths:?}");
            }
            config::Role::Agent => assert!(!has, "{paths:?}"),
        }
    }
}
