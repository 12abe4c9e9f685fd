//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1, in front of any
//! upstream (s3s-fs, or the Dropbox and GitHub fakes).
//!
//! It relays requests and answers byte for byte, streaming (a 512 MiB
//! upload does not sit in its memory), until a [`Rule`] matches a request
//! by method, target and count; then it does what the rule's
//! [`ProxyFault`] says. The faults are the ones real networks and
//! services produce: throttling answers, server errors, a connection
//! reset while the request or the answer body is on the wire, an answer
//! that never comes (after the upstream did the work, or before), a body
//! dribbled out slowly or cut short, a flipped byte.
//!
//! Every request is recorded ([`Seen`], shared with `http_fake`), so tests
//! can assert what the client sent and how often.
//!
//! One upstream connection per client connection, HTTP/1.1 only, bodies
//! framed by `Content-Length`, chunked encoding or (answers) the close of
//! the connection. `Expect: 100-continue` is not supported: no client of
//! ferry's sends it (reqwest does not).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::http_fake::{self, Head, Loopback, Response, Seen};

/// What the proxy does to one matching request.
#[derive(Debug, Clone)]
pub enum ProxyFault {
    /// Answer this; the upstream never sees the request.
    Respond(Response),
    /// Forward the head and `after` bytes of the request body, then reset
    /// both connections: the upload breaks mid-body.
    ResetRequestBody { after: u64 },
    /// Flip one byte in the middle of the request body on its way up.
    CorruptRequestBody,
    /// Read the request but neither forward nor answer it for this long,
    /// then close: a service that hangs before doing anything.
    Stall(Duration),
    /// Forward the request (the upstream does the work), hold the answer
    /// back this long, then close: the answer is lost to a timeout.
    Hang(Duration),
    /// Forward the request, then reset the client's connection instead
    /// of answering: the work is done but the answer is lost.
    LoseAnswer,
    /// Send the answer's head and half its body, then reset.
    ResetAnswerBody,
    /// Send the answer's head (with its full `Content-Length`) and half
    /// its body, then close cleanly: a truncated answer.
    Truncate,
    /// Send the answer's body `chunk` bytes at a time, pausing between.
    SlowBody { chunk: usize, pause: Duration },
    /// Flip one byte in the middle of the answer's body.
    CorruptAnswerBody,
}

/// When a fault applies: the requests matching `method` and every
/// `target_has` substring, after `skip` of them went through, `times`
/// times.
#[derive(Debug, Clone)]
pub struct Rule {
    fault: ProxyFault,
    method: Option<String>,
    target_has: Vec<String>,
    skip: u32,
    times: u32,
    seen: u32,
}

impl Rule {
    /// `fault` once, for the next request.
    pub fn new(fault: ProxyFault) -> Self {
        Rule {
            fault,
            method: None,
            target_has: Vec::new(),
            skip: 0,
            times: 1,
            seen: 0,
        }
    }

    /// Only requests with this method.
    pub fn method(mut self, m: &str) -> Self {
        self.method = Some(m.to_ascii_uppercase());
        self
    }

    /// Only requests whose target (path and query, as sent) contains `s`.
    pub fn target_has(mut self, s: &str) -> Self {
        self.target_has.push(s.to_string());
        self
    }

    /// Let the first `n` matching requests through untouched.
    pub fn skip(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }

    /// Apply to `n` matching requests (`u32::MAX`: all of them).
    pub fn times(mut self, n: u32) -> Self {
        self.times = n;
        self
    }

    fn matches(&self, h: &Head) -> bool {
        self.method.as_deref().is_none_or(|m| m == h.method)
            && self
                .target_has
                .iter()
                .all(|s| h.target.contains(s.as_str()))
    }
}

/// An S3-style XML error answer (`Retry-After` added when given).
pub fn s3_error(status: u16, code: &str, retry_after: Option<u64>) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the fault proxy</Message><RequestId>fault</RequestId></Error>"
    );
    let mut r = Response::new(status)
        .header("Content-Type", "application/xml")
        .body(body.into_bytes());
    if let Some(s) = retry_after {
        r = r.header("Retry-After", &s.to_string());
    }
    r
}

