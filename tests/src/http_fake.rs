//! A small HTTP/1.1 server on 127.0.0.1 for protocol-faithful fakes
//! (Dropbox, GitHub), with faults injected at the socket level.
//!
//! Hand-written on `std::net` rather than a framework because the faults
//! the backends must survive live below HTTP: a connection reset before
//! the answer, an answer cut short of its `Content-Length`, a body
//! dribbled out slowly, a server that never answers. A fake gives a
//! handler `Fn(&Request) -> Response`; the server parses requests strictly
//! (a request line, headers, a body framed by `Content-Length` or
//! `Transfer-Encoding: chunked`, nothing else) and keeps connections alive
//! as HTTP/1.1 clients expect.
//!
//! Every request is recorded (method, target, headers, body length and
//! the answer's status) so tests can assert what the client sent.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// Largest request body the server reads (bigger ones get 413).
pub const MAX_BODY: u64 = 512 * 1024 * 1024;

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// Header names lowercased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The value of query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }
}

/// `%XX` and `+` decoding of a query component (invalid escapes kept).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(value.to_string().into_bytes())
    }

    /// A plain-text answer.
    pub fn text(status: u16, text: &str) -> Self {
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(text.as_bytes().to_vec())
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}

/// What goes wrong with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this instead of calling the handler.
    Respond(Response),
    /// Read the request, then reset the connection (no answer).
    Reset,
    /// Reset the connection after reading only the request head (the body
    /// is cut off mid-upload).
    ResetMidBody,
    /// Read the request and keep the connection silent this long, then close.
    Hang(Duration),
    /// Call the handler, then send its answer's body in small pieces with
    /// this pause between them.
    SlowBody(Duration),
    /// Call the handler (its effect happens), then send the head and only
    /// half the body, and close.
    Truncate,
}

/// A one-shot fault for the next request that matches.
struct Armed {
    matches: Box<dyn Fn(&Request) -> bool + Send + Sync>,
    fault: Fault,
}

/// What the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The status answered, or `None` for a fault that sent no answer.
    pub status: Option<u16>,
    /// The fault applied, if any (its `Debug` name).
    pub fault: Option<String>,
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

struct Shared {
    handler: Box<Handler>,
    faults: Mutex<VecDeque<Armed>>,
    seen: Mutex<Vec<Seen>>,
}

/// A listener on a free port of 127.0.0.1 that hands every connection to
/// its own thread; stops accepting when dropped. The fakes and the fault
/// proxy are built on it.
pub(crate) struct Loopback {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Loopback {
    /// Serves every connection with `serve`, which gets the stop flag.
    pub(crate) fn start(
        serve: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        // Accepted sockets inherit non-blocking mode on
                        // some systems; the servers want blocking reads.
                        let _ = stream.set_nonblocking(false);
                        let (serve, flag) = (serve.clone(), flag.clone());
                        std::thread::spawn(move || serve(stream, &flag));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Loopback {
            port,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running server; stopped when dropped.
pub struct HttpFake {
    shared: Arc<Shared>,
    listener: Loopback,
}

impl HttpFake {
    /// Starts serving `handler` on a free port of 127.0.0.1.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Result<Self> {
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            faults: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let listener = Loopback::start(move |stream, stop| serve(stream, &s, stop))?;
        Ok(HttpFake { shared, listener })
    }

    pub fn port(&self) -> u16 {
        self.listener.port()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// Arms `fault` for the next request `matches` accepts (once).
    pub fn inject(&self, matches: impl Fn(&Request) -> bool + Send + Sync + 'static, fault: Fault) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.push_back(Armed {
                matches: Box::new(matches),
                fault,
            });
        }
    }

