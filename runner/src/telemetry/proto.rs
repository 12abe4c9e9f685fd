//! OTLP/JSON (as the run's files hold it) to OTLP protobuf, by hand.
//!
//! The exporter ships what `otlp_file` wrote, so it needs exactly one
//! direction of one schema: JSON `TracesData`/`MetricsData` lines in,
//! `ExportTraceServiceRequest`/`ExportMetricsServiceRequest` bytes out.
//! That is ~200 lines of wire format instead of prost, its derive macro and
//! the generated OpenTelemetry types in every build of the binary. Fields
//! are written in field-number order and proto3 defaults are left out, as
//! prost does, so the tests can decode with the official generated types
//! and require a byte-identical re-encoding.
//!
//! Field numbers: opentelemetry-proto v1 (`common`, `resource`, `trace`,
//! `metrics` packages).

use serde_json::Value;

/// A line that is not OTLP/JSON as ferry writes it.
#[derive(Debug, thiserror::Error)]
#[error("not an OTLP/JSON record: {0}")]
pub struct ProtoError(pub String);

/// A protobuf message being written.
#[derive(Default)]
pub struct Msg(Vec<u8>);

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Msg {
    pub fn new() -> Self {
        Msg(Vec::new())
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    fn tag(&mut self, field: u32, wire: u8) {
        varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
    }
    /// A length-delimited field, written even when empty (sub-messages and
    /// oneof members have presence).
    pub fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.tag(field, 2);
        varint(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    pub fn msg(&mut self, field: u32, m: Msg) -> &mut Self {
        self.bytes(field, &m.0)
    }
    /// A proto3 string or bytes scalar: left out when empty.
    pub fn opt_bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        if !b.is_empty() {
            self.bytes(field, b);
        }
        self
    }
    pub fn opt_str(&mut self, field: u32, s: &str) -> &mut Self {
        self.opt_bytes(field, s.as_bytes())
    }
    /// A varint scalar (uint, int64 two's complement, enum, bool): left out
    /// when zero.
    pub fn opt_varint(&mut self, field: u32, v: u64) -> &mut Self {
        if v != 0 {
            self.tag(field, 0);
            varint(&mut self.0, v);
        }
        self
    }
    pub fn varint(&mut self, field: u32, v: u64) -> &mut Self {
        self.tag(field, 0);
        varint(&mut self.0, v);
        self
    }
    pub fn opt_fixed64(&mut self, field: u32, v: u64) -> &mut Self {
        if v != 0 {
            self.fixed64(field, v);
        }
        self
    }
    pub fn fixed64(&mut self, field: u32, v: u64) -> &mut Self {
        self.tag(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn double(&mut self, field: u32, v: f64) -> &mut Self {
        self.fixed64(field, v.to_bits())
    }
    pub fn opt_double(&mut self, field: u32, v: f64) -> &mut Self {
        if v.to_bits() != 0 {
            self.double(field, v);
        }
        self
    }
    /// A packed repeated fixed64/double field (left out when empty).
    pub fn packed_fixed64(&mut self, field: u32, vs: impl IntoIterator<Item = u64>) -> &mut Self {
        let mut b = Vec::new();
        for v in vs {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.opt_bytes(field, &b)
    }
}

fn err(what: impl Into<String>) -> ProtoError {
    ProtoError(what.into())
}

fn hex_id(v: &Value, len: usize, what: &str) -> Result<Vec<u8>, ProtoError> {
    let s = v.as_str().unwrap_or("");
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let b = hex::decode(s).map_err(|_| err(format!("{what} is not hex: {s:?}")))?;
    if b.len() != len {
        return Err(err(format!("{what} must be {len} bytes: {s:?}")));
    }
    Ok(b)
}

/// OTLP/JSON 64-bit integers are decimal strings; numbers are accepted too.
fn u64_of(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn i64_of(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// `AnyValue` (common.proto): a oneof, so the member is always written.
fn any_value(v: &Value) -> Msg {
    let mut m = Msg::new();
    if let Some(s) = v.get("stringValue") {
        m.bytes(1, s.as_str().unwrap_or("").as_bytes());
    } else if let Some(b) = v.get("boolValue") {
        m.varint(2, u64::from(b.as_bool().unwrap_or(false)));
    } else if let Some(i) = v.get("intValue") {
        m.varint(3, i64_of(i) as u64);
    } else if let Some(d) = v.get("doubleValue") {
        m.double(4, d.as_f64().unwrap_or(0.0));
    } else if let Some(a) = v.get("arrayValue") {
        let mut inner = Msg::new();
        for item in arr(&a["values"]) {
            inner.msg(1, any_value(item));
        }
        m.msg(5, inner);
    } else if let Some(kv) = v.get("kvlistValue") {
        let mut inner = Msg::new();
        for item in arr(&kv["values"]) {
            inner.msg(1, key_value(item));
        }
        m.msg(6, inner);
    }
    m
}

/// `KeyValue`: key = 1, value = 2.
fn key_value(v: &Value) -> Msg {
    let mut m = Msg::new();
    m.opt_str(1, v["key"].as_str().unwrap_or(""));
    if let Some(value) = v.get("value") {
        m.msg(2, any_value(value));
    }
    m
}

fn attributes(m: &mut Msg, field: u32, attrs: &Value) {
    for a in arr(attrs) {
        m.msg(field, key_value(a));
    }
}

/// `Resource`: attributes = 1.
fn resource(v: &Value) -> Msg {
    let mut m = Msg::new();
    attributes(&mut m, 1, &v["attributes"]);
    m
}

/// `InstrumentationScope`: name = 1, version = 2.
fn scope(v: &Value) -> Msg {
    let mut m = Msg::new();
    m.opt_str(1, v["name"].as_str().unwrap_or(""));
    m.opt_str(2, v["version"].as_str().unwrap_or(""));
    attributes(&mut m, 3, &v["attributes"]);
    m
}

/// `Span` (trace.proto).
fn span(v: &Value) -> Result<Msg, ProtoError> {
    let trace_id = hex_id(&v["traceId"], 16, "traceId")?;
    let span_id = hex_id(&v["spanId"], 8, "spanId")?;
    if trace_id.is_empty() || span_id.is_empty() {
        return Err(err("a span needs a traceId and a spanId"));
    }
    let mut m = Msg::new();
    m.opt_bytes(1, &trace_id)
        .opt_bytes(2, &span_id)
        .opt_str(3, v["traceState"].as_str().unwrap_or(""))
        .opt_bytes(4, &hex_id(&v["parentSpanId"], 8, "parentSpanId")?)
        .opt_str(5, v["name"].as_str().unwrap_or(""))
        .opt_varint(6, v["kind"].as_u64().unwrap_or(0))
        .opt_fixed64(7, u64_of(&v["startTimeUnixNano"]))
        .opt_fixed64(8, u64_of(&v["endTimeUnixNano"]));
    attributes(&mut m, 9, &v["attributes"]);
    for e in arr(&v["events"]) {
        // Span.Event: time = 1, name = 2, attributes = 3.
        let mut em = Msg::new();
        em.opt_fixed64(1, u64_of(&e["timeUnixNano"]))
            .opt_str(2, e["name"].as_str().unwrap_or(""));
        attributes(&mut em, 3, &e["attributes"]);
        m.msg(11, em);
    }
    if let Some(status) = v.get("status").filter(|s| s.is_object()) {
        // Status: message = 2, code = 3.
        let mut sm = Msg::new();
        sm.opt_str(2, status["message"].as_str().unwrap_or(""))
            .opt_varint(3, status["code"].as_u64().unwrap_or(0));
        m.msg(15, sm);
    }
    Ok(m)
}

/// One resource with its scopes, in the order first seen: consecutive
/// lines of one process share it, so a batch repeats it once.
struct Group<'a> {
    resource: &'a Value,
    scopes: Vec<(&'a Value, Vec<&'a Value>)>,
}

fn group<'a>(docs: &'a [Value], top: &str, inner: &str, items: &str) -> Vec<Group<'a>> {
    let mut groups: Vec<Group<'a>> = Vec::new();
    for doc in docs {
        for rs in arr(&doc[top]) {
            let res = &rs["resource"];
            let gi = match groups.iter().position(|g| g.resource == res) {
                Some(i) => i,
                None => {
                    groups.push(Group {
                        resource: res,
                        scopes: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let g = &mut groups[gi];
            for ss in arr(&rs[inner]) {
                let sc = &ss["scope"];
                let si = match g.scopes.iter().position(|(s, _)| *s == sc) {
                    Some(i) => i,
                    None => {
                        g.scopes.push((sc, Vec::new()));
                        g.scopes.len() - 1
                    }
                };
                g.scopes[si].1.extend(arr(&ss[items]));
            }
        }
    }
    groups
}

/// `ExportTraceServiceRequest` for these `TracesData` JSON documents.
pub fn traces_request(docs: &[Value]) -> Result<Vec<u8>, ProtoError> {
    let mut req = Msg::new();
    for g in group(docs, "resourceSpans", "scopeSpans", "spans") {
        // ResourceSpans: resource = 1, scope_spans = 2.
        let mut rs = Msg::new();
        rs.msg(1, resource(g.resource));
        for (sc, spans) in g.scopes {
            // ScopeSpans: scope = 1, spans = 2.
            let mut ss = Msg::new();
            ss.msg(1, scope(sc));
            for s in spans {
                ss.msg(2, span(s)?);
            }
            rs.msg(2, ss);
        }
        req.msg(1, rs);
    }
    Ok(req.into_bytes())
}

/// start_time = 2, time = 3 in every data point type.
fn point_times(m: &mut Msg, p: &Value) {
    m.opt_fixed64(2, u64_of(&p["startTimeUnixNano"]))
        .opt_fixed64(3, u64_of(&p["timeUnixNano"]));
}

/// `NumberDataPoint`: attributes = 7, start = 2, time = 3, as_double = 4,
/// as_int = 6 (sfixed64).
fn number_point(p: &Value) -> Msg {
    let mut m = Msg::new();
    point_times(&mut m, p);
    if let Some(d) = p.get("asDouble") {
        m.double(4, d.as_f64().unwrap_or(0.0));
    }
    if let Some(i) = p.get("asInt") {
        m.fixed64(6, i64_of(i) as u64);
    }
    attributes(&mut m, 7, &p["attributes"]);
    m
}

/// `HistogramDataPoint`: start = 2, time = 3, count = 4, sum = 5 (optional),
/// bucket_counts = 6, explicit_bounds = 7, attributes = 9, min = 11, max = 12.
fn histogram_point(p: &Value) -> Msg {
    let mut m = Msg::new();
    point_times(&mut m, p);
    m.opt_fixed64(4, u64_of(&p["count"]));
    if let Some(sum) = p.get("sum").and_then(Value::as_f64) {
        m.double(5, sum);
    }
    m.packed_fixed64(6, arr(&p["bucketCounts"]).iter().map(u64_of));
    m.packed_fixed64(
        7,
        arr(&p["explicitBounds"])
            .iter()
            .map(|b| b.as_f64().unwrap_or(0.0).to_bits()),
    );
    attributes(&mut m, 9, &p["attributes"]);
    if let Some(min) = p.get("min").and_then(Value::as_f64) {
        m.double(11, min);
    }
    if let Some(max) = p.get("max").and_then(Value::as_f64) {
        m.double(12, max);
    }
    m
}

/// `Metric`: name = 1, description = 2, unit = 3, gauge = 5, sum = 7,
/// histogram = 9.
fn metric(v: &Value) -> Result<Msg, ProtoError> {
    let mut m = Msg::new();
    m.opt_str(1, v["name"].as_str().unwrap_or(""))
        .opt_str(2, v["description"].as_str().unwrap_or(""))
        .opt_str(3, v["unit"].as_str().unwrap_or(""));
    if let Some(g) = v.get("gauge") {
        let mut gm = Msg::new();
        for p in arr(&g["dataPoints"]) {
            gm.msg(1, number_point(p));
        }
        m.msg(5, gm);
    } else if let Some(s) = v.get("sum") {
        // Sum: data_points = 1, aggregation_temporality = 2, is_monotonic = 3.
        let mut sm = Msg::new();
        for p in arr(&s["dataPoints"]) {
            sm.msg(1, number_point(p));
        }
        sm.opt_varint(2, s["aggregationTemporality"].as_u64().unwrap_or(0))
            .opt_varint(3, u64::from(s["isMonotonic"].as_bool().unwrap_or(false)));
        m.msg(7, sm);
    } else if let Some(h) = v.get("histogram") {
        // Histogram: data_points = 1, aggregation_temporality = 2.
        let mut hm = Msg::new();
        for p in arr(&h["dataPoints"]) {
            hm.msg(1, histogram_point(p));
        }
        hm.opt_varint(2, h["aggregationTemporality"].as_u64().unwrap_or(0));
        m.msg(9, hm);
    } else {
        return Err(err(format!(
            "metric {} has no gauge, sum or histogram",
            v["name"]
        )));
    }
    Ok(m)
}

/// `ExportMetricsServiceRequest` for these `MetricsData` JSON documents.
pub fn metrics_request(docs: &[Value]) -> Result<Vec<u8>, ProtoError> {
    let mut req = Msg::new();
    for g in group(docs, "resourceMetrics", "scopeMetrics", "metrics") {
        let mut rm = Msg::new();
        rm.msg(1, resource(g.resource));
        for (sc, metrics) in g.scopes {
            let mut sm = Msg::new();
            sm.msg(1, scope(sc));
            for x in metrics {
                sm.msg(2, metric(x)?);
            }
            rm.msg(2, sm);
        }
        req.msg(1, rm);
    }
    Ok(req.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn varints_and_defaults() {
        let mut m = Msg::new();
        m.opt_varint(1, 0).opt_str(2, "").varint(3, 300);
        assert_eq!(m.into_bytes(), vec![0x18, 0xac, 0x02]);
        let mut m = Msg::new();
        m.varint(1, (-1i64) as u64);
        assert_eq!(m.into_bytes().len(), 1 + 10);
    }

    #[test]
    fn bad_ids_are_errors_not_panics() {
        for span in [
            json!({"traceId": "zz", "spanId": "b7ad6b7169203331"}),
            json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad"}),
            json!({"spanId": "b7ad6b7169203331"}),
        ] {
            let doc = json!({"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {}, "spans": [span]}]}]});
            assert!(traces_request(&[doc]).is_err());
        }
    }

    #[test]
    fn one_resource_is_written_once_for_many_lines() {
        let line = |id: &str| {
            json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "ferry"}}]},
                "scopeSpans": [{"scope": {"name": "ferry"}, "spans": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": id, "name": "x"}]}]}]})
        };
        let docs = [line("b7ad6b7169203331"), line("b7ad6b7169203332")];
        let bytes = traces_request(&docs).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("service.name").count(), 1);
    }
}
