//! Reading `/proc`: small parsers over text (pure, unit-tested with fixture
//! strings) and thin readers of `/proc/<pid>/...` built on them.
//!
//! Every reader lives on [`Procfs`], which holds the path of the proc mount
//! (`/proc` on a real host, a fixture directory in tests). Every error names
//! the file it was reading and the pid it belongs to. A process or fd that
//! vanishes while being read is normal on a live system: callers check
//! [`ProcError::is_gone`] and skip it.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A failure to read or understand one file under `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (or listed, or its link resolved).
    #[error("cannot read {}{}: {source}", path.display(), ForPid(*pid))]
    Io {
        path: PathBuf,
        pid: Option<i32>,
        #[source]
        source: io::Error,
    },
    /// The file was read but its content is not what the kernel writes.
    #[error("cannot parse {}{}: {reason}", path.display(), ForPid(*pid))]
    Parse {
        path: PathBuf,
        pid: Option<i32>,
        reason: String,
    },
}

impl ProcError {
    /// True when the process (or the fd) no longer exists: the file is gone
    /// (`ENOENT`), the task died while being read (`ESRCH`), or it is
    /// exiting and has left its namespaces (`EINVAL` from `mountinfo`).
    /// Such errors are expected during a walk of a live tree.
    pub fn is_gone(&self) -> bool {
        match self {
            ProcError::Io { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
                    || matches!(source.raw_os_error(), Some(libc::ESRCH | libc::EINVAL))
            }
            ProcError::Parse { .. } => false,
        }
    }

    /// The `/proc` file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ProcError::Io { path, .. } | ProcError::Parse { path, .. } => path,
        }
    }

    /// The pid whose file it was, if the file belongs to one process.
    pub fn pid(&self) -> Option<i32> {
        match self {
            ProcError::Io { pid, .. } | ProcError::Parse { pid, .. } => *pid,
        }
    }
}

/// Formats " (pid N)" or nothing.
struct ForPid(Option<i32>);

impl fmt::Display for ForPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, " (pid {pid})"),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Parsed records
// ---------------------------------------------------------------------------

/// The fields of `/proc/PID/status` that ferry uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `Name:`, the comm (at most 15 bytes, may contain spaces).
    pub name: String,
    /// First letter of `State:` (`R`, `S`, `D`, `Z`, ...).
    pub state: char,
    pub tgid: i32,
    pub ppid: i32,
    /// `NSpid:`, outermost namespace first. More than one entry means the
    /// process lives in a nested pid namespace.
    pub nspid: Vec<i32>,
    /// `Uid:` real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// `Kthread:` (kernels 6.x); `None` on kernels that lack the line.
    pub kthread: Option<bool>,
}

/// The fields of `/proc/PID/stat` that ferry uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    /// The controlling terminal (`tty_nr`, a device number; 0 for none).
    pub tty_nr: u32,
    /// The task's `PF_*` flags.
    pub flags: u64,
}

/// The kernel's `PF_KTHREAD` task flag.
pub const PF_KTHREAD: u64 = 0x0020_0000;

impl Stat {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// The index N of the controlling terminal when it is `/dev/pts/N`
    /// (Unix98 pty slaves have majors 136 to 143).
    pub fn ctty_pts(&self) -> Option<u32> {
        let major = (self.tty_nr >> 8) & 0xfff;
        let minor = (self.tty_nr & 0xff) | ((self.tty_nr >> 12) & 0xf_ff00);
        (136..=143)
            .contains(&major)
            .then(|| (major - 136) * 256 + minor)
    }
}

/// `/proc/PID/fdinfo/FD`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FdInfo {
    pub pos: u64,
    /// Open flags (`O_*`), written in octal by the kernel.
    pub flags: u32,
    /// The mount the open file belongs to (an id of `/proc/PID/mountinfo`).
    pub mnt_id: Option<u64>,
    /// `ino:` (kernels ≥ 5.14).
    pub ino: Option<u64>,
    /// `eventfd-count:` for an eventfd.
    pub eventfd_count: Option<u64>,
    /// One entry per `inotify wd:...` line.
    pub inotify: Vec<InotifyWatch>,
}

/// One watch of an inotify fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InotifyWatch {
    pub wd: i32,
    /// Inode of the watched object.
    pub ino: u64,
    /// Device of the watched object (kernel-internal encoding).
    pub sdev: u64,
    pub mask: u32,
}

/// One line of `/proc/PID/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u64,
    pub parent_id: u64,
    pub major: u32,
    pub minor: u32,
    /// The root of the mount within its filesystem.
    pub root: String,
    /// Where it is mounted, relative to the process's root (unescaped).
    pub mount_point: String,
    /// Optional fields such as `shared:1`, `master:2`.
    pub optional: Vec<String>,
    pub fs_type: String,
    pub source: String,
}

/// The state column of `/proc/net/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
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

impl TcpState {
    pub fn from_code(code: u8) -> Self {
        match code {
            0x01 => TcpState::Established,
            0x02 => TcpState::SynSent,
            0x03 => TcpState::SynRecv,
            0x04 => TcpState::FinWait1,
            0x05 => TcpState::FinWait2,
            0x06 => TcpState::TimeWait,
            0x07 => TcpState::Close,
            0x08 => TcpState::CloseWait,
            0x09 => TcpState::LastAck,
            0x0A => TcpState::Listen,
            0x0B => TcpState::Closing,
            0x0C => TcpState::NewSynRecv,
            other => TcpState::Unknown(other),
        }
    }
}

/// One socket of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub uid: u32,
    pub inode: u64,
}

/// The type column of `/proc/net/unix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnixType {
    Stream,
    Dgram,
    Seqpacket,
    Other(u16),
}

impl UnixType {
    pub fn from_code(code: u16) -> Self {
        match code {
            1 => UnixType::Stream,
            2 => UnixType::Dgram,
            5 => UnixType::Seqpacket,
            other => UnixType::Other(other),
        }
    }
}

/// The `St` column of `/proc/net/unix` (`socket_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnixState {
    Unconnected,
    Connecting,
    Connected,
    Disconnecting,
    Other(u8),
}

impl UnixState {
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => UnixState::Unconnected,
            2 => UnixState::Connecting,
            3 => UnixState::Connected,
            4 => UnixState::Disconnecting,
            other => UnixState::Other(other),
        }
    }
}

/// `__SO_ACCEPTCON` in the flags column: a listening socket.
const SO_ACCEPTCON: u32 = 0x0001_0000;

