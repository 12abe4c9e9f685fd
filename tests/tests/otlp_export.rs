//! OTLP export of whole runs, without QEMU: the run's phases are driven
//! through ferry's own `run_phase` and `finishing::conclude` with a fake
//! command runner, one tracing subscriber per simulated process (and a
//! boot id per simulated boot), and the spans go through the real file
//! layer, exporter and HTTP transport to the strict test receiver.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ferry::config::Config;
use ferry::exec::{CommandOutput, CommandSpec, ExecError, Runner, SystemRunner};
use ferry::phases::{Ctx, PhaseError, run_phase};
use ferry::state::{Handoff, RunDir, RunState, STATE_FORMAT};
use ferry::telemetry::export::{self, ExportConfig, HttpTransport};
use ferry::telemetry::otlp_file::OtlpFileLayer;
use ferry::telemetry::{Telemetry, context_of, ids, names};
use ferry_tests::otlp_receiver::{Mode, OtlpReceiver, RxSpan};
use tracing_subscriber::prelude::*;

/// Runs nothing; each command is an `exec` span like the real runner's.
struct FakeRunner;

impl Runner for FakeRunner {
    fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, ExecError> {
        let span = tracing::info_span!(
            "exec",
            otel.name = %format!("{}{}", names::SPAN_EXEC_PREFIX, spec.program),
            process.executable.name = %spec.program,
            process.exit.code = 0,
        );
        let _e = span.enter();
        Ok(CommandOutput {
            command: spec.program.clone(),
            code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            log_file: None,
            duration: Duration::ZERO,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Scenario {
    Succeeds,
    FailsInDump,
    FailsInRestore,
}

struct Sim {
    _dir: tempfile::TempDir,
    run: RunDir,
    config: Config,
    state: RunState,
}

/// The end of a failed `criu dump -v4` log (lab trap F1).
const CRIU_LOG: &str = "(00.104418) mnt: Dumping mountpoints\n\
(00.104610) Error (criu/mount.c:1030): mnt: Can't lookup mount=56 for fd=-3 path=/run/user/0/fifo\n\
(00.104633) Error (criu/cr-dump.c:2093): Dumping FAILED.\n";

const JOB_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn new_sim(otel: BTreeMap<String, String>, traceparent: Option<&str>) -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("run"));
    run.create().unwrap();
    let mut config = Config::default();
    config.ship.dir = dir.path().join("bundles");
    config.spool.dir = dir.path().join("spool");
    let tp = traceparent.and_then(ids::TraceParent::parse);
    let state = RunState {
        format: STATE_FORMAT,
        run_id: "20260101T000000Z-abcdef".into(),
        ferry_version: "test".into(),
        host: "ci-vm".into(),
        trace_id: tp
            .as_ref()
            .map(|t| t.trace_id.clone())
            .unwrap_or_else(ids::trace_id),
        root_span_id: ids::span_id(),
        parent_span_id: tp.map(|t| t.span_id),
        tracestate: traceparent.map(|_| "vendor=x".to_string()),
        start_unix_nano: ids::now_unix_nano(),
        boot_ids: vec!["boot-a".into()],
        kernel_before: "6.1.0-old".into(),
        kernel_after: None,
        kernel: None,
        phases: Vec::new(),
        session: None,
        // The plan the run's later processes (the janitor) read.
        plan: serde_json::to_value(&config).unwrap(),
        handoff: Handoff::default(),
        worker_pid: None,
        outcome: None,
        otel,
        notes: Vec::new(),
    };
    run.save(&state).unwrap();
    Sim {
        _dir: dir,
        run,
        config,
        state,
    }
}

fn otel_for(endpoint: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
        endpoint.to_string(),
    )])
}

