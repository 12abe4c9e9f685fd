//! The failure catalog: `runner/catalog/criu-failures.toml`, embedded in the
//! binary and parsed once. The data decides what `ferry diagnose` knows; this
//! file only knows how to match it.

use std::collections::HashMap;
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, MatchKind};
use serde::Deserialize;

/// The catalog's text, as shipped in the binary.
pub const CATALOG_TOML: &str = include_str!("../../catalog/criu-failures.toml");

/// Why a catalog could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the failure catalog is not valid TOML: {0}; fix runner/catalog/criu-failures.toml")]
    Parse(#[from] toml::de::Error),
    #[error("failure catalog kind {id:?}: {problem}; fix runner/catalog/criu-failures.toml")]
    Invalid { id: String, problem: String },
}

/// A glob: literal pieces that must appear in this order; `*` between them
/// matches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pub source: String,
    pieces: Vec<String>,
    /// Each piece's number in the catalog's [`PieceIndex`] (empty until the
    /// glob joins a catalog).
    piece_ids: Vec<usize>,
}

impl Glob {
    pub fn new(source: &str) -> Glob {
        Glob {
            source: source.to_string(),
            pieces: source
                .split('*')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            piece_ids: Vec::new(),
        }
    }

    /// Could it match a text holding the pieces in `present`? (They must
    /// still be in order: [`Glob::is_match`] decides.)
    fn may_match(&self, present: &Present) -> bool {
        self.piece_ids.iter().all(|&i| present.has(i))
    }

    /// [`Glob::is_match`], skipped when a piece is missing from the text.
    fn matches(&self, text: &str, present: &Present) -> bool {
        self.may_match(present) && self.is_match(text)
    }

    /// The text the scanner searches for: everything before the first `*`.
    pub fn anchor(&self) -> Option<&str> {
        if self.source.starts_with('*') {
            None
        } else {
            self.pieces.first().map(String::as_str)
        }
    }

    pub fn is_match(&self, text: &str) -> bool {
        let mut at = 0;
        for p in &self.pieces {
            match text.get(at..).and_then(|rest| rest.find(p.as_str())) {
                Some(i) => at += i + p.len(),
                None => return false,
            }
        }
        true
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    followups: RawPatterns,
    harmless: RawPatterns,
    kind: Vec<RawKind>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPatterns {
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    id: String,
    phase: String,
    title: String,
    #[serde(default = "yes")]
    fatal: bool,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    warnings: Vec<String>,
    #[serde(default)]
    lines: Vec<String>,
    #[serde(default)]
    dmesg: Vec<String>,
    cause: String,
    remedy: String,
    #[serde(default)]
    sources: Vec<String>,
}

fn yes() -> bool {
    true
}

/// One failure kind of the catalog.
#[derive(Debug, Clone)]
pub struct Kind {
    pub id: String,
    pub phase: String,
    pub title: String,
    /// False: known to appear in successful runs; never a root cause.
    pub fatal: bool,
    pub errors: Vec<Glob>,
    pub warnings: Vec<Glob>,
    pub lines: Vec<Glob>,
    pub dmesg: Vec<Glob>,
    pub cause: String,
    pub remedy: String,
    pub sources: Vec<String>,
}

/// The whole catalog, compiled.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub followups: Vec<Glob>,
    pub harmless: Vec<Glob>,
    pub kinds: Vec<Kind>,
    pieces: PieceIndex,
}

/// Every literal piece of every pattern in one automaton: a line is searched
/// once, and only the globs whose pieces all occur in it are tried. (A glob
/// loop over the whole catalog cost most of `ferry diagnose`'s time on logs
/// with many error lines.)
#[derive(Debug, Clone)]
struct PieceIndex {
    ac: AhoCorasick,
    len: usize,
}

/// Does any of `globs` match `text`, whose pieces are `present`?
fn any_matches(globs: &[Glob], text: &str, present: &Present) -> bool {
    globs.iter().any(|g| g.matches(text, present))
}

/// Which pieces of the index occur in one text.
struct Present(Vec<u64>);

impl Present {
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

impl PieceIndex {
    /// Numbers every distinct piece of `globs` and records the numbers in
    /// each glob.
    fn build<'a>(globs: impl Iterator<Item = &'a mut Glob>) -> PieceIndex {
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut pieces: Vec<String> = Vec::new();
        for g in globs {
            g.piece_ids = g
                .pieces
                .iter()
                .map(|p| {
                    *ids.entry(p.clone()).or_insert_with(|| {
                        pieces.push(p.clone());
                        pieces.len() - 1
                    })
                })
                .collect();
        }
        let ac = match AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&pieces)
        {
            Ok(ac) => ac,
            // Only a pattern set far beyond any catalog's size can fail.
            Err(e) => panic!("cannot build the failure catalog's matcher: {e}"),
        };
        PieceIndex {
            ac,
            len: pieces.len(),
        }
    }

