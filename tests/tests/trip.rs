//! The whole trip, for real, in one QEMU guest (two boots):
//!
//! 1. failing dump: `ferry upgrade` dumps without the `--external` for
//!    logind's session FIFO (lab trap F1); the dump fails, the session keeps
//!    running, ferry exits non-zero and a failure bundle holds dump.log;
//! 2. called off after the dump (test switch): the session is restored in
//!    place on the old kernel from the same images and lock rules, the
//!    client never notices more than a pause, ferry exits non-zero;
//! 3. happy path: `ferry upgrade` in a live `ssh -tt` session upgrades the
//!    guest from the local apt repo (which installs the newer kernel),
//!    checkpoints the session, kexecs, restores; the SAME connection prints
//!    the new kernel, echoes input, and `ferry upgrade` returns 0 there.
//!
//! Every case exports its trace over OTLP/HTTP to the strict test receiver
//! on this machine, which the guest reaches through a `guestfwd` (no boot
//! of its own: the trip's boots carry it). The receiver must end up with
//! each run's spans once, under one trace id, the happy trip's from both
//! boots.
//!
//! Gated by `FERRY_GUEST_TESTS=1`; the ferry binary comes from `FERRY_BIN`
//! or the workspace's target/release (`./lab test` builds it).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferry_tests::otlp_receiver::{OtlpReceiver, RxSpan};
use ferry_tests::trip::{fetch_bundle, find_bundle, install_ferry, session_script};
use ferry_tests::{BootOptions, Guest, GuestImage, Session, TELEMETRY_IP, guest_tests_enabled};
use serde_json::Value;

/// The collector the guest's ferry exports to: the receiver, via guestfwd.
fn otel_env() -> String {
    format!("OTEL_EXPORTER_OTLP_ENDPOINT=http://{TELEMETRY_IP}:4318")
}

#[test]
fn trip() -> Result<()> {
    if !guest_tests_enabled("trip") {
        return Ok(());
    }
    let rx = OtlpReceiver::start()?;
    let image = GuestImage::ensure()?;
    let guest = Guest::boot(
        &image,
        BootOptions::named("trip").guestfwd(TELEMETRY_IP, 4318, rx.port()),
    )?;
    guest.wait_ssh(Duration::from_secs(300))?;
    install_ferry(&guest)?;

    if std::env::var("SKIP_FAIL").is_err() {
        failing_dump(&guest, &rx)
            .with_context(|| format!("failing dump case\n{}", guest.diagnostics()))?;
    }
    in_place_restore(&guest, &rx)
        .with_context(|| format!("in-place restore case\n{}", guest.diagnostics()))?;
    happy_trip(&guest, &rx).with_context(|| format!("happy trip case\n{}", guest.diagnostics()))?;
    ensure!(
        rx.errors().is_empty(),
        "the receiver refused requests: {:?}",
        rx.errors()
    );
    guest.finish()?;
    Ok(())
}

