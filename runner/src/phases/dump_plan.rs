//! What the dump needs to know that only shows after the upgrade: the
//! session's files are read again just before criu runs.
//!
//! * A file the upgrade replaced is deleted now but still in use: criu
//!   copies it into the images (a ghost file), if `--ghost-limit` lets it.
//!   The limit is sized to the largest such file; one above
//!   `criu.ghost_limit_mib` stops the trip here, before anything freezes.
//! * dpkg makes a set-id or sticky file mode 0600 before it unlinks it (so
//!   no hard link keeps a set-uid copy alive). A process running such a
//!   program (`sudo` in every `sudo ferry upgrade`) then has a deleted
//!   executable without exec bits, and the restore fails with EACCES when
//!   criu sets it as the task's exe. Found here, fixed in the images by
//!   `prepare-restore`.
//! * journald streams get `--external unix[INO]`, to be handed a fresh
//!   connection at restore.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::notes::{Level, Note};
use crate::procfs::Procfs;
use crate::session::{FileType, Session, UsedFile};

use super::PhaseError;
use super::assess::{PeerPolicy, peer_policy};

/// criu's own default ghost limit.
pub const CRIU_DEFAULT_GHOST_LIMIT: u64 = 1024 * 1024;

const MIB: u64 = 1024 * 1024;

/// A task whose executable lost its exec bits (see module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecFix {
    pub pid: i32,
    pub path: String,
    /// `st_mode & 0o7777` now.
    pub mode_now: u32,
    /// What it was when `locate` saw it, when it did.
    pub mode_before: Option<u32>,
}

impl ExecFix {
    /// The permission bits to give the copy in the images: the old ones
    /// without set-id and sticky bits (the copy is private to the restore,
    /// and a set-uid root binary must never lie around), or read bits
    /// turned into exec bits when the old mode is unknown.
    pub fn mode_after(&self) -> u32 {
        match self.mode_before {
            Some(before) if before & 0o111 != 0 => before & 0o777,
            _ => (self.mode_now & 0o777) | ((self.mode_now & 0o444) >> 2),
        }
    }
}

/// A `/dev/tty` fd to point, in the images, at the terminal it is (see
/// [`crate::images::fix_ctty`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CttyFix {
    pub pid: i32,
    pub fd: i32,
    /// The `/dev/pts/N` it refers to.
    pub pts: u32,
}

/// A journald stream to hand a fresh connection at restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalReconnect {
    /// The session's socket inode (`socket:[INO]` in the images).
    pub inode: u64,
    pub header: crate::journal::StreamHeader,
    /// Who writes to it, for people.
    pub users: String,
}

/// The dump's extra arguments and what `prepare-restore` must fix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DumpPlan {
    /// `--external` values: invisible files, journald streams.
    pub externals: Vec<String>,
    /// `--ghost-limit` in bytes.
    pub ghost_limit: u64,
    pub exec_fixes: Vec<ExecFix>,
    pub journal: Vec<JournalReconnect>,
    pub ctty_fixes: Vec<CttyFix>,
    pub notes: Vec<Note>,
    /// The files on volatile filesystems as read now.
    pub volatile: Vec<UsedFile>,
    /// Why the next boot mounts a tmpfs on the on-disk `/tmp`, if it does.
    pub tmp_hidden: Option<String>,
}

