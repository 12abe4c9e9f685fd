//! `ferry diagnose`: names what went wrong in CRIU dump/restore logs and
//! dmesg, with the evidence and the remedy from the failure catalog
//! (`runner/catalog/criu-failures.toml`, see [`catalog`]).
//!
//! The root cause of a failed log is the first error that is not a generic
//! follow-up (`Dumping FAILED.`, `Unable to open fd=…`) and not known to be
//! harmless. When the catalog knows it, its kind is named; otherwise the
//! failure is reported as unknown with the relevant lines — never guessed.
//! Logs are read by the streaming [`scan`]ner, so their size does not
//! matter.

pub mod catalog;
pub mod parse;
pub mod render;
pub mod scan;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use catalog::{Catalog, Level};

/// Lines of context kept before an error.
const CONTEXT_LINES: usize = 5;
/// Evidence lines kept per kind and log.
const MAX_EVIDENCE: usize = 5;
/// Relevant lines kept per log for an unknown failure.
const MAX_RELEVANT: usize = 12;
/// Longest line kept in a report.
const MAX_LINE_CHARS: usize = 600;

/// Why the inputs could not be diagnosed.
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error("cannot read {path}: {error}; check the path and that you may read it")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path} holds no CRIU log or dmesg (looked for *dump*.log, *restore*.log and dmesg*, also under logs/); name the log files instead"
    )]
    NothingToRead { path: PathBuf },
    #[error(
        "{path} is empty: nothing to diagnose (if criu wrote it, criu died before its first line: read dmesg and the journal)"
    )]
    Empty { path: PathBuf },
    #[error(
        "{path} does not look like a CRIU log: nothing in its first 64 KiB is in CRIU's format (timestamps, `Error (`, a status line); give criu's -o log (dump.log, restore.log), dmesg output named dmesg*, a bundle or a run directory"
    )]
    NotCriu { path: PathBuf },
    #[error(
        "{path} is a report page (HTML), not a log; give the bundle or run directory it was made from"
    )]
    ReportPage { path: PathBuf },
    #[error(
        "{path} is not a regular file; give criu's log file, dmesg output, a bundle or a run directory"
    )]
    NotAFile { path: PathBuf },
    #[error(transparent)]
    Bundle(#[from] ferry_uploaders::BundleError),
    #[error(
        "cannot create a scratch directory under {path}: {error}; set TMPDIR to a writable directory"
    )]
    Scratch {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What a log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Criu,
    Dmesg,
}

/// How a CRIU log ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStatus {
    /// `Dumping finished successfully` / `Restore finished successfully`.
    Succeeded,
    /// `Dumping FAILED.` / `Restoring FAILED.`, or errors and no final line.
    Failed,
    /// No final status line and no error: cut short or still running.
    Incomplete,
    /// Not a CRIU log (dmesg).
    NotApplicable,
}

/// One line shown as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub log: String,
    pub line: u64,
    pub text: String,
    /// True for the line the finding is about (the others are context).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key: bool,
}

/// How a finding relates to the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The first error of the failed log.
    RootCause,
    /// Another kind seen in a log (or dmesg) of this run.
    Related,
    /// A kind known to appear in successful runs too.
    Advisory,
}

/// A catalog kind found in the logs (or an unknown root cause).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The catalog id, or `unknown`.
    pub kind: String,
    pub role: Role,
    pub title: String,
    pub phase: String,
    pub log: String,
    pub line: u64,
    pub evidence: Vec<Evidence>,
    pub cause: String,
    pub remedy: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

/// One log that was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSummary {
    pub path: String,
    pub source: Source,
    /// `dump`, `restore`, `pre-dump` when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    pub status: LogStatus,
    pub bytes: u64,
    pub lines: u64,
    pub errors: u64,
    pub warnings: u64,
}

/// The verdict over all inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No CRIU log shows a failure.
    NoFailure,
    /// A failure whose root cause the catalog names.
    Diagnosed,
    /// A failure the catalog does not know: see the relevant lines.
    Unknown,
    /// A CRIU log ends without a status line and without an error.
    Incomplete,
}

