//! `restore`: `criu restore` in a new pid and mount namespace.
//!
//! criu is started without `-d` through `unshare --fork`, so criu itself is
//! pid 1 of the new pid namespace and stays there, reaping, for as long as
//! the session lives. Its parent chain (unshare, then `ferry resume`, the
//! unit's main process) must outlive the session too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs::Procfs;
use crate::telemetry::ids;

use super::fixups::InheritedFd;
use super::preflight::which;
use super::{Ctx, PhaseError, criu_error_lines, emit_criu_errors};

pub const RESTORE_LOG: &str = "restore.log";
const WINDOW_SCALING: &str = "/proc/sys/net/ipv4/tcp_window_scaling";

/// The running restore: the `unshare` child and who is who inside.
pub struct RestoreHandle {
    pub child: Child,
    pub namespace_init: i32,
    pub root: i32,
}

pub fn run(ctx: &mut Ctx<'_>, inherited: &[InheritedFd]) -> Result<RestoreHandle, PhaseError> {
    let log = ctx.run.logs().join(RESTORE_LOG);
    let has_tcp = ctx
        .state
        .session
        .as_ref()
        .is_some_and(|s| !s.tcp.is_empty());
    // Lab trap F4: a socket restored in TCP_REPAIR keeps the window scale
    // chosen at connect(); a peer that never negotiated scaling (slirp)
    // then sees a tiny window. With scaling off during the restore the
    // restored socket advertises its window unscaled.
    if has_tcp {
        let before = std::fs::read_to_string(WINDOW_SCALING)
            .unwrap_or_else(|_| "1".into())
            .trim()
            .to_string();
        if ctx.state.handoff.window_scaling_before.is_none() {
            ctx.state.handoff.window_scaling_before = Some(before);
            ctx.save()?;
        }
        set_window_scaling("0");
    }
    let result = start_and_wait(ctx, inherited, &log);
    if has_tcp {
        let before = ctx
            .state
            .handoff
            .window_scaling_before
            .clone()
            .unwrap_or_else(|| "1".into());
        set_window_scaling(&before);
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let errors = criu_error_lines(&text);
    emit_criu_errors(&errors);
    let handle = result.map_err(|e| {
        let first = errors.first().cloned().unwrap_or_default();
        if first.is_empty() {
            e
        } else {
            PhaseError::new(e.kind, format!("{} First error: {first}", e.message))
        }
    })?;
    ctx.state.handoff.restored_unix_nano = Some(ids::now_unix_nano());
    ctx.state.handoff.restored_root_pid = Some(handle.root);
    ctx.state.handoff.namespace_init_pid = Some(handle.namespace_init);
    ctx.save()?;
    Ok(handle)
}

fn set_window_scaling(value: &str) {
    if let Err(e) = std::fs::write(WINDOW_SCALING, value) {
        tracing::warn!(error = %e, value, "cannot set net.ipv4.tcp_window_scaling");
    }
}

fn start_and_wait(
    ctx: &Ctx<'_>,
    inherited: &[InheritedFd],
    log: &Path,
) -> Result<RestoreHandle, PhaseError> {
    let shim = dns_shim(&ctx.run.root.join("shim"))?;
    let criu = ctx.config.criu.path.display().to_string();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount",
        "--mount-proc",
        "--propagation",
        "slave",
        "--",
    ])
    .arg(&criu)
    .arg("restore")
    .arg("-D")
    .arg(ctx.run.images())
    .arg("-o")
    .arg(log)
    .args([
        "-v4",
        "-j",
        "--tcp-established",
        "--ext-unix-sk",
        "--file-locks",
        "--link-remap",
    ]);
    for fd in inherited {
        cmd.arg("--inherit-fd").arg(fd.criu_arg());
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    cmd.env("PATH", format!("{}:{path}", shim.display()));
    let out = std::fs::File::create(ctx.run.logs().join("criu-restore.out"))
        .map_err(|e| PhaseError::new("restore", format!("cannot create criu-restore.out: {e}")))?;
    let err = out
        .try_clone()
        .map_err(|e| PhaseError::new("restore", e.to_string()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    tracing::info!(command = ?cmd, "starting criu restore");
    let mut child = cmd.spawn().map_err(|e| {
        PhaseError::new(
            "restore_spawn",
            format!("cannot start unshare/criu: {e} (apt-get install util-linux criu)"),
        )
    })?;

    let limit = Duration::from_secs(ctx.config.criu.restore_timeout_secs.max(10));
    let started = Instant::now();
    loop {
        // The log first: a session that ends right after a good restore
        // must not count as a failed restore.
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("Restore finished successfully") {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(PhaseError::new(
                "criu_restore_failed",
                format!(
                    "criu restore failed ({status}); the images and CRIU's lock rules are kept, so the client is not reset and a later restore can still bring the session back (log: {}).",
                    log.display()
                ),
            ));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PhaseError::new(
                "criu_restore_timeout",
                format!(
                    "criu restore did not finish within {} s and was stopped (log: {}).",
                    limit.as_secs(),
                    log.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let proc = Procfs::host();
    let unshare_pid = child.id() as i32;
    let namespace_init = first_child(&proc, unshare_pid).ok_or_else(|| {
        PhaseError::new(
            "restore_verify",
            format!("criu reported success but unshare ({unshare_pid}) has no child"),
        )
    })?;
    let root = first_child(&proc, namespace_init).ok_or_else(|| {
        PhaseError::new(
            "restore_verify",
            format!("criu reported success but its namespace init ({namespace_init}) has no child"),
        )
    })?;
    Ok(RestoreHandle {
        child,
        namespace_init,
        root,
    })
}

fn first_child(proc: &Procfs, pid: i32) -> Option<i32> {
    proc.children(pid).ok()?.into_iter().min()
}

/// Lab trap F3: at restore criu lists the firewall with `iptables -L`,
/// which resolves every address; with DNS slow or down at early boot that
/// costs 40 s. The shim adds `-n` to listings and passes everything else on.
fn dns_shim(dir: &Path) -> Result<PathBuf, PhaseError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| PhaseError::new("restore", format!("cannot create {}: {e}", dir.display())))?;
    for tool in ["iptables", "ip6tables"] {
        let Some(real) = which(tool) else { continue };
        let script = format!(
            "#!/bin/sh\n# ferry: listings without DNS lookups (lab trap F3)\nfor a in \"$@\"; do case \"$a\" in -L|--list) exec {real} \"$@\" -n;; esac; done\nexec {real} \"$@\"\n",
            real = real.display()
        );
        let path = dir.join(tool);
        std::fs::write(&path, script).map_err(|e| {
            PhaseError::new("restore", format!("cannot write {}: {e}", path.display()))
        })?;
        crate::state::set_mode(&path, 0o755)
            .map_err(|e| PhaseError::new("restore", e.to_string()))?;
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_adds_numeric_to_listings_only() {
        if which("iptables").is_none() {
            return; // nothing to wrap on this machine
        }
        let dir = tempfile::tempdir().unwrap();
        let shim = dns_shim(dir.path()).unwrap();
        let text = std::fs::read_to_string(shim.join("iptables")).unwrap();
        assert!(text.contains("-L|--list) exec") && text.contains("\"$@\" -n"));
    }
}
