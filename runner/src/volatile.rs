//! Files of the session on filesystems the reboot empties (tmpfs under
//! `/run`, `/dev/shm`, a tmpfs `/tmp`): saved after the dump, put back
//! before the restore.
//!
//! criu saves no file contents and no FIFO nodes, only paths (and sizes to
//! check), so after the reboot every such path must be there again, of the
//! same type, size, mode and owner. `save` runs once the session is frozen
//! and killed (its files cannot change any more), `put_back` before every
//! restore attempt; a path that is still there (an in-place restore on the
//! old kernel) is left alone. Directories leading to them, and to unix
//! sockets the session bound there, are re-created with their old mode and
//! owner.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::session::{FileType, Session, VOLATILE_FS};

/// One path to put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub path: String,
    pub file_type: FileType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Where the contents of a regular file were saved.
    pub copy: Option<PathBuf>,
    /// Directories from the mount point down to it, top first.
    pub parents: Vec<Dir>,
}

/// A directory to re-create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dir {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum VolatileError {
    #[error("cannot save {path} of the session: {source}")]
    Save {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot put back {path} for the restore: {source}")]
    PutBack {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is there again after the reboot but is not what the session had ({why}); move it away and run `ferry resume --retry`"
    )]
    Clash { path: String, why: String },
}

/// Save what `session` has on volatile filesystems into `dir`; `fs_of`
/// tells the filesystem type of a path (the host's mountinfo).
pub fn save(
    session: &Session,
    dir: &Path,
    fs_of: &dyn Fn(&Path) -> Option<String>,
) -> Result<Vec<Saved>, VolatileError> {
    let mut out: Vec<Saved> = Vec::new();
    for (i, f) in session.files.iter().filter(|f| f.is_volatile()).enumerate() {
        let err = |source| VolatileError::Save {
            path: f.path.clone(),
            source,
        };
        // `locate` read these before the upgrade; the session may have
        // grown, chmod-ed or removed them since. What counts is now (the
        // tree is dead: nothing changes them any more). A path gone by now
        // is no longer the session's by name: criu carries a deleted file
        // still open in its images.
        let md = match std::fs::symlink_metadata(&f.path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(e)),
        };
        let copy = if f.file_type == FileType::File {
            std::fs::create_dir_all(dir).map_err(err)?;
            let dest = dir.join(format!("{i}"));
            std::fs::copy(&f.path, &dest).map_err(err)?;
            crate::state::set_mode(&dest, 0o600).map_err(err)?;
            Some(dest)
        } else {
            None
        };
        out.push(Saved {
            path: f.path.clone(),
            file_type: f.file_type,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if f.file_type == FileType::File {
                md.len()
            } else {
                0
            },
            copy,
            parents: parents(Path::new(&f.path), fs_of).map_err(err)?,
        });
    }
    // Sockets the session bound on a volatile filesystem: criu binds them
    // again, into a directory that must exist.
    for u in &session.unix_sockets {
        let Some(path) = u.path.as_deref().filter(|p| p.starts_with('/')) else {
            continue;
        };
        let Some(parent) = Path::new(path).parent() else {
            continue;
        };
        if !fs_of(parent).is_some_and(|fs| VOLATILE_FS.contains(&fs.as_str())) {
            continue;
        }
        let err = |source| VolatileError::Save {
            path: parent.display().to_string(),
            source,
        };
        let md = std::fs::metadata(parent).map_err(err)?;
        if out.iter().any(|s| Path::new(&s.path) == parent) {
            continue;
        }
        out.push(Saved {
            path: parent.display().to_string(),
            file_type: FileType::Dir,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: 0,
            copy: None,
            parents: parents(parent, fs_of).map_err(err)?,
        });
    }
    Ok(out)
}

/// The filesystem `path` will be on after the reboot, as [`save`] needs
/// it: under an on-disk `/tmp` the next boot covers with a tmpfs
/// (`tmp_hidden`), what is below `/tmp` counts as tmpfs already, so the
/// directories of sockets bound there are re-created; `/tmp` itself is the
/// new mount point, there anyway.
pub fn fs_after_reboot(
    path: &Path,
    tmp_hidden: bool,
    fs_now: &dyn Fn(&Path) -> Option<String>,
) -> Option<String> {
    if tmp_hidden && crate::next_boot::below_tmp(path) {
        Some("tmpfs".to_string())
    } else {
        fs_now(path)
    }
}

/// The directories between the mount point of `path` and `path`, top
/// first: the ones on the same filesystem, which vanish with it.
fn parents(path: &Path, fs_of: &dyn Fn(&Path) -> Option<String>) -> std::io::Result<Vec<Dir>> {
    let dev = std::fs::symlink_metadata(path).map(|m| m.dev()).ok();
    let mut out = Vec::new();
    let mut cur = path.parent();
    while let Some(dir) = cur {
        if dir == Path::new("/") {
            break;
        }
        let md = std::fs::metadata(dir)?;
        let same_fs = match dev {
            Some(d) => md.dev() == d,
            None => fs_of(dir).is_some_and(|fs| VOLATILE_FS.contains(&fs.as_str())),
        };
        if !same_fs || is_mount_point(dir)? {
            break;
        }
        out.push(Dir {
            path: dir.display().to_string(),
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
        });
        cur = dir.parent();
    }
    out.reverse();
    Ok(out)
}

