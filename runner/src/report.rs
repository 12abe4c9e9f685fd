//! `ferry report`: a run's timeline — phases, durations, results, the boot
//! gap, the diagnosis — as text, and as a self-contained `report.html`
//! (inline CSS and SVG, no external assets) that goes into every bundle.
//!
//! The timeline is read from a `state.json` (or a manifest's run meta) as
//! plain JSON, so reports of bundles written by other ferry versions still
//! work as long as the phases are there.

use std::fmt::Write as _;

use serde_json::Value;

use crate::diagnose::{Diagnosis, Verdict};

/// One phase on the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub name: String,
    pub result: String,
    /// Index into [`Timeline::boots`].
    pub boot: usize,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub error: Option<String>,
}

/// A run's phases across its boots.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    pub run_id: String,
    pub host: String,
    pub result: String,
    pub kernel_before: String,
    pub kernel_after: String,
    pub boots: Vec<String>,
    pub bars: Vec<Bar>,
    /// Phases whose times could not be read, and why: shown, not dropped
    /// without a word.
    pub unreadable: Vec<String>,
}

/// A string field as one printable line: a name in state.json with a
/// newline or an escape sequence cannot forge a line of the report.
fn s(v: &Value, k: &str) -> String {
    crate::printable::one_line(v.get(k).and_then(Value::as_str).unwrap_or(""))
}