struct Shared {
    upstream: SocketAddr,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
}

/// A running proxy; stopped when dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
    listener: Loopback,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let listener = Loopback::start(move |client, stop| {
            let _ = serve(client, &s, stop);
        })?;
        Ok(FaultProxy { shared, listener })
    }

    pub fn port(&self) -> u16 {
        self.listener.port()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// Adds a rule (rules are tried in the order added).
    pub fn inject(&self, rule: Rule) {
        if let Ok(mut r) = self.shared.rules.lock() {
            r.push(rule);
        }
    }

    /// Rules that have not been applied as often as they were told.
    pub fn pending(&self) -> usize {
        self.shared
            .rules
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|x| x.seen < x.skip.saturating_add(x.times))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Drops every rule.
    pub fn clear(&self) {
        if let Ok(mut r) = self.shared.rules.lock() {
            r.clear();
        }
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Forgets the requests seen so far.
    pub fn forget(&self) {
        if let Ok(mut s) = self.shared.seen.lock() {
            s.clear();
        }
    }
}

/// The fault for a request, counting it against every matching rule.
fn take_fault(shared: &Shared, head: &Head) -> Option<ProxyFault> {
    let mut rules = shared.rules.lock().ok()?;
    for r in rules.iter_mut() {
        if !r.matches(head) || r.seen >= r.skip.saturating_add(r.times) {
            continue;
        }
        r.seen += 1;
        if r.seen > r.skip {
            return Some(r.fault.clone());
        }
    }
    None
}

fn record(
    shared: &Shared,
    head: &Head,
    body_len: u64,
    status: Option<u16>,
    fault: Option<&ProxyFault>,
) {
    if let Ok(mut s) = shared.seen.lock() {
        s.push(Seen {
            method: head.method.clone(),
            target: head.target.clone(),
            headers: head.headers.clone(),
            body_len: usize::try_from(body_len).unwrap_or(usize::MAX),
            status,
            fault: fault.map(fault_name),
        });
    }
}

fn fault_name(f: &ProxyFault) -> String {
    match f {
        ProxyFault::Respond(r) => format!("Respond({})", r.status),
        other => format!("{other:?}")
            .split([' ', '(', '{'])
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// How a message body is framed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (answers only).
    Close,
}

fn framing(headers: &[(String, String)], is_answer: bool) -> Framing {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        Framing::Chunked
    } else if let Some(n) = get("content-length").and_then(|v| v.trim().parse().ok()) {
        Framing::Length(n)
    } else if is_answer {
        Framing::Close
    } else {
        Framing::None
    }
}

fn write_head_line(
    out: &mut impl Write,
    first: &str,
    headers: &[(String, String)],
) -> io::Result<()> {
    let mut s = format!("{first}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    out.write_all(s.as_bytes())
}

/// How a bounded copy ended.
#[derive(PartialEq, Eq)]
enum End {
    /// All the bytes asked for were copied.
    Done,
    /// The payload limit was reached first.
    Limit,
}

/// A body being relayed: payload bytes so far, an optional payload limit,
/// and a tap that sees (and may change) every piece before it goes on.
struct Pipe<'a> {
    buf: Vec<u8>,
    total: u64,
    limit: Option<u64>,
    tap: &'a mut dyn FnMut(u64, &mut [u8]),
}

impl Pipe<'_> {
    /// Copies `n` bytes (`None`: until end of stream).
    fn copy(
        &mut self,
        from: &mut impl Read,
        to: &mut impl Write,
        n: Option<u64>,
    ) -> io::Result<End> {
        let mut left = n;
        loop {
            if left == Some(0) {
                return Ok(End::Done);
            }
            let room = self
                .limit
                .map_or(u64::MAX, |l| l.saturating_sub(self.total));
            if room == 0 {
                return Ok(End::Limit);
            }
            let want = (self.buf.len() as u64)
                .min(left.unwrap_or(u64::MAX))
                .min(room) as usize;
            let k = from.read(&mut self.buf[..want])?;
            if k == 0 {
                return match left {
                    None => Ok(End::Done),
                    Some(_) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body cut short",
                    )),
                };
            }
            (self.tap)(self.total, &mut self.buf[..k]);
            to.write_all(&self.buf[..k])?;
            self.total += k as u64;
            left = left.map(|l| l - k as u64);
        }
    }
}