/// Everything `ferry diagnose` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub verdict: Verdict,
    /// The root cause (kind `unknown` when the catalog does not know it).
    pub root_cause: Option<Finding>,
    /// Other kinds found (related errors, advisories, dmesg).
    pub findings: Vec<Finding>,
    /// For an unknown failure: the errors and warnings of the failed log,
    /// each with the lines before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relevant: Vec<Evidence>,
    pub logs: Vec<LogSummary>,
}

impl Diagnosis {
    /// One line: `pid-in-use in logs/restore.log:120 (A pid of …)`.
    pub fn headline(&self) -> String {
        match (&self.verdict, &self.root_cause) {
            (Verdict::Diagnosed | Verdict::Unknown, Some(r)) => {
                format!("{} at {}:{} ({})", r.kind, r.log, r.line, r.title)
            }
            (Verdict::Incomplete, _) => {
                let empty = self
                    .logs
                    .iter()
                    .find(|l| l.source != Source::Dmesg && l.bytes == 0);
                match empty {
                    Some(l) => format!(
                        "criu died before writing the first line of {} (it is empty): read dmesg and the journal",
                        l.path
                    ),
                    None => "no failure found, but a CRIU log ends without its status line (criu was killed, or the log was cut)".into(),
                }
            }
            _ => "no CRIU log shows a failure".into(),
        }
    }
}

/// A logical line of a log, as kept for a report.
#[derive(Debug, Clone)]
struct Event {
    line: u64,
    text: String,
    before: Vec<(u64, String)>,
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_LINE_CHARS {
        return s.to_string();
    }
    let mut end = MAX_LINE_CHARS;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn event(hit: &scan::Hit<'_>, text: &str) -> Event {
    let before_text = String::from_utf8_lossy(hit.before);
    let lines: Vec<&str> = before_text.lines().collect();
    let n = lines.len() as u64;
    let before = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (hit.line_no.saturating_sub(n) + i as u64, clip(l)))
        .collect();
    Event {
        line: hit.line_no,
        text: clip(text),
        before,
    }
}

/// Evidence per catalog kind (by index), in order of first appearance.
type KindEvents = Vec<(usize, Vec<Event>)>;

/// What one CRIU log says.
#[derive(Debug, Default)]
struct CriuLog {
    succeeded: bool,
    failed: bool,
    operation: Option<String>,
    errors: u64,
    warnings: u64,
    /// The first error that is not a follow-up nor harmless, with its kind.
    root: Option<(Event, Option<usize>)>,
    /// The first follow-up, with the kind it matches if any.
    first_followup: Option<(Event, Option<usize>)>,
    /// Evidence per kind, in order of first appearance.
    kinds: Vec<(usize, Vec<Event>)>,
    relevant: Vec<Event>,
}

impl CriuLog {
    /// Would [`CriuLog::add_kind`] keep another line of kind `k`?
    fn wants_evidence(&self, k: usize) -> bool {
        self.kinds
            .iter()
            .find(|(i, _)| *i == k)
            .is_none_or(|(_, v)| v.len() < MAX_EVIDENCE)
    }

    fn add_kind(&mut self, k: usize, e: Event) {
        match self.kinds.iter_mut().find(|(i, _)| *i == k) {
            Some((_, v)) if v.len() < MAX_EVIDENCE => v.push(e),
            Some(_) => {}
            None => self.kinds.push((k, vec![e])),
        }
    }
}

