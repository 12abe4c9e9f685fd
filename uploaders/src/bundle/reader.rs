//! [`BundleReader`]: list, verify, read and safely extract a bundle.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use super::error::{BundleError, Result};
use super::manifest::{MANIFEST_NAME, Manifest};

/// Largest `manifest.json` accepted (a guard against hostile archives).
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

type Decoder = MultiGzDecoder<BufReader<File>>;

/// What kind of tar entry this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (all ferry writes).
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link.
    HardLink,
    /// Anything else (devices, FIFOs, GNU sparse files, …), with the tar
    /// type flag.
    Other(u8),
}

/// One entry of a bundle, as listed by [`BundleReader::entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The name as stored (lossily decoded if not UTF-8).
    pub path: String,
    /// The size recorded in the entry's header.
    pub size: u64,
    /// The entry type.
    pub kind: EntryKind,
}

/// A file whose stored bytes differ from what the manifest records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The name in the bundle.
    pub path: String,
    /// Size the manifest records.
    pub expected_size: u64,
    /// Size found in the archive.
    pub actual_size: u64,
    /// SHA-256 the manifest records.
    pub expected_sha256: String,
    /// SHA-256 of the bytes found.
    pub actual_sha256: String,
}

/// The outcome of [`BundleReader::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files hashed and compared.
    pub checked: usize,
    /// Files whose size or hash differs from the manifest.
    pub mismatched: Vec<Mismatch>,
    /// Files the manifest lists that the archive lacks.
    pub missing: Vec<String>,
    /// Entries the archive holds that the manifest does not list (including
    /// anything that is not a regular file).
    pub extra: Vec<String>,
    /// Names stored more than once.
    pub duplicates: Vec<String>,
}

impl VerifyReport {
    /// True when the archive matches its manifest exactly.
    pub fn is_ok(&self) -> bool {
        self.mismatched.is_empty()
            && self.missing.is_empty()
            && self.extra.is_empty()
            && self.duplicates.is_empty()
    }

    /// One line naming what differs (empty when all is well).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.mismatched.is_empty() {
            let names: Vec<String> = self.mismatched.iter().map(|m| m.path.clone()).collect();
            parts.push(format!("content differs for {}", list(&names)));
        }
        if !self.missing.is_empty() {
            parts.push(format!("missing {}", list(&self.missing)));
        }
        if !self.extra.is_empty() {
            parts.push(format!("not in the manifest: {}", list(&self.extra)));
        }
        if !self.duplicates.is_empty() {
            parts.push(format!("stored twice: {}", list(&self.duplicates)));
        }
        parts.join("; ")
    }

    /// `Ok(self)` when all is well, otherwise [`BundleError::Mismatch`].
    pub fn into_result(self, bundle: &Path) -> Result<Self> {
        if self.is_ok() {
            Ok(self)
        } else {
            Err(BundleError::Mismatch {
                path: bundle.to_path_buf(),
                summary: self.summary(),
            })
        }
    }
}

/// Limits for [`BundleReader::extract_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Refuse when the entries' sizes add up to more than this.
    pub max_total_bytes: u64,
    /// Refuse archives with more entries than this.
    pub max_entries: u64,
}

impl Default for ExtractLimits {
    /// 8 GiB and 100 000 entries.
    fn default() -> Self {
        ExtractLimits {
            max_total_bytes: 8 << 30,
            max_entries: 100_000,
        }
    }
}

/// What [`BundleReader::extract_to`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Regular files written (including `manifest.json`).
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// An opened bundle. [`BundleReader::open`] reads it through once (which
/// checks every gzip member's CRC) and keeps the manifest and the entry list;
/// the other methods read it again as needed.
#[derive(Debug, Clone)]
pub struct BundleReader {
    path: PathBuf,
    manifest: Manifest,
    entries: Vec<EntryInfo>,
}

enum Flow {
    Continue,
    Stop,
}