/// Read the session's files again and plan the dump. An error means the
/// dump must not start (nothing is frozen yet).
pub fn plan(
    proc: &Procfs,
    session: &Session,
    config: &Config,
    phase: &str,
) -> Result<DumpPlan, PhaseError> {
    let now =
        crate::filescan::scan(proc, &session.pids(), &session.special_fds()).map_err(|e| {
            PhaseError::new(
                "dump_plan",
                format!("cannot read the session's files again: {e}"),
            )
        })?;
    let mut plan = plan_from(session, &now, config, phase)?;
    let (externals, fixes) = ctty_plan(
        session,
        &|pid, fd| proc.fd_stat(pid, fd).ok().map(|st| (st.rdev, st.dev)),
        &|pid| proc.stat(pid).ok().and_then(|st| st.ctty_pts()),
    )?;
    plan.externals.extend(externals);
    plan.ctty_fixes = fixes;
    let mut now = now;
    let hides = crate::next_boot::tmp_becomes_tmpfs(std::path::Path::new("/"));
    let sockets: Vec<String> = session
        .unix_sockets
        .iter()
        .filter_map(|u| u.path.clone())
        .collect();
    plan.notes
        .extend(mark_hidden_tmp(&mut now, &sockets, hides.as_deref(), phase));
    plan.volatile = now.into_iter().filter(UsedFile::is_volatile).collect();
    plan.tmp_hidden = hides;
    Ok(plan)
}

/// When the next boot mounts a tmpfs on `/tmp` (`why`, from
/// [`crate::next_boot`]), the session's files in the on-disk `/tmp` are
/// as good as gone: marked to be saved after the dump and put back before
/// the restore, like its tmpfs files.
pub fn mark_hidden_tmp(
    files: &mut [UsedFile],
    socket_paths: &[String],
    why: Option<&str>,
    phase: &str,
) -> Option<Note> {
    let why = why?;
    let mut marked = Vec::new();
    let below_tmp = |p: &str| crate::next_boot::below_tmp(std::path::Path::new(p));
    for f in files.iter_mut() {
        // Deleted files (criu carries them) and sockets stay as they are.
        if below_tmp(&f.path) && f.can_be_put_back() && !f.is_volatile() {
            f.hidden_at_next_boot = true;
            marked.push(f.path.clone());
        }
    }
    // Sockets the session bound in a directory under /tmp: criu binds them
    // again, into a directory `prepare-restore` saves to be re-created.
    marked.extend(
        socket_paths
            .iter()
            .filter(|p| {
                std::path::Path::new(p)
                    .parent()
                    .is_some_and(crate::next_boot::below_tmp)
            })
            .map(|p| format!("socket {p}")),
    );
    if marked.is_empty() {
        return None;
    }
    const SHOWN: usize = 5;
    let more = marked.len().saturating_sub(SHOWN);
    let mut list = marked[..marked.len().min(SHOWN)].join(", ");
    if more > 0 {
        list.push_str(&format!(" and {more} more"));
    }
    Some(
        Note::new(
            phase,
            "tmp-becomes-tmpfs",
            Level::Handled,
            format!(
                "{why}, hiding what the session uses in the on-disk /tmp ({list}): saved after the dump and put back into the new /tmp before the restore"
            ),
        )
        .with_fix("to keep the on-disk /tmp instead, run `systemctl mask tmp.mount` before the trip"),
    )
}

