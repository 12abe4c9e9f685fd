//! [`BundleWriter`]: files in, one gzip-compressed tar archive out.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::BundleOptions;
use super::error::{BundleError, Result};
use super::gz::GzBlockWriter;
use super::manifest::{FileEntry, MANIFEST_FORMAT, MANIFEST_NAME, Manifest, SkippedEntry, rfc3339};
use super::redact::{Counter, Matcher, Redactor, Sink};

/// The mtime of every entry: the one `tar::HeaderMode::Deterministic` uses
/// (2006-07-24), so equal inputs give byte-equal archives.
pub const DETERMINISTIC_MTIME: u64 = 1_153_704_088;

/// How far back (or forward) a cut looks for a line end.
const SNAP_WINDOW: u64 = 64 << 10;

/// Read size for sources.
const READ_CHUNK: usize = 256 << 10;

/// Deepest directory level `add_dir` descends to.
const MAX_DEPTH: usize = 64;

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Most read from a file whose size `fstat` cannot tell (see
/// `BundleWriter::add_file`).
pub const SLURP_LIMIT: u64 = 64 << 20;

/// Filesystems whose files' `st_size` says nothing about their content:
/// proc, sysfs, cgroup, cgroup2, debugfs, tracefs, securityfs, pstore,
/// configfs, bpf, efivarfs.
const PSEUDO_FS: [i64; 11] = [
    0x9fa0,
    0x6265_6572,
    0x0027_e0eb,
    0x6367_7270,
    0x6462_6720,
    0x7472_6163,
    0x7363_6673,
    0x6165_676c,
    0x6265_6570,
    0xcafe_4a11,
    0xde5e_81e4,
];

fn on_pseudo_fs(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to a live statfs.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by target
    let fs_type = st.f_type as i64;
    rc == 0 && PSEUDO_FS.contains(&fs_type)
}

/// Writes a bundle: a tar archive (deterministic headers, regular files
/// only, `manifest.json` last) compressed as multi-member gzip.
///
/// Every byte added goes through redaction first. Nothing is staged on disk:
/// a file is read twice (once to size the redacted entry, once to stream it)
/// and hashed on the second pass as it is written.
pub struct BundleWriter<W: Write> {
    tar: tar::Builder<GzBlockWriter<W>>,
    matcher: Matcher,
    max_file_bytes: Option<u64>,
    files: Vec<FileEntry>,
    skipped: Vec<SkippedEntry>,
    names: HashSet<String>,
    buf: Vec<u8>,
    broken: Option<String>,
}

/// Where an entry's bytes come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    File(&'a File),
    Bytes(&'a [u8]),
}

impl Source<'_> {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        match self {
            Source::File(f) => loop {
                match f.read_at(buf, off) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => return r,
                }
            },
            Source::Bytes(b) => {
                let start = usize::try_from(off).unwrap_or(usize::MAX).min(b.len());
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
        }
    }
}

/// One stretch of an entry.
enum Segment {
    /// Bytes `start..end` of the source, redacted.
    Range { start: u64, end: u64 },
    /// The truncation marker line.
    Marker(Vec<u8>),
}

/// Produces an entry's bytes, segment by segment, into a [`Sink`].
///
/// Reads go into the caller's buffer after the redactor's unsettled tail,
/// which is moved to the front first, so file bytes are copied once: from
/// the buffer into the sink.
struct Producer<'a> {
    src: Source<'a>,
    segments: &'a [Segment],
    seg: usize,
    off: u64,
    zeros: u64,
    redactor: Redactor<'a>,
    /// Unsettled bytes at the front of the buffer.
    have: usize,
    short_read: bool,
}

impl<'a> Producer<'a> {
    fn new(src: Source<'a>, segments: &'a [Segment], matcher: &'a Matcher) -> Self {
        let off = match segments.first() {
            Some(Segment::Range { start, .. }) => *start,
            _ => 0,
        };
        Producer {
            src,
            segments,
            seg: 0,
            off,
            zeros: 0,
            redactor: Redactor::new(matcher),
            have: 0,
            short_read: false,
        }
    }

