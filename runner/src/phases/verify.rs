//! `verify`: the restored tree is alive and its TCP connections are
//! established again.

use crate::procfs::{Procfs, TcpState};
use crate::session::TcpConnState;

use super::{Ctx, PhaseError};

pub fn run(ctx: &mut Ctx<'_>, proc: &Procfs) -> Result<(), PhaseError> {
    let session = ctx.session()?;
    let root = ctx
        .state
        .handoff
        .restored_root_pid
        .ok_or_else(|| PhaseError::new("verify_no_root", "the restore recorded no root pid"))?;
    let stat = proc.stat(root).map_err(|e| {
        PhaseError::new(
            "verify_root_gone",
            format!("the restored session root (pid {root}) is gone: {e}"),
        )
    })?;
    if stat.state == 'Z' {
        return Err(PhaseError::new(
            "verify_root_gone",
            format!("the restored session root (pid {root}) is a zombie"),
        ));
    }
    let status = proc.status(root).map_err(|e| {
        PhaseError::new(
            "verify_root_gone",
            format!("cannot read the restored root (pid {root}): {e}"),
        )
    })?;
    if status.name != session.root_comm {
        return Err(PhaseError::new(
            "verify_wrong_root",
            format!(
                "pid {root} is `{}`, not the session root `{}`",
                status.name, session.root_comm
            ),
        ));
    }
    let live = proc.tcp(root).map_err(|e| {
        PhaseError::new(
            "verify_tcp",
            format!("cannot read TCP sockets of pid {root}: {e}"),
        )
    })?;
    let mut lost = Vec::new();
    for conn in session
        .tcp
        .iter()
        .filter(|c| c.state == TcpConnState::Established)
    {
        let back = live.iter().any(|l| {
            l.local == conn.local && l.remote == conn.remote && l.state == TcpState::Established
        });
        if !back {
            lost.push(format!("{} -> {}", conn.local, conn.remote));
        }
    }
    if !lost.is_empty() {
        return Err(PhaseError::new(
            "verify_tcp_lost",
            format!(
                "TCP connection(s) not established after the restore: {}",
                lost.join(", ")
            ),
        ));
    }
    tracing::info!(
        root,
        tasks = session.tasks.len(),
        tcp = session.tcp.len(),
        "restored session is alive"
    );
    Ok(())
}