impl BundleReader {
    /// Opens and reads through the bundle at `path`: fails if it is not a
    /// complete gzip-compressed tar archive with a ferry `manifest.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut entries = Vec::new();
        let mut manifest_bytes: Option<Vec<u8>> = None;
        visit(&path, true, |info, entry| {
            if info.path == MANIFEST_NAME && info.kind == EntryKind::File {
                if info.size > MAX_MANIFEST_BYTES {
                    return Err(BundleError::Corrupt {
                        path: path.clone(),
                        detail: format!("manifest.json claims {} bytes", info.size),
                    });
                }
                let mut v = Vec::with_capacity(info.size as usize);
                entry.read_to_end(&mut v).map_err(|e| corrupt(&path, &e))?;
                manifest_bytes = Some(v);
            }
            entries.push(info.clone());
            Ok(Flow::Continue)
        })?;
        let bytes = manifest_bytes.ok_or_else(|| BundleError::NoManifest { path: path.clone() })?;
        // The format first: a newer manifest may not parse as ours at all.
        #[derive(serde::Deserialize)]
        struct Format {
            format: u32,
        }
        if let Ok(Format { format }) = serde_json::from_slice::<Format>(&bytes)
            && format > super::MANIFEST_FORMAT
        {
            return Err(BundleError::NewerFormat {
                path,
                format,
                known: super::MANIFEST_FORMAT,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| BundleError::BadManifest {
                path: path.clone(),
                source,
            })?;
        // Formats start at 1: a 0 was never written by ferry.
        if manifest.format == 0 {
            return Err(BundleError::BadManifest {
                path,
                source: serde::de::Error::custom("`format` is 0; ferry's formats start at 1"),
            });
        }
        Ok(BundleReader {
            path,
            manifest,
            entries,
        })
    }

    /// The bundle file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed `manifest.json`.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Every entry, in archive order (the manifest included).
    pub fn entries(&self) -> &[EntryInfo] {
        &self.entries
    }

    /// Reads the whole bundle again, hashes every file and compares sizes
    /// and hashes with the manifest. Errors only if the bundle cannot be
    /// read; differences are in the report (see
    /// [`VerifyReport::into_result`]).
    pub fn verify(&self) -> Result<VerifyReport> {
        let expected: BTreeMap<&str, (u64, &str)> = self
            .manifest
            .files
            .iter()
            .map(|f| (f.path.as_str(), (f.size, f.sha256.as_str())))
            .collect();
        let mut report = VerifyReport::default();
        let mut seen: HashSet<String> = HashSet::new();
        let mut buf = vec![0u8; 256 << 10];
        visit(&self.path, true, |info, entry| {
            if !seen.insert(info.path.clone()) {
                report.duplicates.push(info.path.clone());
                return Ok(Flow::Continue);
            }
            if info.path == MANIFEST_NAME && info.kind == EntryKind::File {
                return Ok(Flow::Continue);
            }
            let Some(&(size, sha)) = expected.get(info.path.as_str()) else {
                report.extra.push(info.path.clone());
                return Ok(Flow::Continue);
            };
            if info.kind != EntryKind::File {
                report.extra.push(info.path.clone());
                return Ok(Flow::Continue);
            }
            let (actual_size, actual_sha) =
                hash_reader(entry, &mut buf).map_err(|e| corrupt(&self.path, &e))?;
            report.checked += 1;
            if actual_size != size || actual_sha != sha {
                report.mismatched.push(Mismatch {
                    path: info.path.clone(),
                    expected_size: size,
                    actual_size,
                    expected_sha256: sha.to_string(),
                    actual_sha256: actual_sha,
                });
            }
            Ok(Flow::Continue)
        })?;
        report.missing = expected
            .keys()
            .filter(|k| !seen.contains(**k))
            .map(|k| k.to_string())
            .collect();
        Ok(report)
    }

    /// The stored bytes of `name`, checked against the manifest's hash when
    /// the manifest lists it.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        let mut found: Option<Vec<u8>> = None;
        visit(&self.path, false, |info, entry| {
            if info.path != name || info.kind != EntryKind::File {
                return Ok(Flow::Continue);
            }
            let mut v = Vec::with_capacity(info.size.min(256 << 20) as usize);
            entry
                .read_to_end(&mut v)
                .map_err(|e| corrupt(&self.path, &e))?;
            found = Some(v);
            Ok(Flow::Stop)
        })?;
        let data = found.ok_or_else(|| BundleError::NoSuchEntry {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        if let Some(f) = self.manifest.file(name) {
            let sha = hex::encode(Sha256::digest(&data));
            if sha != f.sha256 || data.len() as u64 != f.size {
                return Err(BundleError::Mismatch {
                    path: self.path.clone(),
                    summary: format!("content differs for {name:?}"),
                });
            }
        }
        Ok(data)
    }

    /// Extracts into `dir`, which must not exist or be empty. Refuses
    /// (before writing anything, and again while writing) absolute names,
    /// `..` components, links that could lead outside `dir`, writing
    /// through a symlink, device files and FIFOs, and archives over
    /// `limits`. Files are created with mode 0644 and never overwrite.
    pub fn extract_to(&self, dir: &Path, limits: &ExtractLimits) -> Result<ExtractSummary> {
        // Check the listing first so a hostile archive writes nothing.
        let mut total = 0u64;
        if self.entries.len() as u64 > limits.max_entries {
            return Err(self.over_limit("number of entries", limits.max_entries));
        }
        for e in &self.entries {
            total = total.saturating_add(e.size);
            if total > limits.max_total_bytes {
                return Err(self.over_limit("total size in bytes", limits.max_total_bytes));
            }
        }
        let created = prepare_target(dir)?;
        let mut summary = ExtractSummary::default();
        let mut count = 0u64;
        let done = visit(&self.path, true, |_, entry| {
            count += 1;
            if count > limits.max_entries {
                return Err(self.over_limit("number of entries", limits.max_entries));
            }
            self.extract_one(dir, entry, limits, &mut summary)?;
            Ok(Flow::Continue)
        });
        if let Err(e) = done {
            // A bad entry deep in the archive is found only when reached:
            // what came before it goes, so a refused bundle leaves nothing.
            clear_target(dir, created);
            return Err(e);
        }
        Ok(summary)
    }

    fn over_limit(&self, what: &'static str, limit: u64) -> BundleError {
        BundleError::LimitExceeded {
            path: self.path.clone(),
            what,
            limit,
        }
    }

    fn unsafe_entry(&self, name: &[u8], reason: impl Into<String>) -> BundleError {
        BundleError::UnsafeEntry {
            path: self.path.clone(),
            name: String::from_utf8_lossy(name).into_owned(),
            reason: reason.into(),
        }
    }

    fn extract_one(
        &self,
        dir: &Path,
        entry: &mut tar::Entry<'_, Decoder>,
        limits: &ExtractLimits,
        summary: &mut ExtractSummary,
    ) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let rel = safe_relative(&raw).map_err(|why| self.unsafe_entry(&raw, why))?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        if rel.as_os_str().is_empty() {
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(self.unsafe_entry(&raw, "it names the extraction directory itself"))
            };
        }
        let target = dir.join(&rel);
        ensure_parents(dir, &rel).map_err(|why| self.unsafe_entry(&raw, why))?;
        if kind.is_dir() {
            return match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => {
                    Err(self.unsafe_entry(&raw, "a directory would replace an existing entry"))
                }
                Err(_) => fs::create_dir(&target)
                    .map_err(|e| BundleError::io("create directory", &target, e)),
            };
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| self.unsafe_entry(&raw, "link without a target"))?
                .into_owned();
            let link_rel = safe_relative(&link).map_err(|why| {
                self.unsafe_entry(
                    &raw,
                    format!("its link target {:?} {why}", String::from_utf8_lossy(&link)),
                )
            })?;
            if link_rel.as_os_str().is_empty() {
                return Err(self.unsafe_entry(&raw, "its link target is empty"));
            }
            if kind.is_symlink() {
                // Resolved from the link's own directory and containing no
                // `..`, the target stays inside `dir`.
                return std::os::unix::fs::symlink(&link_rel, &target)
                    .map_err(|e| BundleError::io("create symlink", &target, e));
            }
            ensure_parents(dir, &link_rel)
                .map_err(|why| self.unsafe_entry(&raw, format!("its link target {why}")))?;
            let src = dir.join(&link_rel);
            match fs::symlink_metadata(&src) {
                Ok(m) if m.is_file() => {}
                _ => {
                    return Err(self.unsafe_entry(
                        &raw,
                        "hard link to something that is not an extracted file",
                    ));
                }
            }
            return fs::hard_link(&src, &target)
                .map_err(|e| BundleError::io("create hard link", &target, e));
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            let what = if kind.is_character_special() || kind.is_block_special() {
                "it is a device file"
            } else if kind.is_fifo() {
                "it is a FIFO"
            } else {
                "its entry type is not supported"
            };
            return Err(self.unsafe_entry(&raw, what));
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)
            .map_err(|e| BundleError::io("create", &target, e))?;
        let budget = limits.max_total_bytes - summary.bytes.min(limits.max_total_bytes);
        let n = io::copy(&mut entry.take(budget.saturating_add(1)), &mut out).map_err(|e| {
            if e.kind() == io::ErrorKind::Other
                || e.kind() == io::ErrorKind::InvalidData
                || e.kind() == io::ErrorKind::UnexpectedEof
            {
                corrupt(&self.path, &e)
            } else {
                BundleError::io("write", &target, e)
            }
        })?;
        if n > budget {
            return Err(self.over_limit("total size in bytes", limits.max_total_bytes));
        }
        summary.files += 1;
        summary.bytes += n;
        Ok(())
    }
}