/// Copies a body of `framing` from `from` to `to` (its framing kept),
/// calling `tap` on every payload piece before it is written; returns the
/// payload bytes. `limit` stops after that many payload bytes.
fn relay_body(
    from: &mut impl BufRead,
    to: &mut impl Write,
    framing: Framing,
    limit: Option<u64>,
    tap: &mut dyn FnMut(u64, &mut [u8]),
) -> io::Result<u64> {
    let mut pipe = Pipe {
        buf: vec![0u8; 64 * 1024],
        total: 0,
        limit,
        tap,
    };
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            pipe.copy(from, to, Some(n))?;
        }
        Framing::Close => {
            pipe.copy(from, to, None)?;
        }
        Framing::Chunked => loop {
            let mut line = String::new();
            from.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {line:?}"),
                    )
                })?;
            to.write_all(line.as_bytes())?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut t = String::new();
                    from.read_line(&mut t)?;
                    to.write_all(t.as_bytes())?;
                    if t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            if pipe.copy(from, to, Some(size))? == End::Limit {
                break;
            }
            let mut crlf = String::new();
            from.read_line(&mut crlf)?;
            to.write_all(crlf.as_bytes())?;
        },
    }
    to.flush()?;
    Ok(pipe.total)
}

/// Reads a body of `framing` and throws it away; returns its length.
fn drain(from: &mut impl BufRead, framing: Framing) -> io::Result<u64> {
    relay_body(from, &mut io::sink(), framing, None, &mut |_, _| {})
}

/// An answer read from the upstream.
struct Answer {
    status: u16,
    first: String,
    headers: Vec<(String, String)>,
}

fn read_answer_head(r: &mut impl BufRead) -> io::Result<Answer> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "upstream closed",
        ));
    }
    let first = first.trim_end().to_string();
    let status = first
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {first:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Answer {
        status,
        first,
        headers,
    })
}

fn has_body(method: &str, status: u16) -> bool {
    method != "HEAD" && !(100..200).contains(&status) && status != 204 && status != 304
}

