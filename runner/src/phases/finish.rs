//! `finish`: the units are disabled for later boots (never stopped: the
//! resume unit's process tree holds the session), the run is marked done.

use crate::exec::CommandSpec;
use crate::units;

use super::{Ctx, PhaseError};

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    let dir = std::path::Path::new(units::UNIT_DIR);
    if !dir.join(units::RESUME_UNIT).exists() && !dir.join(units::NETFILTER_UNIT).exists() {
        return Ok(());
    }
    // Another run's units (a later trip, when the janitor ends this one).
    if !units::written_for(&dir.join(units::RESUME_UNIT), &ctx.state.run_id)
        && !units::written_for(&dir.join(units::NETFILTER_UNIT), &ctx.state.run_id)
    {
        tracing::info!("the installed units belong to another run; left as they are");
        return Ok(());
    }
    ctx.runner
        .run(&CommandSpec::new("systemctl").args([
            "disable",
            units::RESUME_UNIT,
            units::NETFILTER_UNIT,
        ]))?
        .check()
        .map_err(|e| {
            PhaseError::new(
                "unit_disable",
                format!(
                    "cannot disable the one-shot units; they would run again at the next boot: {e}"
                ),
            )
        })?;
    Ok(())
}