/// Reads the archive at `path` entry by entry. With `drain`, reads the gzip
/// stream to its very end afterwards, so every member's CRC is checked.
fn visit<F>(path: &Path, drain: bool, mut f: F) -> Result<()>
where
    F: FnMut(&EntryInfo, &mut tar::Entry<'_, Decoder>) -> Result<Flow>,
{
    let file = File::open(path).map_err(|e| BundleError::io("open", path, e))?;
    let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::with_capacity(
        256 << 10,
        file,
    )));
    {
        let entries = archive.entries().map_err(|e| corrupt(path, &e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(path, &e))?;
            let info = EntryInfo {
                path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                size: entry.header().size().map_err(|e| corrupt(path, &e))?,
                kind: kind_of(entry.header().entry_type()),
            };
            if let Flow::Stop = f(&info, &mut entry)? {
                return Ok(());
            }
        }
    }
    if drain {
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| corrupt(path, &e))?;
    }
    Ok(())
}

fn kind_of(t: tar::EntryType) -> EntryKind {
    if t.is_file() {
        EntryKind::File
    } else if t.is_dir() {
        EntryKind::Dir
    } else if t.is_symlink() {
        EntryKind::Symlink
    } else if t.is_hard_link() {
        EntryKind::HardLink
    } else {
        EntryKind::Other(t.as_byte())
    }
}

