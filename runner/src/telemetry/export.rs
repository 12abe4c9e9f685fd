//! OTLP/HTTP protobuf export of what the run's files hold.
//!
//! Spans and metrics are always written to the run directory first
//! (`trace.jsonl`, `metrics.jsonl`); export is a separate step that ships
//! the lines after the run's **export cursor** (`export.json`: one byte
//! offset per file) and moves the cursor only after the collector said
//! 2xx. So a span is on disk before anything touches the network, a batch
//! that failed is re-sent by the next process of the run (or by `ferry
//! ship` through [`super::ship_all`]) and a batch that was accepted is not
//! sent again (at least once: a crash between the collector's 2xx and the
//! cursor's write re-sends that one batch).
//!
//! Which process exports: the worker just before the reboot (bounded by
//! [`FLUSH_BEFORE_REBOOT`]) and whoever ends the run ([`FLUSH_AT_END`]).
//! The foreground `ferry upgrade` never exports once a worker exists: it
//! is checkpointed with the session and must hold no connection.
//!
//! Every wait is bounded by one deadline for the whole export: DNS lookup,
//! connect, write, read, retries and backoff all fit in it, so a dead or a
//! hanging collector costs at most the budget, never more.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::proto;
use crate::state::RunDir;

/// Total time the worker may spend exporting before the kexec.
pub const FLUSH_BEFORE_REBOOT: Duration = Duration::from_secs(2);
/// Total time the process that ends a run may spend exporting.
pub const FLUSH_AT_END: Duration = Duration::from_secs(10);

/// The job's variables a run keeps in its state (none is a secret: the
/// headers go through `secrets`).
pub const SAVED_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "TRACEPARENT",
    "TRACESTATE",
];

/// The headers variables (secrets: kept in the run's 0600 secrets file).
pub const HEADER_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
];

/// The values of [`SAVED_VARS`] set in `env`.
pub fn capture_env(env: &dyn Fn(&str) -> Option<String>) -> BTreeMap<String, String> {
    SAVED_VARS
        .iter()
        .filter_map(|k| env(k).filter(|v| !v.is_empty()).map(|v| (k.to_string(), v)))
        .collect()
}

/// Why a signal is not exported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{var}={value:?} is not an http:// URL (ferry speaks OTLP/HTTP without TLS; send to a local collector, which can forward over https)"
    )]
    Endpoint { var: String, value: String },
    #[error(
        "{var}={value:?}: ferry exports OTLP/HTTP protobuf only (use the collector's 4318 endpoint)"
    )]
    Protocol { var: String, value: String },
}

/// An `http://host:port/path` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Option<Endpoint> {
        let rest = url.trim().strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => 80,
                None => return None,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return None;
        }
        Some(Endpoint {
            host,
            port,
            path: path.to_string(),
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Where and how one signal is exported.
#[derive(Debug, Clone)]
pub struct SignalConfig {
    pub endpoint: Endpoint,
    pub headers: Vec<(String, String)>,
    /// Per request (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    pub timeout: Duration,
}

/// The export settings of a run, from the `OTEL_*` variables.
#[derive(Debug, Clone, Default)]
pub struct ExportConfig {
    pub traces: Option<SignalConfig>,
    pub metrics: Option<SignalConfig>,
    /// Settings that were given but cannot be used (reported, not fatal).
    pub problems: Vec<ConfigError>,
}

/// `k1=v1,k2=v2`, values percent-decoded (the OTLP exporter spec).
pub fn parse_headers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = percent_decode(k.trim());
            let v = percent_decode(v.trim());
            let valid = !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                && v.bytes()
                    .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80);
            valid.then_some((k, v))
        })
        .collect()
}

/// `%XX` decoding; malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn truthy(v: Option<String>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

