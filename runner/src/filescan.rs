//! The files a process tree uses other than through sockets and pipes:
//! each task's executable, its file mappings, its open regular files,
//! FIFOs and directories, and its working directory; once per inode, with
//! type, mode, owner, size and the filesystem it lives on.
//!
//! `locate` records them before the upgrade, `dump` reads them again just
//! before criu runs: what the upgrade replaced is deleted by then (criu
//! carries a copy in the images), and what lives on tmpfs must be put back
//! after the reboot. Read-only; a task or fd that goes away meanwhile is
//! skipped.

use std::collections::{HashMap, HashSet};

use tracing::trace;

use crate::procfs::{FdStat, FileKind, ProcError, Procfs};
use crate::session::{FileType, FileUse, FileUser, UsedFile};

/// Mappings that show as paths but are no files of a filesystem ferry
/// could put back: shared anonymous memory, SysV segments, memfds, AIO
/// rings, DMA buffers and devices.
fn is_pseudo_map(path: &str) -> bool {
    [
        "/memfd:",
        "/SYSV",
        "/dev/",
        "/[aio]",
        "/anon_hugepage",
        "/dmabuf",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

/// Every file the tasks `pids` use, skipping the fds in `skip` (ttys and
/// files on mounts the task cannot see, which have their own handling).
pub fn scan(
    proc: &Procfs,
    pids: &[i32],
    skip: &HashSet<(i32, i32)>,
) -> Result<Vec<UsedFile>, ProcError> {
    let mut files: Vec<UsedFile> = Vec::new();
    let mut index: HashMap<(u64, u64), usize> = HashMap::new();
    for &pid in pids {
        let mounts = match mount_types(proc, pid) {
            Ok(m) => m,
            Err(e) if e.is_gone() => continue,
            Err(e) => return Err(e),
        };
        let mut add = |path: String, st: FdStat, how: FileUse| {
            let Some(file_type) = file_type(st.kind) else {
                return;
            };
            let (path, deleted) = match path.strip_suffix(" (deleted)") {
                Some(p) => (p.to_string(), true),
                None => (path, false),
            };
            let user = FileUser { pid, how };
            let key = (st.dev, st.ino);
            if let Some(&i) = index.get(&key) {
                if !files[i].users.contains(&user) {
                    files[i].users.push(user);
                }
                return;
            }
            let dev_key = (libc::major(st.dev), libc::minor(st.dev));
            index.insert(key, files.len());
            files.push(UsedFile {
                path,
                deleted,
                file_type,
                mode: st.mode,
                uid: st.uid,
                gid: st.gid,
                size: st.size,
                dev: st.dev,
                inode: st.ino,
                fs_type: mounts.get(&dev_key).cloned(),
                hidden_at_next_boot: false,
                users: vec![user],
            });
        };

        for (rel, how) in [("exe", FileUse::Exe), ("cwd", FileUse::Cwd)] {
            match (proc.link(pid, rel), proc.link_stat(pid, rel)) {
                (Ok(path), Ok(st)) if path.starts_with('/') => add(path, st, how),
                (Err(e), _) | (_, Err(e)) if !e.is_gone() && !is_denied(&e) => return Err(e),
                _ => trace!(pid, rel, "no {rel}"),
            }
        }

        match proc.maps(pid) {
            Ok(maps) => {
                let mut seen = HashSet::new();
                for m in maps {
                    if is_pseudo_map(&m.path) || !seen.insert((m.major, m.minor, m.inode)) {
                        continue;
                    }
                    let name = if m.deleted {
                        format!("{} (deleted)", m.path)
                    } else {
                        m.path.clone()
                    };
                    match proc.link_stat(pid, &format!("map_files/{}", m.map_files_name())) {
                        Ok(st) => add(name, st, FileUse::Map),
                        Err(e) if e.is_gone() || is_denied(&e) => {
                            trace!(pid, path = %m.path, "mapping not statable; skipped")
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) if e.is_gone() || is_denied(&e) => {}
            Err(e) => return Err(e),
        }

        let fds = match proc.fds(pid) {
            Ok(fds) => fds,
            Err(e) if e.is_gone() => continue,
            Err(e) => return Err(e),
        };
        for (fd, target) in fds {
            if !target.starts_with('/') || skip.contains(&(pid, fd)) {
                continue;
            }
            match proc.fd_stat(pid, fd) {
                Ok(st) => add(target, st, FileUse::Fd(fd)),
                Err(e) if e.is_gone() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(files)
}

fn is_denied(e: &ProcError) -> bool {
    matches!(e, ProcError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
}

fn file_type(kind: FileKind) -> Option<FileType> {
    match kind {
        FileKind::File => Some(FileType::File),
        FileKind::Fifo => Some(FileType::Fifo),
        FileKind::Dir => Some(FileType::Dir),
        _ => None,
    }
}

/// `(major, minor)` → filesystem type, from the task's mountinfo.
fn mount_types(proc: &Procfs, pid: i32) -> Result<HashMap<(u32, u32), String>, ProcError> {
    Ok(proc
        .mountinfo(pid)?
        .into_iter()
        .map(|m| ((m.major, m.minor), m.fs_type))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// This test process: its own executable, the test binary's mappings,
    /// a regular file and a FIFO it opens on a tmpdir, and its cwd.
    #[test]
    fn live_scan_of_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, b"12345").unwrap();
        let file = std::fs::File::open(&data).unwrap();
        let fifo = dir.path().join("f");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
        let fifo_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let me = std::process::id() as i32;
        let files = scan(&Procfs::host(), &[me], &HashSet::new()).unwrap();

        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let found = files.iter().find(|f| f.is_exe_of(me)).unwrap();
        assert_eq!(std::path::Path::new(&found.path), exe);
        assert!(
            found.users.iter().any(|u| u.how == FileUse::Map),
            "the executable is mapped too: {found:?}"
        );
        assert_eq!(found.file_type, FileType::File);
        assert!(found.fs_type.is_some(), "{found:?}");

        let d = files
            .iter()
            .find(|f| f.path == data.to_str().unwrap())
            .unwrap();
        assert_eq!(d.size, 5);
        use std::os::fd::AsRawFd;
        assert!(d.users.contains(&FileUser {
            pid: me,
            how: FileUse::Fd(file.as_raw_fd())
        }));
        assert_eq!(d.inode, std::fs::metadata(&data).unwrap().ino());

        let f = files
            .iter()
            .find(|f| f.path == fifo.to_str().unwrap())
            .unwrap();
        assert_eq!((f.file_type, f.mode), (FileType::Fifo, 0o640));

        // Skipped fds are not listed.
        let skip = HashSet::from([(me, fifo_file.as_raw_fd())]);
        let files = scan(&Procfs::host(), &[me], &skip).unwrap();
        assert!(!files.iter().any(|f| f.path == fifo.to_str().unwrap()));

        // A deleted file still open is marked deleted, with its old path.
        std::fs::remove_file(&data).unwrap();
        let files = scan(&Procfs::host(), &[me], &HashSet::new()).unwrap();
        let d = files
            .iter()
            .find(|f| f.path == data.to_str().unwrap())
            .unwrap();
        assert!(d.deleted && !d.is_volatile());
        drop((file, fifo_file));
    }

    #[test]
    fn a_gone_pid_is_skipped() {
        let files = scan(&Procfs::host(), &[999_999_999], &HashSet::new()).unwrap();
        assert!(files.is_empty());
    }

    #[test]
    fn pseudo_mappings() {
        for p in ["/dev/zero", "/memfd:wayland-shm", "/SYSV00000000", "/[aio]"] {
            assert!(is_pseudo_map(p), "{p}");
        }
        assert!(!is_pseudo_map("/usr/lib/x86_64-linux-gnu/libc.so.6"));
    }
}