fn is_mount_point(dir: &Path) -> std::io::Result<bool> {
    let md = std::fs::metadata(dir)?;
    match dir.parent() {
        Some(parent) => Ok(std::fs::metadata(parent)?.dev() != md.dev()),
        None => Ok(true),
    }
}

/// Put every saved path back where it is missing; returns what was done,
/// for people. Idempotent: a later attempt finds them there.
pub fn put_back(saved: &[Saved]) -> Result<Vec<String>, VolatileError> {
    let mut done = Vec::new();
    for s in saved {
        for d in &s.parents {
            if make_dir(d)? {
                done.push(format!("re-created directory {}", d.path));
            }
        }
        let path = Path::new(&s.path);
        match std::fs::symlink_metadata(path) {
            Ok(md) => {
                check_same(s, &md)?;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(VolatileError::PutBack {
                    path: s.path.clone(),
                    source,
                });
            }
        }
        let err = |source| VolatileError::PutBack {
            path: s.path.clone(),
            source,
        };
        match s.file_type {
            FileType::Fifo => {
                mkfifo(path).map_err(err)?;
                done.push(format!("re-created FIFO {}", s.path));
            }
            FileType::Dir => {
                std::fs::create_dir(path).map_err(err)?;
                done.push(format!("re-created directory {}", s.path));
            }
            _ => {
                let copy = s
                    .copy
                    .as_ref()
                    .ok_or_else(|| err(std::io::Error::other("its contents were not saved")))?;
                std::fs::copy(copy, path).map_err(err)?;
                done.push(format!("put back {} ({} bytes)", s.path, s.size));
            }
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(s.mode)).map_err(err)?;
        chown(path, s.uid, s.gid).map_err(err)?;
        // chown clears set-id bits: set the mode again.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(s.mode)).map_err(err)?;
    }
    Ok(done)
}

fn check_same(s: &Saved, md: &std::fs::Metadata) -> Result<(), VolatileError> {
    let ft = md.file_type();
    use std::os::unix::fs::FileTypeExt;
    let same_type = match s.file_type {
        FileType::Fifo => ft.is_fifo(),
        FileType::Dir => ft.is_dir(),
        FileType::File => ft.is_file(),
        FileType::Other => true,
    };
    if !same_type {
        return Err(VolatileError::Clash {
            path: s.path.clone(),
            why: format!("it is not a {:?} any more", s.file_type).to_lowercase(),
        });
    }
    if s.file_type == FileType::File && md.size() != s.size {
        return Err(VolatileError::Clash {
            path: s.path.clone(),
            why: format!(
                "{} bytes now, {} at the dump; criu checks the size",
                md.size(),
                s.size
            ),
        });
    }
    Ok(())
}

