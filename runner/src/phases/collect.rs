//! `collect`: the evidence of this boot and the last one, into `logs/`.

use std::time::Duration;

use crate::exec::CommandSpec;

use super::{Ctx, PhaseError};

/// Run a command and keep its stdout as `logs/<file>`. Evidence that cannot
/// be had is noted in the file instead: collecting never fails a run.
pub fn capture(ctx: &Ctx<'_>, spec: CommandSpec, file: &str) {
    let path = ctx.run.logs().join(file);
    let spec = spec
        .timeout(Duration::from_secs(60))
        .log_name(file)
        .full_stdout();
    let text = match ctx.runner.run(&spec) {
        Ok(out) if out.success() => out.stdout,
        Ok(out) => format!(
            "# `{}` failed ({:?}):\n{}{}",
            out.command, out.code, out.stdout, out.stderr
        ),
        Err(e) => format!("# not collected: {e}\n"),
    };
    if let Err(e) = std::fs::write(&path, text) {
        tracing::warn!(file = %path.display(), error = %e, "cannot write collected evidence");
    }
}

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    capture(
        ctx,
        CommandSpec::new("dmesg").arg("--time-format=iso"),
        "dmesg-after-reboot.txt",
    );
    let journal = |boot: &str| {
        CommandSpec::new("journalctl").args([
            "-b",
            boot,
            "--no-pager",
            "-o",
            "short-iso-precise",
            "-n",
            "50000",
        ])
    };
    capture(ctx, journal("0"), "journal-this-boot.txt");
    if ctx.state.boot_ids.len() > 1 {
        capture(ctx, journal("-1"), "journal-previous-boot.txt");
    }
    capture(
        ctx,
        CommandSpec::new("journalctl").args([
            "-b",
            "0",
            "--no-pager",
            "-o",
            "short-iso-precise",
            "-u",
            crate::units::RESUME_UNIT,
            "-u",
            crate::units::NETFILTER_UNIT,
        ]),
        "units.txt",
    );
    Ok(())
}