/// `/dev/tty` is the opener's controlling terminal. criu restores it only
/// in the task holding that terminal's first pty (`ctty-inheritance`
/// otherwise), and `sudo` with `use_pty` (Debian's default) keeps one open
/// in two processes that hold no pty first. So each is dumped as an
/// external tty (`tty[RDEV:DEV]`), and the images are edited to open it as
/// the pts it is. The terminal of an inherited `/dev/tty` fd is the one of
/// the topmost holder (an ancestor holding the same fd number): that is
/// where it was opened.
pub fn ctty_plan(
    session: &Session,
    dev_of: &dyn Fn(i32, i32) -> Option<(u64, u64)>,
    ctty_of: &dyn Fn(i32) -> Option<u32>,
) -> Result<(Vec<String>, Vec<CttyFix>), PhaseError> {
    let holders: HashSet<(i32, i32)> = session
        .ttys
        .iter()
        .filter(|t| t.path == "/dev/tty")
        .map(|t| (t.pid, t.fd))
        .collect();
    let parent: HashMap<i32, i32> = session.tasks.iter().map(|t| (t.pid, t.ppid)).collect();
    let mut externals = Vec::new();
    let mut fixes = Vec::new();
    let mut sorted: Vec<&(i32, i32)> = holders.iter().collect();
    sorted.sort_unstable();
    for &(pid, fd) in sorted {
        let (rdev, dev) = dev_of(pid, fd).ok_or_else(|| {
            PhaseError::new(
                "dump_plan",
                format!("cannot stat /dev/tty on fd {fd} of pid {pid}"),
            )
        })?;
        let ext = format!("tty[{rdev:x}:{dev:x}]");
        if !externals.contains(&ext) {
            externals.push(ext);
        }
        let mut top = pid;
        while let Some(&pp) = parent.get(&top) {
            if !holders.contains(&(pp, fd)) {
                break;
            }
            top = pp;
        }
        let pts = ctty_of(top).ok_or_else(|| {
            PhaseError::new(
                "dev_tty_unknown",
                format!(
                    "pid {pid} ({}) holds /dev/tty on fd {fd}, but pid {top}, where it comes from, has no pty as its terminal: criu cannot restore it and ferry cannot tell which terminal it is; nothing was frozen",
                    session.comm_of(pid)
                ),
            )
        })?;
        fixes.push(CttyFix { pid, fd, pts });
    }
    Ok((externals, fixes))
}