    /// Faults armed but not yet used.
    pub fn pending_faults(&self) -> usize {
        self.shared.faults.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

fn serve(stream: TcpStream, shared: &Shared, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(stream);
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let head = match read_head(&mut reader) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(msg) => {
                let _ = write_response(&mut out, &Response::text(400, &msg), None);
                return;
            }
        };
        let fault = take_fault(shared, &head);
        if matches!(fault, Some(Fault::ResetMidBody)) {
            record(shared, &head, 0, None, &fault);
            reset(&out);
            return;
        }
        let (body, chunked) = match read_body(&mut reader, &head) {
            Ok(b) => b,
            Err((status, msg)) => {
                let _ = write_response(&mut out, &Response::text(status, &msg), None);
                record(shared, &head, 0, Some(status), &None);
                return;
            }
        };
        let req = Request {
            method: head.method,
            target: head.target,
            headers: head.headers,
            body,
            chunked,
        };
        let len = req.body.len();
        match &fault {
            Some(Fault::Reset) => {
                record_req(shared, &req, len, None, &fault);
                reset(&out);
                return;
            }
            Some(Fault::Hang(d)) => {
                record_req(shared, &req, len, None, &fault);
                std::thread::sleep(*d);
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::Respond(r)) => {
                record_req(shared, &req, len, Some(r.status), &fault);
                if write_response(&mut out, r, None).is_err() {
                    return;
                }
            }
            Some(Fault::SlowBody(pause)) => {
                let r = (shared.handler)(&req);
                record_req(shared, &req, len, Some(r.status), &fault);
                if write_response(&mut out, &r, Some(*pause)).is_err() {
                    return;
                }
            }
            Some(Fault::Truncate) => {
                let r = (shared.handler)(&req);
                record_req(shared, &req, len, Some(r.status), &fault);
                let mut cut = r.clone();
                let full = cut.body.len();
                cut.body.truncate(full / 2);
                let _ = write_head(&mut out, &r, full);
                let _ = out.write_all(&cut.body);
                let _ = out.flush();
                reset(&out);
                return;
            }
            Some(Fault::ResetMidBody) | None => {
                let r = (shared.handler)(&req);
                record_req(shared, &req, len, Some(r.status), &None);
                if write_response(&mut out, &r, None).is_err() {
                    return;
                }
            }
        }
        if req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
}

pub(crate) fn read_head(r: &mut impl BufRead) -> std::result::Result<Option<Head>, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(_) => return Ok(None),
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {line:?}"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("unsupported version {version:?}"));
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed inside the headers".into());
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("bad header line {h:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        if headers.len() > 200 {
            return Err("too many headers".into());
        }
    }
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        headers,
    }))
}

pub(crate) fn header<'a>(h: &'a Head, name: &str) -> Option<&'a str> {
    h.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn read_body(
    r: &mut impl BufRead,
    h: &Head,
) -> std::result::Result<(Vec<u8>, bool), (u16, String)> {
    let chunked = header(h, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size)
                .map_err(|e| (400, format!("chunk size: {e}")))?;
            let n = u64::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| (400, format!("bad chunk size {size:?}")))?;
            if body.len() as u64 + n > MAX_BODY {
                return Err((413, "body too large".into()));
            }
            let mut chunk = vec![0; n as usize];
            r.read_exact(&mut chunk)
                .map_err(|e| (400, format!("chunk body: {e}")))?;
            body.extend_from_slice(&chunk);
            let mut crlf = String::new();
            r.read_line(&mut crlf)
                .map_err(|e| (400, format!("chunk end: {e}")))?;
            if n == 0 {
                return Ok((body, true));
            }
        }
    }
    let Some(len) = header(h, "content-length") else {
        return Ok((Vec::new(), false));
    };
    let len: u64 = len
        .parse()
        .map_err(|_| (400, format!("bad Content-Length {len:?}")))?;
    if len > MAX_BODY {
        return Err((413, "body too large".into()));
    }
    let mut body = vec![0; len as usize];
    r.read_exact(&mut body)
        .map_err(|e| (400, format!("body shorter than Content-Length: {e}")))?;
    Ok((body, false))
}

