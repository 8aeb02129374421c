//! A `HelmChart` resource (`apiVersion: helm.cattle.io/v1`) for k3s's helm-controller, written
//! as JSON.
//!
//! JSON because it is YAML too, and what k3s's deploy controller reads: it takes files ending
//! in `.json`, `.yaml` or `.yml` (k3s `pkg/deploy/controller.go`, `shouldSkipFile`), splits them
//! with apimachinery's YAML reader and converts each document with `yaml.ToJSON` before
//! decoding (`yamlToObjects`, `toObjects`), which leaves JSON as it is. So serde_json writes it,
//! and no YAML serializer is needed (serde_yaml is unmaintained).
//!
//! The fields are the CRD's (k3s-io/helm-controller `pkg/crds/yaml/generated/
//! helm.cattle.io_helmcharts.yaml`; a test validates every manifest against its schema):
//! `chart`, `repo`, `version`, `targetNamespace`, `createNamespace`, `valuesContent` (the
//! user's values file, as text), `set` (values that take precedence over valuesContent) and
//! `chartContent` (the base64 of a chart .tgz, installed instead of downloading the chart).

use super::Pinned;
use base64::Engine as _;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HelmChart {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Serialize)]
struct Metadata {
    name: &'static str,
    /// helm-controller watches HelmCharts in every namespace; k3s's own (traefik) live in
    /// kube-system, next to the job that installs them.
    namespace: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    chart: &'static str,
    /// Only used when installing from the repository (CRD: ignored with chartContent); left
    /// in so the resource says what the embedded chart is.
    repo: &'static str,
    version: &'static str,
    target_namespace: &'static str,
    create_namespace: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    values_content: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    set: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chart_content: Option<String>,
}

impl HelmChart {
    pub fn new(
        p: &Pinned,
        values: Option<String>,
        chart_tgz: Option<&[u8]>,
        set: &[(&'static str, String)],
    ) -> HelmChart {
        HelmChart {
            api_version: "helm.cattle.io/v1",
            kind: "HelmChart",
            metadata: Metadata {
                name: p.chart,
                namespace: "kube-system",
            },
            spec: Spec {
                chart: p.chart,
                repo: p.repo,
                version: p.version,
                target_namespace: p.namespace,
                create_namespace: p.namespace != "kube-system",
                values_content: values,
                set: set.iter().cloned().collect(),
                chart_content: chart_tgz
                    .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            },
        }
    }

    /// The manifest's bytes: pretty JSON, so an operator can read it on the node.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("strings and maps always serialize");
        v.push(b'\n');
        v
    }
}
