//! `assess`: the located session against the known enemies of a trip,
//! before anything is touched. Each case gets a stated policy: ferry
//! handles it (and says how), warns, or refuses with the reason and the
//! fix. Pure: it reads only the session `locate` recorded.
//!
//! | case | policy |
//! |---|---|
//! | a D-Bus connection to a bus outside the session | refuse: a bus forgets a client whose connection drops (its unique name, match rules, pending calls); a reconnection is a new client the program does not know about |
//! | a stream connection to journald's stdout socket | handled: a fresh connection with the same stream header, inherited at restore |
//! | any other stream connection leaving the session | refuse: criu cannot carry one end of a stream, and its protocol state cannot be rebuilt |
//! | a datagram socket to a named peer | criu reconnects it by name (`--ext-unix-sk`) |
//! | a datagram socket to an unnamed peer outside | refuse (criu cannot name the peer) |
//! | terminals | handled: restored in a private devpts, so pty indexes taken on the new boot do not matter |
//! | files, FIFOs, directories on tmpfs | handled: saved after the dump, put back before the restore; files above `criu.tmpfs_copy_max_mib` are refused here and again on their sizes right before the freeze |
//! | files in an on-disk `/tmp` the next boot mounts a tmpfs on (Debian 13's `tmp.mount`) | handled in `dump`, after the upgrade installed it: treated as tmpfs files (`tmp-becomes-tmpfs`) |
//! | files deleted while in use | criu keeps a copy (ghost file) up to `criu.ghost_limit_mib`; bigger ones are refused |
//! | files on mounts the task cannot see (logind's FIFO) | handled: dumped as external, a substitute inherited at restore |
//! | pids | handled: always a new pid namespace |
//! | a session restored before | refuse (nested namespaces; criu cannot dump them) |

use std::collections::BTreeMap;

use crate::config::Config;
use crate::notes::{Level, Note};
use crate::session::{FileType, Session, UnixKind, UnixSock};

use super::{Ctx, PhaseError};

pub const PHASE: &str = "assess";

const MIB: u64 = 1024 * 1024;

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    let session = ctx.session()?;
    let notes = assess(&session, ctx.config);
    for n in &notes {
        tracing::info!("{}", n.line());
    }
    let refusal = crate::notes::refusal_message(&notes);
    ctx.state.notes.extend(notes);
    match refusal {
        Some(message) => Err(PhaseError::new(
            "refused",
            format!("the session cannot be carried, nothing was touched: {message}"),
        )),
        None => Ok(()),
    }
}

/// Every note about `session`, refusals first.
pub fn assess(session: &Session, config: &Config) -> Vec<Note> {
    let mut notes = Vec::new();
    let note = |kind: &str, level: Level, msg: String| Note::new(PHASE, kind, level, msg);

    if session.already_restored {
        notes.push(
            note(
                "already-restored",
                Level::Refusal,
                format!(
                    "this session was restored by criu before and lives in nested namespaces; a second trip is not supported ({})",
                    session.already_restored_reason.clone().unwrap_or_default()
                ),
            )
            .with_fix("start the next upgrade from a fresh session (log in again)"),
        );
    }

    notes.extend(sockets(session));
    notes.extend(terminals(session));
    notes.extend(volatile(session, config));
    notes.extend(deleted(session, config));

    for inv in &session.invisible {
        notes.push(note(
            "invisible-fd",
            Level::Handled,
            format!(
                "pid {} ({}) holds {} on fd {} on a mount it cannot see: dumped as {} and handed back from a substitute at restore",
                inv.pid,
                session.comm_of(inv.pid),
                inv.path,
                inv.fd,
                inv.criu_external()
            ),
        ));
    }
    notes.push(note(
        "pid-namespace",
        Level::Handled,
        format!(
            "the {} task(s) are restored in a new pid namespace, so pids taken on the new boot do not matter; ferry prints how to enter it (nsenter)",
            session.tasks.len()
        ),
    ));
    notes.sort_by_key(|n| std::cmp::Reverse(n.level));
    notes
}

/// How a connection to a peer outside the session is carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPolicy {
    /// criu reconnects it by name (`--ext-unix-sk`).
    CriuReconnects,
    /// A journald stream: a fresh connection with the same header.
    JournalStream,
    /// D-Bus: refused.
    DBus,
    /// Anything else on a stream: refused.
    UnknownStream,
    /// A datagram to a peer without a name: refused.
    UnnamedDgram,
}

