//! `dump`: checkpoint the session with CRIU. A failed dump leaves the
//! session running (criu unfreezes it); the run then stops.

use std::time::Duration;

use crate::exec::CommandSpec;
use crate::procfs::Procfs;
use crate::telemetry::ids;

use super::{Ctx, PhaseError, criu_error_lines, emit_criu_errors};

pub const DUMP_LOG: &str = "dump.log";

/// `criu dump` of the session into `images`, logging to `log`;
/// `leave_running` for a rehearsal.
pub fn criu_dump(
    ctx: &Ctx<'_>,
    session: &crate::session::Session,
    plan: &super::dump_plan::DumpPlan,
    images: &std::path::Path,
    log: &std::path::Path,
    leave_running: bool,
) -> CommandSpec {
    let mut spec = CommandSpec::new(ctx.config.criu.path.display().to_string())
        .arg("dump")
        .args(["-t".to_string(), session.root_pid.to_string()])
        .args(["-D".to_string(), images.display().to_string()])
        .args(["-o".to_string(), log.display().to_string()])
        .args(DUMP_FLAGS.iter().copied())
        .args(["--ghost-limit".to_string(), plan.ghost_limit.to_string()])
        .log_name(if leave_running {
            "criu-dump-rehearsal"
        } else {
            "criu-dump"
        })
        .timeout(Duration::from_secs(600));
    if leave_running {
        spec = spec.arg("--leave-running");
    }
    for e in &plan.externals {
        spec = spec.args(["--external".to_string(), e.clone()]);
    }
    spec
}

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
    // The foreground reads no more notes from here on: the rest go into
    // the outcome's summary.
    ctx.state.handoff.notes_seen = Some(ctx.state.notes.len());
    let session = ctx.session()?;
    let plan = super::dump_plan::plan(&Procfs::host(), &session, ctx.config, "dump")?;
    for n in &plan.notes {
        tracing::info!("{}", n.line());
    }
    ctx.state.notes.extend(plan.notes.clone());
    // The image fixes are made with crit after the reboot (and before an
    // in-place restore): without it neither restore could work, so the
    // trip stops here, before anything freezes.
    if (!plan.exec_fixes.is_empty() || !plan.ctty_fixes.is_empty())
        && super::preflight::which("crit").is_none()
    {
        return Err(PhaseError::new(
            "crit_missing",
            "the session's images need fixing with crit after the reboot (exec bits, /dev/tty), but crit is not installed; nothing was frozen. Fix: install crit (on Debian it comes with the criu package) and run the trip again",
        ));
    }
    volatile_fits(&plan.volatile, ctx.config.criu.tmpfs_copy_max_mib)?;
    ctx.state.handoff.volatile_at_dump = Some(plan.volatile.clone());
    ctx.state.handoff.tmp_hidden_at_next_boot = plan.tmp_hidden.is_some();
    ctx.state.handoff.exec_fixes = plan.exec_fixes.clone();
    ctx.state.handoff.journal = plan.journal.clone();
    ctx.state.handoff.ctty_fixes = plan.ctty_fixes.clone();
    ctx.state.handoff.ghost_limit = Some(plan.ghost_limit);
    let log = ctx.run.logs().join(DUMP_LOG);
    let spec = criu_dump(ctx, &session, &plan, &ctx.run.images(), &log, false);
    wait_for_quiet_foreground(ctx.run);
    ctx.state.handoff.externals = plan.externals;
    ctx.state.handoff.dump_start_unix_nano = Some(ids::now_unix_nano());
    ctx.save()?;
    let out = ctx.runner.run(&spec)?;
    verdict(&out, &log, "the session was unfrozen and keeps running")
}

/// Assess weighed the session's tmpfs files before the upgrade; a log the
/// job kept writing may have outgrown `criu.tmpfs_copy_max_mib` since.
/// Checked on the sizes read right before the freeze, so the trip stops
/// with the session still running rather than lose the file.
fn volatile_fits(files: &[crate::session::UsedFile], cap_mib: u64) -> Result<(), PhaseError> {
    const MIB: u64 = 1 << 20;
    let cap = cap_mib.saturating_mul(MIB);
    let Some(f) = files
        .iter()
        .find(|f| f.file_type == crate::session::FileType::File && f.size > cap)
    else {
        return Ok(());
    };
    let mib = f.size.div_ceil(MIB);
    let (what, fix) = if f.hidden_at_next_boot {
        (
            format!(
                "{} is in /tmp, which the next boot mounts a tmpfs on, and is {mib} MiB",
                f.path
            ),
            "raise criu.tmpfs_copy_max_mib, keep the on-disk /tmp (`systemctl mask tmp.mount`), or move the file out of /tmp",
        )
    } else {
        (
            format!(
                "{} on {} has grown to {mib} MiB since the session was assessed",
                f.path,
                f.fs_type.as_deref().unwrap_or("tmpfs"),
            ),
            "raise criu.tmpfs_copy_max_mib or move the file to a disk",
        )
    };
    Err(PhaseError::new(
        "tmpfs_file_too_big",
        format!(
            "{what}, above criu.tmpfs_copy_max_mib = {cap_mib}: it could not be saved across the reboot; nothing was frozen. Fix: {fix}, then run the trip again"
        ),
    ))
}

/// The foreground stops reading the run directory once it sees the dump
/// phase start (it must hold no file of it when frozen) and says so by
/// creating the ack; without a foreground (--pid) a short wait is enough.
pub fn wait_for_quiet_foreground(run: &crate::state::RunDir) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !run.foreground_ack().exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Did criu say `Dumping finished successfully`? Its error lines become
/// span events; the first one goes into the error.
pub fn verdict(
    out: &crate::exec::CommandOutput,
    log: &std::path::Path,
    after_failure: &str,
) -> Result<(), PhaseError> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors = criu_error_lines(&text);
    emit_criu_errors(&errors);
    if out.success() && text.contains("Dumping finished successfully") {
        return Ok(());
    }
    let first = super::first_cause(&errors).unwrap_or_else(|| "criu wrote no Error line".into());
    Err(PhaseError::new(
        "criu_dump_failed",
        format!(
            "criu dump failed; {after_failure}. First error: {first} (log: {})",
            log.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{FileType, UsedFile};

    fn on_tmpfs(path: &str, file_type: FileType, size: u64) -> UsedFile {
        UsedFile {
            path: path.into(),
            deleted: false,
            file_type,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            dev: 1,
            inode: 2,
            fs_type: Some("tmpfs".into()),
            hidden_at_next_boot: false,
            users: Vec::new(),
        }
    }

    /// Regression: the cap was checked on the sizes `locate` read before
    /// the upgrade; a log that grew past it since was frozen anyway.
    #[test]
    fn a_tmpfs_file_that_outgrew_the_cap_stops_the_trip_before_the_freeze() {
        let mib = 1 << 20;
        let files = [
            on_tmpfs("/run/fifo", FileType::Fifo, 0),
            on_tmpfs("/dev/shm/job.log", FileType::File, 3 * mib),
        ];
        volatile_fits(&files, 4).unwrap();
        volatile_fits(&files[..1], 0).unwrap();
        let e = volatile_fits(&files, 2).unwrap_err();
        assert_eq!(e.kind, "tmpfs_file_too_big");
        assert!(
            e.message
                .contains("/dev/shm/job.log on tmpfs has grown to 3 MiB")
                && e.message.contains("criu.tmpfs_copy_max_mib = 2")
                && e.message.contains("nothing was frozen"),
            "{}",
            e.message
        );
    }
}
