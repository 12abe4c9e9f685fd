//! `restore`: `criu restore` in a new pid and mount namespace.
//!
//! criu is started without `-d` through `unshare --fork`, so criu itself is
//! pid 1 of the new pid namespace and stays there, reaping, for as long as
//! the session lives. Its parent chain (unshare, then `ferry resume`, the
//! unit's main process) must outlive the session too.
//!
//! The new pid namespace makes every pid of the images free, whatever the
//! new boot started. When the session has terminals, the new mount
//! namespace also gets a devpts instance of its own on `/dev/pts` before
//! criu runs: criu must re-create each pty with its old index, and on the
//! new boot a login may hold that index already (the failure
//! `tty-index-busy`); in a fresh instance every index is free. The host's
//! ptys stay where they are, the session's names (`pts/0`) stay its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs::Procfs;
use crate::telemetry::ids;

use super::fixups::InheritedFd;
use super::preflight::which;
use super::{Ctx, PhaseError, criu_error_lines, emit_criu_errors};

pub const RESTORE_LOG: &str = "restore.log";

/// How the session's terminals were restored, for the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PtyRecord {
    pub private_devpts: bool,
    /// The session's pty indexes (`pts/N`).
    pub indexes: Vec<u32>,
    /// Those of them the new boot had taken already, with who holds them.
    pub taken: Vec<String>,
}
const WINDOW_SCALING: &str = "/proc/sys/net/ipv4/tcp_window_scaling";

/// The running restore: the `unshare` child and who is who inside.
pub struct RestoreHandle {
    pub child: Child,
    pub namespace_init: i32,
    pub root: i32,
}

pub fn run(ctx: &mut Ctx<'_>, inherited: &[InheritedFd]) -> Result<RestoreHandle, PhaseError> {
    let log = ctx.run.logs().join(RESTORE_LOG);
    // `ferry resume` opened this attempt (so one that fails before criu
    // runs still counts). Each attempt's log is kept; restore.log is always
    // the latest.
    let number = ctx
        .state
        .handoff
        .restore_attempts
        .last()
        .map_or(1, |a| a.number);
    if number > 1 && log.exists() {
        let kept = format!("restore-attempt-{}.log", number - 1);
        if std::fs::rename(&log, ctx.run.logs().join(&kept)).is_ok()
            && let Some(previous) = ctx
                .state
                .handoff
                .restore_attempts
                .iter_mut()
                .find(|a| a.number == number - 1)
        {
            previous.log = kept;
        }
    }
    let indexes = pty_indexes(ctx.state.session.as_ref());
    let pty = (!indexes.is_empty()).then(|| {
        let taken = taken_ptys(&Procfs::host(), &indexes);
        let record = PtyRecord {
            private_devpts: true,
            indexes: indexes.clone(),
            taken,
        };
        let msg = if record.taken.is_empty() {
            format!("the session's ptys ({}) are restored in a private devpts instance", pty_names(&record.indexes))
        } else {
            format!(
                "the session's ptys ({}) are restored in a private devpts instance; taken on this boot already: {}",
                pty_names(&record.indexes),
                record.taken.join(", ")
            )
        };
        tracing::info!("{msg}");
        ctx.state.notes.push(crate::notes::Note::new("restore", "pty", crate::notes::Level::Handled, msg));
        record
    });
    ctx.state.handoff.pty = pty;
    ctx.save()?;
    if !ctx.config.testing.before_restore.trim().is_empty() {
        tracing::warn!(command = %ctx.config.testing.before_restore, "testing.before_restore is set: running it");
        let _ = ctx.runner.run(
            &crate::exec::CommandSpec::new("sh")
                .args(["-c", ctx.config.testing.before_restore.as_str()])
                .log_name("testing-before-restore"),
        );
    }
    let result = restore_once(ctx, inherited, &log, !indexes.is_empty());
    if let Some(a) = ctx.state.handoff.restore_attempts.last_mut() {
        a.end_unix_nano = Some(ids::now_unix_nano());
        a.error = result.as_ref().err().map(|e| e.message.clone());
    }
    ctx.save()?;
    result
}

