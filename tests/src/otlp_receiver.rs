//! A test OTLP/HTTP receiver on 127.0.0.1: what Jaeger or a collector
//! listens for on 4318, decoded strictly.
//!
//! Strict means: `POST /v1/traces` or `/v1/metrics` only, `Content-Type:
//! application/x-protobuf`, a `Content-Length`, a body that the official
//! generated types (opentelemetry-proto) decode **and** re-encode to the
//! same bytes (so no unknown field, wrong wire type or non-canonical
//! encoding slips through), trace ids of 16 bytes and span ids of 8. A
//! request that breaks a rule is answered 400 and listed in
//! [`OtlpReceiver::errors`].
//!
//! Only requests answered 2xx count as received, so "exactly once" is what
//! the collector acknowledged. [`Mode::Hang`] accepts a connection, reads
//! the request and never answers (a hanging collector).
//!
//! ```no_run
//! let rx = ferry_tests::otlp_receiver::OtlpReceiver::start().unwrap();
//! let endpoint = format!("http://127.0.0.1:{}", rx.port());
//! // … export …
//! assert!(rx.errors().is_empty());
//! let spans = rx.spans();
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric;
use prost::Message;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200, and the data counts as received.
    Accept,
    /// Read the request, never answer, keep the connection open.
    Hang,
    /// Answer with this status; the data does not count.
    Status(u16),
}

/// One received span, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct RxSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a span without parent.
    pub parent_span_id: String,
    pub trace_state: String,
    pub name: String,
    pub kind: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub events: Vec<RxEvent>,
    /// When the request that carried it was accepted.
    pub received: Instant,
}

/// One event of a received span.
#[derive(Debug, Clone, PartialEq)]
pub struct RxEvent {
    pub name: String,
    pub attributes: BTreeMap<String, String>,
}

/// One received metric data point, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct RxPoint {
    pub metric: String,
    pub unit: String,
    /// `histogram`, `sum` or `gauge`.
    pub kind: &'static str,
    /// Delta = 1, cumulative = 2.
    pub temporality: i32,
    pub attributes: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
    /// Histogram count, or the sum's/gauge's value.
    pub value: f64,
}

#[derive(Default)]
struct Received {
    spans: Vec<RxSpan>,
    points: Vec<RxPoint>,
    /// Every request seen (path, headers), answered or not.
    requests: Vec<(String, BTreeMap<String, String>)>,
    errors: Vec<String>,
}