fn read_criu(path: &Path, cat: &Catalog) -> Result<(CriuLog, scan::ScanStats), DiagnoseError> {
    let file = File::open(path).map_err(|error| DiagnoseError::Read {
        path: path.into(),
        error,
    })?;
    let mut anchors: Vec<String> = [
        "Error (",
        "Warn  (",
        "Warn (",
        "finished successfully",
        "Restore finished",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    anchors.extend(cat.line_anchors());
    let ac = scan::anchors(&anchors);
    let mut log = CriuLog::default();
    let stats = scan::scan(file, &ac, CONTEXT_LINES, |hit| {
        let raw = String::from_utf8_lossy(hit.text);
        let joined = if raw.contains('\n') {
            parse::join_continued(&raw)
        } else {
            raw.into_owned()
        };
        let p = parse::parse(&joined);
        let msg = p.msg;
        if p.level == Level::Other {
            if msg.starts_with("Dumping finished successfully")
                || msg.starts_with("Pre-dumping finished successfully")
                || msg.starts_with("Restore finished successfully")
            {
                log.succeeded = true;
                log.failed = false;
                if log.operation.is_none() {
                    log.operation = Some(if msg.starts_with("Restore") {
                        "restore".into()
                    } else if msg.starts_with("Pre") {
                        "pre-dump".into()
                    } else {
                        "dump".into()
                    });
                }
                return;
            }
            // Helper output and info lines count only when the catalog
            // knows them.
            if let Some(k) = cat.match_log(Level::Other, msg) {
                // Repeats past the evidence cap cost nothing more.
                if !log.wants_evidence(k) && (log.root.is_some() || !cat.kinds[k].fatal) {
                    return;
                }
                let e = event(&hit, &joined);
                if cat.kinds[k].fatal && log.root.is_none() {
                    log.root = Some((e.clone(), Some(k)));
                }
                log.add_kind(k, e);
            }
            return;
        }
        if p.level == Level::Error {
            log.errors += 1;
            if msg.starts_with("Dumping FAILED")
                || msg.starts_with("Restoring FAILED")
                || msg.starts_with("Pre-dumping FAILED")
            {
                log.failed = true;
                log.succeeded = false;
                if log.operation.is_none() {
                    log.operation = Some(if msg.starts_with("Restoring") {
                        "restore".into()
                    } else if msg.starts_with("Pre") {
                        "pre-dump".into()
                    } else {
                        "dump".into()
                    });
                }
            }
        } else {
            log.warnings += 1;
        }
        let catalog::Classified {
            kind,
            followup,
            harmless,
        } = cat.classify(p.level, msg);
        if harmless {
            return;
        }
        // Plain warnings the catalog does not know are context, not evidence;
        // keep them only for an unknown failure's excerpt.
        let keep_relevant = log.relevant.len() < MAX_RELEVANT;
        if followup {
            if log.first_followup.is_none() {
                log.first_followup = Some((event(&hit, &joined), kind));
            }
            if keep_relevant {
                log.relevant.push(event(&hit, &joined));
            }
            return;
        }
        if kind.is_none() && p.level == Level::Warn {
            if keep_relevant {
                log.relevant.push(event(&hit, &joined));
            }
            return;
        }
        let wanted =
            keep_relevant || log.root.is_none() || kind.is_some_and(|k| log.wants_evidence(k));
        if !wanted {
            return;
        }
        let e = event(&hit, &joined);
        if let Some(k) = kind {
            if cat.kinds[k].fatal && log.root.is_none() {
                log.root = Some((e.clone(), Some(k)));
            }
            log.add_kind(k, e.clone());
        } else if log.root.is_none() {
            log.root = Some((e.clone(), None));
        }
        if keep_relevant {
            log.relevant.push(e);
        }
    })
    .map_err(|error| DiagnoseError::Read {
        path: path.into(),
        error,
    })?;
    Ok((log, stats))
}

fn read_dmesg(path: &Path, cat: &Catalog) -> Result<(KindEvents, scan::ScanStats), DiagnoseError> {
    let file = File::open(path).map_err(|error| DiagnoseError::Read {
        path: path.into(),
        error,
    })?;
    let ac = scan::anchors(cat.dmesg_anchors());
    let mut kinds: KindEvents = Vec::new();
    let stats = scan::scan(file, &ac, 2, |hit| {
        let text = String::from_utf8_lossy(hit.text);
        if let Some(k) = cat.match_dmesg(&text) {
            let e = event(&hit, &text);
            match kinds.iter_mut().find(|(i, _)| *i == k) {
                Some((_, v)) if v.len() < MAX_EVIDENCE => v.push(e),
                Some(_) => {}
                None => kinds.push((k, vec![e])),
            }
        }
    })
    .map_err(|error| DiagnoseError::Read {
        path: path.into(),
        error,
    })?;
    Ok((kinds, stats))
}

/// Is this file name a dmesg capture?
fn is_dmesg_name(name: &str) -> bool {
    name.contains("dmesg") || name.starts_with("kmsg")
}

/// Is this file name a CRIU log ferry (or a user) would write?
fn is_criu_name(name: &str) -> bool {
    name.ends_with(".log")
        && !name.starts_with("cmd-")
        && (name.contains("dump") || name.contains("restore") || name.contains("criu"))
}

/// The logs to read: files as given; for a directory, its CRIU logs and
/// dmesg captures (and those under `logs/`), dump before restore.
pub fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Source)>, DiagnoseError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|error| DiagnoseError::Read {
            path: p.clone(),
            error,
        })?;
        if !meta.is_dir() {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let src = if is_dmesg_name(&name) {
                Source::Dmesg
            } else {
                Source::Criu
            };
            out.push((p.clone(), src));
            continue;
        }
        let mut found = Vec::new();
        for dir in [p.clone(), p.join("logs")] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
                if !is_file {
                    continue;
                }
                if is_dmesg_name(&name) {
                    found.push((entry.path(), Source::Dmesg));
                } else if is_criu_name(&name) {
                    found.push((entry.path(), Source::Criu));
                }
            }
        }
        if found.is_empty() {
            return Err(DiagnoseError::NothingToRead { path: p.clone() });
        }
        found.sort_by_key(|(path, src)| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let rank = match (src, name.contains("restore")) {
                (Source::Criu, false) => 0,
                (Source::Criu, true) => 1,
                (Source::Dmesg, _) => 2,
            };
            (rank, name)
        });
        out.extend(found);
    }
    Ok(out)
}

