//! `fixups`: what the reboot took away, put back before the restore.
//!
//! * Files on mounts the session could not see (logind's session FIFO, lab
//!   trap F1) were dumped as externals; CRIU needs an open fd for each,
//!   handed over with `--inherit-fd`. A FIFO's contents do not survive a
//!   reboot, so a fresh FIFO of the same mode, kept under the run directory
//!   (never in logind's /run tree), stands in for it.
//! * journald streams were dumped as externals too: each gets a fresh
//!   connection to journald, its stream header sent first.
//! * Files, FIFOs and directories the session had on tmpfs are put back
//!   where they were (see [`crate::volatile`]).
//!
//! Every attempt runs this again; all of it is idempotent.

use std::ffi::CString;
use std::os::fd::IntoRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::session::FileType;

use super::{Ctx, PhaseError};

/// An fd opened for `criu restore --inherit-fd fd[N]:<external>`.
#[derive(Debug)]
pub struct InheritedFd {
    pub fd: i32,
    pub external: String,
}

impl Drop for InheritedFd {
    fn drop(&mut self) {
        // SAFETY: we own this fd; closing it twice is prevented by Drop running once.
        unsafe { libc::close(self.fd) };
    }
}

impl InheritedFd {
    pub fn criu_arg(&self) -> String {
        format!("fd[{}]:{}", self.fd, self.external)
    }
}

/// First fd number tried for inherited fds: far above what std or the
/// runtime use, so `dup2` never replaces one of our own.
const FIRST_FD: i32 = 100;

pub fn run(ctx: &mut Ctx<'_>) -> Result<Vec<InheritedFd>, PhaseError> {
    let done = crate::volatile::put_back(&ctx.state.handoff.volatile)
        .map_err(|e| PhaseError::new("fixups_volatile", e.to_string()))?;
    for d in done {
        tracing::info!("{d}");
        ctx.state.notes.push(crate::notes::Note::new(
            "fixups",
            "tmpfs-put-back",
            crate::notes::Level::Handled,
            d,
        ));
    }
    exec_bits(ctx)?;
    dev_tty(ctx)?;
    let mut out = substitutes(ctx)?;
    out.extend(journal_streams(
        ctx,
        out.last().map_or(FIRST_FD, |f| f.fd + 1),
    )?);
    Ok(out)
}

/// Executables the upgrade left without exec bits get them back in the
/// images (see [`crate::images`]); a later attempt finds them fixed.
fn exec_bits(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    let fixes = ctx.state.handoff.exec_fixes.clone();
    let done = crate::images::fix_exec_bits(
        ctx.runner,
        &ctx.run.images(),
        &ctx.run.root.join("images-orig"),
        &fixes,
    )?;
    record_image_fixes(ctx, "exec-bit", done, |d| {
        format!("gave back the exec bits: {d}")
    });
    Ok(())
}

/// `/dev/tty` fds dumped as external ttys get opened as their pts (see
/// [`crate::images::fix_ctty`]).
fn dev_tty(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    let fixes = ctx.state.handoff.ctty_fixes.clone();
    let done = crate::images::fix_ctty(
        ctx.runner,
        &ctx.run.images(),
        &ctx.run.root.join("images-orig"),
        &fixes,
    )?;
    record_image_fixes(ctx, "dev-tty", done, str::to_string);
    Ok(())
}

/// Each change made to the images: logged, a note of `kind` for people,
/// and kept in the handoff for the report.
fn record_image_fixes(
    ctx: &mut Ctx<'_>,
    kind: &str,
    done: Vec<String>,
    note: impl Fn(&str) -> String,
) {
    for d in done {
        tracing::info!("image fix: {d}");
        ctx.state.notes.push(crate::notes::Note::new(
            "fixups",
            kind,
            crate::notes::Level::Handled,
            note(&d),
        ));
        ctx.state.handoff.image_fixes.push(d);
    }
}

/// A fresh journald stream for each one the dump left external.
fn journal_streams(ctx: &mut Ctx<'_>, first: i32) -> Result<Vec<InheritedFd>, PhaseError> {
    let mut out = Vec::new();
    let mut next = first;
    for j in ctx.state.handoff.journal.clone() {
        let fd = crate::journal::connect(Path::new(crate::journal::STDOUT_SOCKET), &j.header)
            .map_err(|e| {
                PhaseError::new(
                    "fixups_journal",
                    format!(
                        "cannot open a journald stream for {} ({}): {e} (is systemd-journald running?)",
                        j.users,
                        crate::journal::STDOUT_SOCKET
                    ),
                )
            })?;
        let target = inheritable(fd.into_raw_fd(), next)?;
        next = target + 1;
        let note = format!(
            "{} gets a fresh journald stream (identifier {:?}{})",
            j.users,
            j.header.identifier,
            if j.header.from_journald {
                ", header as journald recorded it"
            } else {
                ", systemd-cat's default header"
            }
        );
        tracing::info!(fd = target, "{note}");
        ctx.state.notes.push(crate::notes::Note::new(
            "fixups",
            "journal-stream",
            crate::notes::Level::Handled,
            note,
        ));
        out.push(InheritedFd {
            fd: target,
            external: format!("socket:[{}]", j.inode),
        });
    }
    Ok(out)
}

