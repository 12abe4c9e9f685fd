//! `dir`: a local or mounted directory. The embedded default backend.
//!
//! Objects are plain files under the root, the key's `/`s being
//! subdirectories. A put writes a temporary file beside the target, fsyncs
//! it, renames it into place without replacing anything
//! (`renameat2(RENAME_NOREPLACE)`, falling back to `link` + `unlink` on
//! filesystems without it) and fsyncs the directory, so a crash leaves
//! either the whole object or nothing (plus at most a `.ferry-tmp-*` file,
//! which a later put into the same directory removes once its writer is
//! gone and it is a day old).

use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{
    Backend, BackendError, CopyError, ErrorKind, Receipt, RemoteObject, TMP_PREFIX, copy_hashed,
    validate_key,
};

const NAME: &str = "dir";

/// A directory used as an object store.
#[derive(Debug)]
pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    /// Uses `root`, creating it (and missing parents) with mode 0700 if it
    /// does not exist. An existing root keeps its mode.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, BackendError> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(BackendError::new(
                    NAME,
                    ErrorKind::Config,
                    format!("root {} exists and is not a directory", root.display()),
                    "point the dir backend at a directory",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&root)
                    .map_err(|e| {
                        BackendError::from_io(
                            NAME,
                            format!("cannot create root {}", root.display()),
                            e,
                        )
                    })?;
            }
            Err(e) => {
                return Err(BackendError::from_io(
                    NAME,
                    format!("cannot inspect root {}", root.display()),
                    e,
                ));
            }
        }
        let root = fs::canonicalize(&root).map_err(|e| {
            BackendError::from_io(NAME, format!("cannot resolve root {}", root.display()), e)
        })?;
        Ok(DirBackend { root })
    }

    /// The (canonical) root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io_err(&self, what: String, e: io::Error) -> BackendError {
        BackendError::from_io(NAME, what, e)
    }

    fn hash_file(&self, path: &Path) -> Result<(u64, String), BackendError> {
        super::hash_file(NAME, path)
    }

    /// Compares an existing object with the source's size and hash: a
    /// receipt when equal, a conflict otherwise.
    fn existing(
        &self,
        key: &str,
        dest: &Path,
        size: u64,
        sha: &str,
    ) -> Result<Receipt, BackendError> {
        let meta = fs::symlink_metadata(dest)
            .map_err(|e| self.io_err(format!("cannot inspect {}", dest.display()), e))?;
        if !meta.is_file() {
            return Err(conflict(key, dest, "it is not a regular file"));
        }
        let (have_size, have_sha) = if meta.len() == size {
            self.hash_file(dest)?
        } else {
            (meta.len(), String::new())
        };
        if have_size == size && have_sha == sha {
            Ok(self.receipt(key, dest, size, sha.to_string()))
        } else {
            Err(conflict(
                key,
                dest,
                &format!("it holds {have_size} bytes that differ from the {size} being put"),
            ))
        }
    }

    fn receipt(&self, key: &str, dest: &Path, size: u64, sha256: String) -> Receipt {
        Receipt {
            backend: NAME.to_string(),
            key: key.to_string(),
            location: dest.to_string_lossy().into_owned(),
            size,
            sha256,
        }
    }

    /// Copies `src` to a new temporary file beside `dest`, fsynced; returns
    /// its path, size and hash.
    fn copy_to_tmp(
        &self,
        src: &mut File,
        src_path: &Path,
        dest: &Path,
        mode: u32,
    ) -> Result<(PathBuf, u64, String), BackendError> {
        let tmp = super::tmp_beside(dest);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| self.io_err(format!("cannot create {}", tmp.display()), e))?;
        let result = (|| {
            let (n, sha) = copy_hashed(src, &mut out, &mut |_| {
                crate::failpoint::hit("dir.copy.chunk")
            })
            .map_err(|e| match e {
                CopyError::Read(e) => self.io_err(format!("cannot read {}", src_path.display()), e),
                CopyError::Write(e) => self.io_err(format!("cannot write {}", tmp.display()), e),
            })?;
            out.sync_all()
                .map_err(|e| self.io_err(format!("cannot fsync {}", tmp.display()), e))?;
            Ok((n, sha))
        })();
        match result {
            Ok((n, sha)) => Ok((tmp, n, sha)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn fsync_dir(&self, dir: &Path) -> Result<(), BackendError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io_err(format!("cannot fsync directory {}", dir.display()), e))
    }
}

