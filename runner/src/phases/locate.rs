//! `locate`: find the session root and record its process tree and the open
//! files `criu dump` will meet.
//!
//! From the invoking process, walk `PPid` up to the child of the sshd
//! listener (or of pid 1, or of a `criu` that restored the session); or take
//! `--pid`. Then record every task below the root and sort each task's fds
//! into ttys, named FIFOs, unix sockets, TCP connections and files on mounts
//! the task cannot see (lab trap F1). A session that CRIU restored before
//! is flagged (lab trap F6). Read-only: nothing here changes the system.

use std::collections::{HashMap, HashSet, VecDeque};

use tracing::{debug, trace};

use crate::procfs::{self, FdStat, FileKind, ProcError, Procfs, Status};
use crate::session::{
    FdRef, FileType, InvisibleFd, Session, Task, TcpConn, TcpConnState, UnixKind, UnixSock,
    UnixSockState,
};

/// Where the search for the session root starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The pid of the process that ran ferry: walk up to the session root.
    Invoker(i32),
    /// `--pid`: the tree rooted at this pid.
    Pid(i32),
}

/// Why no session could be located.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("no process with pid {0}: check --pid")]
    NoSuchPid(i32),
    #[error("refusing pid {pid} as the session root: {reason}")]
    Refused { pid: i32, reason: String },
    #[error("the invoking process {0} is gone")]
    InvokerGone(i32),
    #[error("walking up from pid {from}: {reason}")]
    Walk { from: i32, reason: String },
    #[error("the session root {0} exited while it was being located")]
    RootGone(i32),
    #[error("permission denied reading the fds of pid {pid}: {source}")]
    Permission {
        pid: i32,
        #[source]
        source: ProcError,
    },
    #[error(transparent)]
    Proc(#[from] ProcError),
}

impl LocateError {
    /// A line telling the user what to do about it.
    pub fn help(&self) -> Option<&'static str> {
        match self {
            LocateError::NoSuchPid(_) => Some("pass the pid of a running process to --pid"),
            LocateError::Refused { .. } => {
                Some("name the root of the session's own process tree with --pid")
            }
            LocateError::InvokerGone(_) | LocateError::Walk { .. } => {
                Some("run ferry from inside the session, or name its root with --pid")
            }
            LocateError::RootGone(_) => Some("the session ended; nothing to carry"),
            LocateError::Permission { .. } => Some("run ferry as root (sudo ferry ...)"),
            LocateError::Proc(_) => None,
        }
    }
}

/// Locates the session on this host (`/proc`).
pub fn locate(start: Start) -> Result<Session, LocateError> {
    locate_in(&Procfs::host(), start)
}

/// Locates the session in the given proc filesystem (a fixture tree in
/// tests).
pub fn locate_in(proc: &Procfs, start: Start) -> Result<Session, LocateError> {
    let (root, how_found) = match start {
        Start::Pid(pid) => {
            check_explicit_root(proc, pid)?;
            (pid, "--pid".to_string())
        }
        Start::Invoker(pid) => find_root(proc, pid)?,
    };
    debug!(root, how_found = %how_found, "session root chosen");

    let tasks = walk_tree(proc, root)?;
    let root_task = tasks.first().ok_or(LocateError::RootGone(root))?;
    let restored = restored_reason(proc, root, &root_task.status);
    if let Some(reason) = &restored {
        debug!(root, reason = %reason, "session was restored before");
    }

    let mut session = Session {
        root_pid: root,
        root_comm: root_task.status.name.clone(),
        root_cmdline: root_task.cmdline.clone(),
        how_found,
        already_restored: restored.is_some(),
        already_restored_reason: restored,
        tasks: tasks
            .iter()
            .map(|t| Task {
                pid: t.pid,
                ppid: t.status.ppid,
                comm: t.status.name.clone(),
                cmdline: t.cmdline.clone(),
                uid: t.status.uid[0],
            })
            .collect(),
        ttys: Vec::new(),
        fifos: Vec::new(),
        unix_sockets: Vec::new(),
        tcp: Vec::new(),
        invisible: Vec::new(),
        files: Vec::new(),
    };
    scan_fds(proc, &tasks, &mut session)?;
    session.files = crate::filescan::scan(proc, &session.pids(), &session.special_fds())?;
    describe_external_peers(proc, &mut session);
    debug!(
        root,
        tasks = session.tasks.len(),
        ttys = session.ttys.len(),
        fifos = session.fifos.len(),
        unix_sockets = session.unix_sockets.len(),
        tcp = session.tcp.len(),
        invisible = session.invisible.len(),
        files = session.files.len(),
        "session located"
    );
    Ok(session)
}

// ---------------------------------------------------------------------------
// Finding the root
// ---------------------------------------------------------------------------

/// How deep a `PPid` walk may go before it is called a loop.
const MAX_DEPTH: usize = 4096;

/// `--pid P`: P must exist and be an ordinary, live process other than init.
fn check_explicit_root(proc: &Procfs, pid: i32) -> Result<(), LocateError> {
    if pid <= 0 {
        return Err(LocateError::NoSuchPid(pid));
    }
    if pid == 1 {
        return Err(LocateError::Refused {
            pid,
            reason:
                "pid 1 is the system's init, not a session; dumping it would take the whole machine"
                    .into(),
        });
    }
    let status = match proc.status(pid) {
        Ok(st) => st,
        Err(e) if e.is_gone() => return Err(LocateError::NoSuchPid(pid)),
        Err(e) => return Err(e.into()),
    };
    if is_kernel_thread(proc, pid, &status)? {
        return Err(LocateError::Refused {
            pid,
            reason: format!("it is the kernel thread [{}]", status.name),
        });
    }
    if status.state == 'Z' {
        return Err(LocateError::Refused {
            pid,
            reason: "it is a zombie (it exited and waits for its parent)".into(),
        });
    }
    Ok(())
}

fn is_kernel_thread(proc: &Procfs, pid: i32, status: &Status) -> Result<bool, LocateError> {
    if status.kthread == Some(true) {
        return Ok(true);
    }
    match proc.stat(pid) {
        Ok(stat) => Ok(stat.is_kernel_thread()),
        Err(e) if e.is_gone() => Err(LocateError::NoSuchPid(pid)),
        Err(e) => Err(e.into()),
    }
}

