//! Streaming redaction of secrets, applied to every byte before it reaches
//! the archive.
//!
//! Three rules, applied left to right in one pass:
//!
//! 1. **Configured secrets** — each exact value of at least
//!    [`MIN_SECRET_LEN`] bytes becomes `[REDACTED]`.
//! 2. **Bearer tokens** — `Bearer`, `bearer` or `BEARER` (not preceded by a
//!    letter or digit), blanks, then a token (`A-Z a-z 0-9 - . _ ~ + / =`):
//!    the token becomes `[REDACTED]`, the word `Bearer ` stays.
//! 3. **Authorization values** — `Authorization`, `authorization` or
//!    `AUTHORIZATION`, optionally quoted, then `:` or `=`: the value up to the
//!    end of the line (or the closing quote) becomes `[REDACTED]`; a leading
//!    scheme word such as `Basic ` or `Bearer ` stays.
//!
//! The input arrives in chunks of any size. The redactor keeps back the few
//! bytes at the end of a chunk that could still begin a match (at most the
//! longest secret, or about a hundred bytes of header context) and carries
//! them into the next chunk, so a secret split across two reads is still
//! caught and the output never depends on how the input was chunked. A token
//! or header value that runs on past the end of a chunk is dropped as it
//! arrives, so nothing unbounded is ever held.

use aho_corasick::{AhoCorasick, Input, MatchKind};
use memchr::{memchr2, memchr3};

use super::error::{BundleError, Result};

/// What a redacted span is replaced with.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// Secrets shorter than this are ignored: they would match everywhere.
pub const MIN_SECRET_LEN: usize = 4;

/// The spellings of the two keywords that are looked for. Matching every
/// mixed-case spelling would cost a slow case-insensitive scan (~0.4 GB/s
/// instead of ~7 GB/s); these cover what HTTP clients and servers print.
const KEYWORDS: [(&str, Kind); 6] = [
    ("Bearer", Kind::Bearer),
    ("bearer", Kind::Bearer),
    ("BEARER", Kind::Bearer),
    ("Authorization", Kind::Auth),
    ("authorization", Kind::Auth),
    ("AUTHORIZATION", Kind::Auth),
];

/// Longest run of blanks accepted between the parts of a header.
const MAX_BLANKS: usize = 16;
/// Upper bound of what a keyword and its context can hold back: the longest
/// keyword plus the header's quotes, blanks, separator and scheme word
/// (about 110 bytes), with room to spare.
const MAX_CONTEXT: usize = 256;
/// Longest scheme word (`Basic`, `Bearer`, `Digest`, `token`, …) kept visible.
const MAX_SCHEME: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Secret,
    Bearer,
    Auth,
}

/// The compiled patterns; shared by all the redactors of one bundle.
#[derive(Debug)]
pub(crate) struct Matcher {
    ac: AhoCorasick,
    n_secrets: usize,
    /// Bytes kept back at the end of a chunk: the longest pattern minus one.
    hold: usize,
}

impl Matcher {
    /// Compiles the configured secrets (shorter than [`MIN_SECRET_LEN`] are
    /// dropped, duplicates merged) together with the keywords.
    pub(crate) fn new(secrets: &[String]) -> Result<Self> {
        let mut secrets: Vec<&[u8]> = secrets
            .iter()
            .map(|s| s.as_bytes())
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        secrets.sort_unstable();
        secrets.dedup();
        let n_secrets = secrets.len();
        let patterns: Vec<&[u8]> = secrets
            .iter()
            .copied()
            .chain(KEYWORDS.iter().map(|(k, _)| k.as_bytes()))
            .collect();
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(1);
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| BundleError::Compression {
                detail: format!("cannot compile the {n_secrets} secrets to redact: {e}"),
            })?;
        Ok(Matcher {
            ac,
            n_secrets,
            hold: longest - 1,
        })
    }

    fn kind(&self, pattern: usize) -> Kind {
        if pattern < self.n_secrets {
            Kind::Secret
        } else {
            KEYWORDS[pattern - self.n_secrets].1
        }
    }

    /// Redacts a whole string at once (used for the run metadata).
    pub(crate) fn redact_str(&self, s: &str) -> (String, u64) {
        let mut r = Redactor::new(self);
        let mut out = Vec::with_capacity(s.len());
        r.push(s.as_bytes(), &mut out);
        r.finish(&mut out);
        let n = r.count();
        // Matches and terminators are ASCII or whole UTF-8 strings, so the
        // cuts fall on character boundaries; lossy conversion is a fallback.
        let s = String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        (s, n)
    }
}

