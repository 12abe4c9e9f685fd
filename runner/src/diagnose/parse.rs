//! One line of a CRIU log, taken apart: `[(SS.UUUUUU) ][   pid: ][pie: tid: ]
//! [Error (file:line): |Warn  (file:line): ]message`. Every part is optional
//! (no timestamps below -v3, no pid column in the criu master, helper output
//! has none of them), and nothing here panics on any input.

use super::catalog::Level;

/// A parsed line. `msg` is the text after the location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    pub timestamp: Option<&'a str>,
    pub pid: Option<u32>,
    pub pie: bool,
    pub level: Level,
    pub location: Option<&'a str>,
    pub msg: &'a str,
    /// Everything before the level (timestamp, pid column, `pie: N: `):
    /// a continued line repeats it.
    pub prefix_len: usize,
}

/// Takes `(SS.UUUUUU) ` off the front; also `(123.45678) ` (criu's format
/// from 100 s on).
fn timestamp(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix('(')?;
    let close = rest.find(") ")?;
    let ts = &rest[..close];
    let ok = !ts.is_empty()
        && ts.len() <= 16
        && ts.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && ts.contains('.');
    ok.then(|| (ts, &rest[close + 2..]))
}

/// Takes `  1234: ` (right-aligned pid column) off the front.
fn pid_column(s: &str) -> Option<(u32, &str)> {
    let t = s.trim_start_matches(' ');
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 10 {
        return None;
    }
    let rest = t[digits..].strip_prefix(": ")?;
    let pid = t[..digits].parse().ok()?;
    Some((pid, rest))
}

/// Takes the level and the location off the front: `Error (criu/x.c:12): `.
fn level(s: &str) -> (Level, Option<&str>, &str) {
    let (lvl, rest) = if let Some(r) = s.strip_prefix("Error (") {
        (Level::Error, r)
    } else if let Some(r) = s
        .strip_prefix("Warn  (")
        .or_else(|| s.strip_prefix("Warn ("))
    {
        (Level::Warn, r)
    } else {
        return (Level::Other, None, s);
    };
    match rest.find("): ") {
        // A location is `file:line`, short and without spaces.
        Some(i) if i < 128 && !rest[..i].contains(' ') && rest[..i].contains(':') => {
            (lvl, Some(&rest[..i]), &rest[i + 3..])
        }
        _ => match rest.strip_suffix(')') {
            Some(loc) if loc.len() < 128 && !loc.contains(' ') => (lvl, Some(loc), ""),
            _ => (Level::Other, None, s),
        },
    }
}

pub fn parse(line: &str) -> LogLine<'_> {
    let line = line.trim_end_matches(['\n', '\r']);
    let mut rest = line.trim_start_matches(' ');
    let mut ts = None;
    if let Some((t, r)) = timestamp(rest) {
        ts = Some(t);
        rest = r;
    }
    let mut pid = None;
    if let Some((p, r)) = pid_column(rest) {
        pid = Some(p);
        rest = r;
    }
    let mut pie = false;
    let trimmed = rest.trim_start_matches(' ');
    if let Some(r) = trimmed.strip_prefix("pie: ") {
        pie = true;
        rest = r;
        if let Some((p, r)) = pid_column(rest) {
            pid = pid.or(Some(p));
            rest = r;
        }
    }
    let prefix_len = line.len() - rest.len();
    let (level, location, msg) = level(rest);
    LogLine {
        timestamp: ts,
        pid,
        pie,
        level,
        location,
        msg,
        prefix_len,
    }
}

/// Joins a line CRIU cut at 256 bytes (ending in `>`) with its
/// continuations, which repeat the prefix: `physical` holds the lines
/// separated by `\n`. Returns the logical line's text.
pub fn join_continued(physical: &str) -> String {
    let mut parts = physical.split('\n');
    let mut out = String::from(parts.next().unwrap_or(""));
    for next in parts {
        if let Some(stripped) = out.strip_suffix('>') {
            out.truncate(stripped.len());
        }
        let p = parse(next);
        let cont = &next[p.prefix_len.min(next.len())..];
        out.push_str(cont);
    }
    out
}

/// Whether a physical line looks cut by the parasite's 256-byte log buffer
/// (`pie:` lines only; the cut ends the line with `>`).
pub fn is_cut(line: &[u8]) -> bool {
    line.len() <= 512
        && line.last() == Some(&b'>')
        && memchr::memmem::find(&line[..line.len().min(48)], b"pie: ").is_some()
}

/// Whether a physical line can continue a cut one (it repeats the
/// `pie: N: ` prefix).
pub fn is_continuation(line: &[u8]) -> bool {
    memchr::memmem::find(&line[..line.len().min(48)], b"pie: ").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_prefix() {
        let l = parse("(00.002960) 625409: Error (criu/files.c:1234): Unable to open fd=3 id=0x10");
        assert_eq!(l.timestamp, Some("00.002960"));
        assert_eq!(l.pid, Some(625409));
        assert_eq!(l.level, Level::Error);
        assert_eq!(l.location, Some("criu/files.c:1234"));
        assert_eq!(l.msg, "Unable to open fd=3 id=0x10");
    }

    #[test]
    fn variants() {
        let l = parse("(00.005886)     48: Error (criu/tty.c:1): tty: x");
        assert_eq!((l.pid, l.msg), (Some(48), "tty: x"));
        let l = parse("(123.45678) Warn  (criu/irmap.c:104): irmap: Can't stat /x");
        assert_eq!((l.level, l.msg), (Level::Warn, "irmap: Can't stat /x"));
        let l = parse(" pie: 77: Error (criu/pie/restorer.c:9): Restorer fail 77");
        assert!(l.pie);
        assert_eq!((l.pid, l.level), (Some(77), Level::Error));
        let l = parse("(00.1) pie: 77: __fetched msg");
        assert_eq!(
            (l.pie, l.level, l.msg),
            (true, Level::Other, "__fetched msg")
        );
        let l = parse("Error (sk-unix.c:1216): old style");
        assert_eq!(l.msg, "old style");
        let l = parse("line 7: CHAIN_USER_DEL failed");
        assert_eq!((l.pid, l.level), (None, Level::Other));
        let l = parse("(00.1) 12: Dumping path for 3 fd via self 1 [/tmp/Error (x).txt]");
        assert_eq!(l.level, Level::Other);
        let l = parse("Error (weird no close");
        assert_eq!(l.level, Level::Other);
        let l = parse("(00.000000) Error (criu/crtools.c:1): ");
        assert_eq!((l.level, l.msg), (Level::Error, ""));
    }

    #[test]
    fn continued_lines_are_joined() {
        let a = "(00.1) pie: 5: Error (criu/pie/parasite-vdso.c:1): vdso: Can't find vDSO area >";
        let j = join_continued(&format!("{a}\n(00.1) pie: 5: in image"));
        assert!(j.ends_with("Can't find vDSO area in image"), "{j}");
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        for s in [
            "",
            "(",
            "()",
            "(.) ",
            "   : ",
            "pie: ",
            "pie: 1:",
            "Warn (",
            "(0.0) 1: pie: x",
        ] {
            let _ = parse(s);
            let _ = join_continued(s);
        }
    }
}