/// One socket of `/proc/net/unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixEntry {
    pub inode: u64,
    pub kind: UnixType,
    pub state: UnixState,
    /// A listening socket (`__SO_ACCEPTCON`).
    pub listening: bool,
    /// Bound path; abstract names start with `@`; `None` when unbound.
    pub path: Option<String>,
}

/// What `stat` says about an fd's target, through the `/proc/PID/fd/N`
/// magic link (works across mount namespaces and for deleted files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdStat {
    pub ino: u64,
    pub dev: u64,
    pub rdev: u64,
    pub kind: FileKind,
    /// Permission bits only (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

impl FdStat {
    fn of(md: &std::fs::Metadata) -> FdStat {
        FdStat {
            ino: md.ino(),
            dev: md.dev(),
            rdev: md.rdev(),
            kind: FileKind::of(md.file_type()),
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
        }
    }
}

/// One file-backed line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// `rwxp` / `r-xs` ...
    pub perms: String,
    pub major: u32,
    pub minor: u32,
    pub inode: u64,
    /// The path, without the ` (deleted)` the kernel appends.
    pub path: String,
    pub deleted: bool,
}

impl MapEntry {
    /// The name of this mapping under `/proc/PID/map_files/`.
    pub fn map_files_name(&self) -> String {
        format!("{:x}-{:x}", self.start, self.end)
    }
}

/// File type from `st_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Fifo,
    File,
    Dir,
    CharDevice,
    BlockDevice,
    Socket,
    Symlink,
    Unknown,
}

impl FileKind {
    pub fn of(ft: std::fs::FileType) -> Self {
        if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_file() {
            FileKind::File
        } else if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_char_device() {
            FileKind::CharDevice
        } else if ft.is_block_device() {
            FileKind::BlockDevice
        } else if ft.is_socket() {
            FileKind::Socket
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Unknown
        }
    }
}

// ---------------------------------------------------------------------------
// Pure parsers
// ---------------------------------------------------------------------------

/// Parses `/proc/PID/status`.
pub fn parse_status(text: &str) -> Result<Status, String> {
    let mut name = None;
    let mut state = None;
    let mut tgid = None;
    let mut ppid = None;
    let mut nspid = Vec::new();
    let mut uid = None;
    let mut kthread = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            // The value of Name is everything after the tab (spaces included).
            "Name" => name = Some(value.strip_prefix('\t').unwrap_or(value).to_string()),
            "State" => state = value.trim().chars().next(),
            "Tgid" => tgid = Some(parse_num::<i32>(value.trim(), "Tgid")?),
            "PPid" => ppid = Some(parse_num::<i32>(value.trim(), "PPid")?),
            "NSpid" => {
                nspid = value
                    .split_whitespace()
                    .map(|v| parse_num::<i32>(v, "NSpid"))
                    .collect::<Result<_, _>>()?;
            }
            "Uid" => {
                let ids = value
                    .split_whitespace()
                    .map(|v| parse_num::<u32>(v, "Uid"))
                    .collect::<Result<Vec<_>, _>>()?;
                let ids: [u32; 4] = ids
                    .try_into()
                    .map_err(|v: Vec<u32>| format!("Uid has {} values, not 4", v.len()))?;
                uid = Some(ids);
            }
            "Kthread" => kthread = Some(value.trim() == "1"),
            _ => {}
        }
    }
    Ok(Status {
        name: name.ok_or("no Name line")?,
        state: state.ok_or("no State line")?,
        tgid: tgid.ok_or("no Tgid line")?,
        ppid: ppid.ok_or("no PPid line")?,
        nspid,
        uid: uid.ok_or("no Uid line")?,
        kthread,
    })
}

/// Parses `/proc/PID/stat`. The comm is between the first `(` and the
/// last `)`, since it may itself contain parentheses and spaces.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let open = text.find('(').ok_or("no '(' before comm")?;
    let close = text.rfind(')').ok_or("no ')' after comm")?;
    if close < open {
        return Err("')' before '('".into());
    }
    let comm = text[open + 1..close].to_string();
    // Fields after the comm: state(3) ppid(4) pgrp(5) session(6) tty_nr(7)
    // tpgid(8) flags(9).
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    if rest.len() < 7 {
        return Err(format!("only {} fields after comm", rest.len()));
    }
    Ok(Stat {
        comm,
        state: rest[0].chars().next().ok_or("empty state")?,
        ppid: parse_num(rest[1], "ppid")?,
        tty_nr: parse_num::<i64>(rest[4], "tty_nr")? as u32,
        flags: parse_num(rest[6], "flags")?,
    })
}

/// Splits `/proc/PID/cmdline` into its arguments. A process that rewrote
/// its title (sshd does) may have one argument with spaces, padded with
/// NULs; empty trailing arguments are dropped. Kernel threads and zombies
/// have an empty cmdline.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let mut args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    while args.last().is_some_and(|a| a.is_empty()) {
        args.pop();
    }
    args
}

/// Parses `/proc/PID/fdinfo/FD`.
pub fn parse_fdinfo(text: &str) -> Result<FdInfo, String> {
    let mut info = FdInfo::default();
    let mut saw_flags = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("inotify ") {
            info.inotify.push(parse_inotify(rest)?);
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "pos" => info.pos = parse_num(value, "pos")?,
            "flags" => {
                info.flags =
                    u32::from_str_radix(value, 8).map_err(|e| format!("flags {value:?}: {e}"))?;
                saw_flags = true;
            }
            "mnt_id" => info.mnt_id = Some(parse_num(value, "mnt_id")?),
            "ino" => info.ino = Some(parse_num(value, "ino")?),
            "eventfd-count" => {
                info.eventfd_count = Some(
                    u64::from_str_radix(value, 16)
                        .map_err(|e| format!("eventfd-count {value:?}: {e}"))?,
                );
            }
            _ => {}
        }
    }
    if !saw_flags {
        return Err("no flags line".into());
    }
    Ok(info)
}