impl ExportConfig {
    /// Resolve the settings from `env` (the process's variables completed
    /// by what the run saved). No endpoint variable means no export: the
    /// spans are on disk either way, and a CI machine without a collector
    /// should not pay for connection attempts to `localhost:4318`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> ExportConfig {
        let get = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut cfg = ExportConfig::default();
        if truthy(get("OTEL_SDK_DISABLED")) {
            return cfg;
        }
        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        let mut signal = |sig: &str, path: &str| -> Option<SignalConfig> {
            let upper = sig.to_ascii_uppercase();
            if get(&format!("OTEL_{upper}_EXPORTER")).is_some_and(|v| v == "none") {
                return None;
            }
            let specific = format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT");
            let (var, url) = match (get(&specific), &base) {
                (Some(u), _) => (specific, u),
                (None, Some(b)) => (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
                    format!("{}/{path}", b.trim_end_matches('/')),
                ),
                (None, None) => return None,
            };
            for pvar in [
                format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL"),
                "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
            ] {
                if let Some(p) = get(&pvar) {
                    if p != "http/protobuf" && p != "http/json" {
                        cfg.problems.push(ConfigError::Protocol {
                            var: pvar,
                            value: p,
                        });
                        return None;
                    }
                    break;
                }
            }
            let Some(endpoint) = Endpoint::parse(&url) else {
                cfg.problems.push(ConfigError::Endpoint { var, value: url });
                return None;
            };
            let mut headers = get("OTEL_EXPORTER_OTLP_HEADERS")
                .map(|h| parse_headers(&h))
                .unwrap_or_default();
            if let Some(h) = get(&format!("OTEL_EXPORTER_OTLP_{upper}_HEADERS")) {
                for (k, v) in parse_headers(&h) {
                    headers.retain(|(hk, _)| !hk.eq_ignore_ascii_case(&k));
                    headers.push((k, v));
                }
            }
            let timeout = get(&format!("OTEL_EXPORTER_OTLP_{upper}_TIMEOUT"))
                .or_else(|| get("OTEL_EXPORTER_OTLP_TIMEOUT"))
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(10));
            Some(SignalConfig {
                endpoint,
                headers,
                timeout,
            })
        };
        let traces = signal("traces", "v1/traces");
        let metrics = signal("metrics", "v1/metrics");
        cfg.traces = traces;
        cfg.metrics = metrics;
        cfg
    }

    /// The settings for a run's later processes: this process's
    /// environment first, then what the job's environment was (state and
    /// secrets file).
    pub fn for_run(run: &RunDir, saved: &BTreeMap<String, String>) -> ExportConfig {
        let secrets = crate::secrets::Secrets::for_run(run);
        ExportConfig::from_env(&|k| {
            if HEADER_VARS.contains(&k) {
                return secrets.get(k).map(str::to_string);
            }
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(|| saved.get(k).cloned())
        })
    }

    pub fn enabled(&self) -> bool {
        self.traces.is_some() || self.metrics.is_some()
    }
}

/// A failed POST.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer from the collector in time")]
    Timeout,
    #[error("connection to the collector failed: {0}")]
    Io(std::io::Error),
    #[error("the collector's answer is not HTTP: {0:?}")]
    BadResponse(String),
}

/// The seam between the export logic and the network.
pub trait Transport {
    /// POST `body` and return the HTTP status; give up at `deadline`.
    fn post(
        &self,
        endpoint: &Endpoint,
        headers: &[(String, String)],
        body: &[u8],
        deadline: Instant,
    ) -> Result<u16, TransportError>;
}

/// HTTP/1.1 over a plain TCP connection, one connection per request (so no
/// connection outlives the call).
pub struct HttpTransport;

fn remaining(deadline: Instant) -> Result<Duration, TransportError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(1) {
        Err(TransportError::Timeout)
    } else {
        Ok(left)
    }
}

/// `getaddrinfo` has no timeout of its own: run it on a thread and stop
/// waiting at the deadline.
fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, TransportError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = format!("{host}:{port}");
    let lookup = name.clone();
    std::thread::spawn(move || {
        let _ = tx.send(lookup.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
    });
    match rx.recv_timeout(remaining(deadline)?) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(_) => Err(TransportError::Resolve(name)),
        Err(_) => Err(TransportError::Timeout),
    }
}