/// Move `fd` to the lowest free number from `from`, without `O_CLOEXEC`
/// (what lets criu inherit it).
fn inheritable(fd: i32, from: i32) -> Result<i32, PhaseError> {
    let target = free_fd_from(from);
    // SAFETY: fd is ours and valid; dup2 to a free number closes nothing.
    let rc = unsafe { libc::dup2(fd, target) };
    // SAFETY: fd is ours; the duplicate (if any) lives on as `target`.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(PhaseError::new(
            "fixups",
            format!("dup2 to fd {target}: {}", std::io::Error::last_os_error()),
        ));
    }
    Ok(target)
}

/// Substitutes for the files on mounts the session could not see.
fn substitutes(ctx: &mut Ctx<'_>) -> Result<Vec<InheritedFd>, PhaseError> {
    let Some(session) = ctx.state.session.clone() else {
        return Ok(Vec::new());
    };
    let dir = ctx.run.root.join("substitutes");
    let mut out = Vec::new();
    let mut next = FIRST_FD;
    for (i, inv) in session.invisible.iter().enumerate() {
        let external = inv.criu_external();
        if out.iter().any(|f: &InheritedFd| f.external == external) {
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            PhaseError::new("fixups", format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join(format!("{i}-{}", sanitize(&inv.path)));
        let fd = match inv.file_type {
            FileType::Fifo => open_fifo(&path, inv.mode)?,
            _ => open_file(&path, inv.mode)?,
        };
        let target = inheritable(fd, next)?;
        next = target + 1;
        tracing::info!(external = %external, original = %inv.path, substitute = %path.display(), fd = target, "substitute prepared");
        out.push(InheritedFd {
            fd: target,
            external,
        });
    }
    Ok(out)
}

fn sanitize(path: &str) -> String {
    path.trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect()
}

fn cpath(path: &Path) -> Result<CString, PhaseError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        PhaseError::new(
            "fixups",
            format!("path {} contains a NUL byte", path.display()),
        )
    })
}

fn open_fifo(path: &Path, mode: u32) -> Result<i32, PhaseError> {
    let c = cpath(path)?;
    let mode = if mode & 0o777 == 0 {
        0o600
    } else {
        mode & 0o777
    };
    // SAFETY: c is a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(PhaseError::new(
                "fixups",
                format!("mkfifo {}: {e}", path.display()),
            ));
        }
    }
    // O_RDWR on a FIFO never blocks on Linux, and keeps it open for both ends.
    open_raw(&c, path, libc::O_RDWR | libc::O_CLOEXEC)
}

fn open_file(path: &Path, mode: u32) -> Result<i32, PhaseError> {
    let c = cpath(path)?;
    let mode = if mode & 0o777 == 0 {
        0o600
    } else {
        mode & 0o777
    };
    // SAFETY: c is a valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(PhaseError::new(
            "fixups",
            format!(
                "open {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(fd)
}

fn open_raw(c: &CString, path: &Path, flags: i32) -> Result<i32, PhaseError> {
    // SAFETY: c is a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(PhaseError::new(
            "fixups",
            format!(
                "open {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(fd)
}

/// The lowest fd number >= `from` that is not open.
fn free_fd_from(from: i32) -> i32 {
    let mut fd = from;
    // SAFETY: F_GETFD on any number is harmless; -1 means not open.
    while unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
        fd += 1;
    }
    fd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_substitute_is_open_read_write_without_cloexec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("6.ref");
        let fd = open_fifo(&path, 0o600).unwrap();
        let target = free_fd_from(FIRST_FD);
        assert!(unsafe { libc::dup2(fd, target) } >= 0);
        unsafe { libc::close(fd) };
        let inherited = InheritedFd {
            fd: target,
            external: "file[95:255]".into(),
        };
        let flags = unsafe { libc::fcntl(inherited.fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, 0);
        assert_eq!(inherited.criu_arg(), format!("fd[{target}]:file[95:255]"));
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&path).unwrap().file_type().is_fifo());
    }

    #[test]
    fn sanitized_names_are_flat() {
        assert_eq!(
            sanitize("/run/systemd/sessions/6.ref"),
            "run_systemd_sessions_6.ref"
        );
    }
}