/// One process on one boot: its own subscriber and span sink.
fn in_process<R>(sim: &mut Sim, boot: &str, kernel: &str, f: impl FnOnce(&mut Ctx<'_>) -> R) -> R {
    let telemetry = Telemetry::default();
    let subscriber =
        tracing_subscriber::registry().with(OtlpFileLayer::new(telemetry.spans.clone()));
    tracing::subscriber::with_default(subscriber, || {
        let mut tc = context_of(&sim.state);
        for (k, v) in tc.resource.iter_mut() {
            if k == names::ATTR_BOOT_ID {
                *v = boot.to_string();
            }
            if k == names::ATTR_KERNEL_RELEASE {
                *v = kernel.to_string();
            }
        }
        telemetry.spans.attach(tc, sim.run.trace_file());
        let mut ctx = Ctx {
            config: &sim.config,
            run: &sim.run,
            state: sim.state.clone(),
            runner: &FakeRunner,
            telemetry: &telemetry,
        };
        let r = f(&mut ctx);
        sim.state = ctx.state;
        r
    })
}

fn ok(_: &mut Ctx<'_>) -> Result<(), PhaseError> {
    Ok(())
}

/// The worker's side: phases up to the reboot, with the bounded flush.
fn before_reboot(sim: &mut Sim, scenario: Scenario) -> Option<export::ExportReport> {
    in_process(sim, "boot-a", "6.1.0-old", |ctx| {
        for p in ["preflight", "locate", "upgrade", "kernel"] {
            run_phase(ctx, p, ok).unwrap();
        }
        if scenario == Scenario::FailsInDump {
            let e = run_phase(ctx, "dump", |c| {
                let _ = c.runner.run(&CommandSpec::new("criu"));
                // What the dump phase does with the log criu wrote.
                ferry::phases::emit_criu_errors(&ferry::phases::criu_error_lines(CRIU_LOG));
                Err::<(), _>(PhaseError::new("criu_dump", "criu dump failed"))
            })
            .unwrap_err();
            ferry::finishing::end_before_dump(ctx, "dump", &e);
            return None;
        }
        run_phase(ctx, "dump", |c| {
            let _ = c.runner.run(&CommandSpec::new("criu"));
            Ok(())
        })
        .unwrap();
        run_phase(ctx, "prepare-restore", ok).unwrap();
        let report = ctx
            .telemetry
            .export(ctx.run, &ctx.state, export::FLUSH_BEFORE_REBOOT);
        run_phase(ctx, "handoff", ok).unwrap();
        Some(report)
    })
}

/// `ferry resume` and the finisher on the new boot.
fn after_reboot(sim: &mut Sim, scenario: Scenario) {
    sim.state.boot_ids.push("boot-b".into());
    in_process(sim, "boot-b", "6.12.0-new", |ctx| {
        run_phase(ctx, "netfilter", ok).unwrap();
        run_phase(ctx, "fixups", ok).unwrap();
        if scenario == Scenario::FailsInRestore {
            let e = run_phase(ctx, "restore", |_| {
                Err::<(), _>(PhaseError::new("criu_restore", "criu restore failed"))
            })
            .unwrap_err();
            ferry::finishing::conclude(
                ctx,
                "failed",
                Some("restore"),
                Some(e.message),
                Some(&e.kind),
            );
            return;
        }
        run_phase(ctx, "restore", ok).unwrap();
        run_phase(ctx, "verify", ok).unwrap();
        ferry::finishing::conclude(ctx, "succeeded", None, None, None);
    });
}

fn simulate(sim: &mut Sim, scenario: Scenario) {
    before_reboot(sim, scenario);
    if scenario != Scenario::FailsInDump {
        after_reboot(sim, scenario);
    }
}

fn file_spans(run: &RunDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.trace_file())
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["resourceSpans"][0]["scopeSpans"]
                [0]["spans"][0]
                .clone()
        })
        .collect()
}