/// The policy for one external socket.
pub fn peer_policy(sock: &UnixSock) -> PeerPolicy {
    let path = sock.peer_path.as_deref();
    match sock.kind {
        UnixKind::Dgram if path.is_some() => PeerPolicy::CriuReconnects,
        UnixKind::Dgram => PeerPolicy::UnnamedDgram,
        _ if path == Some(crate::journal::STDOUT_SOCKET) => PeerPolicy::JournalStream,
        _ if is_dbus(path, sock) => PeerPolicy::DBus,
        _ => PeerPolicy::UnknownStream,
    }
}

/// The system bus, a user bus, systemd's private bus (it speaks D-Bus
/// too), an abstract bus address, or a peer held by a bus daemon.
fn is_dbus(path: Option<&str>, sock: &UnixSock) -> bool {
    let by_path = path.is_some_and(|p| {
        matches!(
            p,
            "/run/dbus/system_bus_socket"
                | "/var/run/dbus/system_bus_socket"
                | "/run/systemd/private"
        ) || p.starts_with("@/tmp/dbus-")
            || (p.starts_with("/run/user/") && p.ends_with("/bus"))
    });
    let by_holder = sock
        .peer_holders
        .iter()
        .any(|h| h.comm.starts_with("dbus-daemon") || h.comm.starts_with("dbus-broker"));
    by_path || by_holder
}