/// Parses the part after `inotify ` of an fdinfo line:
/// `wd:1 ino:1a2b sdev:800001 mask:fce ignored_mask:0 fhandle-bytes:8 ...`.
fn parse_inotify(rest: &str) -> Result<InotifyWatch, String> {
    let mut wd = None;
    let mut ino = None;
    let mut sdev = None;
    let mut mask = None;
    for field in rest.split_whitespace() {
        let Some((k, v)) = field.split_once(':') else {
            continue;
        };
        let hex = |what: &str| {
            u64::from_str_radix(v, 16).map_err(|e| format!("inotify {what} {v:?}: {e}"))
        };
        match k {
            "wd" => wd = Some(parse_num::<i32>(v, "inotify wd")?),
            "ino" => ino = Some(hex("ino")?),
            "sdev" => sdev = Some(hex("sdev")?),
            "mask" => mask = Some(hex("mask")? as u32),
            _ => {}
        }
    }
    Ok(InotifyWatch {
        wd: wd.ok_or("inotify line without wd")?,
        ino: ino.ok_or("inotify line without ino")?,
        sdev: sdev.unwrap_or(0),
        mask: mask.unwrap_or(0),
    })
}

/// Parses `/proc/PID/mountinfo`:
/// `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, String> {
    let mut mounts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(|| bad("no ' - ' separator"))?;
        if sep < 6 || fields.len() < sep + 3 {
            return Err(bad("too few fields"));
        }
        let (major, minor) = fields[2]
            .split_once(':')
            .ok_or_else(|| bad("no major:minor"))?;
        mounts.push(MountInfo {
            mount_id: fields[0].parse().map_err(|_| bad("bad mount id"))?,
            parent_id: fields[1].parse().map_err(|_| bad("bad parent id"))?,
            major: major.parse().map_err(|_| bad("bad major"))?,
            minor: minor.parse().map_err(|_| bad("bad minor"))?,
            root: unescape_octal(fields[3]),
            mount_point: unescape_octal(fields[4]),
            optional: fields[6..sep].iter().map(|s| s.to_string()).collect(),
            fs_type: fields[sep + 1].to_string(),
            source: unescape_octal(fields[sep + 2]),
        });
    }
    Ok(mounts)
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash
/// in mountinfo paths.
pub fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6` (the header line is skipped).
pub fn parse_net_tcp(text: &str) -> Result<Vec<TcpEntry>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if f.len() < 10 {
            return Err(bad(format!("{} fields, expected at least 10", f.len())));
        }
        let state = u8::from_str_radix(f[3], 16).map_err(|e| bad(format!("state: {e}")))?;
        out.push(TcpEntry {
            local: parse_hex_sockaddr(f[1]).map_err(&bad)?,
            remote: parse_hex_sockaddr(f[2]).map_err(&bad)?,
            state: TcpState::from_code(state),
            uid: parse_num(f[7], "uid").map_err(&bad)?,
            inode: parse_num(f[9], "inode").map_err(&bad)?,
        });
    }
    Ok(out)
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6). The address is
/// printed as 32-bit words in the kernel's byte order, the port in host
/// order.
pub fn parse_hex_sockaddr(s: &str) -> Result<SocketAddr, String> {
    let (addr, port) = s
        .split_once(':')
        .ok_or_else(|| format!("address {s:?} has no ':'"))?;
    let port = u16::from_str_radix(port, 16).map_err(|e| format!("port {port:?}: {e}"))?;
    let word = |i: usize| -> Result<[u8; 4], String> {
        let w = addr
            .get(i * 8..i * 8 + 8)
            .ok_or_else(|| format!("address {addr:?} too short"))?;
        let v = u32::from_str_radix(w, 16).map_err(|e| format!("address {addr:?}: {e}"))?;
        Ok(v.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        n => return Err(format!("address {addr:?} has {n} hex digits")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses `/proc/net/unix` (the header line is skipped):
/// `Num: RefCount Protocol Flags Type St Inode [Path]`.
pub fn parse_net_unix(text: &str) -> Result<Vec<UnixEntry>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        let mut rest = line.trim_start();
        let mut next = || -> Result<&str, String> {
            let t = rest.trim_start();
            let end = t.find(' ').unwrap_or(t.len());
            let (field, tail) = t.split_at(end);
            rest = tail;
            if field.is_empty() {
                Err(bad("too few fields".into()))
            } else {
                Ok(field)
            }
        };
        let _num = next()?;
        let _refcount = next()?;
        let _protocol = next()?;
        let flags = next()?;
        let kind = next()?;
        let st = next()?;
        let inode = next()?;
        // The path is the rest of the line (it may contain spaces).
        let path = rest.strip_prefix(' ').unwrap_or(rest);
        let flags = u32::from_str_radix(flags, 16).map_err(|e| bad(format!("flags: {e}")))?;
        out.push(UnixEntry {
            inode: parse_num(inode, "inode").map_err(&bad)?,
            kind: UnixType::from_code(
                u16::from_str_radix(kind, 16).map_err(|e| bad(format!("type: {e}")))?,
            ),
            state: UnixState::from_code(
                u8::from_str_radix(st, 16).map_err(|e| bad(format!("state: {e}")))?,
            ),
            listening: flags & SO_ACCEPTCON != 0,
            path: (!path.is_empty()).then(|| path.to_string()),
        });
    }
    Ok(out)
}

/// Pids named by `/proc/PID/task/TID/children` text (space separated).
pub fn parse_children(text: &str) -> Result<Vec<i32>, String> {
    text.split_whitespace()
        .map(|p| parse_num(p, "child pid"))
        .collect()
}

/// Parses `/proc/PID/maps`, keeping only mappings of a path (anonymous
/// memory, `[heap]`, `[vdso]` and the like are left out).
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        // start-end perms offset dev inode [path]; the path may hold spaces.
        let mut rest = line;
        let mut field = || -> Option<&str> {
            let trimmed = rest.trim_start_matches(' ');
            let end = trimmed.find(' ').unwrap_or(trimmed.len());
            let (f, r) = trimmed.split_at(end);
            rest = r;
            (!f.is_empty()).then_some(f)
        };
        let (Some(range), Some(perms), Some(_offset), Some(dev), Some(inode)) =
            (field(), field(), field(), field(), field())
        else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("maps line {line:?} has fewer than five fields"));
        };
        let path = rest.trim_start_matches(' ');
        if !path.starts_with('/') {
            continue;
        }
        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| format!("maps range {range:?}"))?;
        let hex = |s: &str, what: &str| {
            u64::from_str_radix(s, 16).map_err(|e| format!("maps {what} {s:?}: {e}"))
        };
        let (major, minor) = dev
            .split_once(':')
            .ok_or_else(|| format!("maps device {dev:?}"))?;
        let (path, deleted) = match path.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (path, false),
        };
        out.push(MapEntry {
            start: hex(start, "start")?,
            end: hex(end, "end")?,
            perms: perms.to_string(),
            major: hex(major, "major")? as u32,
            minor: hex(minor, "minor")? as u32,
            inode: parse_num(inode, "maps inode")?,
            path: path.to_string(),
            deleted,
        });
    }
    Ok(out)
}

/// The inode of a `socket:[12345]` (or `pipe:[..]`, `net:[..]`) link target.
pub fn bracket_inode(target: &str, prefix: &str) -> Option<u64> {
    target
        .strip_prefix(prefix)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    s.parse().map_err(|e: T::Err| format!("{what} {s:?}: {e}"))
}

// ---------------------------------------------------------------------------
// Unix socket peers (sock_diag netlink)
// ---------------------------------------------------------------------------

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;

/// Peers of the unix sockets in the calling process's network namespace,
/// as `inode → peer inode`, through `NETLINK_SOCK_DIAG` (what `ss -x` uses).
/// Sockets without a peer are absent. Fails where the `unix_diag` module
/// is missing or netlink is not allowed; callers treat the peer as unknown.
pub fn unix_peers() -> io::Result<HashMap<u64, u64>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created, valid fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    let req = unix_diag_request(1);
    // SAFETY: the buffer is valid for `req.len()` bytes for the whole call.
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut peers = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the buffer is valid and writable for `buf.len()` bytes.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Ok(peers);
        }
        let len = usize::try_from(n).map_err(|_| io::Error::other("negative recv length"))?;
        match parse_unix_diag(&buf[..len], &mut peers)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            DiagProgress::More => continue,
            DiagProgress::Done => return Ok(peers),
        }
    }
}

/// The netlink request: `nlmsghdr` + `unix_diag_req` asking for every socket
/// state and the peer attribute.
fn unix_diag_request(seq: u32) -> Vec<u8> {
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + 24);
    let total: u32 = (NLMSG_HDRLEN + 24) as u32;
    msg.extend_from_slice(&total.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes()); // nlmsg_type
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    msg.extend_from_slice(&flags.to_ne_bytes()); // nlmsg_flags
    msg.extend_from_slice(&seq.to_ne_bytes()); // nlmsg_seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    msg.push(libc::AF_UNIX as u8); // sdiag_family
    msg.push(0); // sdiag_protocol
    msg.extend_from_slice(&0u16.to_ne_bytes()); // pad
    msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states: all
    msg.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino
    msg.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes()); // udiag_show
    msg.extend_from_slice(&[0u8; 8]); // udiag_cookie
    msg
}

#[derive(Debug, PartialEq, Eq)]
enum DiagProgress {
    More,
    Done,
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses one datagram of `unix_diag_msg` replies into `peers`.
fn parse_unix_diag(mut buf: &[u8], peers: &mut HashMap<u64, u64>) -> Result<DiagProgress, String> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = ne_u32(buf, 0).ok_or("short nlmsghdr")? as usize;
        let kind = ne_u16(buf, 4).ok_or("short nlmsghdr")?;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(format!("bad nlmsg_len {len} (have {})", buf.len()));
        }
        match kind {
            NLMSG_DONE => return Ok(DiagProgress::Done),
            NLMSG_ERROR => {
                let errno = ne_u32(buf, NLMSG_HDRLEN).map(|e| -(e as i32)).unwrap_or(0);
                return Err(format!(
                    "sock_diag error: {}",
                    io::Error::from_raw_os_error(errno)
                ));
            }
            _ => {
                // unix_diag_msg: family, type, state, pad (u8 each), ino u32,
                // cookie [u32; 2]; then rtattrs.
                let body = &buf[NLMSG_HDRLEN..len];
                let ino = ne_u32(body, 4).ok_or("short unix_diag_msg")?;
                let mut attrs = body.get(16..).unwrap_or(&[]);
                while attrs.len() >= 4 {
                    let alen = ne_u16(attrs, 0).ok_or("short rtattr")? as usize;
                    let atype = ne_u16(attrs, 2).ok_or("short rtattr")?;
                    if alen < 4 || alen > attrs.len() {
                        return Err(format!("bad rta_len {alen}"));
                    }
                    if atype == UNIX_DIAG_PEER {
                        let peer = ne_u32(attrs, 4).ok_or("short UNIX_DIAG_PEER")?;
                        if peer != 0 {
                            peers.insert(u64::from(ino), u64::from(peer));
                        }
                    }
                    attrs = attrs.get(align4(alen)..).unwrap_or(&[]);
                }
            }
        }
        buf = buf.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(DiagProgress::More)
}

// ---------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------

/// A proc filesystem: `/proc` on the host, or a directory laid out like it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Procfs {
    root: PathBuf,
}

impl Default for Procfs {
    fn default() -> Self {
        Self::host()
    }
}

impl Procfs {
    /// The host's `/proc`.
    pub fn host() -> Self {
        Self::new("/proc")
    }

    /// A proc filesystem mounted (or faked) at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/PID/rel`.
    pub fn pid_path(&self, pid: i32, rel: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(rel)
    }

    fn io_err(path: PathBuf, pid: Option<i32>) -> impl FnOnce(io::Error) -> ProcError {
        move |source| ProcError::Io { path, pid, source }
    }

    fn read_text(&self, path: PathBuf, pid: Option<i32>) -> Result<(String, PathBuf), ProcError> {
        match std::fs::read(&path) {
            Ok(bytes) => Ok((String::from_utf8_lossy(&bytes).into_owned(), path)),
            Err(source) => Err(ProcError::Io { path, pid, source }),
        }
    }

    fn parsed<T>(
        &self,
        pid: Option<i32>,
        path: PathBuf,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ProcError> {
        let (text, path) = self.read_text(path, pid)?;
        parse(&text).map_err(|reason| ProcError::Parse { path, pid, reason })
    }

    /// True when `/proc/PID` exists.
    pub fn exists(&self, pid: i32) -> bool {
        pid > 0 && self.root.join(pid.to_string()).is_dir()
    }

    /// Every pid listed in the proc root.
    pub fn pids(&self) -> Result<Vec<i32>, ProcError> {
        let dir = std::fs::read_dir(&self.root).map_err(Self::io_err(self.root.clone(), None))?;
        let mut pids: Vec<i32> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// `/proc/PID/status`.
    pub fn status(&self, pid: i32) -> Result<Status, ProcError> {
        self.parsed(Some(pid), self.pid_path(pid, "status"), parse_status)
    }

    /// `/proc/PID/stat`.
    pub fn stat(&self, pid: i32) -> Result<Stat, ProcError> {
        self.parsed(Some(pid), self.pid_path(pid, "stat"), parse_stat)
    }

    /// `/proc/PID/cmdline`, split into arguments.
    pub fn cmdline(&self, pid: i32) -> Result<Vec<String>, ProcError> {
        let path = self.pid_path(pid, "cmdline");
        match std::fs::read(&path) {
            Ok(raw) => Ok(parse_cmdline(&raw)),
            Err(source) => Err(ProcError::Io {
                path,
                pid: Some(pid),
                source,
            }),
        }
    }

    /// The open fds of PID with their link targets (`/dev/pts/0`,
    /// `socket:[123]`, `pipe:[45]`, `anon_inode:[eventfd]`, ...), sorted by
    /// fd. An fd closed between the listing and the readlink is skipped.
    pub fn fds(&self, pid: i32) -> Result<Vec<(i32, String)>, ProcError> {
        let dir_path = self.pid_path(pid, "fd");
        let dir =
            std::fs::read_dir(&dir_path).map_err(Self::io_err(dir_path.clone(), Some(pid)))?;
        let mut fds = Vec::new();
        for entry in dir {
            let entry = entry.map_err(Self::io_err(dir_path.clone(), Some(pid)))?;
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            match std::fs::read_link(entry.path()) {
                Ok(target) => fds.push((fd, target.to_string_lossy().into_owned())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ProcError::Io {
                        path: entry.path(),
                        pid: Some(pid),
                        source,
                    });
                }
            }
        }
        fds.sort_unstable_by_key(|(fd, _)| *fd);
        Ok(fds)
    }

    /// `/proc/PID/fdinfo/FD`.
    pub fn fdinfo(&self, pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
        self.parsed(
            Some(pid),
            self.pid_path(pid, &format!("fdinfo/{fd}")),
            parse_fdinfo,
        )
    }

    /// `stat` of what fd FD of PID refers to, through the magic link.
    pub fn fd_stat(&self, pid: i32, fd: i32) -> Result<FdStat, ProcError> {
        let path = self.pid_path(pid, &format!("fd/{fd}"));
        let md = std::fs::metadata(&path).map_err(Self::io_err(path, Some(pid)))?;
        Ok(FdStat::of(&md))
    }

    /// `stat` through any magic link of PID (`exe`, `cwd`,
    /// `map_files/START-END`): it reaches the inode even when the file was
    /// deleted or lives in another mount namespace.
    pub fn link_stat(&self, pid: i32, rel: &str) -> Result<FdStat, ProcError> {
        let path = self.pid_path(pid, rel);
        let md = std::fs::metadata(&path).map_err(Self::io_err(path, Some(pid)))?;
        Ok(FdStat::of(&md))
    }

    /// The target of a link of PID (`exe`, `cwd`, `fd/3`).
    pub fn link(&self, pid: i32, rel: &str) -> Result<String, ProcError> {
        let path = self.pid_path(pid, rel);
        std::fs::read_link(&path)
            .map(|t| t.to_string_lossy().into_owned())
            .map_err(Self::io_err(path, Some(pid)))
    }

    /// The file-backed mappings of PID (`/proc/PID/maps`).
    pub fn maps(&self, pid: i32) -> Result<Vec<MapEntry>, ProcError> {
        self.parsed(Some(pid), self.pid_path(pid, "maps"), parse_maps)
    }

    /// `/proc/PID/mountinfo`.
    pub fn mountinfo(&self, pid: i32) -> Result<Vec<MountInfo>, ProcError> {
        self.parsed(Some(pid), self.pid_path(pid, "mountinfo"), parse_mountinfo)
    }

    /// The link target of `/proc/PID/ns/KIND` (`mnt:[4026531832]`).
    pub fn ns(&self, pid: i32, kind: &str) -> Result<String, ProcError> {
        let path = self.pid_path(pid, &format!("ns/{kind}"));
        std::fs::read_link(&path)
            .map(|t| t.to_string_lossy().into_owned())
            .map_err(Self::io_err(path, Some(pid)))
    }

    /// Direct children of PID from `/proc/PID/task/*/children`. Returns
    /// `Ok(None)` when the kernel lacks those files (`CONFIG_PROC_CHILDREN`
    /// off); see [`Procfs::children`] for the fallback.
    pub fn children_from_tasks(&self, pid: i32) -> Result<Option<Vec<i32>>, ProcError> {
        let task_dir = self.pid_path(pid, "task");
        let dir = match std::fs::read_dir(&task_dir) {
            Ok(dir) => dir,
            // No task directory although the process is there: a proc tree
            // without per-thread entries.
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.exists(pid) => return Ok(None),
            Err(source) => {
                return Err(ProcError::Io {
                    path: task_dir,
                    pid: Some(pid),
                    source,
                });
            }
        };
        let mut kids = Vec::new();
        let mut any_file = false;
        for entry in dir {
            let entry = entry.map_err(Self::io_err(task_dir.clone(), Some(pid)))?;
            let path = entry.path().join("children");
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    any_file = true;
                    kids.extend(parse_children(&text).map_err(|reason| ProcError::Parse {
                        path,
                        pid: Some(pid),
                        reason,
                    })?);
                }
                // A thread that exited, or no such file on this kernel.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ProcError::Io {
                        path,
                        pid: Some(pid),
                        source,
                    });
                }
            }
        }
        if !any_file {
            // Either the kernel has no children files, or every thread
            // vanished; the caller tells these apart by whether PID exists.
            return if self.exists(pid) {
                Ok(None)
            } else {
                Err(ProcError::Io {
                    path: task_dir,
                    pid: Some(pid),
                    source: io::Error::from(io::ErrorKind::NotFound),
                })
            };
        }
        kids.sort_unstable();
        kids.dedup();
        Ok(Some(kids))
    }

    /// `pid → ppid` for every process, from each `/proc/*/status`.
    /// Processes that vanish during the scan are skipped.
    pub fn ppid_map(&self) -> Result<HashMap<i32, i32>, ProcError> {
        let mut map = HashMap::new();
        for pid in self.pids()? {
            match self.status(pid) {
                Ok(st) => {
                    map.insert(pid, st.ppid);
                }
                Err(e) if e.is_gone() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(map)
    }

    /// Direct children of PID: from the `children` files, or by scanning
    /// every process's `PPid` when the kernel has no such files.
    pub fn children(&self, pid: i32) -> Result<Vec<i32>, ProcError> {
        if let Some(kids) = self.children_from_tasks(pid)? {
            return Ok(kids);
        }
        let mut kids: Vec<i32> = self
            .ppid_map()?
            .into_iter()
            .filter(|(_, ppid)| *ppid == pid)
            .map(|(child, _)| child)
            .collect();
        kids.sort_unstable();
        Ok(kids)
    }

    /// TCP sockets (v4 and v6) of the network namespace PID is in, from
    /// `/proc/PID/net/tcp` and `/proc/PID/net/tcp6`. A missing `tcp6` (IPv6
    /// disabled) is not an error.
    pub fn tcp(&self, pid: i32) -> Result<Vec<TcpEntry>, ProcError> {
        let mut all = self.parsed(Some(pid), self.pid_path(pid, "net/tcp"), parse_net_tcp)?;
        match self.parsed(Some(pid), self.pid_path(pid, "net/tcp6"), parse_net_tcp) {
            Ok(v6) => all.extend(v6),
            Err(e) if e.is_gone() && self.exists(pid) => {}
            Err(e) => return Err(e),
        }
        Ok(all)
    }

    /// Unix sockets of the network namespace PID is in (`/proc/PID/net/unix`).
    pub fn unix(&self, pid: i32) -> Result<Vec<UnixEntry>, ProcError> {
        self.parsed(Some(pid), self.pid_path(pid, "net/unix"), parse_net_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsshd: root@pts\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t453\nNgid:\t0\nPid:\t453\nPPid:\t401\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t \nNStgid:\t453\nNSpid:\t453\nNSpgid:\t453\nNSsid:\t453\nKthread:\t0\nVmPeak:\t   17016 kB\n";

    #[test]
    fn maps_keep_file_mappings_with_their_deleted_mark() {
        let text = "\
55d1c8a00000-55d1c8a2e000 r--p 00000000 fd:00 1311                       /usr/bin/sudo (deleted)
7f3b1c000000-7f3b1c022000 r-xp 00022000 fd:00 2045                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f3b1d000000-7f3b1d001000 rw-s 00000000 00:01 77                         /dev/zero (deleted)
7f3b1e000000-7f3b1e001000 r--p 00000000 00:1a 9                          /run/my dir/data file
7ffc2a7d9000-7ffc2a7fa000 rw-p 00000000 00:00 0                          [stack]
7ffc2a7fe000-7ffc2a800000 r-xp 00000000 00:00 0                          [vdso]
7f3b1f000000-7f3b1f100000 rw-p 00000000 00:00 0 
";
        let maps = parse_maps(text).unwrap();
        assert_eq!(maps.len(), 4, "{maps:#?}");
        assert_eq!(maps[0].path, "/usr/bin/sudo");
        assert!(maps[0].deleted);
        assert_eq!(
            (maps[0].major, maps[0].minor, maps[0].inode),
            (0xfd, 0, 1311)
        );
        assert_eq!(maps[0].map_files_name(), "55d1c8a00000-55d1c8a2e000");
        assert_eq!(maps[1].perms, "r-xp");
        assert!(!maps[1].deleted);
        assert_eq!(maps[2].path, "/dev/zero");
        assert_eq!(maps[3].path, "/run/my dir/data file");
        assert_eq!((maps[3].major, maps[3].minor), (0, 0x1a));
        assert!(parse_maps("zzz\n").is_err());
        assert!(parse_maps("").unwrap().is_empty());
    }

    #[test]
    fn status_parses_the_fields_ferry_uses() {
        let st = parse_status(STATUS).unwrap();
        assert_eq!(st.name, "sshd: root@pts");
        assert_eq!(st.state, 'S');
        assert_eq!(st.tgid, 453);
        assert_eq!(st.ppid, 401);
        assert_eq!(st.nspid, vec![453]);
        assert_eq!(st.uid, [0, 0, 0, 0]);
        assert_eq!(st.kthread, Some(false));
    }

    #[test]
    fn status_of_a_restored_task_has_two_nspids() {
        // Lab F6: the restored bash had `NSpid: 567 466`.
        let text = STATUS
            .replace("NSpid:\t453\n", "NSpid:\t567\t466\n")
            .replace("Uid:\t0\t0\t0\t0", "Uid:\t1000\t1001\t1002\t1003")
            .replace("Kthread:\t0\n", "");
        let st = parse_status(&text).unwrap();
        assert_eq!(st.nspid, vec![567, 466]);
        assert_eq!(st.uid, [1000, 1001, 1002, 1003]);
        assert_eq!(st.kthread, None);
    }

    #[test]
    fn status_without_ppid_is_an_error() {
        let text = STATUS.replace("PPid:\t401\n", "");
        assert!(parse_status(&text).unwrap_err().contains("PPid"));
    }

    #[test]
    fn stat_comm_may_contain_spaces_and_parens() {
        let st = parse_stat("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0").unwrap();
        assert_eq!(st.comm, "kthreadd");
        assert_eq!(st.ppid, 0);
        assert!(st.is_kernel_thread());
        let st = parse_stat("77 (a (b) c) R 5 77 77 0 -1 4194560 1 2 3").unwrap();
        assert_eq!(st.comm, "a (b) c");
        assert_eq!(st.state, 'R');
        assert_eq!(st.ppid, 5);
        assert!(!st.is_kernel_thread());
        assert_eq!(st.ctty_pts(), None);
        // sudo on pts/0 (136:0), another on pts/300 (137:44).
        let st = parse_stat("914 (sudo) S 910 910 910 34816 910 4194560 1").unwrap();
        assert_eq!((st.tty_nr, st.ctty_pts()), (34816, Some(0)));
        let st = parse_stat("9 (x) S 1 9 9 35116 9 0 1").unwrap();
        assert_eq!(st.ctty_pts(), Some(300));
        // A serial console is no pty.
        let st = parse_stat("9 (x) S 1 9 9 1088 9 0 1").unwrap();
        assert_eq!(st.ctty_pts(), None);
    }

    #[test]
    fn cmdline_splits_args_and_drops_padding() {
        assert_eq!(
            parse_cmdline(b"bash\0-c\0while read -r; do :; done\0"),
            vec!["bash", "-c", "while read -r; do :; done"]
        );
        // sshd rewrites its title into one NUL-padded argument.
        assert_eq!(
            parse_cmdline(b"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups\0\0\0\0"),
            vec!["sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"]
        );
        assert!(parse_cmdline(b"").is_empty());
        // An empty argument in the middle is kept.
        assert_eq!(parse_cmdline(b"a\0\0b\0"), vec!["a", "", "b"]);
    }

    #[test]
    fn fdinfo_of_a_regular_fd() {
        let info = parse_fdinfo("pos:\t1024\nflags:\t0100002\nmnt_id:\t149\nino:\t597\n").unwrap();
        assert_eq!(info.pos, 1024);
        assert_eq!(info.flags, 0o100002);
        assert_eq!(info.flags & libc::O_ACCMODE as u32, libc::O_RDWR as u32);
        assert_eq!(info.mnt_id, Some(149));
        assert_eq!(info.ino, Some(0x255));
        assert!(info.inotify.is_empty());
    }

    #[test]
    fn fdinfo_of_an_old_kernel_without_ino() {
        let info = parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t9\n").unwrap();
        assert_eq!(info.ino, None);
        assert_eq!(info.mnt_id, Some(9));
    }

    #[test]
    fn fdinfo_of_inotify_and_eventfd() {
        let text = "pos:\t0\nflags:\t02004000\nmnt_id:\t15\nino:\t1057\n\
inotify wd:2 ino:a0001 sdev:800001 mask:fce ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:0100a00000000000\n\
inotify wd:1 ino:2 sdev:800001 mask:3cc ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:0200000000000000\n";
        let info = parse_fdinfo(text).unwrap();
        assert_eq!(
            info.inotify,
            vec![
                InotifyWatch {
                    wd: 2,
                    ino: 0xa0001,
                    sdev: 0x800001,
                    mask: 0xfce
                },
                InotifyWatch {
                    wd: 1,
                    ino: 2,
                    sdev: 0x800001,
                    mask: 0x3cc
                },
            ]
        );
        let ev = parse_fdinfo(
            "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\neventfd-count:  1f\neventfd-id: 3\n",
        )
        .unwrap();
        assert_eq!(ev.eventfd_count, Some(0x1f));
    }

    #[test]
    fn fdinfo_without_flags_is_an_error() {
        assert!(parse_fdinfo("pos:\t0\n").is_err());
        assert!(
            parse_fdinfo("pos:\t0\nflags:\t9\n").is_err(),
            "flags are octal"
        );
    }

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=998000k,nr_inodes=249500,mode=755
25 24 0:23 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
26 22 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 master:1 - tmpfs tmpfs rw,size=200000k,mode=755
40 26 0:35 /sub/dir /run/my\\040dir rw,relatime - tmpfs none rw
41 22 0:36 / /mnt/a\\134b rw,relatime unbindable - tmpfs tmp\\040fs rw
";

    #[test]
    fn mountinfo_with_optional_fields_and_escapes() {
        let mounts = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(mounts.len(), 7);
        let root = &mounts[0];
        assert_eq!((root.mount_id, root.parent_id), (22, 1));
        assert_eq!((root.major, root.minor), (254, 0));
        assert_eq!(root.mount_point, "/");
        assert_eq!(root.optional, vec!["shared:1"]);
        assert_eq!(root.fs_type, "ext4");
        assert_eq!(root.source, "/dev/vda");
        let run = &mounts[4];
        assert_eq!(run.optional, vec!["shared:5", "master:1"]);
        assert_eq!(run.fs_type, "tmpfs");
        let spaced = &mounts[5];
        assert!(spaced.optional.is_empty());
        assert_eq!(spaced.root, "/sub/dir");
        assert_eq!(spaced.mount_point, "/run/my dir");
        assert_eq!(mounts[6].mount_point, "/mnt/a\\b");
        assert_eq!(mounts[6].source, "tmp fs");
        assert_eq!(mounts[6].optional, vec!["unbindable"]);
    }

    #[test]
    fn mountinfo_garbage_is_an_error_naming_the_line() {
        let err = parse_mountinfo("22 1 254:0 / / rw\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn unescape_leaves_lone_backslashes() {
        assert_eq!(unescape_octal("a\\b"), "a\\b");
        assert_eq!(unescape_octal("end\\"), "end\\");
        assert_eq!(unescape_octal("\\011tab"), "\ttab");
        assert_eq!(unescape_octal("x\\04"), "x\\04");
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn net_tcp_v4_and_v6() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13725 1 0000000000000000 100 0 0 10 0
   1: 0F02000A:0016 0202000A:E908 01 00000000:00000000 02:0009F2C8 00000000     0        0 16450 4 0000000000000000 20 4 29 10 -1
";
        let got = parse_net_tcp(v4).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].local, "0.0.0.0:22".parse().unwrap());
        assert_eq!(got[0].state, TcpState::Listen);
        assert_eq!(got[0].inode, 13725);
        // The lab connection: 10.0.2.15:22 <- 10.0.2.2:59656.
        assert_eq!(got[1].local, "10.0.2.15:22".parse().unwrap());
        assert_eq!(got[1].remote, "10.0.2.2:59656".parse().unwrap());
        assert_eq!(got[1].state, TcpState::Established);
        assert_eq!(got[1].uid, 0);

        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13727 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:A4B2 01 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 20 4 30 10 -1
   2: 000080FE00000000FF005452123456FE:0016 000080FE00000000FF005452ABCDEFFE:C350 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
";
        let got = parse_net_tcp(v6).unwrap();
        assert_eq!(got[0].local, "[::1]:22".parse().unwrap());
        assert_eq!(got[1].local, "[::ffff:127.0.0.1]:8080".parse().unwrap());
        assert_eq!(got[1].remote.port(), 0xA4B2);
        assert_eq!(got[1].uid, 1000);
        assert_eq!(
            got[2].local,
            "[fe80::5254:ff:fe56:3412]:22".parse().unwrap()
        );
        assert_eq!(got[2].state, TcpState::TimeWait);
    }

    #[test]
    fn net_tcp_short_line_is_an_error() {
        let err = parse_net_tcp("header\n   0: 00000000:0016 00000000:0000 0A\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(parse_hex_sockaddr("0100007F").is_err());
        assert!(parse_hex_sockaddr("0100007:0016").is_err());
    }

    #[test]
    fn net_unix_with_abstract_unbound_and_spaced_paths() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 13402 /run/systemd/private
0000000000000000: 00000003 00000000 00000000 0001 03  1160
0000000000000000: 00000002 00000000 00010000 0001 01 20456 @/tmp/.X11-unix/X0
0000000000000000: 00000002 00000000 00000000 0002 01 11870 /run/systemd/journal/dev-log
0000000000000000: 00000002 00000000 00000000 0005 03 31337 @
0000000000000000: 00000002 00000000 00000000 0001 01 4242 /tmp/with space/sock
0000000000000000: 00000002 00000000 00000000 0003 01 4243
";
        let got = parse_net_unix(text).unwrap();
        assert_eq!(got.len(), 7);
        assert_eq!(
            got[0],
            UnixEntry {
                inode: 13402,
                kind: UnixType::Stream,
                state: UnixState::Unconnected,
                listening: true,
                path: Some("/run/systemd/private".into()),
            }
        );
        assert_eq!(got[1].path, None);
        assert_eq!(got[1].state, UnixState::Connected);
        assert!(!got[1].listening);
        assert_eq!(got[2].path.as_deref(), Some("@/tmp/.X11-unix/X0"));
        assert_eq!(got[3].kind, UnixType::Dgram);
        assert_eq!(got[4].kind, UnixType::Seqpacket);
        assert_eq!(got[4].path.as_deref(), Some("@"));
        assert_eq!(got[5].path.as_deref(), Some("/tmp/with space/sock"));
        assert_eq!(got[6].kind, UnixType::Other(3));
    }

    #[test]
    fn bracket_inodes() {
        assert_eq!(bracket_inode("socket:[16450]", "socket"), Some(16450));
        assert_eq!(bracket_inode("pipe:[77]", "socket"), None);
        assert_eq!(bracket_inode("socket:[x]", "socket"), None);
        assert_eq!(parse_children("12 34 \n").unwrap(), vec![12, 34]);
        assert_eq!(parse_children("").unwrap(), Vec::<i32>::new());
    }

    #[test]
    fn unix_diag_reply_parsing() {
        // Two messages (one with a peer, one without), then DONE.
        let mut buf = Vec::new();
        let mut push_msg = |ino: u32, peer: Option<u32>| {
            let mut body = vec![libc::AF_UNIX as u8, 1, 3, 0];
            body.extend_from_slice(&ino.to_ne_bytes());
            body.extend_from_slice(&[0u8; 8]);
            // An unrelated attribute with an unaligned length first.
            body.extend_from_slice(&7u16.to_ne_bytes());
            body.extend_from_slice(&0u16.to_ne_bytes());
            body.extend_from_slice(&[b'x', b'y', b'z', 0]);
            if let Some(p) = peer {
                body.extend_from_slice(&8u16.to_ne_bytes());
                body.extend_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
                body.extend_from_slice(&p.to_ne_bytes());
            }
            let len = (NLMSG_HDRLEN + body.len()) as u32;
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
            buf.extend_from_slice(&[0u8; 10]);
            buf.extend_from_slice(&body);
        };
        push_msg(1160, Some(1161));
        push_msg(13402, None);
        let mut peers = HashMap::new();
        assert_eq!(
            parse_unix_diag(&buf, &mut peers).unwrap(),
            DiagProgress::More
        );
        assert_eq!(peers, HashMap::from([(1160, 1161)]));

        let mut done = (NLMSG_HDRLEN as u32 + 4).to_ne_bytes().to_vec();
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&[0u8; 14]);
        assert_eq!(
            parse_unix_diag(&done, &mut peers).unwrap(),
            DiagProgress::Done
        );

        let mut bad = 400u32.to_ne_bytes().to_vec();
        bad.extend_from_slice(&[0u8; 12]);
        assert!(parse_unix_diag(&bad, &mut peers).is_err());
        assert_eq!(unix_diag_request(1).len(), 40);
    }

    // ---- live, read-only, on this host ----

    #[test]
    fn live_self_reads() {
        let proc = Procfs::host();
        let me = std::process::id() as i32;
        let st = proc.status(me).unwrap();
        assert_eq!(st.tgid, me);
        assert_eq!(st.ppid, std::os::unix::process::parent_id() as i32);
        assert!(proc.stat(me).unwrap().ppid == st.ppid);
        assert!(!proc.cmdline(me).unwrap().is_empty());
        let mounts = proc.mountinfo(me).unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == "/"));
        let fds = proc.fds(me).unwrap();
        assert!(!fds.is_empty());
        let (fd, _) = fds[0];
        let info = proc.fdinfo(me, fd).unwrap();
        // Unless the fd is on an internal mount, its mount is visible.
        if let Some(id) = info.mnt_id {
            let target = &fds[0].1;
            if target.starts_with('/') {
                assert!(mounts.iter().any(|m| m.mount_id == id), "{target}");
            }
        }
        proc.tcp(me).unwrap();
        proc.unix(me).unwrap();
        assert!(proc.pids().unwrap().contains(&me));
    }

    /// Regression: `locate` failed when a task of the tree exited while
    /// its mountinfo was read (`EINVAL`: the exiting task has no mount
    /// namespace any more); seen as a flaky unit test.
    #[test]
    fn an_exiting_task_counts_as_gone() {
        let exiting = ProcError::Io {
            path: "/proc/4242/mountinfo".into(),
            pid: Some(4242),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert!(exiting.is_gone());
        let denied = ProcError::Io {
            path: "/proc/4242/mountinfo".into(),
            pid: Some(4242),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(!denied.is_gone());
    }

    #[test]
    fn live_missing_pid_error_names_file_and_pid() {
        let proc = Procfs::host();
        // Pids are at most 2^22; this one cannot exist.
        let err = proc.status(999_999_999).unwrap_err();
        assert!(err.is_gone());
        assert_eq!(err.pid(), Some(999_999_999));
        let msg = err.to_string();
        assert!(msg.contains("/proc/999999999/status"), "{msg}");
        assert!(msg.contains("pid 999999999"), "{msg}");
    }

    #[test]
    fn live_children_of_a_spawned_child() {
        let proc = Procfs::host();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let kids = proc.children(me).unwrap();
        let pid = child.id() as i32;
        let _ = child.kill();
        let _ = child.wait();
        assert!(kids.contains(&pid), "{kids:?} lacks {pid}");
    }

    #[test]
    fn live_unix_peers_of_a_socketpair() {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ino = |s: &std::os::unix::net::UnixStream| {
            use std::os::fd::AsRawFd;
            std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let (ia, ib) = (ino(&a), ino(&b));
        match unix_peers() {
            Ok(peers) => {
                assert_eq!(peers.get(&ia), Some(&ib));
                assert_eq!(peers.get(&ib), Some(&ia));
            }
            // Kernels without unix_diag: nothing to check.
            Err(e) => eprintln!("unix_diag unavailable: {e}"),
        }
    }
}