/// The tree every run must give: one trace, connected, root last (ship
/// aside) with the earliest start, every span from the file exactly once.
fn check_tree(sim: &Sim, spans: &[RxSpan], scenario: Scenario, job_parent: Option<&str>) {
    let file = file_spans(&sim.run);
    assert_eq!(spans.len(), file.len(), "every span of the file, once");
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "no span twice");
    assert!(spans.iter().all(|s| s.trace_id == sim.state.trace_id));

    let roots: Vec<&RxSpan> = spans.iter().filter(|s| s.name == names::SPAN_RUN).collect();
    assert_eq!(roots.len(), 1);
    let root = roots[0];
    assert_eq!(root.span_id, sim.state.root_span_id);
    assert_eq!(root.parent_span_id, job_parent.unwrap_or(""));
    assert_eq!(root.kind, 2, "SERVER");
    assert_eq!(
        root.start_unix_nano,
        spans.iter().map(|s| s.start_unix_nano).min().unwrap()
    );
    let expected_result = if scenario == Scenario::Succeeds {
        "success"
    } else {
        "failure"
    };
    assert_eq!(
        root.attributes[names::ATTR_PIPELINE_RESULT],
        expected_result
    );
    assert_eq!(root.attributes[names::ATTR_PIPELINE_ACTION], "RUN");
    if scenario != Scenario::Succeeds {
        assert_eq!(root.status_code, 2);
        assert!(root.attributes.contains_key(names::ATTR_ERROR_TYPE));
    }

    // Every name on a span is in names.rs (the dashboards query that list);
    // the resource may also carry the job's OTEL_RESOURCE_ATTRIBUTES.
    let job_resource: Vec<String> = sim
        .state
        .otel
        .get("OTEL_RESOURCE_ATTRIBUTES")
        .map(|r| {
            ferry::telemetry::resource_attributes(r)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        })
        .unwrap_or_default();
    for s in spans {
        // Log lines inside a span become its events with free-form fields;
        // named events (CRIU errors) have listed attributes.
        let events = s
            .events
            .iter()
            .filter(|e| e.name == names::EVENT_CRIU_ERROR)
            .flat_map(|e| e.attributes.keys());
        for k in s.attributes.keys().chain(events) {
            assert!(
                names::ALL_ATTRIBUTES.contains(&k.as_str()),
                "span {} carries {k}, which names.rs does not list",
                s.name
            );
        }
        for k in s.resource.keys() {
            assert!(
                names::ALL_ATTRIBUTES.contains(&k.as_str()) || job_resource.contains(k),
                "span {}'s resource carries unlisted {k}",
                s.name
            );
        }
        assert!(
            names::is_span_name(&s.name),
            "span name {} is not in names.rs",
            s.name
        );
    }
    if scenario == Scenario::FailsInDump {
        let dump = spans.iter().find(|s| s.name == "dump").unwrap();
        let lines: Vec<&str> = dump
            .events
            .iter()
            .filter(|e| e.name == names::EVENT_CRIU_ERROR)
            .map(|e| e.attributes[names::ATTR_CRIU_LINE].as_str())
            .collect();
        assert_eq!(
            lines,
            vec![
                "(00.104610) Error (criu/mount.c:1030): mnt: Can't lookup mount=56 for fd=-3 path=/run/user/0/fifo",
                "(00.104633) Error (criu/cr-dump.c:2093): Dumping FAILED.",
            ],
            "CRIU's Error lines are events of the dump span"
        );
    }

    for s in spans.iter().filter(|s| s.name != names::SPAN_RUN) {
        assert!(
            ids.contains(s.parent_span_id.as_str()),
            "{} has a parent in the trace",
            s.name
        );
        assert!(s.resource.contains_key(names::ATTR_BOOT_ID));
        assert!(s.resource.contains_key(names::ATTR_KERNEL_RELEASE));
        if s.attributes.contains_key(names::ATTR_TASK_NAME) {
            assert_eq!(
                s.parent_span_id, root.span_id,
                "phase {} under the root",
                s.name
            );
            assert!(s.attributes.contains_key(names::ATTR_TASK_RUN_ID));
            assert!(s.attributes.contains_key(names::ATTR_TASK_RUN_RESULT));
        }
    }

    // Root last in the file, but for the ship phase and its commands.
    let root_line = file
        .iter()
        .position(|s| s["name"] == names::SPAN_RUN)
        .unwrap();
    let ship_id = spans
        .iter()
        .find(|s| s.name == "ship")
        .map(|s| s.span_id.clone());
    for s in &file[root_line + 1..] {
        let id = s["spanId"].as_str().unwrap();
        let parent = s["parentSpanId"].as_str().unwrap_or("");
        assert!(
            Some(id) == ship_id.as_deref() || Some(parent) == ship_id.as_deref(),
            "{} follows the root",
            s["name"]
        );
    }

    let names_seen: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let mut expected = vec![
        "preflight",
        "locate",
        "upgrade",
        "kernel",
        "dump",
        "collect",
        "finish",
        "ship",
    ];
    match scenario {
        Scenario::Succeeds => expected.extend([
            "prepare-restore",
            "handoff",
            "netfilter",
            "fixups",
            "restore",
            "verify",
        ]),
        Scenario::FailsInRestore => expected.extend([
            "prepare-restore",
            "handoff",
            "netfilter",
            "fixups",
            "restore",
        ]),
        Scenario::FailsInDump => {}
    }
    for n in expected {
        assert!(names_seen.contains(n), "no span {n}: {names_seen:?}");
        assert!(names::all_span_names().contains(&n));
    }
    let failed: Vec<&str> = spans
        .iter()
        .filter(|s| s.status_code == 2 && s.name != names::SPAN_RUN)
        .map(|s| s.name.as_str())
        .collect();
    match scenario {
        Scenario::Succeeds => assert!(failed.is_empty(), "{failed:?}"),
        Scenario::FailsInDump => assert_eq!(failed, vec!["dump"]),
        Scenario::FailsInRestore => assert_eq!(failed, vec!["restore"]),
    }
    let boots: BTreeSet<&str> = spans
        .iter()
        .map(|s| s.resource[names::ATTR_BOOT_ID].as_str())
        .collect();
    let kernels: BTreeSet<&str> = spans
        .iter()
        .map(|s| s.resource[names::ATTR_KERNEL_RELEASE].as_str())
        .collect();
    let two = scenario != Scenario::FailsInDump;
    assert_eq!(boots.len(), if two { 2 } else { 1 }, "{boots:?}");
    assert_eq!(kernels.len(), if two { 2 } else { 1 });
    // No span's duration crosses a boot: each span lies within its process.
    for s in spans.iter().filter(|s| s.name != names::SPAN_RUN) {
        assert!(s.end_unix_nano >= s.start_unix_nano);
    }
}