impl Timeline {
    /// From `state.json` or a manifest's `run` object.
    pub fn from_json(v: &Value) -> Timeline {
        let mut t = Timeline {
            run_id: s(v, "run_id"),
            host: s(v, "host"),
            result: crate::printable::one_line(
                v.get("outcome")
                    .and_then(|o| o.get("result"))
                    .or_else(|| v.get("result"))
                    .and_then(Value::as_str)
                    .unwrap_or("unknown"),
            ),
            kernel_before: s(v, "kernel_before"),
            kernel_after: s(v, "kernel_after"),
            ..Timeline::default()
        };
        for p in v
            .get("phases")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let boot_id = s(p, "boot_id");
            let boot = match t.boots.iter().position(|b| *b == boot_id) {
                Some(i) => i,
                None => {
                    t.boots.push(boot_id);
                    t.boots.len() - 1
                }
            };
            let name = s(p, "name");
            let Some(start_ns) = p.get("start_unix_nano").and_then(Value::as_u64) else {
                t.unreadable.push(format!(
                    "phase {:?}: start_unix_nano is {} (not nanoseconds since 1970); left out of the timeline",
                    name,
                    p.get("start_unix_nano").map_or("missing".into(), Value::to_string)
                ));
                continue;
            };
            let mut end_ns = p.get("end_unix_nano").and_then(Value::as_u64);
            if let Some(e) = p.get("end_unix_nano").filter(|e| !e.is_null())
                && end_ns.is_none()
            {
                t.unreadable.push(format!(
                    "phase {name:?}: end_unix_nano is {e} (not nanoseconds since 1970); shown as open"
                ));
            }
            if end_ns.is_some_and(|e| e < start_ns) {
                t.unreadable.push(format!(
                    "phase {name:?} ends before it starts (clock stepped?); shown as open"
                ));
                end_ns = None;
            }
            t.bars.push(Bar {
                name,
                result: crate::printable::one_line(
                    p.get("result").and_then(Value::as_str).unwrap_or("unknown"),
                ),
                boot,
                start_ns,
                end_ns,
                error: p
                    .get("error")
                    .and_then(Value::as_str)
                    .map(crate::printable::printable),
            });
        }
        t.check_clock();
        t
    }

    /// Times no run can have: in the future, or a boot that starts before
    /// the one before it ended. Shown as they are, with a warning.
    fn check_clock(&mut self) {
        const DAY_NS: u64 = 86_400 * 1_000_000_000;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(u64::MAX, |d| {
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
            });
        for b in &self.bars {
            if b.start_ns.max(b.end_ns.unwrap_or(0)) > now.saturating_add(DAY_NS) {
                self.unreadable.push(format!(
                    "phase {:?} has a time more than a day in the future; the clock or the file is wrong",
                    b.name
                ));
            }
        }
        for i in 1..self.boots.len() {
            if let Some((end, start)) = self.boot_boundary(i)
                && start < end
            {
                self.unreadable.push(format!(
                    "boot {} starts before boot {} ended (the clock went back, or the file was edited); the boot gap is not shown",
                    i + 1,
                    i
                ));
            }
        }
    }

    pub fn start_ns(&self) -> u64 {
        self.bars.iter().map(|b| b.start_ns).min().unwrap_or(0)
    }

    pub fn end_ns(&self) -> u64 {
        self.bars
            .iter()
            .map(|b| b.end_ns.unwrap_or(b.start_ns))
            .max()
            .unwrap_or(0)
    }

    /// From the end of the last phase on one boot to the start of the first
    /// on the next: the time no ferry phase ran (kexec, boot, network).
    pub fn boot_gaps(&self) -> Vec<(u64, u64)> {
        (1..self.boots.len())
            .filter_map(|b| self.boot_boundary(b))
            .filter(|(a, z)| z > a)
            .collect()
    }

    /// The end of the last phase of boot `b - 1` and the start of the
    /// first of boot `b`, when both boots have a phase.
    fn boot_boundary(&self, b: usize) -> Option<(u64, u64)> {
        let prev_end = self
            .bars
            .iter()
            .filter(|x| x.boot + 1 == b)
            .map(|x| x.end_ns.unwrap_or(x.start_ns))
            .max()?;
        let next_start = self
            .bars
            .iter()
            .filter(|x| x.boot == b)
            .map(|x| x.start_ns)
            .min()?;
        Some((prev_end, next_start))
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The text timeline `ferry report` prints.
pub fn text(t: &Timeline, d: Option<&Diagnosis>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} on {}: {} (kernel {} -> {})",
        t.run_id,
        t.host,
        t.result.replace('_', " "),
        or_dash(&t.kernel_before),
        or_dash(&t.kernel_after)
    );
    let t0 = t.start_ns();
    let gaps = t.boot_gaps();
    for (i, boot) in t.boots.iter().enumerate() {
        if i > 0
            && let Some((a, z)) = gaps.iter().find(|(a, _)| {
                t.bars
                    .iter()
                    .any(|b| b.boot == i - 1 && b.end_ns.unwrap_or(b.start_ns) == *a)
            })
        {
            let _ = writeln!(
                out,
                "  -- boot gap: {:.1} s with no phase running (kexec, boot, network) --",
                secs(z - a)
            );
        }
        let _ = writeln!(out, "boot {} ({})", i + 1, short(boot));
        for b in t.bars.iter().filter(|b| b.boot == i) {
            let dur = b
                .end_ns
                .map(|e| format!("{:8.3} s", secs(e.saturating_sub(b.start_ns))))
                .unwrap_or_else(|| "   (open)".into());
            let _ = writeln!(
                out,
                "  +{:8.3} s  {:<16} {:<8} {dur}{}",
                secs(b.start_ns.saturating_sub(t0)),
                b.name,
                b.result,
                b.error
                    .as_deref()
                    .map(|e| format!("  {}", first_line(e)))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(out, "total {:.1} s", secs(t.end_ns().saturating_sub(t0)));
    for u in &t.unreadable {
        let _ = writeln!(out, "warning: {u}");
    }
    match d {
        Some(d) if d.verdict != Verdict::NoFailure => {
            let _ = writeln!(out, "diagnosis: {}", d.headline());
            if let Some(r) = &d.root_cause {
                let _ = writeln!(out, "  remedy: {}", r.remedy);
            }
        }
        Some(_) => {
            let _ = writeln!(out, "diagnosis: no CRIU log shows a failure");
        }
        None => {}
    }
    crate::printable::printable(&out)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn first_line(s: &str) -> &str {
    let l = s.lines().next().unwrap_or("");
    match l.char_indices().nth(100) {
        Some((i, _)) => &l[..i],
        None => l,
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn color(result: &str) -> &'static str {
    match result {
        "ok" => "#2e7d32",
        "failed" => "#c62828",
        "skipped" => "#9e9e9e",
        "running" => "#f9a825",
        _ => "#607d8b",
    }
}

/// The self-contained `report.html`.
pub fn html(t: &Timeline, d: Option<&Diagnosis>) -> String {
    let t0 = t.start_ns();
    let span = t.end_ns().saturating_sub(t0).max(1) as f64;
    let (label_w, chart_w, row_h) = (150.0, 720.0, 22.0);
    let x = |ns: u64| label_w + (ns.saturating_sub(t0) as f64 / span) * chart_w;
    let rows = t.bars.len();
    let height = 40.0 + rows as f64 * row_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" role="img" aria-label="phase timeline"><defs><pattern id="gap" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="6" fill="#cfd8dc"/></pattern></defs>"##,
        w = label_w + chart_w + 20.0
    );
    for (a, z) in t.boot_gaps() {
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="20" width="{:.1}" height="{:.1}" fill="url(#gap)"><title>boot gap {:.1} s</title></rect><text x="{:.1}" y="14" class="gap">reboot {:.1} s</text>"##,
            x(a),
            (x(z) - x(a)).max(1.0),
            rows as f64 * row_h,
            secs(z - a),
            x(a),
            secs(z - a)
        );
    }
    for (i, b) in t.bars.iter().enumerate() {
        let y = 20.0 + i as f64 * row_h;
        let end = b.end_ns.unwrap_or(b.start_ns);
        let dur = secs(end.saturating_sub(b.start_ns));
        let _ = write!(
            svg,
            r##"<text x="4" y="{:.1}" class="lbl">{} <tspan class="boot">b{}</tspan></text><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {} {:.3} s{}</title></rect>"##,
            y + 15.0,
            esc(&b.name),
            b.boot + 1,
            x(b.start_ns),
            y + 3.0,
            (x(end) - x(b.start_ns)).max(2.0),
            row_h - 6.0,
            color(&b.result),
            esc(&b.name),
            esc(&b.result),
            dur,
            b.error
                .as_deref()
                .map(|e| format!(" — {}", esc(first_line(e))))
                .unwrap_or_default()
        );
    }
    svg.push_str("</svg>");
    let mut diag = String::new();
    if let Some(d) = d {
        let _ = write!(diag, "<h2>Diagnosis</h2><p>{}</p>", esc(&d.headline()));
        if let Some(r) = &d.root_cause {
            diag.push_str("<pre>");
            for e in &r.evidence {
                let _ = writeln!(
                    diag,
                    "{}{}:{}  {}",
                    if e.key { "&gt; " } else { "  " },
                    esc(&e.log),
                    e.line,
                    esc(&e.text)
                );
            }
            let _ = write!(
                diag,
                "</pre><p><b>Cause:</b> {}</p><p><b>Remedy:</b> {}</p>",
                esc(&r.cause),
                esc(&r.remedy)
            );
        }
        for f in &d.findings {
            let _ = write!(
                diag,
                "<p>Also found: <b>{}</b> — {} ({}:{})</p>",
                esc(&f.kind),
                esc(&f.title),
                esc(&f.log),
                f.line
            );
        }
    }
    let text_timeline = esc(&text(t, None));
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ferry run {run}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#212121}}
h1{{font-size:1.3em}} h2{{font-size:1.1em;margin-top:1.5em}}
pre{{background:#f5f5f5;padding:.6em;overflow-x:auto;font-size:12px}}
.lbl{{font:12px monospace}} .boot{{fill:#757575}} .gap{{font:11px sans-serif;fill:#546e7a}}
.result-succeeded{{color:#2e7d32}} .result-failed,.result-called_off{{color:#c62828}}
</style></head><body>
<h1>ferry run {run} on {host}: <span class="result-{result_class}">{result}</span></h1>
<p>kernel {kb} &rarr; {ka}</p>
{svg}
{diag}
<h2>Timeline</h2><pre>{text_timeline}</pre>
</body></html>
"##,
        run = esc(&t.run_id),
        host = esc(&t.host),
        result = esc(&t.result.replace('_', " ")),
        result_class = esc(&t.result),
        kb = esc(or_dash(&t.kernel_before)),
        ka = esc(or_dash(&t.kernel_after)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        serde_json::json!({
            "run_id": "r1", "host": "h<1>", "kernel_before": "6.1", "kernel_after": "6.12",
            "outcome": {"result": "succeeded"},
            "phases": [
                {"name": "preflight", "result": "ok", "boot_id": "aaaaaaaa-1", "start_unix_nano": 1_000_000_000u64, "end_unix_nano": 1_500_000_000u64},
                {"name": "dump", "result": "ok", "boot_id": "aaaaaaaa-1", "start_unix_nano": 2_000_000_000u64, "end_unix_nano": 3_000_000_000u64},
                {"name": "restore", "result": "failed", "boot_id": "bbbbbbbb-2", "start_unix_nano": 13_000_000_000u64, "end_unix_nano": 14_000_000_000u64, "error": "criu restore failed\nmore"},
                {"name": "ship", "result": "running", "boot_id": "bbbbbbbb-2", "start_unix_nano": 15_000_000_000u64}
            ]
        })
    }

    #[test]
    fn timeline_has_boots_and_gap() {
        let t = Timeline::from_json(&sample());
        assert_eq!(t.boots.len(), 2);
        assert_eq!(t.boot_gaps(), vec![(3_000_000_000, 13_000_000_000)]);
        let txt = text(&t, None);
        assert!(txt.contains("boot gap: 10.0 s"), "{txt}");
        assert!(
            txt.contains("restore          failed      1.000 s  criu restore failed"),
            "{txt}"
        );
        assert!(txt.contains("(open)"), "{txt}");
    }

    /// Regression: a phase with a negative, float or string start was
    /// dropped without a word (the report said "total 0.0 s", exit 0),
    /// and one ending before its start showed 0.000 s.
    #[test]
    fn unreadable_times_are_named_not_dropped() {
        let t = Timeline::from_json(&serde_json::json!({
            "run_id": "r1",
            "phases": [
                {"name": "locate", "result": "ok", "boot_id": "a", "start_unix_nano": -5},
                {"name": "dump", "result": "ok", "boot_id": "a", "start_unix_nano": "NaN"},
                {"name": "upgrade", "result": "ok", "boot_id": "a", "start_unix_nano": 9_000u64, "end_unix_nano": 1e30},
                {"name": "kernel", "result": "ok", "boot_id": "a", "start_unix_nano": 9_000u64, "end_unix_nano": 5_000u64}
            ]
        }));
        assert_eq!(t.bars.len(), 2);
        assert!(t.bars.iter().all(|b| b.end_ns.is_none()));
        // Review: impossible times that parse were shown without a word.
        let odd = Timeline::from_json(&serde_json::json!({
            "run_id": "r1",
            "phases": [
                {"name": "dump", "result": "ok", "boot_id": "a", "start_unix_nano": 5_000_000_000u64, "end_unix_nano": u64::MAX},
                {"name": "restore\nFAKE failed", "result": "ok", "boot_id": "b", "start_unix_nano": 1_000_000_000u64, "end_unix_nano": 2_000_000_000u64}
            ]
        }));
        let txt = text(&odd, None);
        assert!(
            txt.contains("warning: phase \"dump\" has a time more than a day in the future"),
            "{txt}"
        );
        assert!(
            txt.contains("warning: boot 2 starts before boot 1 ended"),
            "{txt}"
        );
        assert!(!txt.lines().any(|l| l.starts_with("FAKE")), "{txt}");
        assert!(txt.contains("restore\\nFAKE failed"), "{txt}");
        let txt = text(&t, None);
        for want in [
            "warning: phase \"locate\": start_unix_nano is -5 (not nanoseconds since 1970)",
            "warning: phase \"dump\": start_unix_nano is \"NaN\"",
            "warning: phase \"upgrade\": end_unix_nano is 1e+30",
            "warning: phase \"kernel\" ends before it starts",
        ] {
            assert!(txt.contains(want), "{want} not in {txt}");
        }
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let h = html(&Timeline::from_json(&sample()), None);
        assert!(h.contains("<svg") && h.contains("reboot 10.0 s"));
        assert!(h.contains("h&lt;1&gt;") && !h.contains("h<1>"));
        for external in ["http://", "https://", "src=", "<link", "@import"] {
            let hits = h.matches(external).count();
            let allowed = if external == "http://" { 1 } else { 0 }; // the SVG namespace
            assert_eq!(hits, allowed, "{external} in report.html");
        }
    }

    #[test]
    fn odd_json_gives_an_empty_timeline() {
        let t = Timeline::from_json(&serde_json::json!({"phases": [{"name": 3}, 7]}));
        assert!(t.bars.is_empty());
        let _ = html(&t, None);
        let _ = text(&t, None);
    }
}
