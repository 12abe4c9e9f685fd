//! journald's stdout stream protocol, for handing a restored process a
//! fresh stream connection in place of the one the reboot cut.
//!
//! A stream client (`systemd-cat`, a service's stdout) connects to
//! `/run/systemd/journal/stdout` and first sends seven header lines:
//! identifier, unit id, priority, level prefix, forward to syslog, to kmsg,
//! to console. Everything after that is log text. journald keeps what it
//! learnt from the header of each stream in
//! `/run/systemd/journal/streams/<st_dev>:<st_ino>` (named after its own
//! end of the connection): that is where the header of a live stream can be
//! read back. journald calls that file private, so a file that cannot be
//! read yields `None` and the caller falls back to systemd-cat's defaults.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// journald's stream socket.
pub const STDOUT_SOCKET: &str = "/run/systemd/journal/stdout";
/// Where journald records its streams.
pub const STREAMS_DIR: &str = "/run/systemd/journal/streams";

/// The header of one stream connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub identifier: String,
    pub unit_id: String,
    /// syslog priority of lines without a `<N>` prefix (6 = info).
    pub priority: u8,
    pub level_prefix: bool,
    pub forward_to_syslog: bool,
    pub forward_to_kmsg: bool,
    pub forward_to_console: bool,
    /// The header was read back from journald's stream file (else it is
    /// systemd-cat's defaults with the process's name).
    pub from_journald: bool,
}

impl StreamHeader {
    /// What `systemd-cat` sends when given no options.
    pub fn defaults(identifier: &str) -> StreamHeader {
        StreamHeader {
            identifier: identifier.to_string(),
            unit_id: String::new(),
            priority: 6,
            level_prefix: true,
            forward_to_syslog: false,
            forward_to_kmsg: false,
            forward_to_console: false,
            from_journald: false,
        }
    }

    /// The seven header lines, as the client sends them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let b = |v: bool| u8::from(v);
        // A newline inside a field would shift every later field.
        let clean = |s: &str| s.replace('\n', " ");
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            clean(&self.identifier),
            clean(&self.unit_id),
            self.priority.min(7),
            b(self.level_prefix),
            b(self.forward_to_syslog),
            b(self.forward_to_kmsg),
            b(self.forward_to_console),
        )
        .into_bytes()
    }
}

/// Parses one of journald's stream files (`KEY=value` lines, `#` comments,
/// values C-escaped).
pub fn parse_stream_file(text: &str) -> StreamHeader {
    let mut h = StreamHeader::defaults("");
    h.from_journald = true;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let flag = |v: &str| v.trim() == "1";
        match key {
            "PRIORITY" => h.priority = value.trim().parse().unwrap_or(6),
            "LEVEL_PREFIX" => h.level_prefix = flag(value),
            "FORWARD_TO_SYSLOG" => h.forward_to_syslog = flag(value),
            "FORWARD_TO_KMSG" => h.forward_to_kmsg = flag(value),
            "FORWARD_TO_CONSOLE" => h.forward_to_console = flag(value),
            "IDENTIFIER" => h.identifier = unescape_c(value),
            "UNIT" => h.unit_id = unescape_c(value),
            _ => {}
        }
    }
    h
}

/// The header journald recorded for the stream whose server end is socket
/// inode `server_ino`.
pub fn find_stream(dir: &Path, server_ino: u64) -> Option<StreamHeader> {
    let suffix = format!(":{server_ino}");
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(&suffix) {
            let text = std::fs::read_to_string(entry.path()).ok()?;
            return Some(parse_stream_file(&text));
        }
    }
    None
}

/// A fresh stream to journald at `socket`, its header already sent, read
/// side shut (journald never writes back), as systemd-cat leaves it.
pub fn connect(socket: &Path, header: &StreamHeader) -> std::io::Result<OwnedFd> {
    let mut stream = UnixStream::connect(socket)?;
    stream.shutdown(std::net::Shutdown::Read)?;
    stream.write_all(&header.to_bytes())?;
    Ok(OwnedFd::from(stream))
}

/// Undoes systemd's `cescape` (`\n`, `\\`, `\xNN`, octal `\NNN`).
fn unescape_c(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' || i + 1 >= bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let c = bytes[i + 1];
        let simple = match c {
            b'n' => Some(b'\n'),
            b't' => Some(b'\t'),
            b'r' => Some(b'\r'),
            b'\\' => Some(b'\\'),
            b'"' => Some(b'"'),
            b'\'' => Some(b'\''),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            i += 2;
        } else if c == b'x'
            && let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
        } else if let Some(v) = s
            .get(i + 1..i + 4)
            .filter(|o| o.bytes().all(|b| (b'0'..=b'7').contains(&b)))
            .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b'\\');
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn stream_file_is_read_back() {
        let text = "# This is private data. Do not parse\nPRIORITY=5\nLEVEL_PREFIX=0\nFORWARD_TO_SYSLOG=0\nFORWARD_TO_KMSG=1\nFORWARD_TO_CONSOLE=0\nSTREAM_ID=1a2b\nIDENTIFIER=my\\x20job\\n2\nUNIT=ci.service\n";
        let h = parse_stream_file(text);
        assert_eq!(h.identifier, "my job\n2");
        assert_eq!(h.unit_id, "ci.service");
        assert_eq!(h.priority, 5);
        assert!(!h.level_prefix && h.forward_to_kmsg && !h.forward_to_syslog);
        assert!(h.from_journald);
        // The newline cannot travel in a header line.
        assert_eq!(h.to_bytes(), b"my job 2\nci.service\n5\n0\n0\n1\n0\n");
    }

    #[test]
    fn defaults_are_systemd_cats() {
        let h = StreamHeader::defaults("bash");
        assert_eq!(h.to_bytes(), b"bash\n\n6\n1\n0\n0\n0\n");
        assert!(!h.from_journald);
        assert_eq!(unescape_c("a\\\\b\\101\\q"), "a\\bA\\q");
    }

    #[test]
    fn the_stream_of_a_server_inode_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("8:4242"), "PRIORITY=3\nIDENTIFIER=x\n").unwrap();
        std::fs::write(dir.path().join("8:42"), "PRIORITY=4\nIDENTIFIER=y\n").unwrap();
        assert_eq!(find_stream(dir.path(), 42).unwrap().identifier, "y");
        assert_eq!(find_stream(dir.path(), 4242).unwrap().priority, 3);
        assert!(find_stream(dir.path(), 7).is_none());
        assert!(find_stream(&dir.path().join("nope"), 42).is_none());
    }

    #[test]
    fn connect_sends_the_header_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd = connect(&path, &StreamHeader::defaults("job")).unwrap();
        let mut w = UnixStream::from(fd);
        w.write_all(b"hello\n").unwrap();
        drop(w);
        let (mut server, _) = listener.accept().unwrap();
        let mut got = String::new();
        server.read_to_string(&mut got).unwrap();
        assert_eq!(got, "job\n\n6\n1\n0\n0\n0\nhello\n");
    }
}