struct Shared {
    received: Mutex<Received>,
    mode: Mutex<Mode>,
    stop: AtomicBool,
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Listen on 127.0.0.1 on a free port, answering [`Mode::Accept`].
    pub fn start() -> std::io::Result<OtlpReceiver> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            received: Mutex::new(Received::default()),
            mode: Mutex::new(Mode::Accept),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || serve(stream, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(OtlpReceiver {
            port,
            shared,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Spans of the requests answered 2xx, in arrival order.
    pub fn spans(&self) -> Vec<RxSpan> {
        lock(&self.shared.received).spans.clone()
    }

    /// Metric points of the requests answered 2xx, in arrival order.
    pub fn points(&self) -> Vec<RxPoint> {
        lock(&self.shared.received).points.clone()
    }

    /// Every request seen: path and headers (names lower-cased).
    pub fn requests(&self) -> Vec<(String, BTreeMap<String, String>)> {
        lock(&self.shared.received).requests.clone()
    }

    /// Protocol violations seen.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.received).errors.clone()
    }

    /// Wait until at least `n` spans were received, or `timeout`.
    pub fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<RxSpan> {
        let until = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if spans.len() >= n || Instant::now() >= until {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn serve(mut stream: TcpStream, s: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((method, path, headers, body)) = read_request(&mut stream) else {
        return;
    };
    lock(&s.received)
        .requests
        .push((path.clone(), headers.clone()));
    let mode = *lock(&s.mode);
    if mode == Mode::Hang {
        // Hold the connection open, say nothing, until the receiver stops.
        while !s.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        return;
    }
    let decoded = check(&method, &path, &headers, &body);
    let status = match (&decoded, mode) {
        (Err(e), _) => {
            lock(&s.received).errors.push(e.clone());
            400
        }
        (Ok(_), Mode::Status(code)) => code,
        (Ok(data), _) => {
            let mut r = lock(&s.received);
            match data {
                Decoded::Spans(v) => r.spans.extend(v.iter().cloned()),
                Decoded::Points(v) => r.points.extend(v.iter().cloned()),
            }
            200
        }
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

type Request = (String, String, BTreeMap<String, String>, Vec<u8>);

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some((method, path, headers, body))
}

enum Decoded {
    Spans(Vec<RxSpan>),
    Points(Vec<RxPoint>),
}

fn check(
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<Decoded, String> {
    if method != "POST" {
        return Err(format!("method {method}"));
    }
    if headers.get("content-type").map(String::as_str) != Some("application/x-protobuf") {
        return Err(format!("content-type {:?}", headers.get("content-type")));
    }
    match path {
        "/v1/traces" => {
            let req = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
            if req.encode_to_vec() != body {
                return Err("trace request is not canonical protobuf".into());
            }
            let mut out = Vec::new();
            for rs in &req.resource_spans {
                let resource = kvs(rs
                    .resource
                    .as_ref()
                    .map(|r| &r.attributes[..])
                    .unwrap_or(&[]));
                for ss in &rs.scope_spans {
                    for sp in &ss.spans {
                        if sp.trace_id.len() != 16 || sp.span_id.len() != 8 {
                            return Err(format!("bad ids in span {}", sp.name));
                        }
                        if !(sp.parent_span_id.is_empty() || sp.parent_span_id.len() == 8) {
                            return Err(format!("bad parent id in span {}", sp.name));
                        }
                        if sp.end_time_unix_nano < sp.start_time_unix_nano {
                            return Err(format!("span {} ends before it starts", sp.name));
                        }
                        out.push(RxSpan {
                            trace_id: hex(&sp.trace_id),
                            span_id: hex(&sp.span_id),
                            parent_span_id: hex(&sp.parent_span_id),
                            trace_state: sp.trace_state.clone(),
                            name: sp.name.clone(),
                            kind: sp.kind,
                            start_unix_nano: sp.start_time_unix_nano,
                            end_unix_nano: sp.end_time_unix_nano,
                            attributes: kvs(&sp.attributes),
                            resource: resource.clone(),
                            status_code: sp.status.as_ref().map(|s| s.code).unwrap_or(0),
                            events: sp
                                .events
                                .iter()
                                .map(|e| RxEvent {
                                    name: e.name.clone(),
                                    attributes: kvs(&e.attributes),
                                })
                                .collect(),
                            received: Instant::now(),
                        });
                    }
                }
            }
            Ok(Decoded::Spans(out))
        }
        "/v1/metrics" => {
            let req = ExportMetricsServiceRequest::decode(body).map_err(|e| e.to_string())?;
            if req.encode_to_vec() != body {
                return Err("metrics request is not canonical protobuf".into());
            }
            let mut out = Vec::new();
            for rm in &req.resource_metrics {
                let resource = kvs(rm
                    .resource
                    .as_ref()
                    .map(|r| &r.attributes[..])
                    .unwrap_or(&[]));
                for sm in &rm.scope_metrics {
                    for m in &sm.metrics {
                        let mut push = |kind, temporality, attributes: &[KeyValue], value| {
                            out.push(RxPoint {
                                metric: m.name.clone(),
                                unit: m.unit.clone(),
                                kind,
                                temporality,
                                attributes: kvs(attributes),
                                resource: resource.clone(),
                                value,
                            })
                        };
                        match &m.data {
                            Some(metric::Data::Histogram(h)) => {
                                for p in &h.data_points {
                                    if p.bucket_counts.len() != p.explicit_bounds.len() + 1
                                        || p.bucket_counts.iter().sum::<u64>() != p.count
                                    {
                                        return Err(format!(
                                            "histogram {} is inconsistent",
                                            m.name
                                        ));
                                    }
                                    push(
                                        "histogram",
                                        h.aggregation_temporality,
                                        &p.attributes,
                                        p.count as f64,
                                    );
                                }
                            }
                            Some(metric::Data::Sum(x)) => {
                                for p in &x.data_points {
                                    push(
                                        "sum",
                                        x.aggregation_temporality,
                                        &p.attributes,
                                        number(p.value),
                                    );
                                }
                            }
                            Some(metric::Data::Gauge(g)) => {
                                for p in &g.data_points {
                                    push("gauge", 0, &p.attributes, number(p.value));
                                }
                            }
                            _ => return Err(format!("metric {} has no supported data", m.name)),
                        }
                    }
                }
            }
            Ok(Decoded::Points(out))
        }
        other => Err(format!("path {other}")),
    }
}

fn number(v: Option<opentelemetry_proto::tonic::metrics::v1::number_data_point::Value>) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match v {
        Some(Value::AsDouble(d)) => d,
        Some(Value::AsInt(i)) => i as f64,
        None => f64::NAN,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn kvs(attrs: &[KeyValue]) -> BTreeMap<String, String> {
    attrs
        .iter()
        .map(|kv| (kv.key.clone(), any(kv.value.as_ref())))
        .collect()
}

fn any(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
