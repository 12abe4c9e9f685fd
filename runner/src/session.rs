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
}

#[cfg(test)]
mod tests {
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

    fn sample() -> Session {
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
    fn json_round_trip_and_stable_names() {
        let s = sample();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["tcp"][0]["local"], "10.0.2.15:22");
        assert_eq!(json["tcp"][0]["state"], "ESTABLISHED");
        assert_eq!(json["unix_sockets"][0]["kind"], "dgram");
        assert_eq!(json["unix_sockets"][0]["state"], "connected");
        assert_eq!(json["invisible"][0]["file_type"], "fifo");
        assert_eq!(json["already_restored"], false);
        assert!(json.get("already_restored_reason").is_none());
        let back: Session = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);

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