/// A log named on the command line is looked at before it is read whole:
/// a device (`/dev/zero`) or gigabytes of something else would be read to
/// the end only to be refused.
fn check_named_log(path: &Path) -> Result<(), DiagnoseError> {
    use std::io::Read;
    let Ok(md) = std::fs::metadata(path) else {
        // Unreadable: the full read names the error.
        return Ok(());
    };
    if !md.is_file() {
        return Err(DiagnoseError::NotAFile { path: path.into() });
    }
    if md.len() == 0 {
        return Err(DiagnoseError::Empty { path: path.into() });
    }
    let mut head = Vec::new();
    if File::open(path)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .is_err()
    {
        return Ok(());
    }
    // Anywhere near the start: a saved page may begin with a BOM or a
    // browser's `<!-- saved from … -->` comment. No CRIU log has the tag.
    let start = String::from_utf8_lossy(&head[..head.len().min(1024)]).to_ascii_lowercase();
    if start.contains("<!doctype html") || start.contains("<html") {
        return Err(DiagnoseError::ReportPage { path: path.into() });
    }
    if !looks_like_criu(&head) {
        return Err(DiagnoseError::NotCriu { path: path.into() });
    }
    Ok(())
}

/// Whether `head` has a line only CRIU writes: a `(ss.uuuuuu)` timestamp,
/// a message with its C source place, a `pie:` line, its version banner,
/// or its name.
fn looks_like_criu(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|l| {
        let l = l.trim_start();
        let stamped = l
            .strip_prefix('(')
            .and_then(|r| r.split_once(')'))
            .is_some_and(|(t, _)| {
                t.split_once('.').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && a.bytes().all(|c| c.is_ascii_digit())
                        && b.bytes().all(|c| c.is_ascii_digit())
                })
            });
        // criu 1.x wrote `Error (sk-unix.c:1216): …` without timestamps.
        let sourced = ["Error (", "Warn  (", "Warn (", "Info  ("]
            .iter()
            .any(|p| l.starts_with(p) && l.contains(".c:"));
        stamped
            || sourced
            || l.starts_with("pie: ")
            || l.starts_with("Version: ")
            || l.to_ascii_lowercase().contains("criu")
    })
}

