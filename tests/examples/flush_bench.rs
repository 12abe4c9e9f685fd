//! Benchmark (not a test): how long the flush before the kexec takes with a
//! healthy, a dead (closed port) and a hanging (accepts, never answers)
//! collector, all on 127.0.0.1.
//!
//! `cargo run --release -p ferry-tests --example flush_bench [RUNS] [SPANS]`
//!
//! Each run writes a fresh run directory whose `trace.jsonl` holds SPANS
//! spans the size of a real trip's (phases, commands with their command
//! lines and output tails), then times `export_run` with the worker's
//! budget (`FLUSH_BEFORE_REBOOT`) and the job's default
//! `OTEL_EXPORTER_OTLP_TIMEOUT` (10 s, which the budget caps).

use std::time::{Duration, Instant};

use ferry::state::RunDir;
use ferry::telemetry::export::{self, ExportConfig, HttpTransport};
use ferry_tests::otlp_receiver::{Mode, OtlpReceiver};
use serde_json::json;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn span_line(i: usize) -> String {
    let phase = i.is_multiple_of(7);
    let name = if phase {
        "upgrade".to_string()
    } else {
        format!("exec cmd{i}")
    };
    let tail = "Setting up linux-image-6.1.0-57-cloud-amd64 (6.1.0-57) ...\n".repeat(5);
    let span = json!({
        "traceId": TRACE,
        "spanId": format!("{:016x}", i + 1),
        "parentSpanId": "00f067aa0ba902b7",
        "name": name,
        "kind": 1,
        "startTimeUnixNano": (1_796_000_000_000_000_000u64 + i as u64 * 1_000_000).to_string(),
        "endTimeUnixNano": (1_796_000_000_500_000_000u64 + i as u64 * 1_000_000).to_string(),
        "attributes": [
            {"key": "process.executable.name", "value": {"stringValue": "apt-get"}},
            {"key": "process.command_line", "value": {"stringValue": "sh -c apt-get update && apt-get -y dist-upgrade"}},
            {"key": "process.exit.code", "value": {"intValue": "0"}},
            {"key": "ferry.output.tail", "value": {"stringValue": tail}},
        ],
        "events": [],
        "status": {"code": 1},
    });
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "ferry"}},
            {"key": "ferry.boot.id", "value": {"stringValue": "6bd2ee87-2e14-4e47-b117-6e10c86dd50d"}},
            {"key": "os.kernel.release", "value": {"stringValue": "6.1.0-56-cloud-amd64"}},
        ]},
        "scopeSpans": [{"scope": {"name": "ferry"}, "spans": [span]}],
    }]})
    .to_string()
}

fn run_dir(spans: usize) -> (tempfile::TempDir, RunDir) {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let mut text: String = (0..spans).map(|i| span_line(i) + "\n").collect();
    text.shrink_to_fit();
    std::fs::write(run.trace_file(), text).unwrap();
    (dir, run)
}

fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = args.first().copied().unwrap_or(10);
    let spans = args.get(1).copied().unwrap_or(60);
    let healthy = OtlpReceiver::start().unwrap();
    let hanging = OtlpReceiver::start().unwrap();
    hanging.set_mode(Mode::Hang);
    let budget = export::FLUSH_BEFORE_REBOOT;
    println!(
        "flush before the kexec: {spans} spans, budget {budget:?}, OTEL_EXPORTER_OTLP_TIMEOUT 10000, {runs} runs each"
    );
    println!("| collector | median | max | spans sent | left on disk |");
    println!("|---|---|---|---|---|");
    for (label, endpoint) in [
        ("healthy", healthy.endpoint()),
        ("dead (closed port)", dead_endpoint()),
        ("hanging (accepts, never answers)", hanging.endpoint()),
    ] {
        let cfg = ExportConfig::from_env(&|k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
            "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("10000".into()),
            _ => None,
        });
        let mut times = Vec::new();
        let mut sent = 0;
        let mut pending = 0;
        for _ in 0..runs {
            let (_keep, run) = run_dir(spans);
            let t = Instant::now();
            let r = export::export_run(&run, &cfg, &HttpTransport, budget);
            times.push(t.elapsed());
            sent = r.spans_sent;
            if r.pending {
                pending += 1;
            }
            // What was not sent is still in the file, after the cursor.
            assert_eq!(
                export::load_cursor(&run).traces == 0,
                r.spans_sent == 0,
                "{r:?}"
            );
        }
        times.sort();
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {label} | {} | {} | {sent} | {} |",
            ms(times[times.len() / 2]),
            ms(*times.last().unwrap()),
            if pending > 0 {
                format!("all {spans} ({pending}/{runs} runs pending)")
            } else {
                "none".into()
            }
        );
    }
    assert_eq!(
        healthy.spans().len(),
        runs * spans,
        "healthy got every span"
    );
}
