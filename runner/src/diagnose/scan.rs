//! The streaming line scanner: reads a log in large chunks and hands over
//! only the lines that contain one of a few literal anchors (`Error (`,
//! `Warn`, the catalog's helper-output texts), with their line number and
//! the lines just before them. Lines without an anchor are never split:
//! the anchors are found with a SIMD multi-literal search over the whole
//! chunk, and newlines are counted with SIMD.

use std::io::{self, Read};

use aho_corasick::{AhoCorasick, Input, MatchKind};
use memchr::{memchr, memrchr};

use super::parse;

/// Bytes read per chunk.
const CHUNK: usize = 8 << 20;
/// Longest line kept whole; longer ones are cut.
const MAX_LINE: usize = 1 << 20;
/// Most bytes of context carried from one chunk to the next.
const MAX_CONTEXT_BYTES: usize = 4096;

/// A line that contains an anchor. `text` may span several physical lines
/// (separated by `\n`) when CRIU cut it at 256 bytes and continued it.
#[derive(Debug)]
pub struct Hit<'a> {
    /// 1-based number of the (first) physical line.
    pub line_no: u64,
    pub text: &'a [u8],
    /// Up to `context` whole lines before it, each ending in `\n`.
    pub before: &'a [u8],
}

/// What a scan saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub bytes: u64,
    pub lines: u64,
}

/// Builds the anchor searcher (leftmost-first, so the SIMD prefilter is used).
pub fn anchors<I, P>(patterns: I) -> AhoCorasick
where
    I: IntoIterator<Item = P>,
    P: AsRef<[u8]>,
{
    match AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostFirst)
        .build(patterns)
    {
        Ok(ac) => ac,
        // Only a pattern set far beyond any catalog's size can fail.
        Err(e) => panic!("cannot build the log scanner: {e}"),
    }
}

/// Counts `\n` bytes (SIMD, chosen at run time: a plain loop took half of
/// `ferry diagnose`'s time on a 1 GiB log).
pub fn count_newlines(s: &[u8]) -> u64 {
    bytecount::count(s, b'\n') as u64
}

/// Start of the line `n` lines before the line starting at `from`, not
/// going below `floor`.
fn back_lines(buf: &[u8], from: usize, n: usize, floor: usize) -> usize {
    let mut s = from;
    for _ in 0..n {
        if s <= floor {
            break;
        }
        let prev_end = s - 1;
        s = memrchr(b'\n', &buf[floor..prev_end]).map_or(floor, |i| floor + i + 1);
    }
    s
}