/// How a path is shown: relative to `base` when under it.
fn shown(path: &Path, base: Option<&Path>) -> String {
    base.and_then(|b| path.strip_prefix(b).ok())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn finding(cat: &Catalog, k: Option<usize>, role: Role, log: &str, events: &[Event]) -> Finding {
    let mut evidence = Vec::new();
    if let (Some(first), Role::RootCause) = (events.first(), role) {
        for (n, t) in first
            .before
            .iter()
            .skip(first.before.len().saturating_sub(3))
        {
            evidence.push(Evidence {
                log: log.into(),
                line: *n,
                text: t.clone(),
                key: false,
            });
        }
    }
    for e in events {
        evidence.push(Evidence {
            log: log.into(),
            line: e.line,
            text: e.text.clone(),
            key: true,
        });
    }
    let line = events.first().map_or(0, |e| e.line);
    match k.and_then(|k| cat.kinds.get(k)) {
        Some(kind) => Finding {
            kind: kind.id.clone(),
            role: if role == Role::Related && !kind.fatal {
                Role::Advisory
            } else {
                role
            },
            title: kind.title.clone(),
            phase: kind.phase.clone(),
            log: log.into(),
            line,
            evidence,
            cause: kind.cause.clone(),
            remedy: kind.remedy.clone(),
            sources: kind.sources.clone(),
        },
        None => Finding {
            kind: "unknown".into(),
            role,
            title: "an error the failure catalog does not know".into(),
            phase: String::new(),
            log: log.into(),
            line,
            evidence,
            cause: "Not in the catalog: read the relevant lines below (the first error is the best lead)."
                .into(),
            remedy: "Not in ferry's catalog: read the lines below with the catalog's guide to CRIU logs (docs/failure-catalog.md in ferry's source), and once the cause is known, report it to ferry's maintainers with this bundle so the next release names it (the catalog is runner/catalog/criu-failures.toml)."
                .into(),
            sources: Vec::new(),
        },
    }
}

/// Diagnoses the given files and directories; paths in the report are shown
/// relative to `base` when given.
pub fn diagnose_paths(paths: &[PathBuf], base: Option<&Path>) -> Result<Diagnosis, DiagnoseError> {
    diagnose_paths_shown(paths, &|p| shown(p, base))
}

/// [`diagnose_paths`] with the report's names of paths chosen by `show`
/// (a bundle's scratch copy shown as the bundle it came from).
pub fn diagnose_paths_shown(
    paths: &[PathBuf],
    show: &dyn Fn(&Path) -> String,
) -> Result<Diagnosis, DiagnoseError> {
    let cat = Catalog::builtin();
    let inputs = collect_inputs(paths)?;
    let mut logs = Vec::new();
    let mut root: Option<Finding> = None;
    let mut relevant = Vec::new();
    let mut findings: Vec<Finding> = Vec::new();
    let mut incomplete = false;
    for (path, src) in &inputs {
        // A file name can hold a newline or an escape sequence: shown as
        // one line, it cannot forge a line of the report.
        let name = crate::printable::one_line(&show(path));
        match src {
            Source::Criu => {
                // A file named on the command line that shows nothing of
                // CRIU is a wrong argument, not an interrupted dump.
                if paths.iter().any(|p| p == path) {
                    check_named_log(path)?;
                }
                let (log, stats) = read_criu(path, cat)?;
                let file_name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let operation = log.operation.clone().or_else(|| {
                    if file_name.contains("restore") {
                        Some("restore".into())
                    } else if file_name.contains("dump") {
                        Some("dump".into())
                    } else {
                        None
                    }
                });
                let failed = log.failed
                    || (!log.succeeded && (log.root.is_some() || log.first_followup.is_some()));
                let status = if log.succeeded {
                    LogStatus::Succeeded
                } else if failed {
                    LogStatus::Failed
                } else {
                    incomplete = true;
                    LogStatus::Incomplete
                };
                logs.push(LogSummary {
                    path: name.clone(),
                    source: Source::Criu,
                    operation,
                    status,
                    bytes: stats.bytes,
                    lines: stats.lines,
                    errors: log.errors,
                    warnings: log.warnings,
                });
                let mut root_kind = None;
                if failed && root.is_none() {
                    let picked = log.root.clone().or(log.first_followup.clone());
                    if let Some((e, k)) = picked {
                        root_kind = k;
                        let first_line = e.line;
                        let mut events = vec![e];
                        if let Some((_, v)) =
                            k.and_then(|k| log.kinds.iter().find(|(i, _)| *i == k))
                        {
                            events.extend(v.iter().filter(|x| x.line != first_line).cloned());
                        }
                        root = Some(finding(cat, k, Role::RootCause, &name, &events));
                        if k.is_none() {
                            for e in &log.relevant {
                                for (n, t) in &e.before {
                                    relevant.push(Evidence {
                                        log: name.clone(),
                                        line: *n,
                                        text: t.clone(),
                                        key: false,
                                    });
                                }
                                relevant.push(Evidence {
                                    log: name.clone(),
                                    line: e.line,
                                    text: e.text.clone(),
                                    key: true,
                                });
                            }
                            relevant.sort_by_key(|e| e.line);
                            relevant.dedup_by_key(|e| e.line);
                        }
                    }
                }
                for (k, events) in &log.kinds {
                    if root_kind == Some(*k) {
                        continue;
                    }
                    findings.push(finding(cat, Some(*k), Role::Related, &name, events));
                }
            }
            Source::Dmesg => {
                let (kinds, stats) = read_dmesg(path, cat)?;
                logs.push(LogSummary {
                    path: name.clone(),
                    source: Source::Dmesg,
                    operation: None,
                    status: LogStatus::NotApplicable,
                    bytes: stats.bytes,
                    lines: stats.lines,
                    errors: 0,
                    warnings: 0,
                });
                for (k, events) in &kinds {
                    findings.push(finding(cat, Some(*k), Role::Related, &name, events));
                }
            }
        }
    }
    let verdict = match &root {
        Some(r) if r.kind == "unknown" => Verdict::Unknown,
        Some(_) => Verdict::Diagnosed,
        None if logs.iter().any(|l| l.status == LogStatus::Failed) => Verdict::Unknown,
        None if incomplete => Verdict::Incomplete,
        None => Verdict::NoFailure,
    };
    Ok(Diagnosis {
        verdict,
        root_cause: root,
        findings,
        relevant,
        logs,
    })
}

/// Diagnoses a run directory's `logs/` (the end of a failed run): what the
/// manifest and the outcome record. Never fails: an unreadable log is an
/// unknown verdict with the reason.
pub fn diagnose_run_logs(logs_dir: &Path) -> Diagnosis {
    let base = logs_dir.parent();
    match diagnose_paths(&[logs_dir.to_path_buf()], base) {
        Ok(d) => d,
        Err(e) => Diagnosis {
            verdict: Verdict::Unknown,
            root_cause: None,
            findings: Vec::new(),
            relevant: vec![Evidence {
                log: logs_dir.display().to_string(),
                line: 0,
                text: format!("not diagnosed: {e}"),
                key: true,
            }],
            logs: Vec::new(),
        },
    }
}

/// A bundle extracted into a scratch directory (removed on drop), verified
/// against its manifest first.
pub struct OpenedBundle {
    pub dir: PathBuf,
    pub manifest: ferry_uploaders::Manifest,
}

impl Drop for OpenedBundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Is this path a bundle (a file ending in `.tar.gz` or `.tgz`)?
pub fn is_bundle(path: &Path) -> bool {
    let name = path.to_string_lossy();
    (name.ends_with(".tar.gz") || name.ends_with(".tgz")) && path.is_file()
}

/// Opens, verifies (every file's sha256 against the manifest) and safely
/// extracts a bundle into a scratch directory.
pub fn open_bundle(
    path: &Path,
    limits: &ferry_uploaders::bundle::ExtractLimits,
) -> Result<OpenedBundle, DiagnoseError> {
    let reader = ferry_uploaders::BundleReader::open(path)?;
    reader.verify()?.into_result(path)?;
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = base.join(format!("ferry-bundle-{}-{nanos}", std::process::id()));
    // Only its owner may look in: the bundle may be root's alone, and the
    // scratch copy sits in a shared /tmp while it is read.
    let mut builder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&dir)
        .map_err(|error| DiagnoseError::Scratch {
            path: base.clone(),
            error,
        })?;
    let opened = OpenedBundle {
        dir,
        manifest: reader.manifest().clone(),
    };
    reader.extract_to(&opened.dir, limits)?;
    Ok(opened)
}

