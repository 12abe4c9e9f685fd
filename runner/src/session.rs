//! What `locate` found: the session's process tree and the open files that
//! matter to `criu dump` and to the restore. Stored in the run's
//! `state.json`, so field names are stable snake_case and every type
//! round-trips through serde.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The located session: its root, the whole tree below it, and the fds of
/// every task sorted into the kinds CRIU cares about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The pid given to `criu dump -t`.
    pub root_pid: i32,
    /// The root's comm (`Name:` of its status).
    pub root_comm: String,
    /// The root's arguments (sshd's rewritten title is one argument).
    pub root_cmdline: Vec<String>,
    /// How the root was chosen, for people: `child of sshd listener 123
    /// (...)`, `--pid`, `child of pid 1 (no sshd listener above 4711)`.
    pub how_found: String,
    /// The session was restored by CRIU before and lives in nested
    /// namespaces (lab trap F6): dumping it again fails.
    pub already_restored: bool,
    /// Why `already_restored` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub already_restored_reason: Option<String>,
    /// The root first, then its descendants breadth first.
    pub tasks: Vec<Task>,
    /// Terminals held open: `/dev/pts/N`, `/dev/ttyN`, `/dev/console`,
    /// `/dev/ptmx`, `/dev/tty`.
    pub ttys: Vec<FdRef>,
    /// Named FIFOs held open (anonymous pipes are not listed).
    pub fifos: Vec<FdRef>,
    pub unix_sockets: Vec<UnixSock>,
    pub tcp: Vec<TcpConn>,
    /// Files on mounts the holding task cannot see (lab trap F1): each one
    /// needs `--external file[MNT:INO]` at dump and an inherited fd at
    /// restore.
    pub invisible: Vec<InvisibleFd>,
    /// Every other file the tree uses: executables, file mappings, open
    /// regular files, FIFOs and directories, working directories.
    #[serde(default)]
    pub files: Vec<UsedFile>,
}

/// A file the tree uses, once per inode, with every use of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsedFile {
    /// The path the kernel shows, without ` (deleted)`.
    pub path: String,
    /// Unlinked while in use (an upgrade replaced it, or a program removed
    /// it): criu keeps a copy of it in the images.
    pub deleted: bool,
    pub file_type: FileType,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub dev: u64,
    pub inode: u64,
    /// The type of the filesystem it is on (`ext4`, `tmpfs`, ...), from
    /// the user's mountinfo; `None` when no mount matched its device.
    pub fs_type: Option<String>,
    pub users: Vec<FileUser>,
    /// On disk now, under a directory the next boot mounts a tmpfs on
    /// (Debian 13's `/tmp`): as good as gone after the reboot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden_at_next_boot: bool,
}

/// One task's use of a [`UsedFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUser {
    pub pid: i32,
    pub how: FileUse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileUse {
    /// The task's executable (`/proc/PID/exe`).
    Exe,
    /// Mapped into its memory.
    Map,
    /// Open on this fd.
    Fd(i32),
    /// Its working directory.
    Cwd,
}

impl std::fmt::Display for FileUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileUse::Exe => write!(f, "runs it"),
            FileUse::Map => write!(f, "maps it"),
            FileUse::Fd(n) => write!(f, "has it open on fd {n}"),
            FileUse::Cwd => write!(f, "works in it"),
        }
    }
}

/// Filesystems whose contents the reboot takes away.
pub const VOLATILE_FS: &[&str] = &["tmpfs", "ramfs", "devtmpfs"];

impl UsedFile {
    /// On a filesystem the reboot empties, and still reachable by its path
    /// (a deleted file is carried in the images by criu instead).
    pub fn is_volatile(&self) -> bool {
        self.can_be_put_back()
            && (self.hidden_at_next_boot
                || self
                    .fs_type
                    .as_deref()
                    .is_some_and(|fs| VOLATILE_FS.contains(&fs)))
    }

    /// A path ferry can save and make again: a file, FIFO or directory the
    /// session reaches by name (criu carries a deleted one itself).
    pub fn can_be_put_back(&self) -> bool {
        !self.deleted
            && matches!(
                self.file_type,
                FileType::File | FileType::Fifo | FileType::Dir
            )
    }

    pub fn is_exe_of(&self, pid: i32) -> bool {
        self.users
            .iter()
            .any(|u| u.pid == pid && u.how == FileUse::Exe)
    }

    /// `pid 470 runs it, pid 471 maps it`.
    pub fn describe_users(&self, session: &Session) -> String {
        self.users
            .iter()
            .map(|u| format!("pid {} ({}) {}", u.pid, session.comm_of(u.pid), u.how))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One process of the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub cmdline: Vec<String>,
    /// Real uid.
    pub uid: u32,
}

/// An fd that refers to a path (a tty or a named FIFO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FdRef {
    pub pid: i32,
    pub fd: i32,
    /// The fd's link target, e.g. `/dev/pts/0` or `/run/x/f (deleted)`.
    pub path: String,
    pub inode: u64,
    /// The mount of the open file (fdinfo `mnt_id`), when the kernel says.
    pub mnt_id: Option<u64>,
    /// Open flags (`O_*`) from fdinfo.
    pub flags: u32,
}