fn check_metrics(rx: &OtlpReceiver, scenario: Scenario) {
    let points = rx.points();
    let run: Vec<_> = points
        .iter()
        .filter(|p| p.metric == names::METRIC_RUN_DURATION.name)
        .collect();
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].kind, "histogram");
    assert_eq!(run[0].temporality, 1, "delta");
    assert_eq!(run[0].value, 1.0);
    let expected = if scenario == Scenario::Succeeds {
        "success"
    } else {
        "failure"
    };
    assert_eq!(run[0].attributes[names::ATTR_PIPELINE_RESULT], expected);
    assert!(
        !run[0].resource.contains_key(names::ATTR_PIPELINE_RUN_ID),
        "no run id on metrics"
    );
    let phases: BTreeSet<&str> = points
        .iter()
        .filter(|p| p.metric == names::METRIC_PHASE_DURATION.name)
        .map(|p| p.attributes[names::ATTR_TASK_NAME].as_str())
        .collect();
    assert!(
        phases.contains("dump") && phases.contains("preflight"),
        "{phases:?}"
    );
    let errors: Vec<_> = points
        .iter()
        .filter(|p| p.metric == names::METRIC_RUN_ERRORS.name)
        .collect();
    if scenario == Scenario::Succeeds {
        assert!(errors.is_empty());
    } else {
        assert_eq!(errors.len(), 1);
        assert!(errors[0].attributes.contains_key(names::ATTR_ERROR_TYPE));
    }
    let shipped: Vec<_> = points
        .iter()
        .filter(|p| p.metric == names::METRIC_SHIPPED_BYTES.name)
        .collect();
    assert_eq!(shipped.len(), 1);
    assert!(shipped[0].value > 0.0);
    for p in &points {
        let m = names::ALL_METRICS
            .iter()
            .find(|m| m.name == p.metric)
            .expect("listed metric");
        assert_eq!(p.unit, m.unit);
        for a in p.attributes.keys() {
            assert!(
                m.attributes.contains(&a.as_str()),
                "{} carries unlisted {a}",
                m.name
            );
        }
    }
}

fn scenario_test(scenario: Scenario) {
    let rx = OtlpReceiver::start().unwrap();
    let mut sim = new_sim(otel_for(&rx.endpoint()), None);
    simulate(&mut sim, scenario);
    assert!(rx.errors().is_empty(), "{:?}", rx.errors());
    let spans = rx.spans();
    check_tree(&sim, &spans, scenario, None);
    check_metrics(&rx, scenario);
    assert!(
        rx.requests()
            .iter()
            .all(|(p, _)| p == "/v1/traces" || p == "/v1/metrics")
    );
    // The bundle's Jaeger JSON holds the same trace.
    let text = std::fs::read_to_string(sim.run.trace_file()).unwrap();
    let j = ferry::telemetry::jaeger::from_otlp_lines(&text);
    assert_eq!(j["data"].as_array().unwrap().len(), 1);
    assert_eq!(j["data"][0]["traceID"], sim.state.trace_id.as_str());
    assert_eq!(j["data"][0]["spans"].as_array().unwrap().len(), spans.len());
}

#[test]
fn a_successful_run_is_one_tree_across_two_boots() {
    scenario_test(Scenario::Succeeds);
}

#[test]
fn a_run_failing_in_dump_is_one_tree_on_one_boot() {
    scenario_test(Scenario::FailsInDump);
}

#[test]
fn a_run_failing_in_restore_is_one_tree_across_two_boots() {
    scenario_test(Scenario::FailsInRestore);
}