    fn advance(&mut self) {
        self.seg += 1;
        if let Some(Segment::Range { start, .. }) = self.segments.get(self.seg) {
            self.off = *start;
        }
    }

    /// Produces the next piece; `false` once everything has been produced.
    /// `buf` must be the same buffer on every call, longer than
    /// `Redactor::max_unsettled`.
    fn step<S: Sink>(&mut self, buf: &mut [u8], sink: &mut S) -> io::Result<bool> {
        if self.zeros > 0 {
            let n = self.zeros.min(ZEROS.len() as u64) as usize;
            sink.put(&ZEROS[..n]);
            self.zeros -= n as u64;
            return Ok(true);
        }
        let Some(seg) = self.segments.get(self.seg) else {
            return Ok(false);
        };
        let end = match seg {
            Segment::Marker(m) => {
                sink.put(m);
                self.advance();
                return Ok(true);
            }
            Segment::Range { end, .. } => *end,
        };
        if self.off >= end {
            self.redactor.feed(&buf[..self.have], true, sink);
            self.have = 0;
            self.advance();
            return Ok(true);
        }
        let room = buf.len() - self.have;
        let want = (end - self.off).min(room as u64) as usize;
        let n = self
            .src
            .read_at(&mut buf[self.have..self.have + want], self.off)?;
        if n == 0 {
            // The file shrank since it was measured: the missing bytes
            // become NULs so the entry keeps the measured size.
            self.redactor.feed(&buf[..self.have], true, sink);
            self.have = 0;
            self.zeros = end - self.off;
            self.short_read = true;
            self.advance();
            return Ok(true);
        }
        self.off += n as u64;
        let total = self.have + n;
        let eof = self.off == end;
        let used = self.redactor.feed(&buf[..total], eof, sink);
        buf.copy_within(used..total, 0);
        self.have = total - used;
        if eof {
            self.advance();
        }
        Ok(true)
    }
}

/// The second pass's sink: hashes and compresses exactly `remaining`
/// bytes; anything beyond is counted as excess and dropped.
struct EntrySink<'g, W: Write> {
    gz: &'g mut GzBlockWriter<W>,
    hasher: Sha256,
    remaining: u64,
    excess: bool,
    error: Option<io::Error>,
}

impl<W: Write> Sink for EntrySink<'_, W> {
    fn put(&mut self, bytes: &[u8]) {
        let take = bytes
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if take < bytes.len() {
            self.excess = true;
        }
        if take == 0 || self.error.is_some() {
            return;
        }
        let bytes = &bytes[..take];
        self.hasher.update(bytes);
        if let Err(e) = self.gz.write_all(bytes) {
            self.error = Some(e);
        }
        self.remaining -= take as u64;
    }
}

impl<W: Write> BundleWriter<W> {
    /// Starts a bundle written to `out`. Starts `options.threads`
    /// compression threads.
    pub fn new(out: W, options: BundleOptions) -> Result<Self> {
        let threads = if options.threads == 0 {
            super::default_threads()
        } else {
            options.threads
        };
        let gz =
            GzBlockWriter::new(out, threads, options.level, options.block_size).map_err(|e| {
                BundleError::Compression {
                    detail: format!("cannot start {threads} compression threads: {e}"),
                }
            })?;
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        let matcher = Matcher::new(&options.secrets)?;
        let buf_len = READ_CHUNK + Redactor::new(&matcher).max_unsettled();
        Ok(BundleWriter {
            tar,
            matcher,
            max_file_bytes: options.max_file_bytes,
            files: Vec::new(),
            skipped: Vec::new(),
            names: HashSet::new(),
            buf: vec![0; buf_len],
            broken: None,
        })
    }

