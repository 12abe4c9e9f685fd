//! `dashboards/`'s compose stack read as data: the compose file, the
//! collector's config, Prometheus' config and Grafana's provisioning must
//! agree on service names, ports, mounted paths and data-source uids.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::grafana::DataSources;

/// Where the stack's services listen inside their containers.
const OTLP_HTTP_PORT: u16 = 4318;
const JAEGER_OTLP_GRPC_PORT: u16 = 4317;
const JAEGER_UI_PORT: u16 = 16686;
const PROMETHEUS_PORT: u16 = 9090;
const GRAFANA_PORT: u16 = 3000;

/// The stack's files, parsed (YAML read as JSON values).
#[derive(Clone)]
pub struct Stack {
    pub dir: PathBuf,
    pub compose: Value,
    pub otelcol: Value,
    pub prometheus: Value,
    pub datasources: Value,
    pub providers: Value,
}

fn yaml(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| format!("{} is not YAML: {e}", path.display()))
}

impl Stack {
    pub fn load(dir: &Path) -> Result<Stack, String> {
        Ok(Stack {
            dir: dir.to_path_buf(),
            compose: yaml(&dir.join("compose.yaml"))?,
            otelcol: yaml(&dir.join("otelcol.yaml"))?,
            prometheus: yaml(&dir.join("prometheus.yml"))?,
            datasources: yaml(&dir.join("grafana/provisioning/datasources/ferry.yaml"))?,
            providers: yaml(&dir.join("grafana/provisioning/dashboards/ferry.yaml"))?,
        })
    }

