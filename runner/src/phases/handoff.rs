//! `handoff`: leave this boot. Logs of this boot are captured, the state is
//! written and synced, then the loaded kernel is started.

use crate::exec::CommandSpec;

use super::collect::capture;
use super::{Ctx, PhaseError};

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    // dmesg of the old boot must be taken now: after the kexec it is gone.
    capture(
        ctx,
        CommandSpec::new("dmesg").arg("--time-format=iso"),
        "dmesg-before-reboot.txt",
    );
    ctx.save()?;
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let spec = if crate::host::systemd_running() {
        // --no-block: the job is queued and this span closes before the
        // shutdown stops the worker, so no span is open across the kexec.
        CommandSpec::new("systemctl").args(["--no-block", "kexec"])
    } else {
        CommandSpec::new("kexec").arg("-e")
    };
    ctx.runner.run(&spec)?.check().map_err(|e| {
        PhaseError::new(
            "kexec_failed",
            format!("the reboot into the new kernel did not start: {e}"),
        )
    })?;
    Ok(())
}