/// Counts of what a diagnosis saw, by kind id (for metrics and tests).
pub fn kinds_found(d: &Diagnosis) -> BTreeMap<String, Role> {
    d.root_cause
        .iter()
        .chain(&d.findings)
        .map(|f| (f.kind.clone(), f.role))
        .collect()
}

/// The file in a run directory the end of a failed run writes the diagnosis
/// to (it goes into the bundle, and its findings into the manifest).
pub const RUN_FILE: &str = "diagnosis.json";

/// The diagnosis the end of the run wrote, if any.
pub fn load_run_diagnosis(run: &crate::state::RunDir) -> Option<Diagnosis> {
    let path = run.root.join(RUN_FILE);
    if !path.exists() {
        return None;
    }
    crate::state::load_json(&path).ok()
}

/// The short form kept in the run's outcome and printed at the end of
/// `ferry upgrade`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub verdict: Verdict,
    /// The root cause's kind (`unknown` when the catalog does not know it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `logs/restore.log:120`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The key evidence lines (at most 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// Other kinds found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
}

impl Diagnosis {
    pub fn summary(&self) -> Summary {
        let r = self.root_cause.as_ref();
        Summary {
            verdict: self.verdict,
            kind: r.map(|r| r.kind.clone()),
            title: r.map(|r| r.title.clone()),
            at: r.map(|r| format!("{}:{}", r.log, r.line)),
            evidence: r
                .map(|r| {
                    r.evidence
                        .iter()
                        .filter(|e| e.key)
                        .take(3)
                        .map(|e| e.text.clone())
                        .collect()
                })
                .unwrap_or_default(),
            remedy: r.filter(|r| r.kind != "unknown").map(|r| r.remedy.clone()),
            also: self.findings.iter().map(|f| f.kind.clone()).collect(),
        }
    }
}

impl Summary {
    /// The lines `ferry upgrade` prints last.
    pub fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        match (self.verdict, &self.kind) {
            (Verdict::Diagnosed, Some(k)) => v.push(format!(
                "diagnosis: {k} at {}: {}",
                self.at.as_deref().unwrap_or("?"),
                self.title.as_deref().unwrap_or("")
            )),
            (Verdict::Unknown, _) => v.push(format!(
                "diagnosis: unknown failure (not in the catalog){}",
                self.at
                    .as_deref()
                    .map(|a| format!(", first error at {a}"))
                    .unwrap_or_default()
            )),
            (Verdict::Incomplete, _) => {
                v.push("diagnosis: a CRIU log ends without its status line".into())
            }
            _ => v.push("diagnosis: no CRIU log shows a failure".into()),
        }
        for e in &self.evidence {
            v.push(format!("  {e}"));
        }
        if let Some(r) = &self.remedy {
            v.push(format!("remedy: {r}"));
        }
        if !self.also.is_empty() {
            v.push(format!("also found: {}", self.also.join(", ")));
        }
        v.push("details: ferry diagnose <bundle>".into());
        v
    }
}