fn serve(client: TcpStream, shared: &Shared, stop: &AtomicBool) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut to_client = client.try_clone()?;
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut upstream: Option<(TcpStream, BufReader<TcpStream>)> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let head = match http_fake::read_head(&mut from_client) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => return Ok(()),
        };
        let req_framing = framing(&head.headers, false);
        let fault = take_fault(shared, &head);
        let close_after =
            http_fake::header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));

        match &fault {
            Some(ProxyFault::Respond(r)) => {
                let n = drain(&mut from_client, req_framing)?;
                record(shared, &head, n, Some(r.status), fault.as_ref());
                http_fake::write_response(&mut to_client, r, None)?;
                if close_after {
                    return Ok(());
                }
                continue;
            }
            Some(ProxyFault::Stall(d)) => {
                let n = drain(&mut from_client, req_framing)?;
                record(shared, &head, n, None, fault.as_ref());
                std::thread::sleep(*d);
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            _ => {}
        }

        if upstream.is_none() {
            let s = TcpStream::connect(shared.upstream)?;
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            let r = BufReader::new(s.try_clone()?);
            upstream = Some((s, r));
        }
        let Some((up_w, up_r)) = upstream.as_mut() else {
            return Ok(());
        };
        write_head_line(
            up_w,
            &format!("{} {} HTTP/1.1", head.method, head.target),
            &head.headers,
        )?;

        // The request body, up.
        let expected = match req_framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut up_buf = io::BufWriter::with_capacity(64 * 1024, &mut *up_w);
        let sent = match &fault {
            Some(ProxyFault::ResetRequestBody { after }) => {
                let n = relay_body(
                    &mut from_client,
                    &mut up_buf,
                    req_framing,
                    Some(*after),
                    &mut |_, _| {},
                )?;
                drop(up_buf);
                record(shared, &head, n, None, fault.as_ref());
                http_fake::reset(&to_client);
                let _ = up_w.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(ProxyFault::CorruptRequestBody) => {
                let mid = expected / 2;
                relay_body(
                    &mut from_client,
                    &mut up_buf,
                    req_framing,
                    None,
                    &mut |at, piece| {
                        if (at..at + piece.len() as u64).contains(&mid) {
                            piece[(mid - at) as usize] ^= 0x01;
                        }
                    },
                )?
            }
            _ => relay_body(
                &mut from_client,
                &mut up_buf,
                req_framing,
                None,
                &mut |_, _| {},
            )?,
        };
        drop(up_buf);

        // The answer, down.
        let answer = read_answer_head(up_r)?;
        let ans_framing = if has_body(&head.method, answer.status) {
            framing(&answer.headers, true)
        } else {
            Framing::None
        };
        record(shared, &head, sent, Some(answer.status), fault.as_ref());
        let upstream_closes = ans_framing == Framing::Close
            || answer
                .headers
                .iter()
                .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        match &fault {
            Some(ProxyFault::LoseAnswer) | Some(ProxyFault::Hang(_)) => {
                drain(up_r, ans_framing)?;
                if let Some(ProxyFault::Hang(d)) = &fault {
                    std::thread::sleep(*d);
                    let _ = to_client.shutdown(Shutdown::Both);
                } else {
                    http_fake::reset(&to_client);
                }
                return Ok(());
            }
            Some(
                ProxyFault::ResetAnswerBody
                | ProxyFault::Truncate
                | ProxyFault::SlowBody { .. }
                | ProxyFault::CorruptAnswerBody,
            ) => {
                // Whole answer first, then re-framed with a Content-Length
                // so "half the body" is well defined.
                let mut body = Vec::new();
                relay_body(up_r, &mut body, ans_framing, None, &mut |_, _| {})?;
                let mut headers: Vec<(String, String)> = answer
                    .headers
                    .iter()
                    .filter(|(k, _)| k != "transfer-encoding" && k != "content-length")
                    .cloned()
                    .collect();
                headers.push(("content-length".into(), body.len().to_string()));
                write_head_line(&mut to_client, &answer.first, &headers)?;
                match &fault {
                    Some(ProxyFault::SlowBody { chunk, pause }) => {
                        for piece in body.chunks((*chunk).max(1)) {
                            to_client.write_all(piece)?;
                            to_client.flush()?;
                            std::thread::sleep(*pause);
                        }
                    }
                    Some(ProxyFault::CorruptAnswerBody) => {
                        let mid = body.len() / 2;
                        if let Some(b) = body.get_mut(mid) {
                            *b ^= 0x01;
                        }
                        to_client.write_all(&body)?;
                    }
                    _ => {
                        to_client.write_all(&body[..body.len() / 2])?;
                        to_client.flush()?;
                        if matches!(fault, Some(ProxyFault::ResetAnswerBody)) {
                            http_fake::reset(&to_client);
                        } else {
                            let _ = to_client.shutdown(Shutdown::Both);
                        }
                        return Ok(());
                    }
                }
                to_client.flush()?;
            }
            _ => {
                write_head_line(&mut to_client, &answer.first, &answer.headers)?;
                let mut down = io::BufWriter::with_capacity(64 * 1024, &mut to_client);
                relay_body(up_r, &mut down, ans_framing, None, &mut |_, _| {})?;
            }
        }
        if close_after || upstream_closes {
            let _ = to_client.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_fake::HttpFake;

    fn request(port: u16, method: &str, target: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        s.write_all(body)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => out[i + 4..].to_vec(),
            None => Vec::new(),
        };
        Ok((status, body))
    }

    fn echo() -> HttpFake {
        HttpFake::start(|r| {
            let mut body = format!("{} {} ", r.method, r.target).into_bytes();
            body.extend_from_slice(&r.body);
            http_fake::Response::new(200).body(body)
        })
        .unwrap()
    }

    #[test]
    fn relays_untouched_and_applies_rules_by_method_target_and_count() {
        let up = echo();
        let proxy = FaultProxy::start(([127, 0, 0, 1], up.port()).into()).unwrap();
        let (st, body) = request(proxy.port(), "PUT", "/a?x=1", b"hello").unwrap();
        assert_eq!((st, body.as_slice()), (200, &b"PUT /a?x=1 hello"[..]));
        proxy.inject(
            Rule::new(ProxyFault::Respond(s3_error(503, "SlowDown", Some(2))))
                .method("PUT")
                .target_has("part=2")
                .skip(1)
                .times(2),
        );
        let statuses: Vec<u16> = (0..4)
            .map(|_| request(proxy.port(), "PUT", "/k?part=2", b"x").unwrap().0)
            .collect();
        assert_eq!(statuses, [200, 503, 503, 200]);
        assert_eq!(
            request(proxy.port(), "GET", "/k?part=2", b"").unwrap().0,
            200
        );
        assert_eq!(proxy.pending(), 0);
        let seen = proxy.seen();
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[2].fault.as_deref(), Some("Respond(503)"));
        // The upstream saw only what the proxy let through.
        assert_eq!(up.seen().len(), 4);
    }

    #[test]
    fn corrupts_and_cuts_bodies() {
        let up = echo();
        let proxy = FaultProxy::start(([127, 0, 0, 1], up.port()).into()).unwrap();
        proxy.inject(Rule::new(ProxyFault::CorruptRequestBody));
        let (_, body) = request(proxy.port(), "PUT", "/c", b"aaaa").unwrap();
        // Byte 2 of the request body, 'a' ^ 1.
        assert_eq!(body, b"PUT /c aa`a");
        proxy.inject(Rule::new(ProxyFault::Truncate));
        let (st, body) = request(proxy.port(), "GET", "/truncated", b"").unwrap();
        assert_eq!(st, 200);
        // Half of the 15 bytes "GET /truncated ".
        assert_eq!(body, b"GET /tr");
        proxy.inject(Rule::new(ProxyFault::CorruptAnswerBody));
        let (_, body) = request(proxy.port(), "GET", "/zzzzzz", b"").unwrap();
        // Byte 6 of the 12 bytes "GET /zzzzzz ", 'z' ^ 1.
        assert_eq!(body, b"GET /z{zzzz ");
        proxy.inject(Rule::new(ProxyFault::ResetRequestBody { after: 2 }));
        assert!(
            request(proxy.port(), "PUT", "/r", b"abcdef")
                .map(|r| r.0)
                .unwrap_or(0)
                == 0
        );
        // The upstream got a cut body and said so (or saw nothing).
        assert!(
            up.seen()
                .iter()
                .all(|s| s.target != "/r" || s.status == Some(400))
        );
    }

    #[test]
    fn lost_answers_still_reach_the_upstream() {
        let up = echo();
        let proxy = FaultProxy::start(([127, 0, 0, 1], up.port()).into()).unwrap();
        proxy.inject(Rule::new(ProxyFault::LoseAnswer));
        assert!(
            request(proxy.port(), "POST", "/done", b"x")
                .map(|r| r.0)
                .unwrap_or(0)
                == 0
        );
        assert_eq!(up.seen().iter().filter(|s| s.target == "/done").count(), 1);
        proxy.inject(Rule::new(ProxyFault::Stall(Duration::from_millis(200))));
        assert!(
            request(proxy.port(), "POST", "/never", b"x")
                .map(|r| r.0)
                .unwrap_or(0)
                == 0
        );
        assert_eq!(up.seen().iter().filter(|s| s.target == "/never").count(), 0);
    }
}
