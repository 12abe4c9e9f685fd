//! Trace and span ids, clocks, and the W3C `traceparent` header.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // /dev/urandom never blocks after early boot and is always present on
    // the systems ferry runs on; a clock-derived id is a last resort.
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !filled {
        let seed = now_unix_nano() ^ (u64::from(std::process::id()) << 32);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed.rotate_left((i * 8) as u32) & 0xff) as u8;
        }
    }
    if buf.iter().all(|b| *b == 0) {
        buf[0] = 1; // all-zero ids are invalid in W3C trace context
    }
    hex::encode(buf)
}

pub fn trace_id() -> String {
    random_hex(16)
}

pub fn span_id() -> String {
    random_hex(8)
}

pub fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A parsed `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub span_id: String,
    pub sampled: bool,
}

impl TraceParent {
    /// Parse a W3C `traceparent`; anything malformed is ignored (a new
    /// trace starts), as the spec asks.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace, span, flags] = parts.as_slice() else {
            return None;
        };
        let is_hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !is_hex(version, 2)
            || *version == "ff"
            || !is_hex(trace, 32)
            || !is_hex(span, 16)
            || !is_hex(flags, 2)
        {
            return None;
        }
        if trace.bytes().all(|b| b == b'0') || span.bytes().all(|b| b == b'0') {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent {
            trace_id: trace.to_string(),
            span_id: span.to_string(),
            sampled: flags & 1 == 1,
        })
    }

    pub fn format(trace_id: &str, span_id: &str) -> String {
        format!("00-{trace_id}-{span_id}-01")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_right_length_and_differ() {
        assert_eq!(trace_id().len(), 32);
        assert_eq!(span_id().len(), 16);
        assert_ne!(span_id(), span_id());
    }

    #[test]
    fn traceparent_round_trip_and_rejects() {
        let tp =
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(tp.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(tp.span_id, "b7ad6b7169203331");
        assert!(tp.sampled);
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }
}