    fn present(&self, text: &str) -> Present {
        let mut bits = vec![0u64; self.len.div_ceil(64)];
        for m in self.ac.find_overlapping_iter(text) {
            let i = m.pattern().as_usize();
            bits[i / 64] |= 1 << (i % 64);
        }
        Present(bits)
    }
}

/// What the catalog says of one log message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// The first kind that matches.
    pub kind: Option<usize>,
    /// An error line the catalog calls a generic follow-up.
    pub followup: bool,
    /// An error line no kind matches that the catalog calls harmless.
    pub harmless: bool,
}

/// What a line of a CRIU log is, for diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Other,
}

impl Catalog {
    /// Parses and checks a catalog text.
    pub fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog = toml::from_str(text)?;
        let globs = |v: &[String]| v.iter().map(|s| Glob::new(s)).collect::<Vec<_>>();
        let mut kinds = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for k in raw.kind {
            let invalid = |problem: &str| CatalogError::Invalid {
                id: k.id.clone(),
                problem: problem.to_string(),
            };
            if !seen.insert(k.id.clone()) {
                return Err(invalid("the id is used twice"));
            }
            if k.id.is_empty()
                || !k
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(invalid("ids are lowercase letters, digits and `-`"));
            }
            if k.errors.is_empty()
                && k.warnings.is_empty()
                && k.lines.is_empty()
                && k.dmesg.is_empty()
            {
                return Err(invalid("it has no pattern"));
            }
            let all = k
                .errors
                .iter()
                .chain(&k.warnings)
                .chain(&k.lines)
                .chain(&k.dmesg);
            if all.clone().any(|p| p.trim_matches('*').is_empty()) {
                return Err(invalid("a pattern is empty"));
            }
            if k.lines.iter().chain(&k.dmesg).any(|p| p.starts_with('*')) {
                return Err(invalid(
                    "`lines` and `dmesg` patterns must start with literal text (the scanner searches for it)",
                ));
            }
            if k.cause.trim().is_empty() || k.remedy.trim().is_empty() {
                return Err(invalid("cause and remedy must be written"));
            }
            kinds.push(Kind {
                errors: globs(&k.errors),
                warnings: globs(&k.warnings),
                lines: globs(&k.lines),
                dmesg: globs(&k.dmesg),
                id: k.id,
                phase: k.phase,
                title: k.title,
                fatal: k.fatal,
                cause: k.cause,
                remedy: k.remedy,
                sources: k.sources,
            });
        }
        let mut followups = globs(&raw.followups.errors);
        let mut harmless = globs(&raw.harmless.errors);
        let pieces = PieceIndex::build(followups.iter_mut().chain(harmless.iter_mut()).chain(
            kinds.iter_mut().flat_map(|k| {
                k.errors
                    .iter_mut()
                    .chain(k.warnings.iter_mut())
                    .chain(k.lines.iter_mut())
                    .chain(k.dmesg.iter_mut())
            }),
        ));
        Ok(Catalog {
            followups,
            harmless,
            kinds,
            pieces,
        })
    }

    /// The catalog embedded in this binary.
    pub fn builtin() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| match Catalog::parse(CATALOG_TOML) {
            Ok(c) => c,
            // The embedded file is checked by the tests; a broken build
            // cannot reach a user.
            Err(e) => panic!("{e}"),
        })
    }

    pub fn kind(&self, id: &str) -> Option<&Kind> {
        self.kinds.iter().find(|k| k.id == id)
    }

    /// Index of the first kind matching a CRIU log message at `level`.
    pub fn match_log(&self, level: Level, msg: &str) -> Option<usize> {
        self.match_log_in(level, msg, &self.pieces.present(msg))
    }

    fn match_log_in(&self, level: Level, msg: &str, present: &Present) -> Option<usize> {
        self.kinds.iter().position(|k| {
            let by_level = match level {
                Level::Error => &k.errors,
                Level::Warn => &k.warnings,
                Level::Other => &k.lines,
            };
            any_matches(by_level, msg, present)
                || (level != Level::Other && any_matches(&k.lines, msg, present))
        })
    }

    /// Index of the first kind matching a dmesg line.
    pub fn match_dmesg(&self, line: &str) -> Option<usize> {
        let present = self.pieces.present(line);
        self.kinds
            .iter()
            .position(|k| any_matches(&k.dmesg, line, &present))
    }

    pub fn is_followup(&self, msg: &str) -> bool {
        any_matches(&self.followups, msg, &self.pieces.present(msg))
    }

    pub fn is_harmless(&self, msg: &str) -> bool {
        any_matches(&self.harmless, msg, &self.pieces.present(msg))
    }

    /// What the catalog says of one CRIU log message at `level`, with the
    /// message searched once.
    pub fn classify(&self, level: Level, msg: &str) -> Classified {
        let present = self.pieces.present(msg);
        let kind = self.match_log_in(level, msg, &present);
        let error = level == Level::Error;
        Classified {
            kind,
            followup: error && any_matches(&self.followups, msg, &present),
            harmless: error && kind.is_none() && any_matches(&self.harmless, msg, &present),
        }
    }

    /// Literal texts the log scanner must stop at besides `Error (` and
    /// `Warn`: the start of every `lines` pattern.
    pub fn line_anchors(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .kinds
            .iter()
            .flat_map(|k| k.lines.iter())
            .filter_map(|g| g.anchor().map(str::to_string))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Literal texts the dmesg scanner stops at.
    pub fn dmesg_anchors(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .kinds
            .iter()
            .flat_map(|k| k.dmesg.iter())
            .filter_map(|g| g.anchor().map(str::to_string))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

impl Catalog {
    /// `docs/failure-catalog.md`, generated from the catalog (a test keeps
    /// the file in step: `FERRY_BLESS=1 cargo test -p ferry --test docs`).
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        o.push_str("# Failure catalog\n\n");
        o.push_str(
            "What `ferry diagnose` recognises in CRIU dump/restore logs and dmesg. \
             Generated from `runner/catalog/criu-failures.toml` (do not edit by hand: \
             edit the catalog and run `FERRY_BLESS=1 cargo test -p ferry --test docs`). \
             Patterns are globs (`*` = any text) matched against a line's message, after \
             the timestamp, the pid column, `pie: N:` and the `Error (file:line):` location. \
             The research behind each kind is in `shared/research/criu-failures.md`.\n\n",
        );
        o.push_str("| id | phase | what |\n|---|---|---|\n");
        for k in &self.kinds {
            let _ = writeln!(o, "| [`{}`](#{}) | {} | {} |", k.id, k.id, k.phase, k.title);
        }
        o.push_str("\n## Follow-ups (never the root cause)\n\n");
        for g in &self.followups {
            let _ = writeln!(o, "- `{}`", g.source);
        }
        o.push_str("\n## Harmless errors (ignored)\n\n");
        for g in &self.harmless {
            let _ = writeln!(o, "- `{}`", g.source);
        }
        o.push_str("\n## Kinds\n");
        for k in &self.kinds {
            let _ = writeln!(o, "\n### {}\n", k.id);
            let _ = writeln!(o, "**{}** (phase: {})\n", k.title, k.phase);
            if !k.fatal {
                o.push_str(
                    "Advisory: seen in successful runs too, never reported as the root cause.\n\n",
                );
            }
            for (what, globs) in [
                ("error line", &k.errors),
                ("warning line", &k.warnings),
                ("any line", &k.lines),
                ("dmesg", &k.dmesg),
            ] {
                for g in globs {
                    let _ = writeln!(o, "- {what}: `{}`", g.source.replace('`', "'"));
                }
            }
            let _ = writeln!(o, "\nCause: {}\n\nRemedy: {}", k.cause, k.remedy);
            if !k.sources.is_empty() {
                let _ = writeln!(o, "\nSources: {}", k.sources.join(", "));
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_pieces_in_order() {
        let g = Glob::new("Can't fork for * File exists");
        assert!(g.is_match("Can't fork for 15047: File exists"));
        assert!(!g.is_match("File exists: Can't fork for 1"));
        assert_eq!(g.anchor(), Some("Can't fork for "));
        assert!(Glob::new("a*b*c").is_match("xaxbxcx"));
        assert!(!Glob::new("a*b*c").is_match("xaxcxbx"));
        assert_eq!(Glob::new("*x").anchor(), None);
    }

    /// The piece index only narrows the search: order still counts, and
    /// pieces that overlap or repeat in a line are all seen.
    #[test]
    fn piece_index_keeps_glob_semantics() {
        let text = r#"
[followups]
errors = ["Dumping FAILED*"]
[harmless]
errors = ["Can't read*ignored"]
[[kind]]
id = "ordered"
phase = "dump"
title = "t"
errors = ["first * second"]
cause = "c"
remedy = "r"
[[kind]]
id = "overlap"
phase = "dump"
title = "t"
errors = ["abc*bcd"]
warnings = ["abcd"]
cause = "c"
remedy = "r"
[[kind]]
id = "twice"
phase = "dump"
title = "t"
errors = ["xy*xy"]
lines = ["Helper said *"]
cause = "c"
remedy = "r"
"#;
        let c = Catalog::parse(text).unwrap();
        let id = |k: Option<usize>| k.map(|i| c.kinds[i].id.as_str());
        assert_eq!(
            id(c.match_log(Level::Error, "first then second")),
            Some("ordered")
        );
        assert_eq!(id(c.match_log(Level::Error, "second then first ")), None);
        assert_eq!(id(c.match_log(Level::Error, "abcbcd")), Some("overlap"));
        assert_eq!(
            id(c.match_log(Level::Error, "abcd")),
            None,
            "bcd must follow abc"
        );
        assert_eq!(id(c.match_log(Level::Warn, "xabcdx")), Some("overlap"));
        assert_eq!(id(c.match_log(Level::Error, "xyxy")), Some("twice"));
        assert_eq!(id(c.match_log(Level::Error, "xy")), None);
        assert_eq!(
            id(c.match_log(Level::Error, "Helper said no")),
            Some("twice")
        );
        assert_eq!(
            id(c.match_log(Level::Other, "Helper said no")),
            Some("twice")
        );
        assert!(c.is_followup("Dumping FAILED."));
        assert!(c.is_harmless("Can't read x, ignored"));
        assert!(!c.is_harmless("ignored: Can't read x"));
        let cl = c.classify(Level::Error, "Dumping FAILED.");
        assert!(cl.followup && !cl.harmless && cl.kind.is_none());
        let cl = c.classify(Level::Warn, "Dumping FAILED.");
        assert!(!cl.followup, "only error lines are follow-ups");
        let cl = c.classify(Level::Error, "Can't read y ignored");
        assert!(cl.harmless && !cl.followup);
    }

    #[test]
    fn builtin_catalog_parses() {
        let c = Catalog::builtin();
        assert!(c.kinds.len() >= 47);
        assert!(c.kind("pid-in-use").is_some());
    }

    #[test]
    fn invalid_catalogs_are_refused_with_the_id() {
        let bad = r#"
[followups]
[harmless]
[[kind]]
id = "x"
phase = "dump"
title = "t"
cause = "c"
remedy = "r"
"#;
        let e = Catalog::parse(bad).unwrap_err().to_string();
        assert!(e.contains("\"x\"") && e.contains("no pattern"), "{e}");
        let e = Catalog::parse("[[kind]]\nid = 1").unwrap_err().to_string();
        assert!(e.contains("criu-failures.toml"), "{e}");
    }
}