/// `text` as a bundle would hold it: every secret and credential-looking
/// value replaced. For files shipped beside a bundle (its report page), so
/// they carry no more than their copy inside it.
pub fn redact_text(secrets: &[String], text: &str) -> Result<String> {
    Ok(Matcher::new(secrets)?.redact_str(text).0)
}

/// Where redacted output goes.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A sink that only counts, for sizing an entry before writing it.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub u64);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len() as u64;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Normal,
    /// Dropping the rest of a bearer token.
    SkipToken,
    /// Dropping a header value up to the end of the line or the quote.
    SkipValue {
        quote: Option<u8>,
    },
}

enum Verdict {
    /// Not a credential: move on by one byte.
    No,
    /// The chunk ends before the context can be judged.
    NeedMore,
    /// Keep the input up to `keep_until`, write `[REDACTED]`, then skip.
    Redact { keep_until: usize, then: State },
}

/// The redaction state for one stream (one file, or one part of a capped
/// file).
pub(crate) struct Redactor<'m> {
    m: &'m Matcher,
    carry: Vec<u8>,
    scratch: Vec<u8>,
    state: State,
    /// The input byte just before the first carried byte (for the
    /// word-boundary test).
    prev: u8,
    count: u64,
}

impl<'m> Redactor<'m> {
    pub(crate) fn new(m: &'m Matcher) -> Self {
        Redactor {
            m,
            carry: Vec::new(),
            scratch: Vec::new(),
            state: State::Normal,
            prev: b'\n',
            count: 0,
        }
    }

    /// Replacements made so far.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Bytes a caller of [`Redactor::feed`] must be able to hold over:
    /// the unsettled tail never exceeds this.
    pub(crate) fn max_unsettled(&self) -> usize {
        self.m.hold.max(MAX_CONTEXT)
    }

    /// Zero-copy interface: processes `buf`, writes what is settled to
    /// `out` and returns how many leading bytes of `buf` were settled. The
    /// caller presents the rest (at most [`Redactor::max_unsettled`] bytes)
    /// again at the start of the next call. With `eof` everything is
    /// settled and the redactor is ready for a new stream.
    pub(crate) fn feed<S: Sink>(&mut self, buf: &[u8], eof: bool, out: &mut S) -> usize {
        debug_assert!(self.carry.is_empty());
        let used = self.run(buf, eof, out);
        if eof {
            self.state = State::Normal;
            self.prev = b'\n';
        } else {
            self.note_prev(buf, used);
        }
        used
    }