/// [`plan`] over files already read (`now`).
pub fn plan_from(
    session: &Session,
    now: &[UsedFile],
    config: &Config,
    phase: &str,
) -> Result<DumpPlan, PhaseError> {
    let mut plan = DumpPlan {
        externals: if config.testing.skip_externals {
            tracing::warn!("testing.skip_externals is set: dumping without --external entries");
            Vec::new()
        } else {
            session.criu_externals()
        },
        ghost_limit: CRIU_DEFAULT_GHOST_LIMIT,
        ..DumpPlan::default()
    };
    let cap = config.criu.ghost_limit_mib.saturating_mul(MIB);
    let before: HashMap<&str, &UsedFile> =
        session.files.iter().map(|f| (f.path.as_str(), f)).collect();

    let mut too_big = Vec::new();
    for f in now
        .iter()
        .filter(|f| f.deleted && f.file_type == FileType::File)
    {
        if f.size > cap {
            too_big.push(format!(
                "{} ({} MiB; {})",
                f.path,
                f.size.div_ceil(MIB),
                f.describe_users(session)
            ));
            continue;
        }
        plan.ghost_limit = plan.ghost_limit.max(f.size.div_ceil(MIB) * MIB);
        let was_there = before.get(f.path.as_str()).is_some_and(|b| !b.deleted);
        if was_there {
            plan.notes.push(Note::new(
                phase,
                "replaced-by-upgrade",
                Level::Handled,
                format!(
                    "{} was replaced while in use ({}): the session keeps the old copy, which criu carries in the images ({} KiB)",
                    f.path,
                    f.describe_users(session),
                    f.size.div_ceil(1024)
                ),
            ));
        }
        for u in f
            .users
            .iter()
            .filter(|u| u.how == crate::session::FileUse::Exe)
        {
            if f.mode & 0o111 != 0 {
                continue;
            }
            let fix = ExecFix {
                pid: u.pid,
                path: f.path.clone(),
                mode_now: f.mode,
                mode_before: session.exe_of(u.pid).map(|e| e.mode),
            };
            plan.notes.push(Note::new(
                phase,
                "exec-bit",
                Level::Handled,
                format!(
                    "pid {} ({}) runs {}, which was replaced and left mode {:04o}{}: the copy in the images gets mode {:04o} before the restore, so the kernel accepts it as the task's executable",
                    u.pid,
                    session.comm_of(u.pid),
                    f.path,
                    f.mode,
                    fix.mode_before
                        .map(|m| format!(" (it was {m:04o}; dpkg does that to set-id files it replaces)"))
                        .unwrap_or_default(),
                    fix.mode_after()
                ),
            ));
            plan.exec_fixes.push(fix);
        }
    }
    if !too_big.is_empty() {
        return Err(PhaseError::new(
            "deleted_file_too_big",
            format!(
                "files deleted while in use are larger than criu.ghost_limit_mib = {} and cannot be carried; nothing was frozen: {} (restart what uses them, or raise criu.ghost_limit_mib)",
                config.criu.ghost_limit_mib,
                too_big.join(", ")
            ),
        ));
    }

    let mut seen = HashSet::new();
    for u in session
        .unix_sockets
        .iter()
        .filter(|u| u.external == Some(true))
    {
        if peer_policy(u) != PeerPolicy::JournalStream || !seen.insert(u.inode) {
            continue;
        }
        let users = session
            .unix_sockets
            .iter()
            .filter(|o| o.inode == u.inode)
            .map(|o| format!("pid {} ({}) fd {}", o.pid, session.comm_of(o.pid), o.fd))
            .collect::<Vec<_>>()
            .join(", ");
        plan.externals.push(format!("unix[{}]", u.inode));
        plan.journal.push(JournalReconnect {
            inode: u.inode,
            header: u
                .journal
                .clone()
                .unwrap_or_else(|| crate::journal::StreamHeader::defaults(session.comm_of(u.pid))),
            users,
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{FileUse, FileUser, Holder, UnixKind, UnixSock, UnixSockState};

    /// Regression: tmpfs files were saved from `locate`'s list, so a file
    /// the session opened after it (during the upgrade) was never saved
    /// and the restore on the new boot could not find it. The plan reads
    /// them again right before the freeze.
    #[test]
    fn the_plan_rereads_files_on_tmpfs() {
        let dir = tempfile::Builder::new()
            .prefix("ferry-plan-test-")
            .tempdir_in("/dev/shm")
            .expect("/dev/shm (tmpfs) is needed for this test");
        let path = dir.path().join("opened-late");
        std::fs::write(&path, b"job state").unwrap();
        let _held = std::fs::File::open(&path).unwrap();
        let mut session = crate::session::tests::sample();
        let me = std::process::id() as i32;
        session.tasks.truncate(1);
        session.tasks[0].pid = me;
        session.ttys.clear();
        session.unix_sockets.clear();
        session.tcp.clear();
        session.files.clear();
        let plan = plan(&Procfs::host(), &session, &Config::default(), "dump").unwrap();
        let found = plan
            .volatile
            .iter()
            .find(|f| std::path::Path::new(&f.path) == path)
            .unwrap_or_else(|| panic!("{} not in {:?}", path.display(), plan.volatile));
        assert_eq!(found.size, 9);
        assert!(found.is_volatile());
        assert!(plan.volatile.iter().all(UsedFile::is_volatile));
    }

    /// Debian 13 mounts a tmpfs on /tmp: the session's files in the
    /// on-disk /tmp are saved and put back like tmpfs files; deleted ones
    /// (criu carries them), sockets and files elsewhere are left alone.
    #[test]
    fn files_in_a_tmp_the_next_boot_hides_are_marked() {
        let on = |path: &str, file_type: FileType, fs: &str, deleted: bool| {
            let mut f = sudo(deleted, 0o644);
            f.path = path.into();
            f.file_type = file_type;
            f.fs_type = Some(fs.into());
            f
        };
        let mut files = vec![
            on("/tmp/job/build.log", FileType::File, "ext4", false),
            on("/tmp/job", FileType::Dir, "ext4", false),
            on("/tmp/job/fifo", FileType::Fifo, "ext4", false),
            on("/tmp/gone", FileType::File, "ext4", true),
            on("/tmp/.X11-unix/X0", FileType::Other, "ext4", false),
            on("/tmpx/other", FileType::File, "ext4", false),
            on("/var/tmp/keep", FileType::File, "ext4", false),
            on("/run/x", FileType::File, "tmpfs", false),
        ];
        let sockets = [
            "/tmp/tmux-1000/default".to_string(),
            "/tmp/top.sock".to_string(),
            "/run/user/1000/bus".to_string(),
        ];
        assert_eq!(mark_hidden_tmp(&mut files, &sockets, None, "dump"), None);
        assert!(files.iter().all(|f| !f.hidden_at_next_boot));
        let note = mark_hidden_tmp(
            &mut files,
            &sockets,
            Some("systemd's tmp.mount (…) mounts a tmpfs on /tmp at the next boot"),
            "dump",
        )
        .unwrap();
        let hidden: Vec<&str> = files
            .iter()
            .filter(|f| f.hidden_at_next_boot)
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(hidden, ["/tmp/job/build.log", "/tmp/job", "/tmp/job/fifo"]);
        assert!(
            files
                .iter()
                .filter(|f| f.hidden_at_next_boot)
                .all(UsedFile::is_volatile)
        );
        assert_eq!(note.kind, "tmp-becomes-tmpfs");
        assert_eq!(note.level, Level::Handled);
        assert!(
            note.message.contains(
                "(/tmp/job/build.log, /tmp/job, /tmp/job/fifo, socket /tmp/tmux-1000/default)"
            ),
            "{}",
            note.message
        );
        assert!(
            note.line().contains("systemctl mask tmp.mount"),
            "{}",
            note.line()
        );
    }

    /// The sample's sudo, as the upgrade leaves it or not.
    fn sudo(deleted: bool, mode: u32) -> UsedFile {
        let mut f = crate::session::tests::sample().files[0].clone();
        f.deleted = deleted;
        f.mode = mode;
        f.users[1].how = FileUse::Map;
        f
    }

    /// The upgrade replaced sudo: dpkg left the old inode 0600.
    #[test]
    fn a_replaced_set_id_executable_gets_its_exec_bits_back() {
        let mut s = crate::session::tests::sample();
        s.files = vec![sudo(false, 0o4755)];
        let now = vec![sudo(true, 0o600)];
        let plan = plan_from(&s, &now, &Config::default(), "dump").unwrap();
        assert_eq!(
            plan.exec_fixes,
            vec![ExecFix {
                pid: 466,
                path: "/usr/bin/sudo".into(),
                mode_now: 0o600,
                mode_before: Some(0o4755),
            }]
        );
        assert_eq!(plan.exec_fixes[0].mode_after(), 0o755);
        let kinds: Vec<&str> = plan.notes.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(kinds, vec!["replaced-by-upgrade", "exec-bit"]);
        assert!(
            plan.notes[1]
                .message
                .contains("left mode 0600 (it was 4755")
        );
        assert_eq!(plan.ghost_limit, CRIU_DEFAULT_GHOST_LIMIT);
        // The invisible logind FIFOs of the sample are still externals.
        assert_eq!(plan.externals, vec!["file[95:255]", "file[95:287]"]);

        // Replaced but still executable: criu's copy keeps its mode.
        let plan = plan_from(&s, &[sudo(true, 0o755)], &Config::default(), "dump").unwrap();
        assert!(plan.exec_fixes.is_empty());
    }

    /// sudo with use_pty: the parent 470 and its monitor 471 hold /dev/tty
    /// on fd 9; the monitor's own terminal is pts/1, the fd's is pts/0.
    #[test]
    fn dev_tty_fds_are_external_and_point_at_the_openers_terminal() {
        let mut s = crate::session::tests::sample();
        let mut t = s.tasks[1].clone();
        (t.pid, t.ppid, t.comm) = (470, 466, "sudo".into());
        s.tasks.push(t.clone());
        (t.pid, t.ppid) = (471, 470);
        s.tasks.push(t);
        for pid in [470, 471] {
            let mut tty = s.ttys[0].clone();
            (tty.pid, tty.fd, tty.path) = (pid, 9, "/dev/tty".into());
            s.ttys.push(tty);
        }
        let dev_of = |_: i32, _: i32| Some((0x500, 0x5));
        let ctty_of = |pid: i32| match pid {
            470 => Some(0),
            471 => Some(1),
            _ => None,
        };
        let (externals, fixes) = ctty_plan(&s, &dev_of, &ctty_of).unwrap();
        assert_eq!(externals, vec!["tty[500:5]"]);
        assert_eq!(
            fixes,
            vec![
                CttyFix {
                    pid: 470,
                    fd: 9,
                    pts: 0
                },
                CttyFix {
                    pid: 471,
                    fd: 9,
                    pts: 0
                },
            ]
        );
        // No pty behind it: refused before the dump.
        let err = ctty_plan(&s, &dev_of, &|_| None).unwrap_err();
        assert_eq!(err.kind, "dev_tty_unknown");
        assert!(
            err.message
                .contains("pid 470 (sudo) holds /dev/tty on fd 9"),
            "{}",
            err.message
        );
        // Without /dev/tty: nothing to do.
        let plain = crate::session::tests::sample();
        assert_eq!(
            ctty_plan(&plain, &dev_of, &ctty_of).unwrap(),
            (vec![], vec![])
        );
    }

    #[test]
    fn without_the_old_mode_read_bits_become_exec_bits() {
        let fix = ExecFix {
            pid: 1,
            path: "/x".into(),
            mode_now: 0o640,
            mode_before: None,
        };
        assert_eq!(fix.mode_after(), 0o750);
        let fix = ExecFix {
            mode_before: Some(0o6711),
            ..fix
        };
        assert_eq!(fix.mode_after(), 0o711);
    }

    #[test]
    fn the_ghost_limit_fits_the_largest_deleted_file_up_to_the_cap() {
        let s = crate::session::tests::sample();
        let mut lib = sudo(true, 0o644);
        lib.path = "/usr/lib/x86_64-linux-gnu/libc.so.6".into();
        lib.size = 1_922_136;
        lib.users = vec![FileUser {
            pid: 466,
            how: FileUse::Map,
        }];
        let plan = plan_from(&s, std::slice::from_ref(&lib), &Config::default(), "dump").unwrap();
        assert_eq!(plan.ghost_limit, 2 * MIB);
        assert!(plan.exec_fixes.is_empty());
        let mut config = Config::default();
        config.criu.ghost_limit_mib = 1;
        let err = plan_from(&s, &[lib], &config, "dump").unwrap_err();
        assert_eq!(err.kind, "deleted_file_too_big");
        assert!(
            err.message
                .contains("libc.so.6 (2 MiB; pid 466 (bash) maps it)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn journal_streams_become_externals_once_per_socket() {
        let mut s = crate::session::tests::sample();
        let stream = |fd| UnixSock {
            pid: 466,
            fd,
            inode: 5555,
            path: None,
            kind: UnixKind::Stream,
            state: UnixSockState::Connected,
            listening: false,
            peer: Some(5556),
            external: Some(true),
            peer_path: Some(crate::journal::STDOUT_SOCKET.into()),
            peer_holders: vec![Holder {
                pid: 230,
                comm: "systemd-journal".into(),
            }],
            journal: None,
        };
        s.unix_sockets.push(stream(1));
        s.unix_sockets.push(stream(2));
        let plan = plan_from(&s, &[], &Config::default(), "dump").unwrap();
        assert_eq!(plan.externals.last().unwrap(), "unix[5555]");
        assert_eq!(plan.journal.len(), 1);
        assert_eq!(plan.journal[0].header.identifier, "bash");
        assert_eq!(
            plan.journal[0].users,
            "pid 466 (bash) fd 1, pid 466 (bash) fd 2"
        );
        let mut config = Config::default();
        config.testing.skip_externals = true;
        let plan = plan_from(&s, &[], &config, "dump").unwrap();
        assert_eq!(plan.externals, vec!["unix[5555]"]);
    }
}