fn sockets(session: &Session) -> Vec<Note> {
    // One note per socket (an inherited socket shows on several fds).
    let mut by_inode: BTreeMap<u64, Vec<&UnixSock>> = BTreeMap::new();
    let mut unknown = false;
    for u in &session.unix_sockets {
        match u.external {
            Some(true) => by_inode.entry(u.inode).or_default().push(u),
            None if !u.listening => unknown = true,
            _ => {}
        }
    }
    let mut notes = Vec::new();
    for (inode, users) in by_inode {
        let first = users[0];
        let held = users
            .iter()
            .map(|u| format!("pid {} ({}) fd {}", u.pid, session.comm_of(u.pid), u.fd))
            .collect::<Vec<_>>()
            .join(", ");
        let peer = first.peer_path.as_deref().unwrap_or("an unnamed socket");
        let holders = if first.peer_holders.is_empty() {
            String::new()
        } else {
            format!(
                " held by {}",
                first
                    .peer_holders
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let leave = "end that program before the trip, start it outside the session (for example with systemd-run), or name another tree with --pid";
        let n = |kind: &str, level: Level, msg: String| Note::new(PHASE, kind, level, msg);
        match peer_policy(first) {
            PeerPolicy::CriuReconnects => {}
            PeerPolicy::JournalStream => {
                let id = first
                    .journal
                    .as_ref()
                    .map(|h| h.identifier.clone())
                    .unwrap_or_default();
                notes.push(n(
                    "journal-stream",
                    Level::Handled,
                    format!(
                        "{held} writes to journald's stream socket (socket {inode}, identifier {id:?}): after the reboot it gets a fresh stream connection, its header sent again; lines in flight at the dump are lost"
                    ),
                ));
            }
            PeerPolicy::DBus => notes.push(
                n(
                    "dbus-connection",
                    Level::Refusal,
                    format!(
                        "{held} holds a D-Bus connection (socket {inode}) to {peer}{holders}: a D-Bus connection cannot be resumed, the bus forgets a client whose connection drops (its unique name, match rules and pending calls)"
                    ),
                )
                .with_fix(leave),
            ),
            PeerPolicy::UnknownStream => notes.push(
                n(
                    "ext-unix-stream",
                    Level::Refusal,
                    format!(
                        "{held} holds a stream connection (socket {inode}) to {peer}{holders}, outside the session: criu cannot carry one end of a stream connection and ferry knows no way to reopen this one"
                    ),
                )
                .with_fix(leave),
            ),
            PeerPolicy::UnnamedDgram => notes.push(
                n(
                    "ext-unix-dgram-unnamed",
                    Level::Refusal,
                    format!(
                        "{held} holds a datagram socket (socket {inode}) connected to an unnamed socket{holders} outside the session: criu cannot reconnect a peer without a name"
                    ),
                )
                .with_fix(leave),
            ),
        }
    }
    if unknown {
        notes.push(
            Note::new(
                PHASE,
                "unix-peers-unknown",
                Level::Warning,
                "the kernel would not list unix socket peers (no unix_diag): connections leaving the session cannot be checked, criu will say at the dump",
            )
            .with_fix("modprobe unix_diag"),
        );
    }
    notes
}

fn terminals(session: &Session) -> Vec<Note> {
    let mut ptys: Vec<&str> = session
        .ttys
        .iter()
        .filter_map(|t| t.path.strip_prefix("/dev/"))
        .filter(|p| p.starts_with("pts/"))
        .collect();
    ptys.sort_unstable();
    ptys.dedup();
    let mut notes = Vec::new();
    let dev_tty: Vec<String> = session
        .ttys
        .iter()
        .filter(|t| t.path == "/dev/tty")
        .map(|t| format!("pid {} ({}) fd {}", t.pid, session.comm_of(t.pid), t.fd))
        .collect();
    if !dev_tty.is_empty() {
        notes.push(Note::new(
            PHASE,
            "dev-tty",
            Level::Handled,
            format!(
                "{} hold /dev/tty (sudo's use_pty keeps the user's terminal open): criu restores /dev/tty only in the task that owns the terminal's first pty, so it is dumped as external and opened again in the images as the pts it is",
                dev_tty.join(", ")
            ),
        ));
    }
    if ptys.is_empty() {
        return notes;
    }
    notes.push(Note::new(
        PHASE,
        "pty",
        Level::Handled,
        format!(
            "the session's terminals ({}) are restored in a private devpts instance, so logins that take the same pty indexes on the new boot cannot block the restore",
            ptys.join(", ")
        ),
    ));
    notes
}

fn volatile(session: &Session, config: &Config) -> Vec<Note> {
    let cap = config.criu.tmpfs_copy_max_mib.saturating_mul(MIB);
    let mut notes = Vec::new();
    for f in session.files.iter().filter(|f| f.is_volatile()) {
        let fs = f.fs_type.as_deref().unwrap_or("tmpfs");
        let users = f.describe_users(session);
        match f.file_type {
            FileType::File if f.size > cap => notes.push(
                Note::new(
                    PHASE,
                    "tmpfs-file-too-big",
                    Level::Refusal,
                    format!(
                        "{} on {fs} ({} MiB) is used by the session ({users}) and would have to be saved across the reboot, above criu.tmpfs_copy_max_mib = {}",
                        f.path,
                        f.size.div_ceil(MIB),
                        config.criu.tmpfs_copy_max_mib
                    ),
                )
                .with_fix("raise criu.tmpfs_copy_max_mib, or move the file to a disk"),
            ),
            FileType::File => notes.push(Note::new(
                PHASE,
                "tmpfs-file",
                Level::Handled,
                format!(
                    "{} is on {fs}, which the reboot empties ({users}): saved after the dump and put back, same content, mode and owner, before the restore",
                    f.path
                ),
            )),
            FileType::Fifo => notes.push(Note::new(
                PHASE,
                "tmpfs-fifo",
                Level::Handled,
                format!(
                    "FIFO {} is on {fs}, which the reboot empties ({users}): re-created with its mode and owner before the restore (its unread data is lost)",
                    f.path
                ),
            )),
            _ => notes.push(Note::new(
                PHASE,
                "tmpfs-dir",
                Level::Handled,
                format!(
                    "directory {} is on {fs}, which the reboot empties ({users}): re-created before the restore",
                    f.path
                ),
            )),
        }
    }
    notes
}

fn deleted(session: &Session, config: &Config) -> Vec<Note> {
    let cap = config.criu.ghost_limit_mib.saturating_mul(MIB);
    session
        .files
        .iter()
        .filter(|f| f.deleted && f.file_type == FileType::File)
        .map(|f| {
            let users = f.describe_users(session);
            if f.size > cap {
                Note::new(
                    PHASE,
                    "deleted-file-too-big",
                    Level::Refusal,
                    format!(
                        "{} was deleted while in use ({users}); criu would have to copy its {} MiB into the images, above criu.ghost_limit_mib = {}",
                        f.path,
                        f.size.div_ceil(MIB),
                        config.criu.ghost_limit_mib
                    ),
                )
                .with_fix("restart the program that uses it, or raise criu.ghost_limit_mib")
            } else {
                Note::new(
                    PHASE,
                    "deleted-file",
                    Level::Handled,
                    format!(
                        "{} was deleted while in use ({users}): criu copies it into the images ({} KiB)",
                        f.path,
                        f.size.div_ceil(1024)
                    ),
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{FileUse, FileUser, Holder, UnixSockState, UsedFile};

    /// The lab session (sshd, bash) with a dbus-monitor below bash.
    fn session() -> Session {
        let mut s = crate::session::tests::sample();
        let mut t = s.tasks[1].clone();
        (t.pid, t.ppid, t.comm) = (812, 466, "dbus-monitor".into());
        s.tasks.push(t);
        s.unix_sockets.clear();
        s.invisible.clear();
        s.files.clear();
        s
    }

    fn sock(pid: i32, fd: i32, kind: UnixKind, peer_path: Option<&str>, holder: &str) -> UnixSock {
        UnixSock {
            pid,
            fd,
            inode: 23456,
            path: None,
            kind,
            state: UnixSockState::Connected,
            listening: false,
            peer: Some(23457),
            external: Some(true),
            peer_path: peer_path.map(str::to_string),
            peer_holders: vec![Holder {
                pid: 301,
                comm: holder.into(),
            }],
            journal: None,
        }
    }

    fn kinds(notes: &[Note], level: Level) -> Vec<&str> {
        notes
            .iter()
            .filter(|n| n.level == level)
            .map(|n| n.kind.as_str())
            .collect()
    }

    #[test]
    fn a_dbus_connection_is_refused_naming_process_socket_and_peer() {
        let mut s = session();
        s.unix_sockets.push(sock(
            812,
            3,
            UnixKind::Stream,
            Some("/run/dbus/system_bus_socket"),
            "dbus-daemon",
        ));
        let notes = assess(&s, &Config::default());
        assert_eq!(kinds(&notes, Level::Refusal), vec!["dbus-connection"]);
        let n = &notes[0];
        for part in [
            "pid 812 (dbus-monitor) fd 3",
            "socket 23456",
            "/run/dbus/system_bus_socket",
            "held by pid 301 (dbus-daemon)",
        ] {
            assert!(n.message.contains(part), "{part}: {}", n.message);
        }
        assert!(n.fix.as_deref().unwrap().contains("systemd-run"));
        // A user bus, the private bus, an abstract address, or only the
        // holder's name: all D-Bus.
        for path in [
            Some("/run/user/1000/bus"),
            Some("/run/systemd/private"),
            Some("@/tmp/dbus-AbCd"),
        ] {
            let u = sock(1, 1, UnixKind::Stream, path, "x");
            assert_eq!(peer_policy(&u), PeerPolicy::DBus, "{path:?}");
        }
        let u = sock(1, 1, UnixKind::Stream, None, "dbus-broker");
        assert_eq!(peer_policy(&u), PeerPolicy::DBus);
    }

    #[test]
    fn a_journal_stream_is_handled_and_other_streams_refused() {
        let mut s = session();
        let mut j = sock(
            466,
            1,
            UnixKind::Stream,
            Some(crate::journal::STDOUT_SOCKET),
            "systemd-journal",
        );
        j.journal = Some(crate::journal::StreamHeader::defaults("ci-job"));
        let mut j2 = j.clone();
        j2.fd = 2;
        s.unix_sockets = vec![j, j2];
        let notes = assess(&s, &Config::default());
        assert!(kinds(&notes, Level::Refusal).is_empty(), "{notes:#?}");
        let handled: Vec<&Note> = notes
            .iter()
            .filter(|n| n.kind == "journal-stream")
            .collect();
        assert_eq!(handled.len(), 1, "one note per socket: {notes:#?}");
        assert!(
            handled[0]
                .message
                .contains("pid 466 (bash) fd 1, pid 466 (bash) fd 2")
        );
        assert!(handled[0].message.contains("\"ci-job\""));

        s.unix_sockets = vec![sock(
            466,
            5,
            UnixKind::Stream,
            Some("/tmp/agent.sock"),
            "ssh-agent",
        )];
        let notes = assess(&s, &Config::default());
        assert_eq!(kinds(&notes, Level::Refusal), vec!["ext-unix-stream"]);
        s.unix_sockets = vec![sock(466, 5, UnixKind::Seqpacket, None, "x")];
        assert_eq!(
            kinds(&assess(&s, &Config::default()), Level::Refusal),
            vec!["ext-unix-stream"]
        );
        // Datagrams: criu reconnects a named peer; an unnamed one is refused.
        s.unix_sockets = vec![sock(
            453,
            4,
            UnixKind::Dgram,
            Some("/dev/log"),
            "systemd-journal",
        )];
        assert!(kinds(&assess(&s, &Config::default()), Level::Refusal).is_empty());
        s.unix_sockets = vec![sock(453, 4, UnixKind::Dgram, None, "x")];
        assert_eq!(
            kinds(&assess(&s, &Config::default()), Level::Refusal),
            vec!["ext-unix-dgram-unnamed"]
        );
        // Peers unknown: a warning, not a refusal.
        let mut u = sock(453, 4, UnixKind::Stream, None, "x");
        u.external = None;
        s.unix_sockets = vec![u];
        assert_eq!(
            kinds(&assess(&s, &Config::default()), Level::Warning),
            vec!["unix-peers-unknown"]
        );
    }

    fn file(path: &str, file_type: FileType, fs: &str, size: u64, deleted: bool) -> UsedFile {
        UsedFile {
            path: path.into(),
            deleted,
            file_type,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            dev: 1,
            inode: 2,
            fs_type: Some(fs.into()),
            hidden_at_next_boot: false,
            users: vec![FileUser {
                pid: 466,
                how: FileUse::Fd(7),
            }],
        }
    }

    #[test]
    fn tmpfs_files_are_put_back_up_to_the_cap() {
        let mut s = session();
        let mut config = Config::default();
        config.criu.tmpfs_copy_max_mib = 1;
        s.files = vec![
            file("/run/x/fifo", FileType::Fifo, "tmpfs", 0, false),
            file("/dev/shm/data", FileType::File, "tmpfs", 5, false),
            file("/run/x", FileType::Dir, "tmpfs", 0, false),
            file("/var/tmp/on-disk", FileType::File, "ext4", 5, false),
        ];
        let notes = assess(&s, &config);
        let handled = kinds(&notes, Level::Handled);
        for k in [
            "tmpfs-fifo",
            "tmpfs-file",
            "tmpfs-dir",
            "pty",
            "pid-namespace",
        ] {
            assert!(handled.contains(&k), "{k}: {handled:?}");
        }
        let f = notes.iter().find(|n| n.kind == "tmpfs-file").unwrap();
        assert!(
            f.message.contains("/dev/shm/data")
                && f.message.contains("pid 466 (bash) has it open on fd 7")
        );
        assert!(!notes.iter().any(|n| n.message.contains("/var/tmp/on-disk")));
        s.files[1].size = 2 * MIB;
        let notes = assess(&s, &config);
        assert_eq!(kinds(&notes, Level::Refusal), vec!["tmpfs-file-too-big"]);
        assert!(notes[0].message.contains("criu.tmpfs_copy_max_mib = 1"));
    }

    #[test]
    fn deleted_files_are_carried_up_to_the_ghost_limit() {
        let mut s = session();
        let mut config = Config::default();
        config.criu.ghost_limit_mib = 2;
        s.files = vec![file(
            "/usr/lib/libfoo.so",
            FileType::File,
            "ext4",
            MIB,
            true,
        )];
        let notes = assess(&s, &config);
        assert!(kinds(&notes, Level::Handled).contains(&"deleted-file"));
        s.files[0].size = 3 * MIB;
        let notes = assess(&s, &config);
        assert_eq!(kinds(&notes, Level::Refusal), vec!["deleted-file-too-big"]);
    }

    #[test]
    fn a_restored_session_is_refused_first() {
        let mut s = session();
        s.already_restored = true;
        s.already_restored_reason = Some("NSpid 566 453".into());
        let notes = assess(&s, &Config::default());
        assert_eq!(notes[0].kind, "already-restored");
        assert!(
            crate::notes::refusal_message(&notes)
                .unwrap()
                .contains("NSpid 566 453")
        );
    }
}
