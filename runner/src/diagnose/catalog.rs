//! The failure catalog: `runner/catalog/criu-failures.toml`, embedded in the
//! binary and parsed once. The data decides what `ferry diagnose` knows; this
//! file only knows how to match it.

use std::sync::OnceLock;

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
        }
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
        Ok(Catalog {
            followups: globs(&raw.followups.errors),
            harmless: globs(&raw.harmless.errors),
            kinds,
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
        self.kinds.iter().position(|k| {
            let by_level = match level {
                Level::Error => &k.errors,
                Level::Warn => &k.warnings,
                Level::Other => &k.lines,
            };
            by_level.iter().any(|g| g.is_match(msg))
                || (level != Level::Other && k.lines.iter().any(|g| g.is_match(msg)))
        })
    }

    /// Index of the first kind matching a dmesg line.
    pub fn match_dmesg(&self, line: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.dmesg.iter().any(|g| g.is_match(line)))
    }

    pub fn is_followup(&self, msg: &str) -> bool {
        self.followups.iter().any(|g| g.is_match(msg))
    }

    pub fn is_harmless(&self, msg: &str) -> bool {
        self.harmless.iter().any(|g| g.is_match(msg))
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