fn conflict(key: &str, dest: &Path, why: &str) -> BackendError {
    BackendError::new(
        NAME,
        ErrorKind::Conflict,
        format!("key {key:?} already exists at {} and {why}", dest.display()),
        "put it under a new key (bundle names carry the run id), or remove the old object by hand if it is wrong",
    )
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let cfrom = CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cto = CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Not supported by this filesystem or kernel: link(2) also refuses
        // to replace.
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            fs::hard_link(from, to)?;
            let _ = fs::remove_file(from);
            Ok(())
        }
        _ => Err(e),
    }
}

impl Backend for DirBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn put(&self, key: &str, src: &Path) -> Result<Receipt, BackendError> {
        validate_key(NAME, key)?;
        let dest = self.path_of(key);
        let mut file = File::open(src)
            .map_err(|e| self.io_err(format!("cannot open source {}", src.display()), e))?;
        if fs::symlink_metadata(&dest).is_ok() {
            let (size, sha) = self.hash_file(src)?;
            return self.existing(key, &dest, size, &sha);
        }
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(|e| self.io_err(format!("cannot create {}", parent.display()), e))?;
        let (tmp, size, sha) = self.copy_to_tmp(&mut file, src, &dest, 0o600)?;
        crate::failpoint::hit("dir.put.copied");
        match rename_noreplace(&tmp, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Someone put the same key meanwhile.
                let _ = fs::remove_file(&tmp);
                return self.existing(key, &dest, size, &sha);
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(self.io_err(
                    format!("cannot rename {} to {}", tmp.display(), dest.display()),
                    e,
                ));
            }
        }
        crate::failpoint::hit("dir.put.renamed");
        self.fsync_dir(&parent)?;
        sweep_stale_tmp(&parent, std::time::SystemTime::now());
        Ok(self.receipt(key, &dest, size, sha))
    }

    fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, BackendError> {
        // The directory part of the prefix must itself be a valid key.
        let base = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        if !base.is_empty() {
            validate_key(NAME, base)?;
        }
        if prefix.chars().any(|c| c.is_control() || c == '\\') {
            validate_key(NAME, prefix)?;
        }
        let start = self.path_of(base);
        let mut out = Vec::new();
        let mut stack = vec![(start, base.to_string())];
        while let Some((dir, key_prefix)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.kind() == io::ErrorKind::NotADirectory =>
                {
                    continue;
                }
                Err(e) => return Err(self.io_err(format!("cannot list {}", dir.display()), e)),
            };
            for entry in rd {
                let entry =
                    entry.map_err(|e| self.io_err(format!("cannot list {}", dir.display()), e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if name.starts_with(TMP_PREFIX) {
                    continue;
                }
                let key = if key_prefix.is_empty() {
                    name
                } else {
                    format!("{key_prefix}/{name}")
                };
                let ft = entry.file_type().map_err(|e| {
                    self.io_err(format!("cannot inspect {}", entry.path().display()), e)
                })?;
                if ft.is_dir() {
                    // Only descend where keys can still match.
                    let as_dir = format!("{key}/");
                    if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                        stack.push((entry.path(), key));
                    }
                } else if ft.is_file() && key.starts_with(prefix) {
                    let meta = entry.metadata().map_err(|e| {
                        self.io_err(format!("cannot inspect {}", entry.path().display()), e)
                    })?;
                    let modified = meta.modified().map_err(|e| {
                        self.io_err(
                            format!("cannot read mtime of {}", entry.path().display()),
                            e,
                        )
                    })?;
                    out.push(RemoteObject {
                        key,
                        size: meta.len(),
                        modified,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn get(&self, key: &str, dest: &Path) -> Result<(), BackendError> {
        validate_key(NAME, key)?;
        let src = self.path_of(key);
        let mut file = match File::open(&src) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BackendError::new(
                    NAME,
                    ErrorKind::NotFound,
                    format!("no object under key {key:?} in {}", self.root.display()),
                    "list the keys with `list` and check the spelling",
                ));
            }
            Err(e) => return Err(self.io_err(format!("cannot open {}", src.display()), e)),
        };
        let parent = crate::paths::dir_of(dest).to_path_buf();
        let (tmp, _, _) = self.copy_to_tmp(&mut file, &src, dest, 0o644)?;
        if let Err(e) = fs::rename(&tmp, dest) {
            let _ = fs::remove_file(&tmp);
            return Err(self.io_err(
                format!("cannot rename {} to {}", tmp.display(), dest.display()),
                e,
            ));
        }
        self.fsync_dir(&parent)
    }

    fn share(&self, key: &str) -> Result<Option<String>, BackendError> {
        validate_key(NAME, key)?;
        let path = self.path_of(key);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(path.to_string_lossy().into_owned())),
            Ok(_) | Err(_) => Err(BackendError::new(
                NAME,
                ErrorKind::NotFound,
                format!("no object under key {key:?} in {}", self.root.display()),
                "put it first, or list the keys with `list`",
            )),
        }
    }
}