fn restore_once(
    ctx: &mut Ctx<'_>,
    inherited: &[InheritedFd],
    log: &Path,
    private_devpts: bool,
) -> Result<RestoreHandle, PhaseError> {
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
    let result = start_and_wait(ctx, inherited, log, private_devpts);
    if has_tcp {
        let before = ctx
            .state
            .handoff
            .window_scaling_before
            .clone()
            .unwrap_or_else(|| "1".into());
        set_window_scaling(&before);
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors = criu_error_lines(&text);
    emit_criu_errors(&errors);
    let handle = result.map_err(|e| {
        let first = super::first_cause(&errors).unwrap_or_default();
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
    private_devpts: bool,
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
    ]);
    if private_devpts {
        // In the new mount namespace only; then criu becomes pid 1 by exec.
        cmd.args(["sh", "-c", &devpts_script(tty_gid()), "ferry-devpts"]);
    }
    cmd.arg(&criu)
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
            // criu is the namespace's init, unshare's child: killing only
            // unshare would leave it restoring, racing a retry of the same
            // images. Killing the init ends every task in the namespace.
            if let Some(init) = first_child(&Procfs::host(), child.id() as i32) {
                // SAFETY: kill(2) with a pid read from /proc just now: a
                // child of our own child, which cannot be reaped by anyone
                // else while unshare waits for it.
                unsafe {
                    libc::kill(init, libc::SIGKILL);
                }
            }
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

/// Mount a fresh devpts on /dev/pts, then exec the rest of the arguments.
/// `/dev/ptmx` opens the instance found at `/dev/pts` (Linux ≥ 4.7), so
/// nothing else has to move.
fn devpts_script(gid: u32) -> String {
    format!(
        "mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid={gid} devpts /dev/pts && exec \"$@\""
    )
}

/// The `tty` group (5 on Debian), which owns pty slaves.
fn tty_gid() -> u32 {
    std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("tty:"))
                .and_then(|rest| rest.split(':').nth(1))
                .and_then(|g| g.parse().ok())
        })
        .unwrap_or(5)
}

/// `pts/N` indexes the session's tasks hold.
fn pty_indexes(session: Option<&crate::session::Session>) -> Vec<u32> {
    let mut v: Vec<u32> = session
        .map(|s| {
            s.ttys
                .iter()
                .filter_map(|t| t.path.strip_prefix("/dev/pts/")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v.dedup();
    v
}

fn pty_names(indexes: &[u32]) -> String {
    indexes
        .iter()
        .map(|i| format!("pts/{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which of `indexes` are in use on this boot, and by whom.
fn taken_ptys(proc: &Procfs, indexes: &[u32]) -> Vec<String> {
    let mut out = Vec::new();
    for &i in indexes {
        let path = format!("/dev/pts/{i}");
        if !std::path::Path::new(&path).exists() {
            continue;
        }
        let mut holders = Vec::new();
        for pid in proc.pids().unwrap_or_default() {
            let holds = proc
                .fds(pid)
                .map(|fds| fds.iter().any(|(_, t)| *t == path))
                .unwrap_or(false);
            if holds {
                let comm = proc.status(pid).map(|s| s.name).unwrap_or_default();
                holders.push(format!("pid {pid} ({comm})"));
            }
            if holders.len() >= 3 {
                break;
            }
        }
        if holders.is_empty() {
            out.push(format!("pts/{i}"));
        } else {
            out.push(format!("pts/{i} by {}", holders.join(", ")));
        }
    }
    out
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
    fn devpts_is_mounted_then_criu_execs() {
        let script = devpts_script(5);
        assert!(script.starts_with("mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts && exec \"$@\""));
        // sh runs it with $0 = ferry-devpts and "$@" = criu restore ...
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                "exec \"$@\"",
                "ferry-devpts",
                "echo",
                "criu",
                "restore",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "criu restore\n");
    }

    #[test]
    fn pty_indexes_of_the_session() {
        let mut s = crate::session::tests::sample();
        let mut t = s.ttys[0].clone();
        t.path = "/dev/pts/3".into();
        s.ttys.push(t.clone());
        t.path = "/dev/ptmx".into();
        s.ttys.push(t);
        assert_eq!(pty_indexes(Some(&s)), vec![0, 3]);
        assert_eq!(pty_names(&[0, 3]), "pts/0, pts/3");
        assert!(pty_indexes(None).is_empty());
        assert!(tty_gid() > 0);
    }

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