    /// The files added so far, in archive order.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// What `add_dir` passed over so far.
    pub fn skipped(&self) -> &[SkippedEntry] {
        &self.skipped
    }

    /// Uncompressed tar bytes written so far.
    pub fn tar_bytes(&self) -> u64 {
        self.tar.get_ref().bytes_in()
    }

    /// Adds the regular file at `path` as `name_in_bundle`.
    ///
    /// The length is taken from the open file (`fstat`) and exactly that
    /// many bytes are stored, so a log that grows meanwhile cannot corrupt
    /// the archive (its new tail is left out) and one that shrinks is padded
    /// with NULs (and marked `changed_while_read`). Above
    /// `max_file_bytes`, only the head and the tail are kept, cut at line
    /// ends, with a marker line between them.
    pub fn add_path(&mut self, name_in_bundle: &str, path: &Path) -> Result<()> {
        self.check_usable()?;
        let name = self.claim_name(name_in_bundle)?;
        let file = match open_regular(path) {
            Ok(f) => f,
            Err(e) => {
                self.names.remove(&name);
                return Err(e);
            }
        };
        self.add_file(name, &file, path)
    }

    /// Adds `data` as `name`.
    pub fn add_bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.check_usable()?;
        let name = self.claim_name(name)?;
        let len = data.len() as u64;
        self.add_measured(
            name,
            Source::Bytes(data),
            len,
            Path::new("<in-memory data>"),
            false,
        )
    }

    /// Adds every regular file under `dir`, recursively, as
    /// `prefix/relative/path`, in sorted (bytewise) order. Symlinks are not
    /// followed; they, other special files, non-UTF-8 names and files that
    /// cannot be opened are listed in the manifest's `skipped` instead. An
    /// empty `prefix` puts the files at the top of the bundle.
    pub fn add_dir(&mut self, prefix: &str, dir: &Path) -> Result<()> {
        self.check_usable()?;
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            normalize_name(prefix)?;
        }
        let meta = fs::metadata(dir).map_err(|e| BundleError::io("read directory", dir, e))?;
        if !meta.is_dir() {
            return Err(BundleError::io(
                "read directory",
                dir,
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        self.walk(prefix, dir, 0)
    }

    fn walk(&mut self, prefix: &str, dir: &Path, depth: usize) -> Result<()> {
        let mut entries: Vec<(std::ffi::OsString, PathBuf, Option<fs::FileType>)> =
            match fs::read_dir(dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .map(|e| (e.file_name(), e.path(), e.file_type().ok()))
                    .collect(),
                Err(e) => {
                    self.skip(prefix, format!("cannot list directory: {e}"));
                    return Ok(());
                }
            };
        entries.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
        for (file_name, path, ft) in entries {
            let Some(file_name) = file_name.to_str() else {
                let shown = format!("{}/{}", prefix, file_name.to_string_lossy());
                self.skip(&shown, "name is not valid UTF-8".into());
                continue;
            };
            let name = if prefix.is_empty() {
                file_name.to_string()
            } else {
                format!("{prefix}/{file_name}")
            };
            let Some(ft) = ft else {
                self.skip(&name, "cannot read its file type".into());
                continue;
            };
            if ft.is_symlink() {
                self.skip(&name, "symlink".into());
            } else if ft.is_dir() {
                if depth >= MAX_DEPTH {
                    self.skip(&name, format!("deeper than {MAX_DEPTH} directory levels"));
                } else {
                    self.walk(&name, &path, depth + 1)?;
                }
            } else if ft.is_file() {
                if name == MANIFEST_NAME {
                    self.skip(&name, "name reserved for the bundle manifest".into());
                    continue;
                }
                let name = self.claim_name(&name)?;
                match open_regular(&path) {
                    Ok(file) => self.add_file(name, &file, &path)?,
                    Err(e) => {
                        self.names.remove(&name);
                        let reason = match e {
                            BundleError::Io { source, .. } => format!("cannot open: {source}"),
                            other => other.to_string(),
                        };
                        self.skip(&name, reason);
                    }
                }
            } else {
                self.skip(&name, special_kind(&ft).into());
            }
        }
        Ok(())
    }

    fn skip(&mut self, path: &str, reason: String) {
        self.skipped.push(SkippedEntry {
            path: path.to_string(),
            reason,
        });
    }

    /// Writes `manifest.json` as the last entry, ends the archive and the
    /// gzip stream, and returns the output and the manifest. Strings in
    /// `run_meta` are redacted like file contents.
    pub fn finish(mut self, run_meta: serde_json::Value) -> Result<(W, Manifest)> {
        self.check_usable()?;
        let run = redact_json(&self.matcher, run_meta);
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            ferry_version: env!("CARGO_PKG_VERSION").to_string(),
            created: rfc3339(SystemTime::now()),
            run,
            files: std::mem::take(&mut self.files),
            skipped: std::mem::take(&mut self.skipped),
        };
        let mut json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::Compression {
                detail: format!("cannot serialise the manifest: {e}"),
            })?;
        json.push(b'\n');
        let mut header = file_header(json.len() as u64);
        self.tar
            .append_data(&mut header, MANIFEST_NAME, &json[..])
            .map_err(|source| BundleError::Output { source })?;
        let gz = self
            .tar
            .into_inner()
            .map_err(|source| BundleError::Output { source })?;
        let (out, _) = gz
            .finish()
            .map_err(|source| BundleError::Output { source })?;
        Ok((out, manifest))
    }

    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(detail) => Err(BundleError::Broken {
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }

    fn claim_name(&mut self, name: &str) -> Result<String> {
        let name = normalize_name(name)?;
        if !self.names.insert(name.clone()) {
            return Err(BundleError::Duplicate { name });
        }
        Ok(name)
    }

    /// Adds an open regular file. Files of `/proc`, `/sys` and similar
    /// report a size (0, 4096) unrelated to their content, and an empty
    /// file may be a pipe-like pseudo file: those are read whole into memory
    /// (at most [`SLURP_LIMIT`]) instead of trusting `fstat`.
    fn add_file(&mut self, name: String, file: &File, path: &Path) -> Result<()> {
        let len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                self.names.remove(&name);
                return Err(BundleError::io("stat", path, e));
            }
        };
        if len == 0 || on_pseudo_fs(file) {
            let mut data = Vec::new();
            if let Err(e) = file.take(SLURP_LIMIT + 1).read_to_end(&mut data) {
                self.names.remove(&name);
                return Err(BundleError::io("read", path, e));
            }
            let over = data.len() as u64 > SLURP_LIMIT;
            data.truncate(SLURP_LIMIT as usize);
            let n = data.len() as u64;
            return self.add_measured(name, Source::Bytes(&data), n, path, over);
        }
        self.add_measured(name, Source::File(file), len, path, false)
    }

    /// Stores exactly the `len` bytes measured at open (before the cap).
    /// `cut` marks a source that was already cut short (a pseudo file over
    /// [`SLURP_LIMIT`]).
    fn add_measured(
        &mut self,
        name: String,
        src: Source<'_>,
        len: u64,
        path: &Path,
        cut: bool,
    ) -> Result<()> {
        let BundleWriter {
            tar,
            matcher,
            max_file_bytes,
            files,
            names,
            buf,
            broken,
            ..
        } = self;
        // Pass 1: which bytes to store, and their size after redaction.
        // Nothing is written yet, so a failure leaves the bundle usable.
        let mut counter = Counter::default();
        let sized = plan(src, len, *max_file_bytes, buf).and_then(|(segments, truncated)| {
            let mut sizing = Producer::new(src, &segments, matcher);
            while sizing.step(buf, &mut counter)? {}
            let short = sizing.short_read;
            drop(sizing);
            Ok((segments, truncated, short))
        });
        let (segments, truncated, short_first) = match sized {
            Ok(s) => s,
            Err(e) => {
                names.remove(&name);
                return Err(BundleError::io("read", path, e));
            }
        };
        let size = counter.0;

        // Pass 2: the header (tar writes a GNU long-name entry first if the
        // name needs one; with an empty reader it writes no data and no
        // padding), then the data straight into the compressor.
        let mut header = file_header(size);
        if let Err(e) = tar.append_data(&mut header, &name, io::empty()) {
            *broken = Some(format!("writing the header of {name:?} failed: {e}"));
            return Err(BundleError::Output { source: e });
        }
        let mut sink = EntrySink {
            gz: tar.get_mut(),
            hasher: Sha256::new(),
            remaining: size,
            excess: false,
            error: None,
        };
        let mut producer = Producer::new(src, &segments, matcher);
        let mut failure: Option<BundleError> = None;
        loop {
            match producer.step(buf, &mut sink) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    failure = Some(BundleError::io("read", path, e));
                    break;
                }
            }
            if let Some(e) = sink.error.take() {
                failure = Some(BundleError::Output { source: e });
                break;
            }
        }
        // Produced less than the first pass measured: pad with NULs.
        let padded = sink.remaining > 0;
        while failure.is_none() && sink.remaining > 0 {
            let n = sink.remaining.min(ZEROS.len() as u64) as usize;
            sink.put(&ZEROS[..n]);
            if let Some(e) = sink.error.take() {
                failure = Some(BundleError::Output { source: e });
            }
        }
        let block_pad = ((512 - size % 512) % 512) as usize;
        if failure.is_none()
            && let Err(e) = sink.gz.write_all(&ZEROS[..block_pad])
        {
            failure = Some(BundleError::Output { source: e });
        }
        if let Some(e) = failure {
            *broken = Some(format!(
                "adding {name:?} from {} failed: {e}",
                path.display()
            ));
            return Err(e);
        }
        let changed = short_first || producer.short_read || padded || sink.excess;
        files.push(FileEntry {
            path: name,
            size,
            sha256: hex::encode(sink.hasher.finalize()),
            truncated: truncated || cut,
            redacted: producer.redactor.count(),
            source_size: len,
            changed_while_read: changed,
        });
        Ok(())
    }
}