#[test]
fn the_jobs_traceparent_is_the_roots_parent_and_tracestate_is_kept() {
    let rx = OtlpReceiver::start().unwrap();
    let mut sim = new_sim(otel_for(&rx.endpoint()), Some(JOB_TRACEPARENT));
    simulate(&mut sim, Scenario::Succeeds);
    let spans = rx.spans();
    assert_eq!(sim.state.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    check_tree(&sim, &spans, Scenario::Succeeds, Some("00f067aa0ba902b7"));
    let root = spans.iter().find(|s| s.name == names::SPAN_RUN).unwrap();
    assert_eq!(root.trace_state, "vendor=x");
}

#[test]
fn every_child_process_gets_its_own_traceparent() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = new_sim(BTreeMap::new(), Some(JOB_TRACEPARENT));
    let trace_file = sim.run.trace_file();
    let _ = &dir;
    let outputs = in_process(&mut sim, "boot-a", "6.1.0-old", |ctx| {
        let runner = SystemRunner::new(ctx.telemetry.spans.clone(), Vec::new());
        run_phase(ctx, "upgrade", |_| {
            let mut outs = Vec::new();
            for _ in 0..2 {
                let out = runner
                    .run(
                        &CommandSpec::new("sh")
                            .args(["-c", "printf '%s %s' \"$TRACEPARENT\" \"$TRACESTATE\""]),
                    )
                    .map_err(|e| PhaseError::new("x", e.to_string()))?;
                outs.push(out.stdout);
            }
            Ok(outs)
        })
        .unwrap()
    });
    let spans: Vec<serde_json::Value> = std::fs::read_to_string(trace_file)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["resourceSpans"][0]["scopeSpans"]
                [0]["spans"][0]
                .clone()
        })
        .collect();
    let execs: Vec<&serde_json::Value> = spans.iter().filter(|s| s["name"] == "exec sh").collect();
    assert_eq!(execs.len(), 2);
    let mut parents = BTreeSet::new();
    for (out, exec) in outputs.iter().zip(&execs) {
        let (tp, ts) = out.split_once(' ').unwrap();
        let tp = ids::TraceParent::parse(tp).expect("a valid traceparent");
        assert_eq!(tp.trace_id, sim.state.trace_id);
        assert_eq!(
            tp.span_id,
            exec["spanId"].as_str().unwrap(),
            "the command's own span is its parent"
        );
        assert_eq!(ts, "vendor=x");
        parents.insert(tp.span_id);
    }
    assert_eq!(parents.len(), 2, "each child its own");
}

fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_dead_collector_costs_nothing_and_the_spans_are_sent_once_when_it_is_back() {
    let mut sim = new_sim(otel_for(&format!("http://127.0.0.1:{}", dead_port())), None);
    let t = Instant::now();
    let report = before_reboot(&mut sim, Scenario::Succeeds).unwrap();
    let flush = t.elapsed();
    eprintln!("bench: flush before the kexec with a dead collector: {flush:?}");
    assert!(report.pending);
    assert_eq!(report.spans_sent, 0);
    after_reboot(&mut sim, Scenario::Succeeds);
    assert!(t.elapsed() < Duration::from_secs(60), "does not hang");
    assert_eq!(export::load_cursor(&sim.run).traces, 0);
    assert!(!file_spans(&sim.run).is_empty(), "spans are on disk");

    // The collector is back (here: somewhere else; the cursor is the run's).
    let rx = OtlpReceiver::start().unwrap();
    let cfg =
        ExportConfig::from_env(&|k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| rx.endpoint()));
    let r = export::export_run(&sim.run, &cfg, &HttpTransport, Duration::from_secs(20));
    assert!(!r.pending, "{r:?}");
    check_tree(&sim, &rx.spans(), Scenario::Succeeds, None);
    check_metrics(&rx, Scenario::Succeeds);
    // And never again.
    let before = rx.requests().len();
    let r = export::export_run(&sim.run, &cfg, &HttpTransport, Duration::from_secs(20));
    assert_eq!((r.requests, r.spans_sent), (0, 0));
    assert_eq!(rx.requests().len(), before);
    assert!(rx.errors().is_empty());
}

#[test]
fn a_hanging_collector_bounds_the_flush_and_loses_nothing() {
    let rx = OtlpReceiver::start().unwrap();
    rx.set_mode(Mode::Hang);
    let mut otel = otel_for(&rx.endpoint());
    otel.insert("OTEL_EXPORTER_OTLP_TIMEOUT".into(), "30000".into());
    let mut sim = new_sim(otel, None);
    let t = Instant::now();
    let report = before_reboot(&mut sim, Scenario::Succeeds).unwrap();
    let elapsed = t.elapsed();
    eprintln!(
        "bench: flush before the kexec with a hanging collector: {elapsed:?} (budget {:?})",
        export::FLUSH_BEFORE_REBOOT
    );
    assert!(report.pending, "{report:?}");
    assert!(!rx.requests().is_empty(), "the collector was reached");
    assert!(rx.spans().is_empty());
    // Generous: the point is that it does not wait for the 30 s timeout.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    assert_eq!(export::load_cursor(&sim.run).traces, 0);

    // The collector answers again by the time the run ends.
    rx.set_mode(Mode::Accept);
    after_reboot(&mut sim, Scenario::Succeeds);
    assert!(rx.errors().is_empty(), "{:?}", rx.errors());
    check_tree(&sim, &rx.spans(), Scenario::Succeeds, None);
}