/// Walks `PPid` up from the invoker. The root is the last process below an
/// sshd listener, below a `criu` (a restored session), or below pid 1.
fn find_root(proc: &Procfs, invoker: i32) -> Result<(i32, String), LocateError> {
    if invoker == 1 {
        return Err(LocateError::Refused {
            pid: 1,
            reason: "ferry was started by pid 1, outside any session".into(),
        });
    }
    if invoker <= 0 {
        return Err(LocateError::InvokerGone(invoker));
    }
    let walk_err = |reason: String| LocateError::Walk {
        from: invoker,
        reason,
    };
    let mut cur = invoker;
    let mut status = match proc.status(cur) {
        Ok(st) => st,
        Err(e) if e.is_gone() => return Err(LocateError::InvokerGone(invoker)),
        Err(e) => return Err(e.into()),
    };
    for _ in 0..MAX_DEPTH {
        let ppid = status.ppid;
        trace!(pid = cur, ppid, comm = %status.name, "walking up");
        if ppid <= 0 {
            return Err(walk_err(format!(
                "reached pid {cur} ({}), which has no parent, before any session root",
                status.name
            )));
        }
        if ppid == 1 {
            return Ok((
                cur,
                format!("child of pid 1 (no sshd listener above pid {invoker})"),
            ));
        }
        let parent = match proc.status(ppid) {
            Ok(st) => st,
            Err(e) if e.is_gone() => {
                return Err(walk_err(format!("ancestor {ppid} exited during the walk")));
            }
            Err(e) => return Err(e.into()),
        };
        let parent_cmd = match proc.cmdline(ppid) {
            Ok(c) => c,
            Err(e) if e.is_gone() => {
                return Err(walk_err(format!("ancestor {ppid} exited during the walk")));
            }
            Err(e) => return Err(e.into()),
        };
        if is_sshd_listener(&parent_cmd) {
            return Ok((
                cur,
                format!(
                    "child of sshd listener {ppid} ({})",
                    parent_cmd.join(" ").trim()
                ),
            ));
        }
        if parent.name == "criu" {
            return Ok((
                cur,
                format!("child of criu {ppid} (the session was restored by criu)"),
            ));
        }
        cur = ppid;
        status = parent;
    }
    Err(walk_err(format!(
        "more than {MAX_DEPTH} ancestors: the PPid chain loops"
    )))
}

/// The sshd that listens for connections: its (possibly rewritten) command
/// line names sshd and carries `-D` or `[listener]`
/// (`sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups`). The
/// per-connection `sshd: root@pts/0`, `sshd: user [priv]` and the re-exec'd
/// child (`/usr/sbin/sshd -D -R`) are not listeners.
pub fn is_sshd_listener(cmdline: &[String]) -> bool {
    let line = cmdline.join(" ");
    if !line.contains("sshd") {
        return false;
    }
    if line.contains("[listener]") {
        return true;
    }
    let short_flags = |t: &str| {
        t.strip_prefix('-')
            .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphabetic()))
            .map(|f| f.chars().collect::<Vec<_>>())
    };
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let has = |flag: char| {
        tokens
            .iter()
            .filter_map(|t| short_flags(t))
            .any(|f| f.contains(&flag))
    };
    has('D') && !has('R')
}