fn take_fault(shared: &Shared, head: &Head) -> Option<Fault> {
    let probe = Request {
        method: head.method.clone(),
        target: head.target.clone(),
        headers: head.headers.clone(),
        body: Vec::new(),
        chunked: false,
    };
    let mut faults = shared.faults.lock().ok()?;
    let i = faults.iter().position(|a| (a.matches)(&probe))?;
    faults.remove(i).map(|a| a.fault)
}

fn record(shared: &Shared, head: &Head, len: usize, status: Option<u16>, fault: &Option<Fault>) {
    if let Ok(mut s) = shared.seen.lock() {
        s.push(Seen {
            method: head.method.clone(),
            target: head.target.clone(),
            headers: head.headers.clone(),
            body_len: len,
            status,
            fault: fault.as_ref().map(fault_name),
        });
    }
}

fn record_req(
    shared: &Shared,
    req: &Request,
    len: usize,
    status: Option<u16>,
    fault: &Option<Fault>,
) {
    if let Ok(mut s) = shared.seen.lock() {
        s.push(Seen {
            method: req.method.clone(),
            target: req.target.clone(),
            headers: req.headers.clone(),
            body_len: len,
            status,
            fault: fault.as_ref().map(fault_name),
        });
    }
}

fn fault_name(f: &Fault) -> String {
    match f {
        Fault::Respond(r) => format!("Respond({})", r.status),
        Fault::Reset => "Reset".into(),
        Fault::ResetMidBody => "ResetMidBody".into(),
        Fault::Hang(_) => "Hang".into(),
        Fault::SlowBody(_) => "SlowBody".into(),
        Fault::Truncate => "Truncate".into(),
    }
}

/// Closes with RST (SO_LINGER 0), as a crashed server or a middlebox would.
pub(crate) fn reset(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a properly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_head(out: &mut impl Write, r: &Response, len: usize) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {len}\r\n\r\n"));
    out.write_all(head.as_bytes())
}

pub(crate) fn write_response(
    out: &mut impl Write,
    r: &Response,
    pause: Option<Duration>,
) -> std::io::Result<()> {
    write_head(out, r, r.body.len())?;
    match pause {
        None => out.write_all(&r.body)?,
        Some(p) => {
            for piece in r.body.chunks(64) {
                out.write_all(piece)?;
                out.flush()?;
                std::thread::sleep(p);
            }
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(port: u16, target: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn serves_and_records_and_faults_once() {
        let fake = HttpFake::start(|r| Response::text(200, &format!("hi {}", r.path()))).unwrap();
        assert!(get(fake.port(), "/a?x=1").unwrap().ends_with("hi /a"));
        fake.inject(
            |r| r.path() == "/b",
            Fault::Respond(Response::text(503, "busy").header("Retry-After", "1")),
        );
        let busy = get(fake.port(), "/b").unwrap();
        assert!(busy.starts_with("HTTP/1.1 503") && busy.contains("Retry-After: 1"));
        assert!(get(fake.port(), "/b").unwrap().ends_with("hi /b"));
        fake.inject(|_| true, Fault::Truncate);
        let cut = get(fake.port(), "/long").unwrap_or_default();
        assert!(cut.contains("Content-Length: 8") && !cut.ends_with("hi /long"));
        let seen = fake.seen();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[1].status, Some(503));
        assert_eq!(seen[3].fault.as_deref(), Some("Truncate"));
        assert_eq!(fake.pending_faults(), 0);
    }

    #[test]
    fn query_decoding() {
        let r = Request {
            method: "GET".into(),
            target: "/p?a=b%20c&d=%E2%9C%93&e".into(),
            headers: vec![],
            body: vec![],
            chunked: false,
        };
        assert_eq!(r.query("a").as_deref(), Some("b c"));
        assert_eq!(r.query("d").as_deref(), Some("✓"));
        assert_eq!(r.query("e").as_deref(), Some(""));
        assert_eq!(r.query("z"), None);
        assert_eq!(percent_decode("100%"), "100%");
    }
}