#[test]
fn headers_come_from_the_secrets_file_not_the_state() {
    let rx = OtlpReceiver::start().unwrap();
    let mut sim = new_sim(otel_for(&rx.endpoint()), None);
    ferry::secrets::Secrets::from_env(&|k| {
        (k == "OTEL_EXPORTER_OTLP_HEADERS").then(|| "x-api-key=s3cr%3Dt,x-team=ci".to_string())
    })
    .save(&sim.run)
    .unwrap();
    simulate(&mut sim, Scenario::FailsInDump);
    let reqs = rx.requests();
    assert!(!reqs.is_empty());
    for (_, h) in &reqs {
        assert_eq!(h.get("x-api-key").map(String::as_str), Some("s3cr=t"));
        assert_eq!(h.get("x-team").map(String::as_str), Some("ci"));
    }
    let state = std::fs::read_to_string(sim.run.state_file()).unwrap();
    assert!(!state.contains("s3cr"));
    assert!(state.contains("OTEL_EXPORTER_OTLP_ENDPOINT"));
}

#[test]
fn sdk_disabled_means_no_request_and_spans_still_on_disk() {
    let rx = OtlpReceiver::start().unwrap();
    let mut otel = otel_for(&rx.endpoint());
    otel.insert("OTEL_SDK_DISABLED".into(), "true".into());
    let mut sim = new_sim(otel, None);
    simulate(&mut sim, Scenario::FailsInDump);
    assert!(rx.requests().is_empty());
    assert!(file_spans(&sim.run).len() > 5);
}

#[test]
fn service_name_and_resource_attributes_of_the_job_are_on_every_span() {
    let rx = OtlpReceiver::start().unwrap();
    let mut otel = otel_for(&rx.endpoint());
    otel.insert("OTEL_SERVICE_NAME".into(), "ci-upgrades".into());
    otel.insert(
        "OTEL_RESOURCE_ATTRIBUTES".into(),
        "deployment.environment=ci,team=infra%20ops,service.name=ignored".into(),
    );
    let mut sim = new_sim(otel, None);
    simulate(&mut sim, Scenario::FailsInDump);
    let spans = rx.spans();
    assert!(!spans.is_empty());
    for s in &spans {
        assert_eq!(s.resource["service.name"], "ci-upgrades");
        assert_eq!(s.resource["team"], "infra ops");
        assert_eq!(s.resource["deployment.environment"], "ci");
    }
    let p = &rx.points()[0];
    assert_eq!(p.resource["service.name"], "ci-upgrades");
}

