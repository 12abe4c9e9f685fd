//! The human form of a [`Diagnosis`].

use std::fmt::Write as _;

use super::{Diagnosis, Finding, LogStatus, Role, Source, Verdict};

fn finding_block(out: &mut String, f: &Finding, indent: &str) {
    let width = f
        .evidence
        .iter()
        .map(|e| format!("{}:{}", e.log, e.line).len())
        .max()
        .unwrap_or(0);
    for e in &f.evidence {
        let place = format!("{}:{}", e.log, e.line);
        let mark = if e.key { '>' } else { ' ' };
        let _ = writeln!(out, "{indent}{mark} {place:<width$}  {}", e.text);
    }
    let _ = writeln!(out, "{indent}cause:  {}", f.cause);
    let _ = writeln!(out, "{indent}remedy: {}", f.remedy);
    if !f.sources.is_empty() {
        let _ = writeln!(out, "{indent}see:    {}", f.sources.join(", "));
    }
}

/// The report `ferry diagnose` prints.
pub fn human(d: &Diagnosis) -> String {
    let mut out = String::new();
    match (&d.verdict, &d.root_cause) {
        (Verdict::Diagnosed, Some(r)) => {
            let _ = writeln!(out, "root cause: {} — {}", r.kind, r.title);
            let _ = writeln!(out, "  in {} line {} (phase {})", r.log, r.line, r.phase);
            finding_block(&mut out, r, "  ");
        }
        (Verdict::Unknown, root) => {
            let _ = writeln!(
                out,
                "root cause: unknown — the first error is not in the failure catalog; not guessing."
            );
            if let Some(r) = root {
                let _ = writeln!(out, "  first error: {}:{}", r.log, r.line);
            }
            let _ = writeln!(out, "  relevant lines (errors and warnings, with context):");
            for e in &d.relevant {
                let mark = if e.key { '>' } else { ' ' };
                let _ = writeln!(out, "  {mark} {}:{}  {}", e.log, e.line, e.text);
            }
        }
        (Verdict::Incomplete, _) => {
            let _ = writeln!(out, "{}.", d.headline());
        }
        _ => {
            let _ = writeln!(out, "no CRIU log shows a failure.");
        }
    }
    if !d.findings.is_empty() {
        let _ = writeln!(out, "also found:");
        for f in &d.findings {
            let role = match f.role {
                Role::Advisory => " (advisory: seen in successful runs too)",
                _ => "",
            };
            let _ = writeln!(out, "  {} — {}{role}", f.kind, f.title);
            finding_block(&mut out, f, "    ");
        }
    }
    let _ = writeln!(out, "logs read:");
    for l in &d.logs {
        let what = match (l.source, l.status) {
            (Source::Dmesg, _) => "dmesg".to_string(),
            (_, s) => format!(
                "{} {}",
                l.operation.as_deref().unwrap_or("criu"),
                match s {
                    LogStatus::Succeeded => "succeeded",
                    LogStatus::Failed => "FAILED",
                    LogStatus::Incomplete if l.bytes == 0 => {
                        "is empty: criu died before writing its first line"
                    }
                    LogStatus::Incomplete => "has no status line",
                    LogStatus::NotApplicable => "",
                }
            ),
        };
        let _ = writeln!(
            out,
            "  {}: {what} ({} lines, {} errors, {} warnings)",
            l.path, l.lines, l.errors, l.warnings
        );
    }
    crate::printable::printable(&out)
}