/// A temporary file is stale once its writer is gone (killed mid-copy)
/// and it has not changed for this long: the age keeps a copy in progress
/// on another host sharing the store (its pid means nothing here) safe.
const STALE_TMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes the `.ferry-tmp-<pid>-…` files in `dir` that a killed put left
/// behind (a crash leaves at most one per put; without this they stayed
/// for good). Best effort: a file it cannot judge or remove stays.
fn sweep_stale_tmp(dir: &Path, now: std::time::SystemTime) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TMP_PREFIX))
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        let old = entry
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= STALE_TMP_AGE);
        // SAFETY: kill with signal 0 only asks whether the pid exists.
        let gone = unsafe { libc::kill(pid, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if old && gone {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, data: &[u8]) {
        fs::write(path, data).expect("write test file");
    }

    fn setup() -> (tempfile::TempDir, DirBackend) {
        let t = tempfile::tempdir().expect("tempdir");
        let b = DirBackend::new(t.path().join("store/nested")).expect("backend");
        (t, b)
    }

    #[test]
    fn root_is_created_private() {
        let (_t, b) = setup();
        let mode = fs::metadata(b.root()).expect("root").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn root_that_is_a_file_is_a_config_error() {
        let t = tempfile::tempdir().expect("tempdir");
        let f = t.path().join("file");
        write(&f, b"x");
        let e = DirBackend::new(&f).expect_err("file root");
        assert_eq!(e.kind(), ErrorKind::Config);
    }

    #[test]
    fn put_get_list_share() {
        let (t, b) = setup();
        let src = t.path().join("b.tar.gz");
        write(&src, b"bundle bytes");
        let r = b.put("host/run-1/b.tar.gz", &src).expect("put");
        assert_eq!(r.backend, "dir");
        assert_eq!(r.size, 12);
        assert_eq!(r.sha256, hex::encode(Sha256::digest(b"bundle bytes")));
        assert_eq!(fs::read(&r.location).expect("stored"), b"bundle bytes");

        let dest = t.path().join("back");
        b.get("host/run-1/b.tar.gz", &dest).expect("get");
        assert_eq!(fs::read(&dest).expect("fetched"), b"bundle bytes");

        write(&src, b"other");
        b.put("host/run-2/c.tar.gz", &src).expect("put 2");
        b.put("other/x", &src).expect("put 3");
        let keys: Vec<String> = b
            .list("host/")
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["host/run-1/b.tar.gz", "host/run-2/c.tar.gz"]);
        let keys: Vec<String> = b
            .list("host/run-1")
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["host/run-1/b.tar.gz"]);
        assert_eq!(b.list("").expect("list all").len(), 3);
        assert!(b.list("nothing/").expect("list none").is_empty());

        let shared = b.share("other/x").expect("share").expect("a path");
        assert_eq!(fs::read(shared).expect("shared path"), b"other");
        assert_eq!(
            b.share("missing").expect_err("missing").kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn second_put_of_same_content_is_a_no_op() {
        let (t, b) = setup();
        let src = t.path().join("b");
        write(&src, b"same");
        let r1 = b.put("k/b", &src).expect("put");
        let stored = Path::new(&r1.location).to_path_buf();
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&stored).expect("meta"));
        let r2 = b.put("k/b", &src).expect("put again");
        assert_eq!(r1, r2);
        let ino2 = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&stored).expect("meta"));
        assert_eq!(ino, ino2, "the object was rewritten");
        let names: Vec<_> = fs::read_dir(stored.parent().expect("parent"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "left over: {names:?}");
    }

    #[test]
    fn different_content_under_existing_key_is_refused() {
        let (t, b) = setup();
        let src = t.path().join("b");
        write(&src, b"first");
        let r = b.put("k", &src).expect("put");
        for other in [&b"second"[..], b"firsT"] {
            write(&src, other);
            let e = b.put("k", &src).expect_err("conflict");
            assert_eq!(e.kind(), ErrorKind::Conflict);
            assert!(!e.is_transient());
            assert!(e.to_string().contains("new key"), "{e}");
        }
        assert_eq!(fs::read(&r.location).expect("kept"), b"first");
    }

    #[test]
    fn bad_keys_are_refused_before_touching_disk() {
        let (t, b) = setup();
        let src = t.path().join("b");
        write(&src, b"x");
        for key in ["", "/abs", "../escape", "a/../../b", "a//b", "a/", "./a"] {
            let e = b.put(key, &src).expect_err(key);
            assert_eq!(e.kind(), ErrorKind::InvalidKey, "{key}");
            assert_eq!(
                b.get(key, &t.path().join("o")).expect_err(key).kind(),
                ErrorKind::InvalidKey
            );
        }
        assert!(b.list("").expect("list").is_empty());
        assert!(!t.path().join("escape").exists());
    }

    #[test]
    fn missing_source_and_missing_key() {
        let (t, b) = setup();
        let e = b.put("k", &t.path().join("nope")).expect_err("missing src");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = b.get("nope", &t.path().join("o")).expect_err("missing key");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!t.path().join("o").exists());
    }

    /// Racing puts of one key: equal content all succeed with one object;
    /// different content never replaces what landed first.
    #[test]
    fn concurrent_puts_of_one_key() {
        let (t, b) = setup();
        let b = std::sync::Arc::new(b);
        for round in 0..10 {
            let key = format!("race/{round}");
            let srcs: Vec<PathBuf> = (0..4)
                .map(|i| {
                    let p = t.path().join(format!("src-{round}-{i}"));
                    // Threads 0 and 1 put the same bytes, 2 and 3 others.
                    write(&p, format!("content {}", i / 2).as_bytes());
                    p
                })
                .collect();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let handles: Vec<_> = srcs
                .into_iter()
                .map(|src| {
                    let (b, key, barrier) = (b.clone(), key.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        b.put(&key, &src)
                    })
                })
                .collect();
            let results: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect();
            let stored = fs::read(b.root().join(&key)).expect("stored");
            for r in &results {
                match r {
                    Ok(receipt) => assert_eq!(receipt.sha256, hex::encode(Sha256::digest(&stored))),
                    Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
                }
            }
            assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
            let names: Vec<_> = fs::read_dir(b.root().join("race"))
                .expect("ls")
                .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
                .filter(|n| n.starts_with(TMP_PREFIX))
                .collect();
            assert!(names.is_empty(), "temp files left: {names:?}");
        }
    }

    /// Regression: a put killed mid-copy left its temporary file for good.
    #[test]
    fn stale_temp_files_of_dead_writers_are_swept() {
        let (t, b) = setup();
        // A pid that cannot exist (above the kernel's pid_max limit).
        let dead = b.root().join(".ferry-tmp-2147483000-0-0000abcd");
        let alive = b
            .root()
            .join(format!(".ferry-tmp-{}-0-0000abcd", std::process::id()));
        let young = b.root().join(".ferry-tmp-2147483001-0-0000abcd");
        for p in [&dead, &alive, &young] {
            write(p, b"partial");
        }
        let day_ago = std::time::SystemTime::now() - STALE_TMP_AGE;
        for p in [&dead, &alive] {
            fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(day_ago)
                .unwrap();
        }
        let src = t.path().join("b");
        write(&src, b"x");
        b.put("a", &src).expect("put");
        assert!(!dead.exists(), "an old file of a dead writer goes");
        assert!(alive.exists(), "a live writer's file stays");
        assert!(
            young.exists(),
            "a recent file stays (a writer on another host)"
        );
    }

    #[test]
    fn temp_files_are_not_listed() {
        let (t, b) = setup();
        write(&b.root().join(".ferry-tmp-1-0"), b"partial");
        let src = t.path().join("b");
        write(&src, b"x");
        b.put("a", &src).expect("put");
        let keys: Vec<String> = b
            .list("")
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["a"]);
    }

    #[test]
    fn usable_as_a_trait_object() {
        let (t, b) = setup();
        let backend: Box<dyn Backend> = Box::new(b);
        let src = t.path().join("b");
        write(&src, b"x");
        assert_eq!(backend.name(), "dir");
        backend.put("a", &src).expect("put");
        assert_eq!(backend.list("a").expect("list").len(), 1);
    }
}