/// The end of a run whose destination is down: the bundle waits in the
/// spool (entry with the run as origin), the outcome and the CI line say
/// so, the `ship dir` span under the phase carries the error, the
/// credentials stay for later; `ferry ship`'s drain then ships it with
/// the run's own settings and deletes the credentials.
#[test]
fn a_bundle_whose_destination_is_down_waits_in_the_spool() {
    use ferry_uploaders::spool::Wait;
    let mut sim = new_sim(BTreeMap::new(), None);
    sim.config.testing.backend_down = vec!["dir".into()];
    sim.config.ship.retry_budget_secs = 0;
    sim.state.plan = serde_json::to_value(&sim.config).unwrap();
    ferry::secrets::Secrets::from_env(&|k| {
        (k == "AWS_SECRET_ACCESS_KEY").then(|| "spool-test-secret-value".to_string())
    })
    .save(&sim.run)
    .unwrap();
    simulate(&mut sim, Scenario::Succeeds);

    let outcome = sim.run.load_outcome().unwrap().unwrap();
    assert_eq!(outcome.result, "succeeded", "a waiting bundle fails no run");
    assert_eq!(outcome.bundle, None);
    let ship = outcome.ship.clone().unwrap();
    assert_eq!(ship.waiting.len(), 1, "{ship:?}");
    assert!(!ship.waiting[0].parked);
    let line = ferry::shipping::waiting_line(&ship).unwrap();
    assert!(
        line.contains("waits in the spool") && line.contains("failed on purpose"),
        "{line}"
    );
    assert!(
        ferry::secrets::Secrets::saved(&sim.run),
        "credentials are needed later"
    );

    let spans = file_spans(&sim.run);
    let phase = spans.iter().find(|s| s["name"] == "ship").unwrap();
    assert_eq!(
        phase["status"]["code"], 1,
        "the bundle is safe: the phase succeeded"
    );
    let put = spans.iter().find(|s| s["name"] == "ship dir").unwrap();
    assert_eq!(put["parentSpanId"], phase["spanId"]);
    assert_eq!(put["status"]["code"], 2);
    let attrs = put["attributes"].to_string();
    assert!(
        attrs.contains(names::ATTR_SPOOL_ENTRY) && attrs.contains("Unavailable"),
        "{attrs}"
    );
    let metrics = std::fs::read_to_string(export::metrics_file(&sim.run)).unwrap();
    assert!(
        metrics.contains(names::METRIC_SPOOL_DEPTH.name),
        "{metrics}"
    );

    let spool = ferry::shipping::open(&sim.config).unwrap();
    let entries = spool.entries().unwrap();
    // The bundle, and its report page waiting for the same store.
    assert_eq!(entries.len(), 2);
    let page = entries.iter().filter(|e| e.meta.expendable).count();
    assert_eq!(page, 1);
    assert!(
        entries
            .iter()
            .any(|e| e.meta.key == ship.key && !e.meta.expendable)
    );
    assert!(
        entries
            .iter()
            .all(|e| e.meta.origin.run_dir.as_deref() == Some(sim.run.root.as_path()))
    );

    // The timer's `ferry ship`, in another process's settings: the run's
    // plan decides where it goes, and the destination is up again.
    let mut later = sim.config.clone();
    later.testing.backend_down.clear();
    let mut plan = sim.config.clone();
    plan.testing.backend_down.clear();
    let mut state = sim.run.load().unwrap();
    state.plan = serde_json::to_value(&plan).unwrap();
    sim.run.save(&state).unwrap();
    later.ship.dir = "/nonexistent/not-the-run-setting".into();
    later.state_dir = sim.run.root.parent().unwrap().join("state");
    let summary = ferry::shipping::ship_all(&later, Wait::No, false, &mut |_| {}).unwrap();
    assert_eq!(summary.report.entries.len(), 2);
    assert!(
        summary.report.entries.iter().all(|e| e.removed),
        "{:?}",
        summary.report
    );
    assert_eq!(summary.report.depth, 0);
    assert!(sim.config.ship.dir.join(&ship.key).is_file());
    assert_eq!(summary.forgotten, [sim.run.root.clone()]);
    assert!(!ferry::secrets::Secrets::saved(&sim.run));
}

/// The worker of `sim` "killed" in phase `kernel` after its command ran:
/// the state and the trace as they were at that moment, written long ago.
fn died_in_kernel(sim: &mut Sim) -> (String, String) {
    let mut at_death = None;
    in_process(sim, "boot-a", "6.1.0-old", |ctx| {
        for p in ["preflight", "locate", "upgrade"] {
            run_phase(ctx, p, ok).unwrap();
        }
        run_phase(ctx, "kernel", |c| {
            let _ = c.runner.run(&CommandSpec::new("kexec"));
            at_death = Some((
                std::fs::read(c.run.state_file()).unwrap(),
                std::fs::read(c.run.trace_file()).unwrap(),
            ));
            Ok(())
        })
        .unwrap();
    });
    let (state, trace) = at_death.unwrap();
    std::fs::write(sim.run.state_file(), state).unwrap();
    std::fs::write(sim.run.trace_file(), trace).unwrap();
    age(&sim.run);
    sim.state = sim.run.load().unwrap();
    let rec = sim.state.phase("kernel").unwrap();
    (rec.span_id.clone(), rec.boot_id.clone())
}

fn age(run: &RunDir) {
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(run.state_file())
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
}

/// `ferry __janitor` on the same boot, an hour later, in this process.
fn janitor(sim: &Sim) -> Vec<ferry::janitor::Buried> {
    janitor_except(sim, None)
}

fn janitor_except(sim: &Sim, except: Option<&std::path::Path>) -> Vec<ferry::janitor::Buried> {
    let telemetry = Telemetry::default();
    let subscriber =
        tracing_subscriber::registry().with(OtlpFileLayer::new(telemetry.spans.clone()));
    let runs = sim.run.root.parent().unwrap().to_path_buf();
    tracing::subscriber::with_default(subscriber, || {
        ferry::janitor::sweep(
            &runs,
            except,
            &telemetry,
            &ferry::janitor::Facts {
                boot_id: ferry::host::boot_id(),
                uptime: Duration::from_secs(6000),
                now: std::time::SystemTime::now(),
            },
            &|_| Box::new(FakeRunner),
        )
    })
}