/// A tar header for a regular file of `size` bytes with fixed metadata.
fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(DETERMINISTIC_MTIME);
    h
}

/// Opens `path` for reading without blocking on FIFOs and checks, on the
/// open descriptor, that it is a regular file.
fn open_regular(path: &Path) -> Result<File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| BundleError::io("open", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| BundleError::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(BundleError::NotRegularFile {
            path: path.to_path_buf(),
            kind: special_kind(&meta.file_type()),
        });
    }
    Ok(file)
}

fn special_kind(ft: &fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Checks and normalises a name inside the bundle.
pub(crate) fn normalize_name(name: &str) -> Result<String> {
    let bad = |reason| BundleError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.starts_with('/') {
        return Err(bad("it is absolute"));
    }
    if name.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    for c in name.split('/') {
        match c {
            "" => return Err(bad("it has an empty component (`//` or a trailing `/`)")),
            "." | ".." => return Err(bad("it has a `.` or `..` component")),
            _ => {}
        }
    }
    if name == MANIFEST_NAME {
        return Err(bad("the name is reserved for the bundle manifest"));
    }
    Ok(name.to_string())
}

/// Decides which bytes of a `len`-byte source are stored.
fn plan(
    src: Source<'_>,
    len: u64,
    cap: Option<u64>,
    buf: &mut [u8],
) -> io::Result<(Vec<Segment>, bool)> {
    let cap = match cap {
        Some(cap) if len > cap => cap,
        _ => return Ok((vec![Segment::Range { start: 0, end: len }], false)),
    };
    let head = cap / 2;
    let tail = cap - head;

    // End the head just after the last newline in its final window.
    let mut head_end = head;
    let mut snapped = false;
    let win = SNAP_WINDOW.min(head).min(buf.len() as u64);
    if win > 0 {
        let n = src.read_at(&mut buf[..win as usize], head - win)?;
        if let Some(i) = memchr::memrchr(b'\n', &buf[..n]) {
            head_end = head - win + i as u64 + 1;
            snapped = true;
        }
    }

    // Start the tail just after the first newline in its first window.
    let mut tail_start = len - tail;
    let win = SNAP_WINDOW.min(tail).min(buf.len() as u64);
    if win > 0 {
        let n = src.read_at(&mut buf[..win as usize], tail_start)?;
        if let Some(i) = memchr::memchr(b'\n', &buf[..n])
            && i + 1 < n
        {
            tail_start += i as u64 + 1;
        }
    }

    let omitted = tail_start - head_end;
    let marker = format!(
        "{}[ferry: truncated: {omitted} bytes omitted here; kept the first {head_end} and the last {} of {len} bytes (max_file_bytes = {cap})]\n",
        if snapped || head_end == 0 { "" } else { "\n" },
        len - tail_start,
    );
    Ok((
        vec![
            Segment::Range {
                start: 0,
                end: head_end,
            },
            Segment::Marker(marker.into_bytes()),
            Segment::Range {
                start: tail_start,
                end: len,
            },
        ],
        true,
    ))
}

/// Redacts every string (and object key) in a JSON value.
fn redact_json(m: &Matcher, v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(m.redact_str(&s).0),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| redact_json(m, v)).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (m.redact_str(&k).0, redact_json(m, v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::BundleReader;

    /// The tar growing-file trap, the other way round: a file measured at
    /// 100 bytes that has only 60 when read is stored as 100 bytes (NULs
    /// after the 60) and flagged, and the archive stays valid.
    #[test]
    fn a_file_that_shrank_after_fstat_is_padded_and_flagged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = vec![b'x'; 60];
        let mut w = BundleWriter::new(Vec::new(), BundleOptions::default()).expect("writer");
        w.add_measured(
            "shrunk.log".into(),
            Source::Bytes(&data),
            100,
            Path::new("shrunk.log"),
            false,
        )
        .expect("add");
        let (gz, m) = w.finish(serde_json::json!({})).expect("finish");
        let f = &m.files[0];
        assert_eq!(
            (f.size, f.source_size, f.changed_while_read),
            (100, 100, true)
        );
        let path = dir.path().join("b.tar.gz");
        fs::write(&path, gz).expect("write");
        let r = BundleReader::open(&path).expect("open");
        assert!(r.verify().expect("verify").is_ok());
        let got = r.read_file("shrunk.log").expect("read");
        assert_eq!(&got[..60], &data[..]);
        assert!(got[60..].iter().all(|&b| b == 0));
    }

    #[test]
    fn cap_cuts_at_line_ends_and_marks_the_cut() {
        let mut data = Vec::new();
        for i in 0..1000 {
            data.extend_from_slice(format!("line {i:04} of the log\n").as_bytes());
        }
        let opts = BundleOptions {
            max_file_bytes: Some(2000),
            ..BundleOptions::default()
        };
        let mut w = BundleWriter::new(Vec::new(), opts).expect("writer");
        w.add_bytes("big.log", &data).expect("add");
        let (_, m) = w.finish(serde_json::json!({})).expect("finish");
        let f = &m.files[0];
        assert!(f.truncated);
        assert_eq!(f.source_size, data.len() as u64);
        assert!(f.size < 2000 + 200, "{}", f.size);
    }

    #[test]
    fn names_are_checked() {
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "a/",
            "../x",
            "a/./b",
            "a/../b",
            "manifest.json",
            "a\0b",
        ] {
            assert!(normalize_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a",
            "logs/criu.log",
            "trace/otlp.jsonl",
            ".hidden",
            "a..b/c",
        ] {
            assert_eq!(normalize_name(good).expect(good), good);
        }
    }
}