    /// uid → type of every provisioned data source.
    pub fn data_sources(&self) -> DataSources {
        self.datasources["datasources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some((
                    d["uid"].as_str()?.to_string(),
                    d["type"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    fn service(&self, name: &str) -> &Value {
        &self.compose["services"][name]
    }

    /// Host path (relative to the stack) → container path of a service's
    /// bind mounts.
    fn mounts(&self, service: &str) -> Vec<(String, String)> {
        self.service(service)["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let mut parts = v.as_str()?.split(':');
                let host = parts.next()?;
                let target = parts.next()?;
                host.starts_with("./")
                    .then(|| (host.to_string(), target.to_string()))
            })
            .collect()
    }

    /// Container ports a service publishes.
    fn published(&self, service: &str) -> BTreeSet<u16> {
        self.service(service)["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str()?.rsplit(':').next()?.parse().ok())
            .collect()
    }

    /// Where a host file of the stack is mounted in `service`.
    fn mounted_at(&self, service: &str, host: &str) -> Option<String> {
        self.mounts(service)
            .into_iter()
            .find(|(h, _)| h == host)
            .map(|(_, t)| t)
    }

    /// A command-line flag's value (`--flag=value`) of a service.
    fn flag(&self, service: &str, flag: &str) -> Option<String> {
        let prefix = format!("{flag}=");
        self.service(service)["command"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
    }

    /// Everything that does not fit together.
    pub fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        let services: BTreeSet<&str> = self.compose["services"]
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for s in ["otel-collector", "jaeger", "prometheus", "grafana"] {
            if !services.contains(s) {
                p.push(format!("compose.yaml has no {s} service"));
                continue;
            }
            let image = self.service(s)["image"].as_str().unwrap_or("");
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            if tag.is_empty() || tag == "latest" {
                p.push(format!(
                    "compose service {s}: image {image:?} has no pinned version"
                ));
            }
        }
        for s in &services {
            for (host, _) in self.mounts(s) {
                if !self.dir.join(&host).exists() {
                    p.push(format!(
                        "compose service {s} mounts {host}, which does not exist"
                    ));
                }
            }
        }
        self.check_collector(&services, &mut p);
        self.check_prometheus(&services, &mut p);
        self.check_grafana(&services, &mut p);
        p
    }

    fn check_collector(&self, services: &BTreeSet<&str>, p: &mut Vec<String>) {
        let svc = "otel-collector";
        match (
            self.flag(svc, "--config"),
            self.mounted_at(svc, "./otelcol.yaml"),
        ) {
            (Some(c), Some(m)) if c == m => {}
            (c, m) => p.push(format!(
                "the collector reads {c:?} but otelcol.yaml is mounted at {m:?}"
            )),
        }
        let cfg = &self.otelcol;
        let http = cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
            .as_str()
            .unwrap_or("");
        if port_of(http) != Some(OTLP_HTTP_PORT) {
            p.push(format!(
                "the collector's OTLP/HTTP receiver listens on {http:?}, not port {OTLP_HTTP_PORT} (where ferry sends)"
            ));
        }
        if !self.published(svc).contains(&OTLP_HTTP_PORT) {
            p.push(format!(
                "compose does not publish the collector's port {OTLP_HTTP_PORT}"
            ));
        }
        let pipelines = &cfg["service"]["pipelines"];
        for (pipeline, def) in pipelines.as_object().into_iter().flatten() {
            for (section, key) in [
                ("receivers", "receivers"),
                ("processors", "processors"),
                ("exporters", "exporters"),
            ] {
                for c in def[key].as_array().into_iter().flatten() {
                    let c = c.as_str().unwrap_or("");
                    if cfg[section].get(c).is_none() {
                        p.push(format!(
                            "collector pipeline {pipeline} uses undefined {section} {c}"
                        ));
                    }
                }
            }
        }
        let uses = |pipeline: &str, key: &str, prefix: &str| -> Option<String> {
            pipelines[pipeline][key]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .find(|c| *c == prefix || c.starts_with(&format!("{prefix}/")))
                .map(str::to_string)
        };
        match uses("traces", "exporters", "otlp") {
            Some(e) => {
                let endpoint = cfg["exporters"][&e]["endpoint"].as_str().unwrap_or("");
                let host = endpoint.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
                if host != "jaeger" || !services.contains(host) {
                    p.push(format!("traces go to {endpoint:?}, not the jaeger service"));
                }
                if port_of(endpoint) != Some(JAEGER_OTLP_GRPC_PORT) {
                    p.push(format!(
                        "traces go to {endpoint:?}, not Jaeger's OTLP/gRPC port {JAEGER_OTLP_GRPC_PORT}"
                    ));
                }
            }
            None => p.push("the traces pipeline exports to no otlp exporter (Jaeger)".into()),
        }
        if uses("metrics", "processors", "deltatocumulative").is_none() {
            p.push(
                "the metrics pipeline lacks deltatocumulative: ferry's metrics are DELTA and the Prometheus exporter needs cumulative series"
                    .into(),
            );
        }
        match uses("metrics", "exporters", "prometheus") {
            Some(e) => {
                let exporter = &cfg["exporters"][&e];
                let endpoint = exporter["endpoint"].as_str().unwrap_or("");
                let port = port_of(endpoint);
                let targets: Vec<&str> = self.prometheus["scrape_configs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|s| s["static_configs"].as_array().into_iter().flatten())
                    .flat_map(|s| s["targets"].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect();
                let scraped = targets.iter().any(|t| {
                    t.rsplit_once(':')
                        .is_some_and(|(h, pt)| h == svc && pt.parse().ok() == port)
                });
                if !scraped {
                    p.push(format!(
                        "Prometheus scrapes {targets:?}, not the collector's exporter at {svc}:{port:?}"
                    ));
                }
                if exporter["resource_to_telemetry_conversion"]["enabled"] != Value::Bool(true) {
                    p.push(
                        "the Prometheus exporter drops resource attributes: host_name (which the dashboards filter on) would be missing"
                            .into(),
                    );
                }
            }
            None => p.push("the metrics pipeline exports to no prometheus exporter".into()),
        }
    }

    fn check_prometheus(&self, _services: &BTreeSet<&str>, p: &mut Vec<String>) {
        let svc = "prometheus";
        match (
            self.flag(svc, "--config.file"),
            self.mounted_at(svc, "./prometheus.yml"),
        ) {
            (Some(c), Some(m)) if c == m => {}
            (c, m) => p.push(format!(
                "Prometheus reads {c:?} but prometheus.yml is mounted at {m:?}"
            )),
        }
    }

    fn check_grafana(&self, services: &BTreeSet<&str>, p: &mut Vec<String>) {
        let svc = "grafana";
        if !self.published(svc).contains(&GRAFANA_PORT) {
            p.push(format!(
                "compose does not publish Grafana's port {GRAFANA_PORT}"
            ));
        }
        if self.mounted_at(svc, "./grafana/provisioning").as_deref()
            != Some("/etc/grafana/provisioning")
        {
            p.push("grafana/provisioning is not mounted at /etc/grafana/provisioning".into());
        }
        let dashboards_at = self.mounted_at(svc, "./grafana/dashboards");
        let providers: Vec<&Value> = self.providers["providers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        if providers.is_empty() {
            p.push("the dashboards provisioning has no provider".into());
        }
        for prov in providers {
            let path = prov["options"]["path"].as_str();
            if prov["type"] != "file" || path.is_none() || path.map(str::to_string) != dashboards_at
            {
                p.push(format!(
                    "dashboard provider {} reads {path:?}; grafana/dashboards is mounted at {dashboards_at:?}",
                    prov["name"]
                ));
            }
        }
        if let (Some(home), Some(at)) = (
            self.service(svc)["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].as_str(),
            &dashboards_at,
        ) {
            let file = home.strip_prefix(at.as_str()).map(|rest| {
                self.dir
                    .join("grafana/dashboards")
                    .join(rest.trim_start_matches('/'))
            });
            if !file.is_some_and(|f| f.is_file()) {
                p.push(format!(
                    "the home dashboard {home} is not one of grafana/dashboards"
                ));
            }
        }
        let mut uids = BTreeSet::new();
        for d in self.datasources["datasources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let uid = d["uid"].as_str().unwrap_or("");
            if uid.is_empty() || !uids.insert(uid) {
                p.push(format!(
                    "data source {} has an empty or repeated uid",
                    d["name"]
                ));
            }
            let url = d["url"].as_str().unwrap_or("");
            let host = url
                .strip_prefix("http://")
                .and_then(|r| r.split([':', '/']).next())
                .unwrap_or("");
            let (want_service, want_port) = match d["type"].as_str() {
                Some("prometheus") => ("prometheus", PROMETHEUS_PORT),
                Some("jaeger") => ("jaeger", JAEGER_UI_PORT),
                other => {
                    p.push(format!("data source {uid} has unexpected type {other:?}"));
                    continue;
                }
            };
            if host != want_service || !services.contains(host) || port_of(url) != Some(want_port) {
                p.push(format!(
                    "data source {uid} points at {url:?}, not the {want_service} service's port {want_port}"
                ));
            }
            if !self.published(want_service).contains(&want_port) {
                p.push(format!(
                    "compose does not publish {want_service}'s port {want_port}"
                ));
            }
        }
    }
}

/// The port of `host:port` or `scheme://host:port/path`.
fn port_of(s: &str) -> Option<u16> {
    let rest = s.split("://").last()?;
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}