fn make_dir(d: &Dir) -> Result<bool, VolatileError> {
    let path = Path::new(&d.path);
    let err = |source| VolatileError::PutBack {
        path: d.path.clone(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => return Ok(false),
        Ok(_) => {
            return Err(VolatileError::Clash {
                path: d.path.clone(),
                why: "it is not a directory".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(err(source)),
    }
    std::fs::create_dir(path).map_err(err)?;
    chown(path, d.uid, d.gid).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(d.mode)).map_err(err)?;
    Ok(true)
}

fn cpath(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path contains a NUL byte"))
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    // Only root can give files away; as anyone else (tests) the owner is
    // already right or cannot be changed, and criu runs as root anyway.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// The filesystem type of `path` on this host, from `/proc/self/mountinfo`.
pub fn host_fs_of(path: &Path) -> Option<String> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let mounts = crate::procfs::Procfs::host()
        .mountinfo(std::process::id() as i32)
        .ok()?;
    mounts
        .into_iter()
        .find(|m| m.major == libc::major(dev) && m.minor == libc::minor(dev))
        .map(|m| m.fs_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{FileUse, FileUser, UsedFile};

    fn used(path: &Path, file_type: FileType, mode: u32) -> UsedFile {
        let md = std::fs::metadata(path).unwrap();
        UsedFile {
            path: path.display().to_string(),
            deleted: false,
            file_type,
            mode,
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            dev: md.dev(),
            inode: md.ino(),
            fs_type: Some("tmpfs".into()),
            hidden_at_next_boot: false,
            users: vec![FileUser {
                pid: 466,
                how: FileUse::Fd(7),
            }],
        }
    }

    /// A tree standing in for /run: a FIFO and a file two directories
    /// down, saved, wiped (the reboot), and put back.
    /// Review finding: a socket in /tmp/tmux-1000/ on an on-disk /tmp the
    /// next boot covers was not saved (its directory was on ext4 now).
    #[test]
    fn below_a_hidden_tmp_counts_as_tmpfs() {
        let disk = |_: &Path| Some("ext4".to_string());
        let after = |p: &str, hidden| fs_after_reboot(Path::new(p), hidden, &disk);
        assert_eq!(after("/tmp/tmux-1000", true).as_deref(), Some("tmpfs"));
        assert_eq!(
            after("/tmp", true).as_deref(),
            Some("ext4"),
            "the mount point"
        );
        assert_eq!(after("/tmpx/a", true).as_deref(), Some("ext4"));
        assert_eq!(after("/tmp/tmux-1000", false).as_deref(), Some("ext4"));
    }

    #[test]
    fn saved_files_come_back_after_the_wipe() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let deep = run.join("ferry-test/sub");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::set_permissions(
            run.join("ferry-test"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let fifo = deep.join("fifo");
        mkfifo(&fifo).unwrap();
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o620)).unwrap();
        let data = deep.join("data");
        std::fs::write(&data, b"session data").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o640)).unwrap();

        let mut session = crate::session::tests::sample();
        session.files = vec![
            used(&fifo, FileType::Fifo, 0o620),
            used(&data, FileType::File, 0o640),
        ];
        // The whole tmp dir plays one filesystem: the mount point is the
        // tempdir's own parent filesystem boundary, so stop at `run`.
        let fs_of = |_: &Path| Some("tmpfs".to_string());
        let saved = save(&session, &tmp.path().join("saved"), &fs_of).unwrap();
        assert_eq!(saved.len(), 2);
        assert!(saved[1].copy.as_ref().unwrap().is_file());
        let names: Vec<&str> = saved[0].parents.iter().map(|d| d.path.as_str()).collect();
        assert!(
            names.ends_with(&[
                run.join("ferry-test").to_str().unwrap(),
                deep.to_str().unwrap()
            ]),
            "{names:?}"
        );

        // Nothing to do while everything is still there.
        assert!(put_back(&saved).unwrap().is_empty());

        std::fs::remove_dir_all(run.join("ferry-test")).unwrap();
        let done = put_back(&saved).unwrap();
        assert!(
            done.iter().any(|d| d.starts_with("re-created FIFO")),
            "{done:?}"
        );
        assert!(done.iter().any(|d| d.starts_with("put back")), "{done:?}");
        use std::os::unix::fs::FileTypeExt;
        let md = std::fs::metadata(&fifo).unwrap();
        assert!(md.file_type().is_fifo());
        assert_eq!(md.mode() & 0o7777, 0o620);
        assert_eq!(std::fs::read(&data).unwrap(), b"session data");
        assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::metadata(run.join("ferry-test")).unwrap().mode() & 0o7777,
            0o750
        );
        // And again: idempotent.
        assert!(put_back(&saved).unwrap().is_empty());
    }

    /// Regression: the save took sizes and modes from `locate`, before the
    /// upgrade. A log the session kept writing then failed the in-place
    /// restore with a clash, and a file it removed meanwhile failed the save.
    #[test]
    fn the_save_takes_files_as_they_are_at_the_dump() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("job.log");
        std::fs::write(&log, b"early").unwrap();
        let gone = tmp.path().join("gone");
        std::fs::write(&gone, b"x").unwrap();
        let mut session = crate::session::tests::sample();
        session.files = vec![
            used(&log, FileType::File, 0o644),
            used(&gone, FileType::File, 0o644),
        ];
        // After `locate`: the job writes on, chmods, removes the other.
        std::fs::write(&log, b"early and later lines").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&gone).unwrap();

        let fs_of = |_: &Path| Some("tmpfs".to_string());
        let saved = save(&session, &tmp.path().join("saved"), &fs_of).unwrap();
        assert_eq!(saved.len(), 1, "{saved:?}");
        assert_eq!(saved[0].size, 21);
        assert_eq!(saved[0].mode, 0o600);
        // On the old kernel (the in-place restore) it is found as saved.
        assert!(put_back(&saved).unwrap().is_empty());
    }

    #[test]
    fn a_different_file_in_the_way_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::write(&data, b"12345").unwrap();
        let saved = Saved {
            path: data.display().to_string(),
            file_type: FileType::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 3,
            copy: None,
            parents: vec![],
        };
        let err = put_back(std::slice::from_ref(&saved))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("5 bytes now, 3 at the dump") && err.contains("ferry resume --retry"),
            "{err}"
        );
        let fifo = Saved {
            file_type: FileType::Fifo,
            ..saved
        };
        let err = put_back(&[fifo]).unwrap_err().to_string();
        assert!(err.contains("not a fifo"), "{err}");
    }

    #[test]
    fn host_fs_of_the_root() {
        assert!(host_fs_of(Path::new("/")).is_some());
    }
}