/// A unix socket held by a task of the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnixSock {
    pub pid: i32,
    pub fd: i32,
    pub inode: u64,
    /// Bound path; abstract names start with `@`; `None` when unbound.
    pub path: Option<String>,
    pub kind: UnixKind,
    pub state: UnixSockState,
    pub listening: bool,
    /// Inode of the connected peer, from sock_diag; `None` without a peer
    /// or when the kernel would not say.
    pub peer: Option<u64>,
    /// The peer is held by no task of the tree (CRIU needs
    /// `--ext-unix-sk`). `None` when peers could not be read at all.
    pub external: Option<bool>,
    /// The address the peer is bound to (a server's listening path shows
    /// on the sockets it accepted), when it is external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_path: Option<String>,
    /// Processes outside the tree that hold the peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_holders: Vec<Holder>,
    /// What journald knows of this stream, when the peer is journald's
    /// stdout socket: the header a fresh connection must send again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<crate::journal::StreamHeader>,
}

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: i32,
    pub comm: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.comm)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnixKind {
    Stream,
    Dgram,
    Seqpacket,
    /// Any other type code from `/proc/net/unix`.
    Other(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnixSockState {
    Unconnected,
    Connecting,
    Connected,
    Disconnecting,
    Other(u8),
}

/// A TCP socket held by a task of the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpConn {
    pub pid: i32,
    pub fd: i32,
    pub inode: u64,
    /// `127.0.0.1:22` or `[::1]:22`.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpConnState,
}

/// TCP states as the kernel names them (`ESTABLISHED`, `LISTEN`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpConnState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Unknown(u8),
}

/// An fd whose mount is not in its task's mountinfo (lab trap F1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvisibleFd {
    pub pid: i32,
    pub fd: i32,
    pub path: String,
    pub mnt_id: u64,
    pub inode: u64,
    pub file_type: FileType,
    /// Permission bits (`st_mode & 0o7777`), to re-create a FIFO.
    pub mode: u32,
    /// Open flags (`O_*`) from fdinfo.
    pub flags: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    Fifo,
    File,
    Dir,
    Other,
}

impl InvisibleFd {
    /// The CRIU name of this file: `file[<mnt_id hex>:<inode hex>]`,
    /// lowercase, as given to `--external` and `--inherit-fd`.
    pub fn criu_external(&self) -> String {
        format!("file[{:x}:{:x}]", self.mnt_id, self.inode)
    }
}

