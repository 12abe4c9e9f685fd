//! `dump`: checkpoint the session with CRIU. A failed dump leaves the
//! session running (criu unfreezes it); the run then stops.

use std::time::Duration;

use crate::exec::CommandSpec;
use crate::telemetry::ids;

use super::{Ctx, PhaseError, criu_error_lines, emit_criu_errors};

pub const DUMP_LOG: &str = "dump.log";

/// The flags of every dump: TCP connections kept, external unix sockets
/// allowed, file locks, unlinked-but-open files remapped, shell job.
pub const DUMP_FLAGS: &[&str] = &[
    "--tcp-established",
    "--ext-unix-sk",
    "--file-locks",
    "--link-remap",
    "-j",
    "-v4",
];

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    let session = ctx
        .state
        .session
        .clone()
        .ok_or_else(|| PhaseError::new("state", "no located session in the run state"))?;
    let externals = if ctx.config.testing.skip_externals {
        tracing::warn!("testing.skip_externals is set: dumping without --external entries");
        Vec::new()
    } else {
        session.criu_externals()
    };
    let log = ctx.run.logs().join(DUMP_LOG);
    let mut spec = CommandSpec::new(ctx.config.criu.path.display().to_string())
        .arg("dump")
        .args(["-t".to_string(), session.root_pid.to_string()])
        .args(["-D".to_string(), ctx.run.images().display().to_string()])
        .args(["-o".to_string(), log.display().to_string()])
        .args(DUMP_FLAGS.iter().copied())
        .log_name("criu-dump")
        .timeout(Duration::from_secs(600));
    for e in &externals {
        spec = spec.args(["--external".to_string(), e.clone()]);
    }
    // The foreground `ferry upgrade` stops reading the run directory once it
    // sees this phase start (it must hold no file of it when frozen) and
    // says so; without a foreground (--pid) a short wait is enough.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ctx.run.foreground_ack().exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    ctx.state.handoff.externals = externals;
    ctx.state.handoff.dump_start_unix_nano = Some(ids::now_unix_nano());
    ctx.save()?;
    let out = ctx.runner.run(&spec)?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let errors = criu_error_lines(&text);
    emit_criu_errors(&errors);
    if !out.success() || !text.contains("Dumping finished successfully") {
        let first = errors
            .first()
            .cloned()
            .unwrap_or_else(|| "criu wrote no Error line".into());
        return Err(PhaseError::new(
            "criu_dump_failed",
            format!(
                "criu dump failed; the session was unfrozen and keeps running. First error: {first} (log: {})",
                log.display()
            ),
        ));
    }
    Ok(())
}