    /// Feeds the next chunk, keeping the unsettled tail internally; writes
    /// what is settled to `out`.
    pub(crate) fn push<S: Sink>(&mut self, input: &[u8], out: &mut S) {
        if self.carry.is_empty() {
            let used = self.run(input, false, out);
            self.note_prev(input, used);
            self.carry.extend_from_slice(&input[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.scratch);
            buf.clear();
            buf.extend_from_slice(&self.carry);
            buf.extend_from_slice(input);
            let used = self.run(&buf, false, out);
            self.note_prev(&buf, used);
            self.carry.clear();
            self.carry.extend_from_slice(&buf[used..]);
            self.scratch = buf;
        }
    }

    /// Ends the stream: settles the carried bytes and resets the state (the
    /// count is kept).
    pub(crate) fn finish<S: Sink>(&mut self, out: &mut S) {
        let buf = std::mem::take(&mut self.carry);
        let used = self.run(&buf, true, out);
        debug_assert_eq!(used, buf.len());
        self.carry = buf;
        self.carry.clear();
        self.state = State::Normal;
        self.prev = b'\n';
    }

    fn note_prev(&mut self, buf: &[u8], used: usize) {
        if used > 0 {
            self.prev = buf[used - 1];
        }
    }

    /// Processes `buf`; returns how many bytes were settled (written or
    /// dropped). The rest must be carried. With `eof` everything is settled.
    fn run<S: Sink>(&mut self, buf: &[u8], eof: bool, out: &mut S) -> usize {
        let len = buf.len();
        let mut pos = 0;
        loop {
            match self.state {
                State::SkipToken => match buf[pos..].iter().position(|&b| !is_token_byte(b)) {
                    Some(i) => {
                        pos += i;
                        self.state = State::Normal;
                    }
                    None => return len,
                },
                State::SkipValue { quote } => {
                    let rest = &buf[pos..];
                    let end = match quote {
                        Some(q) => memchr3(b'\n', b'\r', q, rest),
                        None => memchr2(b'\n', b'\r', rest),
                    };
                    match end {
                        Some(i) => {
                            pos += i;
                            self.state = State::Normal;
                        }
                        None => return len,
                    }
                }
                State::Normal => {
                    let safe_end = if eof {
                        len
                    } else {
                        len.saturating_sub(self.m.hold)
                    };
                    if pos >= safe_end && !eof {
                        return pos;
                    }
                    let found = self
                        .m
                        .ac
                        .find(Input::new(buf).span(pos..len))
                        .filter(|m| m.start() < safe_end);
                    let Some(mat) = found else {
                        out.put(&buf[pos..safe_end]);
                        return safe_end;
                    };
                    let start = mat.start();
                    let kind = self.m.kind(mat.pattern().as_usize());
                    if kind == Kind::Secret {
                        out.put(&buf[pos..start]);
                        out.put(REDACTED);
                        self.count += 1;
                        pos = mat.end();
                        continue;
                    }
                    let before = if start == 0 {
                        self.prev
                    } else {
                        buf[start - 1]
                    };
                    let verdict = if before.is_ascii_alphanumeric() {
                        Verdict::No
                    } else if kind == Kind::Bearer {
                        bearer_context(buf, mat.end(), eof)
                    } else {
                        let outer = (before == b'"' || before == b'\'').then_some(before);
                        auth_context(buf, mat.end(), eof, outer)
                    };
                    match verdict {
                        Verdict::NeedMore => {
                            out.put(&buf[pos..start]);
                            return start;
                        }
                        Verdict::No => {
                            out.put(&buf[pos..start + 1]);
                            pos = start + 1;
                        }
                        Verdict::Redact { keep_until, then } => {
                            out.put(&buf[pos..keep_until]);
                            out.put(REDACTED);
                            self.count += 1;
                            pos = keep_until;
                            self.state = then;
                        }
                    }
                }
            }
        }
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// RFC 6750 `b64token` characters, plus the trailing `=` padding.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

fn is_token_start(b: u8) -> bool {
    is_token_byte(b) && b != b'='
}

/// Skips up to [`MAX_BLANKS`] blanks from `i`. `Err` carries the verdict
/// when the run is too long or reaches the end of the chunk.
fn skip_blanks(buf: &[u8], mut i: usize, eof: bool) -> Result<usize, Verdict> {
    let start = i;
    while i < buf.len() && is_blank(buf[i]) {
        i += 1;
        if i - start > MAX_BLANKS {
            return Err(Verdict::No);
        }
    }
    if i == buf.len() && !eof {
        return Err(Verdict::NeedMore);
    }
    Ok(i)
}

/// After `Bearer`: blanks, then a token.
fn bearer_context(buf: &[u8], i: usize, eof: bool) -> Verdict {
    let j = match skip_blanks(buf, i, eof) {
        Ok(j) => j,
        Err(v) => return v,
    };
    if j == i || j == buf.len() || !is_token_start(buf[j]) {
        return Verdict::No;
    }
    Verdict::Redact {
        keep_until: j,
        then: State::SkipToken,
    }
}

/// After `Authorization`: `["']? blanks [:=] blanks ["']?`, then an optional
/// scheme word and blanks, then the value. The value ends at the end of the
/// line, or at its quote: the one opening it, or else the one before the
/// keyword when the keyword is not a quoted key itself (`-H 'Authorization:
/// token x'`).
fn auth_context(buf: &[u8], i: usize, eof: bool, outer: Option<u8>) -> Verdict {
    let len = buf.len();
    let need = |j: usize| {
        if j >= len {
            if eof {
                Some(Verdict::No)
            } else {
                Some(Verdict::NeedMore)
            }
        } else {
            None
        }
    };
    let mut j = i;
    if let Some(v) = need(j) {
        return v;
    }
    let mut outer = outer;
    if buf[j] == b'"' || buf[j] == b'\'' {
        j += 1;
        outer = None;
    }
    j = match skip_blanks(buf, j, eof) {
        Ok(j) => j,
        Err(v) => return v,
    };
    if let Some(v) = need(j) {
        return v;
    }
    if buf[j] != b':' && buf[j] != b'=' {
        return Verdict::No;
    }
    j = match skip_blanks(buf, j + 1, eof) {
        Ok(j) => j,
        Err(v) => return v,
    };
    if let Some(v) = need(j) {
        return v;
    }
    let quote = match buf[j] {
        q @ (b'"' | b'\'') => {
            j += 1;
            Some(q)
        }
        _ => outer,
    };
    if let Some(v) = need(j) {
        return v;
    }
    let ends_value = |b: u8| b == b'\n' || b == b'\r' || Some(b) == quote;
    if ends_value(buf[j]) {
        return Verdict::No;
    }
    let value = j;
    let then = State::SkipValue { quote };
    // An optional scheme word followed by blanks and more value.
    let mut k = value;
    while k < len && k - value <= MAX_SCHEME && buf[k].is_ascii_alphabetic() {
        k += 1;
    }
    if k == len && !eof && k - value <= MAX_SCHEME {
        return Verdict::NeedMore;
    }
    let mut keep_until = value;
    if k > value && k - value <= MAX_SCHEME && k < len && is_blank(buf[k]) {
        match skip_blanks(buf, k, eof) {
            Err(Verdict::NeedMore) => return Verdict::NeedMore,
            Ok(m) if m < len && !ends_value(buf[m]) => keep_until = m,
            _ => {}
        }
    }
    Verdict::Redact { keep_until, then }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_chunks(m: &Matcher, input: &[u8], sizes: &[usize]) -> (Vec<u8>, u64) {
        let mut r = Redactor::new(m);
        let mut out = Vec::new();
        let mut rest = input;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].max(1).min(rest.len());
            r.push(&rest[..n], &mut out);
            rest = &rest[n..];
            i += 1;
        }
        r.finish(&mut out);
        (out, r.count())
    }

    /// Drives `feed` the way the bundle writer does: a fixed buffer, the
    /// unsettled tail moved to its front before each read.
    fn redact_fed(m: &Matcher, input: &[u8], read: usize) -> Vec<u8> {
        let mut r = Redactor::new(m);
        let mut buf = vec![0u8; read + r.max_unsettled()];
        let mut out = Vec::new();
        let (mut have, mut off) = (0, 0);
        loop {
            let n = read.min(input.len() - off);
            buf[have..have + n].copy_from_slice(&input[off..off + n]);
            off += n;
            let total = have + n;
            let eof = off == input.len();
            let used = r.feed(&buf[..total], eof, &mut out);
            assert!(total - used <= r.max_unsettled());
            buf.copy_within(used..total, 0);
            have = total - used;
            if eof {
                assert_eq!(have, 0);
                return out;
            }
        }
    }

    fn redact(secrets: &[&str], input: &str) -> (String, u64) {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        let m = Matcher::new(&secrets).expect("matcher");
        let (out, n) = redact_chunks(&m, input.as_bytes(), &[1 << 20]);
        (String::from_utf8(out).expect("utf8"), n)
    }

    #[test]
    fn whole_text_is_redacted_like_a_bundled_file() {
        let text = "<td>token sl.hunter22 failed</td>\nAuthorization: Bearer abc.def\n";
        let (streamed, _) = redact(&["sl.hunter22"], text);
        let whole = redact_text(&["sl.hunter22".to_string()], text).expect("redact");
        assert_eq!(whole, streamed);
        assert!(
            !whole.contains("hunter22") && !whole.contains("abc.def"),
            "{whole}"
        );
    }

    #[test]
    fn configured_secret_is_replaced_and_counted() {
        let (out, n) = redact(&["hunter22"], "pw=hunter22 and again hunter22\n");
        assert_eq!(out, "pw=[REDACTED] and again [REDACTED]\n");
        assert_eq!(n, 2);
    }

    #[test]
    fn secrets_shorter_than_four_bytes_are_ignored() {
        let (out, n) = redact(&["abc", ""], "abc abc\n");
        assert_eq!(out, "abc abc\n");
        assert_eq!(n, 0);
    }

    #[test]
    fn longest_secret_wins_when_one_is_a_prefix_of_another() {
        let (out, n) = redact(&["abcd", "abcdefgh"], "xabcdefghx abcdx\n");
        assert_eq!(out, "x[REDACTED]x [REDACTED]x\n");
        assert_eq!(n, 2);
    }

    #[test]
    fn authorization_bearer_header() {
        let (out, n) = redact(&[], "> Authorization: Bearer xxx\n< HTTP/1.1 200\n");
        assert_eq!(out, "> Authorization: Bearer [REDACTED]\n< HTTP/1.1 200\n");
        assert_eq!(n, 1);
    }

    #[test]
    fn bare_bearer_token() {
        let (out, n) = redact(&[], "using Bearer eyJhbGciOi.J9.x-y_z== for upload\n");
        assert_eq!(out, "using Bearer [REDACTED] for upload\n");
        assert_eq!(n, 1);
    }

    #[test]
    fn lowercase_header_and_basic_scheme() {
        let (out, n) = redact(&[], "authorization: Basic dXNlcjpwYXNz\r\nhost: x\r\n");
        assert_eq!(out, "authorization: Basic [REDACTED]\r\nhost: x\r\n");
        assert_eq!(n, 1);
    }

    #[test]
    fn header_inside_a_quoted_argument_stops_at_the_quote() {
        let (out, n) = redact(&[], "curl -H 'authorization: token ghp_xyz' https://x\n");
        assert_eq!(out, "curl -H 'authorization: token [REDACTED]' https://x\n");
        assert_eq!(n, 1);
    }

    #[test]
    fn header_without_scheme() {
        let (out, _) = redact(&[], "AUTHORIZATION: ghp_abc123\n");
        assert_eq!(out, "AUTHORIZATION: [REDACTED]\n");
    }

    #[test]
    fn json_header_value_stops_at_the_closing_quote() {
        let (out, n) = redact(
            &[],
            r#"{"Authorization": "Bearer abc.def", "X-Trace": "1"}"#,
        );
        assert_eq!(
            out,
            r#"{"Authorization": "Bearer [REDACTED]", "X-Trace": "1"}"#
        );
        assert_eq!(n, 1);
    }

    #[test]
    fn words_that_merely_contain_the_keywords_are_left_alone() {
        let input =
            "token_type: Bearer\nunbearer x\nAuthorizations: none\nauthorization_code\nBearer\n";
        let (out, n) = redact(&[], input);
        assert_eq!(out, input);
        assert_eq!(n, 0);
    }

    #[test]
    fn secret_at_the_very_end_of_the_stream() {
        let (out, n) = redact(&["s3cr3t!"], "tail s3cr3t!");
        assert_eq!(out, "tail [REDACTED]");
        assert_eq!(n, 1);
    }

    /// The property the writer relies on: a secret split across two read
    /// chunks is still caught, whatever the chunk sizes.
    #[test]
    fn output_does_not_depend_on_chunking() {
        let secrets: Vec<String> = ["hunter22", "AKIAIOSFODNN7EXAMPLE", "tok-α-ü-42"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = Matcher::new(&secrets).expect("matcher");
        let pieces: &[&str] = &[
            "hunter22",
            "hunter2",
            "AKIAIOSFODNN7EXAMPLE",
            "tok-α-ü-42",
            "Bearer ",
            "bearer\t",
            "BEARER",
            "Authorization",
            "authorization",
            ": ",
            "=",
            "\"",
            "'",
            "Basic ",
            "abc.DEF_123",
            "==",
            "\n",
            "\r\n",
            " ",
            "x",
            "(00.123456) 1234: Dumping path for 3 fd via self 11 [/usr/lib/libc.so.6]",
        ];
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _case in 0..300 {
            let mut input = Vec::new();
            for _ in 0..(next() % 60) {
                input.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize].as_bytes());
            }
            let (whole, whole_n) = redact_chunks(&m, &input, &[usize::MAX]);
            for sizes in [
                vec![1],
                vec![2, 3],
                vec![7],
                vec![5, 1, 13],
                vec![(next() % 40) as usize + 1],
            ] {
                let (chunked, n) = redact_chunks(&m, &input, &sizes);
                assert_eq!(
                    String::from_utf8_lossy(&chunked),
                    String::from_utf8_lossy(&whole),
                    "chunks {sizes:?} of {:?}",
                    String::from_utf8_lossy(&input)
                );
                assert_eq!(n, whole_n);
            }
            let fed = redact_fed(&m, &input, (next() % 50) as usize + 1);
            assert_eq!(fed, whole, "feed of {:?}", String::from_utf8_lossy(&input));
            for s in &secrets {
                assert!(
                    memchr::memmem::find(&whole, s.as_bytes()).is_none(),
                    "{s} leaked in {:?}",
                    String::from_utf8_lossy(&whole)
                );
            }
        }
    }

    #[test]
    fn a_long_token_is_dropped_without_being_held() {
        let m = Matcher::new(&[]).expect("matcher");
        let mut r = Redactor::new(&m);
        let mut out = Vec::new();
        r.push(b"Authorization: Bearer ", &mut out);
        for _ in 0..1000 {
            r.push(&[b'A'; 1024], &mut out);
            assert!(r.carry.len() < 200, "carry grew to {}", r.carry.len());
        }
        r.push(b"\nnext line\n", &mut out);
        r.finish(&mut out);
        assert_eq!(out, b"Authorization: Bearer [REDACTED]\nnext line\n");
    }

    #[test]
    fn redact_str_keeps_utf8() {
        let m = Matcher::new(&["géheim".to_string()]).expect("matcher");
        assert_eq!(
            m.redact_str("ein géheim wort"),
            ("ein [REDACTED] wort".to_string(), 1)
        );
    }
}