/// Why the root counts as already restored (lab F6), if it does: it lives
/// in a nested pid namespace, or a `criu` is among its ancestors, or its
/// pid namespace differs from pid 1's.
fn restored_reason(proc: &Procfs, root: i32, status: &Status) -> Option<String> {
    if status.nspid.len() > 1 {
        let ids: Vec<String> = status.nspid.iter().map(|p| p.to_string()).collect();
        return Some(format!(
            "pid {root} lives in a nested pid namespace (NSpid {}), as a session restored by criu does",
            ids.join(" ")
        ));
    }
    let mut cur = status.ppid;
    for _ in 0..MAX_DEPTH {
        if cur <= 1 {
            break;
        }
        match proc.status(cur) {
            Ok(st) if st.name == "criu" => {
                return Some(format!(
                    "ancestor {cur} of pid {root} is criu: the session was restored before"
                ));
            }
            Ok(st) => cur = st.ppid,
            Err(e) => {
                debug!(pid = cur, error = %e, "ancestor unreadable; stopping the criu check");
                break;
            }
        }
    }
    match (proc.ns(root, "pid"), proc.ns(1, "pid")) {
        (Ok(mine), Ok(init)) if mine != init => Some(format!(
            "pid {root} is in pid namespace {mine}, pid 1 in {init}, as a session restored by criu is"
        )),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------

struct TaskInfo {
    pid: i32,
    status: Status,
    cmdline: Vec<String>,
}

/// The root and all its descendants, breadth first. Descendants that exit
/// during the walk are left out.
fn walk_tree(proc: &Procfs, root: i32) -> Result<Vec<TaskInfo>, LocateError> {
    let read = |pid: i32| -> Result<Option<TaskInfo>, ProcError> {
        let status = match proc.status(pid) {
            Ok(st) => st,
            Err(e) if e.is_gone() => return Ok(None),
            Err(e) => return Err(e),
        };
        let cmdline = match proc.cmdline(pid) {
            Ok(c) => c,
            Err(e) if e.is_gone() => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(TaskInfo {
            pid,
            status,
            cmdline,
        }))
    };
    let root_info = read(root)?.ok_or(LocateError::RootGone(root))?;

    // Children from /proc/PID/task/*/children where the kernel has them,
    // else from one scan of every process's PPid.
    let mut by_parent: Option<HashMap<i32, Vec<i32>>> = None;
    let mut children_of = |pid: i32| -> Result<Vec<i32>, ProcError> {
        if by_parent.is_none() {
            match proc.children_from_tasks(pid) {
                Ok(Some(kids)) => return Ok(kids),
                Ok(None) => {
                    debug!("no /proc/PID/task/*/children; scanning PPid of every process");
                    let mut map: HashMap<i32, Vec<i32>> = HashMap::new();
                    for (child, parent) in proc.ppid_map()? {
                        map.entry(parent).or_default().push(child);
                    }
                    for kids in map.values_mut() {
                        kids.sort_unstable();
                    }
                    by_parent = Some(map);
                }
                Err(e) if e.is_gone() => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        Ok(by_parent
            .as_ref()
            .and_then(|m| m.get(&pid).cloned())
            .unwrap_or_default())
    };

    let mut out = vec![root_info];
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        for child in children_of(pid)? {
            if !seen.insert(child) {
                continue;
            }
            match read(child)? {
                Some(info) if info.status.ppid == pid => {
                    out.push(info);
                    queue.push_back(child);
                }
                Some(_) => trace!(pid = child, "reparented during the walk; skipped"),
                None => trace!(pid = child, "exited during the walk; skipped"),
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The fds
// ---------------------------------------------------------------------------

/// Terminal devices CRIU has to restore: `/dev/pts/N`, `/dev/ttyX`,
/// `/dev/console`, `/dev/ptmx`, `/dev/tty`.
pub fn is_tty_path(path: &str) -> bool {
    if matches!(path, "/dev/console" | "/dev/ptmx" | "/dev/tty") {
        return true;
    }
    if let Some(n) = path.strip_prefix("/dev/pts/") {
        return !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    }
    if let Some(n) = path.strip_prefix("/dev/tty") {
        return !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric());
    }
    false
}

/// The F1 test: an fd is on an invisible mount when its link target is a
/// path (`/...`; sockets, pipes and anon inodes are not) on a mount whose id
/// is not among the task's own mountinfo ids. Kernel-internal files that
/// print as paths (`/memfd:...`) are not counted. Without an `mnt_id` (very
/// old kernels) nothing can be said, and the fd is not counted.
pub fn is_invisible(target: &str, mnt_id: Option<u64>, visible: &HashSet<u64>) -> bool {
    if !target.starts_with('/') || target.starts_with("/memfd:") || target.starts_with("/dmabuf") {
        return false;
    }
    mnt_id.is_some_and(|id| !visible.contains(&id))
}

/// The mount ids of a mountinfo.
pub fn mount_ids(mounts: &[procfs::MountInfo]) -> HashSet<u64> {
    mounts.iter().map(|m| m.mount_id).collect()
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Fifo => FileType::Fifo,
        FileKind::File => FileType::File,
        FileKind::Dir => FileType::Dir,
        _ => FileType::Other,
    }
}

struct PendingSocket {
    pid: i32,
    fd: i32,
    inode: u64,
}

fn scan_fds(proc: &Procfs, tasks: &[TaskInfo], session: &mut Session) -> Result<(), LocateError> {
    let mut sockets = Vec::new();
    for task in tasks {
        if task.status.state == 'Z' {
            trace!(pid = task.pid, "zombie: no fds");
            continue;
        }
        let pid = task.pid;
        let fds = match proc.fds(pid) {
            Ok(fds) => fds,
            Err(e) if e.is_gone() => {
                debug!(pid, "exited before its fds were read");
                continue;
            }
            Err(e) if is_permission(&e) => return Err(LocateError::Permission { pid, source: e }),
            Err(e) => return Err(e.into()),
        };
        let mut visible: Option<HashSet<u64>> = None;
        for (fd, target) in fds {
            if let Some(inode) = procfs::bracket_inode(&target, "socket") {
                sockets.push(PendingSocket { pid, fd, inode });
                continue;
            }
            if !target.starts_with('/') {
                trace!(pid, fd, target = %target, "not a path; skipped");
                continue;
            }
            let info = match proc.fdinfo(pid, fd) {
                Ok(i) => i,
                Err(e) if e.is_gone() => continue,
                Err(e) => return Err(e.into()),
            };
            let st = match proc.fd_stat(pid, fd) {
                Ok(st) => st,
                // Closed between fdinfo and stat, or a dangling link in a
                // fixture tree: keep what fdinfo said.
                Err(e) if e.is_gone() => FdStat {
                    ino: info.ino.unwrap_or(0),
                    dev: 0,
                    rdev: 0,
                    kind: FileKind::Unknown,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    size: 0,
                },
                Err(e) => return Err(e.into()),
            };
            let fd_ref = || FdRef {
                pid,
                fd,
                path: target.clone(),
                inode: st.ino,
                mnt_id: info.mnt_id,
                flags: info.flags,
            };
            if is_tty_path(&target) {
                debug!(pid, fd, path = %target, "tty");
                session.ttys.push(fd_ref());
            } else if st.kind == FileKind::Fifo {
                debug!(pid, fd, path = %target, "named fifo");
                session.fifos.push(fd_ref());
            }
            if visible.is_none() {
                visible = Some(match proc.mountinfo(pid) {
                    Ok(m) => mount_ids(&m),
                    Err(e) if e.is_gone() => break,
                    Err(e) => return Err(e.into()),
                });
            }
            let Some(ids) = visible.as_ref() else {
                continue;
            };
            if is_invisible(&target, info.mnt_id, ids) {
                let mnt_id = info.mnt_id.unwrap_or_default();
                debug!(pid, fd, path = %target, mnt_id, inode = st.ino, "fd on a mount the task cannot see (F1)");
                session.invisible.push(InvisibleFd {
                    pid,
                    fd,
                    path: target.clone(),
                    mnt_id,
                    inode: st.ino,
                    file_type: file_type(st.kind),
                    mode: st.mode,
                    flags: info.flags,
                });
            }
        }
    }
    resolve_sockets(proc, &sockets, session);
    Ok(())
}

fn is_permission(e: &ProcError) -> bool {
    matches!(e, ProcError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
}

/// The socket tables of one network namespace.
#[derive(Default)]
struct NetTables {
    tcp: HashMap<u64, procfs::TcpEntry>,
    unix: HashMap<u64, procfs::UnixEntry>,
    /// Unix peers, when sock_diag could be asked (same netns as ferry).
    peers: Option<HashMap<u64, u64>>,
}

/// Looks the socket inodes up in `/proc/PID/net/{tcp,tcp6,unix}` (once per
/// network namespace) and records the TCP and unix ones.
fn resolve_sockets(proc: &Procfs, sockets: &[PendingSocket], session: &mut Session) {
    let self_net = std::fs::read_link(proc.root().join("self/ns/net"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let mut tables: HashMap<String, NetTables> = HashMap::new();
    let tree_inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).collect();

    for s in sockets {
        let key = proc
            .ns(s.pid, "net")
            .unwrap_or_else(|_| format!("pid:{}", s.pid));
        if !tables.contains_key(&key) {
            let mut t = NetTables::default();
            match proc.tcp(s.pid) {
                Ok(v) => t.tcp = v.into_iter().map(|e| (e.inode, e)).collect(),
                Err(e) => debug!(pid = s.pid, error = %e, "tcp tables unreadable"),
            }
            match proc.unix(s.pid) {
                Ok(v) => t.unix = v.into_iter().map(|e| (e.inode, e)).collect(),
                Err(e) => debug!(pid = s.pid, error = %e, "unix table unreadable"),
            }
            if self_net.as_deref() == Some(key.as_str()) {
                match procfs::unix_peers() {
                    Ok(p) => t.peers = Some(p),
                    Err(e) => debug!(error = %e, "sock_diag unavailable: unix peers unknown"),
                }
            }
            tables.insert(key.clone(), t);
        }
        let Some(t) = tables.get(&key) else { continue };
        if let Some(e) = t.tcp.get(&s.inode) {
            debug!(pid = s.pid, fd = s.fd, local = %e.local, remote = %e.remote, state = ?e.state, "tcp socket");
            session.tcp.push(TcpConn {
                pid: s.pid,
                fd: s.fd,
                inode: s.inode,
                local: e.local,
                remote: e.remote,
                state: tcp_state(e.state),
            });
        } else if let Some(e) = t.unix.get(&s.inode) {
            let peer = t.peers.as_ref().and_then(|p| p.get(&s.inode).copied());
            let external = t
                .peers
                .as_ref()
                .map(|_| peer.is_some_and(|p| !tree_inodes.contains(&p)));
            debug!(pid = s.pid, fd = s.fd, path = ?e.path, ?peer, ?external, "unix socket");
            let peer_path = match (external, peer) {
                (Some(true), Some(p)) => t.unix.get(&p).and_then(|pe| pe.path.clone()),
                _ => None,
            };
            session.unix_sockets.push(UnixSock {
                pid: s.pid,
                fd: s.fd,
                inode: s.inode,
                path: e.path.clone(),
                kind: unix_kind(e.kind),
                state: unix_state(e.state),
                listening: e.listening,
                peer,
                external,
                peer_path,
                peer_holders: Vec::new(),
                journal: None,
            });
        } else {
            trace!(
                pid = s.pid,
                fd = s.fd,
                inode = s.inode,
                "socket neither tcp nor unix"
            );
        }
    }
}

/// Who holds the far end of each external socket, and for a journald
/// stream the header it was opened with: what the policy and the
/// reconnection need, and what a refusal names.
fn describe_external_peers(proc: &Procfs, session: &mut Session) {
    let wanted: HashSet<u64> = session
        .unix_sockets
        .iter()
        .filter(|u| u.external == Some(true))
        .filter_map(|u| u.peer)
        .collect();
    if wanted.is_empty() {
        return;
    }
    let tree: HashSet<i32> = session.pids().into_iter().collect();
    let holders = socket_holders(proc, &wanted, &tree);
    for i in 0..session.unix_sockets.len() {
        let Some(peer) = session.unix_sockets[i].peer else {
            continue;
        };
        if session.unix_sockets[i].external != Some(true) {
            continue;
        }
        session.unix_sockets[i].peer_holders = holders.get(&peer).cloned().unwrap_or_default();
        if session.unix_sockets[i].peer_path.as_deref() == Some(crate::journal::STDOUT_SOCKET) {
            let pid = session.unix_sockets[i].pid;
            let header = crate::journal::find_stream(
                std::path::Path::new(crate::journal::STREAMS_DIR),
                peer,
            )
            .unwrap_or_else(|| crate::journal::StreamHeader::defaults(session.comm_of(pid)));
            session.unix_sockets[i].journal = Some(header);
        }
    }
}

/// Processes outside `tree` holding each of the socket inodes `wanted`.
fn socket_holders(
    proc: &Procfs,
    wanted: &HashSet<u64>,
    tree: &HashSet<i32>,
) -> HashMap<u64, Vec<crate::session::Holder>> {
    let mut out: HashMap<u64, Vec<crate::session::Holder>> = HashMap::new();
    let Ok(pids) = proc.pids() else {
        return out;
    };
    for pid in pids.into_iter().filter(|p| !tree.contains(p)) {
        let Ok(fds) = proc.fds(pid) else { continue };
        for (_, target) in fds {
            let Some(ino) = procfs::bracket_inode(&target, "socket") else {
                continue;
            };
            if !wanted.contains(&ino) {
                continue;
            }
            let comm = proc
                .status(pid)
                .map(|s| s.name)
                .unwrap_or_else(|_| "?".into());
            let list = out.entry(ino).or_default();
            if !list.iter().any(|h| h.pid == pid) {
                list.push(crate::session::Holder { pid, comm });
            }
        }
    }
    out
}

fn tcp_state(s: procfs::TcpState) -> TcpConnState {
    use procfs::TcpState as P;
    match s {
        P::Established => TcpConnState::Established,
        P::SynSent => TcpConnState::SynSent,
        P::SynRecv => TcpConnState::SynRecv,
        P::FinWait1 => TcpConnState::FinWait1,
        P::FinWait2 => TcpConnState::FinWait2,
        P::TimeWait => TcpConnState::TimeWait,
        P::Close => TcpConnState::Close,
        P::CloseWait => TcpConnState::CloseWait,
        P::LastAck => TcpConnState::LastAck,
        P::Listen => TcpConnState::Listen,
        P::Closing => TcpConnState::Closing,
        P::NewSynRecv => TcpConnState::NewSynRecv,
        P::Unknown(c) => TcpConnState::Unknown(c),
    }
}

fn unix_kind(k: procfs::UnixType) -> UnixKind {
    match k {
        procfs::UnixType::Stream => UnixKind::Stream,
        procfs::UnixType::Dgram => UnixKind::Dgram,
        procfs::UnixType::Seqpacket => UnixKind::Seqpacket,
        procfs::UnixType::Other(c) => UnixKind::Other(c),
    }
}

fn unix_state(s: procfs::UnixState) -> UnixSockState {
    match s {
        procfs::UnixState::Unconnected => UnixSockState::Unconnected,
        procfs::UnixState::Connecting => UnixSockState::Connecting,
        procfs::UnixState::Connected => UnixSockState::Connected,
        procfs::UnixState::Disconnecting => UnixSockState::Disconnecting,
        procfs::UnixState::Other(c) => UnixSockState::Other(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    // ---- pure functions ----

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn sshd_listener_titles() {
        assert!(is_sshd_listener(&args(&[
            "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"
        ])));
        assert!(is_sshd_listener(&args(&["/usr/sbin/sshd", "-D"])));
        assert!(is_sshd_listener(&args(&["/usr/sbin/sshd", "-De"])));
        assert!(is_sshd_listener(&args(&[
            "sshd: /usr/sbin/sshd [listener] 0 of 10-100 startups"
        ])));
        // Per-connection processes are not listeners.
        assert!(!is_sshd_listener(&args(&["sshd: root@pts/0"])));
        assert!(!is_sshd_listener(&args(&["sshd: user [priv]"])));
        assert!(!is_sshd_listener(&args(&["sshd-session: user@notty"])));
        // The re-exec'd connection child before it renames itself.
        assert!(!is_sshd_listener(&args(&["/usr/sbin/sshd", "-D", "-R"])));
        // -D without sshd, and sshd in an unrelated word.
        assert!(!is_sshd_listener(&args(&["rsync", "-D", "x"])));
        assert!(!is_sshd_listener(&args(&["grep", "sshd", "--D"])));
        assert!(!is_sshd_listener(&[]));
    }

    #[test]
    fn tty_paths() {
        for p in [
            "/dev/pts/0",
            "/dev/pts/12",
            "/dev/tty1",
            "/dev/ttyS0",
            "/dev/console",
        ] {
            assert!(is_tty_path(p), "{p}");
        }
        assert!(is_tty_path("/dev/ptmx"));
        for p in [
            "/dev/pts/",
            "/dev/pts/ptmx",
            "/dev/null",
            "/dev/ttyx/1",
            "/tmp/tty1",
        ] {
            assert!(!is_tty_path(p), "{p}");
        }
    }

    /// Lab F1 as fixture text: sshd's mountinfo, and the fdinfo of its fd 8
    /// on logind's private /run (mount 149, not in sshd's table).
    const SSHD_MOUNTINFO: &str = "\
21 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
22 21 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=990116k,mode=755
23 22 0:23 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
25 21 0:25 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=201156k,mode=755
26 25 0:26 / /run/lock rw,nosuid,nodev,noexec,relatime shared:6 - tmpfs tmpfs rw,size=5120k
";

    #[test]
    fn invisibility_over_fixture_text() {
        let visible = mount_ids(&procfs::parse_mountinfo(SSHD_MOUNTINFO).unwrap());
        let fd8 =
            procfs::parse_fdinfo("pos:\t0\nflags:\t0100001\nmnt_id:\t149\nino:\t597\n").unwrap();
        assert!(is_invisible(
            "/run/systemd/sessions/6.ref",
            fd8.mnt_id,
            &visible
        ));
        // The same path on sshd's own /run is visible.
        let on_run = procfs::parse_fdinfo("pos:\t0\nflags:\t0100001\nmnt_id:\t25\n").unwrap();
        assert!(!is_invisible(
            "/run/systemd/sessions/6.ref",
            on_run.mnt_id,
            &visible
        ));
        // Sockets use sockfs (mnt 9 here), anon inodes the anon mount:
        // neither is a path, so neither counts.
        assert!(!is_invisible("socket:[16450]", Some(9), &visible));
        assert!(!is_invisible("anon_inode:[eventfd]", Some(15), &visible));
        assert!(!is_invisible("pipe:[2211]", Some(14), &visible));
        assert!(!is_invisible("/memfd:wayland (deleted)", Some(5), &visible));
        // No mnt_id from the kernel: cannot tell, so not counted.
        assert!(!is_invisible("/run/x", None, &visible));
    }

    // ---- a fixture /proc tree ----

    /// A directory laid out like /proc, with just the files locate reads.
    struct FakeProc {
        dir: tempfile::TempDir,
    }

    struct FakeTask<'a> {
        pid: i32,
        ppid: i32,
        name: &'a str,
        cmdline: &'a [&'a str],
        nspid: &'a [i32],
        kthread: bool,
    }

    impl FakeProc {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn proc(&self) -> Procfs {
            Procfs::new(self.dir.path().join("proc"))
        }
        fn files(&self) -> PathBuf {
            let p = self.dir.path().join("files");
            std::fs::create_dir_all(&p).unwrap();
            p
        }
        fn pid_dir(&self, pid: i32) -> PathBuf {
            self.dir.path().join("proc").join(pid.to_string())
        }
        fn task(&self, t: FakeTask) {
            let d = self.pid_dir(t.pid);
            for sub in ["fd", "fdinfo", "net"] {
                std::fs::create_dir_all(d.join(sub)).unwrap();
            }
            let nspid: Vec<String> = if t.nspid.is_empty() {
                vec![t.pid.to_string()]
            } else {
                t.nspid.iter().map(|p| p.to_string()).collect()
            };
            std::fs::write(
                d.join("status"),
                format!(
                    "Name:\t{}\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t{}\nUid:\t0\t0\t0\t0\nNSpid:\t{}\nKthread:\t{}\n",
                    t.name,
                    t.ppid,
                    nspid.join("\t"),
                    u8::from(t.kthread),
                    pid = t.pid,
                ),
            )
            .unwrap();
            let flags = if t.kthread { PF_KTHREAD_FLAGS } else { 4194560 };
            std::fs::write(
                d.join("stat"),
                format!("{} ({}) S {} 1 1 0 -1 {flags} 0 0", t.pid, t.name, t.ppid),
            )
            .unwrap();
            let mut cmd = Vec::new();
            for a in t.cmdline {
                cmd.extend_from_slice(a.as_bytes());
                cmd.push(0);
            }
            std::fs::write(d.join("cmdline"), cmd).unwrap();
            std::fs::write(d.join("mountinfo"), SSHD_MOUNTINFO).unwrap();
            std::fs::write(d.join("net/tcp"), NET_TCP).unwrap();
            std::fs::write(d.join("net/unix"), NET_UNIX).unwrap();
        }
        fn fd(&self, pid: i32, fd: i32, target: &Path, fdinfo: &str) {
            let d = self.pid_dir(pid);
            symlink(target, d.join(format!("fd/{fd}"))).unwrap();
            std::fs::write(d.join(format!("fdinfo/{fd}")), fdinfo).unwrap();
        }
    }

    const PF_KTHREAD_FLAGS: u64 = 2129984;

    const NET_TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13725 1 0000000000000000 100 0 0 10 0
   1: 0F02000A:0016 0202000A:E908 01 00000000:00000000 02:0009F2C8 00000000     0        0 16450 4 0000000000000000 20 4 29 10 -1
";
    const NET_UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00000000 0002 03 16401
0000000000000000: 00000002 00000000 00000000 0002 01 11870 /run/systemd/journal/dev-log
0000000000000000: 00000002 00000000 00010000 0001 01 20456 @/tmp/.X11-unix/X0
";

    /// The lab session: systemd(1) → sshd listener(401) → sshd: root@pts/0
    /// (453) → bash(466) → {sleep(467), ferry(470)}; logind's FIFO on fd 8.
    fn lab_tree() -> (FakeProc, PathBuf) {
        let f = FakeProc::new();
        let task = |pid, ppid, name, cmdline: &[&str]| {
            f.task(FakeTask {
                pid,
                ppid,
                name,
                cmdline,
                nspid: &[],
                kthread: false,
            })
        };
        task(1, 0, "systemd", &["/sbin/init"]);
        f.task(FakeTask {
            pid: 2,
            ppid: 0,
            name: "kthreadd",
            cmdline: &[],
            nspid: &[],
            kthread: true,
        });
        task(
            401,
            1,
            "sshd",
            &["sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"],
        );
        task(453, 401, "sshd", &["sshd: root@pts/0"]);
        task(
            466,
            453,
            "bash",
            &["bash", "-c", "while :; do sleep 1; done"],
        );
        task(467, 466, "sleep", &["sleep", "1"]);
        task(470, 466, "ferry", &["ferry", "upgrade"]);
        // An unrelated process elsewhere.
        task(900, 1, "cron", &["/usr/sbin/cron", "-f"]);

        let files = f.files();
        let fifo = files.join("6.ref");
        std::ffi::CString::new(fifo.to_str().unwrap())
            .map(|c| {
                // SAFETY: c is a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            })
            .unwrap();
        let pts = Path::new("/dev/pts/0");
        f.fd(
            453,
            3,
            Path::new("socket:[16450]"),
            "pos:\t0\nflags:\t02\nmnt_id:\t9\n",
        );
        f.fd(
            453,
            4,
            Path::new("socket:[16401]"),
            "pos:\t0\nflags:\t02\nmnt_id:\t9\n",
        );
        f.fd(
            453,
            8,
            &fifo,
            "pos:\t0\nflags:\t0100001\nmnt_id:\t149\nino:\t597\n",
        );
        f.fd(
            453,
            9,
            Path::new("/dev/ptmx"),
            "pos:\t0\nflags:\t0104002\nmnt_id:\t22\n",
        );
        f.fd(
            453,
            10,
            Path::new("anon_inode:[eventfd]"),
            "pos:\t0\nflags:\t02\nmnt_id:\t15\n",
        );
        for fd in 0..3 {
            f.fd(
                466,
                fd,
                pts,
                "pos:\t0\nflags:\t0100002\nmnt_id:\t23\nino:\t3\n",
            );
        }
        f.fd(
            467,
            1,
            Path::new("pipe:[2211]"),
            "pos:\t0\nflags:\t01\nmnt_id:\t14\n",
        );
        // A named FIFO on a visible mount (the FIFO file's path is what
        // counts; its mount is the /run listed in mountinfo).
        let visible_fifo = files.join("visible.fifo");
        std::process::Command::new("mkfifo")
            .arg(&visible_fifo)
            .status()
            .unwrap();
        f.fd(470, 5, &visible_fifo, "pos:\t0\nflags:\t02\nmnt_id:\t25\n");
        (f, fifo)
    }

    #[test]
    fn invoker_walks_up_to_the_child_of_the_sshd_listener() {
        let (f, fifo) = lab_tree();
        let s = locate_in(&f.proc(), Start::Invoker(470)).unwrap();
        assert_eq!(s.root_pid, 453);
        assert_eq!(s.root_comm, "sshd");
        assert_eq!(s.root_cmdline, vec!["sshd: root@pts/0"]);
        assert!(s.how_found.contains("sshd listener 401"), "{}", s.how_found);
        assert_eq!(s.pids(), vec![453, 466, 467, 470]);
        assert_eq!(s.tasks[1].ppid, 453);
        assert!(!s.already_restored);

        // ttys: /dev/ptmx of sshd, bash's 0-2 on /dev/pts/0.
        let ttys: Vec<(i32, i32, &str)> = s
            .ttys
            .iter()
            .map(|t| (t.pid, t.fd, t.path.as_str()))
            .collect();
        assert_eq!(
            ttys,
            vec![
                (453, 9, "/dev/ptmx"),
                (466, 0, "/dev/pts/0"),
                (466, 1, "/dev/pts/0"),
                (466, 2, "/dev/pts/0"),
            ]
        );

        // FIFOs: logind's and the visible one; the anonymous pipe is not.
        let fifo_paths: Vec<&str> = s.fifos.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(fifo_paths.len(), 2, "{fifo_paths:?}");
        assert_eq!(fifo_paths[0], fifo.to_str().unwrap());
        assert_eq!(s.fifos[0].mnt_id, Some(149));

        // F1: exactly fd 8 of sshd, with the inode stat gives.
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&fifo).unwrap().ino();
        assert_eq!(s.invisible.len(), 1, "{:?}", s.invisible);
        let inv = &s.invisible[0];
        assert_eq!((inv.pid, inv.fd, inv.mnt_id, inv.inode), (453, 8, 149, ino));
        assert_eq!(inv.file_type, FileType::Fifo);
        assert_eq!(inv.mode, 0o600);
        assert_eq!(s.criu_externals(), vec![format!("file[95:{ino:x}]")]);

        // Sockets: the ssh connection and the journald dgram socket.
        assert_eq!(s.tcp.len(), 1);
        assert_eq!(s.tcp[0].local, "10.0.2.15:22".parse().unwrap());
        assert_eq!(s.tcp[0].remote, "10.0.2.2:59656".parse().unwrap());
        assert_eq!(s.tcp[0].state, TcpConnState::Established);
        assert_eq!(s.unix_sockets.len(), 1);
        assert_eq!(s.unix_sockets[0].kind, UnixKind::Dgram);
        assert_eq!(s.unix_sockets[0].path, None);
        // A fixture tree has no netns to ask for peers.
        assert_eq!(s.unix_sockets[0].external, None);
    }

    #[test]
    fn explicit_pid_takes_the_tree_below_it() {
        let (f, _) = lab_tree();
        let s = locate_in(&f.proc(), Start::Pid(466)).unwrap();
        assert_eq!(s.how_found, "--pid");
        assert_eq!(s.pids(), vec![466, 467, 470]);
        assert!(s.invisible.is_empty());
        assert!(s.tcp.is_empty());
    }

    #[test]
    fn explicit_pid_refusals() {
        let (f, _) = lab_tree();
        let err = locate_in(&f.proc(), Start::Pid(31337)).unwrap_err();
        assert_eq!(err.to_string(), "no process with pid 31337: check --pid");
        assert!(err.help().is_some());
        let err = locate_in(&f.proc(), Start::Pid(1)).unwrap_err();
        assert!(matches!(err, LocateError::Refused { pid: 1, .. }), "{err}");
        assert!(err.to_string().contains("init"), "{err}");
        let err = locate_in(&f.proc(), Start::Pid(2)).unwrap_err();
        assert!(
            err.to_string().contains("kernel thread [kthreadd]"),
            "{err}"
        );
        assert!(matches!(
            locate_in(&f.proc(), Start::Pid(0)),
            Err(LocateError::NoSuchPid(0))
        ));
    }

    #[test]
    fn without_a_listener_the_root_is_the_child_of_pid_1() {
        let f = FakeProc::new();
        for (pid, ppid, name) in [
            (1, 0, "init"),
            (500, 1, "tmux"),
            (501, 500, "bash"),
            (502, 501, "ferry"),
        ] {
            f.task(FakeTask {
                pid,
                ppid,
                name,
                cmdline: &[name],
                nspid: &[],
                kthread: false,
            });
        }
        let s = locate_in(&f.proc(), Start::Invoker(502)).unwrap();
        assert_eq!(s.root_pid, 500);
        assert!(s.how_found.contains("child of pid 1"), "{}", s.how_found);
        assert_eq!(s.pids(), vec![500, 501, 502]);
        let err = locate_in(&f.proc(), Start::Invoker(1)).unwrap_err();
        assert!(matches!(err, LocateError::Refused { .. }));
        let err = locate_in(&f.proc(), Start::Invoker(4040)).unwrap_err();
        assert!(matches!(err, LocateError::InvokerGone(4040)));
    }

    /// Lab F6: after a restore the tree hangs below criu (below unshare),
    /// in a nested pid namespace.
    #[test]
    fn a_restored_session_is_flagged() {
        let f = FakeProc::new();
        let t = |pid, ppid, name, cmdline: &'static [&'static str], nspid: &'static [i32]| {
            f.task(FakeTask {
                pid,
                ppid,
                name,
                cmdline,
                nspid,
                kthread: false,
            })
        };
        t(1, 0, "systemd", &["/sbin/init"], &[]);
        t(560, 1, "unshare", &["unshare", "-pfm"], &[]);
        t(
            561,
            560,
            "criu",
            &["criu", "restore", "-D", "img"],
            &[561, 1],
        );
        t(566, 561, "sshd", &["sshd: root@pts/0"], &[566, 453]);
        t(567, 566, "bash", &["bash"], &[567, 466]);
        let s = locate_in(&f.proc(), Start::Invoker(567)).unwrap();
        assert_eq!(s.root_pid, 566);
        assert!(s.how_found.contains("criu 561"), "{}", s.how_found);
        assert!(s.already_restored);
        assert!(
            s.already_restored_reason
                .as_deref()
                .unwrap()
                .contains("NSpid 566 453")
        );

        // The criu ancestor alone is enough too.
        let f = FakeProc::new();
        for (pid, ppid, name) in [(1, 0, "systemd"), (561, 1, "criu"), (566, 561, "sshd")] {
            f.task(FakeTask {
                pid,
                ppid,
                name,
                cmdline: &[name],
                nspid: &[],
                kthread: false,
            });
        }
        let s = locate_in(&f.proc(), Start::Pid(566)).unwrap();
        assert!(s.already_restored);
        assert!(
            s.already_restored_reason
                .as_deref()
                .unwrap()
                .contains("ancestor 561 of pid 566 is criu")
        );
    }

    #[test]
    fn children_files_are_used_when_present() {
        let (f, _) = lab_tree();
        // 466 lists only 470 in its children file: the file wins over PPid.
        for pid in [453, 466, 467, 470] {
            let t = f.pid_dir(pid).join(format!("task/{pid}"));
            std::fs::create_dir_all(&t).unwrap();
            let kids = match pid {
                453 => "466 ",
                466 => "470 ",
                _ => "",
            };
            std::fs::write(t.join("children"), kids).unwrap();
        }
        let s = locate_in(&f.proc(), Start::Pid(453)).unwrap();
        assert_eq!(s.pids(), vec![453, 466, 470]);
    }

    // ---- live, on this host ----

    /// Kills, by pid, a child we spawned and everything below it.
    struct Reap(std::process::Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            let proc = Procfs::host();
            let mut pids = vec![self.0.id() as i32];
            let mut i = 0;
            while i < pids.len() {
                if let Ok(kids) = proc.children(pids[i]) {
                    pids.extend(kids);
                }
                i += 1;
            }
            for pid in pids.iter().rev() {
                // SAFETY: kill(2) on pids of our own child tree.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            let _ = self.0.wait();
        }
    }

    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn sock_inode(fd: &impl std::os::fd::AsRawFd) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    }

    #[test]
    fn live_tree_with_fifo_tcp_and_unix_socket() {
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::OwnedFd;
        use std::os::unix::net::{UnixListener, UnixStream};
        use std::process::{Command, Stdio};

        let dir = tempfile::tempdir().unwrap();
        let tcp_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_client = TcpStream::connect(tcp_listener.local_addr().unwrap()).unwrap();
        let (_tcp_server, _) = tcp_listener.accept().unwrap();
        let sock_path = dir.path().join("sock");
        let unix_listener = UnixListener::bind(&sock_path).unwrap();
        let unix_client = UnixStream::connect(&sock_path).unwrap();
        let (unix_server, _) = unix_listener.accept().unwrap();
        let client_local = tcp_client.local_addr().unwrap();
        let client_inode = sock_inode(&unix_client);
        let server_inode = sock_inode(&unix_server);

        // stdin: the TCP connection; stdout: the unix client; stderr: the
        // listening unix socket. Below sh: a subshell with a sleep under it,
        // and a second sleep.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"mkfifo "$D/f" && exec 7<>"$D/f"; (sleep 31; :) & sleep 32 & wait"#)
            .env("D", dir.path())
            .stdin(Stdio::from(OwnedFd::from(tcp_client)))
            .stdout(Stdio::from(OwnedFd::from(unix_client)))
            .stderr(Stdio::from(OwnedFd::from(
                unix_listener.try_clone().unwrap(),
            )))
            .spawn()
            .unwrap();
        let child = Reap(child);
        let pid = child.0.id() as i32;
        let proc = Procfs::host();
        wait_for("the fifo on fd 7 and three descendants", || {
            let fd7 = proc
                .fds(pid)
                .is_ok_and(|f| f.iter().any(|(fd, _)| *fd == 7));
            let tasks = locate(Start::Pid(pid)).map(|s| s.tasks.len()).unwrap_or(0);
            fd7 && tasks >= 4
        });

        let s = locate(Start::Pid(pid)).unwrap();
        assert_eq!(s.root_pid, pid);
        assert_eq!(s.root_comm, "sh");
        assert_eq!(s.how_found, "--pid");
        assert!(!s.already_restored, "{:?}", s.already_restored_reason);
        // sh, the subshell, sleep 31 below it, sleep 32.
        assert!(s.tasks.len() >= 4, "{:#?}", s.tasks);
        let pids = s.pids();
        for t in &s.tasks[1..] {
            assert!(pids.contains(&t.ppid), "{t:?} hangs outside the tree");
        }
        let sleeps: Vec<&Task> = s.tasks.iter().filter(|t| t.comm == "sleep").collect();
        assert_eq!(sleeps.len(), 2, "{:#?}", s.tasks);
        assert!(
            sleeps.iter().any(|t| t.ppid != pid),
            "no grandchild below the subshell: {:#?}",
            s.tasks
        );

        let fifo = dir.path().join("f");
        let found = s
            .fifos
            .iter()
            .find(|f| f.pid == pid && f.fd == 7)
            .unwrap_or_else(|| panic!("fifo not found: {:#?}", s.fifos));
        assert_eq!(found.path, fifo.to_str().unwrap());
        assert_eq!(found.flags & libc::O_ACCMODE as u32, libc::O_RDWR as u32);

        let tcp = s
            .tcp
            .iter()
            .find(|c| c.pid == pid && c.fd == 0)
            .unwrap_or_else(|| panic!("tcp not found: {:#?}", s.tcp));
        assert_eq!(tcp.local, client_local);
        assert_eq!(tcp.remote, tcp_listener.local_addr().unwrap());
        assert_eq!(tcp.state, TcpConnState::Established);

        let client = s
            .unix_sockets
            .iter()
            .find(|u| u.pid == pid && u.fd == 1)
            .unwrap_or_else(|| panic!("unix client not found: {:#?}", s.unix_sockets));
        assert_eq!(client.inode, client_inode);
        assert_eq!(client.kind, UnixKind::Stream);
        assert_eq!(client.state, UnixSockState::Connected);
        assert_eq!(client.path, None);
        if client.external.is_some() {
            // sock_diag answered: the peer is our accepted socket, outside
            // the tree.
            assert_eq!(client.peer, Some(server_inode));
            assert_eq!(client.external, Some(true));
        }
        let listening = s
            .unix_sockets
            .iter()
            .find(|u| u.pid == pid && u.fd == 2)
            .unwrap_or_else(|| panic!("unix listener not found: {:#?}", s.unix_sockets));
        assert!(listening.listening);
        assert_eq!(listening.path.as_deref(), sock_path.to_str());

        // Nothing in an ordinary tree is on an invisible mount.
        assert!(s.invisible.is_empty(), "{:#?}", s.invisible);
        assert!(s.criu_externals().is_empty());
        drop(child);
    }

    #[test]
    fn live_invoker_from_this_test_process() {
        let me = std::process::id() as i32;
        let s = locate(Start::Invoker(me)).unwrap();
        assert!(s.pids().contains(&me));
        let root = &s.tasks[0];
        assert_eq!(root.pid, s.root_pid);
        // No sshd on a test host usually; either way the root's parent is
        // pid 1, an sshd listener, or criu.
        assert!(
            s.how_found.starts_with("child of pid 1")
                || s.how_found.starts_with("child of sshd listener")
                || s.how_found.starts_with("child of criu"),
            "{}",
            s.how_found
        );
    }

    #[test]
    fn live_refusals() {
        assert!(matches!(
            locate(Start::Pid(1)),
            Err(LocateError::Refused { pid: 1, .. })
        ));
        // Pids are at most 2^22.
        assert!(matches!(
            locate(Start::Pid(999_999_999)),
            Err(LocateError::NoSuchPid(999_999_999))
        ));
        // pid 2 is kthreadd in the initial pid namespace.
        if Procfs::host().stat(2).is_ok_and(|st| st.is_kernel_thread()) {
            let err = locate(Start::Pid(2)).unwrap_err();
            assert!(err.to_string().contains("kernel thread"), "{err}");
        }
    }

    /// A real F1 case: a FIFO opened on a tmpfs that is then lazily
    /// unmounted, inside a private mount namespace, so the fd's mount is in
    /// no mountinfo. Needs root and unshare(1); skipped otherwise.
    #[test]
    fn live_fd_on_a_detached_mount_is_invisible() {
        use std::process::{Command, Stdio};
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = r#"mkdir "$D/m" && mount -t tmpfs ferrytest "$D/m" && mkfifo -m 0640 "$D/m/f" && exec 7<>"$D/m/f" && umount -l "$D/m" && touch "$D/ready" && exec sleep 30"#;
        let Ok(child) = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script])
            .env("D", dir.path())
            .stdin(Stdio::null())
            .spawn()
        else {
            eprintln!("skipped: no unshare");
            return;
        };
        let mut child = Reap(child);
        let ready = dir.path().join("ready");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ready.exists() {
            if let Ok(Some(status)) = child.0.try_wait() {
                eprintln!("skipped: unshare/mount not permitted here ({status})");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "setup timed out");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // unshare execs sh, which execs sleep: the pid stays the same.
        let pid = child.0.id() as i32;
        wait_for("sleep", || {
            Procfs::host().status(pid).is_ok_and(|s| s.name == "sleep")
        });
        let s = locate(Start::Pid(pid)).unwrap();
        let inv = s
            .invisible
            .iter()
            .find(|i| i.fd == 7)
            .unwrap_or_else(|| panic!("fd 7 not reported invisible: {s:#?}"));
        assert_eq!(inv.file_type, FileType::Fifo);
        assert_eq!(inv.mode, 0o640);
        assert!(inv.path.starts_with('/'), "{}", inv.path);
        assert!(
            s.criu_externals()
                .contains(&format!("file[{:x}:{:x}]", inv.mnt_id, inv.inode))
        );
        assert!(s.fifos.iter().any(|f| f.fd == 7));
        // Fds inherited from the host's mount namespace (stdin's /dev/null,
        // whatever the test harness leaks) are invisible too: unshare's
        // copy of the mounts has new ids, and criu would fail on them the
        // same way. None of them is on the detached tmpfs.
        let tmp = dir.path().to_str().unwrap();
        for i in s.invisible.iter().filter(|i| i.fd != 7) {
            assert!(!i.path.starts_with(tmp), "{i:?}");
        }
        drop(child);
    }
}