/// Reads `r` to its end and calls `on_hit` for every line containing one of
/// `anchors`, with up to `context` lines before it.
pub fn scan<R: Read>(
    r: R,
    anchors: &AhoCorasick,
    context: usize,
    on_hit: impl FnMut(Hit<'_>),
) -> io::Result<ScanStats> {
    scan_with(
        r,
        anchors,
        context,
        CHUNK + MAX_LINE + MAX_CONTEXT_BYTES,
        on_hit,
    )
}

/// [`scan`] with a buffer of `cap` bytes (tests use tiny ones).
fn scan_with<R: Read>(
    mut r: R,
    anchors: &AhoCorasick,
    context: usize,
    cap: usize,
    mut on_hit: impl FnMut(Hit<'_>),
) -> io::Result<ScanStats> {
    let cap = cap.max(64);
    let max_context = MAX_CONTEXT_BYTES.min(cap / 4);
    let mut buf = vec![0u8; cap];
    let mut len = 0usize;
    let mut start = 0usize;
    let mut line_no = 1u64;
    let mut stats = ScanStats::default();
    let mut eof = false;
    let mut last_byte = b'\n';
    loop {
        while !eof && len < cap {
            match r.read(&mut buf[len..]) {
                Ok(0) => eof = true,
                Ok(n) => {
                    stats.bytes += n as u64;
                    len += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if len > 0 {
            last_byte = buf[len - 1];
        }
        let end = if eof {
            len
        } else {
            match memrchr(b'\n', &buf[start..len]) {
                Some(i) => start + i + 1,
                // A line longer than the buffer: cut it here.
                None => len,
            }
        };
        let mut pos = start;
        let mut counted = start;
        let mut carry_from = end;
        while pos < end {
            let Some(m) = anchors.find(Input::new(&buf[..end]).range(pos..end)) else {
                break;
            };
            let ls = memrchr(b'\n', &buf[start..m.start()]).map_or(start, |i| start + i + 1);
            let mut le = memchr(b'\n', &buf[m.start()..end]).map_or(end, |i| m.start() + i);
            let mut last = ls;
            let mut carry = false;
            while parse::is_cut(&buf[last..le]) {
                if le + 1 >= end {
                    carry = !eof && ls > start;
                    break;
                }
                let next = le + 1;
                let next_end = memchr(b'\n', &buf[next..end]).map_or(end, |i| next + i);
                if !parse::is_continuation(&buf[next..next_end]) {
                    break;
                }
                last = next;
                le = next_end;
            }
            if carry {
                carry_from = ls;
                break;
            }
            line_no += count_newlines(&buf[counted..ls]);
            counted = ls;
            let ctx = back_lines(&buf, ls, context, 0);
            on_hit(Hit {
                line_no,
                text: &buf[ls..le],
                before: &buf[ctx..ls],
            });
            pos = le + 1;
        }
        line_no += count_newlines(&buf[counted..carry_from]);
        if eof && carry_from >= len {
            break;
        }
        let floor = carry_from.saturating_sub(max_context);
        let keep = back_lines(&buf, carry_from, context, floor);
        buf.copy_within(keep..len, 0);
        len -= keep;
        start = carry_from - keep;
    }
    stats.lines = line_no - 1 + u64::from(stats.bytes > 0 && last_byte != b'\n');
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(text: &[u8], pats: &[&str]) -> (Vec<(u64, String, String)>, ScanStats) {
        let ac = anchors(pats);
        let mut v = Vec::new();
        let st = scan(text, &ac, 2, |h| {
            v.push((
                h.line_no,
                String::from_utf8_lossy(h.text).into_owned(),
                String::from_utf8_lossy(h.before).into_owned(),
            ))
        })
        .unwrap();
        (v, st)
    }

    #[test]
    fn finds_lines_numbers_and_context() {
        let (v, st) = collect(b"a\nb\nc Error (x\nd\nError (y", &["Error ("]);
        assert_eq!(st.lines, 5);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], (3, "c Error (x".into(), "a\nb\n".into()));
        assert_eq!(v[1].0, 5);
        assert_eq!(v[1].1, "Error (y");
        assert_eq!(v[1].2, "c Error (x\nd\n");
    }

    #[test]
    fn one_hit_per_line_and_continuations_joined() {
        let cut = format!("pie: 1: Error (x): {}>", "a".repeat(240));
        let text = format!("Error ( Error (\n{cut}\npie: 1: tail\nz\n");
        let (v, _) = collect(text.as_bytes(), &["Error ("]);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].0, 2);
        assert!(v[1].1.ends_with("\npie: 1: tail"), "{}", v[1].1);
    }

    #[test]
    fn newline_count_matches_naive() {
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| if i % 7 == 0 { b'\n' } else { b'x' })
            .collect();
        let naive = data.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(count_newlines(&data), naive);
    }

    /// A reader handing out a few bytes at a time, so chunk edges fall
    /// everywhere.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn chunk_edges_do_not_change_results() {
        let mut text = String::new();
        for i in 0..5000 {
            if i % 97 == 0 {
                text.push_str(&format!("({i}.0) Error (f.c:1): e{i}\n"));
            } else {
                text.push_str(&format!("({i}.0) line {i}\n"));
            }
        }
        let ac = anchors(["Error ("]);
        let mut a = Vec::new();
        scan(text.as_bytes(), &ac, 1, |h| {
            a.push((h.line_no, h.text.to_vec()))
        })
        .unwrap();
        for cap in [64, 100, 333, 4096] {
            let mut b = Vec::new();
            scan_with(Trickle(text.as_bytes(), 7), &ac, 1, cap, |h| {
                b.push((h.line_no, h.text.to_vec()))
            })
            .unwrap();
            assert_eq!(a, b, "cap {cap}");
        }
        assert_eq!(a.len(), 52);
        assert_eq!(a[1].0, 98);
    }
}