fn io_err(e: std::io::Error) -> TransportError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => TransportError::Timeout,
        _ => TransportError::Io(e),
    }
}

impl Transport for HttpTransport {
    fn post(
        &self,
        endpoint: &Endpoint,
        headers: &[(String, String)],
        body: &[u8],
        deadline: Instant,
    ) -> Result<u16, TransportError> {
        let addrs = resolve(&endpoint.host, endpoint.port, deadline)?;
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some((addr, e)),
            }
        }
        let mut stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some((addr, e))) if e.kind() == std::io::ErrorKind::TimedOut => {
                let _ = addr;
                return Err(TransportError::Timeout);
            }
            (None, Some((addr, source))) => {
                return Err(TransportError::Connect {
                    addr: addr.to_string(),
                    source,
                });
            }
            (None, None) => return Err(TransportError::Resolve(endpoint.host.clone())),
        };
        let _ = stream.set_nodelay(true);
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferry/{}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n",
            endpoint.path,
            endpoint.host_header(),
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let mut written = 0;
        while written < request.len() {
            stream
                .set_write_timeout(Some(remaining(deadline)?))
                .map_err(io_err)?;
            match stream.write(&request[written..]) {
                Ok(0) => return Err(TransportError::Io(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        // Only the status line matters; the body (a partial-success
        // message at most) is not read.
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
            stream
                .set_read_timeout(Some(remaining(deadline)?))
                .map_err(io_err)?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        let line = String::from_utf8_lossy(&answer);
        let status_line = line.lines().next().unwrap_or("");
        let mut parts = status_line.split_whitespace();
        match (
            parts.next(),
            parts.next().and_then(|c| c.parse::<u16>().ok()),
        ) {
            (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
            _ => Err(TransportError::BadResponse(
                status_line.chars().take(80).collect(),
            )),
        }
    }
}

/// The run's export cursor: how many bytes of each file were accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(default)]
    pub traces: u64,
    #[serde(default)]
    pub metrics: u64,
}

pub fn cursor_file(run: &RunDir) -> PathBuf {
    run.root.join("export.json")
}

pub fn metrics_file(run: &RunDir) -> PathBuf {
    run.root.join("metrics.jsonl")
}

pub fn load_cursor(run: &RunDir) -> Cursor {
    std::fs::read(cursor_file(run))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_cursor(run: &RunDir, c: &Cursor) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(c).map_err(std::io::Error::other)?;
    crate::state::write_atomic(&cursor_file(run), &bytes)
}

/// What one export did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub spans_sent: usize,
    pub metric_lines_sent: usize,
    pub requests: usize,
    /// Lines the collector refused for good (4xx): skipped, kept on disk.
    pub lines_rejected: usize,
    /// Lines that are not OTLP/JSON: skipped, kept on disk.
    pub lines_invalid: usize,
    /// Something is left to send (the deadline came first).
    pub pending: bool,
    /// Another process of the run was exporting.
    pub busy: bool,
    pub last_error: Option<String>,
}

/// Lines per request: a run has a few hundred spans; keep requests small
/// enough that a slow link still delivers one inside the budget.
const BATCH_LINES: usize = 200;
const BATCH_BYTES: usize = 512 * 1024;

#[derive(Clone, Copy)]
enum Signal {
    Traces,
    Metrics,
}

/// An exclusive `flock` on the run's `export.lock`, released when dropped.
struct ExportLock(std::fs::File);

impl ExportLock {
    fn take(run: &RunDir, deadline: Instant) -> Option<ExportLock> {
        let path = run.root.join("export.lock");
        loop {
            if let Some(f) = crate::state::try_flock(&path, true) {
                return Some(ExportLock(f));
            }
            if Instant::now() + Duration::from_millis(20) >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ExportLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Ship every line after the cursor, within `budget`.
pub fn export_run(
    run: &RunDir,
    cfg: &ExportConfig,
    transport: &dyn Transport,
    budget: Duration,
) -> ExportReport {
    let deadline = Instant::now() + budget;
    let mut report = ExportReport::default();
    if !cfg.enabled() {
        return report;
    }
    let Some(_lock) = ExportLock::take(run, deadline) else {
        report.busy = true;
        return report;
    };
    let mut cursor = load_cursor(run);
    for (signal, path, sc) in [
        (Signal::Traces, run.trace_file(), &cfg.traces),
        (Signal::Metrics, metrics_file(run), &cfg.metrics),
    ] {
        let Some(sc) = sc else { continue };
        export_file(
            run,
            &path,
            signal,
            sc,
            transport,
            deadline,
            &mut cursor,
            &mut report,
        );
        if report.pending {
            break;
        }
    }
    report
}

/// The complete lines of `path` from `offset` on (a line being appended by
/// another process is left for later).
fn unsent(path: &Path, offset: u64) -> Vec<u8> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    use std::io::Seek;
    if f.seek(std::io::SeekFrom::Start(offset)).is_err() || f.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    match bytes.iter().rposition(|b| *b == b'\n') {
        Some(i) => bytes.truncate(i + 1),
        None => bytes.clear(),
    }
    bytes
}

#[allow(clippy::too_many_arguments)]
fn export_file(
    run: &RunDir,
    path: &Path,
    signal: Signal,
    sc: &SignalConfig,
    transport: &dyn Transport,
    deadline: Instant,
    cursor: &mut Cursor,
    report: &mut ExportReport,
) {
    let base = get(cursor, signal);
    let bytes = unsent(path, base);
    let mut pos = 0usize;
    while pos < bytes.len() {
        // One batch: whole lines, bounded in count and size.
        let mut docs = Vec::new();
        let mut end = pos;
        let mut items = 0usize;
        while end < bytes.len() && docs.len() < BATCH_LINES && end - pos < BATCH_BYTES {
            let nl = bytes[end..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| end + i)
                .unwrap_or(bytes.len() - 1);
            let line = &bytes[end..nl];
            end = nl + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Value>(line) {
                Ok(v) => {
                    items += count_items(&v, signal);
                    docs.push(v);
                }
                Err(_) => report.lines_invalid += 1,
            }
        }
        let body = match signal {
            Signal::Traces => proto::traces_request(&docs),
            Signal::Metrics => proto::metrics_request(&docs),
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                // One bad record must not block the rest: send line by line.
                let mut good = Vec::new();
                for d in docs {
                    let ok = match signal {
                        Signal::Traces => proto::traces_request(std::slice::from_ref(&d)).is_ok(),
                        Signal::Metrics => proto::metrics_request(std::slice::from_ref(&d)).is_ok(),
                    };
                    if ok {
                        good.push(d);
                    } else {
                        report.lines_invalid += 1;
                    }
                }
                report.last_error = Some(e.to_string());
                items = good.iter().map(|d| count_items(d, signal)).sum();
                match signal {
                    Signal::Traces => proto::traces_request(&good),
                    Signal::Metrics => proto::metrics_request(&good),
                }
                .unwrap_or_default()
            }
        };
        if items > 0 {
            match send(transport, sc, &body, deadline, report) {
                Sent::Accepted => match signal {
                    Signal::Traces => report.spans_sent += items,
                    Signal::Metrics => report.metric_lines_sent += items,
                },
                Sent::Rejected => report.lines_rejected += items,
                Sent::Later => {
                    report.pending = true;
                    return;
                }
            }
        }
        pos = end;
        // Durable after every batch: a process killed during the export
        // (the shutdown before the kexec) re-sends nothing already accepted.
        set(cursor, signal, base + end as u64);
        if let Err(e) = save_cursor(run, cursor) {
            report.last_error = Some(format!("cannot save the export cursor: {e}"));
        }
    }
}

fn get(c: &Cursor, signal: Signal) -> u64 {
    match signal {
        Signal::Traces => c.traces,
        Signal::Metrics => c.metrics,
    }
}

fn set(c: &mut Cursor, signal: Signal, v: u64) {
    match signal {
        Signal::Traces => c.traces = v,
        Signal::Metrics => c.metrics = v,
    }
}

fn count_items(v: &Value, signal: Signal) -> usize {
    let (top, inner, items) = match signal {
        Signal::Traces => ("resourceSpans", "scopeSpans", "spans"),
        Signal::Metrics => ("resourceMetrics", "scopeMetrics", "metrics"),
    };
    v[top]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r[inner].as_array().into_iter().flatten())
        .map(|s| s[items].as_array().map(Vec::len).unwrap_or(0))
        .sum()
}

enum Sent {
    Accepted,
    Rejected,
    Later,
}

/// One batch, retried with backoff on the answers the OTLP spec calls
/// retryable (and on network errors) until the deadline.
fn send(
    transport: &dyn Transport,
    sc: &SignalConfig,
    body: &[u8],
    deadline: Instant,
    report: &mut ExportReport,
) -> Sent {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt_deadline = (Instant::now() + sc.timeout).min(deadline);
        report.requests += 1;
        match transport.post(&sc.endpoint, &sc.headers, body, attempt_deadline) {
            Ok(code) if (200..300).contains(&code) => return Sent::Accepted,
            Ok(code) if [429, 502, 503, 504].contains(&code) => {
                report.last_error = Some(format!("the collector answered {code}"));
            }
            Ok(code) => {
                report.last_error = Some(format!(
                    "the collector refused the batch with {code}; it stays in the run's files"
                ));
                return Sent::Rejected;
            }
            Err(e) => {
                let refused = matches!(&e, TransportError::Connect { source, .. }
                    if source.kind() == std::io::ErrorKind::ConnectionRefused);
                report.last_error = Some(e.to_string());
                // Nobody listens: a definite answer, and waiting for it to
                // change would only lengthen a frozen session's downtime.
                if refused {
                    return Sent::Later;
                }
            }
        }
        if Instant::now() + backoff >= deadline {
            return Sent::Later;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct Fake {
        answers: RefCell<Vec<Result<u16, ()>>>,
        bodies: RefCell<Vec<Vec<u8>>>,
    }

    impl Fake {
        fn new(answers: Vec<Result<u16, ()>>) -> Self {
            Fake {
                answers: RefCell::new(answers),
                bodies: RefCell::new(Vec::new()),
            }
        }
    }

    impl Transport for Fake {
        fn post(
            &self,
            _: &Endpoint,
            _: &[(String, String)],
            body: &[u8],
            _: Instant,
        ) -> Result<u16, TransportError> {
            self.bodies.borrow_mut().push(body.to_vec());
            let mut a = self.answers.borrow_mut();
            let next = if a.is_empty() { Ok(200) } else { a.remove(0) };
            next.map_err(|_| TransportError::Timeout)
        }
    }

    fn cfg(env: &[(&str, &str)]) -> ExportConfig {
        ExportConfig::from_env(&|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    fn span_line(id: u32) -> String {
        format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[]}},"scopeSpans":[{{"scope":{{"name":"ferry"}},"spans":[{{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"{id:016x}","name":"s{id}","kind":1,"startTimeUnixNano":"1","endTimeUnixNano":"2"}}]}}]}}]}}"#
        )
    }

    fn run_with(lines: &[String]) -> (tempfile::TempDir, RunDir) {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(run.trace_file(), text).unwrap();
        (dir, run)
    }

    #[test]
    fn endpoints_follow_the_spec() {
        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]);
        let t = c.traces.unwrap();
        assert_eq!(t.endpoint.host, "collector");
        assert_eq!(t.endpoint.port, 4318);
        assert_eq!(t.endpoint.path, "/v1/traces");
        assert_eq!(c.metrics.unwrap().endpoint.path, "/v1/metrics");
        assert_eq!(t.timeout, Duration::from_secs(10));

        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://[::1]:4318/custom",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=x%20y"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "A=2,bad"),
        ]);
        let t = c.traces.unwrap();
        assert_eq!((t.endpoint.host.as_str(), t.endpoint.port), ("::1", 4318));
        assert_eq!(t.endpoint.path, "/custom");
        assert_eq!(t.timeout, Duration::from_millis(1500));
        assert_eq!(
            t.headers,
            vec![
                ("b".to_string(), "x y".to_string()),
                ("A".to_string(), "2".to_string())
            ]
        );
        assert_eq!(c.metrics.unwrap().endpoint.path, "/v1/metrics");
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint_or_when_disabled() {
        assert!(!cfg(&[]).enabled());
        assert!(
            !cfg(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
                ("OTEL_SDK_DISABLED", "TRUE")
            ])
            .enabled()
        );
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]);
        assert!(c.traces.is_none() && c.metrics.is_some());
        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://api.example:443")]);
        assert!(!c.enabled());
        assert!(matches!(c.problems[0], ConfigError::Endpoint { .. }));
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(!c.enabled());
        assert!(matches!(c.problems[0], ConfigError::Protocol { .. }));
    }

    #[test]
    fn retryable_answers_are_retried_and_the_cursor_moves_once() {
        let lines: Vec<String> = (1..=3).map(span_line).collect();
        let (_d, run) = run_with(&lines);
        let c = cfg(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://a:1/v1/traces")]);
        let fake = Fake::new(vec![Ok(503), Err(()), Ok(200)]);
        let r = export_run(&run, &c, &fake, Duration::from_secs(5));
        assert_eq!(r.spans_sent, 3);
        assert_eq!(r.requests, 3);
        assert!(!r.pending);
        let len = std::fs::metadata(run.trace_file()).unwrap().len();
        assert_eq!(load_cursor(&run).traces, len);
        // Nothing left: a second export sends nothing.
        let again = Fake::new(vec![]);
        let r = export_run(&run, &c, &again, Duration::from_secs(5));
        assert_eq!((r.requests, r.spans_sent), (0, 0));
        // A new line is sent alone.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(run.trace_file())
            .unwrap();
        writeln!(f, "{}", span_line(4)).unwrap();
        let r = export_run(&run, &c, &again, Duration::from_secs(5));
        assert_eq!(r.spans_sent, 1);
    }

    #[test]
    fn a_refused_batch_is_skipped_and_a_torn_line_waits() {
        let (_d, run) = run_with(&[span_line(1), "{not json".into()]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(run.trace_file())
            .unwrap();
        // A line still being written by another process: no newline yet.
        write!(f, "{}", &span_line(2)[..40]).unwrap();
        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1")]);
        let fake = Fake::new(vec![Ok(400)]);
        let r = export_run(&run, &c, &fake, Duration::from_secs(5));
        assert_eq!((r.lines_rejected, r.lines_invalid, r.spans_sent), (1, 1, 0));
        let full = std::fs::read(run.trace_file()).unwrap();
        let complete = full.iter().rposition(|b| *b == b'\n').unwrap() + 1;
        assert_eq!(load_cursor(&run).traces, complete as u64);
    }

    #[test]
    fn the_deadline_stops_retries() {
        let (_d, run) = run_with(&[span_line(1)]);
        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1")]);
        let fake = Fake::new(vec![Ok(503); 100]);
        let t = Instant::now();
        let r = export_run(&run, &c, &fake, Duration::from_millis(400));
        assert!(r.pending);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(load_cursor(&run).traces, 0);
    }

    #[test]
    fn endpoint_parsing_rejects_what_it_cannot_send_to() {
        for bad in [
            "https://x:1",
            "http://",
            "http://user@x:1",
            "http://x:99999",
            "http://x:1/a b",
            "ftp://x",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Endpoint::parse("http://localhost"),
            Some(Endpoint {
                host: "localhost".into(),
                port: 80,
                path: "/".into()
            })
        );
    }
}