fn failing_dump(guest: &Guest, rx: &OtlpReceiver) -> Result<()> {
    let t = Instant::now();
    let boot = guest_boot(guest)?;
    let mut session = Session::start(
        guest,
        &session_script(
            &format!("FERRY_TESTING_SKIP_EXTERNALS=1 {}", otel_env()),
            "--no-upgrade --allow-same-kernel",
        ),
    )?;
    let exit = session
        .wait_for("FERRY-EXIT=", Duration::from_secs(300))
        .with_context(|| session.transcript())?;
    ensure!(
        exit.text
            .contains(&format!("FERRY-EXIT=1 {}", guest.old_kernel())),
        "ferry should fail on the old kernel: {}\n{}",
        exit.text,
        session.transcript()
    );
    // The session survived the failed dump: it still ticks and echoes.
    let before = session.len();
    session.send_line("after-failed-dump")?;
    session.wait_for("echo:after-failed-dump", Duration::from_secs(30))?;
    ensure!(session.len() > before, "no output after the failed dump");
    let transcript = session.transcript();
    ensure!(
        transcript.contains("trip called off in dump"),
        "ferry should say why: {transcript}"
    );
    session.kill();

    let (_, dir) = fetch_bundle(guest, &find_bundle(guest, "-dump-called_off.tar.gz")?)?;
    let dump_log = std::fs::read_to_string(dir.join("logs/dump.log"))?;
    ensure!(
        dump_log.contains("Can't lookup mount"),
        "dump.log lacks trap F1's error"
    );
    ensure!(
        dump_log.contains("Dumping FAILED"),
        "dump.log lacks the verdict"
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?;
    ensure!(
        manifest["run"]["result"] == "called_off",
        "manifest result: {}",
        manifest["run"]
    );
    let old = guest.old_kernel().to_string();
    check_received(rx, &dir, &[(boot.as_str(), old.as_str())], None)?;
    // Nothing is left behind for the next boot.
    let enabled = guest.ssh("systemctl is-enabled ferry-resume.service")?;
    ensure!(
        !enabled.status.success(),
        "resume unit must not be enabled after a failed dump"
    );
    let loaded = guest.ssh_ok("cat /sys/kernel/kexec_loaded")?;
    ensure!(
        loaded.trim() == "0",
        "the kernel loaded for the trip must be unloaded"
    );
    eprintln!("failing dump case: {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn in_place_restore(guest: &Guest, rx: &OtlpReceiver) -> Result<()> {
    let t = Instant::now();
    let old = guest.old_kernel().to_string();
    let boot = guest_boot(guest)?;
    let mut session = Session::start(
        guest,
        &session_script(
            &format!("FERRY_TESTING_FAIL_AFTER_DUMP=1 {}", otel_env()),
            "--no-upgrade --allow-same-kernel",
        ),
    )?;
    let exit = session
        .wait_for("FERRY-EXIT=", Duration::from_secs(400))
        .with_context(|| session.transcript())?;
    ensure!(
        exit.text.contains(&format!("FERRY-EXIT=1 {old}")),
        "ferry should report the called-off trip on the old kernel: {}\n{}",
        exit.text,
        session.transcript()
    );
    let transcript = session.transcript();
    ensure!(
        transcript.contains("testing.fail_after_dump is set"),
        "ferry should say why: {transcript}"
    );
    session.send_line("after-in-place")?;
    session
        .wait_for("echo:after-in-place", Duration::from_secs(10))
        .with_context(|| session.transcript())?;
    ensure!(
        session.is_alive(),
        "the ssh client exited: {}",
        session.transcript()
    );
    let gap = session.largest_gap().context("no gap measured")?;
    eprintln!(
        "in-place restore: client downtime {:.1} s",
        gap.duration.as_secs_f64()
    );
    let locks = guest.ssh_ok("iptables-save | grep -c 0xc114 || true")?;
    ensure!(locks.trim() == "0", "CRIU lock rules left behind: {locks}");
    let loaded = guest.ssh_ok("cat /sys/kernel/kexec_loaded")?;
    ensure!(
        loaded.trim() == "0",
        "the kernel loaded for the trip must be unloaded"
    );
    let enabled = guest.ssh("systemctl is-enabled ferry-resume.service")?;
    ensure!(
        !enabled.status.success(),
        "nothing may be enabled for the next boot"
    );
    let (_, dir) = fetch_bundle(guest, &find_bundle(guest, "-called_off.tar.gz")?)?;
    let restore_log = std::fs::read_to_string(dir.join("logs/restore.log"))?;
    ensure!(
        restore_log.contains("Restore finished successfully"),
        "restore.log lacks success"
    );
    check_received(rx, &dir, &[(boot.as_str(), old.as_str())], None)?;
    session.kill();
    eprintln!("in-place restore case: {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn happy_trip(guest: &Guest, rx: &OtlpReceiver) -> Result<()> {
    let t = Instant::now();
    let old = guest.old_kernel().to_string();
    let new = guest.new_kernel().to_string();
    let boot_old = guest_boot(guest)?;
    let session = Session::start(guest, &session_script(&otel_env(), ""))?;
    session.wait_for("tick", Duration::from_secs(60))?;
    let exit = session
        .wait_for("FERRY-EXIT=", Duration::from_secs(900))
        .with_context(|| session.transcript())?;
    ensure!(
        exit.text.contains(&format!("FERRY-EXIT=0 {new}")),
        "ferry upgrade should return 0 on {new}: {}\n{}",
        exit.text,
        session.transcript()
    );
    let restored_at = Instant::now();
    session
        .wait_for(&new, Duration::from_secs(30))
        .context("no tick on the new kernel")?;
    session.send_line("ping-after-restore")?;
    let echo = session
        .wait_for("echo:ping-after-restore", Duration::from_secs(10))
        .with_context(|| session.transcript())?;
    ensure!(
        session.is_alive(),
        "the ssh client exited: {}",
        session.transcript()
    );
    let ticks_old = session
        .lines()
        .iter()
        .filter(|l| l.text.contains("tick") && l.text.contains(&old))
        .count();
    let ticks_new = session
        .lines()
        .iter()
        .filter(|l| l.text.contains("tick") && l.text.contains(&new))
        .count();
    ensure!(
        ticks_old > 0 && ticks_new > 0,
        "ticks old={ticks_old} new={ticks_new}"
    );
    let gap = session.largest_gap().context("no gap measured")?;
    eprintln!(
        "happy trip: downtime (largest client gap) {:.1} s; echo after restore in {:.2} s",
        gap.duration.as_secs_f64(),
        echo.mono
            .saturating_duration_since(restored_at)
            .as_secs_f64()
    );

    // The guest side, through a pty-less ssh (never take the session's pty).
    ensure!(
        guest.ssh_ok("uname -r")?.trim() == new,
        "guest kernel is not {new}"
    );
    let enabled = guest.ssh("systemctl is-enabled ferry-resume.service")?;
    ensure!(
        String::from_utf8_lossy(&enabled.stdout).trim() == "disabled",
        "resume unit must be disabled for later boots"
    );
    let active = guest.ssh_ok("systemctl is-active ferry-resume.service || true")?;
    ensure!(
        active.trim() == "active",
        "resume unit must keep running while the session lives: {active}"
    );
    let locks = guest.ssh_ok("iptables-save | grep -c 0xc114 || true")?;
    ensure!(locks.trim() == "0", "CRIU lock rules left behind: {locks}");
    let wscale = guest.ssh_ok("sysctl -n net.ipv4.tcp_window_scaling")?;
    ensure!(
        wscale.trim() == "1",
        "tcp_window_scaling not put back: {wscale}"
    );

    // The bundle: evidence of both boots under one trace.
    let bundle = find_bundle(guest, "-succeeded.tar.gz")?;
    let (_, dir) = fetch_bundle(guest, &bundle)?;
    // Its report page beside it, the very page inside it.
    let page = bundle.replace(".tar.gz", ".report.html");
    let beside = guest.ssh_ok(&format!("cat {page}"))?;
    ensure!(
        beside == std::fs::read_to_string(dir.join("report.html"))?,
        "{page} differs from the bundle's report.html"
    );
    for f in [
        "logs/dump.log",
        "logs/restore.log",
        "logs/dmesg-before-reboot.txt",
        "logs/dmesg-after-reboot.txt",
        "state.json",
        "trace/otlp.jsonl",
        "manifest.json",
    ] {
        ensure!(dir.join(f).is_file(), "bundle lacks {f}");
    }
    ensure!(
        std::fs::read_to_string(dir.join("logs/restore.log"))?
            .contains("Restore finished successfully")
    );
    let dmesg_before = std::fs::read_to_string(dir.join("logs/dmesg-before-reboot.txt"))?;
    let dmesg_after = std::fs::read_to_string(dir.join("logs/dmesg-after-reboot.txt"))?;
    ensure!(
        dmesg_before.contains(&old) || dmesg_before.contains("Linux version"),
        "old boot dmesg"
    );
    ensure!(
        dmesg_after.contains(&new),
        "new boot dmesg does not name {new}"
    );
    check_trace(&std::fs::read_to_string(dir.join("trace/otlp.jsonl"))?)?;
    let boot_new = guest_boot(guest)?;
    ensure!(boot_new != boot_old, "the guest did not reboot");
    check_received(
        rx,
        &dir,
        &[
            (boot_old.as_str(), old.as_str()),
            (boot_new.as_str(), new.as_str()),
        ],
        Some(&gap),
    )?;
    eprintln!("happy trip case: {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// One trace id; spans from two boots; the root last, with the earliest start.
fn check_trace(text: &str) -> Result<()> {
    let mut trace_ids = std::collections::BTreeSet::new();
    let mut boots = std::collections::BTreeSet::new();
    let mut names = Vec::new();
    let mut root: Option<(usize, u64)> = None;
    let mut earliest = u64::MAX;
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).with_context(|| format!("trace line {i}"))?;
        let rs = &v["resourceSpans"][0];
        for a in rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if a["key"] == "ferry.boot.id" {
                boots.insert(a["value"]["stringValue"].as_str().unwrap_or("").to_string());
            }
        }
        let span = &rs["scopeSpans"][0]["spans"][0];
        trace_ids.insert(span["traceId"].as_str().unwrap_or("").to_string());
        let name = span["name"].as_str().unwrap_or("").to_string();
        let start: u64 = span["startTimeUnixNano"].as_str().unwrap_or("0").parse()?;
        earliest = earliest.min(start);
        if name == "ferry.run" {
            root = Some((i, start));
        }
        names.push(name);
    }
    ensure!(
        trace_ids.len() == 1,
        "more than one trace id: {trace_ids:?}"
    );
    ensure!(
        boots.len() == 2,
        "spans should come from two boots: {boots:?}"
    );
    for phase in [
        "preflight",
        "locate",
        "upgrade",
        "kernel",
        "dump",
        "prepare-restore",
        "handoff",
        "netfilter",
        "restore",
        "verify",
        "collect",
        "finish",
    ] {
        ensure!(
            names.iter().any(|n| n == phase),
            "no span for phase {phase}: {names:?}"
        );
    }
    let Some((root_line, root_start)) = root else {
        bail!("no root span: {names:?}")
    };
    ensure!(
        root_start == earliest,
        "root span must have the earliest start"
    );
    // Only the ship phase (and its commands) may follow the root.
    for n in &names[root_line + 1..] {
        ensure!(
            n == "ship" || n.starts_with("exec "),
            "span {n} after the root"
        );
    }
    Ok(())
}

/// The guest's current boot id.
fn guest_boot(guest: &Guest) -> Result<String> {
    Ok(guest
        .ssh_ok("cat /proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// What the receiver on this machine got for the run whose bundle is
/// unpacked in `dir`: every span of the run once, all under the run's one
/// trace id; the root last (but for the ship phase, exported after it) with
/// the earliest start; each span from a boot of `boots` (boot id, kernel
/// release), and the boot the state says its phase ran in. With the trip's
/// `gap` (the session's downtime around the reboot): the spans of the old
/// boot that the worker flushed before the kexec arrived before the session
/// came back, and no span of the new boot arrived before the reboot.
fn check_received(
    rx: &OtlpReceiver,
    dir: &std::path::Path,
    boots: &[(&str, &str)],
    gap: Option<&ferry_tests::Gap>,
) -> Result<()> {
    let state: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)?;
    let run_id = state["run_id"].as_str().context("state has no run_id")?;
    let trace_id = state["trace_id"]
        .as_str()
        .context("state has no trace_id")?;
    // The last export runs after the outcome the test waited for: wait
    // for the ship phase, the last span of a run.
    let deadline = Instant::now() + Duration::from_secs(90);
    let of_run = |spans: Vec<RxSpan>| -> Vec<RxSpan> {
        spans
            .into_iter()
            .filter(|s| s.resource.get("cicd.pipeline.run.id").map(String::as_str) == Some(run_id))
            .collect()
    };
    let spans = loop {
        let spans = of_run(rx.spans());
        if spans.iter().any(|s| s.name == "ship") || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    ensure!(
        names.contains(&"ship"),
        "the receiver never got the run's last span (ship): {names:?}"
    );
    let traces: std::collections::BTreeSet<&str> =
        spans.iter().map(|s| s.trace_id.as_str()).collect();
    ensure!(
        traces.len() == 1 && traces.contains(trace_id),
        "run {run_id}: trace ids {traces:?}, state says {trace_id}"
    );
    let mut ids = std::collections::BTreeSet::new();
    for s in &spans {
        ensure!(
            ids.insert(s.span_id.as_str()),
            "span {} received twice",
            s.name
        );
    }
    // Every span of the bundle's trace file arrived (the file was bundled
    // before the ship phase ended, so that one is only at the receiver).
    let file = std::fs::read_to_string(dir.join("trace/otlp.jsonl"))?;
    for line in file.lines() {
        let v: Value = serde_json::from_str(line)?;
        let id = v["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"]
            .as_str()
            .unwrap_or("");
        ensure!(
            ids.contains(id),
            "span {id} of the trace file never arrived"
        );
    }

    let root_at = spans
        .iter()
        .position(|s| s.name == "ferry.run")
        .context("no root span received")?;
    let root = &spans[root_at];
    ensure!(root.parent_span_id.is_empty(), "the root has a parent");
    ensure!(
        root.start_unix_nano == spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0),
        "the root must start first"
    );
    let ship = spans
        .iter()
        .find(|s| s.name == "ship")
        .map(|s| s.span_id.as_str());
    for s in &spans[root_at + 1..] {
        ensure!(
            Some(s.span_id.as_str()) == ship || Some(s.parent_span_id.as_str()) == ship,
            "span {} arrived after the root",
            s.name
        );
    }
    for s in spans.iter().filter(|s| s.name != "ferry.run") {
        ensure!(
            ids.contains(s.parent_span_id.as_str()),
            "span {} is an orphan",
            s.name
        );
    }

    // The boots: what each span claims, against the guest's real ones.
    let phase_boot: std::collections::BTreeMap<&str, &str> = state["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["span_id"].as_str()?, p["boot_id"].as_str()?)))
        .collect();
    let by_id: std::collections::BTreeMap<&str, &RxSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut seen_boots = std::collections::BTreeSet::new();
    for s in &spans {
        let boot = s
            .resource
            .get("ferry.boot.id")
            .map(String::as_str)
            .unwrap_or("");
        let kernel = s
            .resource
            .get("os.kernel.release")
            .map(String::as_str)
            .unwrap_or("");
        let Some((_, real_kernel)) = boots.iter().find(|(b, _)| *b == boot) else {
            bail!("span {} claims boot {boot:?}, not one of {boots:?}", s.name);
        };
        ensure!(
            kernel == *real_kernel,
            "span {} claims kernel {kernel} on boot {boot}, which ran {real_kernel}",
            s.name
        );
        // A phase span (or a command under one) comes from its phase's boot.
        let phase_id = if phase_boot.contains_key(s.span_id.as_str()) {
            Some(s.span_id.as_str())
        } else {
            by_id
                .get(s.parent_span_id.as_str())
                .filter(|p| phase_boot.contains_key(p.span_id.as_str()))
                .map(|p| p.span_id.as_str())
        };
        if let Some(p) = phase_id {
            ensure!(
                phase_boot[p] == boot,
                "span {} claims boot {boot}, its phase ran on {}",
                s.name,
                phase_boot[p]
            );
        }
        seen_boots.insert(boot);
    }
    ensure!(
        seen_boots.len() == boots.len(),
        "spans came from {seen_boots:?}, the run had {boots:?}"
    );
    if let Some(gap) = gap {
        let (old_boot, new_boot) = (boots[0].0, boots[boots.len() - 1].0);
        let early: Vec<&str> = spans
            .iter()
            .filter(|s| s.received < gap.after.mono)
            .map(|s| s.name.as_str())
            .collect();
        for s in spans.iter().filter(|s| s.received < gap.before.mono) {
            ensure!(
                s.resource["ferry.boot.id"] != new_boot,
                "span {} of the new boot arrived before the reboot",
                s.name
            );
        }
        for phase in ["preflight", "locate", "upgrade", "kernel", "dump"] {
            ensure!(
                early.contains(&phase),
                "the flush before the kexec did not deliver {phase} (boot {old_boot}); before the session came back the receiver had {early:?}"
            );
        }
        eprintln!(
            "happy trip: {} spans at the receiver, {} of them flushed before the kexec",
            spans.len(),
            early.len()
        );
    }
    eprintln!(
        "run {run_id}: {} spans received under trace {trace_id}",
        spans.len()
    );
    Ok(())
}