#[test]
fn a_run_that_died_gets_its_root_span_and_bundle_from_the_janitor() {
    let rx = OtlpReceiver::start().unwrap();
    let mut sim = new_sim(otel_for(&rx.endpoint()), None);
    let (kernel_span, kernel_boot) = died_in_kernel(&mut sim);
    assert!(rx.spans().is_empty(), "the dead worker exported nothing");

    let buried = janitor(&sim);
    assert_eq!(buried.len(), 1, "{buried:?}");
    assert_eq!(buried[0].error_type, ferry::janitor::ERROR_DIED);
    assert!(
        buried[0].reason.contains("phase kernel"),
        "{}",
        buried[0].reason
    );
    assert!(rx.errors().is_empty(), "{:?}", rx.errors());

    let spans = rx.spans();
    assert_eq!(spans.len(), file_spans(&sim.run).len(), "every span once");
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), spans.len());
    let state = sim.run.load().unwrap();
    let root = spans
        .iter()
        .find(|s| s.name == names::SPAN_RUN)
        .expect("a root");
    assert_eq!(root.span_id, state.root_span_id);
    assert_eq!(
        root.start_unix_nano, state.start_unix_nano,
        "its original start"
    );
    assert_eq!(
        root.start_unix_nano,
        spans.iter().map(|s| s.start_unix_nano).min().unwrap()
    );
    assert_eq!(root.attributes[names::ATTR_PIPELINE_RESULT], "error");
    assert_eq!(root.attributes[names::ATTR_ERROR_TYPE], "run_died");
    assert_eq!(root.attributes[names::ATTR_RUN_OUTCOME], "died");
    assert_eq!(root.status_code, 2);
    // The phase that was running has its span, under the id its command
    // points to: no orphan anywhere.
    let kernel = spans
        .iter()
        .find(|s| s.name == "kernel")
        .expect("the died phase");
    assert_eq!(kernel.span_id, kernel_span);
    assert_eq!(kernel.status_code, 2);
    assert_eq!(kernel.attributes[names::ATTR_ERROR_TYPE], "run_died");
    assert_eq!(
        kernel.resource[names::ATTR_BOOT_ID],
        kernel_boot,
        "its own boot"
    );
    let exec = spans.iter().find(|s| s.name == "exec kexec").unwrap();
    assert_eq!(exec.parent_span_id, kernel_span);
    assert!(kernel.end_unix_nano >= exec.end_unix_nano);
    for s in spans.iter().filter(|s| s.name != names::SPAN_RUN) {
        assert!(
            ids.contains(s.parent_span_id.as_str()),
            "{} is an orphan",
            s.name
        );
    }
    for p in ["collect", "finish", "ship"] {
        assert!(spans.iter().any(|s| s.name == p), "no {p} span");
    }
    // The run is over: outcome, bundle, metrics.
    let outcome = state.outcome.expect("an outcome");
    assert_eq!(outcome.result, "died");
    assert_eq!(outcome.phase.as_deref(), Some("kernel"));
    let bundle = outcome.bundle.expect("a bundle");
    assert!(bundle.ends_with("-kernel-died.tar.gz"), "{bundle}");
    assert!(
        bundle.starts_with(&sim.config.ship.dir.display().to_string()),
        "{bundle} is in the run's ship.dir"
    );
    let errors: Vec<_> = rx
        .points()
        .into_iter()
        .filter(|p| p.metric == names::METRIC_RUN_ERRORS.name)
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].attributes[names::ATTR_ERROR_TYPE], "run_died");

    // Once only.
    let before = rx.requests().len();
    age(&sim.run);
    assert!(janitor(&sim).is_empty());
    assert_eq!(rx.requests().len(), before, "nothing sent twice");
}

#[test]
fn the_janitor_leaves_working_and_recent_runs_alone() {
    let rx = OtlpReceiver::start().unwrap();
    let mut sim = new_sim(otel_for(&rx.endpoint()), None);
    died_in_kernel(&mut sim);
    // The caller's own run: neither ended nor exported by its janitor.
    assert!(janitor_except(&sim, Some(&sim.run.root)).is_empty());
    assert!(rx.requests().is_empty(), "the caller's run is not exported");
    // A process of the run holds its lock.
    let lock = ferry::janitor::RunLock::working(&sim.run).unwrap();
    assert!(janitor(&sim).is_empty());
    drop(lock);
    // The state was written a moment ago.
    sim.run.save(&sim.run.load().unwrap()).unwrap();
    assert!(janitor(&sim).is_empty());
    assert!(sim.run.load().unwrap().outcome.is_none());
    assert!(rx.spans().iter().all(|s| s.name != names::SPAN_RUN));
    // Quiet again: now it is dead.
    age(&sim.run);
    assert_eq!(janitor(&sim).len(), 1);
}