impl Session {
    /// The `--external` values `criu dump` needs, one per invisible file
    /// (deduplicated, in the order found). Lab: mnt 149, inode 0x255 →
    /// `file[95:255]`.
    pub fn criu_externals(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for fd in &self.invisible {
            let name = fd.criu_external();
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// Pids of every task, root first.
    pub fn pids(&self) -> Vec<i32> {
        self.tasks.iter().map(|t| t.pid).collect()
    }

    /// `(pid, fd)` of the fds with a handling of their own (ttys, files on
    /// mounts the task cannot see), left out of [`Session::files`].
    pub fn special_fds(&self) -> std::collections::HashSet<(i32, i32)> {
        self.invisible
            .iter()
            .map(|i| (i.pid, i.fd))
            .chain(self.ttys.iter().map(|t| (t.pid, t.fd)))
            .collect()
    }

    /// The comm of a task of the tree, or `?`.
    pub fn comm_of(&self, pid: i32) -> &str {
        self.tasks
            .iter()
            .find(|t| t.pid == pid)
            .map_or("?", |t| t.comm.as_str())
    }

    /// The executable of a task, as `locate` saw it.
    pub fn exe_of(&self, pid: i32) -> Option<&UsedFile> {
        self.files.iter().find(|f| f.is_exe_of(pid))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn invisible(pid: i32, fd: i32, mnt_id: u64, inode: u64) -> InvisibleFd {
        InvisibleFd {
            pid,
            fd,
            path: "/run/systemd/sessions/6.ref".into(),
            mnt_id,
            inode,
            file_type: FileType::Fifo,
            mode: 0o600,
            flags: 0o100001,
        }
    }

    pub(crate) fn sample() -> Session {
        Session {
            root_pid: 453,
            root_comm: "sshd".into(),
            root_cmdline: vec!["sshd: root@pts/0".into()],
            how_found: "child of sshd listener 401".into(),
            already_restored: false,
            already_restored_reason: None,
            tasks: vec![
                Task {
                    pid: 453,
                    ppid: 401,
                    comm: "sshd".into(),
                    cmdline: vec!["sshd: root@pts/0".into()],
                    uid: 0,
                },
                Task {
                    pid: 466,
                    ppid: 453,
                    comm: "bash".into(),
                    cmdline: vec!["bash".into(), "-c".into(), "loop".into()],
                    uid: 0,
                },
            ],
            ttys: vec![FdRef {
                pid: 466,
                fd: 0,
                path: "/dev/pts/0".into(),
                inode: 3,
                mnt_id: Some(25),
                flags: 0o100002,
            }],
            fifos: vec![],
            unix_sockets: vec![UnixSock {
                pid: 453,
                fd: 4,
                inode: 11999,
                path: None,
                kind: UnixKind::Dgram,
                state: UnixSockState::Connected,
                listening: false,
                peer: Some(11870),
                external: Some(true),
                peer_path: Some("/run/systemd/journal/dev-log".into()),
                peer_holders: vec![Holder {
                    pid: 230,
                    comm: "systemd-journal".into(),
                }],
                journal: None,
            }],
            tcp: vec![TcpConn {
                pid: 453,
                fd: 3,
                inode: 16450,
                local: "10.0.2.15:22".parse().unwrap(),
                remote: "10.0.2.2:59656".parse().unwrap(),
                state: TcpConnState::Established,
            }],
            invisible: vec![
                invisible(453, 8, 149, 0x255),
                invisible(466, 8, 149, 0x255),
                invisible(453, 9, 149, 0x287),
            ],
            files: vec![UsedFile {
                path: "/usr/bin/sudo".into(),
                deleted: false,
                file_type: FileType::File,
                mode: 0o4755,
                uid: 0,
                gid: 0,
                size: 281_624,
                dev: 0xfd00,
                inode: 1311,
                fs_type: Some("ext4".into()),
                hidden_at_next_boot: false,
                users: vec![
                    FileUser {
                        pid: 466,
                        how: FileUse::Exe,
                    },
                    FileUser {
                        pid: 466,
                        how: FileUse::Fd(3),
                    },
                ],
            }],
        }
    }

    #[test]
    fn criu_externals_are_lowercase_hex_and_deduplicated() {
        // The lab's F1 fd: mnt_id 149 = 0x95, inode 0x255.
        assert_eq!(
            sample().criu_externals(),
            vec!["file[95:255]", "file[95:287]"]
        );
        let mut s = sample();
        s.invisible = vec![invisible(1, 1, 0xabc, 0xdef0)];
        assert_eq!(s.criu_externals(), vec!["file[abc:def0]"]);
        s.invisible.clear();
        assert!(s.criu_externals().is_empty());
    }

    #[test]
    fn volatile_means_on_tmpfs_and_still_there() {
        let mut f = sample().files[0].clone();
        assert!(!f.is_volatile());
        f.fs_type = Some("tmpfs".into());
        assert!(f.is_volatile());
        f.deleted = true;
        assert!(!f.is_volatile(), "criu carries deleted files itself");
        f.deleted = false;
        f.file_type = FileType::Other;
        assert!(!f.is_volatile());
        f.file_type = FileType::Fifo;
        f.fs_type = None;
        assert!(!f.is_volatile());
        let s = sample();
        assert_eq!(
            s.exe_of(466).map(|f| f.path.as_str()),
            Some("/usr/bin/sudo")
        );
        assert!(s.exe_of(453).is_none());
        assert_eq!(
            s.files[0].describe_users(&s),
            "pid 466 (bash) runs it, pid 466 (bash) has it open on fd 3"
        );
    }

    #[test]
    fn json_round_trip_and_stable_names() {
        let s = sample();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["tcp"][0]["local"], "10.0.2.15:22");
        assert_eq!(json["tcp"][0]["state"], "ESTABLISHED");
        assert_eq!(json["unix_sockets"][0]["kind"], "dgram");
        assert_eq!(json["unix_sockets"][0]["state"], "connected");
        assert_eq!(json["invisible"][0]["file_type"], "fifo");
        assert_eq!(json["already_restored"], false);
        assert_eq!(json["files"][0]["users"][0]["how"], "exe");
        assert_eq!(
            json["files"][0]["users"][1]["how"],
            serde_json::json!({"fd": 3})
        );
        assert!(json.get("already_restored_reason").is_none());
        let back: Session = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, s);
        // A state written before `files` and the peer fields existed still reads.
        let mut old = json;
        old.as_object_mut().unwrap().remove("files");
        old["unix_sockets"][0]
            .as_object_mut()
            .unwrap()
            .remove("peer_path");
        let back: Session = serde_json::from_value(old).unwrap();
        assert!(back.files.is_empty());
        assert_eq!(back.unix_sockets[0].peer_path, None);

        let other = serde_json::to_value(UnixKind::Other(3)).unwrap();
        assert_eq!(other, serde_json::json!({"other": 3}));
        let v6 = serde_json::to_value(TcpConn {
            local: "[::1]:22".parse().unwrap(),
            ..s.tcp[0].clone()
        })
        .unwrap();
        assert_eq!(v6["local"], "[::1]:22");
    }
}