fn corrupt(path: &Path, e: &io::Error) -> BundleError {
    let detail = match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("it ends early ({e})"),
        _ => e.to_string(),
    };
    BundleError::Corrupt {
        path: path.to_path_buf(),
        detail,
    }
}

/// Size and SHA-256 (lowercase hex) of everything `r` yields.
pub(crate) fn hash_reader(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut n = 0u64;
    loop {
        let k = match r.read(buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// A stored name as a relative path of normal components (`.` dropped);
/// `Err` says why it is unsafe.
fn safe_relative(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    if raw.contains(&0) {
        return Err("contains a NUL byte");
    }
    let p = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(out)
}

/// Creates the missing parent directories of `rel` under `dir`, refusing to
/// pass through anything that is not a real directory (a symlink above all).
fn ensure_parents(dir: &Path, rel: &Path) -> std::result::Result<(), String> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut cur = dir.to_path_buf();
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "its path goes through the symlink {}",
                    cur.display()
                ));
            }
            Ok(_) => return Err(format!("its parent {} is not a directory", cur.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur)
                    .map_err(|e| format!("cannot create {}: {e}", cur.display()))?;
            }
            Err(e) => return Err(format!("cannot inspect {}: {e}", cur.display())),
        }
    }
    Ok(())
}

/// An empty directory to extract into; `true` when it was made here.
fn prepare_target(dir: &Path) -> Result<bool> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            let mut rd =
                fs::read_dir(dir).map_err(|e| BundleError::io("read directory", dir, e))?;
            if rd.next().is_some() {
                return Err(BundleError::TargetNotEmpty {
                    dir: dir.to_path_buf(),
                });
            }
            Ok(false)
        }
        Ok(_) => Err(BundleError::TargetNotEmpty {
            dir: dir.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir)
            .map(|()| true)
            .map_err(|e| BundleError::io("create directory", dir, e)),
        Err(e) => Err(BundleError::io("inspect", dir, e)),
    }
}

/// Takes back what a failed extraction wrote into `dir`, which was empty
/// (or not there) before. Links are removed, never followed.
fn clear_target(dir: &Path, created: bool) {
    if created {
        let _ = fs::remove_dir_all(dir);
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        let path = entry.path();
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names() {
        assert_eq!(safe_relative(b"./a/b").expect("ok"), PathBuf::from("a/b"));
        assert_eq!(safe_relative(b"a/./b/").expect("ok"), PathBuf::from("a/b"));
        assert!(safe_relative(b"/etc/passwd").is_err());
        assert!(safe_relative(b"a/../../b").is_err());
        assert!(safe_relative(b"..").is_err());
        assert!(safe_relative(b"a\0b").is_err());
    }
}
